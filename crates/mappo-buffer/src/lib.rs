//! Rollout storage for PPO: transitions of a batch of environments over one
//! or more steps, generalised advantage estimation with `done` and
//! `truncated` flags, advantage normalisation and shuffled minibatches.
//!
//! Layout: step-major, index `t * num_envs + e`. Observations stay tensors on
//! their device (one `[num_envs, obs_dim]` tensor per step); the scalars
//! (actions, log-probabilities, values, rewards, flags) live on the host,
//! where GAE's backward recursion is cheap.

use candle_core::{Device, Tensor};
use mappo_config::Rng;
use thiserror::Error;

/// Errors of this crate.
#[derive(Debug, Error)]
pub enum BufferError {
    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// A pushed step does not have one entry per environment.
    #[error("step field `{field}` has {got} entries, expected {expected} (one per environment)")]
    Length {
        /// The field.
        field: &'static str,
        /// Its length.
        got: usize,
        /// The number of environments.
        expected: usize,
    },
    /// GAE or a batch was asked of an empty rollout.
    #[error("the rollout is empty")]
    Empty,
}

/// One batched transition.
#[derive(Debug, Clone)]
pub struct Transition<'a> {
    /// Observations `[num_envs, obs_dim]`.
    pub obs: &'a Tensor,
    /// Actions taken.
    pub actions: &'a [u32],
    /// log π(action | obs) when acting.
    pub log_probs: &'a [f32],
    /// V(obs) when acting.
    pub values: &'a [f32],
    /// Rewards received.
    pub rewards: &'a [f32],
    /// Terminal flags.
    pub done: &'a [bool],
    /// Truncation flags.
    pub truncated: &'a [bool],
    /// For truncated rows, V(final observation); other rows ignored. Empty
    /// when no row was truncated.
    pub truncated_values: &'a [f32],
}

/// A rollout: `num_steps` batched transitions of `num_envs` environments.
#[derive(Debug, Clone)]
pub struct Rollout {
    num_envs: usize,
    obs: Vec<Tensor>,
    actions: Vec<u32>,
    log_probs: Vec<f32>,
    values: Vec<f32>,
    rewards: Vec<f32>,
    done: Vec<bool>,
    truncated: Vec<bool>,
    truncated_values: Vec<f32>,
}

/// Advantages and returns (value targets), step-major like the rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct Gae {
    /// A_t.
    pub advantages: Vec<f32>,
    /// A_t + V(s_t).
    pub returns: Vec<f32>,
}

/// A training batch (or minibatch): observations as a tensor on the
/// rollout's device, the per-sample scalars on the host (the PPO loss head
/// works on host slices; see `mappo-train`).
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[n, obs_dim]`.
    pub obs: Tensor,
    /// Actions taken.
    pub actions: Vec<u32>,
    /// log π_old(action).
    pub old_log_probs: Vec<f32>,
    /// V_old.
    pub old_values: Vec<f32>,
    /// Advantages (normalised if asked).
    pub advantages: Vec<f32>,
    /// Value targets.
    pub returns: Vec<f32>,
}

impl Batch {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.actions.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

impl Rollout {
    /// An empty rollout for `num_envs` environments.
    pub fn new(num_envs: usize) -> Self {
        Self {
            num_envs,
            obs: Vec::new(),
            actions: Vec::new(),
            log_probs: Vec::new(),
            values: Vec::new(),
            rewards: Vec::new(),
            done: Vec::new(),
            truncated: Vec::new(),
            truncated_values: Vec::new(),
        }
    }

    /// Number of steps stored.
    pub fn num_steps(&self) -> usize {
        self.obs.len()
    }

    /// Number of transitions (steps × environments).
    pub fn len(&self) -> usize {
        self.actions.len()
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// Forgets every step (keeps allocations).
    pub fn clear(&mut self) {
        self.obs.clear();
        self.actions.clear();
        self.log_probs.clear();
        self.values.clear();
        self.rewards.clear();
        self.done.clear();
        self.truncated.clear();
        self.truncated_values.clear();
    }

    /// Rewards, step-major.
    pub fn rewards(&self) -> &[f32] {
        &self.rewards
    }

    /// Values at acting time, step-major.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Appends one batched transition.
    pub fn push(&mut self, t: Transition<'_>) -> Result<(), BufferError> {
        let n = self.num_envs;
        let check = |field, got: usize| {
            if got == n { Ok(()) } else { Err(BufferError::Length { field, got, expected: n }) }
        };
        check("obs", t.obs.dims().first().copied().unwrap_or(0))?;
        check("actions", t.actions.len())?;
        check("log_probs", t.log_probs.len())?;
        check("values", t.values.len())?;
        check("rewards", t.rewards.len())?;
        check("done", t.done.len())?;
        check("truncated", t.truncated.len())?;
        if !t.truncated_values.is_empty() {
            check("truncated_values", t.truncated_values.len())?;
        }
        self.obs.push(t.obs.clone());
        self.actions.extend_from_slice(t.actions);
        self.log_probs.extend_from_slice(t.log_probs);
        self.values.extend_from_slice(t.values);
        self.rewards.extend_from_slice(t.rewards);
        self.done.extend_from_slice(t.done);
        self.truncated.extend_from_slice(t.truncated);
        if t.truncated_values.is_empty() {
            self.truncated_values.extend(std::iter::repeat_n(0.0, n));
        } else {
            self.truncated_values.extend_from_slice(t.truncated_values);
        }
        Ok(())
    }

    /// Generalised advantage estimation. `last_values` is V(s_T) of each
    /// environment after the last stored step (ignored for rows whose last
    /// step ended its episode; may be empty when every row ended).
    ///
    /// * `done` — terminal: nothing is bootstrapped and the recursion restarts.
    /// * `truncated` — cut short: bootstraps from V(final observation) and the
    ///   recursion restarts (the next stored step belongs to a new episode).
    pub fn gae(&self, last_values: &[f32], gamma: f32, lambda: f32) -> Result<Gae, BufferError> {
        self.gae_with(last_values, gamma, lambda, |v| v)
    }

    /// [`Rollout::gae`] with every value (stored, truncation bootstraps and `last_values`)
    /// passed through `value` first: a critic that predicts normalised values (value
    /// normalisation) gives its outputs here and `value` maps them back to the reward's scale,
    /// so that advantages and returns are in that scale.
    pub fn gae_with(
        &self,
        last_values: &[f32],
        gamma: f32,
        lambda: f32,
        value: impl Fn(f32) -> f32,
    ) -> Result<Gae, BufferError> {
        let (n, steps) = (self.num_envs, self.num_steps());
        if steps == 0 {
            return Err(BufferError::Empty);
        }
        let mut adv = vec![0f32; n * steps];
        for e in 0..n {
            let mut next_adv = 0f32;
            for t in (0..steps).rev() {
                let i = t * n + e;
                let (delta, carry) = if self.done[i] {
                    (self.rewards[i] - value(self.values[i]), false)
                } else if self.truncated[i] {
                    (self.rewards[i] + gamma * value(self.truncated_values[i]) - value(self.values[i]), false)
                } else {
                    let next_v = if t + 1 == steps {
                        *last_values.get(e).ok_or(BufferError::Length {
                            field: "last_values",
                            got: last_values.len(),
                            expected: n,
                        })?
                    } else {
                        self.values[i + n]
                    };
                    (self.rewards[i] + gamma * value(next_v) - value(self.values[i]), t + 1 < steps)
                };
                next_adv = if carry { delta + gamma * lambda * next_adv } else { delta };
                adv[i] = next_adv;
            }
        }
        let returns = adv.iter().zip(&self.values).map(|(a, &v)| a + value(v)).collect();
        Ok(Gae { advantages: adv, returns })
    }

    /// The whole rollout as one batch on `device`, advantages normalised if asked.
    pub fn batch(&self, gae: &Gae, normalise: bool, device: &Device) -> Result<Batch, BufferError> {
        let obs = if self.obs.len() == 1 { self.obs[0].clone() } else { Tensor::cat(&self.obs, 0)? };
        self.make_batch(obs, None, gae, normalise, device)
    }

    /// The rollout shuffled and split into `num_minibatches` minibatches of
    /// (nearly) equal size, each with its own advantage normalisation.
    pub fn minibatches(
        &self,
        gae: &Gae,
        num_minibatches: usize,
        normalise: bool,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Vec<Batch>, BufferError> {
        let n = self.len();
        if n == 0 {
            return Err(BufferError::Empty);
        }
        if num_minibatches <= 1 {
            return Ok(vec![self.batch(gae, normalise, device)?]);
        }
        let all_obs = if self.obs.len() == 1 { self.obs[0].clone() } else { Tensor::cat(&self.obs, 0)? };
        let mut idx: Vec<u32> = (0..n as u32).collect();
        rng.shuffle(&mut idx);
        let k = num_minibatches.min(n);
        let mut out = Vec::with_capacity(k);
        let (base, extra) = (n / k, n % k);
        let mut start = 0;
        for j in 0..k {
            let len = base + usize::from(j < extra);
            let part = &idx[start..start + len];
            start += len;
            let it = Tensor::from_slice(part, len, all_obs.device())?;
            let obs = all_obs.index_select(&it, 0)?;
            out.push(self.make_batch(obs, Some(part), gae, normalise, device)?);
        }
        Ok(out)
    }

    fn make_batch(
        &self,
        obs: Tensor,
        idx: Option<&[u32]>,
        gae: &Gae,
        normalise: bool,
        device: &Device,
    ) -> Result<Batch, BufferError> {
        let pick_f = |v: &[f32]| -> Vec<f32> {
            match idx {
                Some(ix) => ix.iter().map(|&i| v[i as usize]).collect(),
                None => v.to_vec(),
            }
        };
        let actions: Vec<u32> = match idx {
            Some(ix) => ix.iter().map(|&i| self.actions[i as usize]).collect(),
            None => self.actions.clone(),
        };
        let mut adv = pick_f(&gae.advantages);
        if normalise {
            normalise_in_place(&mut adv);
        }
        Ok(Batch {
            obs: obs.to_device(device)?,
            actions,
            old_log_probs: pick_f(&self.log_probs),
            old_values: pick_f(&self.values),
            advantages: adv,
            returns: pick_f(&gae.returns),
        })
    }
}

/// `(x - mean) / (std + 1e-8)` with the unbiased standard deviation (as
/// torch's `std()`); a single element becomes 0.
pub fn normalise_in_place(x: &mut [f32]) {
    let n = x.len();
    if n == 0 {
        return;
    }
    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
    let var = if n > 1 {
        x.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / (n - 1) as f64
    } else {
        0.0
    };
    let denom = var.sqrt() + 1e-8;
    for v in x.iter_mut() {
        *v = ((f64::from(*v) - mean) / denom) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(r: &mut Rollout, rewards: &[f32], values: &[f32], done: &[bool], trunc: &[bool], tv: &[f32]) {
        let n = rewards.len();
        let obs = Tensor::zeros((n, 2), candle_core::DType::F32, &Device::Cpu).expect("obs");
        r.push(Transition {
            obs: &obs,
            actions: &vec![0; n],
            log_probs: &vec![0.0; n],
            values,
            rewards,
            done,
            truncated: trunc,
            truncated_values: tv,
        })
        .expect("push");
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn one_step_episodes_give_reward_minus_value() {
        let mut r = Rollout::new(3);
        push(&mut r, &[1.0, 0.5, -0.2], &[0.2, 0.5, 0.1], &[true; 3], &[false; 3], &[]);
        let g = r.gae(&[], 0.99, 0.95).expect("gae");
        close(&g.advantages, &[0.8, 0.0, -0.3]);
        close(&g.returns, &[1.0, 0.5, -0.2]);
    }

    /// Hand-computed, γ = 0.9, λ = 0.5, one environment, three steps.
    /// Env 0: no episode end; bootstrap from last value 2.0.
    ///   δ2 = 1 + 0.9·2.0 − 1.0 = 1.8          A2 = 1.8
    ///   δ1 = 0 + 0.9·1.0 − 0.5 = 0.4          A1 = 0.4 + 0.45·1.8 = 1.21
    ///   δ0 = 1 + 0.9·0.5 − 0.0 = 1.45         A0 = 1.45 + 0.45·1.21 = 1.9945
    /// Env 1: done at t = 1 (new episode at t = 2).
    ///   δ2 = 2 + 0.9·3.0 − 1.0 = 3.7          A2 = 3.7
    ///   δ1 = 1 − 0.5 = 0.5 (terminal)         A1 = 0.5
    ///   δ0 = 0 + 0.9·0.5 − 1.0 = −0.55        A0 = −0.55 + 0.45·0.5 = −0.325
    /// Env 2: truncated at t = 0 with V(final) = 4.0.
    ///   δ2 = 0 + 0.9·1.0 − 0.0 = 0.9          A2 = 0.9
    ///   δ1 = 0 + 0.9·0.0 − 2.0 = −2.0         A1 = −2.0 + 0.45·0.9 = −1.595
    ///   δ0 = 1 + 0.9·4.0 − 3.0 = 1.6 (cut)    A0 = 1.6
    #[test]
    fn gae_matches_hand_computed_values() {
        let mut r = Rollout::new(3);
        push(
            &mut r,
            &[1.0, 0.0, 1.0],
            &[0.0, 1.0, 3.0],
            &[false; 3],
            &[false, false, true],
            &[0.0, 0.0, 4.0],
        );
        push(&mut r, &[0.0, 1.0, 0.0], &[0.5, 0.5, 2.0], &[false, true, false], &[false; 3], &[]);
        push(&mut r, &[1.0, 2.0, 0.0], &[1.0, 1.0, 0.0], &[false; 3], &[false; 3], &[]);
        let g = r.gae(&[2.0, 3.0, 1.0], 0.9, 0.5).expect("gae");
        // step-major: t0 (e0, e1, e2), t1 (...), t2 (...)
        close(&g.advantages, &[1.9945, -0.325, 1.6, 1.21, 0.5, -1.595, 1.8, 3.7, 0.9]);
        let v = [0.0, 1.0, 3.0, 0.5, 0.5, 2.0, 1.0, 1.0, 0.0];
        let want: Vec<f32> = g.advantages.iter().zip(v).map(|(a, v)| a + v).collect();
        close(&g.returns, &want);
    }

    #[test]
    fn lambda_one_gives_discounted_returns() {
        let mut r = Rollout::new(1);
        for _ in 0..3 {
            push(&mut r, &[1.0], &[0.0], &[false], &[false], &[]);
        }
        let g = r.gae(&[0.0], 0.5, 1.0).expect("gae");
        close(&g.returns, &[1.75, 1.5, 1.0]);
    }

    #[test]
    fn normalisation_and_minibatches() {
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        normalise_in_place(&mut x);
        let mean: f32 = x.iter().sum::<f32>() / 4.0;
        let var: f32 = x.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 3.0;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5);

        let mut r = Rollout::new(10);
        let rewards: Vec<f32> = (0..10).map(|i| i as f32).collect();
        push(&mut r, &rewards, &[0.0; 10], &[true; 10], &[false; 10], &[]);
        let g = r.gae(&[], 0.99, 0.95).expect("gae");
        let mbs = r.minibatches(&g, 3, false, &mut Rng::new(1), &Device::Cpu).expect("mb");
        assert_eq!(mbs.iter().map(|b| b.len()).collect::<Vec<_>>(), vec![4, 3, 3]);
        assert_eq!(mbs.iter().map(|b| b.obs.dims()[0]).collect::<Vec<_>>(), vec![4, 3, 3]);
        let mut all: Vec<f32> = mbs.iter().flat_map(|b| b.returns.clone()).collect();
        assert_ne!(all, rewards, "shuffled");
        all.sort_by(f32::total_cmp);
        assert_eq!(all, rewards);
    }

    #[test]
    fn wrong_lengths_are_errors() {
        let mut r = Rollout::new(2);
        let obs = Tensor::zeros((2, 2), candle_core::DType::F32, &Device::Cpu).expect("obs");
        let e = r.push(Transition {
            obs: &obs,
            actions: &[0],
            log_probs: &[0.0, 0.0],
            values: &[0.0, 0.0],
            rewards: &[0.0, 0.0],
            done: &[true, true],
            truncated: &[false, false],
            truncated_values: &[],
        });
        assert!(matches!(e, Err(BufferError::Length { field: "actions", .. })));
        assert!(matches!(r.gae(&[], 0.9, 0.9), Err(BufferError::Empty)));
    }
}
