//! Off-policy PPO from the decision log.
//!
//! The [`Learner`] starts from the newest published policy version (its checkpoint bytes), reads
//! decisions joined with their rewards in the log's stable order, and turns every
//! `train.batch_size` learnable events into one PPO update
//! ([`mappo_train::Trainer::update_from_logged`]: the logged propensity μ is the behaviour
//! probability, the ratio π/μ is clipped as PPO does, the critic is the baseline). Greedy and
//! forced decisions are consumed but never learned from; a decision whose reward did not arrive
//! within `learn.reward_wait_s` gets `learn.default_reward` or is skipped
//! (`learn.missing_reward`).
//!
//! Its state — the watermark of consumed events, the counters and the trainer's whole
//! checkpoint (weights, both optimizers' moments, the RNG) — is written to the log's
//! `learner_state` table in **one transaction** with each update, together with the
//! publication of a new version when there is one. A learner killed at any moment restarts
//! from the last committed update: it neither skips nor repeats an event, and ends
//! bit-identical to one that was not killed.

use candle_core::{Device, Tensor};
use mappo_config::{Config, MissingReward, Rng};
use mappo_env::{Env, EnvError, EnvSpec, ObservationSpec, Step};
use mappo_log::{
    DecisionKind, DecisionLog, EventQuery, LearnerState, PublishMeta, Published, Timestamp, Watermark,
};
use mappo_nn::{ActorCritic, Policy};
use mappo_train::{Checkpoint, EpisodeShape, LoggedBatch, RoutingPolicy, StepEnd, Trainer, UpdateMetrics};
use serde::Serialize;

use crate::LearnError;
pub use crate::events::{LearnEvent, Trajectory};

/// The learner name `mappo learn` uses (one row of `learner_state`).
pub const DEFAULT_LEARNER: &str = "default";

/// Events read from the log per query.
const PAGE: u32 = 1000;

/// What the learner did with the events it consumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EventCounts {
    /// Events consumed (every kind).
    pub consumed: u64,
    /// Learned from.
    pub learned: u64,
    /// Of those, with `learn.default_reward` (no reward in time).
    pub defaulted: u64,
    /// Greedy or forced: never learned from.
    pub not_sampled: u64,
    /// No reward in time and `missing_reward = "skip"`.
    pub skipped_missing: u64,
    /// Unusable for this policy (embedding width, number of agents, propensity).
    pub skipped_bad: u64,
    /// Later steps of episodes, consumed with their episode's first step.
    #[serde(default)]
    pub episode_steps: u64,
    /// Episodes learned (policies of episodes).
    #[serde(default)]
    pub episodes: u64,
}

impl EventCounts {
    /// Adds another batch's counts to these.
    pub fn add(&mut self, o: &EventCounts) {
        self.consumed += o.consumed;
        self.learned += o.learned;
        self.defaulted += o.defaulted;
        self.not_sampled += o.not_sampled;
        self.skipped_missing += o.skipped_missing;
        self.skipped_bad += o.skipped_bad;
        self.episode_steps += o.episode_steps;
        self.episodes += o.episodes;
    }
}

/// The events of one update, ready for the trainer.
#[derive(Debug, Clone)]
pub struct PreparedBatch {
    /// Embeddings, row-major `[rows, obs_dim]`.
    pub obs: Vec<f32>,
    /// Chosen agents.
    pub actions: Vec<u32>,
    /// Logged propensities.
    pub propensities: Vec<f32>,
    /// Rewards (defaults filled in).
    pub rewards: Vec<f32>,
    /// Empty for one-step decisions; for a policy of episodes, how each row stands in its
    /// episode (see [`mappo_train::StepEnd`]).
    pub ends: Vec<StepEnd>,
    /// Row-major observations after each cut (truncated) episode's last step.
    pub bootstrap: Vec<f32>,
    /// The last consumed event's position (`None` for a file).
    pub watermark: Option<Watermark>,
    /// What happened to the consumed events.
    pub counts: EventCounts,
}

/// Takes events from `events[start..]` until `batch` learnable ones are collected; returns the
/// batch and the index after the last consumed event. With fewer than `batch` learnable events
/// left, takes all of them (the caller decides with `learn.min_events` whether that is enough).
pub fn take_batch(
    events: &[LearnEvent],
    start: usize,
    batch: usize,
    layout: &ObservationSpec,
    num_agents: usize,
    cfg: &Config,
) -> (PreparedBatch, usize) {
    take_batch_of(events, start, batch, layout, EpisodeShape::OneStep, num_agents, cfg)
}

/// [`take_batch`] for a policy whose episodes have `shape`: for a policy of episodes
/// (conversations), an episode's first step brings the whole episode (its [`Trajectory`]), its
/// later steps are consumed with it, and a first step whose episode is not ready stops the
/// batch before it (nothing after it is consumed until it is).
pub fn take_batch_of(
    events: &[LearnEvent],
    start: usize,
    batch: usize,
    layout: &ObservationSpec,
    shape: EpisodeShape,
    num_agents: usize,
    cfg: &Config,
) -> (PreparedBatch, usize) {
    let mut b = PreparedBatch {
        obs: Vec::new(),
        actions: Vec::new(),
        propensities: Vec::new(),
        rewards: Vec::new(),
        ends: Vec::new(),
        bootstrap: Vec::new(),
        watermark: None,
        counts: EventCounts::default(),
    };
    let episodic = shape != EpisodeShape::OneStep;
    let mut i = start;
    while i < events.len() && b.actions.len() < batch {
        let e = &events[i];
        if episodic && let Some(ep) = &e.episode {
            if ep.step == 0 && !e.trajectory.as_ref().is_some_and(|t| t.ready) {
                break; // wait for this episode (and everything after it)
            }
            i += 1;
            b.counts.consumed += 1;
            b.watermark = e.watermark.or(b.watermark);
            match (&e.trajectory, ep.step) {
                (_, s) if s > 0 => b.counts.episode_steps += 1,
                (Some(t), _) => add_episode(&mut b, t, layout, shape, num_agents),
                (None, _) => b.counts.skipped_bad += 1,
            }
            continue;
        }
        i += 1;
        b.counts.consumed += 1;
        b.watermark = e.watermark.or(b.watermark);
        if e.kind != DecisionKind::Sampled {
            b.counts.not_sampled += 1;
            continue;
        }
        let input = layout.row(&e.embedding, shape.extras(&[], e.cost_weight, None));
        let Some(input) = input.filter(|x| x.iter().all(|v| v.is_finite())) else {
            b.counts.skipped_bad += 1;
            continue;
        };
        // A foreign log may have no probabilities (num_agents 0): the action index is checked.
        if (e.num_agents != 0 && e.num_agents != num_agents)
            || e.action as usize >= num_agents
            || !(e.propensity.is_finite() && e.propensity > 0.0 && e.propensity <= 1.0)
        {
            b.counts.skipped_bad += 1;
            continue;
        }
        let reward = match (e.reward, cfg.learn.missing_reward) {
            (Some(r), _) if r.is_finite() => r,
            (_, MissingReward::Default) => {
                b.counts.defaulted += 1;
                cfg.learn.default_reward
            }
            (_, MissingReward::Skip) => {
                b.counts.skipped_missing += 1;
                continue;
            }
        };
        b.counts.learned += 1;
        b.obs.extend_from_slice(&input);
        b.actions.push(e.action);
        b.propensities.push(e.propensity);
        b.rewards.push(reward as f32);
        if episodic {
            b.ends.push(StepEnd::Done);
        }
    }
    (b, i)
}

/// Adds a ready episode's steps to `b` (laid out by [`crate::episode_ope::episode_inputs`], as
/// OPE weighs them), or counts why it cannot be learned.
fn add_episode(
    b: &mut PreparedBatch,
    t: &Trajectory,
    layout: &ObservationSpec,
    shape: EpisodeShape,
    num_agents: usize,
) {
    use crate::episode_ope::{Unusable, episode_inputs};
    let ep = match episode_inputs(&t.steps, t.end_reward, layout, shape, num_agents) {
        Ok(ep) => ep,
        Err(Unusable::NotSampled) => {
            b.counts.not_sampled += 1;
            return;
        }
        Err(_) => {
            b.counts.skipped_bad += 1;
            return;
        }
    };
    let Some(last) = t.steps.last() else { return };
    if !t.ended {
        // Cut after its last logged step: bootstrap from the state that step leads to.
        let actions: Vec<u32> = t.steps.iter().map(|s| s.action).collect();
        match layout.row(&last.embedding, shape.extras(&actions, last.cost_weight, None)) {
            Some(r) => b.bootstrap.extend(r),
            None => {
                b.counts.skipped_bad += 1;
                return;
            }
        }
    }
    let n = ep.len();
    b.obs.extend_from_slice(&ep.contexts);
    b.actions.extend(ep.actions.iter().map(|&a| a as u32));
    b.propensities.extend(ep.propensities.iter().map(|&p| p as f32));
    b.rewards.extend(ep.rewards.iter().map(|&r| r as f32));
    b.ends.extend((0..n).map(|k| match (k + 1 == n, t.ended) {
        (false, _) => StepEnd::Continues,
        (true, true) => StepEnd::Done,
        (true, false) => StepEnd::Truncated,
    }));
    b.counts.learned += n as u64;
    b.counts.episodes += 1;
}

/// The environment of a trainer that only learns from logs: it carries the published
/// checkpoint's environment kind and state through unchanged and refuses to be stepped.
#[derive(Debug, Clone)]
pub struct LoggedEnv {
    kind: String,
    state: Vec<u64>,
    spec: EnvSpec,
    device: Device,
}

impl Env for LoggedEnv {
    fn kind(&self) -> &str {
        &self.kind
    }
    fn spec(&self) -> EnvSpec {
        self.spec
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn reset(&mut self, _rng: &mut Rng) -> Result<Tensor, EnvError> {
        Err(EnvError::Setup("a learner from logs has no environment to collect from".into()))
    }
    fn step(&mut self, _actions: &[u32], _rng: &mut Rng) -> Result<Step, EnvError> {
        Err(EnvError::Setup("a learner from logs has no environment to collect from".into()))
    }
    fn state(&self) -> Vec<u64> {
        self.state.clone()
    }
    fn restore_state(&mut self, state: &[u64]) -> Result<(), EnvError> {
        self.state = state.to_vec();
        Ok(())
    }
}

/// The trainer of a learner.
pub type LogTrainer = Trainer<LoggedEnv, ActorCritic>;

/// A trainer continuing `ckpt`: its weights, and its optimizer moments, RNG and update count
/// when it has them (a checkpoint written by training or by a learner); otherwise fresh
/// optimizers and an RNG from `train.seed`. The model shape, agents and environment come from
/// the checkpoint; `[ppo]`, `[learn]` and `train.batch_size`/`train.seed` from `settings`.
pub fn trainer_from_checkpoint(
    ckpt: &Checkpoint,
    settings: &Config,
    device: &Device,
) -> Result<LogTrainer, LearnError> {
    let policy = RoutingPolicy::from_checkpoint(ckpt, device)?;
    let obs_dim = policy.spec().width();
    let policy = policy.into_network();
    let mut cfg = ckpt.config.clone();
    cfg.ppo = settings.ppo.clone();
    cfg.learn = settings.learn.clone();
    cfg.train.batch_size = settings.train.batch_size;
    cfg.train.seed = settings.train.seed;
    if EpisodeShape::of(&cfg) == EpisodeShape::OneStep {
        cfg.train.rollout_len = 1;
    }
    let env = LoggedEnv {
        kind: ckpt.env_kind.clone(),
        state: ckpt.env_state.clone(),
        spec: EnvSpec { obs_dim, num_actions: policy.num_actions(), num_envs: cfg.train.batch_size },
        device: device.clone(),
    };
    let mut trainer = Trainer::from_config(cfg, env, policy)?;
    if ckpt.has_optimizer_state() {
        trainer.restore(ckpt)?;
    }
    Ok(trainer)
}

/// One off-policy PPO update of `trainer` from a prepared batch (see
/// [`mappo_train::Trainer::update_from_logged`]), `learned` events after the learner's start:
/// the learning rates follow `learn.lr_decay_events` / `learn.lr_floor` of the trainer's config.
pub fn update_trainer(
    trainer: &mut LogTrainer,
    b: &PreparedBatch,
    learned: u64,
) -> Result<UpdateMetrics, LearnError> {
    let lr_scale = trainer.config().learn.lr_scale(learned);
    let n = b.actions.len();
    let obs_dim = b.obs.len().checked_div(n).unwrap_or(0);
    let obs =
        Tensor::from_slice(&b.obs, (n, obs_dim), trainer.device()).map_err(mappo_train::TrainError::from)?;
    let cut = b.bootstrap.len().checked_div(obs_dim).unwrap_or(0);
    let bootstrap_obs = (cut > 0)
        .then(|| Tensor::from_slice(&b.bootstrap, (cut, obs_dim), trainer.device()))
        .transpose()
        .map_err(mappo_train::TrainError::from)?;
    let logged = LoggedBatch {
        obs,
        actions: b.actions.clone(),
        propensities: b.propensities.clone(),
        rewards: b.rewards.clone(),
        ends: b.ends.clone(),
        bootstrap_obs,
        lr_scale,
    };
    Ok(trainer.update_from_logged(&logged)?)
}

/// One update done in memory, not yet committed ([`Learner::commit`]).
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    /// The update's number.
    pub update: u64,
    /// What it measured.
    pub metrics: UpdateMetrics,
    /// Events consumed by the uncommitted updates.
    pub counts: EventCounts,
}

/// What one round ([`Learner::round`]) did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RoundReport {
    /// Updates done (and committed).
    pub updates: u64,
    /// The learner's update count after the round.
    pub total_updates: u64,
    /// Events of the round.
    pub counts: EventCounts,
    /// The version published at the end of the round, if any.
    pub published: Option<i64>,
    /// Metrics of the round's last update.
    pub last: Option<UpdateMetrics>,
    /// The version this learner adopted at the start of the round (a newer publication by
    /// someone else, or its starting point).
    pub adopted: Option<i64>,
}

/// The decision to publish a candidate or not: the promotion gate's seam.
pub trait PublishGate {
    /// Whether `bytes` (a checkpoint after `candidate`) should become the next policy version.
    fn should_publish(&mut self, candidate: &Candidate, bytes: &[u8]) -> bool;
}

/// Publishes every candidate (what `mappo learn --publish` does until the promotion gate is
/// merged).
#[derive(Debug, Clone, Copy, Default)]
pub struct AlwaysPublish;

impl PublishGate for AlwaysPublish {
    fn should_publish(&mut self, _candidate: &Candidate, _bytes: &[u8]) -> bool {
        true
    }
}

/// The learner over a decision log. See the module documentation.
pub struct Learner {
    log: DecisionLog,
    name: String,
    settings: Config,
    device: Device,
    trainer: Option<LogTrainer>,
    /// The committed state (without its checkpoint bytes once loaded).
    saved: Option<LearnerState>,
    /// Updates and events since the last commit.
    pending: Option<(Option<Watermark>, EventCounts)>,
    base_version: Option<i64>,
    /// The layout of the policy's input (set when a checkpoint is loaded).
    layout: Option<ObservationSpec>,
    /// What the policy's episodes look like (set with `layout`).
    shape: EpisodeShape,
}

impl std::fmt::Debug for Learner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Learner").field("name", &self.name).field("db", &self.log.db()).finish()
    }
}

impl Learner {
    /// A learner named `name` over `log` with `[ppo]`, `[learn]` and `train.batch_size` /
    /// `train.seed` from `settings`. Nothing is read until the first round.
    pub fn new(log: DecisionLog, name: impl Into<String>, settings: Config) -> Result<Self, LearnError> {
        settings.validate().map_err(|e| LearnError::BadLog(e.to_string()))?;
        Ok(Learner {
            log,
            name: name.into(),
            settings,
            device: Device::Cpu,
            trainer: None,
            saved: None,
            pending: None,
            base_version: None,
            layout: None,
            shape: EpisodeShape::OneStep,
        })
    }

    /// The committed state, `None` before the first commit (or before the first round).
    pub fn saved(&self) -> Option<&LearnerState> {
        self.saved.as_ref()
    }

    /// The current trainer state as checkpoint bytes (`None` before the first round).
    pub fn checkpoint_bytes(&self) -> Result<Option<Vec<u8>>, LearnError> {
        match &self.trainer {
            Some(t) => Ok(Some(t.checkpoint()?.to_bytes()?)),
            None => Ok(None),
        }
    }

    /// Forgets everything in memory: the next round starts from the committed state.
    pub fn reset(&mut self) {
        self.trainer = None;
        self.saved = None;
        self.pending = None;
        self.base_version = None;
    }

    /// Loads the committed state (or the newest published version) if not loaded, and adopts a
    /// version published by someone else since. Returns the version adopted, if any.
    async fn refresh(&mut self) -> Result<Option<i64>, LearnError> {
        let latest = self.log.latest_policy_version().await?;
        if self.trainer.is_none()
            && let Some(mut st) = self.log.learner_state(&self.name).await?
        {
            let ckpt = Checkpoint::from_bytes(&st.checkpoint, &self.device)?;
            self.trainer = Some(trainer_from_checkpoint(&ckpt, &self.settings, &self.device)?);
            self.layout = Some(ckpt.observation_spec()?);
            self.shape = EpisodeShape::of(&ckpt.config);
            self.base_version = st.base_version;
            st.checkpoint = Vec::new();
            tracing::info!(
                learner = %self.name,
                updates = st.updates,
                events = st.events,
                "continuing from the saved learner state"
            );
            self.saved = Some(st);
        }
        let adopt = match (self.trainer.is_some(), latest, self.base_version) {
            (false, None, _) => {
                return Err(LearnError::BadLog(format!(
                    "{} has no published policy to start from: start `mappo serve --config FILE` (it \
                     publishes a fresh policy) or `mappo policy publish --checkpoint FILE` first",
                    self.log.db()
                )));
            }
            (false, Some(v), _) => Some(v),
            (true, Some(v), Some(base)) if v > base => Some(v),
            (true, Some(v), None) => Some(v),
            _ => None,
        };
        if let Some(v) = adopt {
            let p = self
                .log
                .policy(v)
                .await?
                .ok_or_else(|| LearnError::BadLog(format!("policy version {v} disappeared")))?;
            let ckpt = Checkpoint::from_bytes(&p.checkpoint, &self.device)?;
            let mut trainer = trainer_from_checkpoint(&ckpt, &self.settings, &self.device)?;
            if let Some(old) = &self.trainer
                && !ckpt.has_optimizer_state()
            {
                // A weights-only version: keep counting updates from where this learner was.
                let mut c = trainer.checkpoint()?;
                c.update = old.update_count();
                trainer.restore(&c)?;
            }
            if self.trainer.is_some() {
                tracing::warn!(learner = %self.name, version = v, "a newer version was published by someone else: continuing from it");
            } else {
                tracing::info!(learner = %self.name, version = v, "starting from the published version");
            }
            self.trainer = Some(trainer);
            self.layout = Some(ckpt.observation_spec()?);
            self.shape = EpisodeShape::of(&ckpt.config);
            self.base_version = Some(v);
        }
        Ok(adopt)
    }

    /// Reads the events ready now (decided before `now − reward_wait_s`, after the watermark)
    /// and cuts them into at most `max_batches` batches of `train.batch_size` learnable events;
    /// a last, smaller batch only when it holds at least `learn.min_events`.
    pub async fn ready_batches(
        &mut self,
        now: Timestamp,
        max_batches: usize,
    ) -> Result<Vec<PreparedBatch>, LearnError> {
        let trainer =
            self.trainer.as_ref().ok_or_else(|| LearnError::BadLog("the learner is not loaded".into()))?;
        let agents = trainer.policy().num_actions();
        let layout =
            self.layout.clone().ok_or_else(|| LearnError::BadLog("the learner is not loaded".into()))?;
        let l = &self.settings.learn;
        let before = Timestamp(now.0.saturating_sub((l.reward_wait_s * 1e6) as i64));
        let batch = self.settings.train.batch_size;
        let mut after =
            self.pending.as_ref().and_then(|p| p.0).or(self.saved.as_ref().and_then(|s| s.watermark));
        let mut events: Vec<LearnEvent> = Vec::new();
        let mut out = Vec::new();
        let mut start = 0;
        let mut exhausted = false;
        while out.len() < max_batches {
            // Enough events in memory for a whole batch, or all there are.
            while !exhausted && learnable_from(&events[start..]) < batch {
                let page =
                    self.log.joined_events(&EventQuery { after, before: Some(before), limit: PAGE }).await?;
                exhausted = page.len() < PAGE as usize;
                if let Some(last) = page.last() {
                    after = Some(last.watermark());
                }
                for e in &page {
                    let mut ev = LearnEvent::from_joined(e, l.reward_wait_s);
                    if self.shape != EpisodeShape::OneStep
                        && let Some(ep) = e.decision.episode.as_ref().filter(|ep| ep.step == 0)
                    {
                        let steps = self.log.episode_events(&ep.id).await?;
                        ev = ev.with_trajectory(&steps, l.reward_wait_s, l.episode_timeout_s, now);
                    }
                    events.push(ev);
                }
            }
            let (b, next) = take_batch_of(&events, start, batch, &layout, self.shape, agents, &self.settings);
            if b.actions.len() < batch && (b.actions.len() < l.min_events || b.actions.is_empty()) {
                break;
            }
            start = next;
            out.push(b);
        }
        Ok(out)
    }

    /// One PPO update from a prepared batch, in memory; [`Learner::commit`] makes it durable.
    pub fn update(&mut self, b: &PreparedBatch) -> Result<Candidate, LearnError> {
        let trainer =
            self.trainer.as_mut().ok_or_else(|| LearnError::BadLog("the learner is not loaded".into()))?;
        let learned = self.saved.as_ref().map_or(0, |s| s.learned.max(0) as u64)
            + self.pending.as_ref().map_or(0, |p| p.1.learned);
        let metrics = update_trainer(trainer, b, learned)?;
        let pending = self.pending.get_or_insert((None, EventCounts::default()));
        pending.0 = b.watermark.or(pending.0);
        pending.1.add(&b.counts);
        Ok(Candidate { update: metrics.update, metrics, counts: pending.1 })
    }

    /// Commits the learner's state (the watermark after the last update, the counters, the
    /// trainer's checkpoint) in one transaction, with the publication of the checkpoint as the
    /// next policy version when `publish` holds its metadata. On an error the in-memory state is
    /// dropped: the next round reloads what was committed.
    pub async fn commit(
        &mut self,
        publish: Option<&PublishMeta>,
        meta: serde_json::Value,
    ) -> Result<Option<Published>, LearnError> {
        let result = self.commit_inner(publish, meta).await;
        if result.is_err() {
            self.reset();
        }
        result
    }

    async fn commit_inner(
        &mut self,
        publish: Option<&PublishMeta>,
        meta: serde_json::Value,
    ) -> Result<Option<Published>, LearnError> {
        let trainer =
            self.trainer.as_ref().ok_or_else(|| LearnError::BadLog("the learner is not loaded".into()))?;
        let bytes = trainer.checkpoint()?.to_bytes()?;
        let (wm, counts) = self.pending.take().unwrap_or((None, EventCounts::default()));
        let prev = self.saved.as_ref();
        let state = LearnerState {
            name: self.name.clone(),
            watermark: wm.or(prev.and_then(|s| s.watermark)),
            updates: trainer.update_count() as i64,
            events: prev.map_or(0, |s| s.events) + counts.consumed as i64,
            learned: prev.map_or(0, |s| s.learned) + counts.learned as i64,
            base_version: self.base_version,
            checkpoint: bytes,
            meta,
            updated: Timestamp::now(),
        };
        let expected = prev.map(|s| s.updates);
        let published = self
            .log
            .save_learner_state(&state, expected, publish.map(|m| (state.checkpoint.as_slice(), m)))
            .await?;
        if let Some(p) = published {
            self.base_version = Some(p.version);
        }
        self.saved = Some(LearnerState { checkpoint: Vec::new(), base_version: self.base_version, ..state });
        Ok(published)
    }

    /// One round: loads or refreshes the learner, runs one committed update per ready batch (at
    /// most `max_updates`), and — when `gate` is given and agrees — publishes the last one's
    /// checkpoint in the same transaction as its state.
    pub async fn round(
        &mut self,
        now: Timestamp,
        max_updates: usize,
        mut gate: Option<&mut dyn PublishGate>,
    ) -> Result<RoundReport, LearnError> {
        let adopted = match self.refresh().await {
            Ok(v) => v,
            Err(e) => {
                self.reset();
                return Err(e);
            }
        };
        let batches = self.ready_batches(now, max_updates.max(1)).await?;
        let mut report = RoundReport { adopted, ..RoundReport::default() };
        let n = batches.len();
        for (i, b) in batches.iter().enumerate() {
            let c = self.update(b)?;
            let meta = serde_json::to_value(&c.metrics).unwrap_or_default();
            let mut publish = None;
            if i + 1 == n
                && let Some(g) = gate.as_deref_mut()
            {
                let bytes = self.checkpoint_bytes()?.unwrap_or_default();
                if g.should_publish(&c, &bytes) {
                    publish = Some(PublishMeta {
                        source: "mappo learn".into(),
                        note: None,
                        meta: serde_json::json!({
                            "learner": self.name,
                            "update": c.update,
                            "mean_reward": c.metrics.mean_reward,
                        }),
                    });
                }
            }
            let published = self.commit(publish.as_ref(), meta).await?;
            report.counts.add(&b.counts);
            report.updates += 1;
            report.last = Some(c.metrics);
            if let Some(p) = published {
                report.published = Some(p.version);
            }
        }
        report.total_updates = self.trainer.as_ref().map_or(0, |t| t.update_count());
        Ok(report)
    }
}

/// Learnable-looking events (sampled ones) in a slice: enough to decide whether to read more.
fn learnable_from(events: &[LearnEvent]) -> usize {
    events.iter().filter(|e| e.kind == DecisionKind::Sampled).count()
}
