use thiserror::Error;

/// Everything that can be wrong with a configuration. Each message names the
/// key (or the file and line) and what is allowed.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML does not parse.
    #[error("{origin}{}: TOML syntax error: {message}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Syntax {
        /// File name (or another description of where the text came from).
        origin: String,
        /// 1-based line of the error, when known.
        line: Option<usize>,
        /// What the parser said.
        message: String,
    },
    /// A key that no config section has.
    #[error(
        "unknown config key `{key}`{}; allowed here: {allowed}",
        suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default()
    )]
    UnknownKey {
        /// The dotted key as written (array elements as `env.agents[0].desc`).
        key: String,
        /// The keys allowed at that level.
        allowed: String,
        /// The known key closest to the one written, when one is close.
        suggestion: Option<String>,
    },
    /// A value of the wrong type or out of range.
    #[error("invalid value for `{key}`: {message}")]
    Invalid {
        /// The dotted key.
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// An error about a key written in a config file, with where it was written.
    #[error("{origin}, line {line}: {error}")]
    At {
        /// The file (or another description of where the text came from).
        origin: String,
        /// 1-based line of the key.
        line: usize,
        /// What is wrong there.
        error: Box<ConfigError>,
    },
    /// A `--set` argument that is not `KEY=VALUE`.
    #[error("invalid override `{arg}`: expected KEY=VALUE with a dotted key, e.g. train.seed=7")]
    BadOverride {
        /// The argument as given.
        arg: String,
    },
}
