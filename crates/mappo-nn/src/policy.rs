//! The [`Policy`] trait and the [`ActorCritic`] network.

use std::ops::Range;

use candle_core::{DType, Device, Tensor, Var};
use mappo_config::{CriticKind, ModelConfig, Rng};

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

/// The logit of an option a row's stage does not have: its probability is exactly 0 (`exp` of
/// it underflows), so it is never sampled and gets no gradient.
pub const MASKED_LOGIT: f32 = -1e9;

/// The shape of a multi-stage actor-critic beyond its input width: how many options each stage
/// has, where a row says its stage, and what the critic sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkLayout {
    /// Options per stage, in order (one entry: a one-step router's agents).
    pub stage_sizes: Vec<usize>,
    /// The observation's one-hot stage columns (needed with more than one stage).
    pub stage_columns: Option<Range<usize>>,
    /// The value function.
    pub critic: CriticKind,
    /// The observation columns the `local` critic reads (the prompt and the stage id).
    pub local_columns: Vec<usize>,
}

impl NetworkLayout {
    /// One stage of `num_actions` options with the shared value head: today's router.
    pub fn one_stage(num_actions: usize) -> Self {
        Self {
            stage_sizes: vec![num_actions],
            stage_columns: None,
            critic: CriticKind::Shared,
            local_columns: Vec::new(),
        }
    }
}

/// The encoder of a network: `[projection] → Linear → ReLU → Linear → ReLU`, its weights drawn
/// in that order (the actor's and a critic of its own share this shape).
#[derive(Debug, Clone)]
struct Trunk {
    projection: Option<Linear>,
    layers: Vec<Linear>,
}

impl Trunk {
    /// With `cfg.projection_dim > 0`, a learned linear projection `inp → projection_dim` (gain 1,
    /// no activation) comes first; then two `hidden_dim` ReLU layers.
    fn new(inp: usize, cfg: &ModelConfig, rng: &mut Rng, device: &Device) -> Result<Self, NnError> {
        let mut width = inp;
        let projection = if cfg.projection_dim > 0 {
            let p = Linear::orthogonal(width, cfg.projection_dim, 1.0, rng, device)?;
            width = cfg.projection_dim;
            Some(p)
        } else {
            None
        };
        let h = cfg.hidden_dim;
        let layers = vec![
            Linear::orthogonal(width, h, cfg.init_gain_hidden, rng, device)?,
            Linear::orthogonal(h, h, cfg.init_gain_hidden, rng, device)?,
        ];
        Ok(Self { projection, layers })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, NnError> {
        let mut x = match &self.projection {
            Some(p) => p.forward(x)?,
            None => x.clone(),
        };
        for layer in &self.layers {
            x = relu(&layer.forward(&x)?)?;
        }
        Ok(x)
    }

    /// Its parameters as `<prefix>.projection.*` and `<prefix>.<i>.*`.
    fn named(&self, prefix: &str, out: &mut Vec<NamedVar>) {
        if let Some(p) = &self.projection {
            p.named(&format!("{prefix}.projection"), out);
        }
        for (i, l) in self.layers.iter().enumerate() {
            l.named(&format!("{prefix}.{i}"), out);
        }
    }
}

/// A critic of its own (`centralized` or `local`): `[projection] → Linear → ReLU → Linear → ReLU
/// → Linear(1)` over its input columns.
#[derive(Debug, Clone)]
struct CriticNet {
    /// The observation columns it reads (`None`: all of them).
    columns: Option<Tensor>,
    trunk: Trunk,
    head: Linear,
}

impl CriticNet {
    fn new(
        inp: usize,
        columns: Option<&[usize]>,
        cfg: &ModelConfig,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Self, NnError> {
        let trunk = Trunk::new(columns.map_or(inp, <[usize]>::len), cfg, rng, device)?;
        let head = Linear::orthogonal(cfg.hidden_dim, 1, cfg.init_gain_value, rng, device)?;
        let columns = match columns {
            Some(c) => {
                let idx: Vec<u32> = c.iter().map(|&i| i as u32).collect();
                Some(Tensor::from_vec(idx, c.len(), device)?)
            }
            None => None,
        };
        Ok(Self { columns, trunk, head })
    }

    fn forward(&self, obs: &Tensor) -> Result<Tensor, NnError> {
        let x = match &self.columns {
            Some(idx) => obs.index_select(idx, 1)?,
            None => obs.clone(),
        };
        Ok(self.head.forward(&self.trunk.forward(&x)?)?.squeeze(1)?)
    }

    fn named(&self, out: &mut Vec<NamedVar>) {
        self.trunk.named("critic.encoder", out);
        self.head.named("critic.value_head", out);
    }
}

/// The value function of an [`ActorCritic`].
#[derive(Debug, Clone)]
enum Critic {
    /// A value head on the actor's encoder.
    Shared(Linear),
    /// A network of its own.
    Own(CriticNet),
}

/// Shared-encoder actor-critic:
/// `obs → [projection] → Linear → ReLU → Linear → ReLU → {policy head(s), value head}`.
///
/// With several stages (a pipeline's), each stage has its own policy head on the one encoder
/// (MAPPO's parameter sharing, the stage id one-hot in the observation): a row's logits are its
/// stage's head's, padded with [`MASKED_LOGIT`] to the widest stage. The critic is a value head
/// on the encoder (`shared`) or a network of its own over the whole observation (`centralized`)
/// or over the prompt and stage columns only (`local`).
#[derive(Debug, Clone)]
pub struct ActorCritic {
    encoder: Trunk,
    policy_heads: Vec<Linear>,
    critic: Critic,
    stage_sizes: Vec<usize>,
    stage_columns: Option<Range<usize>>,
    num_actions: usize,
}

impl ActorCritic {
    /// Builds the network with orthogonal weights drawn from `rng`. With
    /// `cfg.projection_dim > 0`, a learned linear projection
    /// `obs_dim → projection_dim` (gain 1, no activation) comes first.
    /// One stage of `num_actions` options and the shared value head (`cfg.critic` is not read:
    /// see [`ActorCritic::with_layout`]).
    pub fn new(
        obs_dim: usize,
        num_actions: usize,
        cfg: &ModelConfig,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Self, NnError> {
        Self::with_layout(obs_dim, &NetworkLayout::one_stage(num_actions), cfg, rng, device)
    }

    /// Builds a network of any [`NetworkLayout`]. The draws from `rng` come in the order
    /// projection, encoder, policy heads (stage by stage), value head or critic network, so a
    /// one-stage layout with the shared critic draws exactly what [`ActorCritic::new`] did
    /// before stages existed (the same weights from the same seed).
    pub fn with_layout(
        obs_dim: usize,
        layout: &NetworkLayout,
        cfg: &ModelConfig,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Self, NnError> {
        let sizes = &layout.stage_sizes;
        if sizes.is_empty() || sizes.contains(&0) {
            return Err(NnError::Shape(format!("every stage needs at least one option, got {sizes:?}")));
        }
        let stage_columns = if sizes.len() > 1 {
            match &layout.stage_columns {
                Some(r) if r.len() == sizes.len() && r.end <= obs_dim => Some(r.clone()),
                other => {
                    return Err(NnError::Shape(format!(
                        "{} stages need {} one-hot stage columns within the {obs_dim} inputs, got {other:?}",
                        sizes.len(),
                        sizes.len()
                    )));
                }
            }
        } else {
            None
        };
        if layout.critic == CriticKind::Local
            && (layout.local_columns.is_empty() || layout.local_columns.iter().any(|&c| c >= obs_dim))
        {
            return Err(NnError::Shape(format!(
                "the local critic's columns {:?} must be within the {obs_dim} inputs",
                layout.local_columns
            )));
        }
        let encoder = Trunk::new(obs_dim, cfg, rng, device)?;
        let h = cfg.hidden_dim;
        let mut policy_heads = Vec::with_capacity(sizes.len());
        for &n in sizes {
            policy_heads.push(Linear::orthogonal(h, n, cfg.init_gain_policy, rng, device)?);
        }
        let critic = match layout.critic {
            CriticKind::Shared => Critic::Shared(Linear::orthogonal(h, 1, cfg.init_gain_value, rng, device)?),
            CriticKind::Centralized => Critic::Own(CriticNet::new(obs_dim, None, cfg, rng, device)?),
            CriticKind::Local => {
                Critic::Own(CriticNet::new(obs_dim, Some(&layout.local_columns), cfg, rng, device)?)
            }
        };
        let num_actions = sizes.iter().copied().max().unwrap_or(0);
        Ok(Self { encoder, policy_heads, critic, stage_sizes: sizes.clone(), stage_columns, num_actions })
    }

    /// The learned input projection, if any.
    pub fn projection(&self) -> Option<&Linear> {
        self.encoder.projection.as_ref()
    }

    /// Options per stage.
    pub fn stage_sizes(&self) -> &[usize] {
        &self.stage_sizes
    }

    fn encode(&self, obs: &Tensor) -> Result<Tensor, NnError> {
        self.encoder.forward(obs)
    }

    /// Each row's logits from its stage's head, padded with [`MASKED_LOGIT`]: the sum over
    /// stages of `stage one-hot[:, k] × head_k(h)`, exact because the one-hot is 0 or 1.
    fn staged_logits(&self, obs: &Tensor, h: &Tensor) -> Result<Tensor, NnError> {
        let (Some(cols), [first, ..]) = (&self.stage_columns, self.policy_heads.as_slice()) else {
            return Err(NnError::Shape("a network without policy heads".into()));
        };
        if self.policy_heads.len() == 1 {
            return first.forward(h);
        }
        let rows = h.dim(0)?;
        let stage = obs.narrow(1, cols.start, cols.len())?;
        let mut total: Option<Tensor> = None;
        for (k, (head, &n)) in self.policy_heads.iter().zip(&self.stage_sizes).enumerate() {
            let mut l = head.forward(h)?;
            if n < self.num_actions {
                let pad = Tensor::full(MASKED_LOGIT, (rows, self.num_actions - n), h.device())?;
                l = Tensor::cat(&[&l, &pad], 1)?;
            }
            let part = l.broadcast_mul(&stage.narrow(1, k, 1)?)?;
            total = Some(match total {
                Some(t) => (t + part)?,
                None => part,
            });
        }
        total.ok_or_else(|| NnError::Shape("no stage".into()))
    }
}

impl Policy for ActorCritic {
    fn forward(&self, obs: &Tensor) -> Result<PolicyOutput, NnError> {
        let h = self.encode(obs)?;
        let logits = match (self.policy_heads.as_slice(), &self.stage_columns) {
            ([only], None) => only.forward(&h)?,
            _ => self.staged_logits(obs, &h)?,
        };
        let values = match &self.critic {
            Critic::Shared(head) => head.forward(&h)?.squeeze(1)?,
            Critic::Own(net) => net.forward(obs)?,
        };
        Ok(PolicyOutput { logits, values })
    }

    fn actor_vars(&self) -> Vec<NamedVar> {
        let mut v = Vec::new();
        self.encoder.named("encoder", &mut v);
        if let [only] = self.policy_heads.as_slice() {
            only.named("policy_head", &mut v);
        } else {
            for (k, head) in self.policy_heads.iter().enumerate() {
                head.named(&format!("policy_head.{k}"), &mut v);
            }
        }
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn critic_vars(&self) -> Vec<NamedVar> {
        let mut v = Vec::new();
        match &self.critic {
            Critic::Shared(head) => head.named("value_head", &mut v),
            Critic::Own(net) => net.named(&mut v),
        }
        v.sort_by(|a, b| a.name.cmp(&b.name));
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

#[cfg(test)]
mod stage_tests {
    use super::*;

    fn layout(critic: CriticKind) -> NetworkLayout {
        // Input: 4 prompt columns, then 2 one-hot stage columns.
        NetworkLayout {
            stage_sizes: vec![3, 2],
            stage_columns: Some(4..6),
            critic,
            local_columns: vec![0, 1, 4, 5],
        }
    }

    #[test]
    fn a_one_stage_layout_is_the_old_network_weight_for_weight() {
        let cfg = ModelConfig::default();
        let a = ActorCritic::new(8, 3, &cfg, &mut Rng::new(5), &Device::Cpu).expect("new");
        let b =
            ActorCritic::with_layout(8, &NetworkLayout::one_stage(3), &cfg, &mut Rng::new(5), &Device::Cpu)
                .expect("layout");
        let names: Vec<String> = a.all_vars().into_iter().map(|n| n.name).collect();
        assert_eq!(
            names,
            [
                "encoder.0.bias",
                "encoder.0.weight",
                "encoder.1.bias",
                "encoder.1.weight",
                "policy_head.bias",
                "policy_head.weight",
                "value_head.bias",
                "value_head.weight"
            ]
        );
        for (x, y) in a.all_vars().iter().zip(b.all_vars()) {
            let u: Vec<f32> = x.var.flatten_all().and_then(|t| t.to_vec1()).expect("u");
            let v: Vec<f32> = y.var.flatten_all().and_then(|t| t.to_vec1()).expect("v");
            assert_eq!(u, v, "{}", x.name);
        }
    }

    #[test]
    fn each_row_gets_its_stages_head_and_masked_padding() {
        for critic in [CriticKind::Shared, CriticKind::Centralized, CriticKind::Local] {
            let net = ActorCritic::with_layout(
                6,
                &layout(critic),
                &ModelConfig::default(),
                &mut Rng::new(1),
                &Device::Cpu,
            )
            .expect("net");
            let obs = Tensor::new(
                &[[0.5f32, -0.2, 0.1, 0.3, 1.0, 0.0], [0.5, -0.2, 0.1, 0.3, 0.0, 1.0]],
                &Device::Cpu,
            )
            .expect("obs");
            let out = net.forward(&obs).expect("forward");
            let l: Vec<Vec<f32>> = out.logits.to_vec2().expect("logits");
            assert_eq!(out.logits.dims(), &[2, 3]);
            assert!(l[0].iter().all(|v| v.abs() < 1.0), "stage 0 has 3 real options: {l:?}");
            assert_eq!(l[1][2], MASKED_LOGIT, "stage 1 has 2 options: {l:?}");
            assert_eq!(out.values.dims(), &[2]);
            let s = sample_actions(&out.logits, &mut Rng::new(3), false).expect("sample");
            assert!(s.actions[1] < 2);
            let heads = net.actor_vars().iter().filter(|v| v.name.starts_with("policy_head.")).count();
            assert_eq!(heads, 4, "two heads, weight and bias each");
            let critic_names: Vec<String> = net.critic_vars().into_iter().map(|v| v.name).collect();
            match critic {
                CriticKind::Shared => assert_eq!(critic_names, ["value_head.bias", "value_head.weight"]),
                _ => {
                    assert!(critic_names.iter().all(|n| n.starts_with("critic.")) && critic_names.len() == 6)
                }
            }
        }
    }

    #[test]
    fn the_local_critic_ignores_columns_it_does_not_see() {
        let net = ActorCritic::with_layout(
            6,
            &layout(CriticKind::Local),
            &ModelConfig::default(),
            &mut Rng::new(2),
            &Device::Cpu,
        )
        .expect("net");
        // Rows differ only in columns 2 and 3, which the local critic does not read.
        let obs = Tensor::new(
            &[[0.5f32, -0.2, 0.1, 0.3, 1.0, 0.0], [0.5, -0.2, 0.9, -0.7, 1.0, 0.0]],
            &Device::Cpu,
        )
        .expect("obs");
        let v: Vec<f32> = net.forward(&obs).expect("forward").values.to_vec1().expect("values");
        assert_eq!(v[0], v[1]);
        let central = ActorCritic::with_layout(
            6,
            &layout(CriticKind::Centralized),
            &ModelConfig::default(),
            &mut Rng::new(2),
            &Device::Cpu,
        )
        .expect("net");
        let w: Vec<f32> = central.forward(&obs).expect("forward").values.to_vec1().expect("values");
        assert_ne!(w[0], w[1]);
        assert!(
            ActorCritic::with_layout(
                6,
                &NetworkLayout { stage_columns: None, ..layout(CriticKind::Shared) },
                &ModelConfig::default(),
                &mut Rng::new(2),
                &Device::Cpu
            )
            .is_err()
        );
    }
}
