//! The pipeline's acceptance table: the stages trained jointly (GAE over the stages, the
//! critic of the config) beside the same decisions spent on
//! - the local (IPPO) critic,
//! - `ppo.gamma = 0` (each stage myopic: it learns from the reward of its own step, which is 0
//!   before the last),
//! - independent per-stage routers, each a one-step router trained on its own stage's term
//!   (blind to the interactions), their greedy choices combined,
//! - one flat head over all joint actions (one decision per prompt, three times the prompts),
//!
//! each over several seeds, evaluated noise-free on 10,000 fresh prompts (stream `fresh-eval` of
//! seed 2024, as `mappo eval` does): normalized return = (mean − random) / (optimal − random).
//!
//! `cargo run --release -p mappo-eval --example pipeline_baselines -- configs/pipeline.toml [SEEDS]`
//! (SEEDS: comma-separated, default 42,1,2). Prints one JSON line per run, then a summary table.

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;
use mappo_config::{Config, Rng};
use mappo_env::{Env, EpisodeReference, PipelineEnv, PipelineMode};
use mappo_nn::ActorCritic;
use mappo_train::{Trainer, evaluate_episodes, greedy_actions};

const EVAL_PROMPTS: usize = 10_000;

fn fresh(cfg: &Config, mode: PipelineMode) -> Result<PipelineEnv> {
    Ok(PipelineEnv::new(&cfg.env, EVAL_PROMPTS, cfg.train.seed, &Device::Cpu)?
        .noise_free()
        .with_mode(mode)?)
}

fn eval_rng() -> Rng {
    Rng::derived(2024, "fresh-eval")
}

/// Trains the staged env with `cfg` for its `total_updates`; the normalized return.
fn joint(cfg: &Config) -> Result<f64> {
    let env = PipelineEnv::new(&cfg.env, cfg.train.batch_size, cfg.train.seed, &Device::Cpu)?;
    let layout = mappo_env::ObservationSpec::for_env(&cfg.env, cfg.env.embed_dim);
    let net = ActorCritic::with_layout(
        layout.width(),
        &mappo_train::network_layout(cfg, &layout),
        &cfg.model,
        &mut Rng::derived(cfg.train.seed, "init"),
        &Device::Cpu,
    )?;
    let mut trainer = Trainer::from_config(cfg.clone(), env, net)?;
    for _ in 0..cfg.train.total_updates {
        trainer.step()?;
    }
    let mut env = fresh(cfg, PipelineMode::Staged)?;
    Ok(evaluate_episodes(&mut env, trainer.policy(), &mut eval_rng())?.normalized_return)
}

/// A one-step router on `mode` with `batch` rows per update; its greedy choices on the fresh
/// prompts, one per prompt.
fn one_step(cfg: &Config, mode: PipelineMode, batch: usize, stream: &str) -> Result<Vec<u32>> {
    let env = PipelineEnv::new(&cfg.env, batch, cfg.train.seed, &Device::Cpu)?.with_mode(mode)?;
    let spec = env.spec();
    let mut c = cfg.clone();
    c.train.batch_size = batch;
    c.train.rollout_len = 1;
    c.model.critic = mappo_config::CriticKind::Shared;
    // A one-step view of the pipeline: checked as the one-step env it is (a pipeline config
    // asks for whole three-step episodes per rollout).
    c.env.kind = mappo_config::EnvKind::Synthetic;
    let net = ActorCritic::new(
        spec.obs_dim,
        spec.num_actions,
        &c.model,
        &mut Rng::derived(cfg.train.seed, stream),
        &Device::Cpu,
    )?;
    let mut trainer = Trainer::from_config(c.clone(), env, net)?;
    for _ in 0..c.train.total_updates {
        trainer.step()?;
    }
    let mut env = fresh(cfg, mode)?;
    let obs = env.reset(&mut eval_rng())?;
    Ok(greedy_actions(trainer.policy(), &obs)?)
}

/// The normalized return of joint choices (one per stage per prompt) on the fresh prompts.
fn score(cfg: &Config, choices: impl Fn(usize) -> Vec<u32>) -> Result<f64> {
    let mut env = fresh(cfg, PipelineMode::Staged)?;
    env.reset(&mut eval_rng())?;
    let r = env.reference_returns();
    let mean = (0..EVAL_PROMPTS).map(|row| f64::from(env.expected_return(row, &choices(row)))).sum::<f64>()
        / EVAL_PROMPTS as f64;
    Ok((mean - r.random) / (r.optimal - r.random))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let file = args.first().context("usage: pipeline_baselines CONFIG.toml [SEEDS]")?;
    let seeds: Vec<u64> = args
        .get(1)
        .map(String::as_str)
        .unwrap_or("42,1,2")
        .split(',')
        .map(|s| s.trim().parse().with_context(|| format!("seed `{s}`")))
        .collect::<Result<_>>()?;
    let base = Config::load(Some(std::path::Path::new(file)), &["train.device=\"cpu\"".into()])?;
    let k = base.env.stages.len();
    let variants = ["centralized", "local", "gamma0", "independent", "flat"];
    let mut table: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for &seed in &seeds {
        let mut cfg = base.clone();
        cfg.train.seed = seed;
        for (v, name) in variants.iter().enumerate() {
            let start = Instant::now();
            let normalized = match *name {
                "centralized" => {
                    let mut c = cfg.clone();
                    c.model.critic = mappo_config::CriticKind::Centralized;
                    joint(&c)?
                }
                "local" => {
                    let mut c = cfg.clone();
                    c.model.critic = mappo_config::CriticKind::Local;
                    joint(&c)?
                }
                "gamma0" => {
                    let mut c = cfg.clone();
                    c.ppo.gamma = 0.0;
                    joint(&c)?
                }
                "independent" => {
                    let mut per_stage = Vec::new();
                    for s in 0..k {
                        per_stage.push(one_step(
                            &cfg,
                            PipelineMode::Stage(s),
                            cfg.train.batch_size,
                            &format!("init-{s}"),
                        )?);
                    }
                    score(&cfg, |row| per_stage.iter().map(|c| c[row]).collect())?
                }
                _ => {
                    let flat = one_step(&cfg, PipelineMode::Flat, cfg.train.batch_size * k, "init")?;
                    let env = fresh(&cfg, PipelineMode::Flat)?;
                    score(&cfg, |row| env.decode(flat[row] as usize))?
                }
            };
            table[v].push(normalized);
            println!(
                "{}",
                serde_json::json!({"variant": name, "seed": seed, "normalized_return": normalized,
                                   "seconds": start.elapsed().as_secs_f64()})
            );
        }
    }
    println!("\n{:<12} {:>8} {:>8} {:>8}   per seed", "variant", "mean", "min", "max");
    for (name, xs) in variants.iter().zip(&table) {
        let mean = xs.iter().sum::<f64>() / xs.len().max(1) as f64;
        let (lo, hi) = xs.iter().fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        let per: Vec<String> = xs.iter().map(|x| format!("{x:.4}")).collect();
        println!("{name:<12} {mean:>8.4} {lo:>8.4} {hi:>8.4}   {}", per.join(" "));
    }
    Ok(())
}
