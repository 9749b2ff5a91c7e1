//! [`Embedder`]: tokenize, batch by length, encode, pool, restore the order.

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::bert::Config;
use tokenizers::{Tokenizer, TruncationParams, TruncationStrategy};

use crate::bert::{self, Encoder};
use crate::error::EmbedError;
use crate::files::{self, CONFIG_JSON, MODEL_FILES, MODEL_SAFETENSORS, ModelFile, TOKENIZER_JSON};

/// Maximum tokens per text, [CLS] and [SEP] included (sentence-transformers' max_seq_length).
pub const MAX_SEQ_LEN: usize = 256;

/// Default number of texts per forward pass.
pub const DEFAULT_BATCH_SIZE: usize = 64;

/// Default cap on tokens per forward pass (texts × longest text): batches of long texts
/// hold fewer texts, which bounds memory (attention is quadratic) and keeps the CPU gemms
/// in cache. CLINC150-like prompts (≈ 11 tokens) never reach it.
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 4096;

/// Checks that `dir` holds config.json, tokenizer.json and model.safetensors with their
/// expected sha256. The error names the first bad file and the fix (`cargo xtask fetch-model`).
pub fn verify_model_dir(dir: &Path) -> Result<(), EmbedError> {
    for file in &MODEL_FILES {
        files::check_file(dir, file).map_err(|p| EmbedError::from_problem(dir.join(file.name), p))?;
    }
    Ok(())
}

/// Reads a model file whole and checks its sha256.
fn read_verified(dir: &Path, file: &ModelFile) -> Result<Vec<u8>, EmbedError> {
    let path = dir.join(file.name);
    let bytes = std::fs::read(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            EmbedError::MissingFile { path: path.clone() }
        } else {
            EmbedError::Io { path: path.clone(), source: e }
        }
    })?;
    files::check_bytes(file, &bytes).map_err(|p| EmbedError::from_problem(path, p))?;
    Ok(bytes)
}

/// Time spent in each stage of the last embedding call (host wall-clock; on an asynchronous
/// device such as CUDA, `encode` counts launch time and `finish` the final synchronisation).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimings {
    /// Tokenization, sorting and building the batches' id tensors.
    pub tokenize: Duration,
    /// The BERT encoder and the mean pooling + normalisation of each batch.
    pub encode: Duration,
    /// Restoring the input order (and, for [`Embedder::embed`], copying to the host).
    pub finish: Duration,
}

/// Which implementation of the BERT encoder an [`Embedder`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// The fused CPU kernels on the CPU (when the model's config allows them), candle-transformers'
    /// `BertModel` on other devices.
    #[default]
    Auto,
    /// Hand-written fused CPU kernels on packed (unpadded) tokens: the fastest on the CPU.
    /// CPU only, and only for `hidden_act = "gelu"`.
    FusedCpu,
    /// candle-transformers' `BertModel` on padded batches with the attention mask: any device.
    Candle,
}

/// all-MiniLM-L6-v2 sentence embedder (384 dimensions, unit norm).
pub struct Embedder {
    model: Encoder,
    dim: usize,
    tokenizer: Tokenizer,
    device: Device,
    batch_size: usize,
    max_batch_tokens: usize,
    split_small: bool,
    model_hash: String,
    timings: std::sync::Mutex<StageTimings>,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("device", &self.device)
            .field("backend", &self.backend())
            .field("batch_size", &self.batch_size)
            .field("max_batch_tokens", &self.max_batch_tokens)
            .field("model_hash", &self.model_hash)
            .finish_non_exhaustive()
    }
}

impl Embedder {
    /// Loads the model from `model_dir` (see [`default_model_dir`](crate::default_model_dir))
    /// onto `device`, checking the sha256 of config.json, tokenizer.json and model.safetensors.
    /// Runs the fused CPU kernels on the CPU and candle-transformers' `BertModel` elsewhere
    /// ([`Backend::Auto`]).
    pub fn load(model_dir: &Path, device: &Device) -> Result<Self, EmbedError> {
        Self::load_with_backend(model_dir, device, Backend::Auto)
    }

    /// Like [`load`](Self::load), with the encoder implementation chosen: e.g.
    /// [`Backend::Candle`] on the CPU to compare it with the fused kernels.
    /// [`Backend::FusedCpu`] on another device is an [`EmbedError::Backend`].
    pub fn load_with_backend(
        model_dir: &Path,
        device: &Device,
        backend: Backend,
    ) -> Result<Self, EmbedError> {
        let config_bytes = read_verified(model_dir, &CONFIG_JSON)?;
        let tokenizer_bytes = read_verified(model_dir, &TOKENIZER_JSON)?;
        let weights = read_verified(model_dir, &MODEL_SAFETENSORS)?;
        let model_hash = MODEL_SAFETENSORS.sha256.to_string();

        let invalid = |file: &ModelFile, message: String| EmbedError::InvalidFile {
            path: model_dir.join(file.name),
            message,
        };
        let config: Config =
            serde_json::from_slice(&config_bytes).map_err(|e| invalid(&CONFIG_JSON, e.to_string()))?;

        let mut tokenizer =
            Tokenizer::from_bytes(&tokenizer_bytes).map_err(|e| invalid(&TOKENIZER_JSON, e.to_string()))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_SEQ_LEN,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                ..Default::default()
            }))
            .map_err(|e| invalid(&TOKENIZER_JSON, e.to_string()))?;
        // We pad each length-sorted batch ourselves.
        tokenizer.with_padding(None);

        let tensors = candle_core::safetensors::load_buffer(&weights, device)
            .map_err(|e| invalid(&MODEL_SAFETENSORS, e.to_string()))?;
        drop(weights);
        if backend == Backend::FusedCpu && !device.is_cpu() {
            return Err(EmbedError::Backend(format!("the fused CPU kernels cannot run on {device:?}")));
        }
        let model = Encoder::load(tensors, &config, device, backend)
            .map_err(|e| invalid(&MODEL_SAFETENSORS, e.to_string()))?;

        Ok(Self {
            model,
            dim: config.hidden_size,
            tokenizer,
            device: device.clone(),
            batch_size: DEFAULT_BATCH_SIZE,
            max_batch_tokens: DEFAULT_MAX_BATCH_TOKENS,
            split_small: true,
            model_hash,
            timings: std::sync::Mutex::new(StageTimings::default()),
        })
    }

    /// Sets the number of texts per forward pass (default [`DEFAULT_BATCH_SIZE`]).
    pub fn with_batch_size(mut self, batch_size: usize) -> Result<Self, EmbedError> {
        if batch_size == 0 {
            return Err(EmbedError::ZeroBatchSize);
        }
        self.batch_size = batch_size;
        Ok(self)
    }

    /// On the CPU, splits a call with fewer texts than one batch per thread into one smaller
    /// batch per thread (default true): the threads then run whole forward passes side by side
    /// instead of meeting at a barrier inside every op, which is what a server's small batches
    /// (a few texts each) need. `false` keeps the texts in as few batches as the batch size
    /// allows (for comparison in `embed_latency`).
    pub fn with_split_small(mut self, split: bool) -> Self {
        self.split_small = split;
        self
    }

    /// On the CPU with AVX2 and FMA, computes the encoder's products of at most 48 token rows
    /// with a kernel made for few rows instead of the general gemm (default true; `false` for
    /// comparison in `embed_latency`). Results agree to float rounding.
    pub fn with_small_kernel(mut self, on: bool) -> Self {
        self.model.set_small_kernel(on);
        self
    }

    /// Caps the tokens per forward pass (default [`DEFAULT_MAX_BATCH_TOKENS`]); a text
    /// longer than the cap still gets a batch of its own.
    pub fn with_max_batch_tokens(mut self, max_batch_tokens: usize) -> Result<Self, EmbedError> {
        if max_batch_tokens == 0 {
            return Err(EmbedError::ZeroBatchSize);
        }
        self.max_batch_tokens = max_batch_tokens;
        Ok(self)
    }

    /// Maximum texts per forward pass.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Maximum tokens (texts × longest text) per forward pass.
    pub fn max_batch_tokens(&self) -> usize {
        self.max_batch_tokens
    }

    /// Embedding dimension (384).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The encoder implementation in use ([`Backend::FusedCpu`] or [`Backend::Candle`]).
    pub fn backend(&self) -> Backend {
        self.model.backend()
    }

    /// sha256 of model.safetensors (lower-case hex), for cache keys.
    pub fn model_hash(&self) -> &str {
        &self.model_hash
    }

    /// The device the model lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Stage timings of the last embedding call.
    pub fn last_timings(&self) -> StageTimings {
        self.timings.lock().map(|t| *t).unwrap_or_default()
    }

    /// Token counts of `texts` after truncation, [CLS] and [SEP] included.
    pub fn count_tokens(&self, texts: &[&str]) -> Result<Vec<usize>, EmbedError> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        Ok(encodings.iter().map(|e| e.get_ids().len()).collect())
    }

    /// Embeds `texts`: one unit-norm row of [`dim`](Self::dim) floats per text, in order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.embed_with_progress(texts, |_, _| {})
    }

    /// Like [`embed`](Self::embed), calling `progress(done, total)` after each batch.
    pub fn embed_with_progress(
        &self,
        texts: &[&str],
        progress: impl FnMut(usize, usize),
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let t = self.embed_tensor_with_progress(texts, progress)?;
        let t0 = Instant::now();
        let rows = t.to_vec2::<f32>()?;
        if let Ok(mut tm) = self.timings.lock() {
            tm.finish += t0.elapsed();
        }
        Ok(rows)
    }

    /// Embeds `texts` into an `[n, 384]` f32 tensor on the model's device, rows in order.
    pub fn embed_tensor(&self, texts: &[&str]) -> Result<Tensor, EmbedError> {
        self.embed_tensor_with_progress(texts, |_, _| {})
    }

    /// Like [`embed_tensor`](Self::embed_tensor), calling `progress(done, total)` after
    /// each batch.
    pub fn embed_tensor_with_progress(
        &self,
        texts: &[&str],
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Tensor, EmbedError> {
        let mut timings = StageTimings::default();
        let n = texts.len();
        if n == 0 {
            return Ok(Tensor::zeros((0, self.dim()), DType::F32, &self.device)?);
        }

        // Tokenize everything, then sort by token count so that batches need little padding.
        let t0 = Instant::now();
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        let mut order: Vec<usize> = (0..n).collect();
        // Longest first, as sentence-transformers does: the first batch is the largest, so a
        // device running out of memory fails at once.
        order.sort_by_key(|&i| std::cmp::Reverse(encodings[i].get_ids().len()));
        timings.tokenize += t0.elapsed();

        // Batches: consecutive runs of the sorted order, at most `batch_size` texts and
        // `max_batch_tokens` tokens (counting the batch's first, longest text for every row).
        let threads = if self.device.is_cpu() { rayon::current_num_threads().clamp(1, 8) } else { 1 };
        let per_batch =
            if self.split_small { self.batch_size.min(n.div_ceil(threads)) } else { self.batch_size };
        let mut batches = Vec::with_capacity(n.div_ceil(per_batch));
        let mut start = 0;
        while start < n {
            let longest = encodings[order[start]].get_ids().len().max(1);
            let take = (self.max_batch_tokens / longest).clamp(1, per_batch);
            let end = (start + take).min(n);
            batches.push(&order[start..end]);
            start = end;
        }

        let mut pooled = Vec::with_capacity(batches.len());
        let mut done = 0;
        // On the CPU, one batch per thread runs at once (the threads steal work from each
        // other inside the gemms): fewer fork-join barriers than parallelising each op alone,
        // measured +12-19% texts/s on 2 cores. Capped to bound memory on many-core machines.
        for group in batches.chunks(threads) {
            let t0 = Instant::now();
            let prepared = group
                .iter()
                .map(|chunk| {
                    let ids: Vec<&[u32]> = chunk.iter().map(|&i| encodings[i].get_ids()).collect();
                    self.model.batch(&ids, &self.device)
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            timings.tokenize += t0.elapsed();

            let t0 = Instant::now();
            let run = |batch: &bert::Batch| self.model.embed(batch);
            let results: Vec<candle_core::Result<Tensor>> = if prepared.len() > 1 {
                use rayon::prelude::*;
                prepared.par_iter().map(run).collect()
            } else {
                prepared.iter().map(run).collect()
            };
            for r in results {
                pooled.push(r?);
            }
            timings.encode += t0.elapsed();

            done += group.iter().map(|c| c.len()).sum::<usize>();
            progress(done, n);
        }

        // Restore the input order with one gather on the device.
        let t0 = Instant::now();
        let sorted = Tensor::cat(&pooled, 0)?;
        let mut inverse = vec![0u32; n];
        for (pos, &i) in order.iter().enumerate() {
            inverse[i] = pos as u32;
        }
        let inverse = Tensor::from_vec(inverse, n, &self.device)?;
        let out = sorted.index_select(&inverse, 0)?;
        timings.finish += t0.elapsed();

        if let Ok(mut tm) = self.timings.lock() {
            *tm = timings;
        }
        Ok(out)
    }
}
