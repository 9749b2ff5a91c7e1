//! The axum router: which handler answers which path, and the layers around them — the API key
//! check (every endpoint but `/healthz` and `/openapi.json`), per-endpoint metrics with every
//! non-JSON error turned into `{"error": ...}`, the body limits, panics caught as 500s, and a
//! JSON 404. The OpenAPI document ([`ApiDoc`]) is declared here, beside the routes it lists.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
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

struct BearerSecurity;

impl utoipa::Modify for BearerSecurity {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The OpenAPI document of the service.
#[derive(OpenApi)]
#[openapi(
    info(title = "mappo serve", description = "Routes prompts to agents, logs every decision with its propensity, joins rewards."),
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
    )),
    modifiers(&BearerSecurity)
)]
pub struct ApiDoc;

/// The OpenAPI document as JSON.
pub fn openapi_json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_else(|_| "{}".into())
}

async fn require_key(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if st.keys.is_empty() {
        return next.run(req).await;
    }
    let auth = req.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
    if st.keys.allows(auth) {
        next.run(req).await
    } else {
        ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong API key (Authorization: Bearer KEY)")
            .into_response()
    }
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
        .route_layer(from_fn_with_state(st.clone(), require_key))
        .route("/healthz", get(ops::healthz))
        .route("/openapi.json", get(ops::openapi))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(RequestBodyLimitLayer::new(max_body))
        .layer(CatchPanicLayer::new())
        .layer(from_fn_with_state(st.clone(), observe))
        .with_state(st)
}
