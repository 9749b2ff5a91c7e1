//! Fused CPU kernels for the BERT encoder, as candle custom ops.
//!
//! candle runs each elementwise op as its own pass (and its own dispatch to a thread pool);
//! on a 2-core machine the glue between the matmuls cost as much as the matmuls. These ops
//! fuse that glue: embedding lookup + position + LayerNorm, bias + multi-head attention over
//! the unpadded keys, bias + erf-GELU, bias + residual + LayerNorm, and masked mean pooling +
//! L2 normalisation. They are CPU-only; other devices run candle-transformers' `BertModel`
//! (`bert.rs`, [`crate::Backend::Candle`]).
//!
//! Activations are f32, row-major contiguous `[tokens, width]`, and *packed*: no padding,
//! text `b` owning rows `offsets[b]..offsets[b + 1]` (so the gemms do no wasted work).
//! Work is spread over rayon's global pool, the pool gemm uses too.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, InplaceOp1, InplaceOp2, Layout, Result, Shape};
use rayon::prelude::*;

/// The f32 data of a contiguous operand (an error naming `op` otherwise).
pub(crate) fn input<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

fn input_mut<'a>(s: &'a mut CpuStorage, l: &Layout, op: &str) -> Result<&'a mut [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("{op}: expected f32 data");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&mut data[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

fn check_width(l: &Layout, width: usize, op: &str) -> Result<usize> {
    let (rows, w) = l.shape().dims2()?;
    if w != width {
        candle_core::bail!("{op}: expected width {width}, got {w}");
    }
    Ok(rows)
}

/// Rows per rayon task: about four tasks per thread, at least one row.
fn rows_per_task(rows: usize) -> usize {
    (rows / (4 * rayon::current_num_threads())).max(1)
}

// ---------------------------------------------------------------------------------------
// Scalar helpers written so that LLVM vectorises the loops that call them: fixed-width
// accumulators for reductions, branch-free polynomial approximations for erf and exp.

const LANES: usize = 8;

#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + rest
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let rest: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Sum of squared deviations from `mean`.
#[inline(always)]
fn sum_sq_dev(xs: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest: f32 = chunks.remainder().iter().map(|x| (x - mean) * (x - mean)).sum();
    for c in chunks {
        for l in 0..LANES {
            let d = c[l] - mean;
            acc[l] += d * d;
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// erf for f32: the rational approximation used by Eigen and XLA (a few ulp).
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024_1e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_6e-3;
    p = x2 * p + -1.609_603_3e-2;
    p *= x;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329_2e-3;
    q = x2 * q + -1.426_474e-2;
    p / q
}

/// GELU, erf form (BERT's "gelu").
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// exp for f32 (Cephes' polynomial, about 2 ulp); inputs below -87 give ~0.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to an integer kept in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_2e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^n from n's bits: t's mantissa holds 0x40_0000 + n.
    let pow2n = f32::from_bits((t.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127)) << 23);
    y * pow2n
}

/// In place: `row = LayerNorm(row)` (two-pass variance, as PyTorch).
#[inline(always)]
fn layer_norm_row(row: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mean = sum(row) / n;
    let var = sum_sq_dev(row, mean) / n;
    let rstd = 1.0 / (var + eps).sqrt();
    for ((x, g), b) in row.iter_mut().zip(gamma).zip(beta) {
        *x = (*x - mean) * rstd * g + b;
    }
}

// ---------------------------------------------------------------------------------------

/// `out[t] = LayerNorm(word[ids[t]] + pos_type[positions[t]])`; op2 on (word table, ids).
pub(crate) struct Embed<'a> {
    pub pos_type: &'a [f32],
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub eps: f32,
    pub positions: &'a [u32],
}

impl CustomOp2 for Embed<'_> {
    fn name(&self) -> &'static str {
        "mappo-bert-embed"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let h = self.gamma.len();
        let vocab = check_width(l1, h, name)?;
        let table = input(s1, l1, name)?;
        let ids = match l2.contiguous_offsets() {
            Some((a, b)) => &s2.as_slice::<u32>()?[a..b],
            None => candle_core::bail!("{name}: ids must be contiguous"),
        };
        let t = ids.len();
        let max_pos = self.pos_type.len() / h.max(1);
        if self.positions.len() != t || self.positions.iter().any(|&p| p as usize >= max_pos) {
            candle_core::bail!("{name}: bad positions");
        }
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            candle_core::bail!("{name}: token id {bad} out of the vocabulary ({vocab})");
        }
        let mut out = vec![0f32; t * h];
        let rpt = rows_per_task(t);
        out.par_chunks_mut(rpt * h).enumerate().for_each(|(c, chunk)| {
            for (r, row) in chunk.chunks_exact_mut(h).enumerate() {
                let tok = c * rpt + r;
                let id = ids[tok] as usize;
                let pos = self.positions[tok] as usize;
                let w = &table[id * h..(id + 1) * h];
                let p = &self.pos_type[pos * h..(pos + 1) * h];
                for ((o, a), b) in row.iter_mut().zip(w).zip(p) {
                    *o = a + b;
                }
                layer_norm_row(row, self.gamma, self.beta, self.eps);
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((t, h))))
    }
}

/// Splits `out` (`[tokens, width]`) into one mutable block per text.
fn split_texts<'a>(mut out: &'a mut [f32], offsets: &[usize], width: usize) -> Vec<&'a mut [f32]> {
    let mut blocks = Vec::with_capacity(offsets.len().saturating_sub(1));
    for w in offsets.windows(2) {
        let (block, rest) = out.split_at_mut((w[1] - w[0]) * width);
        blocks.push(block);
        out = rest;
    }
    blocks
}

/// Checks that `offsets` start at 0, never decrease and end at `tokens`.
fn check_offsets(offsets: &[usize], tokens: usize, op: &str) -> Result<()> {
    let ok = offsets.first() == Some(&0)
        && offsets.last() == Some(&tokens)
        && offsets.windows(2).all(|w| w[0] <= w[1]);
    if !ok {
        candle_core::bail!("{op}: offsets do not cover the {tokens} tokens");
    }
    Ok(())
}

/// Multi-head self-attention over the fused `[tokens, 3 * hidden]` q|k|v projection
/// (without its bias, added here); each text attends to its own tokens only.
/// Output `[tokens, hidden]`.
pub(crate) struct Attention<'a> {
    pub bias: &'a [f32],
    pub offsets: &'a [usize],
    pub heads: usize,
    pub head_dim: usize,
}

impl CustomOp1 for Attention<'_> {
    fn name(&self) -> &'static str {
        "mappo-bert-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (heads, d) = (self.heads, self.head_dim);
        let h = heads * d;
        let t = check_width(l, 3 * h, name)?;
        let qkv = input(s, l, name)?;
        if self.bias.len() != 3 * h {
            candle_core::bail!("{name}: bias has {} values, expected {}", self.bias.len(), 3 * h);
        }
        check_offsets(self.offsets, t, name)?;
        let scale = 1.0 / (d as f32).sqrt();
        let mut out = vec![0f32; t * h];
        let blocks = split_texts(&mut out, self.offsets, h);
        blocks.into_par_iter().enumerate().for_each(|(b, text_out)| {
            let (start, len) = (self.offsets[b], self.offsets[b + 1] - self.offsets[b]);
            let rows = &qkv[start * 3 * h..(start + len) * 3 * h];
            let mut q = vec![0f32; d];
            let mut k = vec![0f32; len * d];
            let mut v = vec![0f32; len * d];
            let mut scores = vec![0f32; len];
            for head in 0..heads {
                let (qo, ko, vo) = (head * d, h + head * d, 2 * h + head * d);
                for j in 0..len {
                    let row = &rows[j * 3 * h..(j + 1) * 3 * h];
                    for c in 0..d {
                        k[j * d + c] = row[ko + c] + self.bias[ko + c];
                        v[j * d + c] = row[vo + c] + self.bias[vo + c];
                    }
                }
                for i in 0..len {
                    let row = &rows[i * 3 * h..(i + 1) * 3 * h];
                    for c in 0..d {
                        q[c] = (row[qo + c] + self.bias[qo + c]) * scale;
                    }
                    let mut max = f32::NEG_INFINITY;
                    for (j, s) in scores.iter_mut().enumerate() {
                        *s = dot(&q, &k[j * d..(j + 1) * d]);
                        max = max.max(*s);
                    }
                    for s in scores.iter_mut() {
                        *s = exp(*s - max);
                    }
                    let inv = 1.0 / sum(&scores);
                    let o = &mut text_out[i * h + head * d..i * h + (head + 1) * d];
                    for (j, &p) in scores.iter().enumerate() {
                        let p = p * inv;
                        for (oc, vc) in o.iter_mut().zip(&v[j * d..(j + 1) * d]) {
                            *oc += p * vc;
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((t, h))))
    }
}

/// For long texts: scatters the packed `[tokens, 3 * hidden]` q|k|v projection (plus its
/// bias; q scaled by `1/sqrt(head_dim)`) into a zero-padded, head-major
/// `[3, texts, heads, seq_len, head_dim]` tensor, so that the two attention products run as
/// gemms (candle's matmul) instead of the scalar loops of [`Attention`].
pub(crate) struct SplitHeads<'a> {
    pub bias: &'a [f32],
    pub offsets: &'a [usize],
    pub seq_len: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl CustomOp1 for SplitHeads<'_> {
    fn name(&self) -> &'static str {
        "mappo-bert-split-heads"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (heads, d, seq) = (self.heads, self.head_dim, self.seq_len);
        let h = heads * d;
        let t = check_width(l, 3 * h, name)?;
        let qkv = input(s, l, name)?;
        if self.bias.len() != 3 * h {
            candle_core::bail!("{name}: bias has {} values, expected {}", self.bias.len(), 3 * h);
        }
        check_offsets(self.offsets, t, name)?;
        let n = self.offsets.len() - 1;
        if self.offsets.windows(2).any(|w| w[1] - w[0] > seq) {
            candle_core::bail!("{name}: a text is longer than seq_len {seq}");
        }
        let scale = 1.0 / (d as f32).sqrt();
        let mut out = vec![0f32; 3 * n * heads * seq * d];
        // One block per (part, text, head): seq_len × head_dim.
        out.par_chunks_mut(seq * d).enumerate().for_each(|(block, dst)| {
            let head = block % heads;
            let b = (block / heads) % n;
            let part = block / (heads * n);
            let (start, end) = (self.offsets[b], self.offsets[b + 1]);
            let col = part * h + head * d;
            let sc = if part == 0 { scale } else { 1.0 };
            let bias = &self.bias[col..col + d];
            for (i, row) in qkv[start * 3 * h..end * 3 * h].chunks_exact(3 * h).enumerate() {
                for ((o, x), b) in dst[i * d..(i + 1) * d].iter_mut().zip(&row[col..col + d]).zip(bias) {
                    *o = (x + b) * sc;
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((3, n, heads, seq, d))))
    }
}

/// In place on attention scores `[texts, heads, seq_len, seq_len]`: softmax over each text's
/// real keys; padded keys and the rows of padded queries become 0.
pub(crate) struct MaskedSoftmax<'a> {
    pub offsets: &'a [usize],
}

impl InplaceOp1 for MaskedSoftmax<'_> {
    fn name(&self) -> &'static str {
        "mappo-bert-masked-softmax"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let name = self.name();
        let (n, heads, seq, seq2) = l.shape().dims4()?;
        if seq != seq2 || n + 1 != self.offsets.len() {
            candle_core::bail!("{name}: unexpected shape {:?}", l.shape());
        }
        let x = input_mut(s, l, name)?;
        x.par_chunks_mut(seq * seq).enumerate().for_each(|(block, scores)| {
            let b = block / heads;
            let len = (self.offsets[b + 1] - self.offsets[b]).min(seq);
            for (i, row) in scores.chunks_exact_mut(seq).enumerate() {
                let (real, pad) = row.split_at_mut(if i < len { len } else { 0 });
                pad.fill(0.0);
                if real.is_empty() {
                    continue;
                }
                let max = real.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                for v in real.iter_mut() {
                    *v = exp(*v - max);
                }
                let inv = 1.0 / sum(real);
                for v in real.iter_mut() {
                    *v *= inv;
                }
            }
        });
        Ok(())
    }
}

/// Gathers the attention context `[texts, heads, seq_len, head_dim]` back into the packed
/// `[tokens, heads * head_dim]` layout.
pub(crate) struct MergeHeads<'a> {
    pub offsets: &'a [usize],
}

impl CustomOp1 for MergeHeads<'_> {
    fn name(&self) -> &'static str {
        "mappo-bert-merge-heads"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (n, heads, seq, d) = l.shape().dims4()?;
        let ctx = input(s, l, name)?;
        let t = *self.offsets.last().unwrap_or(&0);
        check_offsets(self.offsets, t, name)?;
        if n + 1 != self.offsets.len() || self.offsets.windows(2).any(|w| w[1] - w[0] > seq) {
            candle_core::bail!("{name}: unexpected shape {:?}", l.shape());
        }
        let h = heads * d;
        let mut out = vec![0f32; t * h];
        let blocks = split_texts(&mut out, self.offsets, h);
        blocks.into_par_iter().enumerate().for_each(|(b, text_out)| {
            for (i, row) in text_out.chunks_exact_mut(h).enumerate() {
                for head in 0..heads {
                    let src = ((b * heads + head) * seq + i) * d;
                    row[head * d..(head + 1) * d].copy_from_slice(&ctx[src..src + d]);
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((t, h))))
    }
}

/// In place: `x = gelu(x + bias)`.
pub(crate) struct BiasGelu<'a> {
    pub bias: &'a [f32],
}

impl InplaceOp1 for BiasGelu<'_> {
    fn name(&self) -> &'static str {
        "mappo-bert-bias-gelu"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let name = self.name();
        let w = self.bias.len();
        let t = check_width(l, w, name)?;
        let x = input_mut(s, l, name)?;
        x.par_chunks_mut(rows_per_task(t) * w).for_each(|chunk| {
            for row in chunk.chunks_exact_mut(w) {
                for (x, b) in row.iter_mut().zip(self.bias) {
                    *x = gelu(*x + b);
                }
            }
        });
        Ok(())
    }
}

/// In place: `x = LayerNorm(x + bias + residual)`; op2 on (x, residual).
pub(crate) struct BiasResidualLayerNorm<'a> {
    pub bias: &'a [f32],
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub eps: f32,
}

impl InplaceOp2 for BiasResidualLayerNorm<'_> {
    fn name(&self) -> &'static str {
        "mappo-bert-bias-residual-layernorm"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let name = self.name();
        let w = self.bias.len();
        let t = check_width(l1, w, name)?;
        if check_width(l2, w, name)? != t {
            candle_core::bail!("{name}: residual shape mismatch");
        }
        let res = input(s2, l2, name)?;
        let x = input_mut(s1, l1, name)?;
        let rpt = rows_per_task(t);
        x.par_chunks_mut(rpt * w).zip(res.par_chunks(rpt * w)).for_each(|(xc, rc)| {
            for (row, r) in xc.chunks_exact_mut(w).zip(rc.chunks_exact(w)) {
                for ((x, b), r) in row.iter_mut().zip(self.bias).zip(r) {
                    *x += b + r;
                }
                layer_norm_row(row, self.gamma, self.beta, self.eps);
            }
        });
        Ok(())
    }
}

/// Mean over each text's tokens, then L2 normalisation: `[tokens, h]` → `[texts, h]`.
pub(crate) struct MeanPoolNormalize<'a> {
    pub offsets: &'a [usize],
}

impl CustomOp1 for MeanPoolNormalize<'_> {
    fn name(&self) -> &'static str {
        "mappo-bert-mean-pool"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (t, h) = l.shape().dims2()?;
        let x = input(s, l, name)?;
        check_offsets(self.offsets, t, name)?;
        let n = self.offsets.len() - 1;
        let mut out = vec![0f32; n * h];
        out.par_chunks_mut(h).enumerate().for_each(|(b, o)| {
            let (start, end) = (self.offsets[b], self.offsets[b + 1]);
            let len = end - start;
            for row in x[start * h..end * h].chunks_exact(h) {
                for (o, v) in o.iter_mut().zip(row) {
                    *o += v;
                }
            }
            // sentence-transformers: sum / max(count, 1e-9), then x / max(|x|, 1e-12).
            let inv = 1.0 / (len as f32).max(1e-9);
            for o in o.iter_mut() {
                *o *= inv;
            }
            let norm = dot(o, o).sqrt().max(1e-12);
            for o in o.iter_mut() {
                *o /= norm;
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, h))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_libm() {
        let mut worst: f32 = 0.0;
        for i in -60_000..=60_000 {
            let x = i as f32 * 1e-4;
            worst = worst.max((erf(x) - libm_erf(x)).abs());
        }
        assert!(worst < 2e-6, "max |erf error| {worst}");
    }

    #[test]
    fn exp_matches_std() {
        let mut worst: f32 = 0.0;
        // Above -80 (results far from f32's subnormals; softmax never needs smaller ones).
        for i in -80_000..=20_000 {
            let x = i as f32 * 1e-3;
            let e = x.exp();
            worst = worst.max(((exp(x) - e) / e).abs());
        }
        assert!(worst < 1e-6, "max relative exp error {worst}");
        assert!(exp(-1e30) < 1e-37);
    }

    // erf via f64 series / continued fraction is overkill; std has no erf, so use the
    // identity with the complementary error function computed by numerical integration.
    fn libm_erf(x: f32) -> f32 {
        // Simpson's rule on 2/sqrt(pi) * exp(-t^2) from 0 to x, in f64.
        let x = x as f64;
        let n = 2000;
        let hstep = x / n as f64;
        let f = |t: f64| (-t * t).exp();
        let mut s = f(0.0) + f(x);
        for i in 1..n {
            let w = if i % 2 == 1 { 4.0 } else { 2.0 };
            s += w * f(i as f64 * hstep);
        }
        (s * hstep / 3.0 * 2.0 / std::f64::consts::PI.sqrt()) as f32
    }
}
