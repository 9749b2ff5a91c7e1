//! `cascade`: try a cheaper agent, look at its answer, then accept it or escalate
//! (FrugalGPT, AutoMix; `docs/guide/episodes.md`).
//!
//! Over an outcome corpus whose rows also carry each agent's answer text (`responses`). λ is
//! drawn per episode from `env.cost_weight_range` and given as an input, as for one-step
//! routers. Step 1 observes embedding(prompt) ⊕ zeros ⊕ λ ⊕ one-hot(step) and picks any agent;
//! the most expensive agent ends the episode. Otherwise step 2 observes embedding(prompt) ⊕
//! embedding(the first agent's answer) ⊕ λ ⊕ one-hot(step) and accepts the answer (0) or
//! escalates to the most expensive agent (1). The reward, at the end: the outcome of the agent
//! whose answer is returned − λ·(the costs paid, each divided by the largest).

use candle_core::{Device, Tensor};
use mappo_config::{EnvConfig, EnvKind, Rng};

use crate::{Env, EnvError, EnvSpec, ObservationSpec, RowExtras, Step};

/// What a cascade is built over: per prompt its embedding, each agent's answer's embedding (if
/// the row has one) and each agent's outcome.
#[derive(Debug, Clone)]
pub struct CascadeData {
    /// Row-major `[n, dim]` prompt embeddings.
    pub prompts: Vec<f32>,
    /// Row-major `[n, agents, dim]` answer embeddings (zeros where the row has no answer).
    pub responses: Vec<f32>,
    /// Row-major `[n, agents]` outcomes.
    pub outcomes: Vec<f32>,
    /// Embedding width.
    pub dim: usize,
    /// Number of agents.
    pub agents: usize,
}

impl CascadeData {
    /// Number of prompts.
    pub fn len(&self) -> usize {
        self.outcomes.len() / self.agents.max(1)
    }

    /// True without prompts.
    pub fn is_empty(&self) -> bool {
        self.outcomes.is_empty()
    }

    fn check(&self) -> Result<(), EnvError> {
        let n = self.len();
        if self.agents < 2
            || self.dim == 0
            || n == 0
            || self.prompts.len() != n * self.dim
            || self.responses.len() != n * self.agents * self.dim
        {
            return Err(EnvError::Setup(format!(
                "cascade data: {} prompt values, {} answer values and {} outcomes do not fit {} agents of width {}",
                self.prompts.len(),
                self.responses.len(),
                self.outcomes.len(),
                self.agents,
                self.dim
            )));
        }
        Ok(())
    }

    /// The embedding of prompt `row`.
    pub fn prompt(&self, row: usize) -> &[f32] {
        &self.prompts[row * self.dim..(row + 1) * self.dim]
    }

    /// The embedding of agent `a`'s answer to prompt `row`.
    pub fn response(&self, row: usize, a: usize) -> &[f32] {
        let at = (row * self.agents + a) * self.dim;
        &self.responses[at..at + self.dim]
    }

    /// Agent `a`'s outcome on prompt `row`.
    pub fn outcome(&self, row: usize, a: usize) -> f32 {
        self.outcomes[row * self.agents + a]
    }
}

/// The rules of a cascade: who the strong agent is and what each call costs.
#[derive(Debug, Clone, PartialEq)]
pub struct CascadeRules {
    /// Each agent's cost divided by the largest.
    pub costs: Vec<f32>,
    /// The most expensive agent (escalation goes there; choosing it ends the episode).
    pub strong: usize,
}

impl CascadeRules {
    /// The second step's action that escalates (0 accepts the first agent's answer).
    pub const ESCALATE: usize = 1;

    /// The rules of a config's agents.
    pub fn new(cfg: &EnvConfig) -> Self {
        let costs: Vec<f32> = cfg.normalized_costs().into_iter().map(|c| c as f32).collect();
        let strong = costs.iter().enumerate().fold(0, |best, (i, &c)| if c > costs[best] { i } else { best });
        Self { costs, strong }
    }

    /// The agent whose answer is returned and the (normalised) cost paid, for a first choice and
    /// a second-step decision (`escalate`; ignored after the strong agent).
    pub fn outcome_of(&self, first: usize, escalate: bool) -> (usize, f32) {
        if first == self.strong || !escalate {
            (first, self.costs[first])
        } else {
            (self.strong, self.costs[first] + self.costs[self.strong])
        }
    }
}

/// The cascade env, batched: each row is at its own step; a row whose episode ended starts a new
/// one (a fresh prompt and λ) in the next observation.
#[derive(Debug, Clone)]
pub struct CascadeEnv {
    data: CascadeData,
    rules: CascadeRules,
    lambda_range: [f32; 2],
    num_envs: usize,
    layout: ObservationSpec,
    /// Per row: prompt, λ, step (0 or 1), the first agent.
    prompt: Vec<usize>,
    lambda: Vec<f32>,
    step: Vec<usize>,
    first: Vec<usize>,
    /// `Some(next)`: rows take prompts in order from `next` (evaluation); `None`: at random.
    sequential: Option<usize>,
    ready: bool,
    device: Device,
}

impl CascadeEnv {
    /// The env of `cfg` (`kind = "cascade"`) over `data`, `num_envs` episodes at a time.
    pub fn new(
        cfg: &EnvConfig,
        data: CascadeData,
        num_envs: usize,
        device: &Device,
    ) -> Result<Self, EnvError> {
        if cfg.kind != EnvKind::Cascade || cfg.agents.len() != data.agents {
            return Err(EnvError::Setup(format!(
                "the cascade env needs kind = \"cascade\" and data for its {} agents (got {})",
                cfg.agents.len(),
                data.agents
            )));
        }
        data.check()?;
        let [lo, hi] = cfg.cost_weight_range;
        Ok(Self {
            layout: ObservationSpec::for_env(cfg, data.dim),
            rules: CascadeRules::new(cfg),
            lambda_range: [lo as f32, hi as f32],
            num_envs,
            prompt: vec![0; num_envs],
            lambda: vec![0.0; num_envs],
            step: vec![0; num_envs],
            first: vec![0; num_envs],
            sequential: None,
            ready: false,
            data,
            device: device.clone(),
        })
    }

    /// The same env at a fixed λ, taking the prompts in order (row i of the first reset gets
    /// prompt i): what evaluation runs.
    pub fn evaluation(mut self, cost_weight: f32) -> Self {
        self.lambda_range = [cost_weight, cost_weight];
        self.sequential = Some(0);
        self
    }

    /// The rules (strong agent, costs).
    pub fn rules(&self) -> &CascadeRules {
        &self.rules
    }

    /// The data.
    pub fn data(&self) -> &CascadeData {
        &self.data
    }

    /// The input row of prompt `row` at step `step` (1: after agent `first`) and cost weight λ.
    pub fn row(&self, row: usize, step: usize, first: usize, lambda: f32) -> Result<Vec<f32>, EnvError> {
        let response = (step == 1).then(|| self.data.response(row, first));
        let choices = [first as u32];
        let extras = RowExtras {
            cost_weight: Some(lambda),
            stage: Some(step),
            choices: &choices[..step],
            response,
            ..RowExtras::default()
        };
        self.layout
            .row(self.data.prompt(row), extras)
            .ok_or_else(|| EnvError::Setup("a cascade row does not fit".into()))
    }

    fn start(&mut self, i: usize, rng: &mut Rng) {
        let n = self.data.len();
        self.prompt[i] = match &mut self.sequential {
            Some(next) => {
                let p = *next % n;
                *next += 1;
                p
            }
            None => rng.below(n as u64) as usize,
        };
        let [lo, hi] = self.lambda_range;
        self.lambda[i] = if hi > lo { lo + (hi - lo) * rng.uniform() as f32 } else { lo };
        self.step[i] = 0;
    }

    fn observations(&self) -> Result<Tensor, EnvError> {
        let width = self.layout.width();
        let mut flat = Vec::with_capacity(self.num_envs * width);
        for i in 0..self.num_envs {
            flat.extend(self.row(self.prompt[i], self.step[i], self.first[i], self.lambda[i])?);
        }
        Ok(Tensor::from_vec(flat, (self.num_envs, width), &self.device)?)
    }
}

impl Env for CascadeEnv {
    fn kind(&self) -> &str {
        EnvKind::Cascade.as_str()
    }

    fn spec(&self) -> EnvSpec {
        EnvSpec {
            obs_dim: self.layout.width(),
            num_actions: self.data.agents.max(2),
            num_envs: self.num_envs,
        }
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn reset(&mut self, rng: &mut Rng) -> Result<Tensor, EnvError> {
        if let Some(next) = &mut self.sequential {
            *next = 0;
        }
        for i in 0..self.num_envs {
            self.start(i, rng);
        }
        self.ready = true;
        self.observations()
    }

    fn step(&mut self, actions: &[u32], rng: &mut Rng) -> Result<Step, EnvError> {
        crate::check_actions(self.ready, actions, self.num_envs, self.spec().num_actions)?;
        let mut reward = vec![0f32; self.num_envs];
        let mut done = vec![false; self.num_envs];
        for (i, &a) in actions.iter().enumerate() {
            let a = a as usize;
            let row = self.prompt[i];
            let end = if self.step[i] == 0 {
                if a >= self.data.agents {
                    return Err(EnvError::BadAction {
                        row: i,
                        action: a as u32,
                        num_actions: self.data.agents,
                    });
                }
                self.first[i] = a;
                if a == self.rules.strong {
                    Some(self.rules.outcome_of(a, false))
                } else {
                    self.step[i] = 1;
                    None
                }
            } else {
                if a > 1 {
                    return Err(EnvError::BadAction { row: i, action: a as u32, num_actions: 2 });
                }
                Some(self.rules.outcome_of(self.first[i], a == CascadeRules::ESCALATE))
            };
            if let Some((agent, cost)) = end {
                reward[i] = self.data.outcome(row, agent) - self.lambda[i] * cost;
                done[i] = true;
            }
        }
        for (i, &ended) in done.iter().enumerate() {
            if ended {
                self.start(i, rng);
            }
        }
        Ok(Step {
            reward,
            done,
            truncated: vec![false; self.num_envs],
            next_obs: Some(self.observations()?),
            final_obs: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use mappo_config::AgentSpec;

    use super::*;

    fn cfg() -> EnvConfig {
        let mut c =
            EnvConfig { kind: EnvKind::Cascade, cost_weight_range: [0.5, 0.5], ..EnvConfig::default() };
        c.agents = vec![
            AgentSpec { name: "weak".into(), cost: 1.0, ..AgentSpec::default() },
            AgentSpec { name: "strong".into(), cost: 10.0, ..AgentSpec::default() },
        ];
        c
    }

    fn data() -> CascadeData {
        // Two prompts of width 2; the weak agent is right on prompt 0 only, the strong on both.
        CascadeData {
            prompts: vec![1.0, 0.0, 0.0, 1.0],
            responses: vec![0.5, 0.5, 0.6, 0.6, 0.7, 0.7, 0.8, 0.8],
            outcomes: vec![1.0, 1.0, 0.0, 1.0],
            dim: 2,
            agents: 2,
        }
    }

    #[test]
    fn accept_escalate_and_the_strong_agent_end_with_the_right_reward() {
        let mut env = CascadeEnv::new(&cfg(), data(), 2, &Device::Cpu).expect("env").evaluation(0.5);
        let mut rng = Rng::new(1);
        let obs: Vec<Vec<f32>> = env.reset(&mut rng).expect("reset").to_vec2().expect("host");
        // prompt ⊕ zeros (no answer yet) ⊕ λ ⊕ step one-hot.
        assert_eq!(obs[0], vec![1.0, 0.0, 0.0, 0.0, 0.5, 1.0, 0.0]);
        // Row 0 asks the weak agent, row 1 the strong one (which ends its episode).
        let s = env.step(&[0, 1], &mut rng).expect("step 1");
        assert_eq!(s.done, vec![false, true]);
        assert_eq!(s.reward[1], 1.0 - 0.5 * 1.0);
        let next: Vec<Vec<f32>> = s.next_obs.expect("obs").to_vec2().expect("host");
        assert_eq!(next[0], vec![1.0, 0.0, 0.5, 0.5, 0.5, 0.0, 1.0], "step 2 sees the weak answer");
        // Row 0 accepts the weak answer: its outcome, minus the weak call's cost.
        let s = env.step(&[0, 0], &mut rng).expect("step 2");
        assert!(s.done[0]);
        assert!((s.reward[0] - (1.0 - 0.5 * 0.1)).abs() < 1e-6);
        let rules = env.rules();
        assert_eq!(rules.strong, 1);
        assert_eq!(rules.outcome_of(0, true), (1, 1.1));
        assert_eq!(rules.outcome_of(1, true), (1, 1.0));
        assert!(matches!(env.step(&[5, 0], &mut rng), Err(EnvError::BadAction { .. })));
    }
}
