//! Value normalisation as MAPPO uses it (`ValueNorm` in Yu et al. 2022's code): the critic is
//! trained on returns standardised by running statistics, and its outputs are mapped back to
//! the reward's scale wherever values are used (GAE, the off-policy baseline, diagnostics).
//!
//! The statistics are exponential moving averages of the batch mean and mean square with
//! β = 0.99999 and a debiasing term (so that early on they are the plain average of every
//! batch seen); the variance is floored at 0.01 as in MAPPO. They are kept in `f64` and saved
//! in checkpoints, so that a resumed run continues bit-identically.

use candle_core::{DType, Device, Tensor};

/// MAPPO's weight of the old statistics per update.
const BETA: f64 = 0.99999;
/// Floor of the debiasing term before it is divided by.
const EPS: f64 = 1e-5;
/// Floor of the variance.
const MIN_VAR: f64 = 1e-2;
/// The checkpoint tensor holding `[mean, mean of squares, debiasing term]`.
pub(crate) const TENSOR: &str = "value_norm";

/// Running statistics of the returns.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct ValueNorm {
    mean: f64,
    mean_sq: f64,
    debias: f64,
}

impl ValueNorm {
    /// Folds one batch of returns into the statistics (an empty batch changes nothing).
    pub(crate) fn update(&mut self, returns: &[f32]) {
        if returns.is_empty() {
            return;
        }
        let n = returns.len() as f64;
        let m = returns.iter().map(|&r| f64::from(r)).sum::<f64>() / n;
        let sq = returns.iter().map(|&r| f64::from(r).powi(2)).sum::<f64>() / n;
        self.mean = BETA * self.mean + (1.0 - BETA) * m;
        self.mean_sq = BETA * self.mean_sq + (1.0 - BETA) * sq;
        self.debias = BETA * self.debias + (1.0 - BETA);
    }

    /// The debiased mean and standard deviation.
    fn moments(&self) -> (f64, f64) {
        let d = self.debias.max(EPS);
        let mean = self.mean / d;
        let var = (self.mean_sq / d - mean * mean).max(MIN_VAR);
        (mean, var.sqrt())
    }

    /// `(x − mean) / std`.
    pub(crate) fn normalise(&self, x: f32) -> f32 {
        let (m, s) = self.moments();
        ((f64::from(x) - m) / s) as f32
    }

    /// `x · std + mean`: a critic output back in the reward's scale.
    pub(crate) fn denormalise(&self, x: f32) -> f32 {
        let (m, s) = self.moments();
        (f64::from(x) * s + m) as f32
    }

    /// The statistics as a checkpoint tensor.
    pub(crate) fn to_tensor(self) -> candle_core::Result<Tensor> {
        Tensor::from_vec(vec![self.mean, self.mean_sq, self.debias], 3, &Device::Cpu)
    }

    /// The statistics from a checkpoint tensor written by [`ValueNorm::to_tensor`].
    pub(crate) fn from_tensor(t: &Tensor) -> Result<Self, String> {
        let v = t
            .to_dtype(DType::F64)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f64>())
            .map_err(|e| format!("the tensor `{TENSOR}` cannot be read: {e}"))?;
        match v.as_slice() {
            &[mean, mean_sq, debias] if v.iter().all(|x| x.is_finite()) && debias >= 0.0 => {
                Ok(Self { mean, mean_sq, debias })
            }
            _ => Err(format!("the tensor `{TENSOR}` must hold 3 finite numbers, it holds {v:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_to_zero_mean_unit_variance_and_round_trips() {
        let mut vn = ValueNorm::default();
        let batch: Vec<f32> = (0..1000).map(|i| 10.0 + (i % 7) as f32).collect();
        vn.update(&batch);
        let z: Vec<f64> = batch.iter().map(|&x| f64::from(vn.normalise(x))).collect();
        let mean = z.iter().sum::<f64>() / z.len() as f64;
        let var = z.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / z.len() as f64;
        assert!(mean.abs() < 1e-4, "mean {mean}");
        assert!((var - 1.0).abs() < 1e-3, "variance {var}");
        for &x in &batch[..10] {
            assert!((vn.denormalise(vn.normalise(x)) - x).abs() < 1e-4);
        }
        // Debiased: after one batch the statistics are that batch's, not 1e-5 of them.
        assert!((vn.denormalise(0.0) - 13.0).abs() < 0.01, "{}", vn.denormalise(0.0));
        // Two batches weigh (almost) equally.
        vn.update(&vec![20.0; 1000]);
        assert!((vn.denormalise(0.0) - 16.5).abs() < 0.01, "{}", vn.denormalise(0.0));
    }

    #[test]
    fn the_variance_is_floored_and_a_constant_batch_is_finite() {
        let mut vn = ValueNorm::default();
        vn.update(&[2.0; 8]);
        assert!((vn.normalise(3.0) - 10.0).abs() < 1e-4, "std floored at 0.1");
        assert!(ValueNorm::default().normalise(1.0).is_finite());
    }

    #[test]
    fn checkpoint_tensor_round_trips_and_bad_tensors_are_refused() {
        let mut vn = ValueNorm::default();
        vn.update(&[1.0, 2.0, 5.0]);
        let back = ValueNorm::from_tensor(&vn.to_tensor().expect("tensor")).expect("read");
        assert_eq!(back, vn);
        let bad = Tensor::from_vec(vec![1f64, 2.0], 2, &Device::Cpu).expect("tensor");
        assert!(ValueNorm::from_tensor(&bad).is_err());
        let nan = Tensor::from_vec(vec![f64::NAN, 0.0, 1.0], 3, &Device::Cpu).expect("tensor");
        assert!(ValueNorm::from_tensor(&nan).is_err());
    }
}
