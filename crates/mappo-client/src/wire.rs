//! What the client reads from the service's answers: its own copies of those fields, so that
//! the client needs no server code. mappo-serve's tests (`tests/client.rs`) decode real answers
//! with these types and compare them with the server's, so a renamed field fails a test.

use serde::{Deserialize, Serialize};

/// What the client reads of a routing decision (`POST /v1/route` with `"text"`; the server
/// also sends every agent's probability and whether the choice was greedy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteDecision {
    /// The decision's id (a UUID); send it back with the reward.
    pub decision_id: String,
    /// The chosen agent's name.
    pub agent: String,
    /// Its index in the policy's agents.
    pub agent_index: usize,
    /// The probability it was chosen with (1 when greedy).
    pub propensity: f32,
    /// The policy version that decided.
    pub policy_version: i64,
}

/// The answer of `POST /v1/feedback`: the reward is committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackAck {
    /// The decision the reward was joined to.
    pub decision_id: String,
    /// Always true.
    pub accepted: bool,
}

/// The answer of `POST /v1/feedback` that ends an episode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpisodeEndAck {
    /// The episode ended.
    pub episode_id: String,
    /// Always true.
    pub accepted: bool,
}

/// The body of every error answer.
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorAnswer {
    pub error: String,
}
