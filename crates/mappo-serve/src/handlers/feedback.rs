//! `POST /v1/feedback`: the reward of a decision, committed and joined to it; or the end of an
//! episode, with a reward for the episode as a whole or without one.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use mappo_config::ServeConfig;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{parse_body, schema};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// `POST /v1/feedback`: `{"decision_id", "reward"}`, the reward of a decision; or
/// `{"episode_id", "end": true}` with an optional `"reward"`, the end of an episode (the reward is
/// the episode's as a whole).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    /// The id `/v1/route` returned, for a decision's reward.
    pub decision_id: Option<String>,
    /// A finite number in [`serve.reward_min`, `serve.reward_max`] (default [-1, 1]): required
    /// with `decision_id`, optional with `episode_id`.
    pub reward: Option<f64>,
    /// The episode to end (the `episode_id` its steps were routed with).
    #[schema(example = "conversation-42")]
    pub episode_id: Option<String>,
    /// `true` with `episode_id`: the episode ends (it takes no more steps). Default false.
    #[serde(default)]
    pub end: bool,
}

impl FeedbackRequest {
    /// The request body's schemas as the server checks it with `cfg`'s reward range:
    /// `FeedbackRequest` is one of `DecisionReward` and `EpisodeEnd`; a field the other shape
    /// needs is absent or null.
    pub(crate) fn schemas(cfg: &ServeConfig) -> Vec<(&'static str, Value)> {
        let (lo, hi) = (cfg.reward_min, cfg.reward_max);
        let reward = |nullable: bool, what: &str| {
            json!({
                "type": if nullable { json!(["number", "null"]) } else { json!("number") },
                "minimum": lo,
                "maximum": hi,
                "description": format!(
                    "{what} In [{lo}, {hi}] (serve.reward_min, serve.reward_max)."
                ),
            })
        };
        let decision = schema::shape(
            "The reward of a decision. A decision not in the log is 404; one that already has a \
             reward 409.",
            &["decision_id", "reward"],
            json!({
                "decision_id": {
                    "type": "string",
                    "format": "uuid",
                    "description": "The id `/v1/route` (or the proxy's `x-mappo-decision-id`) returned \
                        (the simple, braced and URN forms of a UUID are accepted too).",
                },
                "reward": reward(false, "The decision's reward."),
                "episode_id": schema::absent("a reward goes to a decision or ends an episode, not both."),
                "end": {
                    "type": "boolean",
                    "const": false,
                    "description": "Absent or false: `end` ends an episode (see EpisodeEnd).",
                },
            }),
        );
        let episode = schema::shape(
            "The end of an episode, with a reward for the episode as a whole or without one (its \
             steps' own rewards stand). An episode not in the log is 404; one that has already \
             ended 409.",
            &["episode_id", "end"],
            json!({
                "episode_id": schema::episode_id("The episode to end (the `episode_id` its steps were routed with)."),
                "end": {"type": "boolean", "const": true, "description": "`true`: the episode takes no more steps."},
                "reward": reward(true, "The episode's reward, if any."),
                "decision_id": schema::absent("a reward goes to a decision or ends an episode, not both."),
            }),
        );
        let request = json!({
            "description": "`POST /v1/feedback`: a decision's reward, or an episode's end.",
            "oneOf": [
                {"$ref": "#/components/schemas/DecisionReward"},
                {"$ref": "#/components/schemas/EpisodeEnd"},
            ],
        });
        vec![("FeedbackRequest", request), ("DecisionReward", decision), ("EpisodeEnd", episode)]
    }
}

/// The reward (or the episode's end) was committed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FeedbackResponse {
    /// The decision rewarded.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub decision_id: Option<Uuid>,
    /// The episode ended.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub episode_id: Option<String>,
    /// Always true.
    pub accepted: bool,
}

/// Record the reward of a decision.
#[utoipa::path(
    post,
    path = "/v1/feedback",
    request_body = FeedbackRequest,
    responses(
        (status = 200, description = "The reward is committed", body = FeedbackResponse),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "No such decision or episode", body = ErrorBody),
        (status = 408, description = "The body did not arrive within serve.body_timeout_ms", body = ErrorBody),
        (status = 409, description = "The decision already has a reward, or the episode has already ended", body = ErrorBody),
        (status = 413, description = "Body over the limit (serve.max_body_bytes)", body = ErrorBody),
        (status = 422, description = "A body that is not one of the request's shapes: a reward that is not a number or out of range, a malformed id, a missing `reward` or `end`, both ids, wrong or unknown fields", body = ErrorBody),
        (status = 500, description = "The decision log failed", body = ErrorBody),
        (status = 503, description = "The decision log is unavailable (serve.db_timeout_ms); or serve.max_connections connections are open (retry later)", body = ErrorBody),
    )
)]
pub(crate) async fn feedback(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<FeedbackResponse>, ApiError> {
    let req: FeedbackRequest = parse_body(body)?;
    let (lo, hi) = (st.cfg.reward_min, st.cfg.reward_max);
    if let Some(r) = req.reward.filter(|r| !r.is_finite() || *r < lo || *r > hi) {
        return Err(ApiError::unprocessable(format!(
            "reward {r} is outside [{lo}, {hi}] (serve.reward_min, serve.reward_max)"
        )));
    }
    match (req.decision_id, req.episode_id) {
        (Some(d), None) => {
            let id =
                Uuid::parse_str(&d).map_err(|_| ApiError::unprocessable("`decision_id` is not a UUID"))?;
            let Some(reward) = req.reward else {
                return Err(ApiError::unprocessable("missing `reward` for `decision_id`"));
            };
            if req.end {
                return Err(ApiError::unprocessable(
                    "`end` ends an episode: give `episode_id`, not `decision_id`",
                ));
            }
            st.db(st.committer.record_reward(id, reward)).await?;
            st.metrics.rewards_joined.inc();
            Ok(Json(FeedbackResponse { decision_id: Some(id), episode_id: None, accepted: true }))
        }
        (None, Some(episode)) => {
            mappo_log::EpisodeStep::check_id(&episode)
                .map_err(|e| ApiError::unprocessable(format!("`episode_id`: {e}")))?;
            if !req.end {
                return Err(ApiError::unprocessable(
                    "feedback for an episode ends it: send `\"end\": true` (with its `reward`, or none); \
                     rewards of single steps go with their `decision_id`",
                ));
            }
            st.db(st.committer.end_episode(&episode, req.reward)).await?;
            st.metrics.episodes_ended.inc();
            Ok(Json(FeedbackResponse { decision_id: None, episode_id: Some(episode), accepted: true }))
        }
        (Some(_), Some(_)) => Err(ApiError::unprocessable("give `decision_id` or `episode_id`, not both")),
        (None, None) => Err(ApiError::unprocessable("missing `decision_id` (or `episode_id` with `end`)")),
    }
}
