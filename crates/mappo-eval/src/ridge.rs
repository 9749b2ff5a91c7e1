//! Ridge regression with an unpenalised intercept: the one linear solver of mappo, used by the
//! full-information baseline router ([`crate::RidgeRouter`]: every agent's quality on the
//! embedding) and by off-policy evaluation's doubly robust reward model (`mappo-learn`: the
//! reward of one action on the policy input).
//!
//! A fit minimises `Σ_rows ‖y − (b + x·W)‖² + α‖W‖²` for `targets` outputs at once. Its normal
//! equations are accumulated in a [`Gram`] (the sums of `[x 1]ᵀ[x 1]` and `[x 1]ᵀ y` over the
//! rows), which can be added up — one per cross-validation fold, each fold's fit the sum of the
//! others — and solved for any α by Cholesky ([`Gram::solve`]). The system is `(dim + 1)²`
//! (385 × 385 for MiniLM): small enough that a linear-algebra dependency would buy nothing.

use crate::EvalError;

/// The normal equations of a ridge regression over some rows: `[x 1]ᵀ[x 1]` (lower triangle)
/// and `[x 1]ᵀ y`.
#[derive(Debug, Clone)]
pub struct Gram {
    dim: usize,
    targets: usize,
    rows: usize,
    /// `[dim + 1, dim + 1]`, lower triangle filled.
    a: Vec<f64>,
    /// `[dim + 1, targets]`.
    b: Vec<f64>,
}

impl Gram {
    /// No rows yet, for inputs `dim` wide and `targets` outputs.
    pub fn zero(dim: usize, targets: usize) -> Self {
        let d = dim + 1;
        Gram { dim, targets, rows: 0, a: vec![0.0; d * d], b: vec![0.0; d * targets] }
    }

    /// The rows `i` of row-major `x [n, dim]` and `y [n, targets]` for which `keep(i)`.
    pub fn of(
        x: &[f32],
        dim: usize,
        y: &[f64],
        targets: usize,
        keep: impl Fn(usize) -> bool,
    ) -> Result<Self, EvalError> {
        let n = x.len() / dim.max(1);
        if n == 0 || y.len() != n * targets || x.len() != n * dim {
            return Err(EvalError::Setup("ridge: the rows of inputs and targets differ".into()));
        }
        let mut g = Gram::zero(dim, targets);
        for i in (0..n).filter(|&i| keep(i)) {
            g.add_row(&x[i * dim..(i + 1) * dim], &y[i * targets..(i + 1) * targets]);
        }
        Ok(g)
    }

    /// Adds one row: input `x` (`dim` values) with targets `y` (`targets` values).
    pub fn add_row(&mut self, x: &[f32], y: &[f64]) {
        let (dim, d, t) = (self.dim, self.dim + 1, self.targets);
        let at = |j: usize| if j < dim { f64::from(x[j]) } else { 1.0 };
        for j in 0..d {
            let rj = at(j);
            for k in 0..=j {
                self.a[j * d + k] += rj * at(k);
            }
            for (o, yv) in self.b[j * t..(j + 1) * t].iter_mut().zip(y) {
                *o += rj * yv;
            }
        }
        self.rows += 1;
    }

    /// Adds another set of rows' equations (same shape).
    pub fn add(&mut self, o: &Gram) {
        self.a.iter_mut().zip(&o.a).for_each(|(x, y)| *x += y);
        self.b.iter_mut().zip(&o.b).for_each(|(x, y)| *x += y);
        self.rows += o.rows;
    }

    /// Number of rows accumulated.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The fit with L2 penalty `alpha` on every weight but the intercept; `None` when the
    /// system is not positive definite (no rows, or `alpha` 0 on collinear inputs).
    pub fn solve(&self, alpha: f64) -> Option<Ridge> {
        let (dim, d) = (self.dim, self.dim + 1);
        let mut a = self.a.clone();
        for j in 0..d {
            for k in 0..j {
                a[k * d + j] = a[j * d + k];
            }
            if j < dim {
                a[j * d + j] += alpha;
            }
        }
        let weights = cholesky_solve(&mut a, d, &self.b, self.targets)?;
        Some(Ridge { dim, targets: self.targets, weights })
    }
}

/// A fitted ridge regression: `targets` outputs, each `b + x·w`.
#[derive(Debug, Clone)]
pub struct Ridge {
    dim: usize,
    targets: usize,
    /// `[dim + 1, targets]` weights, the intercept row last.
    weights: Vec<f64>,
}

impl Ridge {
    /// Fits row-major `y [n, targets]` on `x [n, dim]` with penalty `alpha`.
    pub fn fit(x: &[f32], dim: usize, y: &[f64], targets: usize, alpha: f64) -> Result<Self, EvalError> {
        Gram::of(x, dim, y, targets, |_| true)?
            .solve(alpha)
            .ok_or_else(|| EvalError::Setup("ridge: the normal equations are singular".into()))
    }

    /// Input width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Predictions `[n, targets]` for rows `x [n, dim]`.
    pub fn predict(&self, x: &[f32]) -> Vec<f64> {
        let mut out = Vec::with_capacity(x.len() / self.dim.max(1) * self.targets);
        for r in x.chunks(self.dim.max(1)) {
            out.extend((0..self.targets).map(|t| self.predict_one(r, t)));
        }
        out
    }

    /// The prediction of target `t` for one row `x` (`dim` values).
    pub fn predict_one(&self, x: &[f32], t: usize) -> f64 {
        let mut s = self.weights[self.dim * self.targets + t];
        for (j, v) in x.iter().enumerate() {
            s += f64::from(*v) * self.weights[j * self.targets + t];
        }
        s
    }
}

/// Solves `A X = B` for a symmetric positive definite `A [d, d]` (row-major; its lower triangle
/// is overwritten by the Cholesky factor L, A = L Lᵀ) and `B [d, m]`; `None` when `A` is not
/// positive definite.
fn cholesky_solve(a: &mut [f64], d: usize, b: &[f64], m: usize) -> Option<Vec<f64>> {
    for j in 0..d {
        let mut s = a[j * d + j];
        for k in 0..j {
            s -= a[j * d + k] * a[j * d + k];
        }
        if !(s > 0.0 && s.is_finite()) {
            return None;
        }
        let l = s.sqrt();
        a[j * d + j] = l;
        for i in j + 1..d {
            let mut s = a[i * d + j];
            for k in 0..j {
                s -= a[i * d + k] * a[j * d + k];
            }
            a[i * d + j] = s / l;
        }
    }
    let mut x = b.to_vec();
    for c in 0..m {
        for i in 0..d {
            let mut s = x[i * m + c];
            for k in 0..i {
                s -= a[i * d + k] * x[k * m + c];
            }
            x[i * m + c] = s / a[i * d + i];
        }
        for i in (0..d).rev() {
            let mut s = x[i * m + c];
            for k in i + 1..d {
                s -= a[k * d + i] * x[k * m + c];
            }
            x[i * m + c] = s / a[i * d + i];
        }
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use mappo_config::Rng;

    use super::*;

    /// `(XᵀX + αI') w = Xᵀy` on the augmented rows, I' without the intercept: checks a fit.
    fn normal_equations_hold(x: &[f32], dim: usize, y: &[f64], alpha: f64, r: &Ridge) {
        let n = y.len();
        let aug = |i: usize, j: usize| if j < dim { f64::from(x[i * dim + j]) } else { 1.0 };
        for j in 0..=dim {
            let lhs: f64 = (0..=dim)
                .map(|l| (0..n).map(|i| aug(i, j) * aug(i, l)).sum::<f64>() * r.weights[l])
                .sum::<f64>()
                + if j < dim { alpha * r.weights[j] } else { 0.0 };
            let rhs: f64 = (0..n).map(|i| aug(i, j) * y[i]).sum();
            assert!((lhs - rhs).abs() < 1e-8 * (1.0 + rhs.abs()), "row {j}: {lhs} vs {rhs}");
        }
    }

    #[test]
    fn fits_satisfy_the_normal_equations_with_fewer_or_more_rows_than_inputs() {
        let mut rng = Rng::new(9);
        let dim = 6;
        let x: Vec<f32> = (0..20 * dim).map(|_| rng.uniform() as f32).collect();
        let y: Vec<f64> = (0..20).map(|_| rng.uniform()).collect();
        for n in [3, 20] {
            let r = Ridge::fit(&x[..n * dim], dim, &y[..n], 1, 0.5).expect("fits");
            normal_equations_hold(&x[..n * dim], dim, &y[..n], 0.5, &r);
        }
        // One row: the fit is its target (the penalty keeps every weight at 0).
        let one = Ridge::fit(&x[..dim], dim, &y[..1], 1, 0.5).expect("fits");
        assert!((one.predict_one(&x[dim..2 * dim], 0) - y[0]).abs() < 1e-12);
        // No row: nothing to solve.
        assert!(Gram::zero(dim, 1).solve(0.5).is_none());
    }

    #[test]
    fn summed_grams_are_the_gram_of_all_rows() {
        let mut rng = Rng::new(4);
        let (dim, t) = (3, 2);
        let x: Vec<f32> = (0..30 * dim).map(|_| rng.uniform() as f32).collect();
        let y: Vec<f64> = (0..30 * t).map(|_| rng.uniform()).collect();
        let mut sum = Gram::zero(dim, t);
        for f in 0..3 {
            sum.add(&Gram::of(&x, dim, &y, t, |i| i % 3 == f).expect("gram"));
        }
        assert_eq!(sum.rows(), 30);
        let (a, b) = (sum.solve(0.1).expect("a"), Ridge::fit(&x, dim, &y, t, 0.1).expect("b"));
        let (pa, pb) = (a.predict(&x), b.predict(&x));
        assert!(pa.iter().zip(&pb).all(|(u, v)| (u - v).abs() < 1e-9), "{pa:?} vs {pb:?}");
        assert!(Gram::of(&x[..5], dim, &y, t, |_| true).is_err(), "ragged rows");
    }
}
