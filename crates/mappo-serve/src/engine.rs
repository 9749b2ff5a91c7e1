//! The batching queue and the model thread.
//!
//! Handlers put route jobs on a bounded queue; one dedicated OS thread (never the async
//! executor) takes the first job, waits up to `batch_wait` for more, and runs every text of
//! the batch (at most `max_batch_texts`) through one embedding and one policy forward pass;
//! then it floors the probabilities, samples each agent with its seeded RNG (or takes the
//! argmax for greedy requests) and answers each job on its own channel. Requests that arrive
//! while the model is busy are batched anyway. A newly loaded policy is swapped in between
//! batches, so no request ever fails because of a switch.

pub use mappo_nn::floor_probabilities;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mappo_config::Rng;
use mappo_log::ShadowChoice;
use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::model::{PolicyModel, StepInput, TextEmbedder};

/// A policy version ready to serve.
pub(crate) struct LoadedPolicy {
    pub version: i64,
    pub model: Box<dyn PolicyModel>,
    pub agents: Arc<[String]>,
}

/// What the served policy's agents cost and how its rewards are defined: what the dashboard
/// needs to price the logged decisions (a snapshot of one version, taken when it is swapped in).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct PolicyCosts {
    /// The version.
    pub version: i64,
    /// Each agent with its cost per request (`[[env.agents]] cost`; 0 when none is given), in
    /// action order.
    pub agents: Vec<(String, f64)>,
    /// Whether the policy takes the cost weight λ as an input: then the reward it is trained on,
    /// and the one the service expects from `/v1/feedback`, is `quality − λ·cost / max cost`.
    pub cost_input: bool,
    /// For a cascade, the agent its escalation calls (its second step logs `accept` or
    /// `escalate`, not an agent).
    pub escalates_to: Option<String>,
}

impl PolicyCosts {
    /// The snapshot of `p`.
    pub fn of(p: &LoadedPolicy) -> Self {
        let costs = p.model.costs();
        let agents = p
            .agents
            .iter()
            .enumerate()
            .map(|(i, a)| (a.clone(), costs.get(i).copied().filter(|c| c.is_finite()).unwrap_or(0.0)))
            .collect();
        PolicyCosts {
            version: p.version,
            agents,
            cost_input: p.model.cost_aware(),
            escalates_to: escalation_target(p),
        }
    }

    /// Whether some agent has a cost > 0.
    pub fn has_costs(&self) -> bool {
        self.agents.iter().any(|(_, c)| *c > 0.0)
    }

    /// The cost of `agent`, `None` when the policy has no agent of that name.
    pub fn cost(&self, agent: &str) -> Option<f64> {
        self.agents.iter().find(|(a, _)| a == agent).map(|(_, c)| *c)
    }

    /// The most expensive agent's cost (0 without agents).
    pub fn max_cost(&self) -> f64 {
        self.agents.iter().map(|(_, c)| *c).fold(0.0, f64::max)
    }
}

/// One routed text.
#[derive(Debug, Clone)]
pub(crate) struct Scored {
    pub embedding: Vec<f32>,
    pub probabilities: Vec<f32>,
    pub action: usize,
    /// `probabilities[action]` when sampled, 1 when greedy.
    pub propensity: f32,
    /// The cost weight λ the policy was given, when it takes one (a cost-aware policy).
    pub cost_weight: Option<f32>,
    /// What the shadow candidate would have chosen, when one runs.
    pub shadow: Option<ShadowChoice>,
}

/// The answer to one job: its texts, scored by one policy version.
#[derive(Debug, Clone)]
pub(crate) struct Routed {
    pub version: i64,
    /// The options decided between: the policy's agents, or an episode step's stage options.
    pub agents: Arc<[String]>,
    pub model_hash: Arc<str>,
    pub items: Vec<Scored>,
    /// The stage an episode step decided (`None` for a one-step job).
    pub stage: Option<String>,
}

/// An episode step to decide: one text, after the episode's earlier actions.
#[derive(Debug, Clone, Default)]
pub(crate) struct EpisodeJob {
    /// The actions of the episode's earlier steps, in step order.
    pub earlier: Vec<u32>,
    /// The stage the client names; it must be the episode's next stage.
    pub stage: Option<String>,
    /// The earlier agent's answer (a cascade's second step sees its embedding).
    pub response: Option<String>,
}

/// Why a job was not answered.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum EngineError {
    /// The queue is full: the service is overloaded.
    #[error("the routing queue is full; retry shortly")]
    Overloaded,
    /// The model thread has stopped.
    #[error("the model thread has stopped")]
    Stopped,
    /// The model failed on this batch.
    #[error("the model failed: {0}")]
    Model(String),
    /// The episode has no such step for the served policy (complete, or another stage next).
    #[error("{0}")]
    Step(String),
    /// The step lacks what the policy needs (e.g. the earlier agent's answer).
    #[error("{0}")]
    Input(String),
}

struct Job {
    texts: Vec<String>,
    greedy: bool,
    cost_weight: f32,
    episode: Option<EpisodeJob>,
    reply: oneshot::Sender<Result<Routed, EngineError>>,
}

/// Settings of the model thread.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EngineOptions {
    pub min_prob: f64,
    pub max_batch_texts: usize,
    pub batch_wait: Duration,
    pub queue: usize,
}

/// Handle to the model thread.
pub(crate) struct Engine {
    tx: Option<SyncSender<Job>>,
    pending: Arc<Mutex<Option<LoadedPolicy>>>,
    version: Arc<AtomicI64>,
    agents: Arc<RwLock<Arc<[String]>>>,
    escalates_to: Arc<RwLock<Option<String>>>,
    costs: Arc<RwLock<Arc<PolicyCosts>>>,
    thread: Option<JoinHandle<()>>,
}

/// The agent a cascade policy escalates to, by name.
fn escalation_target(p: &LoadedPolicy) -> Option<String> {
    p.model.escalates_to().and_then(|i| p.agents.get(i).cloned())
}

/// Writes `value` into `slot` (a poisoned lock is still written: its value is plain data).
fn set<T>(slot: &RwLock<T>, value: T) {
    match slot.write() {
        Ok(mut a) => *a = value,
        Err(poisoned) => *poisoned.into_inner() = value,
    }
}

/// Reads `slot` (a poisoned lock is still read: its value is plain data).
fn get<T: Clone>(slot: &RwLock<T>) -> T {
    match slot.read() {
        Ok(a) => a.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

impl Engine {
    /// Starts the model thread with an embedder, a first policy, an optional shadow candidate
    /// (scored on every batch, logged, never acted on) and the sampling RNG (the shadow samples
    /// with its own stream derived from it, so the served choices are the same with or without
    /// a shadow).
    pub fn start(
        embedder: Box<dyn TextEmbedder>,
        policy: LoadedPolicy,
        shadow: Option<LoadedPolicy>,
        mut rng: Rng,
        opts: EngineOptions,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel(opts.queue.max(1));
        let pending = Arc::new(Mutex::new(None));
        let version = Arc::new(AtomicI64::new(policy.version));
        let agents = Arc::new(RwLock::new(policy.agents.clone()));
        let escalates_to = Arc::new(RwLock::new(escalation_target(&policy)));
        let costs = Arc::new(RwLock::new(Arc::new(PolicyCosts::of(&policy))));
        metrics.policy_version.set(policy.version);
        let shadow_rng = Rng::new(rng.next_u64());
        let worker = Worker {
            embedder,
            model_hash: Arc::from(String::new()),
            policy,
            shadow,
            shadow_rng,
            rng,
            opts,
            pending: pending.clone(),
            version: version.clone(),
            agents: agents.clone(),
            escalates_to: escalates_to.clone(),
            costs: costs.clone(),
            metrics,
        };
        let thread = std::thread::Builder::new().name("mappo-model".into()).spawn(move || worker.run(rx))?;
        Ok(Self { tx: Some(tx), pending, version, agents, escalates_to, costs, thread: Some(thread) })
    }

    /// Routes `texts` (one job, answered together) at cost weight 0.
    #[cfg(test)]
    pub async fn route(&self, texts: Vec<String>, greedy: bool) -> Result<Routed, EngineError> {
        self.route_at(texts, greedy, 0.0).await
    }

    /// Routes `texts` at cost weight `cost_weight` (the λ input of a cost-aware policy).
    pub async fn route_at(
        &self,
        texts: Vec<String>,
        greedy: bool,
        cost_weight: f64,
    ) -> Result<Routed, EngineError> {
        self.submit(texts, greedy, cost_weight, None).await
    }

    /// Routes one text as the step of an episode after its earlier actions.
    pub async fn route_step(
        &self,
        text: String,
        greedy: bool,
        cost_weight: f64,
        episode: EpisodeJob,
    ) -> Result<Routed, EngineError> {
        self.submit(vec![text], greedy, cost_weight, Some(episode)).await
    }

    async fn submit(
        &self,
        texts: Vec<String>,
        greedy: bool,
        cost_weight: f64,
        episode: Option<EpisodeJob>,
    ) -> Result<Routed, EngineError> {
        let tx = self.tx.as_ref().ok_or(EngineError::Stopped)?;
        let (reply, rx) = oneshot::channel();
        let job = Job { texts, greedy, cost_weight: cost_weight as f32, episode, reply };
        tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => EngineError::Overloaded,
            TrySendError::Disconnected(_) => EngineError::Stopped,
        })?;
        rx.await.map_err(|_| EngineError::Stopped)?
    }

    /// Hands a new policy to the model thread; it serves it from its next batch on.
    pub fn swap(&self, policy: LoadedPolicy) {
        if let Ok(mut slot) = self.pending.lock() {
            *slot = Some(policy);
        }
    }

    /// The version the model thread serves now.
    pub fn version(&self) -> i64 {
        self.version.load(Ordering::Acquire)
    }

    /// The agents of the version the model thread serves now, in index order.
    pub fn agents(&self) -> Arc<[String]> {
        get(&self.agents)
    }

    /// For a cascade policy, the agent its escalation calls (the served version's).
    pub fn escalates_to(&self) -> Option<String> {
        get(&self.escalates_to)
    }

    /// The agents' costs of the version the model thread serves now.
    pub fn costs(&self) -> Arc<PolicyCosts> {
        get(&self.costs)
    }

    /// Stops the thread once the queued jobs are answered.
    pub fn stop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Worker {
    embedder: Box<dyn TextEmbedder>,
    model_hash: Arc<str>,
    policy: LoadedPolicy,
    shadow: Option<LoadedPolicy>,
    shadow_rng: Rng,
    rng: Rng,
    opts: EngineOptions,
    pending: Arc<Mutex<Option<LoadedPolicy>>>,
    version: Arc<AtomicI64>,
    agents: Arc<RwLock<Arc<[String]>>>,
    escalates_to: Arc<RwLock<Option<String>>>,
    costs: Arc<RwLock<Arc<PolicyCosts>>>,
    metrics: Arc<Metrics>,
}

impl Worker {
    fn run(mut self, rx: Receiver<Job>) {
        self.model_hash = Arc::from(self.embedder.model_hash());
        let mut carry: Option<Job> = None;
        loop {
            self.take_pending();
            let first = match carry.take() {
                Some(j) => j,
                None => match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(j) => j,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                },
            };
            let mut texts = first.texts.len();
            let mut batch = vec![first];
            let deadline = Instant::now() + self.opts.batch_wait;
            while texts < self.opts.max_batch_texts {
                let next = match rx.try_recv() {
                    Ok(j) => Some(j),
                    Err(_) => {
                        let now = Instant::now();
                        if now >= deadline { None } else { rx.recv_timeout(deadline - now).ok() }
                    }
                };
                let Some(job) = next else { break };
                if texts + job.texts.len() > self.opts.max_batch_texts {
                    carry = Some(job);
                    break;
                }
                texts += job.texts.len();
                batch.push(job);
            }
            self.take_pending();
            self.process(batch);
        }
    }

    fn take_pending(&mut self) {
        let next = self.pending.lock().ok().and_then(|mut slot| slot.take());
        if let Some(p) = next {
            tracing::info!(from = self.policy.version, to = p.version, "serving a new policy version");
            self.version.store(p.version, Ordering::Release);
            set(&self.agents, p.agents.clone());
            set(&self.escalates_to, escalation_target(&p));
            set(&self.costs, Arc::new(PolicyCosts::of(&p)));
            self.metrics.policy_version.set(p.version);
            self.metrics.policy_switches.inc();
            self.policy = p;
        }
    }

    /// The stage of each job (an episode step's, checked against the served policy), answering
    /// and dropping the jobs whose step the policy cannot take.
    fn stages(&self, batch: Vec<Job>) -> Vec<(Job, Option<crate::model::StageInfo>)> {
        let mut kept = Vec::with_capacity(batch.len());
        for job in batch {
            let Some(ep) = &job.episode else {
                kept.push((job, None));
                continue;
            };
            let checked = self.policy.model.stage(&ep.earlier).map_err(EngineError::Step).and_then(|st| {
                if let Some(want) = ep.stage.as_ref().filter(|w| **w != st.name) {
                    return Err(EngineError::Step(format!(
                        "the episode's next stage is `{}`, not `{want}`",
                        st.name
                    )));
                }
                if st.needs_response && ep.response.is_none() {
                    return Err(EngineError::Input(format!(
                        "stage `{}` sees the earlier agent's answer: send it as `previous_response`",
                        st.name
                    )));
                }
                Ok(st)
            });
            match checked {
                Ok(st) => kept.push((job, Some(st))),
                Err(e) => {
                    let _ = job.reply.send(Err(e));
                }
            }
        }
        kept
    }

    fn process(&mut self, batch: Vec<Job>) {
        let staged = self.stages(batch);
        if staged.is_empty() {
            return;
        }
        let (batch, stages): (Vec<Job>, Vec<Option<crate::model::StageInfo>>) = staged.into_iter().unzip();
        let texts: Vec<&str> = batch.iter().flat_map(|j| j.texts.iter().map(String::as_str)).collect();
        self.metrics.batch_texts.observe(texts.len() as f64);
        let n = texts.len();
        let scored = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<_, EngineError> {
            let emb = self.embedder.embed(&texts).map_err(|e| EngineError::Model(e.to_string()))?;
            let weights: Vec<f32> =
                batch.iter().flat_map(|j| std::iter::repeat_n(j.cost_weight, j.texts.len())).collect();
            let steps = self.step_inputs(&batch)?;
            let score = |m: &dyn PolicyModel| match &steps {
                Some(steps) => m.step_probabilities(&emb, n, &weights, steps),
                None => m.probabilities_at(&emb, n, &weights),
            };
            let probs = score(self.policy.model.as_ref()).map_err(|e| EngineError::Model(e.to_string()))?;
            if probs.len() != n || emb.len() != n * self.embedder.dim() {
                return Err(EngineError::Model("the model returned the wrong number of rows".into()));
            }
            // The shadow scores the same rows; its failure never fails the served request.
            let shadow = match &self.shadow {
                Some(s) if s.agents == self.policy.agents => match score(s.model.as_ref()) {
                    Ok(p) if p.len() == n => Some((s.version, p)),
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!(error = %e, version = s.version, "the shadow policy failed");
                        None
                    }
                },
                _ => None,
            };
            Ok((emb, probs, shadow))
        }))
        .unwrap_or_else(|_| Err(EngineError::Model("the model panicked".into())));
        let (emb, probs, shadow) = match scored {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, texts = n, "routing batch failed");
                for job in batch {
                    let _ = job.reply.send(Err(e.clone()));
                }
                return;
            }
        };
        let dim = self.embedder.dim();
        let cost_aware = self.policy.model.cost_aware();
        let (shadow_version, shadow_probs) = match shadow {
            Some((v, p)) => (v, p),
            None => (0, Vec::new()),
        };
        let mut shadow_rows = shadow_probs.into_iter();
        let mut rows = emb.chunks_exact(dim.max(1)).zip(probs);
        for (job, stage) in batch.into_iter().zip(stages) {
            let options = stage.as_ref().map(|s| s.options.len());
            let cut = |mut p: Vec<f32>| {
                if let Some(k) = options {
                    p.truncate(k);
                }
                p
            };
            let mut items = Vec::with_capacity(job.texts.len());
            for _ in 0..job.texts.len() {
                let Some((e, p)) = rows.next() else { break };
                let probabilities = floor_probabilities(&cut(p), self.opts.min_prob);
                let (action, propensity) = if job.greedy {
                    (argmax(&probabilities), 1.0)
                } else {
                    let a = sample(&probabilities, &mut self.rng);
                    (a, probabilities[a])
                };
                let shadow = shadow_rows.next().map(|sp| {
                    let sp = floor_probabilities(&cut(sp), self.opts.min_prob);
                    let (a, p) = if job.greedy {
                        (argmax(&sp), 1.0)
                    } else {
                        let a = sample(&sp, &mut self.shadow_rng);
                        (a, sp[a])
                    };
                    self.metrics.shadow_decisions.inc();
                    if a == action {
                        self.metrics.shadow_agreements.inc();
                    }
                    ShadowChoice { version: shadow_version, action: a as u32, propensity: p }
                });
                items.push(Scored {
                    embedding: e.to_vec(),
                    probabilities,
                    action,
                    propensity,
                    cost_weight: cost_aware.then_some(job.cost_weight),
                    shadow,
                });
            }
            let (agents, stage) = match stage {
                Some(s) => (Arc::from(s.options), Some(s.name)),
                None => (self.policy.agents.clone(), None),
            };
            let routed = Routed {
                version: self.policy.version,
                agents,
                model_hash: self.model_hash.clone(),
                items,
                stage,
            };
            let _ = job.reply.send(Ok(routed));
        }
    }
}

impl Worker {
    /// Each row's episode step (the earlier actions and the embedded earlier answer), or `None`
    /// when no job of the batch is an episode step (the plain, faster path).
    fn step_inputs(&mut self, batch: &[Job]) -> Result<Option<Vec<StepInput>>, EngineError> {
        if batch.iter().all(|j| j.episode.is_none()) {
            return Ok(None);
        }
        let answers: Vec<&str> =
            batch.iter().filter_map(|j| j.episode.as_ref().and_then(|e| e.response.as_deref())).collect();
        let dim = self.embedder.dim();
        let embedded = if answers.is_empty() {
            Vec::new()
        } else {
            self.embedder.embed(&answers).map_err(|e| EngineError::Model(e.to_string()))?
        };
        let mut answer_rows = embedded.chunks_exact(dim.max(1));
        let mut steps = Vec::new();
        for job in batch {
            let step = match &job.episode {
                Some(ep) => StepInput {
                    earlier: ep.earlier.clone(),
                    response: ep.response.as_ref().and_then(|_| answer_rows.next()).map(<[f32]>::to_vec),
                },
                None => StepInput::default(),
            };
            steps.extend(std::iter::repeat_n(step, job.texts.len()));
        }
        Ok(Some(steps))
    }
}

/// The index of the largest value (the first on ties).
fn argmax(p: &[f32]) -> usize {
    p.iter().enumerate().fold(0, |best, (i, x)| if *x > p[best] { i } else { best })
}

/// Samples an index from a distribution with the seeded RNG.
fn sample(p: &[f32], rng: &mut Rng) -> usize {
    rng.categorical(p)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn floor_keeps_ratios_above_the_floor() {
        let q = floor_probabilities(&[0.9, 0.1, 0.0, 0.0], 0.05);
        assert_eq!(q[2], 0.05);
        assert_eq!(q[3], 0.05);
        assert!((q[0] / q[1] - 9.0).abs() < 1e-4, "{q:?}");
        assert!((q.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{q:?}");
    }

    /// Embeds each text as `[len, 1]` and records every batch's size; slow, as a model is.
    struct FakeEmbedder(Arc<Mutex<Vec<usize>>>);

    impl TextEmbedder for FakeEmbedder {
        fn dim(&self) -> usize {
            2
        }
        fn model_hash(&self) -> &str {
            "fake"
        }
        fn embed(&mut self, texts: &[&str]) -> Result<Vec<f32>, crate::ModelError> {
            if let Ok(mut b) = self.0.lock() {
                b.push(texts.len());
            }
            std::thread::sleep(Duration::from_millis(30));
            Ok(texts.iter().flat_map(|t| [t.len() as f32, 1.0]).collect())
        }
    }

    /// Puts all its mass on agent `self.0`.
    struct OneHot(usize, Vec<String>);

    impl PolicyModel for OneHot {
        fn agents(&self) -> &[String] {
            &self.1
        }
        fn probabilities(&self, _: &[f32], rows: usize) -> Result<Vec<Vec<f32>>, crate::ModelError> {
            Ok((0..rows).map(|_| (0..3).map(|i| if i == self.0 { 1.0 } else { 0.0 }).collect()).collect())
        }
    }

    fn policy(version: i64, agent: usize) -> LoadedPolicy {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        LoadedPolicy { version, agents: names.clone().into(), model: Box::new(OneHot(agent, names)) }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_forward_passes_and_swaps_wait_for_a_batch_boundary() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let opts = EngineOptions {
            min_prob: 0.1,
            max_batch_texts: 8,
            batch_wait: Duration::from_millis(5),
            queue: 64,
        };
        let engine = Arc::new(
            Engine::start(
                Box::new(FakeEmbedder(batches.clone())),
                policy(1, 0),
                None,
                mappo_config::Rng::new(1),
                opts,
                Arc::new(Metrics::new()),
            )
            .expect("start"),
        );
        let mut jobs = Vec::new();
        for i in 0..20 {
            let e = engine.clone();
            jobs.push(tokio::spawn(async move { e.route(vec!["x".repeat(i + 1)], i % 2 == 0).await }));
        }
        for (i, j) in jobs.into_iter().enumerate() {
            let r = j.await.expect("join").expect("routed");
            assert_eq!((r.version, r.items.len()), (1, 1));
            let it = &r.items[0];
            // Each answer carries its own text's embedding, whatever batch it was in.
            assert_eq!(it.embedding, vec![(i + 1) as f32, 1.0]);
            // Floored at 0.1: [0.8, 0.1, 0.1].
            assert_eq!(it.probabilities, vec![0.8, 0.1, 0.1]);
            if i % 2 == 0 {
                assert_eq!((it.action, it.propensity), (0, 1.0), "greedy");
            } else {
                assert_eq!(it.propensity, it.probabilities[it.action]);
            }
        }
        let sizes = batches.lock().expect("lock").clone();
        assert_eq!(sizes.iter().sum::<usize>(), 20);
        assert!(sizes.iter().all(|s| *s <= 8), "{sizes:?}");
        assert!(sizes.len() < 10, "20 concurrent requests must share forward passes: {sizes:?}");
        // A batch over the limit is refused by the handler, but a job alone is never split.
        let r = engine.route(vec!["y".into(); 3], true).await.expect("routed");
        assert_eq!(r.items.len(), 3);

        engine.swap(policy(2, 2));
        let r = engine.route(vec!["z".into()], true).await.expect("routed");
        assert_eq!((r.version, r.items[0].action), (2, 2));
        assert_eq!(engine.version(), 2);
        assert_eq!(&*engine.agents(), &["a", "b", "c"]);
        assert!(!engine.costs().has_costs() && engine.costs().version == 2);

        // The agents' costs follow the served version.
        let names: Vec<String> = ["a", "b", "x"].iter().map(|s| s.to_string()).collect();
        engine.swap(LoadedPolicy {
            version: 3,
            agents: names.clone().into(),
            model: Box::new(Priced(names)),
        });
        engine.route(vec!["w".into()], true).await.expect("routed");
        let c = engine.costs();
        assert_eq!((c.version, c.cost_input, c.escalates_to.as_deref()), (3, true, None));
        assert_eq!(c.agents, vec![("a".into(), 1.0), ("b".into(), 4.0), ("x".into(), 0.0)]);
        assert_eq!((c.cost("b"), c.cost("c"), c.max_cost()), (Some(4.0), None, 4.0));
    }

    /// Takes λ; its agents cost 1, 4 and a non-finite value (priced 0).
    struct Priced(Vec<String>);

    impl PolicyModel for Priced {
        fn agents(&self) -> &[String] {
            &self.0
        }
        fn probabilities(&self, _: &[f32], rows: usize) -> Result<Vec<Vec<f32>>, crate::ModelError> {
            Ok(vec![vec![1.0 / 3.0; 3]; rows])
        }
        fn cost_aware(&self) -> bool {
            true
        }
        fn costs(&self) -> Vec<f64> {
            vec![1.0, 4.0, f64::NAN]
        }
    }

    /// Uniform over the three agents (so the served choice is a real draw).
    struct Uniform(Vec<String>);

    impl PolicyModel for Uniform {
        fn agents(&self) -> &[String] {
            &self.0
        }
        fn probabilities(&self, _: &[f32], rows: usize) -> Result<Vec<Vec<f32>>, crate::ModelError> {
            Ok(vec![vec![1.0 / 3.0; 3]; rows])
        }
    }

    async fn served_and_shadow(shadow: Option<LoadedPolicy>, greedy: bool) -> Vec<Scored> {
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let served =
            LoadedPolicy { version: 1, agents: names.clone().into(), model: Box::new(Uniform(names)) };
        let opts = EngineOptions { min_prob: 0.1, max_batch_texts: 8, batch_wait: Duration::ZERO, queue: 64 };
        let engine = Engine::start(
            Box::new(FakeEmbedder(Arc::new(Mutex::new(Vec::new())))),
            served,
            shadow,
            mappo_config::Rng::new(3),
            opts,
            Arc::new(Metrics::new()),
        )
        .expect("start");
        let mut out = Vec::new();
        for _ in 0..40 {
            out.extend(engine.route(vec!["p".into(); 5], greedy).await.expect("routed").items);
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shadow_is_logged_beside_the_served_choice_and_never_changes_it() {
        let alone = served_and_shadow(None, false).await;
        let shadowed = served_and_shadow(Some(policy(7, 2)), false).await;
        assert_eq!(alone.len(), 200);
        assert!(alone.iter().all(|s| s.shadow.is_none() && s.cost_weight.is_none()));
        // The served choices are the same draws with or without a shadow.
        let acts = |v: &[Scored]| v.iter().map(|s| (s.action, s.propensity)).collect::<Vec<_>>();
        assert_eq!(acts(&alone), acts(&shadowed));
        assert!(alone.iter().any(|s| s.action != 2), "uniform draws must vary");
        // The shadow (all mass on agent 2, floored at 0.1: [0.1, 0.1, 0.8]) samples on its own.
        let mut on_two = 0;
        for s in &shadowed {
            let sh = s.shadow.expect("shadow choice");
            assert_eq!(sh.version, 7);
            let want = if sh.action == 2 { 0.8 } else { 0.1 };
            assert!((sh.propensity - want).abs() < 1e-6, "{sh:?}");
            on_two += usize::from(sh.action == 2);
        }
        assert!((130..=190).contains(&on_two), "agent 2 in {on_two} of 200 shadow draws (expect ~160)");
        // Greedy requests: the shadow's argmax with propensity 1.
        for s in served_and_shadow(Some(policy(7, 2)), true).await {
            let sh = s.shadow.expect("shadow choice");
            assert_eq!((sh.action, sh.propensity), (2, 1.0));
        }
        // A shadow over other agents is not scored (the server refuses it at start; a later swap
        // of the served policy may bring other agents).
        let names: Vec<String> = ["x", "y", "z"].iter().map(|s| s.to_string()).collect();
        let other =
            LoadedPolicy { version: 8, agents: names.clone().into(), model: Box::new(OneHot(0, names)) };
        assert!(served_and_shadow(Some(other), false).await.iter().all(|s| s.shadow.is_none()));
    }

    #[test]
    fn degenerate_rows_become_uniform() {
        assert_eq!(floor_probabilities(&[f32::NAN, 0.0], 0.01), vec![0.5, 0.5]);
        assert_eq!(floor_probabilities(&[0.0, 0.0, 0.0, 0.0], 0.01), vec![0.25; 4]);
    }

    proptest! {
        #[test]
        fn floored_rows_are_distributions_above_the_floor(
            p in proptest::collection::vec(0.0f32..1.0, 2..12),
            m in 0.0f64..0.08,
        ) {
            let q = floor_probabilities(&p, m);
            prop_assert_eq!(q.len(), p.len());
            let mf = m as f32;
            for x in &q {
                prop_assert!(*x >= mf, "{:?} under {}", q, m);
            }
            prop_assert!((q.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{:?}", q);
        }
    }
}
