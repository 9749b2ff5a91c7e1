//! `POST /v1/feedback`: the reward of a decision, committed and joined to it; or the end of an
//! episode, with a reward for the episode as a whole or without one.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::parse_body;
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
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such decision or episode", body = ErrorBody),
        (status = 409, description = "The decision already has a reward, or the episode has already ended", body = ErrorBody),
        (status = 413, description = "Body over the limit", body = ErrorBody),
        (status = 422, description = "A reward that is not finite or out of range, a malformed id, or a wrong combination of fields", body = ErrorBody),
        (status = 503, description = "The decision log is unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
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
