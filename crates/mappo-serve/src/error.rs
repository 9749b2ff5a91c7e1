//! Errors: [`ServeError`] (the service cannot start or stopped), and what a request gets when
//! it fails — an [`ApiError`], answered as a status code with the JSON body [`ErrorBody`]. The
//! one mapping of the model thread's errors to statuses lives here
//! (`From<EngineError> for ApiError`).

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mappo_log::LogError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::engine::EngineError;
use crate::model::ModelError;

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] mappo_config::ConfigError),
    /// A non-loopback address without API keys.
    #[error(
        "refusing to listen on {addr} without API keys: set serve.api_keys_file, listen on a loopback \
         address (127.0.0.1), or pass --insecure"
    )]
    Insecure {
        /// The address.
        addr: SocketAddr,
    },
    /// The API keys file cannot be used.
    #[error("serve.api_keys_file: {0}")]
    ApiKeys(String),
    /// The decision log failed (e.g. the database is unreachable at start; the message names it).
    #[error(transparent)]
    Log(#[from] LogError),
    /// The checkpoint given cannot be read or used.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Nothing is published and nothing to publish was given.
    #[error(
        "no policy is published in {db}: pass --checkpoint FILE (a text checkpoint) or --config FILE \
         (to start from a freshly initialised policy)"
    )]
    NoPolicy {
        /// The database (without password).
        db: String,
    },
    /// The embedding model or the policy cannot be loaded.
    #[error("policy version {version}: {source}")]
    Model {
        /// The version being loaded (0 for a fresh policy not yet published).
        version: i64,
        /// What failed.
        #[source]
        source: ModelError,
    },
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("the server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Every error: a status code and this body.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

/// An error answer: `status` with `{"error": message}` (and `WWW-Authenticate: Bearer` on 401).
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    /// 422 Unprocessable Entity: well-formed JSON with a value that is not allowed.
    pub(crate) fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(ErrorBody { error: self.message })).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

/// A full queue or a stopped model thread is 503 (retry); a model failure is 500.
impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let status = match e {
            EngineError::Overloaded | EngineError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
            EngineError::Model(_) => StatusCode::INTERNAL_SERVER_ERROR,
            EngineError::Step(_) => StatusCode::CONFLICT,
            EngineError::Input(_) => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_retry_or_server_error() {
        for (e, status) in [
            (EngineError::Overloaded, StatusCode::SERVICE_UNAVAILABLE),
            (EngineError::Stopped, StatusCode::SERVICE_UNAVAILABLE),
            (EngineError::Model("boom".into()), StatusCode::INTERNAL_SERVER_ERROR),
        ] {
            let message = e.to_string();
            let a = ApiError::from(e);
            assert_eq!((a.status, a.message), (status, message));
        }
    }

    #[test]
    fn unauthorized_answers_ask_for_a_bearer_token() {
        let r = ApiError::new(StatusCode::UNAUTHORIZED, "no").into_response();
        assert_eq!(
            r.headers().get(header::WWW_AUTHENTICATE).map(HeaderValue::as_bytes),
            Some(&b"Bearer"[..])
        );
        let r = ApiError::unprocessable("no").into_response();
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(r.headers().get(header::WWW_AUTHENTICATE).is_none());
    }
}
