//! What every handler shares: the model thread, the decision log's group committer, the
//! metrics, the API keys, the `[serve]` config, the proxy's upstreams — and the one mapping of
//! decision-log errors to answers (which also marks the log unavailable for `/healthz`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
            e if e.is_unavailable() => {
                self.db_ok.store(false, Ordering::Relaxed);
                self.metrics.database_errors.inc();
                tracing::warn!(error = %e, "the decision log is unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the decision log is unavailable: {e}"),
                )
            }
            e => {
                self.metrics.database_errors.inc();
                tracing::error!(error = %e, "decision log error");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("decision log error: {e}"))
            }
        }
    }

    /// A write to the decision log succeeded: the database is reachable.
    pub(crate) fn log_ok(&self) {
        self.db_ok.store(true, Ordering::Relaxed);
    }
}
