//! Routing prompts through a `pipeline` checkpoint's stages ([`PipelineRouter`], `mappo route`).
//!
//! A pipeline routes prompt vectors, not texts: the env's own prompts (drawn as `mappo eval`
//! draws them) or vectors given by the caller. Every stage's row is laid out by
//! [`RoutingPolicy::step_row`] (the layout the training env uses), each stage greedy (the most
//! probable option), and the env — which knows every prompt's expected rewards — scores the
//! joint choice beside the best joint action.

use std::path::Path;

use candle_core::Device;
use mappo_config::{Config, EnvKind, Rng};
use mappo_env::PipelineEnv;
use mappo_train::{Checkpoint, RoutingPolicy};

use crate::EvalError;

/// Prompts routed per forward pass.
const CHUNK: usize = 4096;

/// One stage's decision for one prompt.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageChoice {
    /// The stage's name (`[[env.stages]]`'s `name`).
    pub stage: String,
    /// The chosen option's name.
    pub agent: String,
    /// The chosen option's index within the stage.
    pub agent_index: usize,
    /// π over the stage's options, in their order (summing to 1).
    pub probabilities: Vec<f32>,
}

/// A prompt routed through every stage of a pipeline.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PipelineRoute {
    /// The prompt's index among those routed (0-based).
    pub prompt: usize,
    /// Every stage's decision, in the pipeline's order.
    pub stages: Vec<StageChoice>,
    /// The noise-free team reward of the chosen joint action.
    pub expected_reward: f64,
    /// The best noise-free team reward of any joint action (by enumeration).
    pub optimal_reward: f64,
    /// The options of that best joint action, one per stage.
    pub optimal_agents: Vec<String>,
}

/// A `pipeline` checkpoint's policy with its env's config: routes prompt vectors through the
/// stages in order, each stage seeing the earlier stages' choices.
#[derive(Debug)]
pub struct PipelineRouter {
    policy: RoutingPolicy,
    config: Config,
    device: Device,
}

impl PipelineRouter {
    /// Loads a `pipeline` checkpoint file.
    pub fn load(ckpt_path: &Path, device: &Device) -> Result<Self, EvalError> {
        Self::from_checkpoint(&Checkpoint::load(ckpt_path, device)?, device)
    }

    /// The router of a loaded `pipeline` checkpoint.
    pub fn from_checkpoint(ckpt: &Checkpoint, device: &Device) -> Result<Self, EvalError> {
        crate::episodes::expect_kind(ckpt, EnvKind::Pipeline)?;
        let policy = RoutingPolicy::from_checkpoint(ckpt, device)?;
        Ok(Self { policy, config: ckpt.config.clone(), device: device.clone() })
    }

    /// The width of a prompt vector (`env.embed_dim`).
    pub fn embed_dim(&self) -> usize {
        self.config.env.embed_dim
    }

    /// The policy it routes with.
    pub fn policy(&self) -> &RoutingPolicy {
        &self.policy
    }

    /// The env of the checkpoint's run with `n` rows: the same options and interaction tables,
    /// noise-free.
    fn env(&self, n: usize) -> Result<PipelineEnv, EvalError> {
        Ok(PipelineEnv::new(&self.config.env, n, self.config.train.seed, &self.device)?.noise_free())
    }

    /// Routes `samples` fresh prompts drawn from the env's own generator with the stream
    /// `fresh-eval` of `seed`: the prompts [`evaluate_pipeline`](crate::evaluate_pipeline) scores
    /// for the same `samples` and `seed`.
    pub fn route_samples(&self, samples: usize, seed: u64) -> Result<Vec<PipelineRoute>, EvalError> {
        if samples == 0 {
            return Ok(Vec::new());
        }
        let mut env = self.env(samples)?;
        mappo_env::Env::reset(&mut env, &mut Rng::derived(seed, "fresh-eval"))?;
        self.route_env(&env, 0)
    }

    /// Routes the given prompt vectors (row-major, [`embed_dim`](Self::embed_dim) values each;
    /// each L2-normalised, as the env's prompts are), numbering them from `first`.
    pub fn route_prompts(&self, prompts: &[f32], first: usize) -> Result<Vec<PipelineRoute>, EvalError> {
        let dim = self.embed_dim();
        if dim == 0 || !prompts.len().is_multiple_of(dim) {
            return Err(EvalError::Setup(format!(
                "{} values are not whole prompts of {dim} (env.embed_dim)",
                prompts.len()
            )));
        }
        let n = prompts.len() / dim;
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut env = self.env(n)?;
        env.reset_with_prompts(prompts)?;
        self.route_env(&env, first)
    }

    /// Routes the env's current prompts through every stage (greedy), scored by the env.
    fn route_env(&self, env: &PipelineEnv, first: usize) -> Result<Vec<PipelineRoute>, EvalError> {
        let p = &self.policy;
        let dim = self.embed_dim();
        let prompts: Vec<&[f32]> = env.prompts().chunks(dim.max(1)).collect();
        let stages = p.stage_agents().len();
        let mut choices: Vec<Vec<StageChoice>> = vec![Vec::with_capacity(stages); prompts.len()];
        let mut earlier: Vec<Vec<u32>> = vec![Vec::with_capacity(stages); prompts.len()];
        for stage in 0..stages {
            for start in (0..prompts.len()).step_by(CHUNK) {
                let end = (start + CHUNK).min(prompts.len());
                let mut rows = Vec::with_capacity((end - start) * p.spec().width());
                for (x, e) in prompts[start..end].iter().zip(&earlier[start..end]) {
                    rows.extend(p.step_row(x, 0.0, e, None)?);
                }
                let before: Vec<&[u32]> = earlier[start..end].iter().map(Vec::as_slice).collect();
                let probs = p.step_probabilities(rows, &before)?;
                for (i, probabilities) in (start..end).zip(probs) {
                    let a = mappo_env::argmax(&probabilities);
                    choices[i].push(StageChoice {
                        stage: p.stage_names().get(stage).cloned().unwrap_or_default(),
                        agent: p.stage_agents()[stage].get(a).cloned().unwrap_or_default(),
                        agent_index: a,
                        probabilities,
                    });
                    earlier[i].push(a as u32);
                }
            }
        }
        let name = |k: usize, a: u32| p.stage_agents()[k].get(a as usize).cloned().unwrap_or_default();
        Ok(choices
            .into_iter()
            .zip(&earlier)
            .enumerate()
            .map(|(row, (stages, chosen))| {
                let (best, optimal) = env.optimal_joint(row);
                PipelineRoute {
                    prompt: first + row,
                    stages,
                    expected_reward: f64::from(env.expected_return(row, chosen)),
                    optimal_reward: f64::from(optimal),
                    optimal_agents: best.iter().enumerate().map(|(k, &a)| name(k, a)).collect(),
                }
            })
            .collect())
    }
}
