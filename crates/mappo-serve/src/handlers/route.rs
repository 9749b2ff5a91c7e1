//! `POST /v1/route`: one text or a batch, each decided and logged by [`crate::decide`].

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use mappo_config::ServeConfig;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{parse_body, schema};
use crate::decide::{Ask, Choice, Decided, EpisodeAsk, decide_and_log};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

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
    /// Make this text the next step of an episode (a conversation turn, a cascade stage): the
    /// client's id for it, 1–128 bytes. The policy sees the episode's earlier decisions, read
    /// from the decision log, so any replica can take any step. Only with `text`.
    #[schema(example = "conversation-42")]
    pub episode_id: Option<String>,
    /// For a multi-stage policy, the stage this step decides (default: the episode's next
    /// stage); another stage than the next is 409.
    pub stage: Option<String>,
    /// The earlier agent's answer, for a step that sees it (a cascade's `escalation` stage).
    pub previous_response: Option<String>,
}

impl RouteRequest {
    /// The request body's schemas as the server checks it with `cfg`'s limits: `RouteRequest`
    /// is one of `RouteText` (one text), `RouteTexts` (a batch) and `RouteStep` (a text as the
    /// next step of an episode); a field another shape needs is absent or null.
    pub(crate) fn schemas(cfg: &ServeConfig) -> Vec<(&'static str, Value)> {
        let max = cfg.max_text_bytes;
        let greedy = json!({
            "type": "boolean",
            "description": "Take the most probable agent instead of sampling; logged with propensity 1 and \
                marked greedy (such decisions are not used for learning). Default false.",
        });
        let cost_weight = schema::number_or_null(
            "Cost weight λ for a cost-aware policy (agents with a `cost`): higher = cheaper agents \
             (`mappo calibrate` finds the λ of a budget). Default `serve.cost_weight`.",
        );
        let text = schema::text(max, false, "One prompt to route.");
        let one = schema::shape(
            "One text: the answer is one decision.",
            &["text"],
            json!({
                "text": text,
                "texts": schema::absent("one `text` or `texts`, not both."),
                "greedy": greedy,
                "cost_weight": cost_weight,
                "episode_id": schema::absent("a text without an episode (see RouteStep)."),
                "stage": schema::absent("only for an episode step (see RouteStep)."),
                "previous_response": schema::absent("only for an episode step (see RouteStep)."),
            }),
        );
        let batch = schema::shape(
            "Several texts: the answer is `{\"decisions\": [...]}` in the same order.",
            &["texts"],
            json!({
                "text": schema::absent("one `text` or `texts`, not both."),
                "texts": {
                    "type": "array",
                    "items": schema::text(max, false, "A prompt."),
                    "minItems": 1,
                    "maxItems": cfg.max_batch_texts,
                    "description": format!(
                        "The prompts, 1 to {} (serve.max_batch_texts; more → 413).",
                        cfg.max_batch_texts
                    ),
                },
                "greedy": greedy,
                "cost_weight": cost_weight,
                "episode_id": schema::absent("an episode step routes one `text`."),
                "stage": schema::absent("only for an episode step (see RouteStep)."),
                "previous_response": schema::absent("only for an episode step (see RouteStep)."),
            }),
        );
        let step = schema::shape(
            "One text as the next step of an episode (a conversation turn, a cascade stage). The \
             policy sees the episode's earlier decisions, read from the decision log, so any replica \
             can take any step. An episode that has ended, or a step the served policy does not \
             have, is 409.",
            &["text", "episode_id"],
            json!({
                "text": text,
                "texts": schema::absent("an episode step routes one `text`."),
                "greedy": greedy,
                "cost_weight": cost_weight,
                "episode_id": schema::episode_id("The client's id of the episode."),
                "stage": {
                    "type": ["string", "null"],
                    "description": "For a multi-stage policy, the stage this step decides (default: the \
                        episode's next stage); another stage than the next is 409.",
                },
                "previous_response": schema::text(
                    max,
                    true,
                    "The earlier agent's answer, for a step that sees it (a cascade's `escalation` \
                     stage; without it such a step is 422).",
                ),
            }),
        );
        let request = json!({
            "description": "`POST /v1/route`: one text (`text`), several (`texts`), or one text as an \
                episode's next step (`text` with `episode_id`).",
            "oneOf": [
                {"$ref": "#/components/schemas/RouteText"},
                {"$ref": "#/components/schemas/RouteTexts"},
                {"$ref": "#/components/schemas/RouteStep"},
            ],
        });
        vec![("RouteRequest", request), ("RouteText", one), ("RouteTexts", batch), ("RouteStep", step)]
    }
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
    /// The episode, for an episode step.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub episode_id: Option<String>,
    /// The step within the episode (0-based), for an episode step.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub step: Option<u32>,
    /// The stage decided, for an episode step (`route` for a one-stage policy).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stage: Option<String>,
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

/// Route one text or a batch.
#[utoipa::path(
    post,
    path = "/v1/route",
    request_body = RouteRequest,
    responses(
        (status = 200, description = "The decisions, committed to the log", body = RouteResponse),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 408, description = "The body did not arrive within serve.body_timeout_ms", body = ErrorBody),
        (status = 409, description = "The episode has ended, has no such step for the served policy, or the step was taken by a concurrent request", body = ErrorBody),
        (status = 413, description = "The body (serve.max_body_bytes), a text or `previous_response` (serve.max_text_bytes) or the number of texts (serve.max_batch_texts) over its limit", body = ErrorBody),
        (status = 422, description = "A body that is not one of the request's shapes: wrong or unknown fields or types, both `text` and `texts`, an empty `texts`, a malformed episode id, `stage` or `previous_response` without `episode_id`; or a step that needs `previous_response` without it", body = ErrorBody),
        (status = 500, description = "The model or the decision log failed", body = ErrorBody),
        (status = 503, description = "Overloaded, the decision log is unavailable (serve.db_timeout_ms); or serve.max_connections connections are open (retry later)", body = ErrorBody),
    )
)]
pub(crate) async fn route(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RouteResponse>, ApiError> {
    let req: RouteRequest = parse_body(body)?;
    let (texts, single) = match (req.text, req.texts) {
        (Some(t), None) => (vec![t], true),
        (None, Some(ts)) => (ts, false),
        (Some(_), Some(_)) => return Err(ApiError::unprocessable("give either `text` or `texts`, not both")),
        (None, None) => return Err(ApiError::unprocessable("missing `text` (or `texts`)")),
    };
    if texts.is_empty() {
        return Err(ApiError::unprocessable("`texts` is empty"));
    }
    let episode = match req.episode_id {
        Some(id) => {
            if !single {
                return Err(ApiError::unprocessable("`episode_id` routes one `text`, not `texts`"));
            }
            mappo_log::EpisodeStep::check_id(&id)
                .map_err(|e| ApiError::unprocessable(format!("`episode_id`: {e}")))?;
            Some(EpisodeAsk { id, stage: req.stage, response: req.previous_response })
        }
        None if req.stage.is_some() || req.previous_response.is_some() => {
            return Err(ApiError::unprocessable(
                "`stage` and `previous_response` belong to an episode step: give `episode_id`",
            ));
        }
        None => None,
    };
    let decided = decide_and_log(
        &st,
        Ask {
            texts,
            text_name: &|i| format!("text {i}"),
            choice: if req.greedy { Choice::Greedy } else { Choice::Sample },
            cost_weight: req.cost_weight,
            cost_weight_field: "`cost_weight`",
            episode,
        },
    )
    .await?;
    let greedy = req.greedy;
    let mut out: Vec<RouteDecision> = decided
        .into_iter()
        .map(|Decided { agent_index, decision: d }| RouteDecision {
            decision_id: d.id,
            agent: d.agent,
            agent_index,
            probabilities: d.probabilities,
            propensity: d.propensity,
            policy_version: d.policy_version,
            greedy,
            episode_id: d.episode.as_ref().map(|e| e.id.clone()),
            step: d.episode.as_ref().map(|e| e.step),
            stage: d.episode.map(|e| e.stage),
        })
        .collect();
    Ok(Json(if single {
        match out.pop() {
            Some(d) => RouteResponse::One(d),
            None => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no decision")),
        }
    } else {
        RouteResponse::Many(RouteBatchResponse { decisions: out })
    }))
}
