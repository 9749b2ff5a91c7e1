//! Parity with sentence-transformers: every row of `tests/fixtures/minilm_reference.json`
//! (48 texts: empty, whitespace, emoji, CJK, code, a 682-token text, ...) must match our
//! embedding to a cosine of at least 0.9999, on both backends (fused CPU kernels and
//! candle-transformers' `BertModel`).
//!
//! Needs the model in `mappo_embed::default_model_dir()`: run `cargo xtask fetch-model`.
//! A missing model fails this test; it is never skipped.

use candle_core::Device;
use mappo_embed::{Backend, Embedder, default_model_dir};
use serde::Deserialize;

const MIN_COSINE: f32 = 0.9999;

#[derive(Deserialize)]
struct Reference {
    max_seq_length: usize,
    rows: Vec<Row>,
}

#[derive(Deserialize)]
struct Row {
    text: String,
    n_tokens: usize,
    embedding: Vec<f32>,
}

/// The fixture, inside the repository (see `tests/fixtures/README.md` for its provenance).
/// Compiled into the test binary, so the binary runs anywhere (e.g. carried to a GPU machine).
const FIXTURE: &str = include_str!("fixtures/minilm_reference.json");

fn load_reference() -> Reference {
    serde_json::from_str(FIXTURE).unwrap_or_else(|e| panic!("bad fixture minilm_reference.json: {e}"))
}

fn load_embedder() -> Embedder {
    load_backend(Backend::Auto)
}

fn load_backend(backend: Backend) -> Embedder {
    let dir = default_model_dir();
    // The error names the missing or corrupt file and says to run `cargo xtask fetch-model`.
    Embedder::load_with_backend(&dir, &Device::Cpu, backend)
        .unwrap_or_else(|e| panic!("cannot load all-MiniLM-L6-v2 from {}: {e}", dir.display()))
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-12)
}

#[test]
fn matches_sentence_transformers() {
    let embedder = load_embedder();
    assert_eq!(embedder.backend(), Backend::FusedCpu, "the CPU runs the fused kernels by default");
    check_parity(embedder, "fused CPU kernels");
}

/// The device-generic path (candle-transformers' BertModel, the one CUDA runs) must match too.
#[test]
fn candle_backend_matches_sentence_transformers() {
    let embedder = load_backend(Backend::Candle);
    assert_eq!(embedder.backend(), Backend::Candle);
    check_parity(embedder, "candle-transformers BertModel");
}

/// The two backends agree with each other row by row, beyond the fixture's tolerance.
#[test]
fn backends_agree() {
    let reference = load_reference();
    let texts: Vec<&str> = reference.rows.iter().map(|r| r.text.as_str()).collect();
    let fused = load_backend(Backend::FusedCpu).embed(&texts).expect("fused");
    let candle = load_backend(Backend::Candle).embed(&texts).expect("candle");
    for (i, (a, b)) in fused.iter().zip(&candle).enumerate() {
        let c = cosine(a, b);
        assert!(c > 0.99999, "row {i}: fused vs candle-transformers cosine {c}");
    }
}

/// The CUDA build runs candle-transformers' BertModel on the GPU (compiled only with `--features cuda`;
/// with no GPU it fails, it is never skipped).
#[cfg(feature = "cuda")]
#[test]
fn cuda_matches_sentence_transformers() {
    let gpu = Device::new_cuda(0).unwrap_or_else(|e| panic!("the CUDA build's test needs a GPU: {e}"));
    let dir = default_model_dir();
    let embedder = Embedder::load(&dir, &gpu)
        .unwrap_or_else(|e| panic!("cannot load all-MiniLM-L6-v2 from {}: {e}", dir.display()));
    assert_eq!(embedder.backend(), Backend::Candle);
    assert!(
        Embedder::load_with_backend(&dir, &gpu, Backend::FusedCpu).is_err(),
        "the fused kernels are CPU-only"
    );
    check_parity(embedder, "CUDA");
}

fn check_parity(embedder: Embedder, path: &str) {
    let reference = load_reference();
    assert_eq!(reference.max_seq_length, mappo_embed::MAX_SEQ_LEN);
    // Small batches so that the fixture exercises several batches of mixed lengths.
    let embedder = embedder.with_batch_size(7).expect("batch size 7 is valid");
    assert_eq!(embedder.dim(), 384);
    assert_eq!(embedder.model_hash(), mappo_embed::MODEL_SAFETENSORS.sha256);

    let texts: Vec<&str> = reference.rows.iter().map(|r| r.text.as_str()).collect();
    let got = embedder.embed(&texts).expect("embedding the fixture");
    assert_eq!(got.len(), texts.len());

    let mut min = (f32::INFINITY, 0usize);
    let mut failures = Vec::new();
    for (i, (row, emb)) in reference.rows.iter().zip(&got).enumerate() {
        assert_eq!(emb.len(), 384, "row {i}");
        assert_eq!(row.embedding.len(), 384, "fixture row {i}");
        let norm: f32 = emb.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "row {i} has norm {norm}");
        let c = cosine(emb, &row.embedding);
        if c < min.0 {
            min = (c, i);
        }
        if c.is_nan() || c < MIN_COSINE {
            failures.push(format!(
                "row {i} ({} tokens, {:?}): cosine {c}",
                row.n_tokens,
                row.text.chars().take(40).collect::<String>()
            ));
        }
    }
    println!("{path}: min cosine over {} rows: {:.7} (row {})", reference.rows.len(), min.0, min.1);
    assert!(
        failures.is_empty(),
        "{path}: {} rows below cosine {MIN_COSINE}:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn order_and_batching_do_not_change_results() {
    let reference = load_reference();
    let texts: Vec<&str> = reference.rows.iter().map(|r| r.text.as_str()).take(12).collect();
    let a = load_embedder().embed(&texts).expect("embedding");
    let b = load_embedder()
        .with_batch_size(1)
        .expect("batch size 1 is valid")
        .embed(&texts)
        .expect("embedding one at a time");
    // A token cap of 16 splits the batches by tokens rather than by texts.
    let capped = load_embedder()
        .with_max_batch_tokens(16)
        .expect("a token cap of 16 is valid")
        .embed(&texts)
        .expect("embedding with a token cap");
    // Twelve texts are one batch when small calls are not split, one batch per thread when
    // they are (the default).
    let whole = load_embedder().with_split_small(false).embed(&texts).expect("embedding unsplit");
    // One text at a time, every product by the general gemm rather than the few-row kernel.
    let gemm = load_embedder()
        .with_small_kernel(false)
        .with_batch_size(1)
        .expect("batch size 1 is valid")
        .embed(&texts)
        .expect("embedding by the gemm");
    let mut reversed = texts.clone();
    reversed.reverse();
    let mut c = load_embedder().embed(&reversed).expect("embedding reversed");
    c.reverse();
    let t = load_embedder().embed_tensor(&texts).expect("embedding into a tensor");
    assert_eq!(t.dims(), &[texts.len(), 384]);
    let t = t.to_vec2::<f32>().expect("tensor to host");
    for i in 0..texts.len() {
        for (what, other) in [
            ("single", &b[i]),
            ("capped", &capped[i]),
            ("reversed", &c[i]),
            ("tensor", &t[i]),
            ("unsplit", &whole[i]),
            ("gemm", &gemm[i]),
        ] {
            let cos = cosine(&a[i], other);
            assert!(cos > 0.99999, "row {i}: batched vs {what}: cosine {cos}");
        }
    }
    assert!(load_embedder().with_batch_size(0).is_err(), "batch size 0 must be rejected");
    assert!(load_embedder().with_max_batch_tokens(0).is_err(), "a token cap of 0 must be rejected");
    let empty = load_embedder().embed(&[]).expect("embedding nothing");
    assert!(empty.is_empty());
}

#[test]
fn corrupt_model_file_names_the_file_and_the_fix() {
    let src = default_model_dir();
    let dir = std::env::temp_dir().join(format!("mappo-embed-corrupt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap_or_else(|e| {
            panic!("cannot copy {f} from {}: {e}; run `cargo xtask fetch-model`", src.display())
        });
    }
    // A truncated weights file.
    std::fs::write(dir.join("model.safetensors"), b"not really safetensors")
        .expect("write truncated weights");
    let err = Embedder::load(&dir, &Device::Cpu).expect_err("a corrupt file must not load");
    let msg = err.to_string();
    assert!(msg.contains("model.safetensors"), "{msg}");
    assert!(msg.contains("cargo xtask fetch-model"), "{msg}");
    assert!(mappo_embed::verify_model_dir(&dir).is_err(), "verify_model_dir must reject the corrupt file");

    std::fs::remove_file(dir.join("model.safetensors")).expect("remove weights");
    let msg = Embedder::load(&dir, &Device::Cpu).expect_err("a missing file must not load").to_string();
    assert!(msg.contains("model.safetensors") && msg.contains("missing"), "{msg}");
    assert!(msg.contains("cargo xtask fetch-model"), "{msg}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The embedder can be shared across threads (e.g. behind an `Arc` in a server).
#[test]
fn embedder_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Embedder>();
    check::<mappo_embed::EmbedError>();
}
