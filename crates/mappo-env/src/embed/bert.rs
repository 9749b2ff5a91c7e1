//! The BERT encoder of all-MiniLM-L6-v2, in candle.
//!
//! The same computation as `candle_transformers::models::bert::BertModel` (and Hugging Face's
//! `BertModel`), arranged for inference throughput:
//! - activations stay 2-D `[tokens, hidden]`, so every projection is one gemm;
//! - query, key and value are one fused `[3 * hidden, hidden]` projection;
//! - weights keep PyTorch's `[out, in]` layout and the gemm reads them transposed (faster
//!   with candle's CPU gemm than a contiguous `[in, out]` copy, measured);
//! - token-type 0's embedding is folded into the position embeddings;
//! - on the CPU, tokens are packed without padding and the glue between the gemms runs as
//!   fused kernels (`kernels.rs`); on other devices (CUDA) it runs as ordinary candle ops on
//!   a right-padded batch with the attention mask.

use std::collections::HashMap;

use candle_core::{D, DType, Device, Result, Tensor};
use serde::Deserialize;

use super::kernels;

/// The fields of a Hugging Face BERT `config.json` that inference needs.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
}

fn default_act() -> String {
    "gelu".to_string()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

/// A projection `y = x @ w^T + b`.
struct Linear {
    /// `[out, in]`.
    w: Tensor,
    /// `[out]`.
    b: Tensor,
    /// The bias on the host, for the CPU kernels.
    b_host: Vec<f32>,
}

impl Linear {
    fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        x.matmul(&self.w.t()?)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.matmul(x)?.broadcast_add(&self.b)
    }
}

struct LayerNorm {
    gamma: Tensor,
    beta: Tensor,
    gamma_host: Vec<f32>,
    beta_host: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::layer_norm(x, &self.gamma, &self.beta, self.eps)
    }
}

struct Layer {
    qkv: Linear,
    attn_out: Linear,
    ln_attn: LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
    ln_out: LayerNorm,
}

/// A batch of token ids: packed without padding for the fused CPU kernels, or right-padded
/// to its longest text (with a mask) for the generic path.
pub struct Batch {
    /// Packed: `[tokens]`; padded: `[texts * seq_len]`. u32.
    ids: Tensor,
    /// Packed layout: text `b` owns rows `offsets[b]..offsets[b + 1]`.
    offsets: Vec<usize>,
    /// Packed layout: each token's position in its text.
    positions: Vec<u32>,
    /// Padded layout: `[texts, seq_len]` f32, 1 for real tokens.
    mask: Option<Tensor>,
    texts: usize,
    seq_len: usize,
}

impl Batch {
    fn packed(ids: &[&[u32]], device: &Device) -> Result<Self> {
        let total: usize = ids.iter().map(|x| x.len()).sum();
        let mut flat = Vec::with_capacity(total);
        let mut offsets = Vec::with_capacity(ids.len() + 1);
        let mut positions = Vec::with_capacity(total);
        offsets.push(0);
        for row in ids {
            flat.extend_from_slice(row);
            positions.extend(0..row.len() as u32);
            offsets.push(flat.len());
        }
        Ok(Self {
            ids: Tensor::from_vec(flat, total, device)?,
            offsets,
            positions,
            mask: None,
            texts: ids.len(),
            seq_len: 0,
        })
    }

    fn padded(ids: &[&[u32]], device: &Device) -> Result<Self> {
        let n = ids.len();
        let seq_len = ids.iter().map(|x| x.len()).max().unwrap_or(0).max(1);
        let mut flat = vec![0u32; n * seq_len];
        let mut mask = vec![0f32; n * seq_len];
        for (r, row) in ids.iter().enumerate() {
            flat[r * seq_len..r * seq_len + row.len()].copy_from_slice(row);
            mask[r * seq_len..r * seq_len + row.len()].fill(1.0);
        }
        Ok(Self {
            ids: Tensor::from_vec(flat, n * seq_len, device)?,
            offsets: Vec::new(),
            positions: Vec::new(),
            mask: Some(Tensor::from_vec(mask, (n, seq_len), device)?),
            texts: n,
            seq_len,
        })
    }

    fn mask(&self) -> Result<&Tensor> {
        self.mask.as_ref().ok_or_else(|| candle_core::Error::Msg("a packed batch has no mask".into()))
    }
}

/// The BERT encoder (no pooler).
pub struct Model {
    word: Tensor,
    /// Position embeddings plus token type 0's embedding, `[max_positions, hidden]`.
    pos_type: Tensor,
    pos_type_host: Vec<f32>,
    ln_emb: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    head_dim: usize,
    hidden: usize,
    fused: bool,
}

/// From this many tokens in a batch's longest text on, the fused CPU path runs attention's
/// two products as gemms; below it, as scalar loops (cheaper than per-head gemm calls).
const GEMM_ATTENTION_MIN_LEN: usize = 48;

struct Weights {
    map: HashMap<String, Tensor>,
    prefix: &'static str,
    host: bool,
}

impl Weights {
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let full = format!("{}{name}", self.prefix);
        let t = self
            .map
            .remove(&full)
            .ok_or_else(|| candle_core::Error::Msg(format!("tensor {full} is missing")))?;
        if t.dims() != shape {
            candle_core::bail!("tensor {full} has shape {:?}, expected {shape:?}", t.dims());
        }
        t.to_dtype(DType::F32)
    }

    fn host(&self, t: &Tensor) -> Result<Vec<f32>> {
        if self.host { t.flatten_all()?.to_vec1::<f32>() } else { Ok(Vec::new()) }
    }

    fn linear(&mut self, name: &str, n_in: usize, n_out: usize) -> Result<Linear> {
        let w = self.get(&format!("{name}.weight"), &[n_out, n_in])?;
        let b = self.get(&format!("{name}.bias"), &[n_out])?;
        Ok(Linear { w, b_host: self.host(&b)?, b })
    }

    fn layer_norm(&mut self, name: &str, n: usize, eps: f64) -> Result<LayerNorm> {
        let gamma = self.get(&format!("{name}.weight"), &[n])?;
        let beta = self.get(&format!("{name}.bias"), &[n])?;
        Ok(LayerNorm {
            gamma_host: self.host(&gamma)?,
            beta_host: self.host(&beta)?,
            gamma,
            beta,
            eps: eps as f32,
        })
    }
}

impl Model {
    /// Builds the encoder from a safetensors map (`embeddings.*`, `encoder.layer.N.*`,
    /// optionally under `bert.`).
    pub fn load(map: HashMap<String, Tensor>, cfg: &Config, device: &Device) -> Result<Self> {
        if cfg.hidden_act != "gelu" {
            candle_core::bail!(
                "hidden_act {:?} is not supported (all-MiniLM-L6-v2 uses \"gelu\")",
                cfg.hidden_act
            );
        }
        let (h, heads) = (cfg.hidden_size, cfg.num_attention_heads);
        if heads == 0 || h % heads != 0 {
            candle_core::bail!("hidden_size {h} is not a multiple of {heads} heads");
        }
        if cfg.max_position_embeddings < super::MAX_SEQ_LEN {
            candle_core::bail!(
                "max_position_embeddings {} < {}",
                cfg.max_position_embeddings,
                super::MAX_SEQ_LEN
            );
        }
        let prefix = if map.contains_key("bert.embeddings.word_embeddings.weight") { "bert." } else { "" };
        let mut w = Weights { map, prefix, host: device.is_cpu() };
        let eps = cfg.layer_norm_eps;
        let word = w.get("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?;
        let pos = w.get("embeddings.position_embeddings.weight", &[cfg.max_position_embeddings, h])?;
        let types = w.get("embeddings.token_type_embeddings.weight", &[cfg.type_vocab_size, h])?;
        let pos_type = pos.broadcast_add(&types.narrow(0, 0, 1)?)?.contiguous()?;
        let pos_type_host = w.host(&pos_type)?;
        let ln_emb = w.layer_norm("embeddings.LayerNorm", h, eps)?;

        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let q = w.linear(&format!("{p}.attention.self.query"), h, h)?;
            let k = w.linear(&format!("{p}.attention.self.key"), h, h)?;
            let v = w.linear(&format!("{p}.attention.self.value"), h, h)?;
            let qkv_w = Tensor::cat(&[&q.w, &k.w, &v.w], 0)?.contiguous()?;
            let qkv_b = Tensor::cat(&[&q.b, &k.b, &v.b], 0)?;
            let qkv = Linear { w: qkv_w, b_host: [q.b_host, k.b_host, v.b_host].concat(), b: qkv_b };
            layers.push(Layer {
                qkv,
                attn_out: w.linear(&format!("{p}.attention.output.dense"), h, h)?,
                ln_attn: w.layer_norm(&format!("{p}.attention.output.LayerNorm"), h, eps)?,
                ff_in: w.linear(&format!("{p}.intermediate.dense"), h, cfg.intermediate_size)?,
                ff_out: w.linear(&format!("{p}.output.dense"), cfg.intermediate_size, h)?,
                ln_out: w.layer_norm(&format!("{p}.output.LayerNorm"), h, eps)?,
            });
        }
        Ok(Self {
            word,
            pos_type,
            pos_type_host,
            ln_emb,
            layers,
            heads,
            head_dim: h / heads,
            hidden: h,
            fused: device.is_cpu(),
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// Lays out a batch of token-id sequences (each at most `max_position_embeddings` long)
    /// for [`encode`](Self::encode).
    pub fn batch(&self, ids: &[&[u32]]) -> Result<Batch> {
        let device = self.word.device();
        if self.fused { Batch::packed(ids, device) } else { Batch::padded(ids, device) }
    }

    /// Uses the fused CPU kernels (only possible, and the default, on the CPU).
    pub fn set_fused(&mut self, fused: bool) {
        self.fused = fused && self.word.device().is_cpu();
    }

    /// Last hidden states, `[tokens, hidden]` in the batch's layout.
    pub fn encode(&self, batch: &Batch) -> Result<Tensor> {
        if self.fused { self.encode_fused(batch) } else { self.encode_generic(batch) }
    }

    /// Mask-weighted mean pooling then L2 normalisation: `[texts, hidden]`.
    pub fn pool(&self, batch: &Batch, hidden: &Tensor) -> Result<Tensor> {
        if self.fused {
            return hidden.apply_op1_no_bwd(&kernels::MeanPoolNormalize { offsets: &batch.offsets });
        }
        let (n, l, h) = (batch.texts, batch.seq_len, self.hidden);
        let mask = batch.mask()?.unsqueeze(2)?; // [n, l, 1]
        let sum = hidden.reshape((n, l, h))?.broadcast_mul(&mask)?.sum(1)?;
        let count = mask.sum(1)?.clamp(1e-9, f64::INFINITY)?;
        let mean = sum.broadcast_div(&count)?;
        let norm = mean.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::INFINITY)?;
        mean.broadcast_div(&norm)
    }

    fn encode_fused(&self, batch: &Batch) -> Result<Tensor> {
        let mut x = self.word.apply_op2_no_bwd(
            &batch.ids,
            &kernels::Embed {
                pos_type: &self.pos_type_host,
                gamma: &self.ln_emb.gamma_host,
                beta: &self.ln_emb.beta_host,
                eps: self.ln_emb.eps,
                positions: &batch.positions,
            },
        )?;
        for layer in &self.layers {
            let qkv = layer.qkv.matmul(&x)?;
            let ctx = self.attention_fused(&qkv, &layer.qkv.b_host, batch)?;
            let a = layer.attn_out.matmul(&ctx)?;
            a.inplace_op2(
                &x,
                &kernels::BiasResidualLayerNorm {
                    bias: &layer.attn_out.b_host,
                    gamma: &layer.ln_attn.gamma_host,
                    beta: &layer.ln_attn.beta_host,
                    eps: layer.ln_attn.eps,
                },
            )?;
            let f = layer.ff_in.matmul(&a)?;
            f.inplace_op1(&kernels::BiasGelu { bias: &layer.ff_in.b_host })?;
            let y = layer.ff_out.matmul(&f)?;
            y.inplace_op2(
                &a,
                &kernels::BiasResidualLayerNorm {
                    bias: &layer.ff_out.b_host,
                    gamma: &layer.ln_out.gamma_host,
                    beta: &layer.ln_out.beta_host,
                    eps: layer.ln_out.eps,
                },
            )?;
            x = y;
        }
        Ok(x)
    }

    /// Attention on the packed q|k|v projection: scalar loops for short texts, gemms (with
    /// padding) once the batch's longest text reaches [`GEMM_ATTENTION_MIN_LEN`] tokens.
    fn attention_fused(&self, qkv: &Tensor, bias: &[f32], batch: &Batch) -> Result<Tensor> {
        let offsets = &batch.offsets;
        let longest = offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        if longest < GEMM_ATTENTION_MIN_LEN {
            return qkv.apply_op1_no_bwd(&kernels::Attention {
                bias,
                offsets,
                heads: self.heads,
                head_dim: self.head_dim,
            });
        }
        let split = qkv.apply_op1_no_bwd(&kernels::SplitHeads {
            bias,
            offsets,
            seq_len: longest,
            heads: self.heads,
            head_dim: self.head_dim,
        })?;
        let (q, k, v) = (split.get(0)?, split.get(1)?, split.get(2)?);
        let scores = q.matmul(&k.t()?)?;
        scores.inplace_op1(&kernels::MaskedSoftmax { offsets })?;
        scores.matmul(&v)?.apply_op1_no_bwd(&kernels::MergeHeads { offsets })
    }

    fn encode_generic(&self, batch: &Batch) -> Result<Tensor> {
        let (n, l, h) = (batch.texts, batch.seq_len, self.hidden);
        let (heads, d) = (self.heads, self.head_dim);
        let words = self.word.index_select(&batch.ids, 0)?.reshape((n, l, h))?;
        let x = words.broadcast_add(&self.pos_type.narrow(0, 0, l)?)?;
        let mut x = self.ln_emb.forward(&x.reshape((n * l, h))?)?;
        // Hugging Face's extended mask: 0 for real tokens, f32::MIN for padding.
        let mask_add = ((batch.mask()? - 1.0)? * f64::from(f32::MAX))?.reshape((n, 1, 1, l))?;
        let scale = 1.0 / (d as f64).sqrt();
        let split =
            |t: &Tensor| -> Result<Tensor> { t.reshape((n, l, heads, d))?.transpose(1, 2)?.contiguous() };
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x)?;
            let q = split(&qkv.narrow(1, 0, h)?)?;
            let k = split(&qkv.narrow(1, h, h)?)?;
            let v = split(&qkv.narrow(1, 2 * h, h)?)?;
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&mask_add)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let ctx = probs.matmul(&v)?.transpose(1, 2)?.contiguous()?.reshape((n * l, h))?;
            let a = layer.ln_attn.forward(&(layer.attn_out.forward(&ctx)? + &x)?)?;
            let f = layer.ff_in.forward(&a)?.gelu_erf()?;
            x = layer.ln_out.forward(&(layer.ff_out.forward(&f)? + &a)?)?;
        }
        Ok(x)
    }
}
