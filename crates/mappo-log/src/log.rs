//! [`DecisionLog`]: the two backends behind one type.

use std::collections::BTreeMap;
use std::io::Write;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Connection, QueryBuilder, Row};
use uuid::Uuid;

use crate::LogError;
use crate::migrations::{self, Migration};
use crate::tally;
use crate::types::{
    AgentStats, Decision, DecisionKind, EpisodeEnd, EpisodeState, EpisodeStep, EventQuery, ExportLine,
    ExportOptions, GateRecord, JoinedEvent, LearnerState, Policy, PolicyInfo, PublishMeta, Published, Reward,
    ShadowChoice, Stats, Timestamp, Watermark, bytes_to_f32s, f32s_to_bytes,
};
use crate::url::DbUrl;

/// How a log is opened. `Default` is what `mappo serve` uses.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// PostgreSQL only: keep the tables in this schema (created if missing; letters, digits and
    /// `_`). Lets several logs, or test runs, share one database. `None`: the server's default
    /// search path (normally `public`).
    pub pg_schema: Option<String>,
    /// Most connections in the pool.
    pub max_connections: u32,
    /// How long opening, or waiting for a pooled connection (SQLite: for a lock another
    /// connection holds), may take before the database is declared unreachable.
    pub connect_timeout: Duration,
    /// SQLite only: `synchronous = FULL` (the default; a committed decision survives a power
    /// loss) or `NORMAL` (survives a crash of the process, not of the machine; faster commits).
    pub sqlite_full_sync: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            pg_schema: None,
            max_connections: 8,
            connect_timeout: Duration::from_secs(5),
            sqlite_full_sync: true,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The decision log: decisions, rewards and policy versions in SQLite or PostgreSQL.
///
/// Cheap to clone (the connection pool is shared). Every write is committed when its call
/// returns. For many concurrent writers, put a [`crate::GroupCommitter`] in front of it.
#[derive(Debug, Clone)]
pub struct DecisionLog {
    pub(crate) backend: Backend,
    db: Arc<str>,
}

/// Runs `$body` with `$p` bound to the pool, `$db` to the sqlx database type and `$pg` to
/// whether it is PostgreSQL: one text, compiled for both backends.
macro_rules! on_pool {
    ($self:expr, $p:ident, $db:ident, $pg:ident => $body:expr) => {
        match &$self.backend {
            Backend::Sqlite($p) => {
                #[allow(dead_code)]
                type $db = sqlx::Sqlite;
                #[allow(unused_variables)]
                let $pg = false;
                $body
            }
            Backend::Postgres($p) => {
                #[allow(dead_code)]
                type $db = sqlx::Postgres;
                #[allow(unused_variables)]
                let $pg = true;
                $body
            }
        }
    };
}
pub(crate) use on_pool;

/// The columns of a joined event, in the order [`decode_event!`] reads them.
const EVENT_COLUMNS: &str = "d.id, d.time_us, d.policy_version, d.action, d.agent, \
     d.probabilities, d.propensity, d.kind, d.embedding, d.model_hash, d.text, d.replica, \
     d.cost_weight, d.shadow_version, d.shadow_action, d.shadow_propensity, \
     r.reward, r.time_us AS reward_time_us, d.episode_id, d.step, d.stage, \
     e.reward AS episode_reward, e.time_us AS episode_end_us, \
     (SELECT MAX(d2.step) FROM decisions d2 WHERE d2.episode_id = d.episode_id) AS episode_last_step";

/// The tables [`EVENT_COLUMNS`] reads: decisions with their reward and their episode's end.
const EVENT_FROM: &str = "FROM decisions d LEFT JOIN rewards r ON r.decision_id = d.id \
     LEFT JOIN episode_ends e ON e.episode_id = d.episode_id";

/// Decodes one row of `EVENT_COLUMNS` (either backend) into a `Result<JoinedEvent, sqlx::Error>`
/// with corrupt values as `LogError::Corrupt`.
macro_rules! decode_event {
    ($row:expr) => {{
        let row = $row;
        (|| -> Result<JoinedEvent, LogError> {
            let e = |e: sqlx::Error| LogError::Corrupt(e.to_string());
            let kind: String = row.try_get("kind").map_err(e)?;
            let action: i64 = row.try_get("action").map_err(e)?;
            let probabilities: Vec<u8> = row.try_get("probabilities").map_err(e)?;
            let embedding: Vec<u8> = row.try_get("embedding").map_err(e)?;
            let propensity: f64 = row.try_get("propensity").map_err(e)?;
            let time_us: i64 = row.try_get("time_us").map_err(e)?;
            let reward: Option<f64> = row.try_get("reward").map_err(e)?;
            let reward_time: Option<i64> = row.try_get("reward_time_us").map_err(e)?;
            Ok(JoinedEvent {
                decision: Decision {
                    id: row.try_get("id").map_err(e)?,
                    time: Timestamp(time_us),
                    policy_version: row.try_get("policy_version").map_err(e)?,
                    action: u32::try_from(action)
                        .map_err(|_| LogError::Corrupt(format!("action {action}")))?,
                    agent: row.try_get("agent").map_err(e)?,
                    probabilities: bytes_to_f32s(&probabilities)?,
                    propensity: propensity as f32,
                    kind: DecisionKind::from_str(&kind)?,
                    embedding: bytes_to_f32s(&embedding)?,
                    model_hash: row.try_get("model_hash").map_err(e)?,
                    text: row.try_get("text").map_err(e)?,
                    replica: row.try_get("replica").map_err(e)?,
                    cost_weight: row.try_get::<Option<f64>, _>("cost_weight").map_err(e)?.map(|w| w as f32),
                    shadow: {
                        let v: Option<i64> = row.try_get("shadow_version").map_err(e)?;
                        let a: Option<i64> = row.try_get("shadow_action").map_err(e)?;
                        let p: Option<f64> = row.try_get("shadow_propensity").map_err(e)?;
                        match (v, a, p) {
                            (Some(version), Some(a), Some(p)) => Some(ShadowChoice {
                                version,
                                action: u32::try_from(a)
                                    .map_err(|_| LogError::Corrupt(format!("shadow action {a}")))?,
                                propensity: p as f32,
                            }),
                            _ => None,
                        }
                    },
                    episode: {
                        let id: Option<String> = row.try_get("episode_id").map_err(e)?;
                        let step: Option<i64> = row.try_get("step").map_err(e)?;
                        let stage: Option<String> = row.try_get("stage").map_err(e)?;
                        match (id, step) {
                            (Some(id), Some(step)) => Some(EpisodeStep {
                                id,
                                step: u32::try_from(step)
                                    .map_err(|_| LogError::Corrupt(format!("episode step {step}")))?,
                                stage: stage.unwrap_or_default(),
                            }),
                            _ => None,
                        }
                    },
                },
                reward: match (reward, reward_time) {
                    (Some(reward), Some(t)) => Some(Reward { reward, time: Timestamp(t) }),
                    _ => None,
                },
                episode_end: row
                    .try_get::<Option<i64>, _>("episode_end_us")
                    .map_err(e)?
                    .map(|t| -> Result<EpisodeEnd, LogError> {
                        Ok(EpisodeEnd {
                            reward: row.try_get("episode_reward").map_err(e)?,
                            time: Timestamp(t),
                        })
                    })
                    .transpose()?,
                episode_last_step: row
                    .try_get::<Option<i64>, _>("episode_last_step")
                    .map_err(e)?
                    .map(|s| u32::try_from(s).map_err(|_| LogError::Corrupt(format!("episode step {s}"))))
                    .transpose()?,
            })
        })()
    }};
}

/// The columns of a `gate_decisions` row, in the order [`decode_gate!`] reads them.
pub(crate) const GATE_COLUMNS: &str = "id, time_us, published, candidate_version, current_version, \
     candidate_sha256, estimator, margin, n, candidate_value, candidate_low, candidate_high, \
     current_value, current_low, current_high, reason, CAST(meta AS TEXT) AS meta";

/// Decodes a row of [`GATE_COLUMNS`] (either backend) into a `Result<GateRecord, LogError>`.
macro_rules! decode_gate {
    ($row:expr) => {{
        let row = $row;
        (|| -> Result<GateRecord, LogError> {
            let c = |e: sqlx::Error| LogError::Corrupt(e.to_string());
            let meta: String = row.try_get("meta").map_err(c)?;
            let cur: (Option<f64>, Option<f64>) =
                (row.try_get("current_low").map_err(c)?, row.try_get("current_high").map_err(c)?);
            Ok(GateRecord {
                id: row.try_get("id").map_err(c)?,
                time: Timestamp(row.try_get("time_us").map_err(c)?),
                published: row.try_get("published").map_err(c)?,
                candidate_version: row.try_get("candidate_version").map_err(c)?,
                current_version: row.try_get("current_version").map_err(c)?,
                candidate_sha256: row.try_get("candidate_sha256").map_err(c)?,
                estimator: row.try_get("estimator").map_err(c)?,
                margin: row.try_get("margin").map_err(c)?,
                n: row.try_get("n").map_err(c)?,
                candidate_value: row.try_get("candidate_value").map_err(c)?,
                candidate_ci: [
                    row.try_get("candidate_low").map_err(c)?,
                    row.try_get("candidate_high").map_err(c)?,
                ],
                current_value: row.try_get("current_value").map_err(c)?,
                current_ci: match cur {
                    (Some(lo), Some(hi)) => Some([lo, hi]),
                    _ => None,
                },
                reason: row.try_get("reason").map_err(c)?,
                meta: serde_json::from_str(&meta)
                    .map_err(|err| LogError::Corrupt(format!("gate decision meta: {err}")))?,
            })
        })()
    }};
}
pub(crate) use decode_gate;

/// Decodes a `policy_versions` row (without the checkpoint) into `Result<PolicyInfo, LogError>`.
macro_rules! decode_policy_info {
    ($row:expr) => {{
        let row = $row;
        (|| -> Result<PolicyInfo, LogError> {
            let e = |e: sqlx::Error| LogError::Corrupt(e.to_string());
            let meta: String = row.try_get("meta").map_err(e)?;
            Ok(PolicyInfo {
                version: row.try_get("version").map_err(e)?,
                created: Timestamp(row.try_get("created_us").map_err(e)?),
                sha256: row.try_get("sha256").map_err(e)?,
                source: row.try_get("source").map_err(e)?,
                note: row.try_get("note").map_err(e)?,
                meta: serde_json::from_str(&meta)
                    .map_err(|err| LogError::Corrupt(format!("policy meta: {err}")))?,
                size: row.try_get("size").map_err(e)?,
            })
        })()
    }};
}

/// Publishes `$bytes` inside the open transaction `$tx` (see [`DecisionLog::publish_policy`]):
/// evaluates to the [`Published`] outcome, `return`s the error. Does not commit.
macro_rules! publish_in_tx {
    ($self:expr, $tx:ident, $pg:ident, $bytes:expr, $sha:expr, $meta:expr, $meta_json:expr) => {{
        if $pg {
            // Serialises publishers so that versions are gap-free and increasing.
            sqlx::query("LOCK TABLE policy_versions IN SHARE ROW EXCLUSIVE MODE")
                .execute(&mut *$tx)
                .await
                .map_err(|e| $self.err(e))?;
        }
        let existing: Option<i64> =
            sqlx::query_scalar("SELECT version FROM policy_versions WHERE sha256 = $1")
                .bind($sha)
                .fetch_optional(&mut *$tx)
                .await
                .map_err(|e| $self.err(e))?;
        match existing {
            Some(version) => Published { version, created: false },
            None => {
                let version: i64 = sqlx::query_scalar(if $pg {
                    "INSERT INTO policy_versions \
                     (version, created_us, sha256, checkpoint, source, note, meta) \
                     SELECT COALESCE(MAX(version), 0) + 1, $1, $2, $3, $4, $5, CAST($6 AS JSONB) \
                     FROM policy_versions RETURNING version"
                } else {
                    "INSERT INTO policy_versions \
                     (version, created_us, sha256, checkpoint, source, note, meta) \
                     SELECT COALESCE(MAX(version), 0) + 1, $1, $2, $3, $4, $5, $6 \
                     FROM policy_versions WHERE true RETURNING version"
                })
                .bind(Timestamp::now().0)
                .bind($sha)
                .bind($bytes)
                .bind(&$meta.source)
                .bind(&$meta.note)
                .bind($meta_json)
                .fetch_one(&mut *$tx)
                .await
                .map_err(|e| $self.err(e))?;
                if $pg {
                    sqlx::query("SELECT pg_notify('mappo_policy', $1)")
                        .bind(version.to_string())
                        .execute(&mut *$tx)
                        .await
                        .map_err(|e| $self.err(e))?;
                }
                Published { version, created: true }
            }
        }
    }};
}

/// Rows per multi-row INSERT (16 parameters each, 16,000 a statement: under SQLite's 32,766 and
/// PostgreSQL's 65,535).
const INSERT_CHUNK: usize = 1000;

/// A reward to record inside a write transaction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RewardWrite {
    pub id: Uuid,
    pub reward: f64,
    pub time: Timestamp,
}

/// An episode end to record inside a write transaction.
#[derive(Debug, Clone)]
pub(crate) struct EndWrite {
    pub episode: String,
    pub reward: Option<f64>,
    pub time: Timestamp,
}

/// The outcome of each reward and each episode end of one write transaction, in order.
pub(crate) type WriteOutcomes = (Vec<Result<(), LogError>>, Vec<Result<(), LogError>>);

impl DecisionLog {
    /// Opens (creating if needed) the log at `url` — `sqlite:PATH` or `postgres://…` — and
    /// applies any missing migration.
    pub async fn open(url: &str) -> Result<Self, LogError> {
        Self::open_with(url, OpenOptions::default()).await
    }

    /// [`DecisionLog::open`] with options.
    pub async fn open_with(url: &str, opts: OpenOptions) -> Result<Self, LogError> {
        let parsed = DbUrl::parse(url)?;
        let db: Arc<str> = parsed.display().into();
        let connect = |source| LogError::Connect { db: db.to_string(), source };
        let backend = match &parsed {
            DbUrl::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|source| LogError::CreateDir { path: dir.to_path_buf(), source })?;
                }
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(if opts.sqlite_full_sync {
                        SqliteSynchronous::Full
                    } else {
                        SqliteSynchronous::Normal
                    })
                    .foreign_keys(true)
                    .busy_timeout(opts.connect_timeout);
                let pool = SqlitePoolOptions::new()
                    .max_connections(opts.max_connections.max(1))
                    .acquire_timeout(opts.connect_timeout)
                    .connect_with(options)
                    .await
                    .map_err(connect)?;
                Backend::Sqlite(pool)
            }
            DbUrl::Postgres(u) => {
                let mut options = PgConnectOptions::from_str(u).map_err(connect)?;
                // One direct connection first: it reports the real reason (refused, auth, …)
                // instead of a pool timeout, and creates the schema.
                let mut first =
                    tokio::time::timeout(opts.connect_timeout, sqlx::PgConnection::connect_with(&options))
                        .await
                        .map_err(|_| {
                            connect(sqlx::Error::Io(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                format!("no answer within {:?}", opts.connect_timeout),
                            )))
                        })?
                        .map_err(connect)?;
                if let Some(schema) = &opts.pg_schema {
                    if schema.is_empty()
                        || schema.len() > 63
                        || !schema.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                        || schema.starts_with(|c: char| c.is_ascii_digit())
                    {
                        return Err(LogError::BadUrl(format!(
                            "{db} with schema `{schema}` (use lowercase letters, digits and _)"
                        )));
                    }
                    // An identifier cannot be a bind parameter; it was checked just above.
                    sqlx::raw_sql(AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"")))
                        .execute(&mut first)
                        .await
                        .map_err(connect)?;
                    options = options.options([("search_path", schema.as_str())]);
                }
                let _ = first.close().await;
                let pool = PgPoolOptions::new()
                    .max_connections(opts.max_connections.max(1))
                    .acquire_timeout(opts.connect_timeout)
                    .connect_with(options)
                    .await
                    .map_err(connect)?;
                Backend::Postgres(pool)
            }
        };
        let log = DecisionLog { backend, db };
        log.migrate().await?;
        Ok(log)
    }

    /// The database, for messages (never with a password).
    pub fn db(&self) -> &str {
        &self.db
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Closes the pool (waits for connections in use to be returned).
    pub async fn close(&self) {
        on_pool!(self, p, Db, pg => p.close().await)
    }

    pub(crate) fn err(&self, e: sqlx::Error) -> LogError {
        LogError::from_sqlx(&self.db, e)
    }

    /// The migrations of this backend.
    pub fn migrations(&self) -> &'static [Migration] {
        match self.backend {
            Backend::Sqlite(_) => migrations::SQLITE,
            Backend::Postgres(_) => migrations::POSTGRES,
        }
    }

    /// The applied schema versions, ascending.
    pub async fn schema_versions(&self) -> Result<Vec<i64>, LogError> {
        on_pool!(self, p, Db, pg => {
            sqlx::query_scalar::<Db, i64>("SELECT version FROM schema_migrations ORDER BY version")
                .fetch_all(p)
                .await
                .map_err(|e| self.err(e))
        })
    }

    async fn migrate(&self) -> Result<(), LogError> {
        let list = self.migrations();
        let failed = |m: &Migration, source| LogError::Migration {
            db: self.db.to_string(),
            version: m.version,
            name: m.name,
            source,
        };
        let bootstrap =
            Migration { version: 0, name: "schema_migrations", sql: migrations::SCHEMA_MIGRATIONS };
        on_pool!(self, p, Db, pg => {
            // One migrator at a time: SQLite's write lock, PostgreSQL's advisory lock (replicas
            // starting together).
            let mut tx = if pg { p.begin().await } else { p.begin_with("BEGIN IMMEDIATE").await }
                .map_err(|e| failed(&bootstrap, e))?;
            if pg {
                sqlx::query("SELECT pg_advisory_xact_lock(7262737701)")
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| failed(&bootstrap, e))?;
            }
            sqlx::raw_sql(migrations::SCHEMA_MIGRATIONS)
                .execute(&mut *tx)
                .await
                .map_err(|e| failed(&bootstrap, e))?;
            let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations")
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| failed(&bootstrap, e))?;
            for m in list.iter().filter(|m| !applied.contains(&m.version)) {
                sqlx::raw_sql(m.sql).execute(&mut *tx).await.map_err(|e| failed(m, e))?;
                sqlx::query(
                    "INSERT INTO schema_migrations (version, name, applied_us) VALUES ($1, $2, $3)",
                )
                .bind(m.version)
                .bind(m.name)
                .bind(Timestamp::now().0)
                .execute(&mut *tx)
                .await
                .map_err(|e| failed(m, e))?;
                tracing::info!(db = %self.db, version = m.version, name = m.name, "migrated");
            }
            tx.commit().await.map_err(|e| failed(&bootstrap, e))
        })
    }

    /// Logs decisions in one transaction: committed when this returns `Ok`. Fails as a whole
    /// (nothing logged) on an invalid decision or an id already in the log.
    pub async fn log_decisions(&self, decisions: &[Decision]) -> Result<(), LogError> {
        for d in decisions {
            d.validate()?;
        }
        let refs: Vec<&Decision> = decisions.iter().collect();
        self.write(&refs, &[], &[]).await.map(|_| ())
    }

    /// Records the reward of a decision, committed when this returns `Ok`.
    /// [`LogError::UnknownDecision`] when no such decision is logged,
    /// [`LogError::AlreadyRewarded`] when it already has one (the first reward stands),
    /// [`LogError::InvalidReward`] when it is not finite.
    pub async fn record_reward(&self, id: Uuid, reward: f64) -> Result<(), LogError> {
        if !reward.is_finite() {
            return Err(LogError::InvalidReward(reward));
        }
        let w = RewardWrite { id, reward, time: Timestamp::now() };
        let (mut out, _) = self.write(&[], &[w], &[]).await?;
        out.pop().unwrap_or(Ok(()))
    }

    /// Ends an episode, with a reward for the episode as a whole or without one; committed when
    /// this returns `Ok`. [`LogError::UnknownEpisode`] when no decision of it is logged,
    /// [`LogError::EpisodeAlreadyEnded`] for a second end (the first stands),
    /// [`LogError::InvalidEpisodeReward`] for a reward that is not finite.
    pub async fn end_episode(&self, episode: &str, reward: Option<f64>) -> Result<(), LogError> {
        if let Some(r) = reward.filter(|r| !r.is_finite()) {
            return Err(LogError::InvalidEpisodeReward(r));
        }
        let w = EndWrite { episode: episode.to_string(), reward, time: Timestamp::now() };
        let (_, mut out) = self.write(&[], &[], &[w]).await?;
        out.pop().unwrap_or(Ok(()))
    }

    /// An episode's steps so far (step, action, stage, in step order) and its end; `None` when no
    /// decision of it is logged.
    pub async fn episode(&self, id: &str) -> Result<Option<EpisodeState>, LogError> {
        on_pool!(self, p, Db, pg => {
            let rows = sqlx::query(
                "SELECT step, action, stage FROM decisions WHERE episode_id = $1 ORDER BY step",
            )
            .bind(id)
            .fetch_all(p)
            .await
            .map_err(|e| self.err(e))?;
            if rows.is_empty() {
                return Ok(None);
            }
            let c = |e: sqlx::Error| LogError::Corrupt(e.to_string());
            let mut steps = Vec::with_capacity(rows.len());
            for row in &rows {
                let step: i64 = row.try_get("step").map_err(c)?;
                let action: i64 = row.try_get("action").map_err(c)?;
                let stage: Option<String> = row.try_get("stage").map_err(c)?;
                let bad = || LogError::Corrupt(format!("episode {id:?}: step {step}, action {action}"));
                steps.push((
                    u32::try_from(step).map_err(|_| bad())?,
                    u32::try_from(action).map_err(|_| bad())?,
                    stage.unwrap_or_default(),
                ));
            }
            let end = sqlx::query("SELECT reward, time_us FROM episode_ends WHERE episode_id = $1")
                .bind(id)
                .fetch_optional(p)
                .await
                .map_err(|e| self.err(e))?;
            let end = match end {
                Some(row) => Some(EpisodeEnd {
                    reward: row.try_get("reward").map_err(c)?,
                    time: Timestamp(row.try_get("time_us").map_err(c)?),
                }),
                None => None,
            };
            Ok(Some(EpisodeState { id: id.to_string(), steps, end }))
        })
    }

    /// One write transaction: the decisions, then the rewards (so a reward may follow its
    /// decision in the same batch), then the episode ends. Returns each reward's and each end's
    /// outcome; an `Err` means nothing was committed.
    pub(crate) async fn write(
        &self,
        decisions: &[&Decision],
        rewards: &[RewardWrite],
        ends: &[EndWrite],
    ) -> Result<WriteOutcomes, LogError> {
        if decisions.is_empty() && rewards.is_empty() && ends.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let dup = |log: &Self, e: sqlx::Error, chunk: &[&Decision]| match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                // Which constraint: the episode's (episode_id, step) or the decision id.
                let episode = d.constraint().is_some_and(|c| c.contains("episode"))
                    || d.message().contains("episode_id");
                // (In a batch of several requests the first episode step is named; the group
                // committer retries each request alone, which names the right one.)
                match chunk.iter().find_map(|d| d.episode.as_ref()).filter(|_| episode) {
                    Some(ep) => LogError::StepTaken { episode: ep.id.clone(), step: ep.step },
                    None => LogError::DuplicateDecision,
                }
            }
            _ => log.err(e),
        };
        on_pool!(self, p, Db, pg => {
            let mut tx = if pg { p.begin().await } else { p.begin_with("BEGIN IMMEDIATE").await }
                .map_err(|e| self.err(e))?;
            for chunk in decisions.chunks(INSERT_CHUNK) {
                let mut qb = QueryBuilder::<Db>::new(
                    "INSERT INTO decisions (id, time_us, policy_version, action, agent, \
                     probabilities, propensity, kind, embedding, model_hash, text, replica, \
                     cost_weight, shadow_version, shadow_action, shadow_propensity, \
                     episode_id, step, stage) ",
                );
                qb.push_values(chunk, |mut b, d| {
                    b.push_bind(d.id)
                        .push_bind(d.time.0)
                        .push_bind(d.policy_version)
                        .push_bind(i64::from(d.action))
                        .push_bind(d.agent.clone())
                        .push_bind(f32s_to_bytes(&d.probabilities))
                        .push_bind(f64::from(d.propensity))
                        .push_bind(d.kind.as_str())
                        .push_bind(f32s_to_bytes(&d.embedding))
                        .push_bind(d.model_hash.clone())
                        .push_bind(d.text.clone())
                        .push_bind(d.replica.clone())
                        .push_bind(d.cost_weight.map(f64::from))
                        .push_bind(d.shadow.map(|s| s.version))
                        .push_bind(d.shadow.map(|s| i64::from(s.action)))
                        .push_bind(d.shadow.map(|s| f64::from(s.propensity)))
                        .push_bind(d.episode.as_ref().map(|e| e.id.clone()))
                        .push_bind(d.episode.as_ref().map(|e| i64::from(e.step)))
                        .push_bind(d.episode.as_ref().map(|e| e.stage.clone()));
                });
                // Not kept as a prepared statement: each batch size is a different text.
                qb.build().persistent(false).execute(&mut *tx).await.map_err(|e| dup(self, e, chunk))?;
            }
            let mut rollup = BTreeMap::new();
            tally::tally_decisions(&mut rollup, decisions.iter().copied());
            // A step of an episode that has ended is refused (the whole transaction: the group
            // committer then retries each request alone, so only that one fails).
            for d in decisions {
                if let Some(ep) = &d.episode {
                    let ended: Option<i64> =
                        sqlx::query_scalar("SELECT CAST(1 AS BIGINT) FROM episode_ends WHERE episode_id = $1")
                            .bind(&ep.id)
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(|e| self.err(e))?;
                    if ended.is_some() {
                        return Err(LogError::EpisodeEnded(ep.id.clone()));
                    }
                }
            }
            let mut outcomes = Vec::with_capacity(rewards.len());
            for r in rewards {
                let inserted = sqlx::query(
                    "INSERT INTO rewards (decision_id, reward, time_us) \
                     SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM decisions WHERE id = $1) \
                     ON CONFLICT (decision_id) DO NOTHING",
                )
                .bind(r.id)
                .bind(r.reward)
                .bind(r.time.0)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(e))?
                .rows_affected();
                if inserted == 1 {
                    let row = sqlx::query(tally::ROLLUP_KEY_SQL)
                        .bind(r.id)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(|e| self.err(e))?;
                    let c = |e: sqlx::Error| LogError::Corrupt(e.to_string());
                    let time_us: i64 = row.try_get("time_us").map_err(c)?;
                    let kind = DecisionKind::from_str(&row.try_get::<String, _>("kind").map_err(c)?)?;
                    let key = (tally::rollup_bucket(time_us), row.try_get("agent").map_err(c)?, kind.as_str());
                    tally::tally_reward(&mut rollup, key, r.reward);
                    outcomes.push(Ok(()));
                    continue;
                }
                let known: Option<i64> =
                    sqlx::query_scalar("SELECT CAST(1 AS BIGINT) FROM decisions WHERE id = $1")
                        .bind(r.id)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(|e| self.err(e))?;
                outcomes.push(Err(if known.is_some() {
                    LogError::AlreadyRewarded(r.id)
                } else {
                    LogError::UnknownDecision(r.id)
                }));
            }
            let mut ended = Vec::with_capacity(ends.len());
            for w in ends {
                let inserted = sqlx::query(
                    "INSERT INTO episode_ends (episode_id, reward, time_us) \
                     SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM decisions WHERE episode_id = $1) \
                     ON CONFLICT (episode_id) DO NOTHING",
                )
                .bind(&w.episode)
                .bind(w.reward)
                .bind(w.time.0)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(e))?
                .rows_affected();
                if inserted == 1 {
                    ended.push(Ok(()));
                    continue;
                }
                let known: Option<i64> =
                    sqlx::query_scalar("SELECT CAST(1 AS BIGINT) FROM episode_ends WHERE episode_id = $1")
                        .bind(&w.episode)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(|e| self.err(e))?;
                ended.push(Err(if known.is_some() {
                    LogError::EpisodeAlreadyEnded(w.episode.clone())
                } else {
                    LogError::UnknownEpisode(w.episode.clone())
                }));
            }
            // The dashboard's rollup, last and in key order (see `ROLLUP_UPSERT_SQL`).
            for ((bucket, agent, kind), t) in &rollup {
                sqlx::query(tally::ROLLUP_UPSERT_SQL)
                    .bind(bucket)
                    .bind(agent)
                    .bind(*kind)
                    .bind(t.decisions)
                    .bind(t.rewarded)
                    .bind(t.reward_sum)
                    .bind(t.reward_sq_sum)
                    .bind(t.cost_weighted)
                    .bind(t.cost_weight_sum)
                    .bind(t.cost_weight_min)
                    .bind(t.cost_weight_max)
                    .bind(t.shadowed)
                    .bind(t.shadow_agreed)
                    .bind(t.shadow_version)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.err(e))?;
            }
            tx.commit().await.map_err(|e| self.err(e))?;
            Ok((outcomes, ended))
        })
    }

    /// Publishes a checkpoint (the bytes of a safetensors file) as the next policy version and
    /// returns it. Idempotent: bytes already published (same sha256) return their existing
    /// version with `created: false`. On PostgreSQL, also sends `NOTIFY mappo_policy`
    /// with the version.
    pub async fn publish_policy(&self, checkpoint: &[u8], meta: &PublishMeta) -> Result<Published, LogError> {
        let sha = format!("{:x}", Sha256::digest(checkpoint));
        let meta_json = match &meta.meta {
            serde_json::Value::Null => "{}".to_string(),
            v => v.to_string(),
        };
        on_pool!(self, p, Db, pg => {
            let mut tx = if pg { p.begin().await } else { p.begin_with("BEGIN IMMEDIATE").await }
                .map_err(|e| self.err(e))?;
            let published = publish_in_tx!(self, tx, pg, checkpoint, &sha, meta, &meta_json);
            tx.commit().await.map_err(|e| self.err(e))?;
            Ok(published)
        })
    }

    /// The saved state of learner `name`, `None` before its first save.
    pub async fn learner_state(&self, name: &str) -> Result<Option<LearnerState>, LogError> {
        on_pool!(self, p, Db, pg => {
            let row = sqlx::query(
                "SELECT name, updated_us, watermark_time_us, watermark_id, updates, events, learned, \
                 base_version, checkpoint, CAST(meta AS TEXT) AS meta FROM learner_state WHERE name = $1",
            )
            .bind(name)
            .fetch_optional(p)
            .await
            .map_err(|e| self.err(e))?;
            let Some(row) = row else { return Ok(None) };
            let c = |e: sqlx::Error| LogError::Corrupt(format!("learner_state: {e}"));
            let time: Option<i64> = row.try_get("watermark_time_us").map_err(c)?;
            let id: Option<Uuid> = row.try_get("watermark_id").map_err(c)?;
            let meta: String = row.try_get("meta").map_err(c)?;
            Ok(Some(LearnerState {
                name: row.try_get("name").map_err(c)?,
                watermark: match (time, id) {
                    (Some(t), Some(id)) => Some(Watermark { time: Timestamp(t), id }),
                    (None, None) => None,
                    _ => return Err(LogError::Corrupt("learner_state: half a watermark".into())),
                },
                updates: row.try_get("updates").map_err(c)?,
                events: row.try_get("events").map_err(c)?,
                learned: row.try_get("learned").map_err(c)?,
                base_version: row.try_get("base_version").map_err(c)?,
                checkpoint: row.try_get("checkpoint").map_err(c)?,
                meta: serde_json::from_str(&meta)
                    .map_err(|e| LogError::Corrupt(format!("learner_state meta: {e}")))?,
                updated: Timestamp(row.try_get("updated_us").map_err(c)?),
            }))
        })
    }

    /// Saves a learner's state in one transaction, optionally with the publication of a
    /// checkpoint as a policy version (then `base_version` is stored as that version): after a
    /// crash either all of it is in the database or none of it. `expected_updates` is the
    /// `updates` of the state this one follows (`None`: the first save); when the stored row
    /// does not match, nothing is written and [`LogError::LearnerConflict`] says so (another
    /// learner of the same name). Returns the publication's outcome.
    pub async fn save_learner_state(
        &self,
        state: &LearnerState,
        expected_updates: Option<i64>,
        publish: Option<(&[u8], &PublishMeta)>,
    ) -> Result<Option<Published>, LogError> {
        let meta_json = match &state.meta {
            serde_json::Value::Null => "{}".to_string(),
            v => v.to_string(),
        };
        on_pool!(self, p, Db, pg => {
            let mut tx = if pg { p.begin().await } else { p.begin_with("BEGIN IMMEDIATE").await }
                .map_err(|e| self.err(e))?;
            let published = match publish {
                Some((bytes, meta)) => {
                    let sha = format!("{:x}", Sha256::digest(bytes));
                    let pmeta = match &meta.meta {
                        serde_json::Value::Null => "{}".to_string(),
                        v => v.to_string(),
                    };
                    Some(publish_in_tx!(self, tx, pg, bytes, &sha, meta, &pmeta))
                }
                None => None,
            };
            let base_version = published.map(|p| p.version).or(state.base_version);
            let (wt, wid) = match state.watermark {
                Some(w) => (Some(w.time.0), Some(w.id)),
                None => (None, None),
            };
            let sql = match (expected_updates, pg) {
                (None, true) => "INSERT INTO learner_state (updated_us, watermark_time_us, watermark_id, \
                     updates, events, learned, base_version, checkpoint, meta, name) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, CAST($9 AS JSONB), $10) \
                     ON CONFLICT (name) DO NOTHING",
                (None, false) => "INSERT INTO learner_state (updated_us, watermark_time_us, watermark_id, \
                     updates, events, learned, base_version, checkpoint, meta, name) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (name) DO NOTHING",
                (Some(_), true) => "UPDATE learner_state SET updated_us = $1, watermark_time_us = $2, \
                     watermark_id = $3, updates = $4, events = $5, learned = $6, base_version = $7, \
                     checkpoint = $8, meta = CAST($9 AS JSONB) WHERE name = $10 AND updates = $11",
                (Some(_), false) => "UPDATE learner_state SET updated_us = $1, watermark_time_us = $2, \
                     watermark_id = $3, updates = $4, events = $5, learned = $6, base_version = $7, \
                     checkpoint = $8, meta = $9 WHERE name = $10 AND updates = $11",
            };
            let mut q = sqlx::query(sql)
                .bind(Timestamp::now().0)
                .bind(wt)
                .bind(wid)
                .bind(state.updates)
                .bind(state.events)
                .bind(state.learned)
                .bind(base_version)
                .bind(&state.checkpoint)
                .bind(&meta_json)
                .bind(&state.name);
            if let Some(u) = expected_updates {
                q = q.bind(u);
            }
            let n = q.execute(&mut *tx).await.map_err(|e| self.err(e))?.rows_affected();
            if n != 1 {
                tx.rollback().await.map_err(|e| self.err(e))?;
                return Err(LogError::LearnerConflict(state.name.clone()));
            }
            tx.commit().await.map_err(|e| self.err(e))?;
            Ok(published)
        })
    }

    /// Whether the log takes writes now: SQLite takes its write lock (`BEGIN IMMEDIATE`, rolled
    /// back — a reader in WAL mode succeeds while another process holds the lock, a writer does
    /// not); PostgreSQL answers a query. What a replica probes before it says it is healthy again.
    pub async fn check_writable(&self) -> Result<(), LogError> {
        match &self.backend {
            Backend::Sqlite(p) => {
                let tx = p.begin_with("BEGIN IMMEDIATE").await.map_err(|e| self.err(e))?;
                tx.rollback().await.map_err(|e| self.err(e))
            }
            Backend::Postgres(p) => {
                sqlx::query("SELECT 1").execute(p).await.map(|_| ()).map_err(|e| self.err(e))
            }
        }
    }

    /// The newest version number, `None` when nothing is published. One indexed query: cheap
    /// enough for every replica to poll every few hundred milliseconds.
    pub async fn latest_policy_version(&self) -> Result<Option<i64>, LogError> {
        on_pool!(self, p, Db, pg => {
            sqlx::query_scalar::<Db, Option<i64>>("SELECT MAX(version) FROM policy_versions")
                .fetch_one(p)
                .await
                .map_err(|e| self.err(e))
        })
    }

    /// The newest version with its checkpoint.
    pub async fn latest_policy(&self) -> Result<Option<Policy>, LogError> {
        match self.latest_policy_version().await? {
            Some(v) => self.policy(v).await,
            None => Ok(None),
        }
    }

    /// One version with its checkpoint, `None` when it does not exist.
    pub async fn policy(&self, version: i64) -> Result<Option<Policy>, LogError> {
        on_pool!(self, p, Db, pg => {
            let row = sqlx::query(
                "SELECT version, created_us, sha256, source, note, CAST(meta AS TEXT) AS meta, \
                 CAST(LENGTH(checkpoint) AS BIGINT) AS size, checkpoint \
                 FROM policy_versions WHERE version = $1",
            )
            .bind(version)
            .fetch_optional(p)
            .await
            .map_err(|e| self.err(e))?;
            match row {
                None => Ok(None),
                Some(row) => {
                    let info = decode_policy_info!(&row)?;
                    let checkpoint: Vec<u8> = row
                        .try_get("checkpoint")
                        .map_err(|e| LogError::Corrupt(e.to_string()))?;
                    Ok(Some(Policy { info, checkpoint }))
                }
            }
        })
    }

    /// Every version, oldest first, without checkpoints.
    pub async fn list_policies(&self) -> Result<Vec<PolicyInfo>, LogError> {
        on_pool!(self, p, Db, pg => {
            let rows = sqlx::query(
                "SELECT version, created_us, sha256, source, note, CAST(meta AS TEXT) AS meta, \
                 CAST(LENGTH(checkpoint) AS BIGINT) AS size \
                 FROM policy_versions ORDER BY version",
            )
            .fetch_all(p)
            .await
            .map_err(|e| self.err(e))?;
            rows.iter().map(|row| decode_policy_info!(row)).collect()
        })
    }

    /// Watches the newest policy version by polling [`DecisionLog::latest_policy_version`]
    /// every `every`; the receiver sees each change. The polling task ends when every receiver
    /// is dropped. A failed poll keeps the last value (and is logged).
    pub fn watch_policy_version(&self, every: Duration) -> tokio::sync::watch::Receiver<Option<i64>> {
        let (tx, rx) = tokio::sync::watch::channel(None);
        let log = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if tx.is_closed() {
                    return;
                }
                match log.latest_policy_version().await {
                    Ok(v) => {
                        tx.send_if_modified(|cur| {
                            let changed = *cur != v;
                            *cur = v;
                            changed
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "polling the policy version failed"),
                }
            }
        });
        rx
    }

    /// Records one decision of the promotion gate (published or not) and returns its id.
    /// `record.id` is ignored: ids are 1, 2, 3, … in recording order.
    pub async fn record_gate_decision(&self, record: &GateRecord) -> Result<i64, LogError> {
        let finite = |v: f64| v.is_finite();
        let values = [record.margin, record.candidate_value, record.candidate_ci[0], record.candidate_ci[1]];
        let current = record.current_value.into_iter().chain(record.current_ci.into_iter().flatten());
        if !values.into_iter().chain(current).all(finite) {
            return Err(LogError::Corrupt(format!(
                "gate decision with a non-finite estimate: {}",
                record.reason
            )));
        }
        let meta_json = match &record.meta {
            serde_json::Value::Null => "{}".to_string(),
            v => v.to_string(),
        };
        on_pool!(self, p, Db, pg => {
            let mut tx = if pg { p.begin().await } else { p.begin_with("BEGIN IMMEDIATE").await }
                .map_err(|e| self.err(e))?;
            if pg {
                sqlx::query("LOCK TABLE gate_decisions IN SHARE ROW EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| self.err(e))?;
            }
            let id: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
                "INSERT INTO gate_decisions (id, time_us, published, candidate_version, current_version, \
                 candidate_sha256, estimator, margin, n, candidate_value, candidate_low, candidate_high, \
                 current_value, current_low, current_high, reason, meta) \
                 SELECT COALESCE(MAX(id), 0) + 1, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
                 $14, $15, {} FROM gate_decisions {}RETURNING id",
                if pg { "CAST($16 AS JSONB)" } else { "$16" },
                if pg { "" } else { "WHERE true " },
            )))
            .bind(record.time.0)
            .bind(record.published)
            .bind(record.candidate_version)
            .bind(record.current_version)
            .bind(&record.candidate_sha256)
            .bind(&record.estimator)
            .bind(record.margin)
            .bind(record.n)
            .bind(record.candidate_value)
            .bind(record.candidate_ci[0])
            .bind(record.candidate_ci[1])
            .bind(record.current_value)
            .bind(record.current_ci.map(|c| c[0]))
            .bind(record.current_ci.map(|c| c[1]))
            .bind(&record.reason)
            .bind(&meta_json)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
            tx.commit().await.map_err(|e| self.err(e))?;
            Ok(id)
        })
    }

    /// Every gate decision, oldest first.
    pub async fn gate_decisions(&self) -> Result<Vec<GateRecord>, LogError> {
        on_pool!(self, p, Db, pg => {
            let rows = sqlx::query(AssertSqlSafe(format!("SELECT {GATE_COLUMNS} FROM gate_decisions ORDER BY id")))
            .fetch_all(p)
            .await
            .map_err(|e| self.err(e))?;
            rows.iter().map(|row| decode_gate!(row)).collect()
        })
    }

    /// One decision with its reward, `None` when unknown.
    pub async fn decision(&self, id: Uuid) -> Result<Option<JoinedEvent>, LogError> {
        on_pool!(self, p, Db, pg => {
            let row = sqlx::query(AssertSqlSafe(format!(
                "SELECT {EVENT_COLUMNS} {EVENT_FROM} WHERE d.id = $1"
            )))
            .bind(id)
            .fetch_optional(p)
            .await
            .map_err(|e| self.err(e))?;
            row.map(|row| decode_event!(&row)).transpose()
        })
    }

    /// The ids of the newest `limit` ended episodes, newest end first.
    pub async fn ended_episodes(&self, limit: u32) -> Result<Vec<String>, LogError> {
        on_pool!(self, p, Db, pg => {
            sqlx::query_scalar("SELECT episode_id FROM episode_ends ORDER BY time_us DESC, episode_id LIMIT $1")
                .bind(i64::from(limit))
                .fetch_all(p)
                .await
                .map_err(|e| self.err(e))
        })
    }

    /// Every decision of an episode joined with its reward, in step order (empty for an unknown
    /// episode).
    pub async fn episode_events(&self, id: &str) -> Result<Vec<JoinedEvent>, LogError> {
        on_pool!(self, p, Db, pg => {
            let rows = sqlx::query(AssertSqlSafe(format!(
                "SELECT {EVENT_COLUMNS} {EVENT_FROM} WHERE d.episode_id = $1 ORDER BY d.step"
            )))
            .bind(id)
            .fetch_all(p)
            .await
            .map_err(|e| self.err(e))?;
            rows.iter().map(|row| decode_event!(row)).collect()
        })
    }

    /// Decisions joined with their rewards (`None` where none has arrived), in the stable order
    /// `(time, id)` ascending, strictly after `q.after`, strictly before `q.before`, at most
    /// `q.limit`. Page with `after = last.watermark()`. Greedy and forced decisions are
    /// included (their `kind` says so): the learner filters.
    pub async fn joined_events(&self, q: &EventQuery) -> Result<Vec<JoinedEvent>, LogError> {
        let after = q.after.unwrap_or(Watermark { time: Timestamp(i64::MIN), id: Uuid::nil() });
        let before = q.before.unwrap_or(Timestamp(i64::MAX));
        on_pool!(self, p, Db, pg => {
            // The format! only pastes the constant column list; every value is a parameter.
            let rows = sqlx::query(AssertSqlSafe(format!(
                "SELECT {EVENT_COLUMNS} {EVENT_FROM} \
                 WHERE (d.time_us > $1 OR (d.time_us = $1 AND d.id > $2)) AND d.time_us < $3 \
                 ORDER BY d.time_us, d.id LIMIT $4"
            )))
            .bind(after.time.0)
            .bind(after.id)
            .bind(before.0)
            .bind(i64::from(q.limit))
            .fetch_all(p)
            .await
            .map_err(|e| self.err(e))?;
            rows.iter().map(|row| decode_event!(row)).collect()
        })
    }

    /// Writes every decision as one JSON line (the format of `mappo log export`, see
    /// [`ExportLine`]) in the stable order of [`DecisionLog::joined_events`]; returns the
    /// number of lines.
    pub async fn export_jsonl<W: Write>(&self, out: &mut W, opts: ExportOptions) -> Result<u64, LogError> {
        let mut q = EventQuery { after: None, before: None, limit: 1000 };
        let mut n = 0u64;
        loop {
            let page = self.joined_events(&q).await?;
            let Some(last) = page.last() else { break };
            q.after = Some(last.watermark());
            for e in &page {
                serde_json::to_writer(&mut *out, &ExportLine::new(e, opts))
                    .map_err(|e| LogError::Write(e.into()))?;
                out.write_all(b"\n").map_err(LogError::Write)?;
                n += 1;
            }
        }
        out.flush().map_err(LogError::Write)?;
        Ok(n)
    }

    /// Counts, join rate and reward means (`mappo log stats`).
    pub async fn stats(&self) -> Result<Stats, LogError> {
        on_pool!(self, p, Db, pg => {
            let m = |e| self.err(e);
            let d = sqlx::query(
                "SELECT COUNT(*) AS n, \
                 COUNT(CASE WHEN kind = 'sampled' THEN 1 END) AS sampled, \
                 COUNT(CASE WHEN kind = 'greedy' THEN 1 END) AS greedy, \
                 COUNT(CASE WHEN kind = 'forced' THEN 1 END) AS forced, \
                 MIN(time_us) AS first, MAX(time_us) AS last FROM decisions",
            )
            .fetch_one(p)
            .await
            .map_err(m)?;
            let r = sqlx::query("SELECT COUNT(*) AS n, AVG(reward) AS mean FROM rewards")
                .fetch_one(p)
                .await
                .map_err(m)?;
            let v = sqlx::query("SELECT COUNT(*) AS n, MAX(version) AS latest FROM policy_versions")
                .fetch_one(p)
                .await
                .map_err(m)?;
            let agents = sqlx::query(
                "SELECT d.agent AS agent, COUNT(*) AS n, COUNT(r.decision_id) AS rewarded, \
                 AVG(r.reward) AS mean FROM decisions d \
                 LEFT JOIN rewards r ON r.decision_id = d.id GROUP BY d.agent ORDER BY d.agent",
            )
            .fetch_all(p)
            .await
            .map_err(m)?;
            let ep = sqlx::query(
                "SELECT (SELECT COUNT(DISTINCT episode_id) FROM decisions) AS n, \
                 COUNT(*) AS ended, AVG(reward) AS mean FROM episode_ends",
            )
            .fetch_one(p)
            .await
            .map_err(m)?;
            let c = |e: sqlx::Error| LogError::Corrupt(e.to_string());
            let decisions: i64 = d.try_get("n").map_err(c)?;
            let rewards: i64 = r.try_get("n").map_err(c)?;
            let mut per_agent = Vec::with_capacity(agents.len());
            for a in &agents {
                per_agent.push(AgentStats {
                    agent: a.try_get("agent").map_err(c)?,
                    decisions: a.try_get("n").map_err(c)?,
                    rewarded: a.try_get("rewarded").map_err(c)?,
                    reward_mean: a.try_get("mean").map_err(c)?,
                });
            }
            Ok(Stats {
                decisions,
                sampled: d.try_get("sampled").map_err(c)?,
                greedy: d.try_get("greedy").map_err(c)?,
                forced: d.try_get("forced").map_err(c)?,
                rewards,
                join_rate: if decisions > 0 { rewards as f64 / decisions as f64 } else { 0.0 },
                reward_mean: r.try_get("mean").map_err(c)?,
                policy_versions: v.try_get("n").map_err(c)?,
                latest_policy_version: v.try_get("latest").map_err(c)?,
                first_decision: d.try_get::<Option<i64>, _>("first").map_err(c)?.map(Timestamp),
                last_decision: d.try_get::<Option<i64>, _>("last").map_err(c)?.map(Timestamp),
                agents: per_agent,
                episodes: ep.try_get("n").map_err(c)?,
                episodes_ended: ep.try_get("ended").map_err(c)?,
                episode_reward_mean: ep.try_get("mean").map_err(c)?,
            })
        })
    }
}
