//! The PPO trainer: batched collection, GAE, clipped-surrogate epochs with
//! separate actor and critic Adam optimizers, global grad-norm clipping,
//! checkpoint state.

use candle_core::{DType, Device, Tensor};
use mappo_buffer::{Batch, Gae, Rollout, Transition};
use mappo_config::{Config, PpoConfig, Rng, TrainConfig};
use mappo_env::{Env, ObservationSpec};
use mappo_nn::{Adam, AdamSettings, Policy, global_grad_norm, sample_actions};
use serde::Serialize;

use crate::loss::{LossStats, ppo_loss_head};
use crate::value_norm::{self, ValueNorm};
use crate::{Checkpoint, TrainError};

/// What one update measured (the fields of a `metrics.jsonl` line, with
/// the wall-clock ones added by the run loop).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UpdateMetrics {
    /// Updates completed, this one included.
    pub update: u64,
    /// Mean reward of the collected batch (per step).
    pub mean_reward: f64,
    /// Mean (undiscounted) return of the episodes that ended in the collected batch (for
    /// one-step episodes the mean reward); NaN (`null`) when none ended.
    pub mean_return: f64,
    /// Episodes that ended in the collected batch.
    pub episodes: usize,
    /// Mean policy entropy (last minibatch of the last epoch).
    pub entropy: f64,
    /// Clipped-surrogate policy loss (same minibatch).
    pub policy_loss: f64,
    /// Value loss, mean squared error (same minibatch).
    pub value_loss: f64,
    /// k3 estimate of KL(old ‖ new) (same minibatch).
    pub approx_kl: f64,
    /// Share of samples whose ratio was clipped (same minibatch).
    pub clipfrac: f64,
    /// 1 − Var(returns − values) / Var(returns) over the batch.
    pub explained_variance: f64,
    /// Global gradient norm before clipping (last minibatch).
    pub grad_norm: f64,
    /// Actor learning rate used.
    pub lr_actor: f64,
    /// Critic learning rate used.
    pub lr_critic: f64,
    /// Epochs run (fewer than configured when target_kl stopped early).
    pub epochs: usize,
}

/// Logged one-step (bandit) decisions for an off-policy update
/// ([`Trainer::update_from_logged`]): what a decision log holds for each sampled decision.
#[derive(Debug, Clone)]
pub struct LoggedBatch {
    /// Observations `[n, obs_dim]` (the logged embeddings).
    pub obs: Tensor,
    /// The action taken for each row.
    pub actions: Vec<u32>,
    /// μ(action | obs): the probability the behaviour (logging) policy took it with, in (0, 1].
    pub propensities: Vec<f32>,
    /// The reward each row earned.
    pub rewards: Vec<f32>,
    /// Empty: every row is a one-step episode (a bandit decision). Otherwise one entry per row:
    /// the rows are the steps of whole episodes, in step order, one episode after another, and
    /// each episode's last step is [`StepEnd::Done`] or [`StepEnd::Truncated`].
    pub ends: Vec<StepEnd>,
    /// One observation row per [`StepEnd::Truncated`] step, in order: the state its episode was
    /// cut before, whose value is bootstrapped.
    pub bootstrap_obs: Option<Tensor>,
    /// The factor on `ppo.lr_actor`/`ppo.lr_critic` for this update (1: as configured; a
    /// learner's `learn.lr_decay_events` schedule).
    pub lr_scale: f64,
}

/// How a logged step stands in its episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepEnd {
    /// More steps of the episode follow.
    Continues,
    /// The episode's last step: nothing is bootstrapped after it.
    Done,
    /// The episode was cut after this step (it had not ended): the value of the state after it
    /// is bootstrapped from the critic.
    Truncated,
}

impl LoggedBatch {
    /// Number of decisions.
    pub fn len(&self) -> usize {
        self.actions.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

/// The few training settings the [`Trainer`] itself uses (the rest of
/// `[train]` belongs to the run loop, see [`crate::RunOptions`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainSettings {
    /// PPO updates in the whole run (the learning rates anneal to 0 there
    /// when `ppo.anneal_lr`). Default 2000.
    pub total_updates: u64,
    /// Steps per environment row collected per update. Default 1.
    pub rollout_len: usize,
    /// Seed of every random draw of the trainer (action sampling, minibatch
    /// shuffles, the environment's draws). Default 42.
    pub seed: u64,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self::from(&TrainConfig::default())
    }
}

impl From<&TrainConfig> for TrainSettings {
    fn from(t: &TrainConfig) -> Self {
        Self { total_updates: t.total_updates, rollout_len: t.rollout_len, seed: t.seed }
    }
}

/// PPO over any batched [`Env`] and any [`Policy`].
pub struct Trainer<E: Env, P: Policy> {
    /// The resolved config recorded in checkpoints (`ppo` and the settings' fields are the trainer's).
    cfg: Config,
    env: E,
    policy: P,
    actor: Adam,
    critic: Adam,
    rng: Rng,
    update: u64,
    device: Device,
    rollout: Rollout,
    /// Sum and count of the returns of the episodes that ended in the last collection.
    episode_returns: (f64, usize),
    /// Running return statistics when `ppo.value_norm` is on: the critic's outputs are in
    /// their standardised scale.
    value_norm: Option<ValueNorm>,
}

impl<E: Env, P: Policy> std::fmt::Debug for Trainer<E, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer").field("update", &self.update).field("device", &self.device).finish()
    }
}

impl<E: Env, P: Policy> Trainer<E, P> {
    /// A trainer at update 0 with PPO settings `ppo` (see `mappo config` for
    /// their defaults), after checking them. The trainer's RNG (action
    /// sampling, prompts, reward noise, minibatch shuffles) is derived from
    /// `settings.seed`.
    pub fn new(ppo: PpoConfig, settings: TrainSettings, env: E, policy: P) -> Result<Self, TrainError> {
        let mut cfg = Config::default();
        let spec = env.spec();
        cfg.ppo = ppo;
        cfg.train.total_updates = settings.total_updates;
        cfg.train.rollout_len = settings.rollout_len;
        cfg.train.seed = settings.seed;
        cfg.train.batch_size = spec.num_envs;
        cfg.env.num_agents = spec.num_actions;
        cfg.env.embed_dim = spec.obs_dim;
        Self::from_config(cfg, env, policy)
    }

    /// A trainer at update 0 for a whole resolved config (what `mappo train`
    /// uses): `ppo` and `train` are taken from it, and all of it is recorded in
    /// checkpoints so that `mappo eval` and `--resume` can rebuild the run.
    pub fn from_config(cfg: Config, env: E, policy: P) -> Result<Self, TrainError> {
        cfg.validate()?;
        let spec = env.spec();
        if spec.num_envs == 0 || spec.obs_dim == 0 {
            return Err(TrainError::Setup(format!(
                "the environment has {} rows of width {}: both must be at least 1",
                spec.num_envs, spec.obs_dim
            )));
        }
        if spec.num_actions != policy.num_actions() {
            return Err(TrainError::Setup(format!(
                "the environment has {} actions but the policy {}",
                spec.num_actions,
                policy.num_actions()
            )));
        }
        let device = env.device().clone();
        let adam = |lr| AdamSettings { lr, eps: cfg.ppo.adam_eps, ..AdamSettings::default() };
        let actor = Adam::new(policy.actor_vars(), adam(cfg.ppo.lr_actor))?;
        let critic = Adam::new(policy.critic_vars(), adam(cfg.ppo.lr_critic))?;
        let rng = Rng::derived(cfg.train.seed, "trainer");
        let rollout = Rollout::new(spec.num_envs);
        let value_norm = cfg.ppo.value_norm.then(ValueNorm::default);
        Ok(Self {
            cfg,
            env,
            policy,
            actor,
            critic,
            rng,
            update: 0,
            device,
            rollout,
            episode_returns: (0.0, 0),
            value_norm,
        })
    }

    /// Updates completed.
    pub fn update_count(&self) -> u64 {
        self.update
    }

    /// The policy being trained.
    pub fn policy(&self) -> &P {
        &self.policy
    }

    /// The run's config.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The device everything runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// One PPO update: collect a batch, compute advantages, run the epochs.
    pub fn step(&mut self) -> Result<UpdateMetrics, TrainError> {
        let p = self.cfg.ppo.clone();
        if p.anneal_lr {
            let frac = 1.0 - self.update as f64 / self.cfg.train.total_updates as f64;
            self.actor.set_lr(frac * p.lr_actor);
            self.critic.set_lr(frac * p.lr_critic);
        }
        let last_values = self.collect()?;
        let (gae, explained_variance) = self.advantages(&self.rollout, &last_values)?;
        let rewards = self.rollout.rewards();
        let mean_reward = rewards.iter().map(|&r| f64::from(r)).sum::<f64>() / rewards.len().max(1) as f64;
        let targets = self.value_targets(gae);
        let (stats, grad_norm, epochs) = self.optimise(&targets)?;
        self.finish(stats, grad_norm, epochs, mean_reward, explained_variance)
    }

    /// One off-policy PPO update from logged bandit decisions instead of collected ones: the
    /// logged propensity μ plays the old policy, so the ratio is π(a|x)/μ(a|x), clipped as in
    /// [`Trainer::step`]; the critic is the baseline (advantage `r − V(x)`, every row a one-step
    /// episode); then the same `ppo.epochs × ppo.minibatches` of the same loss, gradient
    /// clipping and Adam steps. The learning rates are `ppo.lr_actor`/`ppo.lr_critic` times the
    /// batch's `lr_scale` (a learner from logs has no last update to anneal towards: its
    /// schedule is its own, `learn.lr_decay_events`). The environment is not
    /// touched.
    pub fn update_from_logged(&mut self, batch: &LoggedBatch) -> Result<UpdateMetrics, TrainError> {
        let n = batch.len();
        if n == 0 {
            return Err(TrainError::Setup("an off-policy update needs at least one logged decision".into()));
        }
        let a = self.policy.num_actions();
        if batch.propensities.len() != n || batch.rewards.len() != n || batch.obs.dims().first() != Some(&n) {
            return Err(TrainError::Setup(format!(
                "a logged batch of {n} actions has {} propensities, {} rewards and {:?} observation rows",
                batch.propensities.len(),
                batch.rewards.len(),
                batch.obs.dims().first()
            )));
        }
        if let Some(i) = batch.actions.iter().position(|&x| x as usize >= a) {
            return Err(TrainError::Setup(format!(
                "logged action {} is out of range for {a} agents",
                batch.actions[i]
            )));
        }
        if let Some(p) = batch.propensities.iter().find(|p| !(p.is_finite() && **p > 0.0 && **p <= 1.0)) {
            return Err(TrainError::Setup(format!("logged propensity {p} is not in (0, 1]")));
        }
        if let Some(r) = batch.rewards.iter().find(|r| !r.is_finite()) {
            return Err(TrainError::Setup(format!("logged reward {r} is not finite")));
        }
        if !batch.ends.is_empty() && (batch.ends.len() != n || batch.ends.last() == Some(&StepEnd::Continues))
        {
            return Err(TrainError::Setup(format!(
                "{} step ends for {n} logged steps, the last {:?}: every episode must end with Done or \
                 Truncated",
                batch.ends.len(),
                batch.ends.last()
            )));
        }
        let p = self.cfg.ppo.clone();
        if !(batch.lr_scale.is_finite() && batch.lr_scale >= 0.0) {
            return Err(TrainError::Setup(format!(
                "learning-rate scale {} is not a number >= 0",
                batch.lr_scale
            )));
        }
        self.actor.set_lr(p.lr_actor * batch.lr_scale);
        self.critic.set_lr(p.lr_critic * batch.lr_scale);
        let obs = batch.obs.to_device(&self.device)?;
        let out = self.policy.forward(&obs)?;
        let values = out.values.detach().to_vec1::<f32>()?;
        let log_mu: Vec<f32> = batch.propensities.iter().map(|m| m.ln()).collect();
        // Decoupled PPO: the ratio against π_prox (this policy now), the advantage weighted by
        // min(π_prox/μ, c). Without it the logged μ is the old policy.
        let decoupled = (p.decoupled_max_weight > 0.0).then(|| -> Result<_, TrainError> {
            let logits = out.logits.detach().flatten_all()?.to_vec1::<f32>()?;
            let a = logits.len() / n;
            let mut row = vec![0f64; a];
            let mut log_prox = Vec::with_capacity(n);
            let mut weights = Vec::with_capacity(n);
            for (i, (&act, &lm)) in batch.actions.iter().zip(&log_mu).enumerate() {
                mappo_nn::log_softmax_row(&logits[i * a..(i + 1) * a], &mut row);
                let lp = row[act as usize];
                log_prox.push(lp as f32);
                weights.push((lp - f64::from(lm)).exp().min(p.decoupled_max_weight) as f32);
            }
            Ok((log_prox, weights))
        });
        let decoupled = decoupled.transpose()?;
        let old_log_probs = decoupled.as_ref().map_or(&log_mu, |(lp, _)| lp);
        let logged = if batch.ends.is_empty() {
            // One-step episodes: one batched transition.
            let mut logged = Rollout::new(n);
            logged.push(Transition {
                obs: &obs,
                actions: &batch.actions,
                log_probs: old_log_probs,
                values: &values,
                rewards: &batch.rewards,
                done: &vec![true; n],
                truncated: &vec![false; n],
                truncated_values: &[],
            })?;
            self.episode_returns = (batch.rewards.iter().map(|&r| f64::from(r)).sum(), n);
            logged
        } else {
            self.logged_episodes(batch, &obs, &values, old_log_probs)?
        };
        let (gae, explained_variance) = self.advantages(&logged, &[])?;
        let mean_reward = batch.rewards.iter().map(|&r| f64::from(r)).sum::<f64>() / n as f64;
        let mut targets = self.value_targets(gae);
        if let Some((_, w)) = &decoupled {
            // The weight scales the advantage only (the critic's targets stay as they are):
            // w·min(r·A, clip(r)·A) = min(r·wA, clip(r)·wA) for w ≥ 0.
            targets.advantages.iter_mut().zip(w).for_each(|(a, w)| *a *= w);
        }
        let collected = std::mem::replace(&mut self.rollout, logged);
        let result = self.optimise(&targets);
        self.rollout = collected;
        let (stats, grad_norm, epochs) = result?;
        self.finish(stats, grad_norm, epochs, mean_reward, explained_variance)
    }

    /// Logged episodes as one environment's consecutive steps, so that GAE runs over each
    /// episode's steps and restarts at its end (bootstrapping a truncated one).
    fn logged_episodes(
        &mut self,
        batch: &LoggedBatch,
        obs: &Tensor,
        values: &[f32],
        old_log_probs: &[f32],
    ) -> Result<Rollout, TrainError> {
        let truncated = batch.ends.iter().filter(|&&e| e == StepEnd::Truncated).count();
        let boot = match &batch.bootstrap_obs {
            Some(b) => self.policy.forward(&b.to_device(&self.device)?)?.values.detach().to_vec1::<f32>()?,
            None => Vec::new(),
        };
        if boot.len() != truncated {
            return Err(TrainError::Setup(format!(
                "{truncated} truncated episodes but {} bootstrap observations",
                boot.len()
            )));
        }
        let mut boot = boot.into_iter();
        let mut logged = Rollout::new(1);
        let (mut total, mut episodes) = (0f64, 0usize);
        for (i, end) in batch.ends.iter().enumerate() {
            let cut = *end == StepEnd::Truncated;
            let tv = if cut { boot.next().unwrap_or(0.0) } else { 0.0 };
            logged.push(Transition {
                obs: &obs.narrow(0, i, 1)?,
                actions: &batch.actions[i..=i],
                log_probs: &old_log_probs[i..=i],
                values: &values[i..=i],
                rewards: &batch.rewards[i..=i],
                done: &[*end == StepEnd::Done],
                truncated: &[cut],
                truncated_values: &[tv],
            })?;
            total += f64::from(batch.rewards[i]);
            episodes += usize::from(*end != StepEnd::Continues);
        }
        self.episode_returns = (total, episodes);
        Ok(logged)
    }

    /// GAE over `rollout` (with `ppo.gamma`/`ppo.gae_lambda`) in the reward's scale, and the
    /// critic's explained variance of the returns.
    fn advantages(&self, rollout: &Rollout, last_values: &[f32]) -> Result<(Gae, f64), TrainError> {
        let (gamma, lambda) = (self.cfg.ppo.gamma as f32, self.cfg.ppo.gae_lambda as f32);
        Ok(match self.value_norm {
            None => {
                let gae = rollout.gae(last_values, gamma, lambda)?;
                let ev = explained_variance(rollout.values(), &gae.returns);
                (gae, ev)
            }
            Some(vn) => {
                let gae = rollout.gae_with(last_values, gamma, lambda, |v| vn.denormalise(v))?;
                let values: Vec<f32> = rollout.values().iter().map(|&v| vn.denormalise(v)).collect();
                let ev = explained_variance(&values, &gae.returns);
                (gae, ev)
            }
        })
    }

    /// The targets the critic is trained on: the returns, or with value normalisation the
    /// returns standardised by the statistics after folding these returns in.
    fn value_targets(&mut self, mut gae: Gae) -> Gae {
        if let Some(vn) = &mut self.value_norm {
            vn.update(&gae.returns);
            let vn = *vn;
            gae.returns.iter_mut().for_each(|r| *r = vn.normalise(*r));
        }
        gae
    }

    /// Collects `rollout_len` batched steps (one forward pass per step for the
    /// whole batch); returns V of the observations after the last step.
    fn collect(&mut self) -> Result<Vec<f32>, TrainError> {
        self.rollout.clear();
        let steps = self.cfg.train.rollout_len;
        let mut running = vec![0f64; self.env.spec().num_envs];
        self.episode_returns = (0.0, 0);
        let mut obs = Some(self.env.reset(&mut self.rng)?);
        for t in 0..steps {
            let o = match obs.take() {
                Some(o) => o,
                None => self.env.reset(&mut self.rng)?,
            };
            let out = self.policy.forward(&o)?;
            let sampled = sample_actions(&out.logits.detach(), &mut self.rng, false)?;
            let values = out.values.detach().to_vec1::<f32>()?;
            let step = self.env.step(&sampled.actions, &mut self.rng)?;
            for (row, total) in running.iter_mut().enumerate() {
                *total += f64::from(step.reward.get(row).copied().unwrap_or(0.0));
                if step.done.get(row).copied().unwrap_or(false)
                    || step.truncated.get(row).copied().unwrap_or(false)
                {
                    self.episode_returns.0 += *total;
                    self.episode_returns.1 += 1;
                    *total = 0.0;
                }
            }
            let truncated_values = match &step.final_obs {
                Some(f) => self.policy.forward(f)?.values.detach().to_vec1::<f32>()?,
                None => Vec::new(),
            };
            self.rollout.push(Transition {
                obs: &o,
                actions: &sampled.actions,
                log_probs: &sampled.log_probs,
                values: &values,
                rewards: &step.reward,
                done: &step.done,
                truncated: &step.truncated,
                truncated_values: &truncated_values,
            })?;
            obs = step.next_obs;
            if t + 1 == steps
                && let Some(o) = &obs
            {
                return Ok(self.policy.forward(o)?.values.detach().to_vec1::<f32>()?);
            }
        }
        Ok(Vec::new())
    }

    /// Counts the update, refuses a non-finite loss or gradient, and reports.
    fn finish(
        &mut self,
        stats: LossStats,
        grad_norm: f64,
        epochs: usize,
        mean_reward: f64,
        explained_variance: f64,
    ) -> Result<UpdateMetrics, TrainError> {
        self.update += 1;
        for (name, v) in [
            ("policy loss", stats.policy_loss),
            ("value loss", stats.value_loss),
            ("gradient norm", grad_norm),
        ] {
            if !v.is_finite() {
                return Err(TrainError::NonFinite {
                    update: self.update,
                    what: name.to_string(),
                    last_checkpoint: None,
                });
            }
        }
        let (sum, episodes) = self.episode_returns;
        Ok(UpdateMetrics {
            update: self.update,
            mean_reward,
            mean_return: if episodes > 0 { sum / episodes as f64 } else { f64::NAN },
            episodes,
            entropy: stats.entropy,
            policy_loss: stats.policy_loss,
            value_loss: stats.value_loss,
            approx_kl: stats.approx_kl,
            clipfrac: stats.clipfrac,
            explained_variance,
            grad_norm,
            lr_actor: self.actor.lr(),
            lr_critic: self.critic.lr(),
            epochs,
        })
    }

    fn optimise(&mut self, gae: &Gae) -> Result<(LossStats, f64, usize), TrainError> {
        let p = self.cfg.ppo.clone();
        let whole =
            if p.minibatches <= 1 { Some(self.rollout.batch(gae, p.norm_adv, &self.device)?) } else { None };
        let mut last = None;
        let mut grad_norm = 0.0;
        let mut epochs = 0;
        for epoch in 0..p.epochs {
            let batches = match &whole {
                Some(b) => vec![b.clone()],
                None => {
                    self.rollout.minibatches(gae, p.minibatches, p.norm_adv, &mut self.rng, &self.device)?
                }
            };
            let n = batches.len();
            let want_stats = epoch + 1 == p.epochs || p.target_kl > 0.0;
            for (i, mb) in batches.iter().enumerate() {
                let (stats, norm) = self.minibatch_step(mb, want_stats && i + 1 == n)?;
                grad_norm = norm;
                if stats.is_some() {
                    last = stats;
                }
            }
            epochs += 1;
            if p.target_kl > 0.0
                && let Some(s) = &last
                && s.approx_kl > p.target_kl
            {
                break;
            }
        }
        let stats = last.ok_or_else(|| TrainError::Setup("no PPO epoch ran".into()))?;
        Ok((stats, grad_norm, epochs))
    }

    fn minibatch_step(
        &mut self,
        mb: &Batch,
        want_stats: bool,
    ) -> Result<(Option<LossStats>, f64), TrainError> {
        let drop = self.cfg.ppo.input_dropout;
        let obs = if drop > 0.0 {
            let (n, d) = mb.obs.dims2()?;
            // Only the embedding's columns are dropped (never λ): the layout says which they are.
            let droppable = ObservationSpec::for_input_width(&self.cfg.env, d)?.embedding_columns();
            let mask = dropout_mask(&mut self.rng, n, d, droppable, drop);
            (&mb.obs * Tensor::from_vec(mask, (n, d), mb.obs.device())?)?
        } else {
            mb.obs.clone()
        };
        let p = &self.cfg.ppo;
        let out = self.policy.forward(&obs)?;
        let logits_host = out.logits.detach().flatten_all()?.to_vec1::<f32>()?;
        let values_host = out.values.detach().to_vec1::<f32>()?;
        let (stats, g) = ppo_loss_head(&logits_host, &values_host, mb, p);
        // Surrogate whose parameter gradients equal the loss's (see `loss`).
        let dev = out.logits.device();
        let g_logits = Tensor::from_vec(g.logits, out.logits.shape(), dev)?;
        let g_values = Tensor::from_vec(g.values, out.values.shape(), dev)?;
        let surrogate = ((&out.logits * &g_logits)?.sum_all()? + (&out.values * &g_values)?.sum_all()?)?;
        let grads = surrogate.backward()?;
        let mut all = self.actor.grads(&grads);
        all.extend(self.critic.grads(&grads));
        let norm = global_grad_norm(&all)?;
        let scale = if p.max_grad_norm > 0.0 && norm > p.max_grad_norm {
            p.max_grad_norm / (norm + 1e-6)
        } else {
            1.0
        };
        if norm.is_finite() {
            self.actor.step(&grads, scale)?;
            self.critic.step(&grads, scale)?;
        }
        Ok((want_stats.then_some(stats), norm))
    }

    /// The trainer's whole state as a checkpoint.
    /// Refuses (with [`TrainError::NonFinite`]) weights that hold a NaN or an
    /// infinity, so that a diverged state is never written.
    pub fn checkpoint(&self) -> Result<Checkpoint, TrainError> {
        let mut tensors = std::collections::HashMap::new();
        for nv in self.policy.all_vars() {
            let finite = nv.var.as_tensor().abs()?.max_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            if !finite.is_finite() {
                return Err(TrainError::NonFinite {
                    update: self.update,
                    what: format!("weight `{}`", nv.name),
                    last_checkpoint: None,
                });
            }
            tensors.insert(format!("policy.{}", nv.name), nv.var.as_tensor().copy()?);
        }
        let (a, sa) = self.actor.state("adam.actor")?;
        let (c, sc) = self.critic.state("adam.critic")?;
        tensors.extend(a.into_iter().chain(c));
        if let Some(vn) = self.value_norm {
            tensors.insert(value_norm::TENSOR.to_string(), vn.to_tensor()?);
        }
        Ok(Checkpoint {
            config: self.cfg.clone(),
            env_kind: self.env.kind().to_string(),
            update: self.update,
            rng_state: self.rng.state(),
            adam_steps: (sa, sc),
            env_state: self.env.state(),
            tensors,
            path: None,
        })
    }

    /// Restores weights, optimizer moments, RNG, update count and the
    /// environment's state. The checkpoint must come from the same model shape
    /// and the same kind of environment.
    pub fn restore(&mut self, ckpt: &Checkpoint) -> Result<(), TrainError> {
        let path = ckpt.path.clone().unwrap_or_else(|| "<checkpoint in memory>".into());
        let wrap = |e: mappo_nn::NnError| TrainError::Checkpoint {
            path: path.display().to_string(),
            problem: e.to_string(),
        };
        if ckpt.env_kind != self.env.kind() {
            return Err(TrainError::Checkpoint {
                path: path.display().to_string(),
                problem: format!(
                    "it was written for the `{}` environment, this trainer runs `{}`",
                    ckpt.env_kind,
                    self.env.kind()
                ),
            });
        }
        ckpt.load_weights_into(&self.policy)?;
        let get = |n: &str| ckpt.tensors.get(n).cloned();
        self.actor.load_state("adam.actor", ckpt.adam_steps.0, get).map_err(wrap)?;
        self.critic.load_state("adam.critic", ckpt.adam_steps.1, get).map_err(wrap)?;
        if self.value_norm.is_some() {
            let t = ckpt.tensors.get(value_norm::TENSOR).ok_or_else(|| TrainError::Checkpoint {
                path: path.display().to_string(),
                problem: format!(
                    "ppo.value_norm is on but the checkpoint has no `{}` statistics (it was written without \
                     value normalisation)",
                    value_norm::TENSOR
                ),
            })?;
            self.value_norm =
                Some(ValueNorm::from_tensor(t).map_err(|problem| TrainError::Checkpoint {
                    path: path.display().to_string(),
                    problem,
                })?);
        }
        self.env.restore_state(&ckpt.env_state)?;
        self.rng = Rng::from_state(ckpt.rng_state);
        self.update = ckpt.update;
        Ok(())
    }
}

/// `1 − Var(y − pred) / Var(y)` (population variances); NaN when Var(y) = 0.
pub fn explained_variance(pred: &[f32], y: &[f32]) -> f64 {
    let var = |it: &mut dyn Iterator<Item = f64>| {
        let v: Vec<f64> = it.collect();
        let n = v.len().max(1) as f64;
        let m = v.iter().sum::<f64>() / n;
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n
    };
    let vy = var(&mut y.iter().map(|&x| f64::from(x)));
    if vy == 0.0 {
        return f64::NAN;
    }
    let vr = var(&mut y.iter().zip(pred).map(|(&a, &b)| f64::from(a) - f64::from(b)));
    1.0 - vr / vy
}

/// An inverted-dropout mask for `n` rows of `d` features, row-major: each feature of a row in
/// the column range `droppable` is 0 with probability `p` and `1/(1 − p)` otherwise (one
/// uniform draw from `rng` each, row by row); the other features are always 1.
pub(crate) fn dropout_mask(
    rng: &mut Rng,
    n: usize,
    d: usize,
    droppable: std::ops::Range<usize>,
    p: f64,
) -> Vec<f32> {
    let keep = (1.0 / (1.0 - p)) as f32;
    let mut mask = vec![1f32; n * d];
    for row in mask.chunks_mut(d.max(1)) {
        for m in row.iter_mut().take(droppable.end).skip(droppable.start) {
            *m = if rng.uniform() >= p { keep } else { 0.0 };
        }
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_mask_drops_about_p_of_the_droppable_features_and_keeps_the_rest() {
        let mut rng = Rng::new(3);
        let (n, d, droppable, p) = (400, 10, 9, 0.25);
        let m = dropout_mask(&mut rng, n, d, 0..droppable, p);
        assert_eq!(m.len(), n * d);
        let keep = (1.0 / (1.0 - p)) as f32;
        let mut zeros = 0;
        for row in m.chunks(d) {
            assert_eq!(row[d - 1], 1.0, "the feature after the droppable ones is never dropped");
            for &v in &row[..droppable] {
                assert!(v == 0.0 || v == keep, "{v}");
                zeros += usize::from(v == 0.0);
            }
        }
        let share = zeros as f64 / (n * droppable) as f64;
        assert!((share - p).abs() < 0.03, "dropped share {share}");
        // Inverted dropout keeps each feature's expectation: the mean of the mask is about 1.
        let mean = m.iter().map(|&v| f64::from(v)).sum::<f64>() / m.len() as f64;
        assert!((mean - 1.0).abs() < 0.05, "mean {mean}");
        // The same stream gives the same mask; no droppable feature draws nothing.
        assert_eq!(m, dropout_mask(&mut Rng::new(3), n, d, 0..droppable, p));
        let mut r = Rng::new(3);
        assert!(dropout_mask(&mut r, n, d, 0..0, p).iter().all(|&v| v == 1.0));
        assert_eq!(r.state(), Rng::new(3).state());
    }
}
