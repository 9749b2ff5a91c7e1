//! mappo-train: PPO for prompt routing, as a library.
//!
//! The [`Trainer`] is generic over an environment ([`mappo_env::Env`]) and a
//! policy ([`mappo_nn::Policy`]); [`run`] drives it with logging, periodic
//! greedy evaluation and checkpoints in a run directory; [`Checkpoint`] is
//! the self-describing file that `mappo eval` and `mappo route` read.
//!
//! ```no_run
//! use mappo_config::Config;
//! let cfg = Config::load(None, &["train.total_updates=100".into()])?;
//! let mut setup = mappo_train::SyntheticSetup::new(&cfg)?;
//! let summary = mappo_train::run(
//!     &mut setup.trainer,
//!     Some(&setup.evaluator),
//!     &mappo_train::RunOptions::new("runs/example"),
//!     &mut mappo_train::NoObserver,
//! )?;
//! println!("{}", summary.final_checkpoint.display());
//! # Ok::<(), mappo_train::TrainError>(())
//! ```

mod checkpoint;
mod eval;
mod loss;
mod run;
mod setup;
mod text;
mod trainer;

use thiserror::Error;

pub use checkpoint::{Checkpoint, FORMAT, checkpoint_name, list_checkpoints, write_atomic};
pub use eval::{EvalReport, GreedyEvaluator};
pub use loss::{HeadGrads, LossStats, ppo_loss_head};
pub use run::{NoObserver, Observer, RunOptions, RunSummary, latest_valid_checkpoint, run};
pub use setup::{SyntheticSetup, evaluate_checkpoint_synthetic, load_checkpoint_policy, select_device};
pub use text::{
    AgentScore, CorpusReport, EmbedProgress, EmbeddedCorpus, Routed, Router, TextSetup, embed_corpus,
    evaluate_corpus, load_embedder, model_dir,
};
pub use trainer::{Trainer, UpdateMetrics, explained_variance, load_policy_weights};

/// Errors of training, evaluation and checkpoints.
#[derive(Debug, Error)]
pub enum TrainError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] mappo_config::ConfigError),
    /// Environment failure.
    #[error(transparent)]
    Env(#[from] mappo_env::EnvError),
    /// Network or optimizer failure.
    #[error(transparent)]
    Nn(#[from] mappo_nn::NnError),
    /// Rollout buffer failure.
    #[error(transparent)]
    Buffer(#[from] mappo_buffer::BufferError),
    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// A checkpoint cannot be used.
    #[error("checkpoint {path}: {problem}")]
    Checkpoint {
        /// The file.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A file or directory of the run cannot be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The path.
        path: String,
        /// What failed.
        message: String,
    },
    /// A loss or gradient became NaN or infinite.
    #[error(
        "training diverged at update {update}: the {what} is not finite; the last good checkpoint is kept"
    )]
    NonFinite {
        /// The update that produced it.
        update: u64,
        /// Which quantity.
        what: String,
    },
    /// The pieces given do not fit together.
    #[error("{0}")]
    Setup(String),
    /// The requested device is not available.
    #[error("device `{spec}`: {reason}")]
    Device {
        /// What was asked for.
        spec: String,
        /// Why it cannot be used.
        reason: String,
    },
}
