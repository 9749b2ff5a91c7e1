//! Starts a server in-process on a throwaway SQLite log (a freshly initialised policy for
//! configs/prompts.toml, or `--checkpoint FILE`) and loads it with `mappo_client::loadgen`:
//! every text of a JSON-lines corpus sent once, one per request, at each concurrency.
//!
//! ```sh
//! cargo run --release -p mappo-serve --example loadgen -- [--corpus data/prompts.jsonl] \
//!     [--repeat 4] [--concurrency 32,4] [--checkpoint FILE] [--set serve.batch_wait_ms=2]
//! ```
//! Or against a running server: `--url http://127.0.0.1:8080 [--key KEY]`. `--json` prints one
//! JSON object per concurrency. (`cargo xtask bench-serve` calls `mappo_client::run_levels`
//! itself.) `--embed-only` times the model alone.

use std::path::PathBuf;

use mappo_client::{LoadOptions, run_levels};
use mappo_config::Config;
use mappo_serve::{ServeOptions, Server};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let corpus = arg(&args, "--corpus").map_or_else(|| root.join("data/prompts.jsonl"), PathBuf::from);
    let repeat: usize = arg(&args, "--repeat").map_or(Ok(4), |s| s.parse())?;
    let conc: Vec<usize> = arg(&args, "--concurrency")
        .unwrap_or_else(|| "32,4".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let mut texts = Vec::new();
    for line in std::fs::read_to_string(&corpus)?.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        texts.push(v["text"].as_str().unwrap_or_default().to_string());
    }
    let texts: Vec<String> = texts.iter().cycle().take(texts.len() * repeat).cloned().collect();

    if args.iter().any(|a| a == "--embed-only") {
        // Where the time goes: the model alone, one text and batches of 32.
        use mappo_serve::ModelLoader;
        let cfg = Config::load(
            Some(&root.join("configs/prompts.toml")),
            &[format!("env.corpus={:?}", root.join("data/prompts.jsonl").display().to_string())],
        )?;
        let loader = mappo_serve::CandleLoader::new(None);
        let bytes = loader.fresh_checkpoint(&cfg)?;
        let mut emb = loader.embedder(&bytes)?;
        let pol = loader.policy(&bytes, emb.dim())?;
        for bs in [1usize, 8, 32] {
            let t0 = std::time::Instant::now();
            let mut n = 0;
            for chunk in texts.chunks(bs).take(64) {
                let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
                let e = emb.embed(&refs)?;
                pol.probabilities(&e, refs.len())?;
                n += refs.len();
            }
            let s = t0.elapsed().as_secs_f64();
            println!(
                "model only, batches of {bs:>2}: {:.1} texts/s, {:.2} ms per batch",
                n as f64 / s,
                s * 1000.0 * bs as f64 / n as f64
            );
        }
        return Ok(());
    }
    let mut running = None;
    let url = match arg(&args, "--url") {
        Some(u) => u,
        None => {
            let sets: Vec<String> = args
                .windows(2)
                .filter(|w| w[0] == "--set")
                .map(|w| w[1].clone())
                .chain([
                    format!("env.corpus={:?}", root.join("data/prompts.jsonl").display().to_string()),
                    "serve.addr=\"127.0.0.1:0\"".into(),
                ])
                .collect();
            let cfg = Config::load(Some(&root.join("configs/prompts.toml")), &sets)?;
            let dir = tempfile::tempdir()?;
            let mut opts =
                ServeOptions::new(format!("sqlite:{}", dir.path().join("bench.db").display()), cfg);
            opts.publish_fresh = true;
            opts.checkpoint = arg(&args, "--checkpoint").map(PathBuf::from);
            let server = Server::start(opts).await?;
            let url = format!("http://{}", server.local_addr());
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(server.run_until(async move {
                let _ = rx.await;
            }));
            running = Some((tx, task, dir));
            url
        }
    };
    let mut opts = LoadOptions::new(url, 4);
    opts.api_key = arg(&args, "--key");
    for r in run_levels(&texts, &opts, &conc).await? {
        if args.iter().any(|a| a == "--json") {
            println!("{}", serde_json::to_string(&r)?);
            continue;
        }
        println!(
            "concurrency {:>3}: {} texts in {:.2} s = {:.1} texts/s, p50 {:.1} ms, p99 {:.1} ms, failed {} {:?}",
            r.concurrency, r.requests, r.seconds, r.texts_per_s, r.p50_ms, r.p99_ms, r.failed, r.statuses
        );
    }
    if let Some((tx, task, _dir)) = running {
        let _ = tx.send(());
        task.await??;
    }
    Ok(())
}
