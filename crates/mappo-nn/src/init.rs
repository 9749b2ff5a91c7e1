//! Orthogonal initialisation (as torch's `nn.init.orthogonal_`), drawn from
//! the project's seeded RNG.

use mappo_config::Rng;

/// A `rows × cols` row-major matrix with orthonormal rows (if `rows <= cols`)
/// or columns (otherwise), scaled by `gain`: the QR decomposition of a
/// Gaussian matrix with the signs of R's diagonal folded in.
pub fn orthogonal(rows: usize, cols: usize, gain: f64, rng: &mut Rng) -> Vec<f32> {
    if rows == 0 || cols == 0 {
        return Vec::new();
    }
    // Work on the tall orientation: n vectors of length m with m >= n.
    let (m, n) = if rows >= cols { (rows, cols) } else { (cols, rows) };
    // Columns of the tall matrix, each of length m.
    let mut q: Vec<Vec<f64>> = (0..n).map(|_| (0..m).map(|_| rng.normal()).collect()).collect();
    // Modified Gram–Schmidt; sign(R_jj) > 0 by construction, which matches
    // torch's `q *= sign(diag(r))`.
    for j in 0..n {
        for k in 0..j {
            let (done, rest) = q.split_at_mut(j);
            let qk = &done[k];
            let dot: f64 = qk.iter().zip(rest[0].iter()).map(|(a, b)| a * b).sum();
            for (x, y) in rest[0].iter_mut().zip(qk) {
                *x -= dot * y;
            }
        }
        let norm = q[j].iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-300);
        for x in q[j].iter_mut() {
            *x /= norm;
        }
    }
    let mut out = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            // Tall: element (r, c) is column c's r-th entry; wide: transpose.
            let v = if rows >= cols { q[c][r] } else { q[r][c] };
            out[r * cols + c] = (gain * v) as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gram(w: &[f32], rows: usize, cols: usize, by_rows: bool) -> Vec<f64> {
        let n = if by_rows { rows } else { cols };
        let mut g = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                let mut s = 0.0;
                for k in 0..(if by_rows { cols } else { rows }) {
                    let (a, b) = if by_rows {
                        (w[i * cols + k], w[j * cols + k])
                    } else {
                        (w[k * cols + i], w[k * cols + j])
                    };
                    s += f64::from(a) * f64::from(b);
                }
                g[i * n + j] = s;
            }
        }
        g
    }

    #[test]
    fn orthonormal_in_both_orientations_with_gain() {
        let mut rng = Rng::new(1);
        for (rows, cols, by_rows) in [(64, 32, false), (4, 64, true), (64, 64, true)] {
            let w = orthogonal(rows, cols, 2.0, &mut rng);
            let g = gram(&w, rows, cols, by_rows);
            let n = if by_rows { rows } else { cols };
            for i in 0..n {
                for j in 0..n {
                    let want = if i == j { 4.0 } else { 0.0 };
                    assert!((g[i * n + j] - want).abs() < 1e-4, "{rows}x{cols} ({i},{j}) {}", g[i * n + j]);
                }
            }
        }
    }

    #[test]
    fn seeded() {
        assert_eq!(orthogonal(8, 3, 1.0, &mut Rng::new(5)), orthogonal(8, 3, 1.0, &mut Rng::new(5)));
        assert_ne!(orthogonal(8, 3, 1.0, &mut Rng::new(5)), orthogonal(8, 3, 1.0, &mut Rng::new(6)));
    }
}
