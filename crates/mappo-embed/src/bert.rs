//! The BERT encoder of all-MiniLM-L6-v2, in candle: two implementations of one computation.
//!
//! - [`Backend::FusedCpu`] (`FusedBert`, hand-written, CPU only), arranged for inference
//!   throughput: activations stay 2-D `[tokens, hidden]` and tokens are packed without padding,
//!   so every projection is one gemm; query, key and value are one fused `[3 * hidden, hidden]`
//!   projection; weights keep PyTorch's `[out, in]` layout and the gemm reads them transposed
//!   (faster with candle's CPU gemm than a contiguous `[in, out]` copy, measured); token-type
//!   0's embedding is folded into the position embeddings; the glue between the gemms runs as
//!   fused kernels (`kernels.rs`).
//! - [`Backend::Candle`] (`CandleBert`): candle-transformers' `BertModel` on right-padded
//!   batches with the attention mask, then masked mean pooling as candle ops. It runs on every
//!   device (CUDA included), and on the CPU for comparison.
//!
//! Both read the same `config.json` (candle-transformers' `Config`, whose `hidden_act` is a
//! serde enum) and the same weights.

use std::collections::HashMap;

use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config, HiddenAct, PositionEmbeddingType};

use crate::{Backend, MAX_SEQ_LEN};
use crate::{kernels, skinny};

/// A projection `y = x @ w^T + b`; the bias is added by the fused kernels.
struct Linear {
    /// `[out, in]`.
    w: Tensor,
    /// The bias, on the host.
    b: Vec<f32>,
}

impl Linear {
    /// `x · wᵀ`: by the few-row kernel ([`skinny`]) when `x` has at most `small_rows` rows,
    /// else by candle's gemm.
    fn matmul(&self, x: &Tensor, small_rows: usize) -> Result<Tensor> {
        if x.dim(0)? <= small_rows {
            x.apply_op2_no_bwd(&self.w, &skinny::SkinnyMatmul)
        } else {
            x.matmul(&self.w.t()?)
        }
    }
}

/// LayerNorm parameters, on the host.
struct LayerNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

struct Layer {
    qkv: Linear,
    attn_out: Linear,
    ln_attn: LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
    ln_out: LayerNorm,
}

/// A batch of token ids, laid out for one backend.
pub(crate) enum Batch {
    /// Packed without padding (fused CPU kernels).
    Packed {
        /// `[tokens]` u32.
        ids: Tensor,
        /// Text `b` owns rows `offsets[b]..offsets[b + 1]`.
        offsets: Vec<usize>,
        /// Each token's position in its text.
        positions: Vec<u32>,
    },
    /// Right-padded to the longest text (candle-transformers).
    Padded {
        /// `[texts, seq_len]` u32.
        ids: Tensor,
        /// `[texts, seq_len]` f32, 1 for real tokens.
        mask: Tensor,
    },
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
        Ok(Self::Packed { ids: Tensor::from_vec(flat, total, device)?, offsets, positions })
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
        Ok(Self::Padded {
            ids: Tensor::from_vec(flat, (n, seq_len), device)?,
            mask: Tensor::from_vec(mask, (n, seq_len), device)?,
        })
    }
}

/// The encoder: one of the two backends.
pub(crate) enum Encoder {
    /// Hand-written fused CPU kernels.
    Fused(FusedBert),
    /// candle-transformers' `BertModel`.
    Candle(CandleBert),
}

impl Encoder {
    /// Turns the few-row matmul kernel of the fused CPU path on (where the CPU has it) or off.
    pub(crate) fn set_small_kernel(&mut self, on: bool) {
        if let Self::Fused(f) = self {
            f.small_rows = skinny::row_limit(on);
        }
    }

    /// Builds the encoder from a safetensors map (`embeddings.*`, `encoder.layer.N.*`,
    /// optionally under `bert.`). [`Backend::Auto`] picks the fused kernels on the CPU when
    /// the config allows them (`hidden_act = "gelu"`), candle-transformers otherwise.
    pub(crate) fn load(
        map: HashMap<String, Tensor>,
        cfg: &Config,
        device: &Device,
        backend: Backend,
    ) -> Result<Self> {
        let (h, heads) = (cfg.hidden_size, cfg.num_attention_heads);
        if heads == 0 || h % heads != 0 {
            candle_core::bail!("hidden_size {h} is not a multiple of {heads} heads");
        }
        if cfg.max_position_embeddings < MAX_SEQ_LEN {
            candle_core::bail!("max_position_embeddings {} < {MAX_SEQ_LEN}", cfg.max_position_embeddings);
        }
        let fusable = device.is_cpu()
            && cfg.hidden_act == HiddenAct::Gelu
            && cfg.position_embedding_type == PositionEmbeddingType::Absolute;
        match backend {
            Backend::Auto if fusable => Ok(Self::Fused(FusedBert::load(map, cfg)?)),
            Backend::FusedCpu if fusable => Ok(Self::Fused(FusedBert::load(map, cfg)?)),
            Backend::FusedCpu => candle_core::bail!(
                "the fused kernels need the CPU and hidden_act \"gelu\" (device {device:?}, \
                 hidden_act {:?}); use the candle backend",
                cfg.hidden_act
            ),
            Backend::Auto | Backend::Candle => Ok(Self::Candle(CandleBert::load(map, cfg, device)?)),
        }
    }

    /// The backend in use ([`Backend::FusedCpu`] or [`Backend::Candle`]).
    pub(crate) fn backend(&self) -> Backend {
        match self {
            Self::Fused(_) => Backend::FusedCpu,
            Self::Candle(_) => Backend::Candle,
        }
    }

    /// Lays out a batch of token-id sequences (each at most `max_position_embeddings` long).
    pub(crate) fn batch(&self, ids: &[&[u32]], device: &Device) -> Result<Batch> {
        match self {
            Self::Fused(_) => Batch::packed(ids, device),
            Self::Candle(_) => Batch::padded(ids, device),
        }
    }

    /// Mean-pooled, L2-normalised embeddings of a batch: `[texts, hidden]`.
    pub(crate) fn embed(&self, batch: &Batch) -> Result<Tensor> {
        match (self, batch) {
            (Self::Fused(m), Batch::Packed { ids, offsets, positions }) => {
                let hidden = m.encode(ids, offsets, positions)?;
                hidden.apply_op1_no_bwd(&kernels::MeanPoolNormalize { offsets })
            }
            (Self::Candle(m), Batch::Padded { ids, mask }) => m.embed(ids, mask),
            _ => candle_core::bail!("a batch laid out for the other backend"),
        }
    }
}

/// candle-transformers' `BertModel` plus masked mean pooling and L2 normalisation.
pub(crate) struct CandleBert {
    model: BertModel,
}

impl CandleBert {
    fn load(map: HashMap<String, Tensor>, cfg: &Config, device: &Device) -> Result<Self> {
        let vb = VarBuilder::from_tensors(map, DType::F32, device);
        Ok(Self { model: BertModel::load(vb, cfg)? })
    }

    fn embed(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let hidden = self.model.forward(ids, &ids.zeros_like()?, Some(mask))?; // [n, l, h]
        let m = mask.unsqueeze(2)?; // [n, l, 1]
        let sum = hidden.broadcast_mul(&m)?.sum(1)?;
        let count = m.sum(1)?.clamp(1e-9, f64::INFINITY)?;
        let mean = sum.broadcast_div(&count)?;
        let norm = mean.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::INFINITY)?;
        mean.broadcast_div(&norm)
    }
}

/// The hand-written encoder for the fused CPU kernels (no pooler).
pub(crate) struct FusedBert {
    word: Tensor,
    /// Position embeddings plus token type 0's embedding, `[max_positions, hidden]`, on the host.
    pos_type: Vec<f32>,
    ln_emb: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    head_dim: usize,
    /// Products with at most this many rows use the few-row kernel; 0 = never.
    small_rows: usize,
}

/// From this many tokens in a batch's longest text on, the fused CPU path runs attention's
/// two products as gemms; below it, as scalar loops (cheaper than per-head gemm calls).
const GEMM_ATTENTION_MIN_LEN: usize = 48;

struct Weights {
    map: HashMap<String, Tensor>,
    prefix: &'static str,
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

    fn host(&mut self, name: &str, n: usize) -> Result<Vec<f32>> {
        self.get(name, &[n])?.to_vec1::<f32>()
    }

    fn linear(&mut self, name: &str, n_in: usize, n_out: usize) -> Result<Linear> {
        let w = self.get(&format!("{name}.weight"), &[n_out, n_in])?;
        Ok(Linear { w, b: self.host(&format!("{name}.bias"), n_out)? })
    }

    fn layer_norm(&mut self, name: &str, n: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            gamma: self.host(&format!("{name}.weight"), n)?,
            beta: self.host(&format!("{name}.bias"), n)?,
            eps: eps as f32,
        })
    }
}

impl FusedBert {
    fn load(map: HashMap<String, Tensor>, cfg: &Config) -> Result<Self> {
        let (h, heads) = (cfg.hidden_size, cfg.num_attention_heads);
        let prefix = if map.contains_key("bert.embeddings.word_embeddings.weight") { "bert." } else { "" };
        let mut w = Weights { map, prefix };
        let eps = cfg.layer_norm_eps;
        let word = w.get("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?;
        let pos = w.get("embeddings.position_embeddings.weight", &[cfg.max_position_embeddings, h])?;
        let types = w.get("embeddings.token_type_embeddings.weight", &[cfg.type_vocab_size, h])?;
        let pos_type = pos.broadcast_add(&types.narrow(0, 0, 1)?)?.flatten_all()?.to_vec1::<f32>()?;
        let ln_emb = w.layer_norm("embeddings.LayerNorm", h, eps)?;

        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let q = w.linear(&format!("{p}.attention.self.query"), h, h)?;
            let k = w.linear(&format!("{p}.attention.self.key"), h, h)?;
            let v = w.linear(&format!("{p}.attention.self.value"), h, h)?;
            let qkv =
                Linear { w: Tensor::cat(&[&q.w, &k.w, &v.w], 0)?.contiguous()?, b: [q.b, k.b, v.b].concat() };
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
            ln_emb,
            layers,
            heads,
            head_dim: h / heads,
            small_rows: skinny::row_limit(true),
        })
    }

    /// Last hidden states of a packed batch, `[tokens, hidden]`.
    fn encode(&self, ids: &Tensor, offsets: &[usize], positions: &[u32]) -> Result<Tensor> {
        let mut x = self.word.apply_op2_no_bwd(
            ids,
            &kernels::Embed {
                pos_type: &self.pos_type,
                gamma: &self.ln_emb.gamma,
                beta: &self.ln_emb.beta,
                eps: self.ln_emb.eps,
                positions,
            },
        )?;
        for layer in &self.layers {
            let qkv = layer.qkv.matmul(&x, self.small_rows)?;
            let ctx = self.attention(&qkv, &layer.qkv.b, offsets)?;
            let a = layer.attn_out.matmul(&ctx, self.small_rows)?;
            a.inplace_op2(
                &x,
                &kernels::BiasResidualLayerNorm {
                    bias: &layer.attn_out.b,
                    gamma: &layer.ln_attn.gamma,
                    beta: &layer.ln_attn.beta,
                    eps: layer.ln_attn.eps,
                },
            )?;
            let f = layer.ff_in.matmul(&a, self.small_rows)?;
            f.inplace_op1(&kernels::BiasGelu { bias: &layer.ff_in.b })?;
            let y = layer.ff_out.matmul(&f, self.small_rows)?;
            y.inplace_op2(
                &a,
                &kernels::BiasResidualLayerNorm {
                    bias: &layer.ff_out.b,
                    gamma: &layer.ln_out.gamma,
                    beta: &layer.ln_out.beta,
                    eps: layer.ln_out.eps,
                },
            )?;
            x = y;
        }
        Ok(x)
    }

    /// Attention on the packed q|k|v projection: scalar loops for short texts, gemms (with
    /// padding) once the batch's longest text reaches [`GEMM_ATTENTION_MIN_LEN`] tokens.
    fn attention(&self, qkv: &Tensor, bias: &[f32], offsets: &[usize]) -> Result<Tensor> {
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
}
