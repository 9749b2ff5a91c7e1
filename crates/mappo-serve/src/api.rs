//! The HTTP API: request and response types (with their OpenAPI schemas), handlers, errors as
//! JSON `{"error": ...}`, authentication, per-endpoint metrics and the router.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mappo_config::ServeConfig;
use mappo_log::{Decision, DecisionKind, GroupCommitter, LogError, Timestamp};
use serde::{Deserialize, Serialize};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::auth::ApiKeys;
use crate::engine::{Engine, EngineError};
use crate::metrics::Metrics;

/// `POST /v1/route`: one text (`text`) or several (`texts`), not both.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteRequest {
    /// One prompt to route; the answer is one decision.
    #[schema(example = "my invoice is wrong")]
    pub text: Option<String>,
    /// Several prompts; the answer is `{"decisions": [...]}` in the same order.
    pub texts: Option<Vec<String>>,
    /// Take the most probable agent instead of sampling; logged with propensity 1 and marked
    /// greedy (such decisions are not used for learning). Default false.
    #[serde(default)]
    pub greedy: bool,
    /// Cost weight λ for a cost-aware policy (agents with a `cost`): higher = cheaper agents
    /// (`mappo calibrate` finds the λ of a budget). Default `serve.cost_weight`.
    pub cost_weight: Option<f64>,
}

/// One routing decision.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RouteDecision {
    /// Unique id (UUID v7); send it back with the reward to `/v1/feedback`.
    pub decision_id: Uuid,
    /// The chosen agent's name.
    pub agent: String,
    /// The chosen agent's index in `probabilities`.
    pub agent_index: usize,
    /// Every agent's probability (floored at `serve.min_prob`), in agent order.
    pub probabilities: Vec<f32>,
    /// The probability the agent was chosen with: `probabilities[agent_index]` when sampled,
    /// 1 when greedy.
    pub propensity: f32,
    /// The policy version that decided.
    pub policy_version: i64,
    /// Whether the agent is the argmax (requested with `"greedy": true`) rather than sampled.
    pub greedy: bool,
}

/// The decisions of a `texts` request, in order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RouteBatchResponse {
    /// One decision per text.
    pub decisions: Vec<RouteDecision>,
}

/// The answer of `POST /v1/route`: a decision for `text`, `{"decisions"}` for `texts`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum RouteResponse {
    /// For `{"text": ...}`.
    One(RouteDecision),
    /// For `{"texts": [...]}`.
    Many(RouteBatchResponse),
}

/// `POST /v1/feedback`: the reward of a decision.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    /// The id `/v1/route` returned.
    pub decision_id: String,
    /// A finite number in [`serve.reward_min`, `serve.reward_max`] (default [-1, 1]).
    pub reward: f64,
}

/// The reward was committed and joined to its decision.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FeedbackResponse {
    /// The decision.
    pub decision_id: Uuid,
    /// Always true.
    pub accepted: bool,
}

/// `GET /healthz`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HealthResponse {
    /// `ok`.
    pub status: String,
    /// The policy version being served.
    pub policy_version: i64,
    /// This replica's name.
    pub replica: String,
}

/// Every error: a status code and this body.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

/// An error answer.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
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

/// What the handlers share.
pub(crate) struct AppState {
    pub engine: Engine,
    pub committer: GroupCommitter,
    pub metrics: Arc<Metrics>,
    pub keys: ApiKeys,
    pub cfg: ServeConfig,
    pub replica: String,
    pub db_ok: AtomicBool,
    pub openapi: String,
    /// The OpenAI-compatible proxy's upstreams.
    pub upstreams: crate::proxy::Upstreams,
}

impl AppState {
    pub(crate) fn log_error(&self, e: LogError) -> ApiError {
        match e {
            LogError::UnknownDecision(id) => {
                ApiError::new(StatusCode::NOT_FOUND, format!("no decision {id} in the log"))
            }
            LogError::AlreadyRewarded(id) => {
                ApiError::new(StatusCode::CONFLICT, format!("decision {id} already has a reward"))
            }
            LogError::InvalidReward(r) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("reward {r} is not a finite number"))
            }
            e if e.is_unavailable() => {
                self.db_ok.store(false, Ordering::Relaxed);
                self.metrics.database_errors.inc();
                tracing::warn!(error = %e, "the decision log is unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the decision log is unavailable: {e}"),
                )
            }
            e => {
                self.metrics.database_errors.inc();
                tracing::error!(error = %e, "decision log error");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("decision log error: {e}"))
            }
        }
    }
}

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

/// Route one text or a batch.
#[utoipa::path(
    post,
    path = "/v1/route",
    request_body = RouteRequest,
    responses(
        (status = 200, description = "The decisions, committed to the log", body = RouteResponse),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 413, description = "Body, text or number of texts over the limit", body = ErrorBody),
        (status = 422, description = "Wrong fields or types", body = ErrorBody),
        (status = 503, description = "Overloaded, or the decision log is unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn route(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RouteResponse>, ApiError> {
    let req: RouteRequest = parse_body(body)?;
    let (texts, single) = match (req.text, req.texts) {
        (Some(t), None) => (vec![t], true),
        (None, Some(ts)) => (ts, false),
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "give either `text` or `texts`, not both",
            ));
        }
        (None, None) => {
            return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "missing `text` (or `texts`)"));
        }
    };
    if texts.is_empty() {
        return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "`texts` is empty"));
    }
    if texts.len() > st.cfg.max_batch_texts {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} texts in one request; at most {} (serve.max_batch_texts)",
                texts.len(),
                st.cfg.max_batch_texts
            ),
        ));
    }
    if let Some((i, t)) = texts.iter().enumerate().find(|(_, t)| t.len() > st.cfg.max_text_bytes) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "text {i} has {} bytes; at most {} (serve.max_text_bytes)",
                t.len(),
                st.cfg.max_text_bytes
            ),
        ));
    }
    let logged_texts = st.cfg.log_text.then(|| texts.clone());
    let cost_weight = req.cost_weight.unwrap_or(st.cfg.cost_weight);
    if !cost_weight.is_finite() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("`cost_weight` must be a finite number, got {cost_weight}"),
        ));
    }
    let routed = st.engine.route_at(texts, req.greedy, cost_weight).await.map_err(|e| match e {
        EngineError::Overloaded | EngineError::Stopped => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        EngineError::Model(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    })?;
    let now = Timestamp::now();
    let kind = if req.greedy { DecisionKind::Greedy } else { DecisionKind::Sampled };
    let mut decisions = Vec::with_capacity(routed.items.len());
    let mut out = Vec::with_capacity(routed.items.len());
    for (i, item) in routed.items.into_iter().enumerate() {
        let id = Decision::new_id();
        let agent = routed.agents.get(item.action).cloned().unwrap_or_default();
        out.push(RouteDecision {
            decision_id: id,
            agent: agent.clone(),
            agent_index: item.action,
            probabilities: item.probabilities.clone(),
            propensity: item.propensity,
            policy_version: routed.version,
            greedy: req.greedy,
        });
        decisions.push(Decision {
            id,
            time: now,
            policy_version: routed.version,
            action: u32::try_from(item.action).unwrap_or(u32::MAX),
            agent,
            probabilities: item.probabilities,
            propensity: item.propensity,
            kind,
            embedding: item.embedding,
            model_hash: routed.model_hash.to_string(),
            text: logged_texts.as_ref().and_then(|t| t.get(i).cloned()),
            replica: st.replica.clone(),
            cost_weight: item.cost_weight,
            shadow: item.shadow,
        });
    }
    // Committed before the answer leaves.
    st.committer.log_decisions(&decisions).await.map_err(|e| st.log_error(e))?;
    st.db_ok.store(true, Ordering::Relaxed);
    st.metrics.decisions_logged.inc_by(decisions.len() as u64);
    Ok(Json(if single {
        match out.pop() {
            Some(d) => RouteResponse::One(d),
            None => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no decision")),
        }
    } else {
        RouteResponse::Many(RouteBatchResponse { decisions: out })
    }))
}

/// Record the reward of a decision.
#[utoipa::path(
    post,
    path = "/v1/feedback",
    request_body = FeedbackRequest,
    responses(
        (status = 200, description = "The reward is committed", body = FeedbackResponse),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such decision", body = ErrorBody),
        (status = 409, description = "The decision already has a reward", body = ErrorBody),
        (status = 413, description = "Body over the limit", body = ErrorBody),
        (status = 422, description = "A reward that is not finite or out of range, or a malformed id", body = ErrorBody),
        (status = 503, description = "The decision log is unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn feedback(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<FeedbackResponse>, ApiError> {
    let req: FeedbackRequest = parse_body(body)?;
    let id = Uuid::parse_str(&req.decision_id)
        .map_err(|_| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "`decision_id` is not a UUID"))?;
    let (lo, hi) = (st.cfg.reward_min, st.cfg.reward_max);
    if !req.reward.is_finite() || req.reward < lo || req.reward > hi {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("reward {} is outside [{lo}, {hi}] (serve.reward_min, serve.reward_max)", req.reward),
        ));
    }
    st.committer.record_reward(id, req.reward).await.map_err(|e| st.log_error(e))?;
    st.db_ok.store(true, Ordering::Relaxed);
    st.metrics.rewards_joined.inc();
    Ok(Json(FeedbackResponse { decision_id: id, accepted: true }))
}

/// Liveness and the policy version served; 503 while the decision log is unreachable.
#[utoipa::path(
    get,
    path = "/healthz",
    responses(
        (status = 200, description = "Serving", body = HealthResponse),
        (status = 503, description = "The decision log is unreachable", body = ErrorBody),
    )
)]
pub(crate) async fn healthz(State(st): State<Arc<AppState>>) -> Response {
    if st.db_ok.load(Ordering::Relaxed) {
        Json(HealthResponse {
            status: "ok".into(),
            policy_version: st.engine.version(),
            replica: st.replica.clone(),
        })
        .into_response()
    } else {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the decision log is unavailable").into_response()
    }
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(
    get,
    path = "/metrics",
    responses(
        (status = 200, description = "Prometheus text", body = String, content_type = "text/plain"),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        st.metrics.encode(),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "The OpenAPI document")))]
pub(crate) async fn openapi(State(st): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], st.openapi.clone()).into_response()
}

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
    paths(
        route,
        feedback,
        healthz,
        metrics,
        openapi,
        crate::proxy::chat_completions,
        crate::proxy::models
    ),
    components(schemas(
        RouteRequest,
        RouteDecision,
        RouteBatchResponse,
        RouteResponse,
        FeedbackRequest,
        FeedbackResponse,
        HealthResponse,
        ErrorBody,
        crate::proxy::ChatCompletionRequest,
        crate::proxy::ChatMessage,
        crate::proxy::MappoOptions,
        crate::proxy::ModelList,
        crate::proxy::ModelEntry
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
        .route("/v1/route", post(route))
        .route("/v1/feedback", post(feedback))
        .route("/metrics", get(metrics))
        .route("/v1/chat/completions", post(crate::proxy::chat_completions))
        .route("/v1/models", get(crate::proxy::models))
        .route_layer(from_fn_with_state(st.clone(), require_key))
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(RequestBodyLimitLayer::new(max_body))
        .layer(CatchPanicLayer::new())
        .layer(from_fn_with_state(st.clone(), observe))
        .with_state(st)
}
