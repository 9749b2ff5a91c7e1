//! The log's typed errors.

use std::path::PathBuf;

use uuid::Uuid;

/// Everything the decision log can fail with. A service maps [`LogError::UnknownDecision`] to
/// 404, [`LogError::AlreadyRewarded`] to 409, [`LogError::InvalidReward`] to 422 and
/// [`LogError::is_unavailable`] errors to 503.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The URL is neither `sqlite:PATH` nor `postgres://…`.
    #[error("unsupported database URL {0}: expected sqlite:PATH or postgres://USER@HOST/DB")]
    BadUrl(String),
    /// The directory of a SQLite file could not be created.
    #[error("cannot create the directory {path} for the decision log: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Opening the database failed (unreachable, refused, bad credentials, …). `db` never holds
    /// a password.
    #[error("cannot open the decision log database {db}: {source}")]
    Connect {
        /// The URL without its password.
        db: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A schema migration failed.
    #[error("migration {version} ({name}) of the decision log {db} failed: {source}")]
    Migration {
        /// The URL without its password.
        db: String,
        /// The migration's version.
        version: i64,
        /// The migration's name.
        name: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The database cannot be reached now (connection lost, pool timed out): retry later.
    #[error("the decision log database {db} is unavailable: {source}")]
    Unavailable {
        /// The URL without its password.
        db: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// Any other database error.
    #[error("decision log database error on {db}: {source}")]
    Database {
        /// The URL without its password.
        db: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A decision with this id is already logged.
    #[error("a decision with one of these ids is already in the log")]
    DuplicateDecision,
    /// A decision failed validation (see [`crate::Decision::validate`]).
    #[error("invalid decision {id}: {reason}")]
    InvalidDecision {
        /// The decision's id.
        id: Uuid,
        /// What is wrong.
        reason: String,
    },
    /// A reward for a decision id that is not in the log.
    #[error("no decision {0} in the log")]
    UnknownDecision(Uuid),
    /// A second reward for the same decision.
    #[error("decision {0} already has a reward")]
    AlreadyRewarded(Uuid),
    /// A reward that is NaN or infinite.
    #[error("reward {0} is not a finite number")]
    InvalidReward(f64),
    /// A stored row could not be decoded.
    #[error("corrupt decision log row: {0}")]
    Corrupt(String),
    /// Writing an export failed.
    #[error("writing the export failed: {0}")]
    Write(#[source] std::io::Error),
    /// The learner state changed under this learner: another learner of the same name runs.
    #[error("learner `{0}` was saved by someone else meanwhile (two learners with one name?)")]
    LearnerConflict(String),
    /// The group committer has stopped (its runtime is shutting down).
    #[error("the decision log's group committer has stopped")]
    CommitterClosed,
    /// An end or a step for an episode id with no decision in the log.
    #[error("no episode {0:?} in the log")]
    UnknownEpisode(String),
    /// A second end of the same episode.
    #[error("episode {0:?} has already ended")]
    EpisodeAlreadyEnded(String),
    /// A step of an episode that has ended.
    #[error("episode {0:?} has ended: it takes no more steps")]
    EpisodeEnded(String),
    /// Another decision took this step of the episode first (two requests for one step).
    #[error("step {step} of episode {episode:?} is already decided (a concurrent request took it)")]
    StepTaken {
        /// The episode id.
        episode: String,
        /// The step.
        step: u32,
    },
    /// An episode reward that is NaN or infinite.
    #[error("episode reward {0} is not a finite number")]
    InvalidEpisodeReward(f64),
}

impl LogError {
    /// Whether the error means the database is unreachable for now (a service answers 503).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, LogError::Unavailable { .. } | LogError::CommitterClosed)
    }

    /// Classifies a driver error on database `db`.
    pub(crate) fn from_sqlx(db: &str, e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_) => LogError::Unavailable { db: db.to_string(), source: e },
            // PostgreSQL: connection exceptions (class 08) and shutdowns (57P01–57P03);
            // SQLite: BUSY / LOCKED after the busy timeout.
            sqlx::Error::Database(d)
                if d.code()
                    .is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c == "5" || c == "6") =>
            {
                LogError::Unavailable { db: db.to_string(), source: e }
            }
            _ => LogError::Database { db: db.to_string(), source: e },
        }
    }
}
