//! The OpenAI-compatible proxy: `POST /v1/chat/completions` and `GET /v1/models`.
//!
//! With `"model": "mappo"` the conversation's last user message is routed like a `/v1/route`
//! text (sampled, logged with its propensity), and the request goes to the chosen agent's
//! upstream (`[serve.upstreams.<agent>]`) with `"model"` replaced by the upstream's; with
//! `"model": "<agent>"` that agent is forced (logged as `forced`, never learned from). The
//! decision is committed to the log before the upstream is called, and the answer carries
//! `x-mappo-decision-id` and `x-mappo-agent`, so the client can send `/v1/feedback`.
//! `"stream": true` answers are passed through chunk by chunk as they arrive. An upstream that
//! cannot be reached, times out or answers non-2xx gives a 502 with a JSON error.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use mappo_config::{ConfigError, Upstream};
use mappo_log::{Decision, DecisionKind, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::ServeError;
use crate::api::{ApiError, AppState, parse_body};
use crate::engine::EngineError;
use crate::metrics::AgentLabels;

/// The model name that lets mappo choose the agent.
pub const ROUTER_MODEL: &str = "mappo";

/// Header naming the decision (send it back to `/v1/feedback`).
pub const DECISION_HEADER: &str = "x-mappo-decision-id";
/// Header naming the agent that answered.
pub const AGENT_HEADER: &str = "x-mappo-agent";

/// Most bytes of an upstream's error answer quoted in the 502's message.
const QUOTED_ERROR_BYTES: usize = 2000;

/// One agent's upstream, ready to call.
struct Target {
    url: String,
    model: String,
    api_key: Option<String>,
    timeout: Duration,
    client: reqwest::Client,
}

/// Every configured upstream, by agent name.
#[derive(Default)]
pub(crate) struct Upstreams {
    targets: BTreeMap<String, Target>,
}

impl Upstreams {
    /// Builds the clients and reads the API keys from their environment variables (an unset
    /// variable is an error naming the key).
    pub fn from_config(cfg: &BTreeMap<String, Upstream>) -> Result<Self, ServeError> {
        let mut targets = BTreeMap::new();
        for (agent, u) in cfg {
            u.validate(agent)?;
            let api_key = if u.api_key_env.is_empty() {
                None
            } else {
                match std::env::var(&u.api_key_env) {
                    Ok(k) if !k.trim().is_empty() => Some(k.trim().to_string()),
                    _ => {
                        return Err(ServeError::Config(ConfigError::Invalid {
                            key: format!("serve.upstreams.{agent}.api_key_env"),
                            message: format!(
                                "the environment variable {} is not set (or empty): export the \
                                 upstream's API key there, or set api_key_env = \"\" for none",
                                u.api_key_env
                            ),
                        }));
                    }
                }
            };
            let timeout = Duration::from_secs_f64(u.timeout_s);
            // The read timeout bounds the wait between two chunks of a streamed answer; a
            // non-streaming call also has a total deadline (set per request).
            let client = reqwest::Client::builder()
                .connect_timeout(timeout)
                .read_timeout(timeout)
                .build()
                .map_err(|e| ServeError::Io(std::io::Error::other(format!("the HTTP client: {e}"))))?;
            let url = format!("{}/chat/completions", u.base_url.trim_end_matches('/'));
            targets.insert(agent.clone(), Target { url, model: u.model.clone(), api_key, timeout, client });
        }
        Ok(Self { targets })
    }

    /// Checks that every upstream is named after one of `agents` (the served policy's); warns
    /// about agents without an upstream.
    pub fn check_agents(&self, agents: &[String], version: i64) -> Result<(), ServeError> {
        if let Some(name) = self.targets.keys().find(|n| !agents.contains(n)) {
            return Err(ServeError::Config(ConfigError::Invalid {
                key: format!("serve.upstreams.{name}"),
                message: format!(
                    "`{name}` is not an agent of the served policy (version {version}; agents: {}): \
                     name each table after an agent",
                    agents.join(", ")
                ),
            }));
        }
        if !self.targets.is_empty() {
            let missing: Vec<&str> =
                agents.iter().filter(|a| !self.targets.contains_key(*a)).map(String::as_str).collect();
            if !missing.is_empty() {
                tracing::warn!(
                    agents = missing.join(", "),
                    "agents without a [serve.upstreams.<agent>] table: /v1/chat/completions answers 503 \
                     when they are chosen"
                );
            }
        }
        Ok(())
    }
}

/// The `mappo` extension object of a chat completion request (removed before forwarding).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MappoOptions {
    /// Cost weight λ for a cost-aware policy (as `cost_weight` in `/v1/route`); default
    /// `serve.cost_weight`. Ignored when an agent is forced.
    pub cost_weight: Option<f64>,
}

/// One message of a conversation (only what the proxy reads; the whole message is forwarded).
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`…; the last `user` message is routed on.
    #[schema(example = "user")]
    pub role: String,
    /// A string, or an array of content parts of which the `{"type": "text", "text"}` ones are
    /// routed on (joined by newlines).
    #[schema(value_type = Object)]
    pub content: Value,
}

/// `POST /v1/chat/completions`: an OpenAI chat completion request. Every field besides
/// `model` and `mappo` is forwarded to the upstream unchanged.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// `mappo` (the router chooses the agent) or an agent's name (that agent is forced);
    /// replaced by the upstream's `model` before forwarding. `GET /v1/models` lists them.
    #[schema(example = "mappo")]
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Stream the answer as server-sent events (passed through from the upstream).
    pub stream: Option<bool>,
    /// mappo's options (not forwarded).
    pub mappo: Option<MappoOptions>,
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelEntry {
    /// What to send as `"model"`.
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// Always 0.
    pub created: i64,
    /// Always `mappo`.
    pub owned_by: String,
}

/// `GET /v1/models`: `mappo` and the served policy's agents.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    /// `mappo` first, then the agents in index order.
    pub data: Vec<ModelEntry>,
}

/// The models a client may name: `mappo` and the agents.
#[utoipa::path(
    get,
    path = "/v1/models",
    responses(
        (status = 200, description = "`mappo` and the agents", body = ModelList),
        (status = 401, description = "Missing or wrong API key", body = crate::api::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn models(State(st): State<Arc<AppState>>) -> Json<ModelList> {
    let agents = st.engine.agents();
    let entry = |id: &str| ModelEntry {
        id: id.to_string(),
        object: "model".into(),
        created: 0,
        owned_by: "mappo".into(),
    };
    let data = std::iter::once(ROUTER_MODEL).chain(agents.iter().map(String::as_str)).map(entry).collect();
    Json(ModelList { object: "list".into(), data })
}

/// The text the router decides on: the last `user` message's text (a string, or the text parts
/// of an array joined by newlines).
pub(crate) fn last_user_text(messages: &Value) -> Result<String, &'static str> {
    let Some(messages) = messages.as_array() else {
        return Err("`messages` must be an array of {\"role\", \"content\"} objects");
    };
    let Some(last) = messages.iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
    else {
        return Err("`messages` has no message with role \"user\" to route on");
    };
    let text = match last.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            texts.join("\n")
        }
        _ => return Err("the last user message's `content` must be a string or an array of content parts"),
    };
    if text.trim().is_empty() {
        return Err("the last user message has no text to route on");
    }
    Ok(text)
}

/// What was decided for one request.
struct Chosen {
    decision_id: Uuid,
    agent: String,
}

impl Chosen {
    /// Adds `x-mappo-decision-id` and `x-mappo-agent` to a response.
    fn tag(&self, mut r: Response) -> Response {
        let h = r.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.decision_id.to_string()) {
            h.insert(HeaderName::from_static(DECISION_HEADER), v);
        }
        // Agent names are UTF-8: from_bytes keeps non-ASCII ones (obs-text) rather than failing.
        if let Ok(v) = HeaderValue::from_bytes(self.agent.as_bytes()) {
            h.insert(HeaderName::from_static(AGENT_HEADER), v);
        }
        r
    }

    fn error(&self, status: StatusCode, message: impl Into<String>) -> Response {
        self.tag(ApiError::new(status, message).into_response())
    }
}

/// The cause chain of an error, on one line (reqwest's own message is terse).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let more = c.to_string();
        if !s.contains(&more) {
            s.push_str(": ");
            s.push_str(&more);
        }
        cur = c.source();
    }
    s
}

/// Forward a chat completion to the agent mappo chooses (`"model": "mappo"`) or to the agent
/// named (forced). The answer is the upstream's, with `x-mappo-decision-id` and `x-mappo-agent`.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "The upstream's answer (a JSON chat completion, or with \
            `\"stream\": true` its server-sent events as they arrive), with headers \
            x-mappo-decision-id and x-mappo-agent",
            content(("application/json"), ("text/event-stream")),
            headers(
                ("x-mappo-decision-id" = String, description = "The decision (UUID), for /v1/feedback"),
                ("x-mappo-agent" = String, description = "The agent that answered")
            )),
        (status = 400, description = "Malformed JSON", body = crate::api::ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = crate::api::ErrorBody),
        (status = 404, description = "Unknown model (the message lists the allowed ones)", body = crate::api::ErrorBody),
        (status = 413, description = "Body or routed text over the limit", body = crate::api::ErrorBody),
        (status = 422, description = "No `model`, no user message with text, or a bad `mappo` object", body = crate::api::ErrorBody),
        (status = 502, description = "The upstream failed: unreachable, timed out (serve.upstreams.<agent>.timeout_s) or answered non-2xx (its error is quoted)", body = crate::api::ErrorBody),
        (status = 503, description = "The agent has no upstream, the service is overloaded, or the decision log is unavailable", body = crate::api::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn chat_completions(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match proxy(st, body).await {
        Ok(r) | Err(r) => r,
    }
}

async fn proxy(st: Arc<AppState>, body: Result<Bytes, BytesRejection>) -> Result<Response, Response> {
    let e422 = |m: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m).into_response();
    let mut req: Map<String, Value> = parse_body(body).map_err(IntoResponse::into_response)?;
    let Some(model) = req.get("model").and_then(Value::as_str).map(str::to_string) else {
        return Err(e422(format!("missing `model`: \"{ROUTER_MODEL}\" or an agent's name")));
    };
    let options: MappoOptions = match req.remove("mappo") {
        None | Some(Value::Null) => MappoOptions::default(),
        Some(v) => serde_json::from_value(v).map_err(|e| e422(format!("invalid `mappo` object: {e}")))?,
    };
    let stream = match req.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(e422("`stream` must be a boolean".into())),
    };

    // Which agent: the router's choice, or the one named.
    let agents = st.engine.agents();
    let forced = model != ROUTER_MODEL;
    if forced {
        if !agents.contains(&model) {
            let allowed: Vec<String> = std::iter::once(ROUTER_MODEL)
                .chain(agents.iter().map(String::as_str))
                .map(|m| format!("{m:?}"))
                .collect();
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("unknown model {model:?}: the models are {} (GET /v1/models)", allowed.join(", ")),
            )
            .into_response());
        }
        if !st.upstreams.targets.contains_key(&model) {
            st.metrics.observe_upstream(&model, "unconfigured");
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("agent `{model}` has no upstream: add a [serve.upstreams.{model}] table"),
            )
            .into_response());
        }
    }
    let text = last_user_text(req.get("messages").unwrap_or(&Value::Null)).map_err(|m| e422(m.into()))?;
    if text.len() > st.cfg.max_text_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the last user message has {} bytes; at most {} (serve.max_text_bytes)",
                text.len(),
                st.cfg.max_text_bytes
            ),
        )
        .into_response());
    }
    let cost_weight = options.cost_weight.unwrap_or(st.cfg.cost_weight);
    if !cost_weight.is_finite() {
        return Err(e422(format!("`mappo.cost_weight` must be a finite number, got {cost_weight}")));
    }

    // Decide, and commit the decision before anything goes upstream. A forced request is
    // embedded too (decisions always carry their embedding) but takes no random draw.
    let logged_text = st.cfg.log_text.then(|| text.clone());
    let routed = st.engine.route_at(vec![text], forced, cost_weight).await.map_err(|e| {
        let status = match e {
            EngineError::Overloaded | EngineError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
            EngineError::Model(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string()).into_response()
    })?;
    let Some(item) = routed.items.into_iter().next() else {
        return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no decision").into_response());
    };
    let (action, propensity, kind) = if forced {
        // The policy may have switched since the check above: look the name up again.
        let Some(i) = routed.agents.iter().position(|a| *a == model) else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("unknown model {model:?}: the served policy has just changed its agents"),
            )
            .into_response());
        };
        (i, 1.0, DecisionKind::Forced)
    } else {
        (item.action, item.propensity, DecisionKind::Sampled)
    };
    let agent = routed.agents.get(action).cloned().unwrap_or_default();
    let decision = Decision {
        id: Decision::new_id(),
        time: Timestamp::now(),
        policy_version: routed.version,
        action: u32::try_from(action).unwrap_or(u32::MAX),
        agent: agent.clone(),
        probabilities: item.probabilities,
        propensity,
        kind,
        embedding: item.embedding,
        model_hash: routed.model_hash.to_string(),
        text: logged_text,
        replica: st.replica.clone(),
        cost_weight: item.cost_weight,
        shadow: item.shadow,
    };
    st.committer
        .log_decisions(std::slice::from_ref(&decision))
        .await
        .map_err(|e| st.log_error(e).into_response())?;
    st.db_ok.store(true, Ordering::Relaxed);
    st.metrics.decisions_logged.inc();
    let chosen = Chosen { decision_id: decision.id, agent };

    // Forward.
    let Some(target) = st.upstreams.targets.get(&chosen.agent) else {
        st.metrics.observe_upstream(&chosen.agent, "unconfigured");
        tracing::warn!(agent = %chosen.agent, decision = %chosen.decision_id, "the chosen agent has no upstream");
        return Err(chosen.error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "mappo chose agent `{0}`, which has no upstream: add a [serve.upstreams.{0}] table",
                chosen.agent
            ),
        ));
    };
    req.insert("model".into(), Value::String(target.model.clone()));
    let out = serde_json::to_vec(&req)
        .map_err(|e| chosen.error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut call = target.client.post(&target.url).header(header::CONTENT_TYPE, "application/json").body(out);
    if stream {
        call = call.header(header::ACCEPT, "text/event-stream");
    } else {
        call = call.timeout(target.timeout);
    }
    if let Some(k) = &target.api_key {
        call = call.bearer_auth(k);
    }
    let upstream_failed = |outcome: &str, message: String| -> Response {
        st.metrics.observe_upstream(&chosen.agent, outcome);
        tracing::warn!(
            agent = %chosen.agent,
            decision = %chosen.decision_id,
            outcome,
            error = %message,
            "the upstream failed"
        );
        chosen.error(StatusCode::BAD_GATEWAY, message)
    };
    let who = format!("the upstream of agent `{}` ({})", chosen.agent, target.url);
    let t0 = Instant::now();
    let resp = match tokio::time::timeout(target.timeout, call.send()).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) if !e.is_timeout() => {
            let outcome = if e.is_connect() { "connect" } else { "error" };
            return Err(upstream_failed(outcome, format!("{who} failed: {}", chain(&e))));
        }
        Ok(Err(_)) | Err(_) => {
            return Err(upstream_failed(
                "timeout",
                format!(
                    "{who} did not answer within {} s (serve.upstreams.{}.timeout_s)",
                    target.timeout.as_secs_f64(),
                    chosen.agent
                ),
            ));
        }
    };
    st.metrics
        .upstream_latency
        .get_or_create(&AgentLabels { agent: chosen.agent.clone() })
        .observe(t0.elapsed().as_secs_f64());
    let status = resp.status();
    let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
    if !status.is_success() {
        // Quote the beginning of the upstream's error (it says what was wrong: a bad key, a
        // rate limit, an unknown model).
        let mut resp = resp;
        let mut quoted = Vec::new();
        while quoted.len() < QUOTED_ERROR_BYTES {
            match resp.chunk().await {
                Ok(Some(c)) => quoted.extend_from_slice(&c),
                _ => break,
            }
        }
        quoted.truncate(QUOTED_ERROR_BYTES);
        let quoted = String::from_utf8_lossy(&quoted);
        return Err(upstream_failed("status", format!("{who} answered {status}: {}", quoted.trim())));
    }
    let mut r = if stream {
        // Passed through chunk by chunk: nothing is buffered. A stream that breaks off ends
        // the client's response early (counted and logged).
        let (metrics, agent, id) = (st.metrics.clone(), chosen.agent.clone(), chosen.decision_id);
        let body = resp.bytes_stream().inspect_err(move |e| {
            metrics.observe_upstream(&agent, "stream_error");
            tracing::warn!(agent = %agent, decision = %id, error = %chain(e), "the upstream's stream broke off");
        });
        let mut r = Response::new(Body::from_stream(body));
        r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            content_type.unwrap_or_else(|| HeaderValue::from_static("text/event-stream")),
        );
        r
    } else {
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                let outcome = if e.is_timeout() { "timeout" } else { "error" };
                return Err(upstream_failed(
                    outcome,
                    format!("{who}: reading the answer failed: {}", chain(&e)),
                ));
            }
        };
        let mut r = Response::new(Body::from(bytes));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            content_type.unwrap_or_else(|| HeaderValue::from_static("application/json")),
        );
        r
    };
    st.metrics.observe_upstream(&chosen.agent, "ok");
    *r.status_mut() = status;
    Ok(chosen.tag(r))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_last_user_message_is_routed_on() {
        let m = json!([
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": "my invoice is wrong"},
        ]);
        assert_eq!(last_user_text(&m), Ok("my invoice is wrong".into()));
        let parts = json!([{"role": "user", "content": [
            {"type": "text", "text": "what is in"},
            {"type": "image_url", "image_url": {"url": "data:,"}},
            {"type": "text", "text": "this picture?"},
        ]}]);
        assert_eq!(last_user_text(&parts), Ok("what is in\nthis picture?".into()));
        assert_eq!(
            last_user_text(&json!([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}])),
            Ok("x".into())
        );
    }

    #[test]
    fn conversations_without_a_routable_text_are_refused() {
        for bad in [
            json!(null),
            json!("hello"),
            json!([]),
            json!([{"role": "system", "content": "only a system prompt"}]),
            json!([{"role": "user", "content": 3}]),
            json!([{"role": "user", "content": "   "}]),
            json!([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
            json!([{"role": "user"}]),
        ] {
            assert!(last_user_text(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn upstreams_name_agents_and_need_their_key_variable() {
        let mut cfg = BTreeMap::new();
        cfg.insert(
            "code".to_string(),
            Upstream { base_url: "http://127.0.0.1:9/v1/".into(), model: "m".into(), ..Upstream::default() },
        );
        let u = Upstreams::from_config(&cfg).expect("valid");
        assert_eq!(u.targets["code"].url, "http://127.0.0.1:9/v1/chat/completions");
        let agents = vec!["code".to_string(), "math".to_string()];
        u.check_agents(&agents, 1).expect("code is an agent");
        let e = u.check_agents(&["math".to_string()], 3).expect_err("not an agent").to_string();
        assert!(e.contains("serve.upstreams.code") && e.contains("version 3") && e.contains("math"), "{e}");
        if let Some(u) = cfg.get_mut("code") {
            u.api_key_env = "MAPPO_TEST_SURELY_UNSET_VARIABLE_4711".into();
        }
        let e = Upstreams::from_config(&cfg).err().expect("unset key variable").to_string();
        assert!(
            e.contains("serve.upstreams.code.api_key_env")
                && e.contains("MAPPO_TEST_SURELY_UNSET_VARIABLE_4711"),
            "{e}"
        );
    }
}
