//! `POST /v1/route`: one text or a batch, each decided and logged by [`crate::decide`].

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::parse_body;
use crate::decide::{Ask, Choice, Decided, decide_and_log};
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
        (Some(_), Some(_)) => return Err(ApiError::unprocessable("give either `text` or `texts`, not both")),
        (None, None) => return Err(ApiError::unprocessable("missing `text` (or `texts`)")),
    };
    if texts.is_empty() {
        return Err(ApiError::unprocessable("`texts` is empty"));
    }
    let decided = decide_and_log(
        &st,
        Ask {
            texts,
            text_name: &|i| format!("text {i}"),
            choice: if req.greedy { Choice::Greedy } else { Choice::Sample },
            cost_weight: req.cost_weight,
            cost_weight_field: "`cost_weight`",
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
