//! Simulated conversations (`mappo simulate --env conversation`): multi-turn users whose topic
//! follows the conversation environment's sticky chain over the corpus's labels. Each turn is
//! routed as the next step of its conversation (`"episode_id"`); each turn earns 1 when the
//! agent fits the turn's label, plus the continuity bonus when it is the previous turn's agent;
//! the reward goes back per turn, or as the conversation's reward when it ends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mappo_config::Rng;
use serde::Serialize;

use crate::client::{Client, ClientError};
use crate::simulate::{SimPrompt, gather, mean_of};

/// How to simulate conversations.
#[derive(Debug, Clone)]
pub struct ConversationOptions {
    /// The servers, e.g. `http://127.0.0.1:8080`: turn t of conversation i goes to server
    /// `(i + t) mod n`, so with several replicas every conversation moves between them.
    pub base_urls: Vec<String>,
    /// Conversations to play.
    pub episodes: usize,
    /// Conversations in flight at once.
    pub concurrency: usize,
    /// Turns per conversation (`env.turns`).
    pub turns: usize,
    /// Probability that a turn keeps the previous turn's topic (`env.p_stay`).
    pub p_stay: f64,
    /// Reward for keeping the previous turn's agent (`env.continuity_bonus`).
    pub continuity_bonus: f64,
    /// Send the conversation's total as its reward at its end (`env.reward_at = "end"`) instead
    /// of each turn's reward with its decision.
    pub reward_at_end: bool,
    /// Seed of the topics and texts.
    pub seed: u64,
    /// Prefix of the episode ids (`<prefix>-<n>`): unique per run.
    pub id_prefix: String,
    /// Sent as `Authorization: Bearer KEY` when set.
    pub api_key: Option<String>,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// What a simulation of conversations measured.
#[derive(Debug, Clone, Serialize)]
pub struct ConversationReport {
    /// Conversations played.
    pub episodes: usize,
    /// Turns routed.
    pub steps: usize,
    /// Conversations cut by a failed request (error status or transport error).
    pub errors: usize,
    /// Mean return (the sum of a conversation's turn rewards) of the conversations played whole.
    pub mean_return: f64,
    /// Mean return per window of [`WINDOW`] conversations, in order.
    pub return_by_window: Vec<f64>,
    /// Rewards and ends posted and accepted.
    pub feedback_sent: usize,
    /// Rewards and ends posted and refused (or lost).
    pub feedback_errors: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Conversations per window of [`ConversationReport::return_by_window`].
pub const WINDOW: usize = 500;

/// One conversation's script: each turn's label and text (indices into the corpus).
fn scripts(corpus: &[SimPrompt], opts: &ConversationOptions) -> Vec<Vec<usize>> {
    let mut by_label: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, p) in corpus.iter().enumerate() {
        by_label.entry(p.label.as_str()).or_default().push(i);
    }
    let pools: Vec<&Vec<usize>> = by_label.values().collect();
    let m = pools.len();
    let mut rng = Rng::derived(opts.seed, "simulated-conversations");
    (0..opts.episodes)
        .map(|_| {
            let mut label = rng.below(m as u64) as usize;
            (0..opts.turns)
                .map(|t| {
                    if t > 0 && m > 1 && rng.uniform() >= opts.p_stay {
                        let other = rng.below((m - 1) as u64) as usize;
                        label = if other >= label { other + 1 } else { other };
                    }
                    let pool = pools[label];
                    pool[rng.below(pool.len() as u64) as usize]
                })
                .collect()
        })
        .collect()
}

/// Plays the conversations; see the module documentation. Failed requests are counted, not
/// errors; the error is an HTTP client that cannot be built or an empty corpus.
pub async fn simulate_conversations(
    corpus: &[SimPrompt],
    opts: &ConversationOptions,
) -> Result<ConversationReport, ClientError> {
    if corpus.is_empty() || opts.turns == 0 {
        return Ok(ConversationReport {
            episodes: 0,
            steps: 0,
            errors: 0,
            mean_return: 0.0,
            return_by_window: Vec::new(),
            feedback_sent: 0,
            feedback_errors: 0,
            seconds: 0.0,
        });
    }
    let clients: Vec<Client> = opts
        .base_urls
        .iter()
        .map(|u| Client::new(u, opts.api_key.clone(), opts.timeout, opts.concurrency.max(1) * 2))
        .collect::<Result<_, _>>()?;
    if clients.is_empty() {
        return Err(ClientError::Setup("no server URL to simulate against".into()));
    }
    let clients = Arc::new(clients);
    let scripts = Arc::new(scripts(corpus, opts));
    let corpus: Arc<Vec<SimPrompt>> = Arc::new(corpus.to_vec());
    let opts = Arc::new(opts.clone());
    let next = Arc::new(AtomicUsize::new(0));
    let (sent, ferr, steps) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..opts.concurrency.max(1) {
        let (clients, scripts, corpus, opts, next) =
            (clients.clone(), scripts.clone(), corpus.clone(), opts.clone(), next.clone());
        let (sent, ferr, steps) = (sent.clone(), ferr.clone(), steps.clone());
        workers.push(tokio::spawn(async move {
            let mut returns: Vec<(usize, Option<f64>)> = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(script) = scripts.get(i) else { break };
                let id = format!("{}-{i}", opts.id_prefix);
                let mut total = 0.0;
                let mut previous: Option<String> = None;
                let mut failed = false;
                for (t, &j) in script.iter().enumerate() {
                    let client = &clients[(i + t) % clients.len()];
                    let p = &corpus[j];
                    let d = match client.route_step(&p.text, &id).await {
                        Ok(d) => d,
                        Err(e) => {
                            tracing::debug!(error = %e, episode = %id, "route failed");
                            failed = true;
                            break;
                        }
                    };
                    steps.fetch_add(1, Ordering::Relaxed);
                    let mut r = if d.agent == p.label { 1.0 } else { 0.0 };
                    if previous.as_deref() == Some(d.agent.as_str()) {
                        r += opts.continuity_bonus;
                    }
                    total += r;
                    previous = Some(d.agent.clone());
                    if !opts.reward_at_end {
                        let c = if client.feedback(&d.decision_id, r).await.is_ok() { &sent } else { &ferr };
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let reward = (opts.reward_at_end && !failed).then_some(total);
                let client = &clients[(i + script.len()) % clients.len()];
                let c = if client.end_episode(&id, reward).await.is_ok() { &sent } else { &ferr };
                c.fetch_add(1, Ordering::Relaxed);
                returns.push((i, (!failed).then_some(total)));
            }
            returns
        }));
    }
    let by_index = gather(workers, scripts.len()).await;
    let mean = mean_of;
    Ok(ConversationReport {
        episodes: scripts.len(),
        steps: steps.load(Ordering::Relaxed),
        errors: by_index.iter().filter(|r| r.is_none()).count(),
        mean_return: mean(&by_index),
        return_by_window: by_index.chunks(WINDOW).map(mean).collect(),
        feedback_sent: sent.load(Ordering::Relaxed),
        feedback_errors: ferr.load(Ordering::Relaxed),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(p_stay: f64) -> ConversationOptions {
        ConversationOptions {
            base_urls: Vec::new(),
            episodes: 400,
            concurrency: 1,
            turns: 8,
            p_stay,
            continuity_bonus: 1.2,
            reward_at_end: true,
            seed: 4,
            id_prefix: "t".into(),
            api_key: None,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn topics_stay_with_p_stay_and_texts_have_the_turns_label() {
        let corpus: Vec<SimPrompt> = (0..30)
            .map(|i| SimPrompt { text: format!("t{i}"), label: ["a", "b", "c"][i % 3].into() })
            .collect();
        let s = scripts(&corpus, &opts(0.8));
        assert_eq!((s.len(), s[0].len()), (400, 8));
        let (mut stays, mut moves) = (0, 0);
        for script in &s {
            for w in script.windows(2) {
                if corpus[w[0]].label == corpus[w[1]].label { stays += 1 } else { moves += 1 }
            }
        }
        let share = f64::from(stays) / f64::from(stays + moves);
        assert!((share - 0.8).abs() < 0.03, "stay share {share}");
        assert_eq!(s, scripts(&corpus, &opts(0.8)), "seeded");
        let never = scripts(&corpus, &opts(0.0));
        assert!(never.iter().all(|sc| sc.windows(2).all(|w| corpus[w[0]].label != corpus[w[1]].label)));
    }
}
