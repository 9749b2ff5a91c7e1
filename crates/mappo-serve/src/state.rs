//! What every handler shares: the model thread, the decision log's group committer, the
//! metrics, the API keys, the `[serve]` config, the proxy's upstreams — and the one mapping of
//! decision-log errors to answers (which also marks the log unavailable for `/healthz`).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use mappo_config::ServeConfig;
use mappo_log::{DecisionLog, GroupCommitter, LogError};

use crate::auth::ApiKeys;
use crate::engine::Engine;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::upstream::Upstreams;

/// What the handlers share.
pub(crate) struct AppState {
    pub engine: Engine,
    pub committer: GroupCommitter,
    /// The log itself, for reads (an episode's earlier steps).
    pub log: DecisionLog,
    pub metrics: Arc<Metrics>,
    pub keys: ApiKeys,
    pub cfg: ServeConfig,
    pub replica: String,
    /// False while the decision log is unreachable (`/healthz` answers 503).
    pub db_ok: AtomicBool,
    /// Why the decision log was last declared unreachable (what `/healthz` says).
    pub db_error: Mutex<String>,
    /// `serve.db_timeout_ms`: the longest a request waits for the decision log.
    pub db_timeout: Duration,
    /// The OpenAPI document, rendered once.
    pub openapi: String,
    /// The OpenAI-compatible proxy's upstreams.
    pub upstreams: Upstreams,
}

impl AppState {
    /// The answer to a failed write to the decision log: 404 (unknown decision or episode), 409
    /// (already rewarded, an episode ended twice, a step after the end or taken concurrently),
    /// 422 (a reward that is not finite), 503 while the database is unreachable
    /// (marked for `/healthz`), 500 otherwise.
    pub(crate) fn log_error(&self, e: LogError) -> ApiError {
        match e {
            LogError::UnknownDecision(id) => {
                ApiError::new(StatusCode::NOT_FOUND, format!("no decision {id} in the log"))
            }
            LogError::AlreadyRewarded(id) => {
                ApiError::new(StatusCode::CONFLICT, format!("decision {id} already has a reward"))
            }
            LogError::InvalidReward(r) => {
                ApiError::unprocessable(format!("reward {r} is not a finite number"))
            }
            LogError::UnknownEpisode(id) => {
                ApiError::new(StatusCode::NOT_FOUND, format!("no episode {id:?} in the log"))
            }
            e @ (LogError::EpisodeAlreadyEnded(_)
            | LogError::EpisodeEnded(_)
            | LogError::StepTaken { .. }) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            LogError::InvalidEpisodeReward(r) => {
                ApiError::unprocessable(format!("episode reward {r} is not a finite number"))
            }
            e if e.is_unavailable() => self.unavailable(e.to_string()),
            e => {
                self.metrics.database_errors.inc();
                tracing::error!(error = %e, "decision log error");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("decision log error: {e}"))
            }
        }
    }

    /// A write to the decision log succeeded: the database is reachable.
    pub(crate) fn log_ok(&self) {
        if !self.db_ok.swap(true, Ordering::Relaxed) {
            tracing::info!("the decision log is reachable again");
        }
    }

    /// Marks the decision log unreachable (for `/healthz`, with `why`) and answers 503.
    pub(crate) fn unavailable(&self, why: String) -> ApiError {
        self.mark_unavailable(&why);
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("the decision log is unavailable: {why}"))
    }

    /// Marks the decision log unreachable, counted and logged (`why` is what `/healthz` says).
    pub(crate) fn mark_unavailable(&self, why: &str) {
        let was_ok = self.db_ok.swap(false, Ordering::Relaxed);
        if let Ok(mut e) = self.db_error.lock() {
            why.clone_into(&mut e);
        }
        self.metrics.database_errors.inc();
        if was_ok {
            tracing::warn!(error = %why, "the decision log is unavailable");
        }
    }

    /// What `/healthz` says while the decision log is unreachable.
    pub(crate) fn db_error(&self) -> String {
        self.db_error.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Awaits a decision-log call for at most `serve.db_timeout_ms`: its result (errors mapped
    /// by [`AppState::log_error`], success marking the log reachable), or 503 when it takes
    /// longer — a client is never kept waiting through a database outage. A write that times out
    /// is dropped by the group committer if it has not started yet (its caller got 503).
    pub(crate) async fn db<T>(&self, call: impl Future<Output = Result<T, LogError>>) -> Result<T, ApiError> {
        let v = self.db_read(call).await?;
        self.log_ok();
        Ok(v)
    }

    /// [`AppState::db`] for a request that began at `started`: the wait ends `serve.db_timeout_ms`
    /// after `started` (so routing's queue for the model counts), but never sooner than a quarter
    /// of it from now — an overloaded model thread alone does not make the log look unreachable.
    pub(crate) async fn db_since<T>(
        &self,
        started: Instant,
        call: impl Future<Output = Result<T, LogError>>,
    ) -> Result<T, ApiError> {
        let left = self.db_timeout.saturating_sub(started.elapsed()).max(self.db_timeout / 4);
        let v = self.db_within(left, call).await?;
        self.log_ok();
        Ok(v)
    }

    /// [`AppState::db`] for a read: its success does not mark the log reachable (SQLite answers
    /// reads while another process holds the write lock).
    pub(crate) async fn db_read<T>(
        &self,
        call: impl Future<Output = Result<T, LogError>>,
    ) -> Result<T, ApiError> {
        self.db_within(self.db_timeout, call).await
    }

    async fn db_within<T>(
        &self,
        wait: Duration,
        call: impl Future<Output = Result<T, LogError>>,
    ) -> Result<T, ApiError> {
        match tokio::time::timeout(wait, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.log_error(e)),
            Err(_) => Err(self.unavailable(format!(
                "no answer within serve.db_timeout_ms = {} ms",
                self.db_timeout.as_millis()
            ))),
        }
    }
}
