//! A two-stage decision written outside mappo, trained with mappo-train's PPO over episodes.
//! Usage: `two-stage [RUN_DIR]`.
//!
//! Each request is a point x in [−1, 1]². Stage 1 picks a tool (`search` or `calculator`),
//! stage 2 an answerer (`fast` or `careful`) and sees which tool was picked. The reward, paid
//! once after stage 2, is the quality of the pair for that request:
//!
//! - `search` suits requests with x₀ > 0, `calculator` the others (+0.5 when it fits);
//! - `careful` is worth +1 only after the fitting tool, and costs 0.3; `fast` is free.
//!
//! So the answerer's best choice depends on the tool's, and the tool's pays off mostly through
//! the answerer: the stages are learned together, with GAE over the two steps.
use std::error::Error;

use mappo_train::candle_core::{Device, Tensor};
use mappo_train::config::{CriticKind, ModelConfig, PpoConfig, Rng};
use mappo_train::env::{Env, EnvError, EnvSpec, EpisodeReference, ReferenceReturns, Step};
use mappo_train::nn::{ActorCritic, NetworkLayout};
use mappo_train::{EpisodeEvaluator, RunOptions, TrainSettings, Trainer};

/// Observation: x (2) ⊕ one-hot of the tool chosen (2, zeros at stage 1) ⊕ one-hot stage (2).
const OBS: usize = 6;

struct TwoStage { batch: usize, x: Vec<[f32; 2]>, tool: Vec<u32>, stage: usize }

impl TwoStage {
    fn new(batch: usize) -> Self { Self { batch, x: vec![[0.0; 2]; batch], tool: vec![0; batch], stage: 0 } }

    fn reward(x: [f32; 2], tool: u32, answerer: u32) -> f32 {
        let fits = (tool == 0) == (x[0] > 0.0);
        let mut r = if fits { 0.5 } else { 0.0 };
        if answerer == 1 {
            r += if fits { 1.0 } else { 0.0 } - 0.3;
        }
        r
    }

    fn obs(&self) -> Result<Tensor, EnvError> {
        let mut v = Vec::with_capacity(self.batch * OBS);
        for (row, x) in self.x.iter().enumerate() {
            v.extend_from_slice(x);
            let mut tool = [0.0f32; 2];
            if self.stage == 1 {
                tool[self.tool[row] as usize] = 1.0;
            }
            v.extend_from_slice(&tool);
            v.extend_from_slice(if self.stage == 0 { &[1.0, 0.0] } else { &[0.0, 1.0] });
        }
        Ok(Tensor::from_vec(v, (self.batch, OBS), &Device::Cpu)?)
    }
}

impl Env for TwoStage {
    fn kind(&self) -> &str { "two-stage" }
    fn spec(&self) -> EnvSpec { EnvSpec { obs_dim: OBS, num_actions: 2, num_envs: self.batch } }
    fn device(&self) -> &Device { &Device::Cpu }
    fn reset(&mut self, rng: &mut Rng) -> Result<Tensor, EnvError> {
        for x in &mut self.x {
            *x = [2.0 * rng.uniform() as f32 - 1.0, 2.0 * rng.uniform() as f32 - 1.0];
        }
        self.stage = 0;
        self.obs()
    }
    fn step(&mut self, actions: &[u32], _rng: &mut Rng) -> Result<Step, EnvError> {
        mappo_train::env::check_actions(true, actions, self.batch, 2)?;
        if self.stage == 0 {
            self.tool = actions.to_vec();
            self.stage = 1;
            let n = self.batch;
            return Ok(Step { reward: vec![0.0; n], done: vec![false; n], truncated: vec![false; n],
                             next_obs: Some(self.obs()?), final_obs: None });
        }
        let reward = (0..self.batch).map(|r| Self::reward(self.x[r], self.tool[r], actions[r])).collect();
        Ok(Step::all_done(reward))
    }
}

impl EpisodeReference for TwoStage {
    /// By enumerating the four joint choices of each request.
    fn reference_returns(&self) -> ReferenceReturns {
        let n = self.batch as f64;
        let (mut best, mut mean) = (Vec::new(), 0.0);
        for &x in &self.x {
            let all: Vec<f64> = (0..4).map(|j| f64::from(Self::reward(x, j / 2, j % 2))).collect();
            best.push(all.iter().cloned().fold(f64::MIN, f64::max));
            mean += all.iter().sum::<f64>() / 4.0;
        }
        ReferenceReturns { optimal: best.iter().sum::<f64>() / n, random: mean / n, row_optimal: Some(best),
                           ..ReferenceReturns::default() }
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let run_dir = std::env::args().nth(1).unwrap_or_else(|| "runs/two-stage".into());
    let model = ModelConfig { critic: CriticKind::Centralized, ..ModelConfig::default() };
    // One policy head per stage (2 options each), the stage one-hot in columns 4..6.
    let layout = NetworkLayout { stage_sizes: vec![2, 2], stage_columns: Some(4..6), critic: model.critic,
                                 local_columns: vec![0, 1, 4, 5] };
    let policy = ActorCritic::with_layout(OBS, &layout, &model, &mut Rng::new(1), &Device::Cpu)?;
    let ppo = PpoConfig { gamma: 1.0, lr_actor: 1e-3, entropy_coef: 0.05, ..PpoConfig::default() };
    // One episode (two steps) per row per update.
    let settings = TrainSettings { total_updates: 300, rollout_len: 2, seed: 7 };
    let mut trainer = Trainer::new(ppo, settings, TwoStage::new(256), policy)?;
    let evaluator = EpisodeEvaluator::new(TwoStage::new(2000), 11);
    let summary = trainer.run(RunOptions::new(&run_dir).force(true))?;
    let report = evaluator.report(trainer.policy())?;
    println!("mean_return {:.4}", report.mean_return);
    println!("optimal_return {:.4}", report.optimal_return);
    println!("random_return {:.4}", report.random_return);
    println!("normalized_return {:.4}", report.normalized_return);
    println!("checkpoint {}", summary.final_checkpoint.display());
    Ok(())
}
