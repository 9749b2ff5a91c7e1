//! Adam without weight decay whose state (step count and both moments) can be
//! saved and restored exactly. On the CPU the update runs on host slices (one
//! read of each gradient, one write of each parameter) instead of a dozen
//! small tensor ops per parameter; on other devices it uses tensor ops.

use candle_core::{Tensor, backprop::GradStore};

use crate::{NamedVar, NnError};

/// Adam's hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamSettings {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay. Default 0.9.
    pub beta1: f64,
    /// Second-moment decay. Default 0.999.
    pub beta2: f64,
    /// Denominator epsilon. Default 1e-8 (torch); mappo's config default is 1e-5.
    pub eps: f64,
}

impl Default for AdamSettings {
    fn default() -> Self {
        Self { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }
}

#[derive(Debug)]
enum Moments {
    Host { m: Vec<f32>, v: Vec<f32> },
    Device { m: Tensor, v: Tensor },
}

#[derive(Debug)]
struct Slot {
    param: NamedVar,
    moments: Moments,
}

/// Adam over a group of parameters.
#[derive(Debug)]
pub struct Adam {
    slots: Vec<Slot>,
    settings: AdamSettings,
    step: u64,
}

impl Adam {
    /// An optimizer over `params` (zero moments, step 0).
    pub fn new(params: Vec<NamedVar>, settings: AdamSettings) -> Result<Self, NnError> {
        let slots = params
            .into_iter()
            .map(|p| {
                let moments = if p.var.device().is_cpu() {
                    let n = p.var.elem_count();
                    Moments::Host { m: vec![0.0; n], v: vec![0.0; n] }
                } else {
                    Moments::Device { m: p.var.zeros_like()?, v: p.var.zeros_like()? }
                };
                Ok(Slot { param: p, moments })
            })
            .collect::<Result<Vec<_>, NnError>>()?;
        Ok(Self { slots, settings, step: 0 })
    }

    /// The current learning rate.
    pub fn lr(&self) -> f64 {
        self.settings.lr
    }

    /// Sets the learning rate (for annealing).
    pub fn set_lr(&mut self, lr: f64) {
        self.settings.lr = lr;
    }

    /// Number of steps taken.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The gradients of this optimizer's parameters present in `grads`.
    pub fn grads<'a>(&self, grads: &'a GradStore) -> Vec<&'a Tensor> {
        self.slots.iter().filter_map(|s| grads.get(s.param.var.as_tensor())).collect()
    }

    /// One Adam step with every gradient multiplied by `grad_scale` first (the
    /// global-norm clip factor). Parameters without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore, grad_scale: f64) -> Result<(), NnError> {
        self.step += 1;
        let AdamSettings { lr, beta1, beta2, eps } = self.settings;
        let t = self.step as i32;
        let bc1 = 1.0 - beta1.powi(t);
        let bc2 = 1.0 - beta2.powi(t);
        let step_size = lr / bc1;
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.param.var.as_tensor()) else {
                continue;
            };
            match &mut slot.moments {
                Moments::Host { m, v } => {
                    let g = g.flatten_all()?.to_vec1::<f32>()?;
                    let mut p = slot.param.var.flatten_all()?.to_vec1::<f32>()?;
                    let (b1, b2, s) = (beta1 as f32, beta2 as f32, grad_scale as f32);
                    let (ss, bc2s, e) = (step_size as f32, bc2.sqrt() as f32, eps as f32);
                    for (((pi, mi), vi), gi) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(&g) {
                        let gi = gi * s;
                        *mi = b1 * *mi + (1.0 - b1) * gi;
                        *vi = b2 * *vi + (1.0 - b2) * gi * gi;
                        *pi -= ss * *mi / (vi.sqrt() / bc2s + e);
                    }
                    let shape = slot.param.var.shape().clone();
                    slot.param.var.set(&Tensor::from_vec(p, shape, slot.param.var.device())?)?;
                }
                Moments::Device { m, v } => {
                    let g = g.affine(grad_scale, 0.0)?;
                    *m = m.affine(beta1, 0.0)?.add(&g.affine(1.0 - beta1, 0.0)?)?;
                    *v = v.affine(beta2, 0.0)?.add(&g.sqr()?.affine(1.0 - beta2, 0.0)?)?;
                    let denom = v.affine(1.0 / bc2, 0.0)?.sqrt()?.affine(1.0, eps)?;
                    let upd = m.div(&denom)?.affine(step_size, 0.0)?;
                    slot.param.var.set(&slot.param.var.as_tensor().sub(&upd)?)?;
                }
            }
        }
        Ok(())
    }

    /// The state as named tensors (`<prefix>.m.<param>`, `<prefix>.v.<param>`)
    /// plus the step count.
    pub fn state(&self, prefix: &str) -> Result<(Vec<(String, Tensor)>, u64), NnError> {
        let mut out = Vec::with_capacity(self.slots.len() * 2);
        for s in &self.slots {
            let (m, v) = match &s.moments {
                Moments::Host { m, v } => {
                    let shape = s.param.var.shape().clone();
                    let dev = s.param.var.device();
                    (Tensor::from_slice(m, shape.clone(), dev)?, Tensor::from_slice(v, shape, dev)?)
                }
                Moments::Device { m, v } => (m.clone(), v.clone()),
            };
            out.push((format!("{prefix}.m.{}", s.param.name), m));
            out.push((format!("{prefix}.v.{}", s.param.name), v));
        }
        Ok((out, self.step))
    }

    /// Restores a state written by [`Adam::state`]; `get` looks a tensor up by name.
    pub fn load_state(
        &mut self,
        prefix: &str,
        step: u64,
        mut get: impl FnMut(&str) -> Option<Tensor>,
    ) -> Result<(), NnError> {
        for s in &mut self.slots {
            let mut fetch = |kind: &str| -> Result<Tensor, NnError> {
                let name = format!("{prefix}.{kind}.{}", s.param.name);
                let t =
                    get(&name).ok_or_else(|| NnError::StateMismatch(format!("missing tensor `{name}`")))?;
                if t.shape() != s.param.var.shape() {
                    return Err(NnError::StateMismatch(format!(
                        "`{name}` has shape {:?}, the model needs {:?}",
                        t.dims(),
                        s.param.var.dims()
                    )));
                }
                Ok(t.to_device(s.param.var.device())?.to_dtype(candle_core::DType::F32)?)
            };
            let (m, v) = (fetch("m")?, fetch("v")?);
            s.moments = match s.moments {
                Moments::Host { .. } => Moments::Host {
                    m: m.flatten_all()?.to_vec1::<f32>()?,
                    v: v.flatten_all()?.to_vec1::<f32>()?,
                },
                Moments::Device { .. } => Moments::Device { m, v },
            };
        }
        self.step = step;
        Ok(())
    }
}

/// The global L2 norm of a set of gradients (one host sync).
pub fn global_grad_norm(grads: &[&Tensor]) -> Result<f64, NnError> {
    let mut total = 0f64;
    let mut device_terms = Vec::new();
    for g in grads {
        if g.device().is_cpu() {
            let v = g.flatten_all()?.to_vec1::<f32>()?;
            total += v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>();
        } else {
            device_terms.push(g.sqr()?.sum_all()?);
        }
    }
    if !device_terms.is_empty() {
        total += f64::from(Tensor::stack(&device_terms, 0)?.sum_all()?.to_scalar::<f32>()?);
    }
    Ok(total.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Reference Adam in f64 (torch's formula).
    #[test]
    fn matches_the_reference_formula_and_minimises() {
        let dev = Device::Cpu;
        let var = Var::new(&[1.0f32, -2.0, 3.0], &dev).expect("var");
        let s = AdamSettings { lr: 0.1, ..Default::default() };
        let mut opt = Adam::new(vec![NamedVar { name: "x".into(), var: var.clone() }], s).expect("adam");
        let (mut p, mut m, mut v) = ([1.0f64, -2.0, 3.0], [0f64; 3], [0f64; 3]);
        for t in 1..=50 {
            let loss = var.as_tensor().sqr().and_then(|x| x.sum_all()).expect("loss");
            let grads = loss.backward().expect("backward");
            opt.step(&grads, 0.5).expect("step");
            for i in 0..3 {
                let g = 2.0 * p[i] * 0.5;
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = v[i] / (1.0 - 0.999f64.powi(t));
                p[i] -= 0.1 * mh / (vh.sqrt() + 1e-8);
            }
        }
        let got: Vec<f32> = var.as_tensor().to_vec1().expect("host");
        for i in 0..3 {
            assert!((f64::from(got[i]) - p[i]).abs() < 1e-4, "{got:?} vs {p:?}");
        }
        assert!(got.iter().all(|x| x.abs() < 1.0));
    }

    #[test]
    fn state_roundtrip_continues_identically() {
        let dev = Device::Cpu;
        let run = |split: bool| -> Vec<f32> {
            let var = Var::new(&[0.5f32, -1.5], &dev).expect("var");
            let nv = || vec![NamedVar { name: "w".into(), var: var.clone() }];
            let mut opt = Adam::new(nv(), AdamSettings::default()).expect("adam");
            for i in 0..10 {
                if split && i == 5 {
                    let (st, step) = opt.state("actor").expect("state");
                    let mut fresh = Adam::new(nv(), AdamSettings::default()).expect("adam");
                    fresh
                        .load_state("actor", step, |n| {
                            st.iter().find(|(k, _)| k == n).map(|(_, t)| t.clone())
                        })
                        .expect("load");
                    opt = fresh;
                }
                let loss = var.as_tensor().powf(4.0).and_then(|x| x.sum_all()).expect("loss");
                opt.step(&loss.backward().expect("grads"), 1.0).expect("step");
            }
            var.as_tensor().to_vec1().expect("host")
        };
        assert_eq!(run(false), run(true));
    }

    #[test]
    fn global_norm() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[3.0f32], &dev).expect("a");
        let b = Tensor::new(&[[4.0f32]], &dev).expect("b");
        assert!((global_grad_norm(&[&a, &b]).expect("norm") - 5.0).abs() < 1e-9);
    }
}
