//! Greedy (argmax) evaluation against an environment that knows every
//! action's expected reward.

use candle_core::Tensor;
use mappo_env::{KnownRewards, Rng};
use mappo_nn::{Policy, sample_actions};
use serde::Serialize;

use crate::TrainError;

/// The greedy (most probable) action of every row of `obs`: what a trained
/// router does (Stable-Baselines3's `predict(obs, deterministic=True)`).
pub fn greedy_actions<P: Policy + ?Sized>(policy: &P, obs: &Tensor) -> Result<Vec<u32>, TrainError> {
    let out = policy.forward(obs)?;
    // Greedy selection draws no random number: the RNG is a formality.
    Ok(sample_actions(&out.logits.detach(), &mut Rng::new(0), true)?.actions)
}

/// What a greedy evaluation measured.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalReport {
    /// Prompts evaluated.
    pub n: usize,
    /// Mean expected (noise-free) reward of the greedy choices.
    pub mean_reward: f64,
    /// Mean reward of always choosing the best agent.
    pub oracle_reward: f64,
    /// Mean reward of choosing uniformly at random.
    pub random_reward: f64,
    /// `(mean − random) / (oracle − random)`: 0 = random, 1 = oracle.
    pub normalized_reward: f64,
    /// Share of prompts whose greedy choice is the oracle's.
    pub oracle_agreement: f64,
}

/// A fixed set of observations with their expected rewards, drawn once so
/// that periodic evaluations are comparable.
#[derive(Debug)]
pub struct GreedyEvaluator {
    obs: Tensor,
    expected: Vec<f32>,
    num_actions: usize,
}

impl GreedyEvaluator {
    /// Resets `env` once with `rng` and keeps its observations.
    pub fn new<E: KnownRewards>(env: &mut E, rng: &mut Rng) -> Result<Self, TrainError> {
        let obs = env.reset(rng)?;
        Ok(Self { obs, expected: env.expected_rewards(), num_actions: env.spec().num_actions })
    }

    /// An evaluator over given observations (`[n, obs_dim]`) and their
    /// row-major `[n, num_actions]` expected rewards.
    pub fn from_parts(obs: Tensor, expected: Vec<f32>, num_actions: usize) -> Self {
        Self { obs, expected, num_actions }
    }

    /// Number of observations.
    pub fn len(&self) -> usize {
        self.expected.len() / self.num_actions.max(1)
    }

    /// True when there is nothing to evaluate.
    pub fn is_empty(&self) -> bool {
        self.expected.is_empty()
    }

    /// Evaluates `policy` greedily.
    pub fn evaluate<P: Policy + ?Sized>(&self, policy: &P) -> Result<EvalReport, TrainError> {
        let greedy = greedy_actions(policy, &self.obs)?;
        let a = self.num_actions;
        let n = self.len();
        let (mut mean, mut oracle, mut random, mut agree) = (0f64, 0f64, 0f64, 0usize);
        for (row, &act) in self.expected.chunks(a).zip(&greedy) {
            let best = mappo_env::argmax(row);
            mean += f64::from(row[act as usize]);
            oracle += f64::from(row[best]);
            random += row.iter().map(|&v| f64::from(v)).sum::<f64>() / a as f64;
            // Agreement counts a tie with the oracle's value as agreement.
            agree += usize::from(row[act as usize] >= row[best]);
        }
        let nf = n.max(1) as f64;
        let (mean, oracle, random) = (mean / nf, oracle / nf, random / nf);
        let span = oracle - random;
        Ok(EvalReport {
            n,
            mean_reward: mean,
            oracle_reward: oracle,
            random_reward: random,
            normalized_reward: if span.abs() > 1e-12 { (mean - random) / span } else { 0.0 },
            oracle_agreement: agree as f64 / nf,
        })
    }
}
