//! CPU throughput of the embedder on the 3,000 CLINC150 validation texts.
//!
//! ```text
//! cargo run --release -p mappo-env --example embed_bench -- [--batch-size N] [--repeat R]
//!     [--baseline] [--generic] [--concat K] [--data PATH] [--model-dir DIR] [--device cpu|cuda[:N]]
//! ```
//! Prints texts/s per run with the time spent tokenizing, in the encoder (with pooling) and
//! restoring the order, and the CPU time used. `--baseline` interleaves each run with the
//! straightforward candle version (candle-transformers' `BertModel` on padded batches of the
//! same texts, sorted by length, candle ops for pooling) and prints the speed ratio of each
//! pair, a figure that survives a busy machine better than texts/s. `--generic` measures the
//! device-generic path (plain candle ops, what CUDA runs) instead of the fused CPU kernels.
//! `--concat K` joins every K consecutive texts into one, to measure long inputs (K = 20
//! gives ≈ 200 tokens per text).
//! Needs the model (`cargo xtask fetch-model`) and `shared/data/clinc150/`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{D, DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use mappo_env::embed::{Embedder, MAX_SEQ_LEN, default_model_dir};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> Res<()> {
    let mut batch_size = mappo_env::embed::DEFAULT_BATCH_SIZE;
    let mut repeat = 3usize;
    let mut baseline = false;
    let mut generic = false;
    let mut concat = 1usize;
    let mut data = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/clinc150/clinc150_train_val.json");
    let mut model_dir = default_model_dir();
    let mut device = Device::Cpu;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--batch-size" => batch_size = value()?.parse()?,
            "--repeat" => repeat = value()?.parse()?,
            "--baseline" => baseline = true,
            "--generic" => generic = true,
            "--concat" => concat = value()?.parse::<usize>()?.max(1),
            "--data" => data = PathBuf::from(value()?),
            "--model-dir" => model_dir = PathBuf::from(value()?),
            "--device" => {
                device = match value()?.as_str() {
                    "cpu" => Device::Cpu,
                    "cuda" => Device::new_cuda(0)?,
                    d => Device::new_cuda(
                        d.strip_prefix("cuda:").ok_or("--device: cpu, cuda or cuda:N")?.parse()?,
                    )?,
                }
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }

    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&data)?)?;
    let texts: Vec<&str> = json["val"]
        .as_array()
        .ok_or("no `val` array in the data file")?
        .iter()
        .filter_map(|row| row.get(0).and_then(|t| t.as_str()))
        .collect();
    // `--concat K`: K consecutive texts joined into one, to measure long inputs.
    let joined: Vec<String> = texts.chunks(concat).map(|c| c.join(". ")).collect();
    let texts: Vec<&str> = joined.iter().map(String::as_str).collect();

    let t0 = Instant::now();
    let embedder =
        Embedder::load(&model_dir, &device)?.with_batch_size(batch_size)?.with_fused_cpu_kernels(!generic);
    println!(
        "loaded in {:.2}s; {} texts, batch size {batch_size}, {} threads, {} path on {device:?}",
        t0.elapsed().as_secs_f64(),
        texts.len(),
        candle_core::utils::get_num_threads(),
        if generic || !device.is_cpu() { "generic" } else { "fused CPU" }
    );
    let mut counts = embedder.count_tokens(&texts)?;
    let tokens: usize = counts.iter().sum();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let padded: usize = counts.chunks(batch_size).map(|c| c.len() * c.first().copied().unwrap_or(0)).sum();
    println!(
        "{tokens} tokens ({:.1} per text, max {}), {padded} with per-batch padding",
        tokens as f64 / texts.len() as f64,
        counts.first().copied().unwrap_or(0)
    );
    let reference = if baseline { Some(Baseline::load(&model_dir, batch_size)?) } else { None };

    // Warm-up (allocator, thread pools), and a sanity check against the baseline.
    let warm = &texts[..256.min(texts.len())];
    let ours = embedder.embed(warm)?;
    if let Some(b) = &reference {
        let theirs = b.embed(warm)?;
        let min = ours
            .iter()
            .zip(&theirs)
            .map(|(x, y)| x.iter().zip(y).map(|(a, b)| a * b).sum::<f32>())
            .fold(f32::INFINITY, f32::min);
        println!("min cosine to the baseline over {} texts: {min:.7}", warm.len());
    }

    let mut best = f64::INFINITY;
    let mut ratios = Vec::new();
    for r in 0..repeat {
        let (t0, c0) = (Instant::now(), cpu_seconds());
        let out = embedder.embed(&texts)?;
        let secs = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - c0;
        assert_eq!(out.len(), texts.len());
        let tm = embedder.last_timings();
        println!(
            "run {r}: {:.1} texts/s ({secs:.2}s: tokenize {:.3}s, encode+pool {:.3}s, finish {:.3}s; \
             {cpu:.2} CPU-s)",
            texts.len() as f64 / secs,
            tm.tokenize.as_secs_f64(),
            tm.encode.as_secs_f64(),
            tm.finish.as_secs_f64(),
        );
        best = best.min(secs);
        if let Some(b) = &reference {
            let (t0, c0) = (Instant::now(), cpu_seconds());
            let out = b.embed(&texts)?;
            let base = t0.elapsed().as_secs_f64();
            let cpu = cpu_seconds() - c0;
            assert_eq!(out.len(), texts.len());
            println!(
                "  baseline: {:.1} texts/s ({base:.2}s, {cpu:.2} CPU-s); ours/baseline speed {:.2}x",
                texts.len() as f64 / base,
                base / secs
            );
            ratios.push(base / secs);
        }
    }
    println!("best: {:.1} texts/s", texts.len() as f64 / best);
    if !ratios.is_empty() {
        ratios.sort_by(f64::total_cmp);
        println!("median speed-up over the baseline: {:.2}x", ratios[ratios.len() / 2]);
    }
    Ok(())
}

/// The straightforward candle version: candle-transformers' BertModel on padded batches.
struct Baseline {
    model: BertModel,
    tokenizer: Tokenizer,
    batch_size: usize,
}

impl Baseline {
    fn load(dir: &Path, batch_size: usize) -> Res<Self> {
        let device = Device::Cpu;
        let config: Config = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
        let vb = VarBuilder::from_buffered_safetensors(
            std::fs::read(dir.join("model.safetensors"))?,
            DType::F32,
            &device,
        )?;
        let model = BertModel::load(vb, &config)?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))?;
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: MAX_SEQ_LEN, ..Default::default() }))?;
        tokenizer.with_padding(Some(PaddingParams::default())); // BatchLongest
        Ok(Self { model, tokenizer, batch_size })
    }

    fn embed(&self, texts: &[&str]) -> Res<Vec<Vec<f32>>> {
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(texts[i].len()));
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(self.batch_size) {
            let batch: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
            let enc = self.tokenizer.encode_batch(batch, true)?;
            let (n, l) = (enc.len(), enc[0].get_ids().len());
            let ids: Vec<u32> = enc.iter().flat_map(|e| e.get_ids().to_vec()).collect();
            let mask: Vec<u32> = enc.iter().flat_map(|e| e.get_attention_mask().to_vec()).collect();
            let ids = Tensor::from_vec(ids, (n, l), &Device::Cpu)?;
            let mask = Tensor::from_vec(mask, (n, l), &Device::Cpu)?;
            let hidden = self.model.forward(&ids, &ids.zeros_like()?, Some(&mask))?;
            let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let mean = hidden.broadcast_mul(&m)?.sum(1)?.broadcast_div(&m.sum(1)?)?;
            let norm = mean.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
            let rows = mean.broadcast_div(&norm)?.to_vec2::<f32>()?;
            for (&i, row) in chunk.iter().zip(rows) {
                out[i] = row;
            }
        }
        Ok(out)
    }
}

/// User + system CPU time of this process (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses): utime is the 14th field.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
