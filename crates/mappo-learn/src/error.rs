//! The learner's errors.

use std::path::PathBuf;

/// Everything that can go wrong while learning from or evaluating on a log.
#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    /// The decision log failed.
    #[error(transparent)]
    Log(#[from] mappo_log::LogError),
    /// Model code failed.
    #[error(transparent)]
    Train(#[from] mappo_train::TrainError),
    /// The log holds something unusable (a missing embedding, a bad propensity, ...).
    #[error("{0}")]
    BadLog(String),
    /// An exported log (JSON lines) could not be read.
    #[error("cannot read the log {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line of an exported log is not a usable event.
    #[error("{path}:{line}: {message}")]
    BadLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Nothing to evaluate: no logged event is usable (each reason is in the message).
    #[error("no usable event in the log: {0}")]
    NoEvents(String),
    /// The candidate does not fit the log (e.g. another number of agents or embedding width).
    #[error("the candidate does not fit the log: {0}")]
    Mismatch(String),
}
