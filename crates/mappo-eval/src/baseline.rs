//! The full-information baseline router: a ridge regression of every agent's quality on the
//! embedding, fit on a training corpus's whole outcome table (it sees every agent's outcome
//! for every training prompt, which a bandit learner never does) and scored with the same
//! curve code as mappo's routers.

use crate::EvalError;
use crate::curve::{OutcomeTable, choose_by_scores, score_sweep};
use crate::ridge::{Gram, Ridge};

/// The penalties [`RidgeRouter::fit_cv`] chooses from when none is given.
pub const RIDGE_ALPHAS: &[f64] = &[0.1, 1.0, 10.0, 100.0, 1000.0];

/// A ridge regression of every agent's quality on the embeddings (plus an unpenalised bias):
/// the full-information router.
#[derive(Debug, Clone)]
pub struct RidgeRouter {
    ridge: Ridge,
}

impl RidgeRouter {
    /// Fits `quality [n, agents]` on `x [n, dim]` with L2 penalty `alpha` (the bias is not
    /// penalised).
    pub fn fit(x: &[f32], dim: usize, quality: &[f32], agents: usize, alpha: f64) -> Result<Self, EvalError> {
        let q: Vec<f64> = quality.iter().map(|&v| f64::from(v)).collect();
        Self::solved(&Gram::of(x, dim, &q, agents, |_| true)?, alpha)
    }

    fn solved(g: &Gram, alpha: f64) -> Result<Self, EvalError> {
        let ridge = g
            .solve(alpha)
            .ok_or_else(|| EvalError::Setup("ridge: the normal equations are singular".into()))?;
        Ok(Self { ridge })
    }

    /// Chooses the penalty from `alphas` by `folds`-fold cross-validation on the rows (row `i`
    /// is held out in fold `i mod folds`), maximising the mean APGR of the held-out folds as
    /// [`OutcomeTable::summarize`] computes it, then fits every row with it. Returns the router,
    /// the α chosen and its cross-validated APGR. The Gram matrix of each fold is accumulated
    /// once; each α only changes the diagonal.
    #[allow(clippy::too_many_arguments)]
    pub fn fit_cv(
        x: &[f32],
        dim: usize,
        quality: &[f32],
        names: &[String],
        costs: &[f64],
        alphas: &[f64],
        folds: usize,
    ) -> Result<(Self, f64, f64), EvalError> {
        let agents = names.len();
        let n = x.len() / dim.max(1);
        if folds < 2 || n < folds || alphas.is_empty() {
            return Err(EvalError::Setup(format!("ridge: {folds}-fold cross-validation over {n} rows")));
        }
        let q: Vec<f64> = quality.iter().map(|&v| f64::from(v)).collect();
        let grams: Vec<Gram> =
            (0..folds).map(|k| Gram::of(x, dim, &q, agents, |i| i % folds == k)).collect::<Result<_, _>>()?;
        let max_cost = costs.iter().cloned().fold(0.0, f64::max);
        let norm: Vec<f64> = costs.iter().map(|c| if max_cost > 0.0 { c / max_cost } else { 0.0 }).collect();
        let mut best: Option<(f64, f64)> = None;
        for &alpha in alphas {
            let mut total = 0.0;
            let mut counted = 0;
            for k in 0..folds {
                let mut g = Gram::zero(dim, agents);
                for (j, gj) in grams.iter().enumerate() {
                    if j != k {
                        g.add(gj);
                    }
                }
                let r = RidgeRouter::solved(&g, alpha)?;
                let rows: Vec<usize> = (0..n).filter(|i| i % folds == k).collect();
                let xs: Vec<f32> =
                    rows.iter().flat_map(|&i| x[i * dim..(i + 1) * dim].iter().copied()).collect();
                let qs: Vec<f32> = rows
                    .iter()
                    .flat_map(|&i| quality[i * agents..(i + 1) * agents].iter().copied())
                    .collect();
                let table = OutcomeTable::new(names.to_vec(), costs.to_vec(), qs)?;
                let (weak, _) = table.weak_strong();
                let pred = r.predict(&xs);
                let curve = score_sweep(&pred, &norm, weak)
                    .into_iter()
                    .map(|l| table.point(l, &choose_by_scores(&pred, &norm, l)))
                    .collect();
                if let Some(a) = table.summarize(curve).apgr {
                    total += a;
                    counted += 1;
                }
            }
            if counted > 0 {
                let mean = total / f64::from(counted);
                if best.is_none_or(|(_, b)| mean > b) {
                    best = Some((alpha, mean));
                }
            }
        }
        let (alpha, cv) = best.ok_or_else(|| {
            EvalError::Setup(
                "ridge: no fold has an APGR (does every fold hold both agents' outcomes?)".into(),
            )
        })?;
        let mut g = Gram::zero(dim, agents);
        for gk in &grams {
            g.add(gk);
        }
        Ok((RidgeRouter::solved(&g, alpha)?, alpha, cv))
    }

    /// Predicted quality `[n, agents]` of every agent for rows `x [n, dim]`.
    pub fn predict(&self, x: &[f32]) -> Vec<f64> {
        self.ridge.predict(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_validation_picks_the_penalty_that_routes_best_and_matches_a_plain_fit() {
        // The strong agent (cost 1) is right exactly when x0 > 0.5, the weak one (cost 0) when
        // x0 <= 0.5; x1..x3 are noise. A tiny penalty routes well; a huge one routes at random.
        let mut rng = mappo_config::Rng::new(3);
        let (mut x, mut q) = (Vec::new(), Vec::new());
        for _ in 0..400 {
            let v: Vec<f32> = (0..4).map(|_| rng.uniform() as f32).collect();
            let strong_right = v[0] > 0.5;
            q.extend([if strong_right { 0.0 } else { 1.0 }, if strong_right { 1.0 } else { 0.5 }]);
            x.extend(v);
        }
        let names = vec!["weak".to_string(), "strong".to_string()];
        let (r, alpha, cv) =
            RidgeRouter::fit_cv(&x, 4, &q, &names, &[0.0, 1.0], &[1e6, 1e-3], 5).expect("fit_cv");
        assert_eq!(alpha, 1e-3, "cv APGR {cv}");
        assert!(cv > 0.8, "{cv}");
        // The router returned is the plain fit of every row with the chosen penalty.
        let plain = RidgeRouter::fit(&x, 4, &q, 2, 1e-3).expect("fit");
        let (a, b) = (r.predict(&x[..8]), plain.predict(&x[..8]));
        assert!(a.iter().zip(&b).all(|(u, v)| (u - v).abs() < 1e-9), "{a:?} vs {b:?}");
        assert!(
            RidgeRouter::fit_cv(&x[..8], 4, &q[..4], &names, &[0.0, 1.0], &[1.0], 5).is_err(),
            "2 rows, 5 folds"
        );
    }

    #[test]
    fn ridge_recovers_a_linear_model_and_its_sweep_spans_the_shares() {
        // quality_0 = 0.2 + x0, quality_1 = 0.5 - x1 on a grid; tiny alpha.
        let mut x = Vec::new();
        let mut q = Vec::new();
        for i in 0..20 {
            for j in 0..20 {
                let (a, b) = (i as f32 / 20.0, j as f32 / 20.0);
                x.extend([a, b]);
                q.extend([0.2 + a, 0.5 - b]);
            }
        }
        let r = RidgeRouter::fit(&x, 2, &q, 2, 1e-9).expect("fit");
        let p = r.predict(&[0.5, 0.25]);
        assert!((p[0] - 0.7).abs() < 1e-5 && (p[1] - 0.25).abs() < 1e-5, "{p:?}");
        let t = OutcomeTable::new(vec!["w".into(), "s".into()], vec![0.0, 1.0], q.clone()).expect("t");
        let pred = r.predict(&x);
        let shares: Vec<f64> = score_sweep(&pred, &[0.0, 1.0], 0)
            .into_iter()
            .map(|l| t.point(l, &choose_by_scores(&pred, &[0.0, 1.0], l)).share["s"])
            .collect();
        assert!((shares[0] - 1.0).abs() < 0.01 && *shares.last().expect("last") == 0.0, "{shares:?}");
        assert!(shares.windows(2).all(|w| w[1] <= w[0] + 1e-12), "non-increasing: {shares:?}");
    }
}
