//! `POST /v1/feedback`: the reward of a decision, committed and joined to it.

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
        .map_err(|_| ApiError::unprocessable("`decision_id` is not a UUID"))?;
    let (lo, hi) = (st.cfg.reward_min, st.cfg.reward_max);
    if !req.reward.is_finite() || req.reward < lo || req.reward > hi {
        return Err(ApiError::unprocessable(format!(
            "reward {} is outside [{lo}, {hi}] (serve.reward_min, serve.reward_max)",
            req.reward
        )));
    }
    st.committer.record_reward(id, req.reward).await.map_err(|e| st.log_error(e))?;
    st.log_ok();
    st.metrics.rewards_joined.inc();
    Ok(Json(FeedbackResponse { decision_id: id, accepted: true }))
}
