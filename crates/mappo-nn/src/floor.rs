//! The exploration floor on served probabilities, shared by the service (what it samples from)
//! and off-policy evaluation (the candidate as it would be served).

/// Floors every probability at `min_prob` and rescales the others so that the whole still sums
/// to 1 ("water-filling"): agents whose rescaled probability would fall under the floor get
/// exactly the floor, the rest keep their ratios. Needs `min_prob * len < 1`; a row that is not
/// a distribution (NaN, all zero) becomes uniform.
pub fn floor_probabilities(p: &[f32], min_prob: f64) -> Vec<f32> {
    let k = p.len();
    if k == 0 {
        return Vec::new();
    }
    let m = min_prob.clamp(0.0, 1.0 / k as f64);
    let raw: Vec<f64> =
        p.iter().map(|&x| if x.is_finite() && x > 0.0 { f64::from(x) } else { 0.0 }).collect();
    let total: f64 = raw.iter().sum();
    if total <= 0.0 || !total.is_finite() {
        return vec![(1.0 / k as f64) as f32; k];
    }
    let mut floored = vec![false; k];
    loop {
        let nf = floored.iter().filter(|f| **f).count();
        let free: f64 = raw.iter().zip(&floored).filter(|(_, f)| !**f).map(|(x, _)| x).sum();
        let budget = 1.0 - m * nf as f64;
        if free <= 0.0 {
            // Everything left is floored: spread the rest evenly over the floored agents.
            return vec![(1.0 / k as f64) as f32; k];
        }
        let scale = budget / free;
        let mut changed = false;
        for i in 0..k {
            if !floored[i] && raw[i] * scale < m {
                floored[i] = true;
                changed = true;
            }
        }
        if !changed {
            let mf = m as f32;
            return (0..k).map(|i| if floored[i] { mf } else { ((raw[i] * scale) as f32).max(mf) }).collect();
        }
    }
}
