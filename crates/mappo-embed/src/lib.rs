//! mappo-embed: sentence-transformers/all-MiniLM-L6-v2 sentence embeddings in candle.
//!
//! [`Embedder`] reproduces sentence-transformers' `encode(..., normalize_embeddings=True)`:
//! WordPiece tokenization truncated at [`MAX_SEQ_LEN`] = 256 tokens (the model's
//! `max_seq_length`; its tokenizer.json says 128), the 6-layer BERT encoder attending only to
//! each text's own tokens, mean pooling over those tokens, then L2 normalisation. Rows match
//! sentence-transformers to a cosine of at least 0.9999 on both backends (tested against
//! `tests/fixtures/minilm_reference.json`).
//!
//! ```no_run
//! let embedder = mappo_embed::Embedder::load(&mappo_embed::default_model_dir(), &candle_core::Device::Cpu)?;
//! let rows = embedder.embed(&["fix my loop", "what is 2 + 2"])?;
//! assert_eq!(rows[0].len(), embedder.dim());
//! # Ok::<(), mappo_embed::EmbedError>(())
//! ```
//!
//! **Model files.** They come from [`default_model_dir`] (`$MAPPO_MODEL_DIR`, else
//! `$XDG_CACHE_HOME/mappo/all-MiniLM-L6-v2`, else `~/.cache/mappo/all-MiniLM-L6-v2`);
//! `cargo xtask fetch-model` puts them there. [`Embedder::load`] checks every file's sha256
//! ([`MODEL_FILES`]) and names the file and the fix when one is missing or corrupt.
//! The file list, hashes and checks ([`check_file`]) depend on `std` and `sha2` only.
//!
//! **Backends** ([`Backend`]). Texts are sorted by token count (longest first) and embedded in
//! batches of similar length. On the CPU, tokens are packed without padding and the glue
//! between the gemms (embedding + LayerNorm, attention, bias + GELU, bias + residual +
//! LayerNorm, pooling) runs as fused candle custom ops, with one fused q|k|v gemm per layer
//! ([`Backend::FusedCpu`]: texts per second on 2 CPU cores match sentence-transformers, see
//! `examples/embed_bench.rs`). Other devices (CUDA) run candle-transformers' `BertModel` on
//! padded batches with the attention mask ([`Backend::Candle`]), which the CPU can run too.
//!
//! Features: `cuda` (candle's CUDA backend; needs nvcc at build time).

mod bert;
mod embedder;
mod error;
mod files;
mod kernels;
mod skinny;

pub use embedder::{
    Backend, DEFAULT_BATCH_SIZE, DEFAULT_MAX_BATCH_TOKENS, Embedder, MAX_SEQ_LEN, StageTimings,
    verify_model_dir,
};
pub use error::EmbedError;
pub use files::{
    CONFIG_JSON, FETCH_HINT, FileProblem, MODEL_DIR_ENV, MODEL_FILES, MODEL_ID, MODEL_SAFETENSORS, ModelFile,
    TOKENIZER_JSON, check_file, default_model_dir, user_cache_dir,
};
