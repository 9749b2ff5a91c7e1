//! Throughput of the embedder on the 3,000 CLINC150 validation texts.
//!
//! ```text
//! cargo run --release -p mappo-embed --example embed_bench -- [--batch-size N] [--repeat R]
//!     [--baseline] [--generic] [--concat K] [--data PATH] [--model-dir DIR] [--device cpu|cuda[:N]]
//! ```
//! Prints texts/s per run with the time spent tokenizing, in the encoder (with pooling) and
//! restoring the order, and the CPU time used. `--baseline` interleaves each run with the
//! straightforward candle version (`Backend::Candle`: candle-transformers' `BertModel` on
//! padded batches) and prints the speed ratio of each pair, a figure that survives a busy
//! machine better than texts/s. `--generic` measures that backend instead of the default one
//! (the fused CPU kernels on the CPU). `--concat K` joins every K consecutive texts into one,
//! to measure long inputs (K = 20 gives ≈ 200 tokens per text).
//! Needs the model (`cargo xtask fetch-model`) and a JSON-lines file of `{"text": ...}` objects
//! (default `data/clinc150/val.jsonl`, from `cargo xtask fetch-data clinc150`).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;
use mappo_embed::{Backend, DEFAULT_BATCH_SIZE, Embedder, default_model_dir};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> Res<()> {
    let mut batch_size = DEFAULT_BATCH_SIZE;
    let mut repeat = 3usize;
    let mut baseline = false;
    let mut generic = false;
    let mut concat = 1usize;
    let mut data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/clinc150/val.jsonl");
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

    let lines = std::fs::read_to_string(&data)
        .map_err(|e| format!("{}: {e} (run `cargo xtask fetch-data clinc150`)", data.display()))?;
    let mut owned = Vec::new();
    for line in lines.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        owned.push(v["text"].as_str().ok_or("a line without a string `text`")?.to_string());
    }
    let texts: Vec<&str> = owned.iter().map(String::as_str).collect();
    // `--concat K`: K consecutive texts joined into one, to measure long inputs.
    let joined: Vec<String> = texts.chunks(concat).map(|c| c.join(". ")).collect();
    let texts: Vec<&str> = joined.iter().map(String::as_str).collect();

    let t0 = Instant::now();
    let backend = if generic { Backend::Candle } else { Backend::Auto };
    let embedder = Embedder::load_with_backend(&model_dir, &device, backend)?.with_batch_size(batch_size)?;
    println!(
        "loaded in {:.2}s; {} texts, batch size {batch_size}, {} threads, {:?} backend on {device:?}",
        t0.elapsed().as_secs_f64(),
        texts.len(),
        candle_core::utils::get_num_threads(),
        embedder.backend()
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
    let reference = if baseline {
        Some(Embedder::load_with_backend(&model_dir, &device, Backend::Candle)?.with_batch_size(batch_size)?)
    } else {
        None
    };

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
