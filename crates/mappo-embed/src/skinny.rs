//! `y = x · wᵀ` for the few-row products of a server's small batches, as a candle custom op.
//!
//! A routing server embeds one to a few short texts per forward pass: 10–50 token rows. For
//! such products the general gemm spends most of its time outside its microkernel (packing,
//! fork-join over two threads), and one text costs about as much as four. This kernel computes
//! each output as a dot product of an `x` row with a row of the torch-layout weight `w [n, k]`,
//! in register tiles of 4 `x` rows × 3 `w` rows with AVX2 FMA, and reads `w` exactly once: the
//! threads split the weight's rows, and each tile of `w` (3 × k floats, in L1) meets every `x`
//! row (all of `x` stays in L1/L2). It runs only where the CPU has AVX2 and FMA and `x` has at
//! most [`MAX_ROWS`] rows; elsewhere the caller uses candle's matmul. Results agree with the
//! gemm's to float rounding (a different summation order), which the tests check.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape};
use rayon::prelude::*;

/// Most `x` rows this kernel takes; above it the gemm is as fast or faster (`embed_latency`).
pub(crate) const MAX_ROWS: usize = 48;

/// The row limit of [`crate::bert`]'s products for the kernel: [`MAX_ROWS`] when `on` and the
/// CPU can run it, else 0 (never).
pub(crate) fn row_limit(on: bool) -> usize {
    if on && available() { MAX_ROWS } else { 0 }
}

/// True when this CPU can run the kernel.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `x [m, k]` (first operand) times the transpose of `w [n, k]` (second operand): `[m, n]`.
pub(crate) struct SkinnyMatmul;

impl CustomOp2 for SkinnyMatmul {
    fn name(&self) -> &'static str {
        "mappo-skinny-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("{name}: x is {m}x{k} but w is {n}x{k2}");
        }
        let (x, w) = (crate::kernels::input(s1, l1, name)?, crate::kernels::input(s2, l2, name)?);
        Ok((CpuStorage::F32(matmul_t(x, w, m, n, k)), Shape::from((m, n))))
    }
}

/// `x [m, k] · w[n, k]ᵀ`, row-major `[m, n]`.
pub(crate) fn matmul_t(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    // Columns per task: multiples of the 3-row tile, about four tasks per thread.
    let threads = rayon::current_num_threads().max(1);
    let cols = (n.div_ceil(4 * threads)).div_ceil(3).max(1) * 3;
    let blocks: Vec<(usize, Vec<f32>)> = (0..n.div_ceil(cols))
        .into_par_iter()
        .map(|b| {
            let j0 = b * cols;
            let nc = cols.min(n - j0);
            let mut out = vec![0f32; m * nc];
            block(x, &w[j0 * k..(j0 + nc) * k], m, nc, k, &mut out);
            (j0, out)
        })
        .collect();
    let mut y = vec![0f32; m * n];
    for (j0, out) in blocks {
        let nc = out.len() / m.max(1);
        for i in 0..m {
            y[i * n + j0..i * n + j0 + nc].copy_from_slice(&out[i * nc..(i + 1) * nc]);
        }
    }
    y
}

/// One column block: `out [m, nc]` = `x [m, k]` · `w [nc, k]ᵀ`.
fn block(x: &[f32], w: &[f32], m: usize, nc: usize, k: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: AVX2 and FMA are present (checked just above); `avx::block` asserts the
        // slice lengths its pointer arithmetic relies on.
        #[allow(unsafe_code)]
        unsafe {
            avx::block(x, w, m, nc, k, out)
        };
        return;
    }
    for i in 0..m {
        for j in 0..nc {
            out[i * nc + j] =
                x[i * k..(i + 1) * k].iter().zip(&w[j * k..(j + 1) * k]).map(|(a, b)| a * b).sum();
        }
    }
}

/// The AVX2 + FMA tiles: the only `unsafe` of this crate (intrinsics and raw row pointers,
/// within the bounds `block` asserts).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx {
    use std::arch::x86_64::*;

    /// Sum of the 8 lanes.
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        unsafe {
            let lo = _mm256_castps256_ps128(v);
            let hi = _mm256_extractf128_ps(v, 1);
            let s = _mm_add_ps(lo, hi);
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }
    }

    /// The `R × C` tile of outputs for `x` rows `i0..i0+R` and `w` rows `j0..j0+C`.
    #[inline(always)]
    unsafe fn tile<const R: usize, const C: usize>(
        x: &[f32],
        w: &[f32],
        k: usize,
        i0: usize,
        j0: usize,
        nc: usize,
        out: &mut [f32],
    ) {
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); C]; R];
            let xp: [*const f32; R] = std::array::from_fn(|r| x.as_ptr().add((i0 + r) * k));
            let wp: [*const f32; C] = std::array::from_fn(|c| w.as_ptr().add((j0 + c) * k));
            let k8 = k - k % 8;
            let mut p = 0;
            while p < k8 {
                let wv: [__m256; C] = std::array::from_fn(|c| _mm256_loadu_ps(wp[c].add(p)));
                for r in 0..R {
                    let xv = _mm256_loadu_ps(xp[r].add(p));
                    for c in 0..C {
                        acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
                    }
                }
                p += 8;
            }
            for r in 0..R {
                for c in 0..C {
                    let mut s = hsum(acc[r][c]);
                    for q in k8..k {
                        s += *xp[r].add(q) * *wp[c].add(q);
                    }
                    out[(i0 + r) * nc + j0 + c] = s;
                }
            }
        }
    }

    /// Every `w` tile of 3 rows against every `x` tile of 4 rows (remainders in smaller tiles).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block(x: &[f32], w: &[f32], m: usize, nc: usize, k: usize, out: &mut [f32]) {
        assert!(x.len() >= m * k && w.len() >= nc * k && out.len() >= m * nc);
        let mut j = 0;
        while j < nc {
            let c = (nc - j).min(3);
            let mut i = 0;
            while i < m {
                let r = (m - i).min(4);
                unsafe {
                    match (r, c) {
                        (4, 3) => tile::<4, 3>(x, w, k, i, j, nc, out),
                        (3, 3) => tile::<3, 3>(x, w, k, i, j, nc, out),
                        (2, 3) => tile::<2, 3>(x, w, k, i, j, nc, out),
                        (1, 3) => tile::<1, 3>(x, w, k, i, j, nc, out),
                        (4, 2) => tile::<4, 2>(x, w, k, i, j, nc, out),
                        (3, 2) => tile::<3, 2>(x, w, k, i, j, nc, out),
                        (2, 2) => tile::<2, 2>(x, w, k, i, j, nc, out),
                        (1, 2) => tile::<1, 2>(x, w, k, i, j, nc, out),
                        (4, _) => tile::<4, 1>(x, w, k, i, j, nc, out),
                        (3, _) => tile::<3, 1>(x, w, k, i, j, nc, out),
                        (2, _) => tile::<2, 1>(x, w, k, i, j, nc, out),
                        _ => tile::<1, 1>(x, w, k, i, j, nc, out),
                    }
                }
                i += r;
            }
            j += c;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn agrees_with_candle_matmul_on_every_tile_shape() {
        let dev = Device::Cpu;
        // Rows and columns that leave every remainder tile, and k with and without a tail of 8.
        for &(m, n, k) in
            &[(1, 1, 8), (5, 7, 19), (12, 384, 384), (13, 1153, 384), (48, 385, 1536), (3, 2, 1)]
        {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).expect("x");
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).expect("w");
            let want = x.matmul(&w.t().expect("t")).expect("matmul").to_vec2::<f32>().expect("host");
            let got = x.apply_op2_no_bwd(&w, &SkinnyMatmul).expect("skinny").to_vec2::<f32>().expect("host");
            for i in 0..m {
                for j in 0..n {
                    let (a, b) = (want[i][j], got[i][j]);
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + a.abs()),
                        "m {m} n {n} k {k} [{i},{j}]: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn mismatched_operands_are_an_error_not_a_panic() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((2, 8), candle_core::DType::F32, &dev).expect("x");
        let w = Tensor::zeros((3, 9), candle_core::DType::F32, &dev).expect("w");
        assert!(x.apply_op2_no_bwd(&w, &SkinnyMatmul).is_err());
    }
}
