//! The one error type of mappo-train.

use std::path::PathBuf;

use thiserror::Error;

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
    /// A run's `metrics.jsonl` cannot be read as one.
    #[error("{path}{}: {problem}", line_note(.line))]
    Metrics {
        /// The file.
        path: String,
        /// The 1-based line at fault, when one is.
        line: Option<usize>,
        /// What is wrong.
        problem: String,
    },
    /// A loss or gradient became NaN or infinite.
    #[error("training diverged at update {update}: the {what} is not finite; {}", kept_note(.last_checkpoint))]
    NonFinite {
        /// The update that produced it.
        update: u64,
        /// Which quantity.
        what: String,
        /// The newest checkpoint written before (nothing diverged is ever saved); `None` when
        /// none was (the run loop fills it in).
        last_checkpoint: Option<PathBuf>,
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

fn line_note(line: &Option<usize>) -> String {
    line.map(|l| format!(": line {l}")).unwrap_or_default()
}

fn kept_note(last: &Option<PathBuf>) -> String {
    match last {
        Some(p) => format!("nothing diverged was saved; the last good checkpoint is {}", p.display()),
        None => "nothing diverged was saved, and no checkpoint had been written yet \
                 (lower the learning rates, or set train.save_interval lower)"
            .into(),
    }
}
