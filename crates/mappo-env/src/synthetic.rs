//! The seed's synthetic router: fixed agent specialty vectors, random unit
//! prompts, reward = cosine(prompt, chosen agent) + Gaussian noise.

use candle_core::{Device, Tensor};
use mappo_config::{EnvConfig, Rng};

use crate::{Env, EnvError, EnvSpec, KnownRewards, Step, check_actions};

/// The synthetic cosine-similarity environment, batched. Episodes are one step.
#[derive(Debug, Clone)]
pub struct SyntheticEnv {
    dim: usize,
    num_agents: usize,
    num_envs: usize,
    noise: f32,
    /// Agent specialty vectors, normalised, row-major `[num_agents, dim]`.
    agents_unit: Vec<f32>,
    /// Current prompts, unit rows, row-major `[num_envs, dim]`.
    prompts: Vec<f32>,
    /// Cosine of each current prompt to each agent, `[num_envs, num_agents]`.
    cos: Vec<f32>,
    has_prompts: bool,
    device: Device,
}

impl SyntheticEnv {
    /// Builds the environment. The agent vectors (drawn ~ N(0, 1)) depend only
    /// on `seed`, so a checkpoint's config rebuilds the same agents.
    pub fn new(cfg: &EnvConfig, num_envs: usize, seed: u64, device: &Device) -> Self {
        let (dim, na) = (cfg.embed_dim, cfg.num_agents);
        let mut rng = Rng::derived(seed, "synthetic-agents");
        let mut agents = rng.normal_vec(na * dim);
        for row in agents.chunks_mut(dim) {
            normalise(row);
        }
        Self {
            dim,
            num_agents: na,
            num_envs,
            noise: cfg.reward_noise as f32,
            agents_unit: agents,
            prompts: vec![0.0; num_envs * dim],
            cos: vec![0.0; num_envs * na],
            has_prompts: false,
            device: device.clone(),
        }
    }

    /// The agents' unit specialty vectors, row-major `[num_agents, dim]`.
    pub fn agent_vectors(&self) -> &[f32] {
        &self.agents_unit
    }
}

fn normalise(row: &mut [f32]) {
    let n = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    for x in row {
        *x /= n;
    }
}

impl Env for SyntheticEnv {
    fn kind(&self) -> &str {
        mappo_config::EnvKind::Synthetic.as_str()
    }

    fn spec(&self) -> EnvSpec {
        EnvSpec { obs_dim: self.dim, num_actions: self.num_agents, num_envs: self.num_envs }
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn reset(&mut self, rng: &mut Rng) -> Result<Tensor, EnvError> {
        rng.fill_normal(&mut self.prompts);
        let (d, na) = (self.dim, self.num_agents);
        for (p, c) in self.prompts.chunks_mut(d).zip(self.cos.chunks_mut(na)) {
            normalise(p);
            for (a, ci) in self.agents_unit.chunks(d).zip(c.iter_mut()) {
                *ci = p.iter().zip(a).map(|(x, y)| x * y).sum();
            }
        }
        self.has_prompts = true;
        Ok(Tensor::from_slice(&self.prompts, (self.num_envs, d), &self.device)?)
    }

    fn step(&mut self, actions: &[u32], rng: &mut Rng) -> Result<Step, EnvError> {
        check_actions(self.has_prompts, actions, self.num_envs, self.num_agents)?;
        let mut reward = Vec::with_capacity(self.num_envs);
        for (row, &a) in actions.iter().enumerate() {
            let noise = if self.noise > 0.0 { self.noise * rng.normal() as f32 } else { 0.0 };
            reward.push(self.cos[row * self.num_agents + a as usize] + noise);
        }
        self.has_prompts = false;
        Ok(Step::all_done(reward))
    }
}

impl KnownRewards for SyntheticEnv {
    fn expected_rewards(&self) -> Vec<f32> {
        self.cos.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(n: usize, noise: f64) -> SyntheticEnv {
        let cfg = EnvConfig { reward_noise: noise, ..EnvConfig::default() };
        SyntheticEnv::new(&cfg, n, 42, &Device::Cpu)
    }

    #[test]
    fn prompts_are_unit_and_rewards_are_cosines() {
        let mut e = env(8, 0.0);
        let mut rng = Rng::new(1);
        let obs = e.reset(&mut rng).expect("reset");
        assert_eq!(obs.dims(), &[8, 32]);
        let rows: Vec<Vec<f32>> = obs.to_vec2().expect("host");
        for r in &rows {
            let n: f32 = r.iter().map(|x| x * x).sum();
            assert!((n - 1.0).abs() < 1e-5);
        }
        let oracle = e.oracle_actions();
        let expected = e.expected_rewards();
        let step = e.step(&oracle, &mut rng).expect("step");
        for (i, r) in step.reward.iter().enumerate() {
            let row = &expected[i * 4..i * 4 + 4];
            assert_eq!(*r, row.iter().cloned().fold(f32::MIN, f32::max));
            let a: &[f32] = &e.agent_vectors()[oracle[i] as usize * 32..][..32];
            let dot: f32 = rows[i].iter().zip(a).map(|(x, y)| x * y).sum();
            assert!((dot - r).abs() < 1e-5);
        }
        assert!(step.done.iter().all(|&d| d));
        assert!(step.next_obs.is_none());
    }

    #[test]
    fn agents_depend_only_on_seed_and_noise_has_the_configured_scale() {
        assert_eq!(env(4, 0.1).agent_vectors(), env(64, 0.0).agent_vectors());
        let mut e = env(4096, 0.1);
        let mut rng = Rng::new(2);
        e.reset(&mut rng).expect("reset");
        let exp = e.expected_rewards();
        let acts = vec![0u32; 4096];
        let s = e.step(&acts, &mut rng).expect("step");
        let resid: Vec<f32> = s.reward.iter().enumerate().map(|(i, r)| r - exp[i * 4]).collect();
        let sd = (resid.iter().map(|x| x * x).sum::<f32>() / 4096.0).sqrt();
        assert!((sd - 0.1).abs() < 0.01, "{sd}");
    }

    #[test]
    fn bad_actions_are_errors() {
        let mut e = env(2, 0.1);
        let mut rng = Rng::new(3);
        assert!(matches!(e.step(&[0, 0], &mut rng), Err(EnvError::NotReset)));
        e.reset(&mut rng).expect("reset");
        assert!(matches!(e.step(&[0], &mut rng), Err(EnvError::ActionCount { .. })));
        assert!(matches!(e.step(&[0, 9], &mut rng), Err(EnvError::BadAction { row: 1, .. })));
    }
}
