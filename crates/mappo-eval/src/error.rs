//! The one error type of mappo-eval.

use thiserror::Error;

/// Errors of evaluating, calibrating and routing with a checkpoint.
#[derive(Debug, Error)]
pub enum EvalError {
    /// Loading the checkpoint or running its policy failed.
    #[error(transparent)]
    Train(#[from] mappo_train::TrainError),
    /// Reading, embedding or scoring a corpus failed.
    #[error(transparent)]
    Env(#[from] mappo_env::EnvError),
    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// The checkpoint cannot be used for this evaluation.
    #[error("checkpoint {path}: {problem}")]
    Checkpoint {
        /// The file.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The pieces given do not fit together (a corpus without outcomes for the baseline, a
    /// budget that cannot be met, an agent that does not exist, ...).
    #[error("{0}")]
    Setup(String),
}
