//! Simulated users (`mappo simulate`): route corpus texts through `POST /v1/route` and send the
//! chosen agent's reward to `POST /v1/feedback` — after a delay, or never, when asked. The
//! closed-loop demo, a load generator and a test harness.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mappo_config::Rng;
use serde::Serialize;

use crate::client::{Client, ClientError};

/// One simulated user's prompt and the agent that should answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimPrompt {
    /// The prompt.
    pub text: String,
    /// The right agent's name: routing to it earns 1, any other agent 0.
    pub label: String,
}

/// How to simulate.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// The server, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// Requests to send.
    pub requests: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Delay between a decision and its feedback.
    pub feedback_delay: Duration,
    /// Probability that a decision gets no feedback.
    pub missing_feedback: f64,
    /// Seed of the prompt order and of the missing feedback.
    pub seed: u64,
    /// Sent as `Authorization: Bearer KEY` when set.
    pub api_key: Option<String>,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl SimOptions {
    /// `requests` requests, 4 at a time, immediate and complete feedback, seed 0.
    pub fn new(base_url: impl Into<String>, requests: usize) -> Self {
        Self {
            base_url: base_url.into(),
            requests,
            concurrency: 4,
            feedback_delay: Duration::ZERO,
            missing_feedback: 0.0,
            seed: 0,
            api_key: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// What a simulation measured.
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    /// Requests sent.
    pub requests: usize,
    /// Requests without a decision (error status or transport error).
    pub errors: usize,
    /// Mean reward of the routed requests (what the users got, whether or not they said so).
    pub mean_reward: f64,
    /// Mean reward of each window of 1,000 requests, in request order (the last may be shorter).
    pub reward_by_window: Vec<f64>,
    /// Rewards posted and accepted.
    pub feedback_sent: usize,
    /// Rewards posted and refused (or lost).
    pub feedback_errors: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Requests per window of [`SimReport::reward_by_window`].
pub const WINDOW: usize = 1000;

/// The prompt order: seeded shuffled passes over the corpus, as many as `requests` needs.
fn order(n: usize, requests: usize, rng: &mut Rng) -> Vec<usize> {
    let mut out = Vec::with_capacity(requests);
    while out.len() < requests && n > 0 {
        let mut pass: Vec<u32> = (0..n as u32).collect();
        rng.shuffle(&mut pass);
        out.extend(pass.into_iter().map(|i| i as usize).take(requests - out.len()));
    }
    out
}

/// Runs the simulation; see the module documentation. Failed requests are counted, not
/// errors; the error is an HTTP client that cannot be built.
pub async fn simulate(corpus: &[SimPrompt], opts: &SimOptions) -> Result<SimReport, ClientError> {
    let client =
        Client::new(&opts.base_url, opts.api_key.clone(), opts.timeout, opts.concurrency.max(1) * 2)?;
    let mut rng = Rng::new(opts.seed);
    let order = Arc::new(order(corpus.len(), opts.requests, &mut rng));
    let missing: Arc<Vec<bool>> =
        Arc::new((0..order.len()).map(|_| rng.uniform() < opts.missing_feedback).collect());
    let corpus: Arc<Vec<SimPrompt>> = Arc::new(corpus.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let feedback_errors = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..opts.concurrency.max(1) {
        let (client, order, missing, corpus, next, sent, ferr, delay) = (
            client.clone(),
            order.clone(),
            missing.clone(),
            corpus.clone(),
            next.clone(),
            sent.clone(),
            feedback_errors.clone(),
            opts.feedback_delay,
        );
        workers.push(tokio::spawn(async move {
            let mut rewards: Vec<(usize, Option<f64>)> = Vec::new();
            let mut pending = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&j) = order.get(i) else { break };
                let p = &corpus[j];
                let d = match client.route(&p.text, false).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::debug!(error = %e, "route failed");
                        rewards.push((i, None));
                        continue;
                    }
                };
                let reward = if d.agent == p.label { 1.0 } else { 0.0 };
                rewards.push((i, Some(reward)));
                if missing[i] {
                    continue;
                }
                let (client, sent, ferr) = (client.clone(), sent.clone(), ferr.clone());
                let post = async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    match client.feedback(&d.decision_id, reward).await {
                        Ok(_) => sent.fetch_add(1, Ordering::Relaxed),
                        Err(_) => ferr.fetch_add(1, Ordering::Relaxed),
                    };
                };
                if delay.is_zero() {
                    post.await;
                } else {
                    pending.push(tokio::spawn(post));
                }
            }
            for p in pending {
                let _ = p.await;
            }
            rewards
        }));
    }
    let by_index = gather(workers, order.len()).await;
    let mean = mean_of;
    Ok(SimReport {
        requests: order.len(),
        errors: by_index.iter().filter(|r| r.is_none()).count(),
        mean_reward: mean(&by_index),
        reward_by_window: by_index.chunks(WINDOW).map(mean).collect(),
        feedback_sent: sent.load(Ordering::Relaxed),
        feedback_errors: feedback_errors.load(Ordering::Relaxed),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// A worker's `(index, value)` results.
pub(crate) type Results = Vec<(usize, Option<f64>)>;

/// Each worker's `(index, value)` results in index order (`None` where a worker failed or gave
/// none).
pub(crate) async fn gather(workers: Vec<tokio::task::JoinHandle<Results>>, n: usize) -> Vec<Option<f64>> {
    let mut by_index: Vec<Option<f64>> = vec![None; n];
    for w in workers {
        if let Ok(rs) = w.await {
            for (i, r) in rs {
                if let Some(slot) = by_index.get_mut(i) {
                    *slot = r;
                }
            }
        }
    }
    by_index
}

/// The mean of the values present (0 when none is).
pub(crate) fn mean_of(xs: &[Option<f64>]) -> f64 {
    let ok: Vec<f64> = xs.iter().flatten().copied().collect();
    if ok.is_empty() { 0.0 } else { ok.iter().sum::<f64>() / ok.len() as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_covers_the_corpus_in_seeded_passes() {
        let o = order(5, 12, &mut Rng::new(1));
        assert_eq!(o.len(), 12);
        let mut first: Vec<usize> = o[..5].to_vec();
        first.sort();
        assert_eq!(first, vec![0, 1, 2, 3, 4]);
        assert_eq!(o, order(5, 12, &mut Rng::new(1)));
        assert_ne!(o, order(5, 12, &mut Rng::new(2)));
        assert!(order(0, 3, &mut Rng::new(1)).is_empty());
    }
}
