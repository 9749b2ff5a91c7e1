//! The one "decide and log" step behind `POST /v1/route` and the proxy's
//! `POST /v1/chat/completions`: check the texts (how many, how long) and the cost weight, route
//! them through the model thread, build one [`Decision`] per text (with its propensity and
//! embedding) and commit them to the decision log before anything is answered or forwarded.

use axum::http::StatusCode;
use mappo_log::{Decision, DecisionKind, EpisodeStep, Timestamp};

use crate::engine::{EpisodeJob, Routed};

use crate::error::ApiError;
use crate::state::AppState;

/// How the agent is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Choice {
    /// Sampled from the floored probabilities (logged with its propensity; learned from).
    Sample,
    /// The most probable agent (logged with propensity 1, kind `greedy`).
    Greedy,
    /// The agent of this name, whatever the policy says (propensity 1, kind `forced`; the
    /// texts are still embedded, as every decision carries its embedding).
    Force(String),
}

/// What to decide: the texts and how a request names its parts in error messages.
pub(crate) struct Ask<'a> {
    /// The texts, one decision each.
    pub texts: Vec<String>,
    /// How an error names text `i` (`text 3`, `the last user message`).
    pub text_name: &'a (dyn Fn(usize) -> String + Sync),
    /// How the agent is chosen.
    pub choice: Choice,
    /// The cost weight λ asked for (default `serve.cost_weight`).
    pub cost_weight: Option<f64>,
    /// The request's field of the cost weight, for errors (`` `cost_weight` ``).
    pub cost_weight_field: &'a str,
    /// The episode the (one) text is the next step of.
    pub episode: Option<EpisodeAsk>,
}

/// The episode a routed text is the next step of.
pub(crate) struct EpisodeAsk {
    /// The client's episode id (checked by the caller).
    pub id: String,
    /// The stage the client names (default: the episode's next stage).
    pub stage: Option<String>,
    /// The earlier agent's answer, for a step that sees it.
    pub response: Option<String>,
}

/// A committed decision.
pub(crate) struct Decided {
    /// The chosen agent's index (the decision's `action`).
    pub agent_index: usize,
    /// What was logged.
    pub decision: Decision,
}

/// Checks `ask`, routes its texts (in one job), and commits one decision per text, in order.
/// Too many or too long texts are 413, a cost weight that is not finite 422, an overloaded
/// model thread or an unreachable log 503, a forced agent the policy no longer has 404.
pub(crate) async fn decide_and_log(st: &AppState, ask: Ask<'_>) -> Result<Vec<Decided>, ApiError> {
    let started = std::time::Instant::now();
    let Ask { texts, text_name, choice, cost_weight, cost_weight_field, episode } = ask;
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
                "{} has {} bytes; at most {} (serve.max_text_bytes)",
                text_name(i),
                t.len(),
                st.cfg.max_text_bytes
            ),
        ));
    }
    let cost_weight = cost_weight.unwrap_or(st.cfg.cost_weight);
    if !cost_weight.is_finite() {
        return Err(ApiError::unprocessable(format!(
            "{cost_weight_field} must be a finite number, got {cost_weight}"
        )));
    }
    let logged_texts = st.cfg.log_text.then(|| texts.clone());
    let greedy = choice != Choice::Sample;
    let (routed, step) = match episode {
        None => (st.engine.route_at(texts, greedy, cost_weight).await?, None),
        Some(ep) => route_step(st, texts, greedy, cost_weight, ep).await?,
    };
    let now = Timestamp::now();
    let mut indices = Vec::with_capacity(routed.items.len());
    let mut decisions = Vec::with_capacity(routed.items.len());
    for (i, item) in routed.items.into_iter().enumerate() {
        let (action, propensity, kind) = match &choice {
            Choice::Sample => (item.action, item.propensity, DecisionKind::Sampled),
            Choice::Greedy => (item.action, item.propensity, DecisionKind::Greedy),
            Choice::Force(name) => {
                // The policy may have switched since the caller checked the name: look it up again.
                let Some(a) = routed.agents.iter().position(|a| a == name) else {
                    return Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        format!("unknown model {name:?}: the served policy has just changed its agents"),
                    ));
                };
                (a, 1.0, DecisionKind::Forced)
            }
        };
        indices.push(action);
        decisions.push(Decision {
            id: Decision::new_id(),
            time: now,
            policy_version: routed.version,
            action: u32::try_from(action).unwrap_or(u32::MAX),
            agent: routed.agents.get(action).cloned().unwrap_or_default(),
            probabilities: item.probabilities,
            propensity,
            kind,
            embedding: item.embedding,
            model_hash: routed.model_hash.to_string(),
            text: logged_texts.as_ref().and_then(|t| t.get(i).cloned()),
            replica: st.replica.clone(),
            cost_weight: item.cost_weight,
            shadow: item.shadow,
            episode: step.clone(),
        });
    }
    // Committed before the answer leaves (or the request goes upstream).
    // Within serve.db_timeout_ms of the request's start (the model's queue counts).
    st.db_since(started, st.committer.log_decisions(&decisions)).await?;
    st.metrics.decisions_logged.inc_by(decisions.len() as u64);
    Ok(indices
        .into_iter()
        .zip(decisions)
        .map(|(agent_index, decision)| Decided { agent_index, decision })
        .collect())
}

/// Routes the one text of `texts` as the next step of episode `ep`: its earlier steps are read
/// from the decision log (so any replica can take any step, and a restart loses nothing); an
/// episode that has ended is 409, an answer over `serve.max_text_bytes` 413.
async fn route_step(
    st: &AppState,
    texts: Vec<String>,
    greedy: bool,
    cost_weight: f64,
    ep: EpisodeAsk,
) -> Result<(Routed, Option<EpisodeStep>), ApiError> {
    let [text]: [String; 1] = texts
        .try_into()
        .map_err(|_| ApiError::unprocessable("an episode step routes one `text`, not `texts`"))?;
    if let Some(r) = ep.response.as_ref().filter(|r| r.len() > st.cfg.max_text_bytes) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "`previous_response` has {} bytes; at most {} (serve.max_text_bytes)",
                r.len(),
                st.cfg.max_text_bytes
            ),
        ));
    }
    let state = st.db_read(st.log.episode(&ep.id)).await?;
    let earlier: Vec<u32> = state.iter().flat_map(|s| s.steps.iter().map(|&(_, action, _)| action)).collect();
    if state.as_ref().is_some_and(|s| s.end.is_some()) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("episode {:?} has ended: it takes no more steps", ep.id),
        ));
    }
    let step = u32::try_from(earlier.len()).unwrap_or(u32::MAX);
    let job = EpisodeJob { earlier, stage: ep.stage, response: ep.response };
    let routed = st.engine.route_step(text, greedy, cost_weight, job).await?;
    let stage = routed.stage.clone().unwrap_or_else(|| "route".into());
    Ok((routed, Some(EpisodeStep { id: ep.id, step, stage })))
}
