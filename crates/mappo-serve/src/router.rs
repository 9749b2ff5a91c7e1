//! The axum router: which handler answers which path, and the layers around them — the API key
//! check (every endpoint but `/healthz` and `/openapi.json`), per-endpoint metrics with every
//! non-JSON error turned into `{"error": ...}`, the body limits, panics caught as 500s, and a
//! JSON 404. The OpenAPI document ([`ApiDoc`], served as [`openapi_json_for`] the configuration)
//! is declared here, beside the routes it lists.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mappo_config::ServeConfig;
use serde_json::{Value, json};
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi;

use crate::error::{ApiError, ErrorBody};
// The operations are listed below by their `__path_*` items (utoipa's), not as `module::handler`:
// utoipa would tag each operation with the module's path, and the document keeps the tags it
// has always had (none; the proxy's two set theirs).
use crate::handlers::chat::{__path_chat_completions, __path_models};
use crate::handlers::feedback::__path_feedback;
use crate::handlers::ops::{__path_healthz, __path_metrics, __path_openapi};
use crate::handlers::route::__path_route;
use crate::handlers::{chat, feedback, ops, route};
use crate::state::AppState;

/// The OpenAPI document's operations and types. The document a server serves is
/// [`openapi_json_for`] its configuration: this one with the request bodies as the server checks
/// them (its limits) and, only when API keys are configured, the security schemes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "mappo serve",
        description = "Routes prompts to agents, logs every decision with its propensity, joins rewards."
    ),
    paths(route, feedback, healthz, metrics, openapi, chat_completions, models),
    components(schemas(
        route::RouteRequest,
        route::RouteDecision,
        route::RouteBatchResponse,
        route::RouteResponse,
        feedback::FeedbackRequest,
        feedback::FeedbackResponse,
        ops::HealthResponse,
        ErrorBody,
        chat::ChatCompletionRequest,
        chat::ChatMessage,
        chat::MappoOptions,
        chat::ModelList,
        chat::ModelEntry
    ))
)]
pub struct ApiDoc;

/// The paths that never ask for an API key (see [`router`]).
const OPEN_PATHS: [&str; 2] = ["/healthz", "/openapi.json"];

/// The OpenAPI document a server with this `[serve]` configuration serves, as JSON: the
/// operations of [`ApiDoc`], the request bodies with the limits `cfg` sets (text lengths, batch
/// size, reward range), and — only when `api_keys` (`serve.api_keys_file` is set) — the security
/// schemes (the key as a bearer token, or as a Basic password), one of which every operation but
/// `/healthz` and `/openapi.json` then requires, each of which then may answer 401.
pub fn openapi_json_for(cfg: &ServeConfig, api_keys: bool) -> String {
    let doc = openapi_document(cfg, api_keys);
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".into())
}

/// [`openapi_json_for`] the default configuration with API keys: the document with every
/// operation's every status.
pub fn openapi_json() -> String {
    openapi_json_for(&ServeConfig::default(), true)
}

fn openapi_document(cfg: &ServeConfig, api_keys: bool) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let bodies = route::RouteRequest::schemas(cfg)
        .into_iter()
        .chain(feedback::FeedbackRequest::schemas(cfg))
        .chain(chat::ChatCompletionRequest::schemas(cfg));
    if let Some(schemas) = doc.pointer_mut("/components/schemas").and_then(Value::as_object_mut) {
        for (name, schema) in bodies {
            schemas.insert(name.to_string(), schema);
        }
    }
    // An optional header is absent or a string, never null (utoipa makes `Option<String>` nullable).
    for op in operations(&mut doc) {
        for p in op.get_mut("parameters").and_then(Value::as_array_mut).into_iter().flatten() {
            if p["in"] == "header" && p["schema"]["type"] == json!(["string", "null"]) {
                p["schema"]["type"] = json!("string");
            }
        }
    }
    if !api_keys {
        return doc;
    }
    // `auth::ApiKeys::allows`: the key as a bearer token, or as the password of HTTP Basic
    // credentials (any user name; what a browser sends).
    doc["components"]["securitySchemes"] = json!({
        "bearer": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer KEY`"},
        "basic": {"type": "http", "scheme": "basic", "description": "The API key as the password, any user name"},
    });
    let unauthorized = json!({
        "description": "Missing or wrong API key (`Authorization: Bearer KEY`, or Basic with the key as the password; the answer has `WWW-Authenticate: Bearer`)",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "required": true}},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    });
    let paths = doc.get_mut("paths").and_then(Value::as_object_mut).into_iter().flatten();
    for (_, item) in paths.filter(|(p, _)| !OPEN_PATHS.contains(&p.as_str())) {
        for op in item.as_object_mut().into_iter().flat_map(|m| m.values_mut()) {
            op["security"] = json!([{"bearer": []}, {"basic": []}]);
            op["responses"]["401"] = unauthorized.clone();
        }
    }
    doc
}

/// Every operation of a document.
fn operations(doc: &mut Value) -> impl Iterator<Item = &mut Value> {
    let paths = doc.get_mut("paths").and_then(Value::as_object_mut).into_iter().flatten();
    paths.flat_map(|(_, item)| item.as_object_mut().into_iter().flat_map(|m| m.values_mut()))
}

async fn require_key(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if st.keys.is_empty() {
        return next.run(req).await;
    }
    let auth = req.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
    if st.keys.allows(auth) {
        return next.run(req).await;
    }
    // A browser opening the dashboard asks its user for the key (HTTP Basic, the key as password).
    let challenge =
        if req.uri().path() == "/ui" { r#"Basic realm="mappo", charset="UTF-8""# } else { "Bearer" };
    let mut resp =
        ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong API key (Authorization: Bearer KEY)")
            .into_response();
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    resp
}

fn endpoint_label(path: &str) -> &'static str {
    match path {
        "/v1/route" => "/v1/route",
        "/v1/feedback" => "/v1/feedback",
        "/healthz" => "/healthz",
        "/metrics" => "/metrics",
        "/openapi.json" => "/openapi.json",
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/models" => "/v1/models",
        "/ui" => "/ui",
        _ => "other",
    }
}

/// Counts requests and latencies per endpoint, and turns every error that is not JSON yet
/// (unknown path, wrong method, the body limit, a caught panic) into `{"error": ...}`.
async fn observe(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let t0 = Instant::now();
    let endpoint = endpoint_label(req.uri().path());
    let mut resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let msg = match status {
            StatusCode::PAYLOAD_TOO_LARGE => {
                "the request body is larger than serve.max_body_bytes".to_string()
            }
            StatusCode::NOT_FOUND => "no such endpoint".to_string(),
            s => s.canonical_reason().unwrap_or("error").to_lowercase(),
        };
        let body = serde_json::to_vec(&ErrorBody { error: msg }).unwrap_or_default();
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.remove(header::CONTENT_LENGTH);
        *resp.body_mut() = Body::from(body);
    }
    st.metrics.observe_request(endpoint, status.as_u16(), t0.elapsed().as_secs_f64());
    resp
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")
}

/// The service's router.
pub(crate) fn router(st: Arc<AppState>) -> Router {
    let max_body = st.cfg.max_body_bytes;
    Router::new()
        .route("/v1/route", post(route::route))
        .route("/v1/feedback", post(feedback::feedback))
        .route("/metrics", get(ops::metrics))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/models", get(chat::models))
        .route("/ui", get(crate::ui::ui))
        .route_layer(from_fn_with_state(st.clone(), crate::limits::read_body))
        .route_layer(from_fn_with_state(st.clone(), require_key))
        .route("/healthz", get(ops::healthz))
        .route("/openapi.json", get(ops::openapi))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(CatchPanicLayer::new())
        .layer(from_fn_with_state(st.clone(), observe))
        .with_state(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(cfg: &ServeConfig, api_keys: bool) -> Value {
        serde_json::from_str(&openapi_json_for(cfg, api_keys)).expect("the document is JSON")
    }

    #[test]
    fn the_document_carries_the_configured_limits() {
        let cfg = ServeConfig {
            max_text_bytes: 100,
            max_batch_texts: 3,
            reward_min: 0.0,
            reward_max: 5.0,
            ..ServeConfig::default()
        };
        let doc = document(&cfg, false);
        let schema = |name: &str| doc["components"]["schemas"][name].clone();
        let texts = &schema("RouteTexts")["properties"]["texts"];
        assert_eq!((texts["maxItems"].clone(), texts["items"]["maxLength"].clone()), (json!(3), json!(100)));
        assert_eq!(schema("RouteRequest")["oneOf"].as_array().map(Vec::len), Some(3));
        let reward = &schema("DecisionReward")["properties"]["reward"];
        assert_eq!((reward["minimum"].as_f64(), reward["maximum"].as_f64()), (Some(0.0), Some(5.0)));
        assert_eq!(schema("DecisionReward")["properties"]["decision_id"]["format"], "uuid");
        assert_eq!(schema("ChatMessage")["properties"]["content"]["oneOf"][0]["maxLength"], 100);
        let metrics = &doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"];
        assert!(metrics.get(ops::OPENMETRICS).is_some(), "{metrics}");
        let header = &doc["paths"]["/v1/chat/completions"]["post"]["parameters"][0]["schema"];
        assert_eq!(header["type"], "string", "a header is never null: {header}");
    }

    #[test]
    fn security_is_described_only_when_api_keys_are_configured() {
        let cfg = ServeConfig::default();
        let open = document(&cfg, false);
        assert!(open["components"].get("securitySchemes").is_none());
        let keyed = document(&cfg, true);
        assert_eq!(keyed["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        let mut checked = 0;
        for (path, item) in keyed["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("a path item") {
                let needs_key = !OPEN_PATHS.contains(&path.as_str());
                assert_eq!(op.get("security").is_some(), needs_key, "{method} {path}");
                assert_eq!(op["responses"].get("401").is_some(), needs_key, "{method} {path}");
                let without = &open["paths"][path][method];
                assert!(without.get("security").is_none() && without["responses"].get("401").is_none());
                checked += 1;
            }
        }
        assert_eq!(checked, 7);
        assert_eq!(openapi_json(), openapi_json_for(&ServeConfig::default(), true));
    }
}
