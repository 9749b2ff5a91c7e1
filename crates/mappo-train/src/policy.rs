//! [`RoutingPolicy`]: a router's network together with its observation layout — the one way
//! every part of mappo runs a trained (or freshly initialised) policy.
//!
//! Evaluation, calibration, `mappo route`, `mappo serve`, the learner and off-policy evaluation
//! all load a policy here ([`RoutingPolicy::from_checkpoint`]), build its input with its
//! [`ObservationSpec`] ([`RoutingPolicy::observe`]) and read the same three things from it: the
//! softmax probabilities ([`RoutingPolicy::probabilities`]), the probabilities floored as served
//! ([`RoutingPolicy::floored`]) and the greedy choices ([`RoutingPolicy::greedy`]). So the
//! candidate that off-policy evaluation scores acts exactly as the service would serve it.

use candle_core::{Device, Tensor};
use mappo_config::{Config, Rng};
use mappo_env::ObservationSpec;
use mappo_nn::{ActorCritic, NetworkLayout, Policy, floor_probabilities};

use crate::{Checkpoint, TrainError, greedy_actions};

/// A routing policy: the actor-critic network, the layout of its input, its agents and the
/// exploration floor its config serves with.
#[derive(Debug)]
pub struct RoutingPolicy {
    network: ActorCritic,
    spec: ObservationSpec,
    agents: Vec<String>,
    stage_agents: Vec<Vec<String>>,
    stage_names: Vec<String>,
    min_prob: f64,
    device: Device,
    episode: EpisodeShape,
}

/// What an episode of a policy looks like: which stage each step decides and what its
/// observation holds beyond the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpisodeShape {
    /// One decision per prompt (a text or synthetic router): every step is the one stage.
    OneStep,
    /// A conversation of `turns` turns: every turn sees the previous turn's agent and the share
    /// of turns left (0 past the last).
    Conversation {
        /// Turns per conversation (the trained horizon).
        turns: usize,
    },
    /// A cascade: step 0 picks an agent; after any agent but `strong`, step 1 sees its answer
    /// and accepts it or escalates to `strong`.
    Cascade {
        /// The agent escalated to (the most expensive).
        strong: usize,
    },
    /// A pipeline: step k decides stage k, seeing every earlier stage's choice.
    Pipeline,
}

impl EpisodeShape {
    /// The shape of a config's episodes.
    pub fn of(cfg: &Config) -> Self {
        match cfg.env.kind {
            mappo_config::EnvKind::Conversation => EpisodeShape::Conversation { turns: cfg.env.turns.max(1) },
            mappo_config::EnvKind::Cascade => {
                EpisodeShape::Cascade { strong: mappo_env::CascadeRules::new(&cfg.env).strong }
            }
            mappo_config::EnvKind::Pipeline => EpisodeShape::Pipeline,
            _ => EpisodeShape::OneStep,
        }
    }

    /// The stage the step after `earlier` (the actions of the episode's steps so far, in order)
    /// decides, for a policy of `stages` stages, or why there is none: a pipeline whose stages
    /// are all decided, a cascade that has ended (after its second step, or after a first step
    /// that chose the strong agent).
    pub fn next_stage(self, earlier: &[u32], stages: usize) -> Result<usize, String> {
        match self {
            EpisodeShape::OneStep | EpisodeShape::Conversation { .. } => Ok(0),
            EpisodeShape::Pipeline if earlier.len() < stages => Ok(earlier.len()),
            EpisodeShape::Pipeline => Err(format!("all {stages} stages of this pipeline are decided")),
            EpisodeShape::Cascade { .. } if earlier.is_empty() => Ok(0),
            EpisodeShape::Cascade { strong } if earlier.len() == 1 && earlier[0] as usize != strong => Ok(1),
            EpisodeShape::Cascade { .. } => {
                Err("this cascade is complete (its answer was accepted or escalated, or the strongest agent \
                 answered first)"
                    .into())
            }
        }
    }

    /// What the observation of the step after `earlier` holds beside the prompt (for the
    /// layout's [`ObservationSpec::row`]): the one place an episode step's extras are decided,
    /// as the training environments lay them out.
    pub fn extras<'a>(
        self,
        earlier: &'a [u32],
        cost_weight: Option<f32>,
        response: Option<&'a [f32]>,
    ) -> mappo_env::RowExtras<'a> {
        match self {
            EpisodeShape::OneStep => mappo_env::RowExtras { cost_weight, ..Default::default() },
            EpisodeShape::Conversation { turns } => mappo_env::RowExtras {
                cost_weight,
                previous_agent: earlier.last().copied(),
                turns_left: Some(turns.saturating_sub(earlier.len() + 1) as f32 / turns as f32),
                ..Default::default()
            },
            EpisodeShape::Cascade { .. } | EpisodeShape::Pipeline => mappo_env::RowExtras {
                cost_weight,
                stage: Some(earlier.len()),
                choices: earlier,
                response,
                ..Default::default()
            },
        }
    }
}

impl RoutingPolicy {
    /// The policy stored in `ckpt`, on `device`: the network is rebuilt from the checkpoint's
    /// config and the width of its first layer, and its weights loaded.
    pub fn from_checkpoint(ckpt: &Checkpoint, device: &Device) -> Result<Self, TrainError> {
        let spec = ckpt.observation_spec()?;
        let cfg = &ckpt.config;
        let network = build_network(cfg, &spec, &mut Rng::new(0), device)?;
        ckpt.load_weights_into(&network)?;
        Ok(Self::assemble(cfg, spec, network, device))
    }

    /// A freshly initialised policy for `cfg` over embeddings `embed_dim` wide: the weights
    /// training starts from (orthogonal init from the `init` stream of `train.seed`).
    pub fn init(cfg: &Config, embed_dim: usize, device: &Device) -> Result<Self, TrainError> {
        let spec = ObservationSpec::for_env(&cfg.env, embed_dim);
        let mut rng = Rng::derived(cfg.train.seed, "init");
        let network = build_network(cfg, &spec, &mut rng, device)?;
        Ok(Self::assemble(cfg, spec, network, device))
    }

    fn assemble(cfg: &Config, spec: ObservationSpec, network: ActorCritic, device: &Device) -> Self {
        let stage_agents = cfg.env.stage_agents();
        let agents = if cfg.env.agents.is_empty() {
            (0..network.num_actions()).map(|i| format!("agent-{i}")).collect()
        } else {
            cfg.env.agents.iter().map(|a| a.name.clone()).collect()
        };
        let stage_names = match cfg.env.kind {
            mappo_config::EnvKind::Pipeline => cfg.env.stages.iter().map(|s| s.name.clone()).collect(),
            mappo_config::EnvKind::Cascade => vec!["first".to_string(), "escalation".to_string()],
            _ => vec!["route".to_string()],
        };
        let episode = EpisodeShape::of(cfg);
        Self {
            network,
            spec,
            agents,
            stage_agents,
            stage_names,
            min_prob: cfg.serve.min_prob,
            device: device.clone(),
            episode,
        }
    }

    /// What its episodes look like.
    pub fn episode(&self) -> EpisodeShape {
        self.episode
    }

    /// The stage the step after `earlier` (the actions of the episode's steps so far, in order)
    /// decides, or why there is none: a pipeline whose stages are all decided, a cascade that
    /// has ended (after its second step, or after a first step that chose the strong agent).
    pub fn next_stage(&self, earlier: &[u32]) -> Result<usize, String> {
        self.episode.next_stage(earlier, self.stage_agents.len())
    }

    /// Whether the step after `earlier` sees the earlier agent's answer (a cascade's second step).
    pub fn needs_response(&self, earlier: &[u32]) -> bool {
        matches!(self.episode, EpisodeShape::Cascade { .. }) && self.next_stage(earlier) == Ok(1)
    }

    /// The input row of the step after `earlier` for a prompt's `embedding` at cost weight λ,
    /// with `response` (the earlier agent's answer, embedded) where the step sees one: the one
    /// place a served or routed episode step is laid out, as the training environments do.
    pub fn step_row(
        &self,
        embedding: &[f32],
        cost_weight: f32,
        earlier: &[u32],
        response: Option<&[f32]>,
    ) -> Result<Vec<f32>, TrainError> {
        self.next_stage(earlier).map_err(TrainError::Setup)?;
        let extras = self.episode.extras(earlier, Some(cost_weight), response);
        if self.needs_response(earlier) && response.is_none() {
            return Err(TrainError::Setup("this step needs the earlier agent's answer".into()));
        }
        self.spec.row(embedding, extras).ok_or_else(|| {
            TrainError::Setup(format!(
                "a step after {} earlier steps does not fit the policy's input of width {}",
                earlier.len(),
                self.spec.width()
            ))
        })
    }

    /// π over the options of the stage each row decides: [`RoutingPolicy::probabilities`] of
    /// rows made by [`RoutingPolicy::step_row`], each cut to its stage's options.
    pub fn step_probabilities(
        &self,
        rows: Vec<f32>,
        earlier: &[&[u32]],
    ) -> Result<Vec<Vec<f32>>, TrainError> {
        let n = earlier.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let obs = Tensor::from_vec(rows, (n, self.spec.width()), &self.device)?;
        let mut p = self.probabilities(&obs)?;
        for (row, e) in p.iter_mut().zip(earlier) {
            let options =
                self.next_stage(e).ok().and_then(|k| self.stage_agents.get(k)).map_or(row.len(), Vec::len);
            row.truncate(options);
        }
        Ok(p)
    }

    /// The names of the stages, in order (`route` for a one-stage router; a cascade's `first`
    /// and `escalation`).
    pub fn stage_names(&self) -> &[String] {
        &self.stage_names
    }

    /// Each stage's options, in order (one stage: [`agents`](Self::agents)).
    pub fn stage_agents(&self) -> &[Vec<String>] {
        &self.stage_agents
    }

    /// The layout of its input.
    pub fn spec(&self) -> &ObservationSpec {
        &self.spec
    }

    /// The agents' names in action order (`agent-<i>` for an environment without names).
    pub fn agents(&self) -> &[String] {
        &self.agents
    }

    /// Number of actions (agents).
    pub fn num_actions(&self) -> usize {
        self.network.num_actions()
    }

    /// Whether it takes the cost weight λ as an input (a cost-aware router).
    pub fn cost_aware(&self) -> bool {
        self.spec.has_cost_weight()
    }

    /// The exploration floor its config serves with (`serve.min_prob`).
    pub fn min_prob(&self) -> f64 {
        self.min_prob
    }

    /// The device it runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The network.
    pub fn network(&self) -> &ActorCritic {
        &self.network
    }

    /// The network, for training it further.
    pub fn into_network(self) -> ActorCritic {
        self.network
    }

    /// Its input for an embedding tensor `[rows, embed_dim]` (moved to its device) and one cost
    /// weight per row (read only by a cost-aware policy; may be empty otherwise).
    pub fn observe(&self, embeddings: &Tensor, cost_weights: &[f32]) -> Result<Tensor, TrainError> {
        Ok(self.spec.observe(&embeddings.to_device(&self.device)?, cost_weights)?)
    }

    /// Its input for row-major host embeddings and one cost weight per row.
    pub fn observe_rows(&self, embeddings: &[f32], cost_weights: &[f32]) -> Result<Tensor, TrainError> {
        Ok(self.spec.observe_rows(embeddings, cost_weights, &self.device)?)
    }

    /// π(agent | row) for every row of `obs` (built by [`observe`](Self::observe)): the softmax
    /// of the logits, one `Vec` per row.
    pub fn probabilities(&self, obs: &Tensor) -> Result<Vec<Vec<f32>>, TrainError> {
        let logits = self.network.forward(obs)?.logits;
        Ok(candle_nn::ops::softmax_last_dim(&logits)?.to_vec2::<f32>()?)
    }

    /// The probabilities as served: floored at `min_prob` by water-filling
    /// ([`floor_probabilities`]); the softmax itself when `min_prob` is 0.
    pub fn floored(&self, obs: &Tensor, min_prob: f64) -> Result<Vec<Vec<f32>>, TrainError> {
        let p = self.probabilities(obs)?;
        if min_prob <= 0.0 {
            return Ok(p);
        }
        Ok(p.iter().map(|row| floor_probabilities(row, min_prob)).collect())
    }

    /// The greedy (most probable) agent of every row: the argmax of the logits, the first on
    /// ties — what evaluation scores and a greedy route takes.
    pub fn greedy(&self, obs: &Tensor) -> Result<Vec<usize>, TrainError> {
        Ok(greedy_actions(&self.network, obs)?.into_iter().map(|a| a as usize).collect())
    }
}

/// The network layout `cfg` asks for over observations laid out as `spec`: one policy head per
/// stage, the critic of `model.critic` (a one-stage config with the default critic is today's
/// router, weight for weight).
pub fn network_layout(cfg: &Config, spec: &ObservationSpec) -> NetworkLayout {
    let sizes = cfg.env.stage_sizes();
    NetworkLayout {
        stage_sizes: if sizes.len() > 1 { sizes } else { vec![cfg.env.action_count()] },
        stage_columns: spec.stage_columns(),
        critic: cfg.model.critic,
        local_columns: spec.local_columns(),
    }
}

/// The network of `cfg` over `spec`'s observations, its weights drawn from `rng`.
pub(crate) fn build_network(
    cfg: &Config,
    spec: &ObservationSpec,
    rng: &mut Rng,
    device: &Device,
) -> Result<ActorCritic, TrainError> {
    Ok(ActorCritic::with_layout(spec.width(), &network_layout(cfg, spec), &cfg.model, rng, device)?)
}
