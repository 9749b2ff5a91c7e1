//! The learner's errors.

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
}
