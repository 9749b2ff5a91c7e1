//! The model's files: where they live and the sha256 each must have (`std` and `sha2` only;
//! `cargo xtask fetch-model` uses the same list and checks).

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The Hugging Face repository the model comes from.
pub const MODEL_ID: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// Environment variable that overrides [`default_model_dir`].
pub const MODEL_DIR_ENV: &str = "MAPPO_MODEL_DIR";

/// The command that fetches (or repairs) the model files.
pub const FETCH_HINT: &str = "cargo xtask fetch-model";

/// One file of the model and its expected sha256 (lower-case hex).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelFile {
    /// File name inside the model directory.
    pub name: &'static str,
    /// Expected sha256, lower-case hex.
    pub sha256: &'static str,
}

/// `config.json`: the BERT configuration.
pub const CONFIG_JSON: ModelFile = ModelFile {
    name: "config.json",
    sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
};

/// `tokenizer.json`: the WordPiece tokenizer.
pub const TOKENIZER_JSON: ModelFile = ModelFile {
    name: "tokenizer.json",
    sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
};

/// `model.safetensors`: the weights (the hub's LFS object for all-MiniLM-L6-v2).
pub const MODEL_SAFETENSORS: ModelFile = ModelFile {
    name: "model.safetensors",
    sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
};

/// The three files the embedder needs.
pub const MODEL_FILES: [ModelFile; 3] = [CONFIG_JSON, TOKENIZER_JSON, MODEL_SAFETENSORS];

/// Where the model lives unless told otherwise: `$MAPPO_MODEL_DIR` if set and non-empty,
/// else `<user cache>/mappo/all-MiniLM-L6-v2` (see [`user_cache_dir`]).
pub fn default_model_dir() -> PathBuf {
    match std::env::var_os(MODEL_DIR_ENV).filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => user_cache_dir().join("mappo").join("all-MiniLM-L6-v2"),
    }
}

/// The user's cache directory: `$XDG_CACHE_HOME` if set and non-empty, else `$HOME/.cache`
/// if `HOME` is set and non-empty, else `.cache` (relative to the working directory).
/// mappo's model files and embedding cache live under `<this>/mappo/`.
pub fn user_cache_dir() -> PathBuf {
    let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    non_empty("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| non_empty("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"))
}

/// Lower-case hex sha256 of a byte slice.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex sha256 of a file, streamed.
pub(crate) fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(digest: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(digest.len() * 2);
    for b in digest {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// What is wrong with one model file.
#[derive(Debug)]
pub enum FileProblem {
    /// The file does not exist.
    Missing,
    /// The file exists but could not be read.
    Unreadable(io::Error),
    /// The file's sha256 is not the expected one (truncated, corrupt or another file).
    HashMismatch {
        /// The expected sha256.
        expected: &'static str,
        /// The sha256 found.
        actual: String,
    },
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileProblem::Missing => write!(f, "missing"),
            FileProblem::Unreadable(e) => write!(f, "unreadable: {e}"),
            FileProblem::HashMismatch { expected, actual } => {
                write!(f, "sha256 mismatch (expected {expected}, found {actual}): truncated or corrupt")
            }
        }
    }
}

/// Checks that `bytes` (the content of `file`) hash to the expected sha256.
pub(crate) fn check_bytes(file: &ModelFile, bytes: &[u8]) -> Result<(), FileProblem> {
    let actual = sha256_hex(bytes);
    if actual == file.sha256 {
        Ok(())
    } else {
        Err(FileProblem::HashMismatch { expected: file.sha256, actual })
    }
}

/// Checks that `dir/<file.name>` exists and has the expected sha256.
pub fn check_file(dir: &Path, file: &ModelFile) -> Result<(), FileProblem> {
    let path = dir.join(file.name);
    match sha256_file(&path) {
        Ok(actual) if actual == file.sha256 => Ok(()),
        Ok(actual) => Err(FileProblem::HashMismatch { expected: file.sha256, actual }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(FileProblem::Missing),
        Err(e) => Err(FileProblem::Unreadable(e)),
    }
}
