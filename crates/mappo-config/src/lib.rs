//! Configuration for mappo: every hyperparameter, its default, TOML loading,
//! `--set key=value` overrides and validation.
//!
//! A [`Config`] is built from the defaults, then a TOML file (optional), then
//! dotted `KEY=VALUE` overrides, in that order. Every key a user writes is
//! checked against the known keys before deserialisation, so an unknown or
//! mistyped key is refused with an error that names it and lists what is
//! allowed; [`Config::validate`] then checks ranges.
//!
//! The defaults follow the seed prototype's `Config` except where a better
//! value was measured (documented on each field and in `configs/default.toml`);
//! `configs/seed.toml` keeps the seed's values exactly.
//!
//! This crate also holds [`Rng`], the one seeded random number generator every
//! other crate draws from (candle's CPU RNG cannot be seeded).

mod error;
mod fsutil;
mod learn;
mod load;
mod rng;
mod serve;
mod types;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use error::ConfigError;
pub use fsutil::write_atomic;
pub use learn::LearnConfig;
pub use rng::Rng;
pub use serve::{ServeConfig, Upstream};
pub use types::{
    CriticKind, Device, EnvKind, GateEstimator, MissingReward, ParseValueError, RewardAt, RewardModel,
};

/// The whole resolved configuration of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[derive(Default)]
pub struct Config {
    /// The environment: which one and its parameters.
    pub env: EnvConfig,
    /// The actor-critic network.
    pub model: ModelConfig,
    /// PPO hyperparameters.
    pub ppo: PpoConfig,
    /// Training loop: budget, seed, logging and checkpoint cadence.
    pub train: TrainConfig,
    /// The routing service (`mappo serve`).
    pub serve: ServeConfig,
    /// Learning from logged feedback (`mappo learn`) and the promotion gate.
    pub learn: LearnConfig,
}

/// Which environment to train on.
///
/// # Paths
/// `corpus`, `eval_corpus`, `model_dir` and `cache_dir` may be relative. In a
/// config file (`--config FILE`) they are relative to the directory of that
/// file, so `mappo train --config /abs/configs/prompts.toml` works from any
/// directory; given with `--set` they are relative to the current directory.
/// Absolute paths and `""` (the default) are kept as written. [`Config::load`]
/// stores relative paths resolved to absolute ones, so the config written to a
/// run's `config.toml` and into its checkpoints names the same files from
/// wherever `--resume` or `eval` later runs. Configs read back with
/// [`Config::from_toml_str`] (checkpoints, whose paths older versions stored
/// relative to the then current directory) are taken as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnvConfig {
    /// `synthetic` (the seed's cosine-similarity env) or `text` (a corpus of
    /// prompts embedded with all-MiniLM-L6-v2). Default `synthetic`.
    pub kind: EnvKind,
    /// Dimension of the synthetic prompt embeddings (the observation). Default 32.
    pub embed_dim: usize,
    /// Number of agents (actions). Default 4.
    pub num_agents: usize,
    /// Standard deviation of the Gaussian noise added to each reward. Default 0.1.
    pub reward_noise: f64,
    /// Text env: training corpus, JSON lines `{"text": ..., "label": ...}`
    /// (a relative path: see [Paths](EnvConfig#paths)).
    pub corpus: String,
    /// Text env: corpus for the periodic greedy evaluation ("" = a sample of
    /// the training corpus).
    pub eval_corpus: String,
    /// Text env: the agents (`[[env.agents]]` tables with `name`, `description`).
    /// Their number replaces `num_agents`.
    pub agents: Vec<AgentSpec>,
    /// Text env reward: `label` (1 if the chosen agent is the prompt's label,
    /// else 0), `cosine` (cosine between the prompt's and the agent
    /// description's embeddings) or `outcome` (the chosen agent's known reward
    /// from the row's `outcomes`). Plus `reward_noise`. Default `label`.
    pub reward: RewardModel,
    /// Directory of all-MiniLM-L6-v2 ("" = `$MAPPO_MODEL_DIR`, else the user
    /// cache; `cargo xtask fetch-model` fills it).
    pub model_dir: String,
    /// Directory of the embedding cache ("" = the user cache, `mappo/embeddings`).
    pub cache_dir: String,
    /// Range `[lo, hi]` of the cost weight λ a cost-aware router is trained over (used when
    /// some agent has a `cost` > 0). The reward is `quality − λ·cost / max cost` (costs are
    /// normalised by the most expensive agent's, so λ = 1 means "the most expensive agent must
    /// be worth one full reward unit more"); λ is drawn uniformly from this range for every
    /// prompt and given to the policy as an extra input, so one trained router serves every λ
    /// in it. `lo` may be below 0: a slightly negative λ makes the router prefer the pricier
    /// agent when qualities tie (with binary outcomes, "both right" is common), which is how
    /// shares of the expensive agent above the λ = 0 share are reached. Default `[0, 1]`.
    pub cost_weight_range: [f64; 2],
    /// Pipeline env: its stages, in order (`[[env.stages]]` tables with a `name` and their own
    /// `[[env.stages.agents]]`). Every other env is one stage: its `agents` (or `num_agents`).
    pub stages: Vec<StageSpec>,
    /// Pipeline env: the scale β of the interaction tables between consecutive stages (entries
    /// uniform in [−β, β]; 0 turns them off). Default 0.
    pub interaction: f64,
    /// Pipeline env: the cost weight λ of the team reward `Σ quality − λ·Σ cost / max cost`.
    /// Default 0.
    pub cost_weight: f64,
    /// Conversation env: turns per conversation. Default 8.
    pub turns: usize,
    /// Conversation env: probability that the next turn keeps the topic (label). Default 0.8.
    pub p_stay: f64,
    /// Conversation env: reward for keeping the previous turn's agent (it keeps the context).
    /// Default 0.
    pub continuity_bonus: f64,
    /// Multi-step envs: `turn` pays each step's reward at that step, `end` pays the whole
    /// episode's at its last step. Default `turn` (the pipeline always pays at the end).
    pub reward_at: RewardAt,
}

/// One stage of a pipeline: its name and its agents (options).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// Its name (e.g. `retrieval`).
    pub name: String,
    /// Its options, each with a name and a cost.
    #[serde(default)]
    pub agents: Vec<AgentSpec>,
}

impl Default for EnvConfig {
    fn default() -> Self {
        Self {
            kind: EnvKind::Synthetic,
            embed_dim: 32,
            num_agents: 4,
            reward_noise: 0.1,
            corpus: String::new(),
            eval_corpus: String::new(),
            agents: Vec::new(),
            reward: RewardModel::Label,
            model_dir: String::new(),
            cache_dir: String::new(),
            cost_weight_range: [0.0, 1.0],
            stages: Vec::new(),
            interaction: 0.0,
            cost_weight: 0.0,
            turns: 8,
            p_stay: 0.8,
            continuity_bonus: 0.0,
            reward_at: RewardAt::Turn,
        }
    }
}

impl EnvConfig {
    /// Number of actions: the agents listed for the text env, else `num_agents`; for a
    /// multi-stage env the largest stage's (the policy's logits are that wide, each stage's rows
    /// use the first `n_k`).
    pub fn action_count(&self) -> usize {
        self.stage_sizes().into_iter().max().unwrap_or(0)
    }

    /// The number of options of each stage, in order: the `[[env.stages]]` of a pipeline, else
    /// one stage (the agents of the text and conversation envs, `num_agents` of the synthetic).
    pub fn stage_sizes(&self) -> Vec<usize> {
        match self.kind {
            EnvKind::Pipeline => self.stages.iter().map(|s| s.agents.len()).collect(),
            EnvKind::Text | EnvKind::Conversation => vec![self.agents.len()],
            // Step 1 picks any agent; step 2 accepts its answer or escalates.
            EnvKind::Cascade => vec![self.agents.len(), 2],
            EnvKind::Synthetic => vec![self.num_agents],
        }
    }

    /// The names of each stage's options, in order (`agent-i` where none are configured).
    pub fn stage_agents(&self) -> Vec<Vec<String>> {
        let names = |agents: &[AgentSpec]| agents.iter().map(|a| a.name.clone()).collect::<Vec<_>>();
        match self.kind {
            EnvKind::Pipeline => self.stages.iter().map(|s| names(&s.agents)).collect(),
            EnvKind::Text | EnvKind::Conversation => vec![names(&self.agents)],
            EnvKind::Cascade => vec![names(&self.agents), vec!["accept".into(), "escalate".into()]],
            EnvKind::Synthetic => vec![(0..self.num_agents).map(|i| format!("agent-{i}")).collect()],
        }
    }

    /// True when the router is cost-aware: a text env where some agent has a `cost` > 0. Its
    /// policy takes the cost weight λ as one extra input after the embedding.
    pub fn cost_input(&self) -> bool {
        matches!(self.kind, EnvKind::Text | EnvKind::Cascade) && self.agents.iter().any(|a| a.cost > 0.0)
    }

    /// Number of decisions (stages) per episode of a staged env: the pipeline's stages; 1 for
    /// every other env (a conversation's turns are the same stage repeated).
    pub fn num_stages(&self) -> usize {
        self.stage_sizes().len()
    }

    /// Each agent's cost divided by the largest (all 0 when no agent has a cost): the cost
    /// term of the reward is `λ · normalized_costs()[agent]`.
    pub fn normalized_costs(&self) -> Vec<f64> {
        let max = self.agents.iter().map(|a| a.cost).fold(0.0, f64::max);
        self.agents.iter().map(|a| if max > 0.0 { a.cost / max } else { 0.0 }).collect()
    }
}

/// An agent prompts can be routed to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// Its name: corpus labels refer to it.
    pub name: String,
    /// Its specialty in a sentence or two (embedded for the `cosine` reward).
    #[serde(default)]
    pub description: String,
    /// What one request to it costs, in any unit shared by all agents (e.g. dollars per
    /// million input tokens). Default 0. With a cost on any agent the reward becomes
    /// `quality − λ·cost / max cost` (see `env.cost_weight_range`).
    #[serde(default)]
    pub cost: f64,
}

/// The actor-critic network: a shared two-layer ReLU encoder and two heads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Width of both encoder layers. Default 64.
    pub hidden_dim: usize,
    /// Width of a learned linear projection applied to the observation before
    /// the encoder (e.g. 384→32 for sentence embeddings); 0 = none. Default 0.
    pub projection_dim: usize,
    /// Orthogonal-init gain of the encoder layers. Default √2 (the seed's ReLU gain).
    pub init_gain_hidden: f64,
    /// Orthogonal-init gain of the policy head. Default 0.01 (CleanRL); the seed used √2.
    pub init_gain_policy: f64,
    /// Orthogonal-init gain of the value head. Default 1.0 (CleanRL); the seed used √2.
    pub init_gain_value: f64,
    /// The value function: `shared` (a value head on the actor's encoder, the one-step
    /// routers'), `centralized` (MAPPO: its own network over the whole observation: the prompt,
    /// every earlier choice, the step) or `local` (IPPO: its own network over the prompt and the
    /// stage id only). Default `shared`.
    pub critic: CriticKind,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            hidden_dim: 64,
            projection_dim: 0,
            init_gain_hidden: std::f64::consts::SQRT_2,
            init_gain_policy: 0.01,
            init_gain_value: 1.0,
            critic: CriticKind::Shared,
        }
    }
}

/// PPO hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PpoConfig {
    /// Learning rate of the actor optimizer (shared encoder + policy head). Default 3e-4.
    pub lr_actor: f64,
    /// Learning rate of the critic optimizer (value head). Default 1e-3.
    pub lr_critic: f64,
    /// Adam epsilon. Default 1e-5 (CleanRL); the seed's torch default is 1e-8.
    pub adam_eps: f64,
    /// Discount factor. Default 0.99.
    pub gamma: f64,
    /// GAE lambda. Default 0.95.
    pub gae_lambda: f64,
    /// Clipping range of the surrogate objective. Default 0.2.
    pub clip_eps: f64,
    /// Entropy bonus coefficient. Default 0.01.
    pub entropy_coef: f64,
    /// Value-loss coefficient. Default 0.5.
    pub value_coef: f64,
    /// Global gradient-norm clip (0 disables). Default 0.5.
    pub max_grad_norm: f64,
    /// PPO epochs per update. Default 4.
    pub epochs: usize,
    /// Minibatches per epoch (1 = the whole batch, as the seed). Default 1.
    pub minibatches: usize,
    /// Normalise advantages (per minibatch). Default true.
    pub norm_adv: bool,
    /// Clip the value loss around the old values with `clip_eps`. Default false.
    pub clip_value: bool,
    /// Linearly anneal both learning rates to 0 over the run. Default true
    /// (measured: greedy oracle agreement 0.965 vs 0.939 without, 3 seeds; the seed had none).
    pub anneal_lr: bool,
    /// Stop an update's epochs early when approx_kl exceeds this (0 disables). Default 0.
    pub target_kl: f64,
    /// Inverted dropout on the observation's features in PPO's update passes only: each
    /// feature of each sample is zeroed with this probability and the rest scaled by
    /// `1/(1 − p)`; rollouts, evaluation and routing see the whole observation. The cost-weight
    /// input of a cost-aware text router is never dropped. In `[0, 1)`; 0 disables. Default 0.
    pub input_dropout: f64,
    /// Value normalisation (MAPPO's ValueNorm, Yu et al. 2022): the critic learns returns
    /// standardised by running statistics of every return seen so far (debiased, β = 0.99999),
    /// and its outputs are mapped back to the reward's scale for GAE. The statistics are saved
    /// in checkpoints. Default false.
    pub value_norm: bool,
    /// Decoupled PPO for updates from logged decisions (`mappo learn`; Hilton et al. 2022,
    /// "Batch size-invariance for policy optimization"): 0 (default) clips the ratio π/μ against
    /// the logged propensity μ, as before; a value c > 0 clips the ratio against the policy as
    /// it is at the start of the update (the proximal policy π_prox) and weights each advantage
    /// by min(π_prox/μ, c), so that decisions taken by versions several updates old still move
    /// the policy instead of being clipped. Not used by `mappo train` (its rollouts are on-policy).
    pub decoupled_max_weight: f64,
}

impl Default for PpoConfig {
    fn default() -> Self {
        Self {
            lr_actor: 3e-4,
            lr_critic: 1e-3,
            adam_eps: 1e-5,
            gamma: 0.99,
            gae_lambda: 0.95,
            clip_eps: 0.2,
            entropy_coef: 0.01,
            value_coef: 0.5,
            max_grad_norm: 0.5,
            epochs: 4,
            minibatches: 1,
            norm_adv: true,
            clip_value: false,
            anneal_lr: true,
            target_kl: 0.0,
            input_dropout: 0.0,
            value_norm: false,
            decoupled_max_weight: 0.0,
        }
    }
}

/// The training loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Number of PPO updates. Default 2000.
    pub total_updates: u64,
    /// Parallel environments (prompts) per step. Default 128.
    pub batch_size: usize,
    /// Steps collected per environment per update (1 for one-step episodes). Default 1.
    pub rollout_len: usize,
    /// Write a checkpoint every this many updates (and at the end). Default 500.
    pub save_interval: u64,
    /// Log metrics every this many updates. Default 100.
    pub log_interval: u64,
    /// Measure greedy oracle agreement every this many updates (0 disables). Default 50.
    pub eval_interval: u64,
    /// Prompts used by the periodic greedy evaluation. Default 4096.
    pub eval_prompts: usize,
    /// Seed of every random draw of the run. Default 42.
    pub seed: u64,
    /// Device: `auto` (default: CUDA when built with the `cuda` feature and a GPU
    /// answers, else the CPU), `cpu`, `cuda` or `cuda:N`.
    pub device: Device,
    /// CPU threads for candle's matrix products (0 = candle's default, all
    /// cores). Default 1: for the small default network, splitting each
    /// product across threads costs more than it saves (measured 5× slower
    /// on 2 cores). candle reads it from `RAYON_NUM_THREADS`, which the `mappo`
    /// binary sets from this key unless the variable is already set.
    pub threads: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            total_updates: 2000,
            batch_size: 128,
            rollout_len: 1,
            save_interval: 500,
            log_interval: 100,
            eval_interval: 50,
            eval_prompts: 4096,
            seed: 42,
            device: Device::Auto,
            threads: 1,
        }
    }
}

impl Config {
    /// Builds a config from the defaults, an optional TOML file and dotted
    /// `KEY=VALUE` overrides (applied in order), then validates it.
    ///
    /// Relative paths in the file are taken from the file's directory, those
    /// of overrides from the current directory; both are stored absolute (see
    /// [Paths](EnvConfig#paths)). An error about a key written in the file
    /// names the file and the line.
    pub fn load(file: Option<&Path>, overrides: &[String]) -> Result<Self, ConfigError> {
        let mut tree = toml::Table::new();
        let mut lines = None;
        if let Some(path) = file {
            let origin = path.display().to_string();
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::Io { path: origin.clone(), source: e })?;
            tree = load::parse_toml(&text, &origin)?;
            let key_lines = load::KeyLines::new(&text, &origin);
            let dir = path.parent().unwrap_or(Path::new(""));
            load::resolve_paths(&mut tree, dir, None).map_err(|e| key_lines.locate(e, &[]))?;
            lines = Some(key_lines);
        }
        let mut overridden = Vec::new();
        for ov in overrides {
            let key = load::apply_override(&mut tree, ov)?;
            if let Some(k) = key.strip_prefix("env.").filter(|k| load::PATH_KEYS.contains(k)) {
                load::resolve_paths(&mut tree, Path::new(""), Some(k))?;
            }
            overridden.push(key);
        }
        Self::from_table(tree).map_err(|e| match &lines {
            Some(l) => l.locate(e, &overridden),
            None => e,
        })
    }

    /// Parses a complete TOML document (as saved in run directories and
    /// checkpoints); paths are taken as written.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        Self::from_table(load::parse_toml(text, origin)?)
            .map_err(|e| load::KeyLines::new(text, origin).locate(e, &[]))
    }

    fn from_table(tree: toml::Table) -> Result<Self, ConfigError> {
        load::check_keys(&tree, &load::default_table(), "")?;
        let cfg = load::deserialize(tree)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The config as a TOML document (every key, resolved).
    pub fn to_toml_string(&self) -> String {
        // Serialising plain structs of numbers, strings and bools cannot fail.
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks every value's range; the error names the key and what is allowed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(key: &str, value: impl std::fmt::Display, allowed: &str) -> ConfigError {
            ConfigError::Invalid { key: key.into(), message: format!("{value} is not allowed: {allowed}") }
        }
        let positive = |key: &str, v: f64| {
            if v.is_finite() && v > 0.0 { Ok(()) } else { Err(bad(key, v, "must be a finite number > 0")) }
        };
        let non_negative = |key: &str, v: f64| {
            if v.is_finite() && v >= 0.0 { Ok(()) } else { Err(bad(key, v, "must be a finite number >= 0")) }
        };
        let unit = |key: &str, v: f64| {
            if (0.0..=1.0).contains(&v) { Ok(()) } else { Err(bad(key, v, "must be in [0, 1]")) }
        };
        let at_least = |key: &str, v: u64, min: u64| {
            if v >= min { Ok(()) } else { Err(bad(key, v, &format!("must be an integer >= {min}"))) }
        };
        match self.env.kind {
            EnvKind::Synthetic => {}
            EnvKind::Pipeline => self.validate_pipeline()?,
            EnvKind::Text | EnvKind::Conversation | EnvKind::Cascade => {
                if self.env.kind == EnvKind::Cascade {
                    if self.env.reward != RewardModel::Outcome {
                        return Err(bad(
                            "env.reward",
                            self.env.reward,
                            "the cascade env needs `outcome` (the final answer's known quality)",
                        ));
                    }
                    if !self.env.agents.iter().any(|a| a.cost > 0.0) {
                        return Err(bad(
                            "env.agents",
                            "no costs",
                            "the cascade env needs agents with costs (it escalates to the most expensive)",
                        ));
                    }
                }
                if self.env.corpus.is_empty() {
                    return Err(bad(
                        "env.corpus",
                        "\"\"",
                        &format!("the {} env needs a corpus file (JSON lines)", self.env.kind),
                    ));
                }
                if self.env.kind == EnvKind::Conversation {
                    let e = &self.env;
                    if !(1..=1024).contains(&e.turns) {
                        return Err(bad("env.turns", e.turns, "must be an integer in [1, 1024]"));
                    }
                    unit("env.p_stay", e.p_stay)?;
                    if !e.continuity_bonus.is_finite() {
                        return Err(bad(
                            "env.continuity_bonus",
                            e.continuity_bonus,
                            "must be a finite number",
                        ));
                    }
                }
                if self.env.agents.len() < 2 {
                    return Err(bad(
                        "env.agents",
                        self.env.agents.len(),
                        "the text env needs at least 2 [[env.agents]] with a name",
                    ));
                }
                let mut seen = std::collections::HashSet::new();
                for a in &self.env.agents {
                    if a.name.trim().is_empty() || !seen.insert(a.name.as_str()) {
                        return Err(bad(
                            "env.agents",
                            format!("{:?}", a.name),
                            "agent names must be non-empty and unique",
                        ));
                    }
                }
                for (i, a) in self.env.agents.iter().enumerate() {
                    if !(a.cost.is_finite() && a.cost >= 0.0) {
                        return Err(bad(
                            &format!("env.agents[{i}].cost"),
                            a.cost,
                            "must be a finite number >= 0",
                        ));
                    }
                }
                let [lo, hi] = self.env.cost_weight_range;
                if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
                    return Err(bad(
                        "env.cost_weight_range",
                        format!("[{lo}, {hi}]"),
                        "must be [lo, hi] with lo <= hi, both finite",
                    ));
                }
                // The proxy's upstreams must be agents (with `--checkpoint` only, the served
                // policy's agents are checked when the service starts).
                for name in self.serve.upstreams.keys() {
                    if !self.env.agents.iter().any(|a| &a.name == name) {
                        let names: Vec<&str> = self.env.agents.iter().map(|a| a.name.as_str()).collect();
                        return Err(ConfigError::Invalid {
                            key: format!("serve.upstreams.{name}"),
                            message: format!(
                                "`{name}` is not an agent: the tables must be named after [[env.agents]] \
                                 names ({})",
                                names.join(", ")
                            ),
                        });
                    }
                }
                if self.env.reward == RewardModel::Cosine {
                    for (i, a) in self.env.agents.iter().enumerate() {
                        if a.description.trim().is_empty() {
                            return Err(ConfigError::Invalid {
                                key: format!("env.agents[{i}].description"),
                                message: format!(
                                    "agent `{}` has no description, which the `cosine` reward needs \
                                     (it rewards the cosine between a prompt and the agent's description)",
                                    a.name
                                ),
                            });
                        }
                    }
                }
            }
        }

        // Every update starts new episodes: a rollout shorter than a fixed-length episode (or
        // not a whole number of them) cuts episodes before their end, where the reward may be.
        let episode = match self.env.kind {
            EnvKind::Pipeline => self.env.stages.len(),
            EnvKind::Conversation => self.env.turns,
            _ => 1,
        };
        if episode > 1 && !self.train.rollout_len.is_multiple_of(episode) {
            return Err(bad(
                "train.rollout_len",
                self.train.rollout_len,
                &format!(
                    "must be a multiple of the episode's length, {episode} ({}): every update starts new \
                     episodes, so a shorter rollout would cut them before their end",
                    if self.env.kind == EnvKind::Pipeline { "the stages" } else { "env.turns" }
                ),
            ));
        }

        // Upper bounds keep sizes far from overflow and from absurd allocations.
        let within = |key: &str, v: usize, min: usize, max: usize| {
            if (min..=max).contains(&v) {
                Ok(())
            } else {
                Err(bad(key, v, &format!("must be an integer in [{min}, {max}]")))
            }
        };
        within("env.embed_dim", self.env.embed_dim, 1, 1 << 16)?;
        within("env.num_agents", self.env.num_agents, 2, 1 << 16)?;
        within("model.hidden_dim", self.model.hidden_dim, 1, 1 << 16)?;
        within("model.projection_dim", self.model.projection_dim, 0, 1 << 16)?;
        within("ppo.epochs", self.ppo.epochs, 1, 1 << 16)?;
        within("train.batch_size", self.train.batch_size, 1, 1 << 20)?;
        within("train.rollout_len", self.train.rollout_len, 1, 1 << 16)?;
        within("train.eval_prompts", self.train.eval_prompts, 1, 1 << 22)?;
        within("train.threads", self.train.threads, 0, 1 << 10)?;
        at_least("env.embed_dim", self.env.embed_dim as u64, 1)?;
        at_least("env.num_agents", self.env.num_agents as u64, 2)?;
        non_negative("env.reward_noise", self.env.reward_noise)?;
        at_least("model.hidden_dim", self.model.hidden_dim as u64, 1)?;
        positive("model.init_gain_hidden", self.model.init_gain_hidden)?;
        positive("model.init_gain_policy", self.model.init_gain_policy)?;
        positive("model.init_gain_value", self.model.init_gain_value)?;
        let p = &self.ppo;
        positive("ppo.lr_actor", p.lr_actor)?;
        positive("ppo.lr_critic", p.lr_critic)?;
        positive("ppo.adam_eps", p.adam_eps)?;
        unit("ppo.gamma", p.gamma)?;
        unit("ppo.gae_lambda", p.gae_lambda)?;
        positive("ppo.clip_eps", p.clip_eps)?;
        non_negative("ppo.entropy_coef", p.entropy_coef)?;
        non_negative("ppo.value_coef", p.value_coef)?;
        non_negative("ppo.max_grad_norm", p.max_grad_norm)?;
        at_least("ppo.epochs", p.epochs as u64, 1)?;
        at_least("ppo.minibatches", p.minibatches as u64, 1)?;
        non_negative("ppo.target_kl", p.target_kl)?;
        non_negative("ppo.decoupled_max_weight", p.decoupled_max_weight)?;
        if !(0.0..1.0).contains(&p.input_dropout) {
            return Err(bad("ppo.input_dropout", p.input_dropout, "must be in [0, 1)"));
        }
        let t = &self.train;
        at_least("train.total_updates", t.total_updates, 1)?;
        at_least("train.batch_size", t.batch_size as u64, 1)?;
        at_least("train.rollout_len", t.rollout_len as u64, 1)?;
        at_least("train.save_interval", t.save_interval, 1)?;
        at_least("train.log_interval", t.log_interval, 1)?;
        at_least("train.eval_prompts", t.eval_prompts as u64, 1)?;
        if p.minibatches > t.batch_size.saturating_mul(t.rollout_len) {
            return Err(bad(
                "ppo.minibatches",
                p.minibatches,
                "must be at most train.batch_size * train.rollout_len",
            ));
        }
        self.serve.validate()?;
        self.learn.validate()
    }

    /// The pipeline env's checks: at least one stage, each with a unique name and at least two
    /// uniquely named options with costs >= 0, at most 4,096 joint actions (the optimum is found
    /// by enumerating them), a finite β >= 0 and λ.
    fn validate_pipeline(&self) -> Result<(), ConfigError> {
        let bad = |key: String, message: String| ConfigError::Invalid { key, message };
        let e = &self.env;
        if e.stages.is_empty() {
            return Err(bad(
                "env.stages".into(),
                "the pipeline env needs at least one [[env.stages]] table with a name and its agents".into(),
            ));
        }
        let mut stage_names = std::collections::HashSet::new();
        let mut joint = 1usize;
        for (k, st) in e.stages.iter().enumerate() {
            if st.name.trim().is_empty() || !stage_names.insert(st.name.as_str()) {
                return Err(bad(
                    format!("env.stages[{k}].name"),
                    format!("{:?}: stage names must be non-empty and unique", st.name),
                ));
            }
            if st.agents.len() < 2 {
                return Err(bad(
                    format!("env.stages[{k}].agents"),
                    format!(
                        "stage `{}` has {} option(s); a stage needs at least 2",
                        st.name,
                        st.agents.len()
                    ),
                ));
            }
            let mut seen = std::collections::HashSet::new();
            for (i, a) in st.agents.iter().enumerate() {
                if a.name.trim().is_empty() || !seen.insert(a.name.as_str()) {
                    return Err(bad(
                        format!("env.stages[{k}].agents[{i}].name"),
                        format!("{:?}: option names must be non-empty and unique within a stage", a.name),
                    ));
                }
                if !(a.cost.is_finite() && a.cost >= 0.0) {
                    return Err(bad(
                        format!("env.stages[{k}].agents[{i}].cost"),
                        format!("{} is not allowed: must be a finite number >= 0", a.cost),
                    ));
                }
            }
            joint = joint.saturating_mul(st.agents.len());
        }
        if joint > 4096 {
            return Err(bad(
                "env.stages".into(),
                format!("{joint} joint actions: at most 4096 (the optimum enumerates them)"),
            ));
        }
        if !(e.interaction.is_finite() && e.interaction >= 0.0) {
            return Err(bad(
                "env.interaction".into(),
                format!("{} is not allowed: must be >= 0", e.interaction),
            ));
        }
        if !e.cost_weight.is_finite() {
            return Err(bad("env.cost_weight".into(), format!("{} is not a finite number", e.cost_weight)));
        }
        Ok(())
    }

    /// Every dotted key this config knows, sorted (for help texts and errors).
    pub fn known_keys() -> Vec<String> {
        fn walk(t: &toml::Table, prefix: &str, out: &mut Vec<String>) {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                match v {
                    toml::Value::Table(sub) => walk(sub, &key, out),
                    _ => out.push(key),
                }
            }
        }
        let mut out = Vec::new();
        walk(&load::default_table(), "", &mut out);
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(kv: &[&str]) -> Result<Config, ConfigError> {
        let v: Vec<String> = kv.iter().map(|s| s.to_string()).collect();
        Config::load(None, &v)
    }

    #[test]
    fn defaults_are_the_seeds_where_documented() {
        let c = Config::default();
        assert_eq!(c.env.embed_dim, 32);
        assert_eq!(c.env.num_agents, 4);
        assert_eq!(c.model.hidden_dim, 64);
        assert_eq!(c.ppo.gamma, 0.99);
        assert_eq!(c.ppo.gae_lambda, 0.95);
        assert_eq!(c.ppo.clip_eps, 0.2);
        assert_eq!(c.ppo.value_coef, 0.5);
        assert_eq!(c.ppo.max_grad_norm, 0.5);
        assert_eq!(c.train.total_updates, 2000);
        assert_eq!(c.train.batch_size, 128);
        assert_eq!(c.ppo.epochs, 4);
        assert_eq!(c.train.save_interval, 500);
        assert_eq!(c.train.seed, 42);
        assert_eq!(c.env.reward_noise, 0.1);
        c.validate().expect("defaults validate");
    }

    #[test]
    fn overrides_apply_with_dotted_keys() {
        let c = set(&["train.total_updates=7", "train.seed=9", "ppo.lr_actor=1e-3", "ppo.anneal_lr=true"])
            .expect("valid");
        assert_eq!(c.train.total_updates, 7);
        assert_eq!(c.train.seed, 9);
        assert_eq!(c.ppo.lr_actor, 1e-3);
        assert!(c.ppo.anneal_lr);
        // integers are accepted where a float is expected
        assert_eq!(set(&["ppo.gamma=1"]).expect("valid").ppo.gamma, 1.0);
    }

    #[test]
    fn unknown_key_is_named_with_allowed_keys() {
        let e = set(&["ppo.learning_rate=0.1"]).expect_err("unknown");
        let msg = e.to_string();
        assert!(msg.contains("ppo.learning_rate"), "{msg}");
        assert!(msg.contains("lr_actor"), "{msg}");
        let e = set(&["nope.x=1"]).expect_err("unknown section");
        assert!(e.to_string().contains("`nope`"), "{e}");
    }

    #[test]
    fn wrong_type_and_range_are_named() {
        let e = set(&["train.batch_size=abc"]).expect_err("type");
        assert!(e.to_string().contains("train.batch_size"), "{e}");
        assert!(e.to_string().contains("integer"), "{e}");
        for (kv, key) in [
            ("ppo.lr_actor=-1", "ppo.lr_actor"),
            ("ppo.lr_critic=0", "ppo.lr_critic"),
            ("ppo.clip_eps=0", "ppo.clip_eps"),
            ("train.batch_size=0", "train.batch_size"),
            ("env.num_agents=1", "env.num_agents"),
            ("env.embed_dim=0", "env.embed_dim"),
            ("train.total_updates=-5", "train.total_updates"),
            ("ppo.gamma=1.5", "ppo.gamma"),
            ("ppo.input_dropout=1", "ppo.input_dropout"),
            ("ppo.input_dropout=-0.1", "ppo.input_dropout"),
            ("ppo.input_dropout=nan", "ppo.input_dropout"),
            ("train.device=tpu", "train.device"),
            ("env.kind=mystery", "env.kind"),
        ] {
            let e = set(&[kv]).expect_err(kv);
            assert!(e.to_string().contains(key), "{kv}: {e}");
        }
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let e =
            Config::from_toml_str("[ppo]\nlr_actor = 1e-3\nclip_eps = = 2\n", "x.toml").expect_err("syntax");
        let msg = e.to_string();
        assert!(msg.contains("x.toml") && msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn round_trips_through_toml() {
        let c = set(&["ppo.target_kl=0.02", "train.device=cuda:1", "ppo.input_dropout=0.2"]).expect("valid");
        let back = Config::from_toml_str(&c.to_toml_string(), "saved").expect("parse back");
        assert_eq!(c, back);
    }

    #[test]
    fn upstream_tables_load_check_their_keys_and_agents_and_round_trip() {
        let text = r#"
[env]
kind = "text"
corpus = "/nonexistent/prompts.jsonl"

[[env.agents]]
name = "cheap"

[[env.agents]]
name = "strong"

[serve.upstreams.cheap]
base_url = "http://127.0.0.1:8001/v1"
model = "small-model"

[serve.upstreams.strong]
base_url = "https://api.example.com/v1"
model = "big-model"
api_key_env = "STRONG_KEY"
timeout_s = 5
"#;
        let c = Config::from_toml_str(text, "up.toml").expect("valid upstreams");
        let u = &c.serve.upstreams["strong"];
        assert_eq!((u.model.as_str(), u.api_key_env.as_str(), u.timeout_s), ("big-model", "STRONG_KEY", 5.0));
        assert_eq!(c.serve.upstreams["cheap"].timeout_s, 60.0, "default timeout");
        let back = Config::from_toml_str(&c.to_toml_string(), "saved").expect("parse back");
        assert_eq!(c, back);

        // A mistyped key inside a table: named with the agent, with a suggestion and the line.
        let typo = text.replace("model = \"big-model\"", "modl = \"big-model\"");
        let e = Config::from_toml_str(&typo, "up.toml").expect_err("unknown key").to_string();
        assert!(e.contains("serve.upstreams.strong.modl") && e.contains("model"), "{e}");
        assert!(e.contains("up.toml") && e.contains("line 18"), "{e}");
        // A table for something that is not an agent.
        let stranger = text.replace("[serve.upstreams.cheap]", "[serve.upstreams.chep]");
        let e = Config::from_toml_str(&stranger, "up.toml").expect_err("not an agent").to_string();
        assert!(e.contains("serve.upstreams.chep") && e.contains("cheap, strong"), "{e}");
        // A value where a table belongs.
        let e = set(&["serve.upstreams.code=3"]).expect_err("not a table").to_string();
        assert!(e.contains("serve.upstreams.code") && e.contains("base_url"), "{e}");
        // --set reaches into the tables; the values are checked.
        let c = Config::from_toml_str(text, "up.toml").expect("valid");
        assert!(c.serve.upstreams.contains_key("cheap"));
        let e = set(&["serve.upstreams.x.base_url=\"nope\"", "serve.upstreams.x.model=\"m\""])
            .expect_err("bad URL")
            .to_string();
        assert!(e.contains("serve.upstreams.x.base_url"), "{e}");
        let ok =
            set(&["serve.upstreams.x.base_url=\"http://localhost:9/v1\"", "serve.upstreams.x.model=\"m\""])
                .expect("synthetic env: agent names are checked when the service starts");
        assert_eq!(ok.serve.upstreams["x"].base_url, "http://localhost:9/v1");
    }

    #[test]
    fn pipeline_stages_are_checked_and_their_keys_known() {
        let two = "env.stages=[{name=\"a\", agents=[{name=\"x\"}, {name=\"y\", cost=2.0}]}, \
                   {name=\"b\", agents=[{name=\"x\"}, {name=\"z\"}, {name=\"w\"}]}]";
        let c = set(&["env.kind=\"pipeline\"", two, "train.rollout_len=2"]).expect("two stages");
        assert_eq!(c.env.stage_sizes(), vec![2, 3]);
        assert_eq!(c.env.action_count(), 3);
        assert_eq!(c.env.num_stages(), 2);
        assert_eq!(c.env.stage_agents()[1], vec!["x", "z", "w"]);
        let err = |kv: &[&str]| set(kv).expect_err("must be refused").to_string();
        assert!(err(&["env.kind=\"pipeline\""]).contains("env.stages"));
        let e = err(&["env.kind=\"pipeline\"", "env.stages=[{name=\"a\", agents=[{name=\"x\"}]}]"]);
        assert!(e.contains("env.stages[0].agents") && e.contains("at least 2"), "{e}");
        let e = err(&["env.kind=\"pipeline\"", "env.stages=[{name=\"a\", agents=[{name=\"x\", price=1}]}]"]);
        assert!(e.contains("price"), "an unknown key inside a stage's agent is named: {e}");
        let e = err(&["env.kind=\"pipeline\"", two, "env.interaction=-1"]);
        assert!(e.contains("env.interaction"), "{e}");
        // A rollout that would cut episodes before their last stage (where the reward is).
        let e = err(&["env.kind=\"pipeline\"", two, "train.rollout_len=3"]);
        assert!(e.contains("train.rollout_len") && e.contains("multiple"), "{e}");
        // 17^3 = 4913 joint actions: too many to enumerate.
        let names: Vec<String> = (0..17).map(|i| format!("{{name=\"o{i}\"}}")).collect();
        let stage = |k: usize| format!("{{name=\"s{k}\", agents=[{}]}}", names.join(", "));
        let big = format!("env.stages=[{}, {}, {}]", stage(0), stage(1), stage(2));
        assert!(err(&["env.kind=\"pipeline\"", &big]).contains("4096"));
        // Every other env is one stage; the critic kinds parse.
        assert_eq!(Config::default().env.stage_sizes(), vec![4]);
        assert_eq!(set(&["model.critic=\"local\""]).expect("local").model.critic, CriticKind::Local);
        assert!(err(&["model.critic=\"global\""]).contains("centralized"));
    }

    #[test]
    fn conversation_keys_are_checked() {
        let base = [
            "env.kind=\"conversation\"",
            "env.corpus=\"c.jsonl\"",
            "env.agents=[{name=\"a\"}, {name=\"b\"}]",
            "train.rollout_len=16",
        ];
        let with = |extra: &str| {
            let mut v = base.to_vec();
            v.push(extra);
            set(&v)
        };
        let c = with("env.reward_at=\"end\"").expect("valid");
        assert_eq!((c.env.reward_at, c.env.turns), (RewardAt::End, 8));
        assert!(with("env.turns=0").expect_err("0 turns").to_string().contains("env.turns"));
        assert!(with("env.p_stay=1.5").expect_err("p_stay").to_string().contains("env.p_stay"));
        assert!(with("env.reward_at=\"never\"").is_err());
        assert!(
            with("env.turns=5")
                .expect_err("16 turns are not whole conversations of 5")
                .to_string()
                .contains("multiple")
        );
    }

    #[test]
    fn malformed_override_is_refused() {
        assert!(matches!(set(&["novalue"]), Err(ConfigError::BadOverride { .. })));
        assert!(matches!(set(&["a..b=1"]), Err(ConfigError::BadOverride { .. })));
        let e = set(&["ppo=3"]).expect_err("table replaced by value");
        assert!(e.to_string().contains("ppo"), "{e}");
    }
}

#[cfg(test)]
mod shipped_configs {
    use super::*;

    fn shipped(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs").join(name)
    }

    #[test]
    fn default_toml_is_the_builtin_default() {
        let c = Config::load(Some(&shipped("default.toml")), &[]).expect("configs/default.toml");
        assert_eq!(c, Config::default());
    }

    #[test]
    fn the_episode_configs_load_as_documented() {
        let p = Config::load(Some(&shipped("pipeline.toml")), &[]).expect("configs/pipeline.toml");
        assert_eq!((p.env.kind, p.env.stage_sizes()), (EnvKind::Pipeline, vec![4, 4, 4]));
        assert_eq!((p.model.critic, p.train.rollout_len), (CriticKind::Centralized, 3));
        assert!(p.env.interaction > 0.0);
        let c = Config::load(Some(&shipped("conversation-clinc150.toml")), &[]).expect("conversation");
        assert_eq!(c.env.kind, EnvKind::Conversation);
        assert_eq!((c.env.turns, c.env.p_stay, c.env.continuity_bonus), (8, 0.8, 1.2));
        assert_eq!((c.env.reward_at, c.train.rollout_len, c.env.agents.len()), (RewardAt::End, 8, 10));
        let k = Config::load(Some(&shipped("cascade-gsm8k.toml")), &[]).expect("cascade");
        assert_eq!((k.env.kind, k.env.stage_sizes()), (EnvKind::Cascade, vec![2, 2]));
        assert!(k.env.cost_input());
    }

    #[test]
    fn seed_toml_keeps_the_seeds_values() {
        let c = Config::load(Some(&shipped("seed.toml")), &[]).expect("configs/seed.toml");
        assert_eq!(c.ppo.lr_actor, 3e-4);
        assert_eq!(c.ppo.lr_critic, 1e-3);
        assert_eq!(c.ppo.adam_eps, 1e-8);
        assert!(!c.ppo.anneal_lr);
        assert_eq!(c.model.init_gain_policy, std::f64::consts::SQRT_2);
        assert_eq!(c.train.total_updates, 2000);
    }
}
