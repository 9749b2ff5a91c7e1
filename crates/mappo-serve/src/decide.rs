//! The one "decide and log" step behind `POST /v1/route` and the proxy's
//! `POST /v1/chat/completions`: check the texts (how many, how long) and the cost weight, route
//! them through the model thread, build one [`Decision`] per text (with its propensity and
//! embedding) and commit them to the decision log before anything is answered or forwarded.

use axum::http::StatusCode;
use mappo_log::{Decision, DecisionKind, Timestamp};

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
    let Ask { texts, text_name, choice, cost_weight, cost_weight_field } = ask;
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
    let routed = st.engine.route_at(texts, choice != Choice::Sample, cost_weight).await?;
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
            episode: None,
        });
    }
    // Committed before the answer leaves (or the request goes upstream).
    st.committer.log_decisions(&decisions).await.map_err(|e| st.log_error(e))?;
    st.log_ok();
    st.metrics.decisions_logged.inc_by(decisions.len() as u64);
    Ok(indices
        .into_iter()
        .zip(decisions)
        .map(|(agent_index, decision)| Decided { agent_index, decision })
        .collect())
}
