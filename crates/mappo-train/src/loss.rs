//! The PPO loss head, fused on the host.
//!
//! The loss depends on the network only through the logits `[n, A]` and the
//! values `[n]`. This module computes, from those (one transfer each), the
//! loss, its statistics and its exact gradient with respect to logits and
//! values. The trainer then back-propagates the surrogate
//! `Σ logits ⊙ G_logits + Σ values ⊙ g_values`, whose parameter gradients
//! equal the loss's: autograd runs through the network only, instead of
//! through some twenty small loss ops (per-op overhead dominates at this
//! size). A test checks the gradient against candle's autograd of the
//! written-out loss.
//!
//! `loss = policy_loss − entropy_coef · entropy + value_coef · value_loss` with
//! * `policy_loss = −mean(min(r·Â, clip(r, 1−ε, 1+ε)·Â))`, `r = exp(logπ − logπ_old)`;
//! * `entropy = mean(−Σ π log π)`;
//! * `value_loss = mean((V − R)²)`, or with `clip_value`
//!   `mean(max((V − R)², (V_old + clip(V − V_old, −ε, ε) − R)²))`.

use mappo_buffer::Batch;
use mappo_config::PpoConfig;

/// The loss's value, its parts and diagnostics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossStats {
    /// Total loss.
    pub loss: f64,
    /// Clipped-surrogate policy loss.
    pub policy_loss: f64,
    /// Value loss.
    pub value_loss: f64,
    /// Mean entropy.
    pub entropy: f64,
    /// k3 estimate of KL(old ‖ new): mean((r − 1) − log r).
    pub approx_kl: f64,
    /// Share of samples with |r − 1| > ε.
    pub clipfrac: f64,
}

/// Gradients of the loss with respect to the network's outputs.
#[derive(Debug, Clone)]
pub struct HeadGrads {
    /// `[n, A]` row-major.
    pub logits: Vec<f32>,
    /// `[n]`.
    pub values: Vec<f32>,
}

/// Loss, statistics and output gradients for one minibatch.
pub fn ppo_loss_head(logits: &[f32], values: &[f32], mb: &Batch, p: &PpoConfig) -> (LossStats, HeadGrads) {
    let n = mb.len();
    let a = logits.len() / n.max(1);
    let nf = n.max(1) as f64;
    let eps = p.clip_eps;
    let (lo, hi) = (1.0 - eps, 1.0 + eps);
    let mut g_logits = vec![0f32; logits.len()];
    let mut g_values = vec![0f32; n];
    let (mut pg, mut ent, mut vl, mut kl, mut clipped) = (0f64, 0f64, 0f64, 0f64, 0usize);
    let mut logp = vec![0f64; a];
    let mut prob = vec![0f64; a];
    for i in 0..n {
        let row = &logits[i * a..(i + 1) * a];
        mappo_nn::log_softmax_row(row, &mut logp);
        let mut h = 0f64;
        for j in 0..a {
            prob[j] = logp[j].exp();
            h -= prob[j] * logp[j];
        }
        let act = mb.actions[i] as usize;
        let log_ratio = logp[act] - f64::from(mb.old_log_probs[i]);
        let r = log_ratio.exp();
        let adv = f64::from(mb.advantages[i]);
        let unclipped = r * adv;
        let clip_term = r.clamp(lo, hi) * adv;
        pg -= unclipped.min(clip_term);
        ent += h;
        kl += (r - 1.0) - log_ratio;
        clipped += usize::from((r - 1.0).abs() > eps);
        // d(−min)/d logπ_a: −Â·r unless the clipped term is the strict minimum.
        let d_logp = if clip_term < unclipped { 0.0 } else { -adv * r / nf };
        let c_ent = p.entropy_coef / nf;
        let g = &mut g_logits[i * a..(i + 1) * a];
        for j in 0..a {
            let onehot = if j == act { 1.0 } else { 0.0 };
            // policy part: d_logp · (δ_aj − π_j); entropy part: −c·dH/dl_j = c·π_j(log π_j + H)
            g[j] = (d_logp * (onehot - prob[j]) + c_ent * prob[j] * (logp[j] + h)) as f32;
        }
        let v = f64::from(values[i]);
        let ret = f64::from(mb.returns[i]);
        let un = (v - ret).powi(2);
        let (term, dv) = if p.clip_value {
            let old = f64::from(mb.old_values[i]);
            let vc = old + (v - old).clamp(-eps, eps);
            let cl = (vc - ret).powi(2);
            if un >= cl {
                (un, 2.0 * (v - ret))
            } else {
                let inside = (v - old).abs() < eps;
                (cl, if inside { 2.0 * (vc - ret) } else { 0.0 })
            }
        } else {
            (un, 2.0 * (v - ret))
        };
        vl += term;
        g_values[i] = (p.value_coef * dv / nf) as f32;
    }
    let (policy_loss, entropy, value_loss) = (pg / nf, ent / nf, vl / nf);
    let stats = LossStats {
        loss: policy_loss - p.entropy_coef * entropy + p.value_coef * value_loss,
        policy_loss,
        value_loss,
        entropy,
        approx_kl: kl / nf,
        clipfrac: clipped as f64 / nf,
    };
    (stats, HeadGrads { logits: g_logits, values: g_values })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Device, Tensor, Var};
    use mappo_config::Rng;

    /// The written-out loss in candle ops, differentiated by autograd.
    fn autograd(
        logits: &[f32],
        values: &[f32],
        mb: &Batch,
        p: &PpoConfig,
        a: usize,
    ) -> (f64, Vec<f32>, Vec<f32>) {
        let dev = Device::Cpu;
        let n = mb.len();
        let l = Var::from_tensor(&Tensor::from_slice(logits, (n, a), &dev).expect("l")).expect("var");
        let v = Var::from_tensor(&Tensor::from_slice(values, n, &dev).expect("v")).expect("var");
        let t = |x: &[f32]| Tensor::from_slice(x, n, &dev).expect("t");
        let acts = Tensor::from_slice(&mb.actions, (n, 1), &dev).expect("a");
        let (old, adv, ret, oldv) =
            (t(&mb.old_log_probs), t(&mb.advantages), t(&mb.returns), t(&mb.old_values));
        let f = || -> candle_core::Result<Tensor> {
            let lp = candle_nn::ops::log_softmax(l.as_tensor(), D::Minus1)?;
            let new = lp.gather(&acts, 1)?.squeeze(1)?;
            let ratio = (new - &old)?.exp()?;
            let s1 = (&ratio * &adv)?;
            let s2 = (ratio.clamp((1.0 - p.clip_eps) as f32, (1.0 + p.clip_eps) as f32)? * &adv)?;
            let pg = s1.minimum(&s2)?.mean_all()?.neg()?;
            let negent = (lp.exp()? * &lp)?.sum(1)?.mean_all()?;
            let un = (v.as_tensor() - &ret)?.sqr()?;
            let vl = if p.clip_value {
                let d = (v.as_tensor() - &oldv)?.clamp(-p.clip_eps as f32, p.clip_eps as f32)?;
                let cl = ((&oldv + d)? - &ret)?.sqr()?;
                un.maximum(&cl)?.mean_all()?
            } else {
                un.mean_all()?
            };
            (pg + negent.affine(p.entropy_coef, 0.0)?)? + vl.affine(p.value_coef, 0.0)?
        };
        let loss = f().expect("loss");
        let grads = loss.backward().expect("backward");
        let gl = grads.get(l.as_tensor()).expect("gl").flatten_all().and_then(|x| x.to_vec1()).expect("h");
        let gv = grads.get(v.as_tensor()).expect("gv").to_vec1().expect("h");
        (f64::from(loss.to_scalar::<f32>().expect("s")), gl, gv)
    }

    fn case(clip_value: bool, seed: u64) {
        let (n, a) = (64, 5);
        let mut rng = Rng::new(seed);
        let logits = rng.normal_vec(n * a);
        let values = rng.normal_vec(n);
        let actions: Vec<u32> = (0..n).map(|_| rng.below(a as u64) as u32).collect();
        // old log-probs near the new ones so that some ratios clip and some do not
        let old: Vec<f32> = (0..n)
            .map(|i| {
                let row = &logits[i * a..(i + 1) * a];
                let lse = row.iter().map(|x| x.exp()).sum::<f32>().ln();
                row[actions[i] as usize] - lse + 0.3 * rng.normal() as f32
            })
            .collect();
        let mb = Batch {
            obs: Tensor::zeros((n, 1), candle_core::DType::F32, &Device::Cpu).expect("obs"),
            actions,
            old_log_probs: old,
            old_values: rng.normal_vec(n),
            advantages: rng.normal_vec(n),
            returns: rng.normal_vec(n),
        };
        let p = PpoConfig { clip_value, entropy_coef: 0.05, ..PpoConfig::default() };
        let (stats, g) = ppo_loss_head(&logits, &values, &mb, &p);
        let (loss, gl, gv) = autograd(&logits, &values, &mb, &p, a);
        assert!((stats.loss - loss).abs() < 1e-5, "{} vs {loss}", stats.loss);
        for (x, y) in g.logits.iter().zip(&gl) {
            assert!((x - y).abs() < 1e-6, "logit grad {x} vs {y}");
        }
        for (x, y) in g.values.iter().zip(&gv) {
            assert!((x - y).abs() < 1e-6, "value grad {x} vs {y}");
        }
        assert!(stats.clipfrac > 0.0 && stats.clipfrac < 1.0, "{}", stats.clipfrac);
    }

    #[test]
    fn gradients_match_autograd_of_the_written_out_loss() {
        case(false, 1);
        case(false, 2);
    }

    #[test]
    fn gradients_match_autograd_with_value_clipping() {
        case(true, 3);
        case(true, 4);
    }
}
