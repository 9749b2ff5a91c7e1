//! [`DatasetEnv`]: a bandit over fixed observation rows. Prompts are drawn in passes: each
//! pass is a fresh permutation of the rows derived from the seed and the pass number, so the
//! position in the stream (one integer, saved in checkpoints) is the environment's whole state.

use candle_core::{Device, Tensor};
use mappo_config::Rng;

use crate::{Env, EnvError, EnvSpec, KnownRewards, ObservationSpec, Step, check_actions};

/// A bandit over a fixed set of observation rows with known expected rewards: the text env's
/// environment (rows = prompt embeddings), and a ready-made env for any table of features
/// with a known reward per (row, action).
#[derive(Debug)]
pub struct DatasetEnv {
    obs: Tensor,
    expected: Vec<f32>,
    rows: usize,
    num_actions: usize,
    num_envs: usize,
    noise: f32,
    seed: u64,
    drawn: u64,
    pass: Option<(u64, Vec<u32>)>,
    current: Vec<u32>,
    device: Device,
    kind: String,
    costs: Option<CostTerm>,
    layout: ObservationSpec,
}

/// The cost term of a cost-aware dataset env (see [`DatasetEnv::with_costs`]).
#[derive(Debug)]
struct CostTerm {
    costs: Vec<f32>,
    lo: f32,
    hi: f32,
    lambdas: Vec<f32>,
}

impl DatasetEnv {
    /// `obs` is row-major `[rows, dim]`, `expected` `[rows, num_actions]`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        obs: &[f32],
        dim: usize,
        expected: Vec<f32>,
        num_actions: usize,
        num_envs: usize,
        noise: f64,
        seed: u64,
        device: &Device,
    ) -> Result<Self, EnvError> {
        let rows = obs.len() / dim.max(1);
        if rows == 0 || expected.len() != rows * num_actions {
            return Err(EnvError::Setup(format!(
                "{rows} observation rows but {} expected rewards for {num_actions} actions",
                expected.len()
            )));
        }
        Ok(Self {
            obs: Tensor::from_slice(obs, (rows, dim), device)?,
            expected,
            rows,
            num_actions,
            num_envs,
            noise: noise as f32,
            seed,
            drawn: 0,
            pass: None,
            current: Vec::new(),
            device: device.clone(),
            kind: mappo_config::EnvKind::Text.as_str().to_string(),
            costs: None,
            layout: ObservationSpec::embedding(dim),
        })
    }

    /// Makes the env cost-aware: at every reset each row gets a cost weight λ drawn uniformly
    /// from `[lo, hi]` (from the reset's RNG), appended to its observation as one more column,
    /// and the reward of action `a` becomes `expected − λ·costs[a]`. This is how one policy
    /// learns every trade-off between quality and cost at once (λ is an input, not a constant).
    pub fn with_costs(mut self, costs: Vec<f32>, lo: f32, hi: f32) -> Result<Self, EnvError> {
        if costs.len() != self.num_actions || !(lo.is_finite() && hi.is_finite() && lo <= hi) {
            return Err(EnvError::Setup(format!(
                "{} costs for {} actions, λ range [{lo}, {hi}]",
                costs.len(),
                self.num_actions
            )));
        }
        self.costs = Some(CostTerm { costs, lo, hi, lambdas: Vec::new() });
        self.layout = self.layout.with_cost_weight();
        Ok(self)
    }

    /// The cost weight λ of each row of the current batch (empty unless cost-aware).
    pub fn cost_weights(&self) -> &[f32] {
        self.costs.as_ref().map_or(&[], |c| &c.lambdas)
    }

    fn reward(&self, k: usize, row: u32, action: usize) -> f32 {
        let q = self.expected[row as usize * self.num_actions + action];
        match &self.costs {
            Some(c) => q - c.lambdas.get(k).copied().unwrap_or(0.0) * c.costs[action],
            None => q,
        }
    }

    /// Sets the kind recorded in checkpoints ([`Env::kind`]; default `text`, the text env's),
    /// e.g. for a bandit over your own table of features.
    pub fn with_kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = kind.into();
        self
    }

    /// Number of rows in the data set.
    pub fn rows(&self) -> usize {
        self.rows
    }

    fn next_row(&mut self) -> u32 {
        let pass = self.drawn / self.rows as u64;
        let pos = (self.drawn % self.rows as u64) as usize;
        if self.pass.as_ref().is_none_or(|(p, _)| *p != pass) {
            let mut perm: Vec<u32> = (0..self.rows as u32).collect();
            Rng::derived(self.seed ^ pass.wrapping_mul(0x9E37_79B9_7F4A_7C15), "dataset-pass")
                .shuffle(&mut perm);
            self.pass = Some((pass, perm));
        }
        self.drawn += 1;
        self.pass.as_ref().map_or(0, |(_, perm)| perm[pos])
    }
}

impl Env for DatasetEnv {
    fn kind(&self) -> &str {
        &self.kind
    }

    fn spec(&self) -> EnvSpec {
        EnvSpec { obs_dim: self.layout.width(), num_actions: self.num_actions, num_envs: self.num_envs }
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn reset(&mut self, rng: &mut Rng) -> Result<Tensor, EnvError> {
        self.current = (0..self.num_envs).map(|_| self.next_row()).collect();
        let idx = Tensor::from_slice(&self.current, self.num_envs, &self.device)?;
        let obs = self.obs.index_select(&idx, 0)?;
        if let Some(c) = self.costs.as_mut() {
            c.lambdas = (0..self.num_envs).map(|_| c.lo + (c.hi - c.lo) * rng.uniform() as f32).collect();
        }
        self.layout.observe(&obs, self.cost_weights())
    }

    fn step(&mut self, actions: &[u32], rng: &mut Rng) -> Result<Step, EnvError> {
        check_actions(!self.current.is_empty(), actions, self.num_envs, self.num_actions)?;
        let mut reward = Vec::with_capacity(self.num_envs);
        for (k, (&a, &i)) in actions.iter().zip(&self.current).enumerate() {
            let noise = if self.noise > 0.0 { self.noise * rng.normal() as f32 } else { 0.0 };
            reward.push(self.reward(k, i, a as usize) + noise);
        }
        self.current.clear();
        Ok(Step::all_done(reward))
    }

    fn state(&self) -> Vec<u64> {
        vec![self.drawn]
    }

    fn restore_state(&mut self, state: &[u64]) -> Result<(), EnvError> {
        match state {
            [d] => {
                self.drawn = *d;
                Ok(())
            }
            _ => Err(EnvError::Setup(format!("dataset env state must be one number, got {state:?}"))),
        }
    }
}

impl KnownRewards for DatasetEnv {
    fn expected_rewards(&self) -> Vec<f32> {
        let a = self.num_actions;
        self.current
            .iter()
            .enumerate()
            .flat_map(|(k, &i)| (0..a).map(move |j| self.reward(k, i, j)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_env_walks_passes_and_resumes_from_its_state() {
        let obs: Vec<f32> = (0..10).map(|i| i as f32).collect();
        let expected: Vec<f32> =
            (0..10).flat_map(|i| [f32::from(i % 2 == 0), f32::from(i % 2 == 1)]).collect();
        let mut env = DatasetEnv::new(&obs, 1, expected, 2, 4, 0.0, 3, &Device::Cpu).expect("env");
        let mut rng = Rng::new(0);
        let mut seen = Vec::new();
        for _ in 0..5 {
            let o = env.reset(&mut rng).expect("reset");
            let rows: Vec<f32> = o.flatten_all().and_then(|t| t.to_vec1()).expect("host");
            let exp = env.expected_rewards();
            let oracle = env.oracle_actions();
            let s = env.step(&oracle, &mut rng).expect("step");
            for (k, r) in rows.iter().enumerate() {
                assert_eq!(exp[k * 2 + oracle[k] as usize], 1.0);
                assert_eq!(s.reward[k], 1.0);
                assert_eq!(oracle[k], (*r as u32) % 2);
            }
            seen.extend(rows);
        }
        let mut first: Vec<f32> = seen[..10].to_vec();
        first.sort_by(f32::total_cmp);
        assert_eq!(first, obs, "each pass visits every row once");
        assert_ne!(seen[..10], seen[10..20], "passes are reshuffled");
        let mut resumed = DatasetEnv::new(&obs, 1, vec![0.0; 20], 2, 4, 0.0, 3, &Device::Cpu).expect("env");
        resumed.restore_state(&[8]).expect("restore");
        let o = resumed.reset(&mut rng).expect("reset");
        let rows: Vec<f32> = o.flatten_all().and_then(|t| t.to_vec1()).expect("host");
        assert_eq!(rows, seen[8..12]);
    }

    #[test]
    fn a_cost_aware_env_appends_lambda_and_charges_it() {
        // Action 1 is better by 0.5 but costs 0.9 more (normalised): worth it iff λ < 0.5 / 0.9.
        let mut env = DatasetEnv::new(&[0.0, 1.0], 1, vec![0.5, 1.0, 0.5, 1.0], 2, 64, 0.0, 3, &Device::Cpu)
            .expect("env")
            .with_costs(vec![0.1, 1.0], 0.0, 1.0)
            .expect("costs");
        assert_eq!(env.spec().obs_dim, 2);
        let mut rng = Rng::new(5);
        let o = env.reset(&mut rng).expect("reset");
        assert_eq!(o.dims(), &[64, 2]);
        let rows: Vec<Vec<f32>> = o.to_vec2().expect("host");
        let lambdas = env.cost_weights().to_vec();
        assert!(lambdas.iter().all(|l| (0.0..=1.0).contains(l)));
        assert!(lambdas.iter().any(|&l| l < 0.5) && lambdas.iter().any(|&l| l > 0.5), "{lambdas:?}");
        for (r, l) in rows.iter().zip(&lambdas) {
            assert_eq!(r[1], *l, "λ is the last column");
        }
        let exp = env.expected_rewards();
        let oracle = env.oracle_actions();
        for (k, l) in lambdas.iter().enumerate() {
            assert!((exp[2 * k] - (0.5 - 0.1 * l)).abs() < 1e-6);
            assert!((exp[2 * k + 1] - (1.0 - l)).abs() < 1e-6);
            assert_eq!(oracle[k], u32::from(*l < 0.5 / 0.9), "λ {l}");
        }
        let s = env.step(&vec![1; 64], &mut rng).expect("step");
        for (r, l) in s.reward.iter().zip(&lambdas) {
            assert!((r - (1.0 - l)).abs() < 1e-6);
        }
        assert!(
            DatasetEnv::new(&[0.0], 1, vec![0.0, 1.0], 2, 1, 0.0, 3, &Device::Cpu)
                .expect("env")
                .with_costs(vec![1.0], 0.0, 1.0)
                .is_err()
        );
    }

    #[test]
    fn bad_actions_are_errors() {
        let mut env = DatasetEnv::new(&[0.0, 1.0], 1, vec![1.0, 0.0, 0.0, 1.0], 2, 2, 0.0, 3, &Device::Cpu)
            .expect("env");
        let mut rng = Rng::new(0);
        assert!(matches!(env.step(&[0, 0], &mut rng), Err(EnvError::NotReset)));
        env.reset(&mut rng).expect("reset");
        assert!(matches!(env.step(&[0], &mut rng), Err(EnvError::ActionCount { expected: 2, got: 1 })));
        assert!(matches!(env.step(&[0, 2], &mut rng), Err(EnvError::BadAction { row: 1, action: 2, .. })));
        assert_eq!(env.step(&[0, 1], &mut rng).expect("step").reward.len(), 2);
    }
}
