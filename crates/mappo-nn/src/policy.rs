//! The [`Policy`] trait and the [`ActorCritic`] network.

use candle_core::{DType, Device, Tensor, Var};
use mappo_config::{ModelConfig, Rng};

use crate::{NnError, init::orthogonal};

/// A parameter and its checkpoint name (e.g. `encoder.0.weight`).
#[derive(Debug, Clone)]
pub struct NamedVar {
    /// Stable, unique name.
    pub name: String,
    /// The variable.
    pub var: Var,
}

/// What a forward pass returns.
#[derive(Debug, Clone)]
pub struct PolicyOutput {
    /// Unnormalised action scores, `[batch, num_actions]`.
    pub logits: Tensor,
    /// State values, `[batch]`.
    pub values: Tensor,
}

/// A stochastic policy with a value function, as the PPO trainer sees it.
///
/// The trainer computes the loss from [`PolicyOutput`] and steps two
/// optimizers: one over [`Policy::actor_vars`] (everything the policy head
/// depends on, the shared encoder included) and one over
/// [`Policy::critic_vars`] (the value head). Names must be unique across both.
pub trait Policy {
    /// Forward pass for a batch of observations `[batch, obs_dim]`.
    fn forward(&self, obs: &Tensor) -> Result<PolicyOutput, NnError>;
    /// The actor's parameters (shared encoder and policy head), sorted by name.
    fn actor_vars(&self) -> Vec<NamedVar>;
    /// The critic's parameters (value head), sorted by name.
    fn critic_vars(&self) -> Vec<NamedVar>;
    /// Number of actions.
    fn num_actions(&self) -> usize;
    /// Every parameter, sorted by name.
    fn all_vars(&self) -> Vec<NamedVar> {
        let mut v = self.actor_vars();
        v.extend(self.critic_vars());
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

/// A fully connected layer `y = x Wᵀ + b` with `W: [out, in]` (torch layout).
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: Var,
    /// `[out]`.
    pub bias: Var,
}

impl Linear {
    /// Orthogonal weight with `gain`, zero bias.
    pub fn orthogonal(
        inp: usize,
        out: usize,
        gain: f64,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Self, NnError> {
        let w = orthogonal(out, inp, gain, rng);
        Ok(Self {
            weight: Var::from_tensor(&Tensor::from_vec(w, (out, inp), device)?)?,
            bias: Var::zeros(out, DType::F32, device)?,
        })
    }

    /// Applies the layer to `[batch, in]`.
    ///
    /// The bias is added as `ones[batch, 1] · bias[1, out]`: the same values
    /// as a broadcast add, but its backward pass is a small matrix product
    /// instead of candle's strided sum over the batch dimension, which
    /// profiling showed to take a fifth of a training update on the CPU.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, NnError> {
        let y = x.matmul(&self.weight.as_tensor().t()?)?;
        let ones = Tensor::ones((x.dim(0)?, 1), x.dtype(), x.device())?;
        Ok((y + ones.matmul(&self.bias.as_tensor().unsqueeze(0)?)?)?)
    }

    fn named(&self, prefix: &str, out: &mut Vec<NamedVar>) {
        out.push(NamedVar { name: format!("{prefix}.bias"), var: self.bias.clone() });
        out.push(NamedVar { name: format!("{prefix}.weight"), var: self.weight.clone() });
    }
}

/// ReLU as `x · sign(relu(detach(x)))`: the same values, but its backward
/// pass is one multiplication by a constant 0/1 mask instead of candle's
/// ReLU backward, whose element-by-element comparison took a tenth of a
/// training update on the CPU.
pub fn relu(x: &Tensor) -> Result<Tensor, NnError> {
    let mask = x.detach().relu()?.sign()?;
    Ok(x.mul(&mask)?)
}

/// Shared-encoder actor-critic:
/// `obs → [projection] → Linear → ReLU → Linear → ReLU → {policy head, value head}`.
#[derive(Debug, Clone)]
pub struct ActorCritic {
    projection: Option<Linear>,
    encoder: Vec<Linear>,
    policy_head: Linear,
    value_head: Linear,
    num_actions: usize,
}

impl ActorCritic {
    /// Builds the network with orthogonal weights drawn from `rng`. With
    /// `cfg.projection_dim > 0`, a learned linear projection
    /// `obs_dim → projection_dim` (gain 1, no activation) comes first.
    pub fn new(
        obs_dim: usize,
        num_actions: usize,
        cfg: &ModelConfig,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Self, NnError> {
        let mut inp = obs_dim;
        let projection = if cfg.projection_dim > 0 {
            let p = Linear::orthogonal(inp, cfg.projection_dim, 1.0, rng, device)?;
            inp = cfg.projection_dim;
            Some(p)
        } else {
            None
        };
        let h = cfg.hidden_dim;
        let encoder = vec![
            Linear::orthogonal(inp, h, cfg.init_gain_hidden, rng, device)?,
            Linear::orthogonal(h, h, cfg.init_gain_hidden, rng, device)?,
        ];
        let policy_head = Linear::orthogonal(h, num_actions, cfg.init_gain_policy, rng, device)?;
        let value_head = Linear::orthogonal(h, 1, cfg.init_gain_value, rng, device)?;
        Ok(Self { projection, encoder, policy_head, value_head, num_actions })
    }

    /// The learned input projection, if any.
    pub fn projection(&self) -> Option<&Linear> {
        self.projection.as_ref()
    }

    fn encode(&self, obs: &Tensor) -> Result<Tensor, NnError> {
        let mut x = match &self.projection {
            Some(p) => p.forward(obs)?,
            None => obs.clone(),
        };
        for layer in &self.encoder {
            x = relu(&layer.forward(&x)?)?;
        }
        Ok(x)
    }
}

impl Policy for ActorCritic {
    fn forward(&self, obs: &Tensor) -> Result<PolicyOutput, NnError> {
        let h = self.encode(obs)?;
        let logits = self.policy_head.forward(&h)?;
        let values = self.value_head.forward(&h)?.squeeze(1)?;
        Ok(PolicyOutput { logits, values })
    }

    fn actor_vars(&self) -> Vec<NamedVar> {
        let mut v = Vec::new();
        if let Some(p) = &self.projection {
            p.named("encoder.projection", &mut v);
        }
        for (i, l) in self.encoder.iter().enumerate() {
            l.named(&format!("encoder.{i}"), &mut v);
        }
        self.policy_head.named("policy_head", &mut v);
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn critic_vars(&self) -> Vec<NamedVar> {
        let mut v = Vec::new();
        self.value_head.named("value_head", &mut v);
        v
    }

    fn num_actions(&self) -> usize {
        self.num_actions
    }
}

/// Actions drawn from a batch of logits.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// One action per row.
    pub actions: Vec<u32>,
    /// log π(action | row).
    pub log_probs: Vec<f32>,
}

/// Log-softmax of one row of logits, in f64 (max-shifted log-sum-exp): the one
/// implementation behind action sampling and the PPO loss head.
pub fn log_softmax_row(row: &[f32], out: &mut [f64]) {
    let m = f64::from(row.iter().fold(f32::NEG_INFINITY, |x, &y| x.max(y)));
    let lse = m + row.iter().map(|&v| (f64::from(v) - m).exp()).sum::<f64>().ln();
    for (o, &v) in out.iter_mut().zip(row) {
        *o = f64::from(v) - lse;
    }
}

/// Samples one action per row of `logits` (`[batch, num_actions]`) with the
/// seeded RNG (one host transfer for the whole batch). With `greedy`, takes
/// the argmax instead.
pub fn sample_actions(logits: &Tensor, rng: &mut Rng, greedy: bool) -> Result<Sampled, NnError> {
    let (_, a) = logits.dims2()?;
    let flat = logits.flatten_all()?.to_vec1::<f32>()?;
    let mut lp = vec![0f32; flat.len()];
    let mut row64 = vec![0f64; a];
    for (src, dst) in flat.chunks(a.max(1)).zip(lp.chunks_mut(a.max(1))) {
        log_softmax_row(src, &mut row64);
        for (d, &v) in dst.iter_mut().zip(&row64) {
            *d = v as f32;
        }
    }
    let mut actions = Vec::with_capacity(lp.len() / a.max(1));
    let mut log_probs = Vec::with_capacity(actions.capacity());
    let mut probs = vec![0f32; a];
    for row in lp.chunks(a.max(1)) {
        let i = if greedy {
            let mut best = 0;
            for (j, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = j;
                }
            }
            best
        } else {
            for (p, &l) in probs.iter_mut().zip(row) {
                *p = l.exp();
            }
            rng.categorical(&probs)
        };
        actions.push(i as u32);
        log_probs.push(row[i]);
    }
    Ok(Sampled { actions, log_probs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_names_and_determinism() {
        let cfg = ModelConfig::default();
        let dev = Device::Cpu;
        let net = ActorCritic::new(32, 4, &cfg, &mut Rng::new(1), &dev).expect("net");
        let obs = Tensor::zeros((5, 32), DType::F32, &dev).expect("obs");
        let out = net.forward(&obs).expect("fwd");
        assert_eq!(out.logits.dims(), &[5, 4]);
        assert_eq!(out.values.dims(), &[5]);
        let names: Vec<String> = net.all_vars().into_iter().map(|n| n.name).collect();
        assert_eq!(names.len(), 8);
        assert!(names.contains(&"encoder.0.weight".to_string()));
        assert!(names.contains(&"value_head.bias".to_string()));
        let again = ActorCritic::new(32, 4, &cfg, &mut Rng::new(1), &dev).expect("net");
        for (a, b) in net.all_vars().iter().zip(again.all_vars()) {
            let x: Vec<f32> = a.var.flatten_all().and_then(|t| t.to_vec1()).expect("x");
            let y: Vec<f32> = b.var.flatten_all().and_then(|t| t.to_vec1()).expect("y");
            assert_eq!(x, y, "{}", a.name);
        }
    }

    #[test]
    fn relu_values_and_gradient() {
        let dev = Device::Cpu;
        let x = Var::new(&[-2.0f32, -0.0, 0.0, 0.5, 3.0], &dev).expect("x");
        let y = relu(x.as_tensor()).expect("relu");
        let v: Vec<f32> = y.to_vec1().expect("host");
        assert_eq!(v, vec![0.0, 0.0, 0.0, 0.5, 3.0]);
        let g = y.sum_all().and_then(|s| s.backward()).expect("grad");
        let gx: Vec<f32> = g.get(x.as_tensor()).expect("gx").to_vec1().expect("host");
        assert_eq!(gx, vec![0.0, 0.0, 0.0, 1.0, 1.0]);
    }

    #[test]
    fn projection_layer_is_first_and_in_the_actor_group() {
        let cfg = ModelConfig { projection_dim: 32, ..ModelConfig::default() };
        let net = ActorCritic::new(384, 10, &cfg, &mut Rng::new(2), &Device::Cpu).expect("net");
        let p = net.projection().expect("projection");
        assert_eq!(p.weight.dims(), &[32, 384]);
        assert!(net.actor_vars().iter().any(|n| n.name == "encoder.projection.weight"));
        let out = net.forward(&Tensor::ones((3, 384), DType::F32, &Device::Cpu).expect("x")).expect("fwd");
        assert_eq!(out.logits.dims(), &[3, 10]);
    }

    #[test]
    fn sampling_follows_probabilities_and_greedy_is_argmax() {
        let logits = Tensor::new(&[[0.0f32, (3.0f32).ln()], [5.0, 0.0]], &Device::Cpu).expect("t");
        let mut rng = Rng::new(9);
        let mut ones = 0;
        for _ in 0..20_000 {
            let s = sample_actions(&logits, &mut rng, false).expect("sample");
            ones += s.actions[0];
            let want = if s.actions[0] == 1 { 0.75f32.ln() } else { 0.25f32.ln() };
            assert!((s.log_probs[0] - want).abs() < 1e-5);
        }
        assert!((f64::from(ones) / 20_000.0 - 0.75).abs() < 0.015, "{ones}");
        let g = sample_actions(&logits, &mut rng, true).expect("greedy");
        assert_eq!(g.actions, vec![1, 0]);
    }
}
