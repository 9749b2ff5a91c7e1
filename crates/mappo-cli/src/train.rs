//! `mappo train`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::Device;
use mappo_config::Config;
use mappo_train::{
    CascadeSetup, Checkpoint, ConversationSetup, Evaluate, PipelineSetup, RunOptions, RunSummary,
    SyntheticSetup, TextSetup, Trainer,
};

use crate::args::TrainArgs;
use crate::outln;
use crate::progress::{EmbedProgress, Mode, TrainProgress};
use crate::signals::StopRequest;

/// What `train` ends with: `Some(code)` when a signal stopped the run.
pub fn train(a: TrainArgs, mode: Mode) -> Result<Option<i32>> {
    let (cfg, out, resume_from) = match &a.resume {
        Some(r) => {
            if a.config.is_some() || !a.set.is_empty() {
                bail!(
                    "--resume continues a run with the config stored in its checkpoint; drop --config/--set"
                );
            }
            // Loaded once, on the CPU: moved to the run's device by `restore`.
            let ckpt = Checkpoint::open(r, &Device::Cpu)?;
            let run_dir = if r.is_dir() {
                r.clone()
            } else {
                r.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
            };
            (ckpt.config.clone(), a.out.clone().unwrap_or(run_dir), Some(ckpt))
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
    crate::limit_threads(cfg.train.threads);
    let device_spec = match &a.device {
        Some(d) => d.parse().context("--device")?,
        None => cfg.train.device,
    };
    let (device, why) = mappo_train::select_device(device_spec)?;
    tracing::info!("device {why}");
    let ctx = RunCtx { out: &out, resume_from: resume_from.as_ref(), mode, force: a.force };
    let (summary, target) = if cfg.env.kind == mappo_config::EnvKind::Text {
        let mut embed_bar = EmbedProgress::new(mode);
        let mut setup = TextSetup::on(&cfg, &device, &mut |w, d, t| embed_bar.update(w, d, t))?;
        embed_bar.finish();
        tracing::info!(prompts = setup.corpus_rows, agents = cfg.env.agents.len(), "text environment ready");
        train_loop(&ctx, &mut setup.trainer, Some(&setup.evaluator))?
    } else if cfg.env.kind == mappo_config::EnvKind::Cascade {
        let mut embed_bar = EmbedProgress::new(mode);
        let mut setup = CascadeSetup::on(&cfg, &device, &mut |w, d, t| embed_bar.update(w, d, t))?;
        embed_bar.finish();
        tracing::info!(
            prompts = setup.corpus_rows,
            agents = cfg.env.agents.len(),
            "cascade environment ready (evaluate with `mappo eval --corpus`)"
        );
        train_loop(&ctx, &mut setup.trainer, None)?
    } else if cfg.env.kind == mappo_config::EnvKind::Conversation {
        let mut embed_bar = EmbedProgress::new(mode);
        let mut setup = ConversationSetup::on(&cfg, &device, &mut |w, d, t| embed_bar.update(w, d, t))?;
        embed_bar.finish();
        tracing::info!(
            prompts = setup.corpus_rows,
            agents = cfg.env.agents.len(),
            "conversation environment ready"
        );
        train_loop(&ctx, &mut setup.trainer, Some(&setup.evaluator))?
    } else if cfg.env.kind == mappo_config::EnvKind::Pipeline {
        let mut setup = PipelineSetup::on(&cfg, &device)?;
        train_loop(&ctx, &mut setup.trainer, Some(&setup.evaluator))?
    } else {
        let mut setup = SyntheticSetup::on(&cfg, &device)?;
        train_loop(&ctx, &mut setup.trainer, Some(&setup.evaluator))?
    };
    if let Some(code) = summary.stopped_by {
        report(&summary, target);
        write_summary(&out, &summary.summary)?;
        outln!("{}", summary.summary.final_checkpoint.display());
        return Ok(Some(code));
    }
    if summary.summary.updates_this_run == 0 {
        // Resumed a finished run: nothing trained, and its summary.json stays as it was.
        tracing::info!(
            "the run is already complete at update {}: nothing to do (summary.json kept)",
            summary.summary.updates
        );
        outln!("{}", summary.summary.final_checkpoint.display());
        return Ok(None);
    }
    report(&summary, target);
    write_summary(&out, &summary.summary)?;
    outln!("{}", summary.summary.final_checkpoint.display());
    Ok(None)
}

fn report(s: &Outcome, target: f64) {
    let summary = &s.summary;
    let reached = match summary.reached_target {
        Some((u, secs)) if secs.is_finite() => {
            format!("greedy oracle agreement reached {target} at update {u} after {secs:.2} s of training")
        }
        Some((u, _)) => format!("greedy oracle agreement reached {target} at update {u}"),
        None => format!("greedy oracle agreement did not reach {target}"),
    };
    tracing::info!(
        updates = summary.updates,
        ms_per_update = format!("{:.3}", summary.ms_per_update),
        train_seconds = format!("{:.2}", summary.train_seconds),
        "{}; {reached}",
        if summary.interrupted { "stopped" } else { "done" }
    );
    if let Some(r) = &summary.last_eval {
        tracing::info!(
            oracle_agreement = format!("{:.4}", r.oracle_agreement),
            normalized_reward = format!("{:.4}", r.normalized_reward),
            "final periodic evaluation"
        );
    }
}

fn write_summary(out: &Path, summary: &RunSummary) -> Result<()> {
    let mut summary_json = serde_json::to_value(summary)?;
    if let Some(mib) = peak_rss_mib() {
        summary_json["peak_rss_mib"] = serde_json::json!(mib);
        tracing::info!("peak memory (RSS) {mib:.1} MiB");
    }
    let path = out.join("summary.json");
    mappo_config::write_atomic(&path, serde_json::to_string_pretty(&summary_json)?.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
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

struct RunCtx<'a> {
    out: &'a Path,
    resume_from: Option<&'a Checkpoint>,
    mode: Mode,
    force: bool,
}

struct Outcome {
    summary: RunSummary,
    /// The exit status when a signal stopped the run.
    stopped_by: Option<i32>,
}

fn train_loop<E: mappo_env::Env, P: mappo_nn::Policy>(
    ctx: &RunCtx<'_>,
    trainer: &mut Trainer<E, P>,
    evaluator: Option<&dyn Evaluate>,
) -> Result<(Outcome, f64)> {
    if let Some(ckpt) = ctx.resume_from {
        trainer.restore(ckpt)?;
        let from = ckpt.path.as_deref().map(|p| p.display().to_string()).unwrap_or_default();
        tracing::info!(update = ckpt.update, "resumed from {from}");
    }
    let stop = StopRequest::install();
    let total = trainer.config().train.total_updates;
    let mut progress = TrainProgress::new(ctx.mode, total, trainer.update_count());
    let mut opts = RunOptions::new(ctx.out);
    opts.evaluator = evaluator;
    let opts = opts.observer(&mut progress).stop_flag(stop.flag.clone()).force(ctx.force);
    let target = opts.agreement_target;
    let summary = trainer.run(opts);
    progress.finish();
    let summary = summary?;
    let stopped_by = summary.interrupted.then(|| stop.exit_code());
    if summary.interrupted {
        tracing::warn!(
            "stopped: checkpoint written at update {}; continue with `mappo train --resume {}`",
            summary.updates,
            ctx.out.display()
        );
    }
    Ok((Outcome { summary, stopped_by }, target))
}

/// The process's peak resident memory in MiB (Linux: VmHWM), if known.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
