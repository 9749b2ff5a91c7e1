//! Environments for mappo: where prompts come from and what routing them earns.
//!
//! Every environment is *batched*: it holds `num_envs` independent episodes
//! and [`Env::reset`] / [`Env::step`] act on all of them at once, so the
//! trainer runs one forward pass per step for the whole batch.
//!
//! * [`Env`] — the trait the trainer calls: observations as a `[num_envs, obs_dim]`
//!   tensor on the environment's device, rewards and `done` / `truncated` flags
//!   per row. One-step episodes (a prompt is routed once) and multi-step
//!   episodes (multi-turn conversations) use the same trait.
//! * [`KnownRewards`] — environments that know every action's expected reward
//!   expose it, so evaluation can report oracle and random baselines.
//! * [`SyntheticEnv`] — the seed's cosine-similarity router, batched.
//! * [`DatasetEnv`] — a bandit over fixed observation rows with known rewards.
//! * [`ConversationEnv`] — multi-turn conversations over a labelled corpus (episodes of T
//!   turns, a sticky chain of topics, a bonus for keeping the agent).
//! * [`CascadeEnv`] — try a cheaper agent, see its answer, accept or escalate (episodes of one or
//!   two decisions over an outcome corpus with answers).
//! * [`PipelineEnv`] — the synthetic env grown to K stages with one team reward (episodes of
//!   K decisions); [`EpisodeReference`] — multi-step envs that know their optimal and random
//!   returns, so that evaluation reports a normalized return.
//! * [`ObservationSpec`] — the layout of a routing policy's input row (the embedding, then λ
//!   for a cost-aware router): the one place that assembles policy inputs.
//! * `text` (cargo feature `text`, default) — the real-text env: a corpus embedded with
//!   all-MiniLM-L6-v2 ([`mappo_embed`], re-exported as `embed`), cached, with its reward
//!   models. Without the feature this crate compiles no tokenizer and no BERT.

mod cascade;
mod conversation;
mod dataset;
mod observation;
mod pipeline;
mod synthetic;
#[cfg(feature = "text")]
pub mod text;

use candle_core::{Device, Tensor};
use thiserror::Error;

pub use cascade::{CascadeData, CascadeEnv, CascadeRules};
pub use conversation::{ConversationEnv, Dynamics};
pub use dataset::DatasetEnv;
pub use mappo_config::Rng;
#[cfg(feature = "text")]
pub use mappo_embed as embed;
pub use observation::{Column, ObservationSpec, RowExtras};
pub use pipeline::{PipelineEnv, PipelineMode};
pub use synthetic::SyntheticEnv;
#[cfg(feature = "text")]
pub use text::{Prompt, load_corpus};

/// Sizes of an environment's observation and action spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvSpec {
    /// Width of one observation row.
    pub obs_dim: usize,
    /// Number of discrete actions (agents).
    pub num_actions: usize,
    /// Number of episodes stepped together (rows of every tensor).
    pub num_envs: usize,
}

/// What one batched step returns.
#[derive(Debug, Clone)]
pub struct Step {
    /// Reward of each row's chosen action.
    pub reward: Vec<f32>,
    /// The episode ended in a terminal state (no bootstrapping).
    pub done: Vec<bool>,
    /// The episode was cut short (e.g. a turn limit): its return is
    /// bootstrapped from the value of `final_obs`.
    pub truncated: Vec<bool>,
    /// The next observation of every row, rows whose episode ended already
    /// reset; `None` when every row's episode ended (call [`Env::reset`]).
    pub next_obs: Option<Tensor>,
    /// For truncated rows, the observation they ended in (`[num_envs, obs_dim]`,
    /// other rows unspecified); `None` when no row was truncated.
    pub final_obs: Option<Tensor>,
}

impl Step {
    /// A step that ends every row's episode (one-step bandit episodes).
    pub fn all_done(reward: Vec<f32>) -> Self {
        let n = reward.len();
        Self { reward, done: vec![true; n], truncated: vec![false; n], next_obs: None, final_obs: None }
    }
}

/// A batched environment.
pub trait Env {
    /// A short name of this kind of environment, recorded in checkpoints so
    /// that a checkpoint is never resumed or evaluated on another kind
    /// (`synthetic` and `text` are mappo's own; pick your own for yours).
    fn kind(&self) -> &str {
        "custom"
    }
    /// The environment's sizes.
    fn spec(&self) -> EnvSpec;
    /// The device its observation tensors live on.
    fn device(&self) -> &Device;
    /// Starts a new episode in every row and returns the observations.
    fn reset(&mut self, rng: &mut Rng) -> Result<Tensor, EnvError>;
    /// Applies one action per row (`actions.len() == num_envs`).
    fn step(&mut self, actions: &[u32], rng: &mut Rng) -> Result<Step, EnvError>;
    /// State that must survive a checkpoint (e.g. the position in a data
    /// stream). The trainer resets every update, so most environments have none.
    fn state(&self) -> Vec<u64> {
        Vec::new()
    }
    /// Restores what [`Env::state`] returned.
    fn restore_state(&mut self, state: &[u64]) -> Result<(), EnvError> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(EnvError::Setup(format!("this environment keeps no state, got {state:?}")))
        }
    }
}

/// Environments that know the expected (noise-free) reward of every action for
/// the current observations: enables oracle and random baselines.
pub trait KnownRewards: Env {
    /// Row-major `[num_envs, num_actions]` expected rewards for the current observations.
    fn expected_rewards(&self) -> Vec<f32>;

    /// The best action of each row (ties go to the lowest index).
    fn oracle_actions(&self) -> Vec<u32> {
        let r = self.expected_rewards();
        let a = self.spec().num_actions.max(1);
        r.chunks(a).map(|row| argmax(row) as u32).collect()
    }
}

/// The reference returns of the episodes begun by the last [`Env::reset`], noise-free: what a
/// multi-step env's evaluation compares a policy's return with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReferenceReturns {
    /// Mean return of the best policy that knows what the env knows (the optimum).
    pub optimal: f64,
    /// Mean return of choosing uniformly at random at every step.
    pub random: f64,
    /// Mean return of the myopic oracle (best immediate reward with the true state), where the
    /// env defines one.
    pub myopic: Option<f64>,
    /// Each episode's own optimum, where one is defined per episode (the pipeline's).
    pub row_optimal: Option<Vec<f64>>,
    /// The pipeline's share of prompts whose per-stage best choice (blind to interactions) is
    /// not the joint optimum.
    pub stagewise_not_optimal: Option<f64>,
}

/// Multi-step environments that know their reference returns (optimal, random, ...).
pub trait EpisodeReference: Env {
    /// The reference returns of the episodes begun by the last reset.
    fn reference_returns(&self) -> ReferenceReturns;
}

/// The checks every bandit step makes: the env was reset (`ready`), one action per row, every
/// action in range.
pub fn check_actions(
    ready: bool,
    actions: &[u32],
    num_envs: usize,
    num_actions: usize,
) -> Result<(), EnvError> {
    if !ready {
        return Err(EnvError::NotReset);
    }
    if actions.len() != num_envs {
        return Err(EnvError::ActionCount { expected: num_envs, got: actions.len() });
    }
    match actions.iter().position(|&a| a as usize >= num_actions) {
        Some(row) => Err(EnvError::BadAction { row, action: actions[row], num_actions }),
        None => Ok(()),
    }
}

/// Index of the largest element (first on ties; 0 for an empty slice).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Errors of environments.
#[derive(Debug, Error)]
pub enum EnvError {
    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// The number of actions does not match the number of rows.
    #[error("expected {expected} actions (one per row), got {got}")]
    ActionCount {
        /// Rows.
        expected: usize,
        /// Actions given.
        got: usize,
    },
    /// An action index out of range.
    #[error("action {action} in row {row} is out of range: there are {num_actions} agents")]
    BadAction {
        /// The row.
        row: usize,
        /// The action.
        action: u32,
        /// Number of actions.
        num_actions: usize,
    },
    /// `step` was called before `reset`.
    #[error("step called before reset")]
    NotReset,
    /// A corpus file cannot be used.
    #[error("corpus {path}{}: {problem}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Corpus {
        /// The file.
        path: String,
        /// 1-based line, when the problem is on one.
        line: Option<usize>,
        /// What is wrong.
        problem: String,
    },
    /// The embedder failed (model files, tokenizer, ...).
    #[cfg(feature = "text")]
    #[error(transparent)]
    Embed(Box<mappo_embed::EmbedError>),
    /// The pieces given do not fit together.
    #[error("{0}")]
    Setup(String),
    /// Any other failure of an environment written outside mappo.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

#[cfg(feature = "text")]
impl From<mappo_embed::EmbedError> for EnvError {
    fn from(e: mappo_embed::EmbedError) -> Self {
        EnvError::Embed(Box::new(e))
    }
}
