//! Database URLs: `sqlite:PATH` or `postgres://…`, and their password-free display form.

use std::path::PathBuf;

use crate::LogError;

/// A parsed database URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbUrl {
    /// `sqlite:PATH` (also `sqlite://PATH`); the file and its directory are created on open.
    Sqlite(PathBuf),
    /// `postgres://…` or `postgresql://…`, passed to the driver as given.
    Postgres(String),
}

impl DbUrl {
    /// Parses a URL; anything else is [`LogError::BadUrl`].
    pub fn parse(url: &str) -> Result<Self, LogError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DbUrl::Postgres(url.to_string()));
        }
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            // Drop a query string (sqlx-style `?mode=rwc`): the log sets its own options.
            let path = path.split('?').next().unwrap_or(path);
            if path.is_empty() || path == ":memory:" {
                return Err(LogError::BadUrl(format!("{url} (a file path is needed: sqlite:PATH)")));
            }
            return Ok(DbUrl::Sqlite(PathBuf::from(path)));
        }
        Err(LogError::BadUrl(redact(url)))
    }

    /// The URL for messages: a PostgreSQL password is replaced by `***`.
    pub fn display(&self) -> String {
        match self {
            DbUrl::Sqlite(p) => format!("sqlite:{}", p.display()),
            DbUrl::Postgres(u) => redact(u),
        }
    }
}

/// Replaces the password of a URL (`user:PASSWORD@host`, or a `password=` query parameter) with
/// `***`, so that errors and logs can name the database safely.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.find(':') {
                Some(colon) => format!("{}:***{host}", &userinfo[..colon]),
                None => authority.to_string(),
            }
        }
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_schemes() {
        assert_eq!(
            DbUrl::parse("sqlite:runs/serve/mappo.db").ok(),
            Some(DbUrl::Sqlite("runs/serve/mappo.db".into()))
        );
        assert_eq!(DbUrl::parse("sqlite:///tmp/x.db").ok(), Some(DbUrl::Sqlite("/tmp/x.db".into())));
        assert!(matches!(DbUrl::parse("postgres://u:p@h/db"), Ok(DbUrl::Postgres(_))));
        assert!(matches!(
            DbUrl::parse("mysql://u:secret@h/db"),
            Err(LogError::BadUrl(m)) if !m.contains("secret")
        ));
        assert!(DbUrl::parse("sqlite:").is_err());
        assert!(DbUrl::parse("sqlite::memory:").is_err());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://root:mappo@127.0.0.1:5432/mappo_test"),
            "postgres://root:***@127.0.0.1:5432/mappo_test"
        );
        assert_eq!(
            redact("postgres://root@h/db?sslmode=require&password=s3cret"),
            "postgres://root@h/db?sslmode=require&password=***"
        );
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
        assert_eq!(redact("postgres://u:p@ss@h"), "postgres://u:***@h");
    }
}
