//! `mappo`: train a PPO prompt router, evaluate it, route prompts.

use std::io::{BufRead, ErrorKind, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use candle_core::Device;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use mappo_config::Config;
use mappo_train::{
    EvalReport, Observer, RunOptions, SyntheticSetup, TextSetup, UpdateMetrics,
    evaluate_checkpoint_synthetic, latest_valid_checkpoint, select_device,
};

#[derive(Parser)]
#[command(
    name = "mappo",
    version,
    about = "Learn with PPO which of N specialist agents should answer a prompt, then route prompts",
    long_about = "mappo trains a small actor-critic over prompt embeddings with PPO (a learned prompt \
router), evaluates it and routes prompts from a checkpoint.\n\nQuick start:\n  mappo train            \
# synthetic environment, default config\n  mappo eval --checkpoint <path printed by train> --json"
)]
struct Cli {
    /// Log filter (e.g. info, debug, mappo_train=debug). Also read from RUST_LOG.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a router with PPO. The last line of stdout is the final checkpoint's path.
    Train(TrainArgs),
    /// Evaluate a checkpoint greedily (argmax) on fresh prompts.
    Eval(EvalArgs),
    /// Route texts with a text-env checkpoint: the chosen agent and every agent's probability.
    Route(RouteArgs),
    /// Embed texts with all-MiniLM-L6-v2 (JSON lines in, JSON lines out).
    Embed(EmbedArgs),
    /// Print every config key with its default value (TOML).
    Config,
}

#[derive(clap::Args)]
struct TrainArgs {
    /// TOML config file (keys not in it keep their defaults; see `mappo config`).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Override one key, e.g. --set train.total_updates=500 --set ppo.lr_actor=1e-3 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Run directory (default: runs/<config name>-seed<seed>-<unix time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue a run: a run directory (its latest valid checkpoint) or a checkpoint file.
    /// The config comes from the checkpoint.
    #[arg(long, value_name = "RUN_DIR|CHECKPOINT")]
    resume: Option<PathBuf>,
    /// Device: auto, cpu, cuda or cuda:N (overrides train.device).
    #[arg(long)]
    device: Option<String>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
struct EvalArgs {
    /// Checkpoint file written by `mappo train`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Number of fresh prompts.
    #[arg(long, default_value_t = 10_000)]
    episodes: usize,
    /// Seed of the fresh prompts (the agents come from the checkpoint's run).
    #[arg(long, default_value_t = 2024)]
    seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Device: auto (CUDA when built with `cuda` and a GPU answers, else the CPU), cpu,
    /// cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Labelled corpus (JSON lines) for a text-env checkpoint: reports accuracy,
    /// per-agent precision and recall and the confusion matrix.
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
struct RouteArgs {
    /// Checkpoint of a text-env run.
    #[arg(long)]
    checkpoint: PathBuf,
    /// One JSON object per text (index, name, probabilities) instead of a table.
    #[arg(long)]
    json: bool,
    /// Device: auto (CUDA when built with `cuda` and a GPU answers, else the CPU), cpu,
    /// cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Texts to route; read one per line from stdin when none are given.
    texts: Vec<String>,
}

#[derive(clap::Args)]
struct EmbedArgs {
    /// JSON lines with a "text" field (default: stdin).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Where to write {"text": ..., "embedding": [384 floats]} lines (default: stdout).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Directory of all-MiniLM-L6-v2 (default: $MAPPO_MODEL_DIR or the user cache).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Device: auto (CUDA when built with `cuda` and a GPU answers, else the CPU), cpu,
    /// cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// `println!` that returns the write error (a closed pipe) instead of panicking.
macro_rules! outln {
    ($($t:tt)*) => { writeln!(std::io::stdout(), $($t)*)? };
}

fn main() {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| cli.log.clone());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let result = match cli.cmd {
        Cmd::Train(a) => train(a),
        Cmd::Eval(a) => eval(a),
        Cmd::Route(a) => route(a),
        Cmd::Embed(a) => embed(a),
        Cmd::Config => {
            write!(std::io::stdout(), "{}", Config::default().to_toml_string()).map_err(Into::into)
        }
    };
    if let Err(e) = result {
        // Output piped into `head` and the like: stop quietly, as Unix tools do.
        if e.chain()
            .any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == ErrorKind::BrokenPipe))
        {
            std::process::exit(0);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

struct Progress {
    bar: ProgressBar,
    last_agreement: Option<f64>,
}

impl Observer for Progress {
    fn on_update(&mut self, m: &UpdateMetrics, _secs: f64) {
        self.bar.set_position(m.update);
        if m.update.is_multiple_of(10) {
            let agree = self.last_agreement.map(|a| format!(" agree {a:.3}")).unwrap_or_default();
            self.bar.set_message(format!("reward {:.3}{agree}", m.mean_reward));
        }
    }
    fn on_eval(&mut self, _u: u64, r: &EvalReport) {
        self.last_agreement = Some(r.oracle_agreement);
    }
}

fn default_out(config: Option<&Path>, seed: u64) -> PathBuf {
    let name = config
        .and_then(|c| c.file_stem())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or("default".into());
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut p = PathBuf::from(format!("runs/{name}-seed{seed}-{secs}"));
    let mut i = 1;
    while p.exists() {
        p = PathBuf::from(format!("runs/{name}-seed{seed}-{secs}-{i}"));
        i += 1;
    }
    p
}

fn train(a: TrainArgs) -> Result<()> {
    let (cfg, out, resume_from) = match &a.resume {
        Some(r) => {
            if a.config.is_some() || !a.set.is_empty() {
                bail!(
                    "--resume continues a run with the config stored in its checkpoint; drop --config/--set"
                );
            }
            let (path, ckpt) = if r.is_dir() {
                latest_valid_checkpoint(r, &Device::Cpu)?
            } else {
                (r.clone(), mappo_train::Checkpoint::load(r, &Device::Cpu)?)
            };
            let run_dir = if r.is_dir() {
                r.clone()
            } else {
                path.parent()
                    .and_then(Path::parent)
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from("."))
            };
            (ckpt.config.clone(), a.out.clone().unwrap_or(run_dir), Some(path))
        }
        None => {
            let mut sets = a.set.clone();
            if let Some(d) = &a.device {
                sets.push(format!("train.device=\"{d}\""));
            }
            let cfg = Config::load(a.config.as_deref(), &sets)?;
            let out = a.out.clone().unwrap_or_else(|| default_out(a.config.as_deref(), cfg.train.seed));
            (cfg, out, None)
        }
    };
    limit_threads(cfg.train.threads);
    let device_spec = match &a.device {
        Some(d) => d.parse().context("--device")?,
        None => cfg.train.device,
    };
    let (device, why) = select_device(device_spec)?;
    tracing::info!("device {why}");
    let quiet = a.quiet || !std::io::stderr().is_terminal();
    let ctx = RunCtx { cfg: &cfg, out: &out, resume_from: resume_from.as_deref(), device: &device, quiet };
    let summary = if cfg.env.kind == mappo_config::EnvKind::Text {
        let mut embed_bar = EmbedBar::new(quiet);
        let mut setup = TextSetup::on(&cfg, &device, &mut |w, d, t| embed_bar.update(w, d, t))?;
        embed_bar.finish();
        tracing::info!(prompts = setup.corpus_rows, agents = cfg.env.agents.len(), "text environment ready");
        train_loop(&ctx, &mut setup.trainer, &setup.evaluator)?
    } else {
        let mut setup = SyntheticSetup::on(&cfg, &device)?;
        train_loop(&ctx, &mut setup.trainer, &setup.evaluator)?
    };
    let reached = match summary.reached_target {
        Some((u, s)) => {
            format!("greedy oracle agreement reached 0.95 at update {u} after {s:.2} s of training")
        }
        None => "greedy oracle agreement did not reach 0.95".into(),
    };
    tracing::info!(
        updates = summary.updates,
        ms_per_update = format!("{:.3}", summary.ms_per_update),
        train_seconds = format!("{:.2}", summary.train_seconds),
        "done; {reached}"
    );
    if let Some(r) = &summary.last_eval {
        tracing::info!(
            oracle_agreement = format!("{:.4}", r.oracle_agreement),
            normalized_reward = format!("{:.4}", r.normalized_reward),
            "final periodic evaluation"
        );
    }
    let mut summary_json = serde_json::to_value(&summary)?;
    if let Some(mib) = peak_rss_mib() {
        summary_json["peak_rss_mib"] = serde_json::json!(mib);
        tracing::info!("peak memory (RSS) {mib:.1} MiB");
    }
    let summary_path = out.join("summary.json");
    std::fs::write(&summary_path, serde_json::to_string_pretty(&summary_json)?)
        .with_context(|| format!("cannot write {}", summary_path.display()))?;
    outln!("{}", summary.final_checkpoint.display());
    Ok(())
}

struct RunCtx<'a> {
    cfg: &'a Config,
    out: &'a Path,
    resume_from: Option<&'a Path>,
    device: &'a Device,
    quiet: bool,
}

fn train_loop<E: mappo_env::Env, P: mappo_nn::Policy>(
    ctx: &RunCtx<'_>,
    trainer: &mut mappo_train::Trainer<E, P>,
    evaluator: &mappo_train::GreedyEvaluator,
) -> Result<mappo_train::RunSummary> {
    if let Some(p) = ctx.resume_from {
        let ckpt = mappo_train::Checkpoint::load(p, ctx.device)?;
        trainer.restore(&ckpt, p)?;
        tracing::info!(update = ckpt.update, "resumed from {}", p.display());
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        if let Err(e) = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                // A second Ctrl-C: leave now.
                std::process::exit(130);
            }
        }) {
            tracing::warn!("cannot install the Ctrl-C handler: {e}");
        }
    }
    let mut opts = RunOptions::new(ctx.out);
    opts.stop = Some(stop);
    let bar = if ctx.quiet {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(ctx.cfg.train.total_updates);
        b.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40.cyan/blue}] {pos}/{len} updates ({per_sec}, eta {eta}) {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    };
    bar.set_position(trainer.update_count());
    let mut progress = Progress { bar, last_agreement: None };
    let summary = mappo_train::run(trainer, Some(evaluator), &opts, &mut progress)?;
    progress.bar.finish_and_clear();
    if summary.interrupted {
        tracing::warn!("interrupted: checkpoint written at update {}", summary.updates);
    }
    Ok(summary)
}

/// A progress bar for embedding work (stderr).
struct EmbedBar {
    bar: Option<ProgressBar>,
    quiet: bool,
}

impl EmbedBar {
    fn new(quiet: bool) -> Self {
        Self { bar: None, quiet }
    }

    fn update(&mut self, what: &str, done: usize, total: usize) {
        if self.quiet {
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let b = ProgressBar::new(total as u64);
            b.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:40.green/blue}] {pos}/{len} texts ({per_sec}, eta {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b
        });
        bar.set_length(total as u64);
        bar.set_message(what.to_string());
        bar.set_position(done as u64);
        if done >= total {
            bar.finish_and_clear();
            self.bar = None;
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// The process's peak resident memory in MiB (Linux: VmHWM), if known.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Applies `train.threads` by setting `RAYON_NUM_THREADS`, which candle reads
/// on every matrix product, unless the user set it already.
fn limit_threads(threads: usize) {
    if threads == 0 || std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    // SAFETY: called from `main`'s thread before this process starts any
    // other thread (no progress-bar ticker, signal handler or thread pool
    // exists yet), so nothing can read the environment concurrently.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
}

fn eval(a: EvalArgs) -> Result<()> {
    let (device, _) = select_device(a.device.parse().context("--device")?)?;
    if a.episodes == 0 {
        bail!("--episodes must be at least 1");
    }
    if let Some(corpus) = &a.corpus {
        let mut bar = EmbedBar::new(a.quiet || !std::io::stderr().is_terminal());
        let r =
            mappo_train::evaluate_corpus(&a.checkpoint, corpus, &device, &mut |w, d, t| bar.update(w, d, t))?;
        bar.finish();
        if a.json {
            outln!("{}", serde_json::to_string(&r)?);
        } else {
            outln!("prompts    {}", r.n);
            outln!("accuracy   {:.4}", r.accuracy);
            outln!("mean reward {:.4}", r.mean_reward);
            outln!("{:<20} {:>9} {:>9} {:>8}", "agent", "precision", "recall", "support");
            let f = |x: Option<f64>| x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into());
            for s in &r.per_agent {
                outln!("{:<20} {:>9} {:>9} {:>8}", s.agent, f(s.precision), f(s.recall), s.support);
            }
            outln!("confusion (rows: label, columns: routed to): {:?}", r.confusion);
        }
        return Ok(());
    }
    let r = evaluate_checkpoint_synthetic(&a.checkpoint, a.episodes, a.seed, &device)?;
    if a.json {
        outln!("{}", serde_json::to_string(&r)?);
    } else {
        outln!("prompts            {}", r.n);
        outln!("mean reward        {:.4}", r.mean_reward);
        outln!("oracle reward      {:.4}", r.oracle_reward);
        outln!("random reward      {:.4}", r.random_reward);
        outln!("normalized reward  {:.4}", r.normalized_reward);
        outln!("oracle agreement   {:.4}", r.oracle_agreement);
    }
    Ok(())
}

fn route(a: RouteArgs) -> Result<()> {
    let (device, _) = select_device(a.device.parse().context("--device")?)?;
    let texts: Vec<String> = if a.texts.is_empty() {
        let mut v = Vec::new();
        for line in std::io::stdin().lock().lines() {
            v.push(line.context("reading stdin")?);
        }
        v
    } else {
        a.texts.clone()
    };
    let router = mappo_train::Router::load(&a.checkpoint, &device)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    for r in router.route(&refs)? {
        if a.json {
            outln!("{}", serde_json::to_string(&r)?);
        } else {
            let probs: Vec<String> =
                router.agents().iter().zip(&r.probabilities).map(|(n, p)| format!("{n}={p:.3}")).collect();
            outln!("{}\t{}\t{}\t{}", r.agent_index, r.agent, probs.join(" "), r.text);
        }
    }
    Ok(())
}

fn embed(a: EmbedArgs) -> Result<()> {
    let (device, _) = select_device(a.device.parse().context("--device")?)?;
    let dir = a.model_dir.clone().unwrap_or_else(mappo_env::embed::default_model_dir);
    let embedder = mappo_env::embed::Embedder::load(&dir, &device)?;
    let reader: Box<dyn BufRead> = match &a.input {
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p).with_context(|| format!("cannot open {}", p.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let origin = a.input.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "stdin".into());
    let mut texts = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("{origin}, line {}: cannot read", n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{origin}, line {}: not valid JSON", n + 1))?;
        match v.get("text") {
            Some(serde_json::Value::String(t)) => texts.push(t.clone()),
            _ => bail!("{origin}, line {}: expected an object with a string \"text\"", n + 1),
        }
    }
    let mut bar = EmbedBar::new(a.quiet || !std::io::stderr().is_terminal());
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let rows = embedder.embed_with_progress(&refs, |d, t| bar.update("embedding", d, t))?;
    bar.finish();
    let mut out: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    for (t, e) in texts.iter().zip(rows) {
        writeln!(out, "{}", serde_json::json!({"text": t, "embedding": e}))?;
    }
    out.flush()?;
    Ok(())
}
