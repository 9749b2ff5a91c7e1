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

/// Parses a JSON body, an object: syntax errors → 400, wrong fields or types (or not an object)
/// → 422, too large → 413.
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
    let parsed = serde_json::from_slice(&bytes).map_err(|e| {
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
    })?;
    // serde reads a struct from a JSON array too (its fields in order): a body is an object.
    if bytes.trim_ascii_start().starts_with(b"[") {
        return Err(ApiError::unprocessable("invalid JSON body: expected an object, not an array"));
    }
    Ok(parsed)
}

/// JSON Schema pieces of the request bodies: the OpenAPI document describes each body as the
/// server checks it, with the limits of the running configuration (`[serve]`).
pub(crate) mod schema {
    use serde_json::{Value, json};

    /// Control characters (Unicode category Cc), which an episode id may not hold. Tested with
    /// `not`, not with an anchored pattern: `$` also matches before a final newline in some
    /// regex dialects.
    const CONTROL: &str = "[\\u0000-\\u001f\\u007f-\\u009f]";

    /// A character that is not white space (Rust's `char::is_whitespace`, Unicode White_Space):
    /// a text with one is not blank.
    pub(crate) const NOT_BLANK: &str =
        "[^\\t\\n\\u000b\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";

    /// An episode (conversation) id, as `mappo_log::EpisodeStep::check_id` accepts it.
    pub(crate) fn episode_id(description: &str) -> Value {
        json!({
            "type": "string",
            "minLength": 1,
            "maxLength": mappo_log::EpisodeStep::MAX_ID_BYTES,
            "not": {"pattern": CONTROL},
            "description": format!(
                "{description} 1–{} bytes of UTF-8 (`maxLength` counts characters: exact for ASCII), \
                 no control characters.",
                mappo_log::EpisodeStep::MAX_ID_BYTES
            ),
            "example": "conversation-42",
        })
    }

    /// A text of at most `max_bytes` bytes (`serve.max_text_bytes`; longer → 413).
    pub(crate) fn text(max_bytes: usize, nullable: bool, description: &str) -> Value {
        json!({
            "type": if nullable { json!(["string", "null"]) } else { json!("string") },
            "maxLength": max_bytes,
            "description": format!(
                "{description} At most {max_bytes} bytes of UTF-8 (serve.max_text_bytes; longer → 413; \
                 `maxLength` counts characters: exact for ASCII)."
            ),
        })
    }

    /// One shape of a request body: an object with exactly these `properties`.
    pub(crate) fn shape(description: &str, required: &[&str], properties: Value) -> Value {
        json!({
            "type": "object",
            "description": description,
            "required": required,
            "properties": properties,
            "additionalProperties": false,
        })
    }

    /// A field that must be absent or null in this shape of the body.
    pub(crate) fn absent(why: &str) -> Value {
        json!({"type": "null", "description": format!("Absent or null: {why}")})
    }

    /// A number, or null for the default.
    pub(crate) fn number_or_null(description: &str) -> Value {
        json!({"type": ["number", "null"], "description": description})
    }
}

#[cfg(test)]
mod tests {
    use axum::response::IntoResponse;

    use super::*;

    #[test]
    fn a_body_is_a_json_object() {
        #[derive(Debug, serde::Deserialize)]
        struct Body {
            _a: Option<String>,
        }
        let parse = |b: &str| parse_body::<Body>(Ok(Bytes::from(b.to_string())));
        assert!(parse(r#"{"_a": "x"}"#).is_ok());
        // serde alone reads the struct from an array (its fields in order).
        assert!(serde_json::from_str::<Body>(r#"["x"]"#).is_ok());
        let status = |b: &str| parse(b).expect_err(b).into_response().status();
        assert_eq!(status(r#"["x"]"#), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(status(r#" [null]"#), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(status(r#"["x""#), StatusCode::BAD_REQUEST);
    }
}
