//! Latency of the embedder on the small batches a routing server sees.
//!
//! ```text
//! cargo run --release -p mappo-embed --example embed_latency -- [--sizes 1,2,4,8] [--calls N]
//!     [--data PATH] [--model-dir DIR]
//! ```
//! For each call size k, embeds the CLINC150 validation texts k at a time, once with the
//! defaults (small calls split into one batch per thread, few-row products by the small-matmul
//! kernel) and once without either (`--compare split` or `--compare kernel`: without only that
//! one), interleaved call by call so that both see the same machine, and prints p50 / p99
//! milliseconds per call and their ratios. Needs the model (`cargo xtask fetch-model`) and `data/clinc150/val.jsonl`
//! (`cargo xtask fetch-data clinc150`).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;
use mappo_embed::{Embedder, default_model_dir};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

fn main() -> Res<()> {
    let mut sizes = vec![1usize, 2, 4, 8];
    let mut calls = 600usize;
    let mut data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/clinc150/val.jsonl");
    let mut model_dir = default_model_dir();
    let mut compare = String::from("both");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--sizes" => sizes = value()?.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--calls" => calls = value()?.parse()?,
            "--compare" => compare = value()?,
            "--data" => data = PathBuf::from(value()?),
            "--model-dir" => model_dir = PathBuf::from(value()?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let lines = std::fs::read_to_string(&data)
        .map_err(|e| format!("{}: {e} (run `cargo xtask fetch-data clinc150`)", data.display()))?;
    let mut texts = Vec::new();
    for line in lines.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        texts.push(v["text"].as_str().ok_or("a line without a string `text`")?.to_string());
    }
    let split = Embedder::load(&model_dir, &Device::Cpu)?;
    let whole = Embedder::load(&model_dir, &Device::Cpu)?;
    let whole = match compare.as_str() {
        "both" => whole.with_split_small(false).with_small_kernel(false),
        "split" => whole.with_split_small(false),
        "kernel" => whole.with_small_kernel(false),
        other => return Err(format!("--compare: both, split or kernel, not {other}").into()),
    };
    println!(
        "{} texts, {} threads; without = default minus {compare}",
        texts.len(),
        candle_core::utils::get_num_threads()
    );
    println!(
        "{:>5} {:>22} {:>22} {:>10} {:>10}",
        "texts", "default p50 / p99 ms", "without p50 / p99 ms", "p50 ratio", "p99 ratio"
    );
    for &k in &sizes {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for (c, chunk) in texts.chunks(k.max(1)).cycle().take(calls).enumerate() {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            // Alternate which goes first, so neither always runs on a warmer cache.
            let order: [(&Embedder, &mut Vec<f64>); 2] = if c % 2 == 0 {
                [(&split, &mut a), (&whole, &mut b)]
            } else {
                [(&whole, &mut b), (&split, &mut a)]
            };
            for (e, out) in order {
                let t = Instant::now();
                e.embed(&refs)?;
                out.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        if std::env::var_os("EMBED_LATENCY_STAGES").is_some() {
            let t = split.last_timings();
            eprintln!("last call, split: {t:?}");
        }
        let (a50, a99) = (pct(&mut a, 0.5), pct(&mut a, 0.99));
        let (b50, b99) = (pct(&mut b, 0.5), pct(&mut b, 0.99));
        println!(
            "{k:>5} {:>22} {:>22} {:>10.2} {:>10.2}",
            format!("{a50:.2} / {a99:.2}"),
            format!("{b50:.2} / {b99:.2}"),
            a50 / b50,
            a99 / b99
        );
    }
    Ok(())
}
