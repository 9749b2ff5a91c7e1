//! The training loop around a [`Trainer`]: run directory, metrics log,
//! periodic evaluation, checkpoints, stop requests.
//!
//! Run directory layout:
//! * `config.toml` — the resolved config;
//! * `metrics.jsonl` — one JSON object per line: `{"kind":"update", ...}`
//!   every `log_interval` updates, `{"kind":"eval", ...}` every `eval_interval` (written and
//!   read by [`crate::metrics`]);
//! * `checkpoints/update-NNNNNNN.safetensors` — every `save_interval` and at the end.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use mappo_env::Env;
use mappo_nn::Policy;
use serde::Serialize;

use crate::metrics::{self, EvalLine, UpdateLine, first_crossing, write_line};
use crate::{Checkpoint, EvalReport, Evaluate, TrainError, Trainer, UpdateMetrics};

/// Where and how to run: the run directory and what watches the run. The
/// cadences (`log_interval`, `eval_interval`, `save_interval`) come from the
/// trainer's config (`[train]`).
pub struct RunOptions<'a> {
    /// The run directory (created if missing).
    pub out_dir: PathBuf,
    /// When set to true (e.g. by a Ctrl-C handler), the run writes a
    /// checkpoint after the current update and returns.
    pub stop: Option<Arc<AtomicBool>>,
    /// Greedy oracle agreement whose first crossing is recorded. Default 0.95.
    pub agreement_target: f64,
    /// Periodic greedy evaluation (every `train.eval_interval` updates). Default none.
    pub evaluator: Option<&'a dyn Evaluate>,
    /// Progress callbacks. Default none.
    pub observer: Option<&'a mut dyn Observer>,
    /// Replace a run already in `out_dir` (its checkpoints, metrics and
    /// summary are deleted) instead of refusing. Default false.
    pub force: bool,
}

impl std::fmt::Debug for RunOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("out_dir", &self.out_dir)
            .field("agreement_target", &self.agreement_target)
            .field("evaluator", &self.evaluator.is_some())
            .field("force", &self.force)
            .finish()
    }
}

impl<'a> RunOptions<'a> {
    /// Options for `out_dir` with the defaults.
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        Self {
            out_dir: out_dir.into(),
            stop: None,
            agreement_target: 0.95,
            evaluator: None,
            observer: None,
            force: false,
        }
    }

    /// Evaluates greedily with `evaluator` every `train.eval_interval` updates.
    pub fn evaluator(mut self, evaluator: &'a dyn Evaluate) -> Self {
        self.evaluator = Some(evaluator);
        self
    }

    /// Reports progress to `observer`.
    pub fn observer(mut self, observer: &'a mut dyn Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Stops (after a checkpoint) when `flag` becomes true.
    pub fn stop_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.stop = Some(flag);
        self
    }

    /// Replaces a run already in the directory instead of refusing.
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
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
    /// First update (and training seconds of the call that got there) at
    /// which the periodic greedy oracle agreement reached the target, over the
    /// whole run (a resumed run keeps the crossing logged before).
    pub reached_target: Option<(u64, f64)>,
    /// The last periodic evaluation.
    pub last_eval: Option<EvalReport>,
    /// True when a stop request ended the run early.
    pub interrupted: bool,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io { path: path.display().to_string(), message: e.to_string() }
}

impl<E: Env, P: Policy> Trainer<E, P> {
    /// Runs to `train.total_updates`, from whatever update the trainer is at,
    /// writing the run directory (see the module docs).
    ///
    /// A directory that already holds a run is refused at update 0 (unless
    /// [`RunOptions::force`]): two runs never mix their checkpoints. On resume
    /// (the trainer restored from a checkpoint of `out_dir`), lines of
    /// `metrics.jsonl` beyond the checkpoint's update are dropped first, so an
    /// interrupted and resumed run leaves the same log as an uninterrupted one
    /// (wall-clock fields aside).
    pub fn run(&mut self, opts: RunOptions<'_>) -> Result<RunSummary, TrainError> {
        let RunOptions { out_dir, stop, agreement_target, evaluator, observer, force } = opts;
        let mut no_observer = NoObserver;
        let observer: &mut dyn Observer = match observer {
            Some(o) => o,
            None => &mut no_observer,
        };
        let mut last_saved = None;
        let result =
            run_loop(self, &out_dir, stop, agreement_target, evaluator, observer, force, &mut last_saved);
        result.map_err(|e| match e {
            TrainError::NonFinite { update, what, .. } => {
                TrainError::NonFinite { update, what, last_checkpoint: last_saved }
            }
            e => e,
        })
    }
}

/// Refuses (or with `force` clears) a directory that already holds a run.
fn claim_run_dir(dir: &Path, ckpt_dir: &Path, force: bool) -> Result<(), TrainError> {
    let log = dir.join(metrics::FILE);
    let has_ckpts = std::fs::read_dir(ckpt_dir).map(|mut d| d.next().is_some()).unwrap_or(false);
    if !has_ckpts && !log.exists() {
        return Ok(());
    }
    if !force {
        return Err(TrainError::Setup(format!(
            "the run directory {} already holds a run (checkpoints or metrics.jsonl): choose another \
             --out, continue it with --resume {}, or replace it with --force",
            dir.display(),
            dir.display()
        )));
    }
    tracing::warn!("--force: replacing the run in {}", dir.display());
    for p in Checkpoint::list(dir)? {
        std::fs::remove_file(&p).map_err(|e| io_err(&p, format!("cannot remove: {e}")))?;
    }
    for name in [metrics::FILE, "summary.json"] {
        let p = dir.join(name);
        if p.exists() {
            std::fs::remove_file(&p).map_err(|e| io_err(&p, format!("cannot remove: {e}")))?;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_loop<E: Env, P: Policy>(
    trainer: &mut Trainer<E, P>,
    dir: &Path,
    stop: Option<Arc<AtomicBool>>,
    agreement_target: f64,
    evaluator: Option<&dyn Evaluate>,
    observer: &mut dyn Observer,
    force: bool,
    last_saved: &mut Option<PathBuf>,
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
    let ckpt_dir = dir.join("checkpoints");
    let start_update = trainer.update_count();
    if start_update == 0 {
        claim_run_dir(dir, &ckpt_dir, force)?;
    } else {
        let resumed = ckpt_dir.join(Checkpoint::file_name(start_update));
        *last_saved = resumed.exists().then_some(resumed);
    }
    std::fs::create_dir_all(&ckpt_dir).map_err(|e| io_err(&ckpt_dir, format!("cannot create: {e}")))?;
    let cfg_path = dir.join("config.toml");
    mappo_config::write_atomic(&cfg_path, cfg.to_toml_string().as_bytes())
        .map_err(|e| io_err(&cfg_path, e))?;
    let metrics_path = dir.join(metrics::FILE);
    let earlier = metrics::truncate(&metrics_path, start_update)?;
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
    let mut reached = first_crossing(&earlier, agreement_target);
    let mut last_eval = None;
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
                mean_return = format!("{:.4}", m.mean_return),
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
            let r = ev.evaluate_policy(trainer.policy())?;
            if reached.is_none() && r.oracle_agreement >= agreement_target {
                reached = Some((u, train_seconds));
            }
            observer.on_eval(u, &r);
            write_line(&mut log, &metrics_path, &EvalLine { kind: "eval", update: u, train_seconds, r: &r })?;
            last_eval = Some(r);
        }
        let stop_now = stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
        if u % t.save_interval == 0 || u == t.total_updates || stop_now {
            log.flush().map_err(|e| io_err(&metrics_path, e))?;
            let path = ckpt_dir.join(Checkpoint::file_name(u));
            trainer.checkpoint()?.save(&path)?;
            tracing::info!(path = %path.display(), "checkpoint written");
            observer.on_checkpoint(&path);
            *last_saved = Some(path);
        }
        if stop_now {
            tracing::warn!(update = u, "stop requested: checkpoint written, stopping");
            interrupted = true;
            break;
        }
    }
    log.flush().map_err(|e| io_err(&metrics_path, e))?;
    let final_checkpoint = match last_saved.clone() {
        Some(p) => p,
        None => {
            // Resumed from a checkpoint file outside this directory, with nothing left to train.
            let path = ckpt_dir.join(Checkpoint::file_name(trainer.update_count()));
            trainer.checkpoint()?.save(&path)?;
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
