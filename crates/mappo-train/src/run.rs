//! The training loop around a [`Trainer`]: run directory, metrics log,
//! periodic evaluation, checkpoints, stop requests.
//!
//! Run directory layout:
//! * `config.toml` — the resolved config;
//! * `metrics.jsonl` — one JSON object per line: `{"kind":"update", ...}`
//!   every `log_interval` updates, `{"kind":"eval", ...}` every `eval_interval`;
//! * `checkpoints/update-NNNNNNN.safetensors` — every `save_interval` and at the end.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::Device;
use mappo_env::Env;
use mappo_nn::Policy;
use serde::Serialize;

use crate::{Checkpoint, EvalReport, GreedyEvaluator, TrainError, Trainer, UpdateMetrics, checkpoint_name};

/// Where and how to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run directory (created if missing).
    pub out_dir: PathBuf,
    /// When set to true (e.g. by a Ctrl-C handler), the run writes a
    /// checkpoint after the current update and returns.
    pub stop: Option<Arc<AtomicBool>>,
    /// Greedy oracle agreement whose first crossing is recorded. Default 0.95.
    pub agreement_target: f64,
}

impl RunOptions {
    /// Options for `out_dir` with the defaults.
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        Self { out_dir: out_dir.into(), stop: None, agreement_target: 0.95 }
    }
}

/// Callbacks for progress display; every method has an empty default.
pub trait Observer {
    /// After every update, with the seconds spent training so far.
    fn on_update(&mut self, _metrics: &UpdateMetrics, _train_seconds: f64) {}
    /// After every periodic evaluation.
    fn on_eval(&mut self, _update: u64, _report: &EvalReport) {}
    /// After a checkpoint is written.
    fn on_checkpoint(&mut self, _path: &Path) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;
impl Observer for NoObserver {}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// The last checkpoint written.
    pub final_checkpoint: PathBuf,
    /// Updates completed (in total, resumed ones included).
    pub updates: u64,
    /// Updates run by this call.
    pub updates_this_run: u64,
    /// Seconds spent in training (collection + updates), evaluation excluded.
    pub train_seconds: f64,
    /// Milliseconds per update in this call.
    pub ms_per_update: f64,
    /// First update (and training seconds) at which the periodic greedy
    /// oracle agreement reached the target, if it did in this call.
    pub reached_target: Option<(u64, f64)>,
    /// The last periodic evaluation.
    pub last_eval: Option<EvalReport>,
    /// True when a stop request ended the run early.
    pub interrupted: bool,
}

#[derive(Serialize)]
struct UpdateLine<'a> {
    kind: &'static str,
    #[serde(flatten)]
    m: &'a UpdateMetrics,
    train_seconds: f64,
    updates_per_s: f64,
}

#[derive(Serialize)]
struct EvalLine<'a> {
    kind: &'static str,
    update: u64,
    #[serde(flatten)]
    r: &'a EvalReport,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io { path: path.display().to_string(), message: e.to_string() }
}

/// Runs `trainer` to `train.total_updates`, from whatever update it is at.
///
/// On resume (the trainer restored from a checkpoint of `out_dir`), lines of
/// `metrics.jsonl` beyond the checkpoint's update are dropped first, so an
/// interrupted and resumed run leaves the same log as an uninterrupted one
/// (wall-clock fields aside).
pub fn run<E: Env, P: Policy>(
    trainer: &mut Trainer<E, P>,
    evaluator: Option<&GreedyEvaluator>,
    opts: &RunOptions,
    observer: &mut dyn Observer,
) -> Result<RunSummary, TrainError> {
    let cfg = trainer.config().clone();
    if cfg.train.threads > 0 {
        let env = std::env::var("RAYON_NUM_THREADS").ok();
        if env.as_deref() != Some(&cfg.train.threads.to_string()) {
            tracing::warn!(
                "train.threads = {} but RAYON_NUM_THREADS is {:?}: candle's matrix products follow the \
                 variable; set it before starting the process (the `mappo` binary does)",
                cfg.train.threads,
                env
            );
        }
    }
    let dir = &opts.out_dir;
    let ckpt_dir = dir.join("checkpoints");
    std::fs::create_dir_all(&ckpt_dir).map_err(|e| io_err(&ckpt_dir, format!("cannot create: {e}")))?;
    let cfg_path = dir.join("config.toml");
    crate::write_atomic(&cfg_path, cfg.to_toml_string().as_bytes()).map_err(|e| io_err(&cfg_path, e))?;
    let metrics_path = dir.join("metrics.jsonl");
    let start_update = trainer.update_count();
    truncate_metrics(&metrics_path, start_update)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| io_err(&metrics_path, e))?;
    let mut log = std::io::BufWriter::new(file);
    let t = &cfg.train;
    tracing::info!(
        device = ?trainer.device(),
        from_update = start_update,
        total_updates = t.total_updates,
        batch = t.batch_size,
        "training starts in {}",
        dir.display()
    );

    let mut train_seconds = 0f64;
    let mut reached = None;
    let mut last_eval = None;
    let mut final_checkpoint = None;
    let mut interrupted = false;
    let mut window_start = (Instant::now(), 0f64, start_update);
    while trainer.update_count() < t.total_updates {
        let t0 = Instant::now();
        let m = trainer.step()?;
        train_seconds += t0.elapsed().as_secs_f64();
        let u = m.update;
        observer.on_update(&m, train_seconds);
        if u % t.log_interval == 0 || u == t.total_updates {
            let (_, secs0, u0) = window_start;
            let ups = (u - u0) as f64 / (train_seconds - secs0).max(1e-9);
            window_start = (Instant::now(), train_seconds, u);
            tracing::info!(
                update = u,
                mean_reward = format!("{:.4}", m.mean_reward),
                entropy = format!("{:.4}", m.entropy),
                policy_loss = format!("{:.4}", m.policy_loss),
                value_loss = format!("{:.4}", m.value_loss),
                approx_kl = format!("{:.5}", m.approx_kl),
                clipfrac = format!("{:.3}", m.clipfrac),
                explained_variance = format!("{:.3}", m.explained_variance),
                updates_per_s = format!("{ups:.1}"),
                "update"
            );
            let line = UpdateLine { kind: "update", m: &m, train_seconds, updates_per_s: ups };
            write_line(&mut log, &metrics_path, &line)?;
        }
        if let Some(ev) = evaluator
            && t.eval_interval > 0
            && (u % t.eval_interval == 0 || u == t.total_updates)
        {
            let r = ev.evaluate(trainer.policy())?;
            if reached.is_none() && r.oracle_agreement >= opts.agreement_target {
                reached = Some((u, train_seconds));
            }
            observer.on_eval(u, &r);
            write_line(&mut log, &metrics_path, &EvalLine { kind: "eval", update: u, r: &r })?;
            last_eval = Some(r);
        }
        let stop = opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
        if u % t.save_interval == 0 || u == t.total_updates || stop {
            log.flush().map_err(|e| io_err(&metrics_path, e))?;
            let path = ckpt_dir.join(checkpoint_name(u));
            trainer.checkpoint()?.save(&path)?;
            tracing::info!(path = %path.display(), "checkpoint written");
            observer.on_checkpoint(&path);
            final_checkpoint = Some(path);
        }
        if stop {
            tracing::warn!(update = u, "stop requested: checkpoint written, stopping");
            interrupted = true;
            break;
        }
    }
    log.flush().map_err(|e| io_err(&metrics_path, e))?;
    let final_checkpoint = match final_checkpoint {
        Some(p) => p,
        None => {
            // Nothing left to train (resumed at the end): the run's latest checkpoint.
            let path = ckpt_dir.join(checkpoint_name(trainer.update_count()));
            if !path.exists() {
                trainer.checkpoint()?.save(&path)?;
            }
            path
        }
    };
    let updates_this_run = trainer.update_count() - start_update;
    Ok(RunSummary {
        final_checkpoint,
        updates: trainer.update_count(),
        updates_this_run,
        train_seconds,
        ms_per_update: 1000.0 * train_seconds / updates_this_run.max(1) as f64,
        reached_target: reached,
        last_eval,
        interrupted,
    })
}

fn write_line(log: &mut impl Write, path: &Path, v: &impl Serialize) -> Result<(), TrainError> {
    let s = serde_json::to_string(v).map_err(|e| io_err(path, e))?;
    writeln!(log, "{s}").map_err(|e| io_err(path, e))
}

/// Keeps the lines of `metrics.jsonl` whose `update` is at most `upto`.
fn truncate_metrics(path: &Path, upto: u64) -> Result<(), TrainError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("update").and_then(serde_json::Value::as_u64))
                .is_some_and(|u| u <= upto)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    crate::write_atomic(path, kept.as_bytes()).map_err(|e| io_err(path, e))
}

/// The newest checkpoint of a run directory that loads; unreadable ones are
/// skipped with a warning. Errors when none is usable.
pub fn latest_valid_checkpoint(run_dir: &Path, device: &Device) -> Result<(PathBuf, Checkpoint), TrainError> {
    let mut problems = Vec::new();
    for path in crate::list_checkpoints(run_dir)? {
        match Checkpoint::load(&path, device) {
            Ok(c) => return Ok((path, c)),
            Err(e) => {
                tracing::warn!("skipping unusable checkpoint: {e}");
                problems.push(e.to_string());
            }
        }
    }
    Err(TrainError::Checkpoint {
        path: run_dir.join("checkpoints").display().to_string(),
        problem: if problems.is_empty() {
            "no checkpoint in this run directory".into()
        } else {
            format!("no usable checkpoint: {}", problems.join("; "))
        },
    })
}
