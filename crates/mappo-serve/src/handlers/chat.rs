//! The OpenAI-compatible proxy: `POST /v1/chat/completions` and `GET /v1/models`.
//!
//! With `"model": "mappo"` the conversation's last user message is routed like a `/v1/route`
//! text (sampled, logged with its propensity), and the request goes to the chosen agent's
//! upstream (`[serve.upstreams.<agent>]`) with `"model"` replaced by the upstream's; with
//! `"model": "<agent>"` that agent is forced (logged as `forced`, never learned from). The
//! decision is committed to the log ([`crate::decide`]) before the upstream is called
//! ([`crate::upstream`]), and the answer carries `x-mappo-decision-id` and `x-mappo-agent`, so
//! the client can send `/v1/feedback`. `"stream": true` answers are passed through chunk by
//! chunk as they arrive. An upstream that cannot be reached, times out or answers non-2xx
//! gives a 502 with a JSON error.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use mappo_config::ServeConfig;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{parse_body, schema};
use crate::decide::{Ask, Choice, Decided, EpisodeAsk, decide_and_log};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// The model name that lets mappo choose the agent.
pub const ROUTER_MODEL: &str = "mappo";

/// Header naming the decision (send it back to `/v1/feedback`).
pub const DECISION_HEADER: &str = "x-mappo-decision-id";
/// Header naming the agent that answered.
pub const AGENT_HEADER: &str = "x-mappo-agent";
/// Header naming every agent called (a cascade that escalated calls two).
pub const AGENTS_HEADER: &str = "x-mappo-agents";
/// Header carrying a conversation id: the request is the next step of that episode.
pub const EPISODE_HEADER: &str = "x-mappo-episode-id";

/// The OpenAPI tag of the proxy's operations (the module path they had when the document was
/// first published; kept so that generated clients do not change).
const PROXY_TAG: &str = "crate::proxy";

/// The `mappo` extension object of a chat completion request (removed before forwarding).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MappoOptions {
    /// Cost weight λ for a cost-aware policy (as `cost_weight` in `/v1/route`); default
    /// `serve.cost_weight`. Ignored when an agent is forced.
    pub cost_weight: Option<f64>,
    /// A conversation id (1–128 bytes, as `x-mappo-episode-id`): the request is the next step
    /// of that episode (a conversation turn), its earlier steps read from the decision log.
    pub episode_id: Option<String>,
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

impl ChatCompletionRequest {
    /// The request body's schemas as the proxy checks it with `cfg`'s limits. The proxy reads
    /// `model`, `stream`, `mappo` and the last `user` message; everything else is forwarded
    /// unchanged for the upstream to judge, so any other field and any other message is allowed
    /// here. JSON Schema cannot say "the *last* user message": the schema asks for one routable
    /// user message (`contains`), and the description says which one is read.
    pub(crate) fn schemas(cfg: &ServeConfig) -> Vec<(&'static str, Value)> {
        let request = json!({
            "type": "object",
            "description": "`POST /v1/chat/completions`: an OpenAI chat completion request. Every field \
                besides `model` and `mappo` is forwarded to the upstream unchanged (and checked there).",
            "required": ["model", "messages"],
            "properties": {
                "model": {
                    "type": "string",
                    "description": "`mappo` (the router chooses the agent) or an agent's name (that agent \
                        is forced; another name is 404); replaced by the upstream's `model` before \
                        forwarding. `GET /v1/models` lists them.",
                    "example": ROUTER_MODEL,
                },
                "messages": {
                    "type": "array",
                    "description": "The conversation, forwarded unchanged. mappo reads only the last \
                        message whose `role` is `user`, which must have text to route on (a \
                        ChatMessage; else 422); the others may be anything the upstream accepts.",
                    "contains": {"$ref": "#/components/schemas/ChatMessage"},
                },
                "stream": {
                    "type": ["boolean", "null"],
                    "description": "Stream the answer as server-sent events (passed through from the \
                        upstream).",
                },
                "mappo": {
                    "oneOf": [{"$ref": "#/components/schemas/MappoOptions"}, {"type": "null"}],
                    "description": "mappo's options (not forwarded).",
                },
            },
        });
        let text_part = json!({
            "type": "object",
            "required": ["type", "text"],
            "properties": {"type": {"const": "text"}, "text": {"type": "string", "pattern": schema::NOT_BLANK}},
        });
        let message = json!({
            "type": "object",
            "description": "The user message the router decides on: the last message with `role` \
                `user`, its `content` a string, or an array of content parts whose `{\"type\": \
                \"text\", \"text\"}` parts are routed on (joined by newlines). The text must not \
                be blank, and at most serve.max_text_bytes bytes (longer → 413).",
            "required": ["role", "content"],
            "properties": {
                "role": {"const": "user", "description": "`user`."},
                "content": {
                    "oneOf": [
                        {
                            "type": "string",
                            "pattern": schema::NOT_BLANK,
                            "maxLength": cfg.max_text_bytes,
                        },
                        {"type": "array", "contains": text_part},
                    ],
                },
            },
        });
        let options = json!({
            "type": "object",
            "description": "The `mappo` extension object of a chat completion request (removed before \
                forwarding).",
            "properties": {
                "cost_weight": schema::number_or_null(
                    "Cost weight λ for a cost-aware policy (as `cost_weight` in `/v1/route`); default \
                     `serve.cost_weight`. Ignored when an agent is forced.",
                ),
                "episode_id": {
                    "oneOf": [
                        schema::episode_id(
                            "A conversation id (as `x-mappo-episode-id`; if both are given they must be \
                             equal, else 422): the request is the next step of that episode, its \
                             earlier steps read from the decision log.",
                        ),
                        {"type": "null"},
                    ],
                },
            },
            "additionalProperties": false,
        });
        vec![("ChatCompletionRequest", request), ("ChatMessage", message), ("MappoOptions", options)]
    }
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
    tag = PROXY_TAG,
    responses(
        (status = 200, description = "`mappo` and the agents", body = ModelList),
        (status = 503, description = "serve.max_connections connections are open (retry later)", body = ErrorBody),
    )
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

/// What was decided and called for one request: one decision, or an episode's steps (a
/// cascade: the first agent, then accept or escalate).
struct Chosen {
    /// Every decision of this request, in step order.
    decisions: Vec<Uuid>,
    /// The agent that answers (the last one called).
    agent: String,
    /// Every agent called upstream, in order.
    called: Vec<String>,
    /// The episode the decisions are steps of.
    episode_id: Option<String>,
}

impl Chosen {
    /// Adds `x-mappo-decision-id`, `x-mappo-agent`, `x-mappo-agents` and, for an episode,
    /// `x-mappo-episode-id` to a response.
    fn tag(&self, mut r: Response) -> Response {
        let h = r.headers_mut();
        let ids: Vec<String> = self.decisions.iter().map(Uuid::to_string).collect();
        if let Ok(v) = HeaderValue::from_str(&ids.join(",")) {
            h.insert(HeaderName::from_static(DECISION_HEADER), v);
        }
        // Agent names are UTF-8: from_bytes keeps non-ASCII ones (obs-text) rather than failing.
        if let Ok(v) = HeaderValue::from_bytes(self.agent.as_bytes()) {
            h.insert(HeaderName::from_static(AGENT_HEADER), v);
        }
        if let Ok(v) = HeaderValue::from_bytes(self.called.join(",").as_bytes()) {
            h.insert(HeaderName::from_static(AGENTS_HEADER), v);
        }
        if let Some(v) = self.episode_id.as_deref().and_then(|e| HeaderValue::from_str(e).ok()) {
            h.insert(HeaderName::from_static(EPISODE_HEADER), v);
        }
        r
    }

    fn error(&self, status: StatusCode, message: impl Into<String>) -> Response {
        self.tag(ApiError::new(status, message).into_response())
    }
}

/// Forward a chat completion to the agent mappo chooses (`"model": "mappo"`) or to the agent
/// named (forced). The answer is the upstream's, with `x-mappo-decision-id` and `x-mappo-agent`.
/// A conversation id (`x-mappo-episode-id` or `"mappo": {"episode_id"}`) makes the request the
/// next step of that episode. Behind a cascade policy, `"model": "mappo"` runs the cascade: the
/// first agent is called, its answer decides whether to escalate, and one answer is returned.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = PROXY_TAG,
    request_body = ChatCompletionRequest,
    params(
        ("x-mappo-episode-id" = Option<String>, Header, min_length = 1, max_length = 128,
            pattern = "^[ -~]*[!-~][ -~]*$",
            description = "A conversation id, 1–128 visible ASCII characters (surrounding spaces are not part of it): the request is the next step of that episode (as `mappo.episode_id`; if both are given they must be equal, else 422)"),
    ),
    responses(
        (status = 200, description = "The upstream's answer (a JSON chat completion, or with \
            `\"stream\": true` its server-sent events as they arrive), with headers \
            x-mappo-decision-id, x-mappo-agent, x-mappo-agents and, for an episode, x-mappo-episode-id",
            content(("application/json"), ("text/event-stream")),
            headers(
                ("x-mappo-decision-id" = String, description = "The decisions (UUIDs, comma-separated: a cascade's first and escalation steps), for /v1/feedback"),
                ("x-mappo-agent" = String, description = "The agent that answered"),
                ("x-mappo-agents" = String, description = "Every agent called, in order (comma-separated; two when a cascade escalated)"),
                ("x-mappo-episode-id" = String, description = "The episode the decisions are steps of (a cascade without a conversation id gets a new one)")
            )),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "Unknown model (the message lists the allowed ones)", body = ErrorBody),
        (status = 408, description = "The body did not arrive within serve.body_timeout_ms", body = ErrorBody),
        (status = 409, description = "The episode has ended, or has no further step for the served policy", body = ErrorBody),
        (status = 413, description = "Body (serve.max_body_bytes) or routed text (serve.max_text_bytes) over the limit", body = ErrorBody),
        (status = 422, description = "No `model` string, no last user message with text, a `stream` that is not a boolean, a bad `mappo` object or episode id, a header and a body episode id that differ", body = ErrorBody),
        (status = 500, description = "The model or the decision log failed", body = ErrorBody),
        (status = 502, description = "The upstream failed: unreachable, timed out (serve.upstreams.<agent>.timeout_s) or answered non-2xx (its error is quoted); or a cascade's first answer has no text", body = ErrorBody),
        (status = 503, description = "The agent has no upstream, the service is overloaded, the decision log is unavailable; or serve.max_connections connections are open (retry later)", body = ErrorBody),
    )
)]
pub(crate) async fn chat_completions(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match proxy(st, &headers, body).await {
        Ok(r) | Err(r) => r,
    }
}

/// The conversation id of a request: the header or `mappo.episode_id` (the same if both).
fn episode_id_of(headers: &HeaderMap, options: &MappoOptions) -> Result<Option<String>, ApiError> {
    let header = match headers.get(EPISODE_HEADER) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::unprocessable(format!("`{EPISODE_HEADER}` must be visible ASCII")))?
                .to_string(),
        ),
    };
    let id = match (header, options.episode_id.clone()) {
        (Some(h), Some(b)) if h != b => {
            return Err(ApiError::unprocessable(format!(
                "`{EPISODE_HEADER}` ({h:?}) and `mappo.episode_id` ({b:?}) differ: give one"
            )));
        }
        (h, b) => h.or(b),
    };
    if let Some(id) = &id {
        mappo_log::EpisodeStep::check_id(id)
            .map_err(|e| ApiError::unprocessable(format!("episode id: {e}")))?;
    }
    Ok(id)
}

async fn proxy(
    st: Arc<AppState>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Response> {
    let e422 = |m: String| ApiError::unprocessable(m).into_response();
    let mut req: Map<String, Value> = parse_body(body).map_err(IntoResponse::into_response)?;
    let Some(model) = req.get("model").and_then(Value::as_str).map(str::to_string) else {
        return Err(e422(format!("missing `model`: \"{ROUTER_MODEL}\" or an agent's name")));
    };
    let options: MappoOptions = match req.remove("mappo") {
        None | Some(Value::Null) => MappoOptions::default(),
        // serde would read the struct from an array too.
        Some(v) if !v.is_object() => return Err(e422("invalid `mappo` object: not an object".into())),
        Some(v) => serde_json::from_value(v).map_err(|e| e422(format!("invalid `mappo` object: {e}")))?,
    };
    let stream = match req.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(e422("`stream` must be a boolean".into())),
    };
    let given_episode = episode_id_of(headers, &options).map_err(IntoResponse::into_response)?;

    // Which agent: the router's choice, or the one named.
    let forced = model != ROUTER_MODEL;
    if forced {
        let agents = st.engine.agents();
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
        if st.upstreams.get(&model).is_none() {
            st.metrics.observe_upstream(&model, "unconfigured");
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("agent `{model}` has no upstream: add a [serve.upstreams.{model}] table"),
            )
            .into_response());
        }
    }
    let text = last_user_text(req.get("messages").unwrap_or(&Value::Null)).map_err(|m| e422(m.into()))?;
    // A cascade policy runs every routed request as a cascade: an episode of its own unless the
    // client names one.
    let cascade = if forced { None } else { st.engine.escalates_to() };
    let episode_id = match (given_episode, &cascade) {
        (Some(id), _) => Some(id),
        (None, Some(_)) => Some(format!("cascade-{}", Uuid::now_v7())),
        (None, None) => None,
    };

    // Decide, and commit the decision before anything goes upstream.
    let first = decide_one(
        &st,
        text.clone(),
        if forced { Choice::Force(model) } else { Choice::Sample },
        options.cost_weight,
        episode_id.clone().map(|id| EpisodeAsk { id, stage: None, response: None }),
    )
    .await?;
    let mut chosen = Chosen {
        decisions: vec![first.decision.id],
        agent: first.decision.agent.clone(),
        called: vec![first.decision.agent.clone()],
        episode_id,
    };
    let target = upstream_of(&st, &chosen)?;
    req.insert("model".into(), Value::String(target.model().to_string()));
    let escalation = match (&cascade, &chosen.episode_id) {
        (Some(strong), Some(id)) if *strong != chosen.agent => Some((strong.clone(), id.clone())),
        _ => None,
    };
    let Some((strong, id)) = escalation else {
        // One agent answers: forwarded as asked (streamed through when asked).
        let out = serde_json::to_vec(&req)
            .map_err(|e| chosen.error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        return match target.forward(&chosen.agent, first.decision.id, out, stream, &st.metrics).await {
            Ok(r) => Ok(chosen.tag(r)),
            Err(e) => Err(chosen.tag(e.into_response())),
        };
    };

    // A cascade: the first agent's whole answer (not streamed), then accept or escalate.
    let mut first_req = req.clone();
    first_req.remove("stream");
    first_req.remove("stream_options");
    let out = serde_json::to_vec(&first_req)
        .map_err(|e| chosen.error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let answered = target
        .forward(&chosen.agent, first.decision.id, out, false, &st.metrics)
        .await
        .map_err(|e| chosen.tag(e.into_response()))?;
    let (parts, body) = answered.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_CASCADE_ANSWER_BYTES).await.map_err(|e| {
        chosen
            .error(StatusCode::BAD_GATEWAY, format!("reading agent `{}`'s answer failed: {e}", chosen.agent))
    })?;
    let completion: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let Some(answer) = completion.pointer("/choices/0/message/content").and_then(Value::as_str) else {
        return Err(chosen.error(
            StatusCode::BAD_GATEWAY,
            format!(
                "agent `{}`'s answer is not a chat completion with text in choices[0].message.content: \
                 the cascade cannot look at it",
                chosen.agent
            ),
        ));
    };
    let second = decide_one(
        &st,
        text,
        Choice::Sample,
        options.cost_weight,
        Some(EpisodeAsk { id, stage: None, response: Some(answer.to_string()) }),
    )
    .await
    .map_err(|r| chosen.tag(r))?;
    chosen.decisions.push(second.decision.id);
    if second.agent_index == mappo_env::CascadeRules::ESCALATE {
        chosen.agent = strong.clone();
        chosen.called.push(strong);
        let target = upstream_of(&st, &chosen)?;
        req.insert("model".into(), Value::String(target.model().to_string()));
        let out = serde_json::to_vec(&req)
            .map_err(|e| chosen.error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        return match target.forward(&chosen.agent, second.decision.id, out, stream, &st.metrics).await {
            Ok(r) => Ok(chosen.tag(r)),
            Err(e) => Err(chosen.tag(e.into_response())),
        };
    }
    // Accepted: the first answer, as the client asked for it.
    if stream {
        return Ok(chosen.tag(as_event_stream(&completion)));
    }
    Ok(chosen.tag(Response::from_parts(parts, axum::body::Body::from(bytes))))
}

/// The most a cascade's first answer may weigh (it is read whole to be embedded).
const MAX_CASCADE_ANSWER_BYTES: usize = 16 << 20;

/// Decides one text (a step of `episode` when given) and commits it.
async fn decide_one(
    st: &AppState,
    text: String,
    choice: Choice,
    cost_weight: Option<f64>,
    episode: Option<EpisodeAsk>,
) -> Result<Decided, Response> {
    let decided = decide_and_log(
        st,
        Ask {
            texts: vec![text],
            text_name: &|_| "the last user message".into(),
            choice,
            cost_weight,
            cost_weight_field: "`mappo.cost_weight`",
            episode,
        },
    )
    .await
    .map_err(IntoResponse::into_response)?;
    decided
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no decision").into_response())
}

/// The upstream of the chosen agent, or a 503 naming the missing table.
// The error is the answer itself, returned to the client at once: not worth a box.
#[allow(clippy::result_large_err)]
fn upstream_of<'a>(st: &'a AppState, chosen: &Chosen) -> Result<&'a crate::upstream::Target, Response> {
    st.upstreams.get(&chosen.agent).ok_or_else(|| {
        st.metrics.observe_upstream(&chosen.agent, "unconfigured");
        tracing::warn!(agent = %chosen.agent, decisions = ?chosen.decisions, "the chosen agent has no upstream");
        chosen.error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "mappo chose agent `{0}`, which has no upstream: add a [serve.upstreams.{0}] table",
                chosen.agent
            ),
        )
    })
}

/// A whole chat completion as the server-sent events a streamed one would have been: one chunk
/// with the message, one with the finish reason, then `[DONE]` (a cascade's accepted answer for
/// a client that asked for a stream).
fn as_event_stream(completion: &Value) -> Response {
    let choice = completion.pointer("/choices/0").cloned().unwrap_or(Value::Null);
    let chunk = |delta: Value, finish: Value| {
        let c = serde_json::json!({
            "id": completion.get("id").cloned().unwrap_or(Value::Null),
            "object": "chat.completion.chunk",
            "created": completion.get("created").cloned().unwrap_or(Value::from(0)),
            "model": completion.get("model").cloned().unwrap_or(Value::Null),
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        format!("data: {c}\n\n")
    };
    let message = choice.get("message").cloned().unwrap_or(Value::Null);
    let delta = serde_json::json!({
        "role": message.get("role").cloned().unwrap_or(Value::from("assistant")),
        "content": message.get("content").cloned().unwrap_or(Value::Null),
    });
    let finish = choice.get("finish_reason").cloned().unwrap_or(Value::from("stop"));
    let body =
        format!("{}{}data: [DONE]\n\n", chunk(delta, Value::Null), chunk(serde_json::json!({}), finish));
    let mut r = Response::new(axum::body::Body::from(body));
    r.headers_mut().insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut().insert(axum::http::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
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
}
