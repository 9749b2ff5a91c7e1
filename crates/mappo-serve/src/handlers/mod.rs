//! The endpoints: `/v1/route` ([`route`]), `/v1/feedback` ([`feedback`]), the OpenAI-compatible
//! proxy's `/v1/chat/completions` and `/v1/models` ([`chat`]), and `/healthz`, `/metrics`,
//! `/openapi.json` ([`ops`]), with their request and response types (and OpenAPI schemas).
//! Routing and logging a decision is [`crate::decide`]'s; calling an upstream is
//! [`crate::upstream`]'s.

pub(crate) mod chat;
pub(crate) mod feedback;
pub(crate) mod ops;
pub(crate) mod route;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;

use crate::error::ApiError;

/// Parses a JSON body: syntax errors → 400, wrong fields or types → 422, too large → 413.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|r| {
        let status = r.status();
        let msg = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "the request body is larger than serve.max_body_bytes".to_string()
        } else {
            r.body_text()
        };
        ApiError::new(status, msg)
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        use serde_json::error::Category;
        let status = match e.classify() {
            Category::Data => StatusCode::UNPROCESSABLE_ENTITY,
            // A number too large for a float (e.g. a reward of 1e400) is well-formed JSON with a
            // value that is not allowed.
            Category::Syntax if e.to_string().starts_with("number out of range") => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Category::Syntax | Category::Eof | Category::Io => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, format!("invalid JSON body: {e}"))
    })
}
