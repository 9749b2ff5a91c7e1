//! Greedy (argmax) evaluation against an environment that knows every
//! action's expected reward.

use std::cell::RefCell;

use candle_core::Tensor;
use mappo_env::{EpisodeReference, KnownRewards, Rng};
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

/// Something that scores a policy during training (every `train.eval_interval` updates): the
/// one-step [`GreedyEvaluator`] or the multi-step [`EpisodeEvaluator`].
pub trait Evaluate {
    /// Scores `policy`, greedily.
    fn evaluate_policy(&self, policy: &dyn Policy) -> Result<EvalReport, TrainError>;
}

impl Evaluate for GreedyEvaluator {
    fn evaluate_policy(&self, policy: &dyn Policy) -> Result<EvalReport, TrainError> {
        self.evaluate(policy)
    }
}

/// What a greedy evaluation of a multi-step env measured (noise-free returns).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EpisodeReport {
    /// Episodes evaluated.
    pub episodes: usize,
    /// Steps (decisions) per episode, on average.
    pub mean_steps: f64,
    /// Mean return of the greedy policy.
    pub mean_return: f64,
    /// Mean return of the optimum (the env's [`mappo_env::ReferenceReturns::optimal`]).
    pub optimal_return: f64,
    /// Mean return of uniformly random choices.
    pub random_return: f64,
    /// `(mean − random) / (optimal − random)`: 0 = random, 1 = optimal.
    pub normalized_return: f64,
    /// Mean return of the myopic oracle, where the env defines one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub myopic_return: Option<f64>,
    /// Share of episodes whose return is their own optimum, where one is defined per episode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optimal_share: Option<f64>,
    /// The pipeline's share of prompts whose per-stage best (blind to interactions) is not the
    /// joint optimum.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stagewise_not_optimal: Option<f64>,
}

impl EpisodeReport {
    /// The one-step report's fields from this one (for the periodic evaluation's log line):
    /// returns for rewards, the optimal share (else the normalized return) for agreement.
    pub fn as_eval_report(&self) -> EvalReport {
        EvalReport {
            n: self.episodes,
            mean_reward: self.mean_return,
            oracle_reward: self.optimal_return,
            random_reward: self.random_return,
            normalized_reward: self.normalized_return,
            oracle_agreement: self.optimal_share.unwrap_or(self.normalized_return),
        }
    }
}

/// Runs the episodes `env` begins on `reset` with `rng` to their end with `policy`'s greedy
/// choices and compares their returns with the env's references. `env` should be noise-free.
pub fn evaluate_episodes<E: EpisodeReference + ?Sized>(
    env: &mut E,
    policy: &dyn Policy,
    rng: &mut Rng,
) -> Result<EpisodeReport, TrainError> {
    let n = env.spec().num_envs;
    let mut obs = Some(env.reset(rng)?);
    let reference = env.reference_returns();
    let mut returns = vec![0f64; n];
    let mut finished = vec![false; n];
    let mut steps = 0usize;
    // Every row's first episode, to its end (rows that finish early are reset by the env and
    // their later steps ignored). The bound only stops an env that never ends an episode.
    for _ in 0..1_000_000 {
        let Some(o) = obs.take() else { break };
        let actions = greedy_actions(policy, &o)?;
        let step = env.step(&actions, rng)?;
        for row in 0..n {
            if !finished[row] {
                returns[row] += f64::from(step.reward[row]);
                steps += 1;
                finished[row] = step.done[row] || step.truncated[row];
            }
        }
        if finished.iter().all(|&f| f) {
            break;
        }
        obs = step.next_obs;
    }
    if !finished.iter().all(|&f| f) {
        return Err(TrainError::Setup("an evaluation episode did not end".into()));
    }
    let nf = n.max(1) as f64;
    let mean = returns.iter().sum::<f64>() / nf;
    let span = reference.optimal - reference.random;
    let optimal_share = reference
        .row_optimal
        .as_ref()
        .map(|best| returns.iter().zip(best).filter(|(r, b)| **r >= **b - 1e-5).count() as f64 / nf);
    Ok(EpisodeReport {
        episodes: n,
        mean_steps: steps as f64 / nf,
        mean_return: mean,
        optimal_return: reference.optimal,
        random_return: reference.random,
        normalized_return: if span.abs() > 1e-12 { (mean - reference.random) / span } else { 0.0 },
        myopic_return: reference.myopic,
        optimal_share,
        stagewise_not_optimal: reference.stagewise_not_optimal,
    })
}

/// The periodic evaluation of a multi-step env: the same episodes (the env reset with the same
/// seed) every time, run greedily to their end.
#[derive(Debug)]
pub struct EpisodeEvaluator<E: EpisodeReference> {
    env: RefCell<E>,
    seed: u64,
}

impl<E: EpisodeReference> EpisodeEvaluator<E> {
    /// Evaluates on `env`'s episodes begun from the stream `periodic-eval` of `seed`.
    pub fn new(env: E, seed: u64) -> Self {
        Self { env: RefCell::new(env), seed }
    }

    /// The whole report.
    pub fn report(&self, policy: &dyn Policy) -> Result<EpisodeReport, TrainError> {
        let mut rng = Rng::derived(self.seed, "periodic-eval");
        evaluate_episodes(&mut *self.env.borrow_mut(), policy, &mut rng)
    }
}

impl<E: EpisodeReference> Evaluate for EpisodeEvaluator<E> {
    fn evaluate_policy(&self, policy: &dyn Policy) -> Result<EvalReport, TrainError> {
        Ok(self.report(policy)?.as_eval_report())
    }
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
