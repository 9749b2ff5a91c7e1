//! [`EmbedError`]: what can go wrong loading the model or embedding texts.

use std::path::PathBuf;

use crate::files::{self, FETCH_HINT, MODEL_DIR_ENV};

/// Errors of the embedder. File errors name the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// A model file is missing.
    #[error("model file {} is missing: run `{FETCH_HINT}` (or set {MODEL_DIR_ENV})", path.display())]
    MissingFile {
        /// The missing file.
        path: PathBuf,
    },
    /// A model file could not be read.
    #[error("cannot read model file {}: {source}; run `{FETCH_HINT}`", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A model file does not have the expected sha256.
    #[error(
        "model file {} is truncated or corrupt (sha256 {actual}, expected {expected}): \
         run `{FETCH_HINT}` to fetch it again",
        path.display()
    )]
    HashMismatch {
        /// The file.
        path: PathBuf,
        /// The expected sha256.
        expected: String,
        /// The sha256 found.
        actual: String,
    },
    /// A model file has the right hash but could not be parsed (should not happen).
    #[error("cannot load model file {}: {message}; run `{FETCH_HINT}`", path.display())]
    InvalidFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The tokenizer failed on the input.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// The batch size (texts or tokens) must be at least 1.
    #[error("batch sizes must be at least 1")]
    ZeroBatchSize,
    /// The requested encoder backend cannot run here (e.g. the fused CPU kernels on a GPU).
    #[error("{0}")]
    Backend(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl EmbedError {
    pub(crate) fn from_problem(path: PathBuf, problem: files::FileProblem) -> Self {
        match problem {
            files::FileProblem::Missing => EmbedError::MissingFile { path },
            files::FileProblem::Unreadable(source) => EmbedError::Io { path, source },
            files::FileProblem::HashMismatch { expected, actual } => {
                EmbedError::HashMismatch { path, expected: expected.to_string(), actual }
            }
        }
    }
}
