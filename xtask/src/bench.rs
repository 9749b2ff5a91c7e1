//! `cargo xtask bench`: training speed of the release `mappo` binary, in
//! milliseconds per update (collection included, periodic evaluation and
//! start-up excluded), optionally interleaved with the seed's Python program
//! on the same machine, reporting medians and their ratio.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

#[derive(clap::Args)]
pub struct Args {
    /// Updates per mappo run.
    #[arg(long, default_value_t = 2000)]
    updates: u64,
    /// Number of runs of each program (interleaved); medians are reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Python interpreter with torch installed: also run ../shared/baselines/seed_mappo.py
    /// (SEED_FIX=1, on the CPU) and report the speed ratio.
    #[arg(long)]
    seed_python: Option<PathBuf>,
    /// Updates per seed run (it is ~30x slower).
    #[arg(long, default_value_t = 200)]
    seed_updates: u64,
    /// Extra `--set KEY=VALUE` for mappo (repeatable).
    #[arg(long = "set")]
    set: Vec<String>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn run_mappo(bin: &Path, a: &Args, out: &Path) -> Result<(f64, Option<f64>)> {
    let mut cmd = Command::new(bin);
    cmd.args(["train", "--quiet", "--log", "warn", "--out"]).arg(out);
    cmd.args(["--set", &format!("train.total_updates={}", a.updates), "--set", "train.eval_interval=0"]);
    for s in &a.set {
        cmd.args(["--set", s]);
    }
    let o = cmd.output().context("running mappo")?;
    if !o.status.success() {
        bail!("mappo train failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json"))?)?;
    let ms = summary["ms_per_update"].as_f64().context("summary.json has no ms_per_update")?;
    Ok((ms, summary["peak_rss_mib"].as_f64()))
}

fn run_seed(py: &Path, a: &Args, ckpt: &Path) -> Result<f64> {
    let script = crate::workspace_root().join("../shared/baselines/seed_mappo.py");
    if !script.exists() {
        bail!("{} not found", script.display());
    }
    let o = Command::new(py)
        .arg(&script)
        .env("SEED_FIX", "1")
        .env("SEED_CPU", "1")
        .env("SEED_UPDATES", a.seed_updates.to_string())
        .env("SEED_CKPT", ckpt)
        .output()
        .with_context(|| format!("running {}", py.display()))?;
    let text = String::from_utf8_lossy(&o.stdout);
    let line =
        text.lines().rev().find_map(|l| l.strip_prefix("RESULT ")).with_context(|| {
            format!("no RESULT line from the seed: {}", String::from_utf8_lossy(&o.stderr))
        })?;
    let v: serde_json::Value = serde_json::from_str(line)?;
    let ups = v["updates_per_s"].as_f64().context("RESULT has no updates_per_s")?;
    Ok(1000.0 / ups)
}

pub fn run(a: Args) -> Result<()> {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet", "-p", "mappo-cli"])
        .current_dir(crate::workspace_root())
        .status()
        .context("cargo build")?;
    if !status.success() {
        bail!("building the release binary failed");
    }
    let bin = crate::workspace_root().join("target/release/mappo");
    let tmp = std::env::temp_dir().join(format!("mappo-bench-{}", std::process::id()));
    let (mut ours, mut seed, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..a.repeats {
        let (ms, peak) = run_mappo(&bin, &a, &tmp.join(format!("run{i}")))?;
        eprintln!("mappo run {}: {ms:.3} ms/update", i + 1);
        ours.push(ms);
        rss.extend(peak);
        if let Some(py) = &a.seed_python {
            let ms = run_seed(py, &a, &tmp.join(format!("seed{i}")))?;
            eprintln!("seed  run {}: {ms:.2} ms/update", i + 1);
            seed.push(ms);
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let m = median(&mut ours.clone());
    let s = if seed.is_empty() { None } else { Some(median(&mut seed.clone())) };
    let ratio = s.map(|s| s / m);
    if a.json {
        let v = serde_json::json!({
            "mappo_ms_per_update_median": m, "mappo_runs": ours, "updates": a.updates,
            "seed_ms_per_update_median": s, "seed_runs": seed, "seed_updates": a.seed_updates,
            "speedup": ratio, "peak_rss_mib": rss.iter().cloned().fold(None, |acc: Option<f64>, x| Some(acc.map_or(x, |a| a.max(x)))),
        });
        println!("{v}");
    } else {
        println!(
            "mappo: median {m:.3} ms/update over {} runs of {} updates {ours:.3?}",
            ours.len(),
            a.updates
        );
        if let Some(r) = rss.iter().cloned().reduce(f64::max) {
            println!("mappo: peak RSS {r:.1} MiB");
        }
        if let (Some(s), Some(r)) = (s, ratio) {
            println!(
                "seed:  median {s:.2} ms/update over {} runs of {} updates {seed:.2?}",
                seed.len(),
                a.seed_updates
            );
            println!("speed-up: {r:.1}x");
        }
    }
    Ok(())
}
