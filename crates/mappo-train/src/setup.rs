//! Ready-made setups: the device from its config string, the synthetic
//! environment with its trainer and evaluator, policies from checkpoints.

use std::path::Path;

use candle_core::Device;
use mappo_config::{Config, Rng};
use mappo_env::{Env, SyntheticEnv};
use mappo_nn::ActorCritic;

use crate::{Checkpoint, EvalReport, GreedyEvaluator, TrainError, Trainer, load_policy_weights};

/// Resolves `cpu`, `auto`, `cuda` or `cuda:N` to a device, with a sentence
/// saying which was chosen and why.
pub fn select_device(spec: &str) -> Result<(Device, String), TrainError> {
    let cuda = |n: usize| {
        Device::new_cuda(n).map_err(|e| TrainError::Device { spec: spec.into(), reason: e.to_string() })
    };
    match spec {
        "cpu" => Ok((Device::Cpu, "cpu: as configured".into())),
        "auto" => {
            if !candle_core::utils::cuda_is_available() {
                return Ok((Device::Cpu, "cpu: this binary was built without the `cuda` feature".into()));
            }
            match Device::new_cuda(0) {
                Ok(d) => Ok((d, "cuda:0: built with `cuda` and a GPU answered".into())),
                Err(e) => Ok((Device::Cpu, format!("cpu: built with `cuda` but no GPU answered ({e})"))),
            }
        }
        "cuda" => Ok((cuda(0)?, "cuda:0: as configured".into())),
        s => {
            let n = s.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()).ok_or_else(|| {
                TrainError::Device { spec: s.into(), reason: "expected auto, cpu, cuda or cuda:N".into() }
            })?;
            Ok((cuda(n)?, format!("cuda:{n}: as configured")))
        }
    }
}

/// The synthetic router: trainer (env of `batch_size` prompts and a fresh
/// policy) and a greedy evaluator over `eval_prompts` fixed prompts.
#[derive(Debug)]
pub struct SyntheticSetup {
    /// The trainer at update 0.
    pub trainer: Trainer<SyntheticEnv, ActorCritic>,
    /// Fixed evaluation prompts (same agents as the training env).
    pub evaluator: GreedyEvaluator,
}

impl SyntheticSetup {
    /// Builds everything from the config, on the configured device.
    pub fn new(cfg: &Config) -> Result<Self, TrainError> {
        let (device, _) = select_device(&cfg.train.device)?;
        Self::on(cfg, &device)
    }

    /// Builds everything on `device`.
    pub fn on(cfg: &Config, device: &Device) -> Result<Self, TrainError> {
        let env = SyntheticEnv::new(&cfg.env, cfg.train.batch_size, cfg.train.seed, device);
        let policy = new_policy(cfg, &env, device)?;
        let mut eval_env = SyntheticEnv::new(&cfg.env, cfg.train.eval_prompts, cfg.train.seed, device);
        let evaluator =
            GreedyEvaluator::new(&mut eval_env, &mut Rng::derived(cfg.train.seed, "periodic-eval"))?;
        Ok(Self { trainer: Trainer::new(cfg.clone(), env, policy)?, evaluator })
    }
}

fn new_policy<E: Env>(cfg: &Config, env: &E, device: &Device) -> Result<ActorCritic, TrainError> {
    let spec = env.spec();
    let mut rng = Rng::derived(cfg.train.seed, "init");
    Ok(ActorCritic::new(spec.obs_dim, spec.num_actions, &cfg.model, &mut rng, device)?)
}

/// Rebuilds the policy stored in a checkpoint (the model shape comes from
/// the checkpoint's own config).
pub fn load_checkpoint_policy(
    ckpt: &Checkpoint,
    path: &Path,
    obs_dim: usize,
    device: &Device,
) -> Result<ActorCritic, TrainError> {
    let cfg = &ckpt.config;
    let policy = ActorCritic::new(obs_dim, cfg.env.action_count(), &cfg.model, &mut Rng::new(0), device)?;
    load_policy_weights(&policy, ckpt, path)?;
    Ok(policy)
}

/// Greedy evaluation of a synthetic-env checkpoint on `episodes` fresh
/// prompts (drawn from `eval_seed`; the agents come from the run's seed).
pub fn evaluate_checkpoint_synthetic(
    path: &Path,
    episodes: usize,
    eval_seed: u64,
    device: &Device,
) -> Result<EvalReport, TrainError> {
    let ckpt = Checkpoint::load(path, device)?;
    let cfg = &ckpt.config;
    let mut env = SyntheticEnv::new(&cfg.env, episodes.max(1), cfg.train.seed, device);
    let policy = load_checkpoint_policy(&ckpt, path, cfg.env.embed_dim, device)?;
    let evaluator = GreedyEvaluator::new(&mut env, &mut Rng::derived(eval_seed, "fresh-eval"))?;
    evaluator.evaluate(&policy)
}
