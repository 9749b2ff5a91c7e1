//! `mappo learn`: off-policy PPO from the decision log (`--db`), or from an exported log
//! (`--log-file`), with progress lines and a JSON summary.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use candle_core::Device;
use mappo_config::Config;
use mappo_learn::learner::{
    Candidate, EventCounts, Learner, PublishGate, read_export_jsonl, take_batch, trainer_from_checkpoint,
    update_trainer,
};
use mappo_log::{DecisionLog, Timestamp};
use mappo_train::{Checkpoint, UpdateMetrics, checkpoint_name};
use serde::Serialize;

use crate::args::{DEFAULT_DB, LearnArgs};
use crate::outln;
use crate::signals::StopRequest;

/// Most updates in one round (a round ends with one commit that may publish; SIGTERM is heard
/// between rounds).
const MAX_UPDATES_PER_ROUND: usize = 100;

/// The promotion gate's seam: whether `mappo learn --publish` publishes a candidate.
///
/// Until the promotion gate (off-policy evaluation against the current version, issue 12 part 3)
/// is merged, every candidate is published.
fn should_publish(_candidate: &Candidate, _checkpoint: &[u8]) -> bool {
    true
}

struct Gate;

impl PublishGate for Gate {
    fn should_publish(&mut self, candidate: &Candidate, bytes: &[u8]) -> bool {
        should_publish(candidate, bytes)
    }
}

/// What `--json` prints at the end.
#[derive(Debug, Default, Serialize)]
struct Summary {
    /// `db` or `log-file`.
    source: String,
    rounds: u64,
    updates: u64,
    total_updates: u64,
    events: EventCounts,
    published: Vec<i64>,
    last: Option<UpdateMetrics>,
    /// File mode: the checkpoint written.
    checkpoint: Option<PathBuf>,
    seconds: f64,
}

fn add(into: &mut EventCounts, c: &EventCounts) {
    into.consumed += c.consumed;
    into.learned += c.learned;
    into.defaulted += c.defaulted;
    into.not_sampled += c.not_sampled;
    into.skipped_missing += c.skipped_missing;
    into.skipped_bad += c.skipped_bad;
}

pub fn learn(a: LearnArgs) -> Result<i32> {
    let cfg = Config::load(a.config.as_deref(), &a.set)?;
    match &a.log_file {
        Some(file) => from_file(&a, file, cfg),
        None => from_db(&a, cfg),
    }
}

fn from_db(a: &LearnArgs, cfg: Config) -> Result<i32> {
    let db = a.db.clone().unwrap_or_else(|| DEFAULT_DB.to_string());
    let interval = Duration::from_secs_f64(cfg.learn.interval_s);
    let stop = a.follow.then(StopRequest::install);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let t0 = Instant::now();
    let summary = rt.block_on(async {
        let log = DecisionLog::open(&db).await?;
        let mut learner = Learner::new(log, a.name.clone(), cfg)?;
        let mut s = Summary { source: "db".into(), ..Summary::default() };
        let mut gate = Gate;
        loop {
            let round_start = Instant::now();
            let result = learner
                .round(Timestamp::now(), MAX_UPDATES_PER_ROUND, if a.publish { Some(&mut gate) } else { None })
                .await;
            match result {
                Ok(r) => {
                    s.rounds += 1;
                    s.updates += r.updates;
                    s.total_updates = r.total_updates;
                    add(&mut s.events, &r.counts);
                    s.published.extend(r.published);
                    if let Some(v) = r.adopted {
                        tracing::info!("learning on policy version {v}");
                    }
                    if let Some(m) = &r.last {
                        tracing::info!(
                            "update {}: {} updates this round, {} events learned ({} defaulted, {} not sampled, {} skipped), mean reward {:.4}, approx_kl {:.4}, clipfrac {:.3}{}",
                            r.total_updates,
                            r.updates,
                            r.counts.learned,
                            r.counts.defaulted,
                            r.counts.not_sampled,
                            r.counts.skipped_missing + r.counts.skipped_bad,
                            m.mean_reward,
                            m.approx_kl,
                            m.clipfrac,
                            r.published.map(|v| format!(", published version {v}")).unwrap_or_default()
                        );
                        s.last = Some(m.clone());
                    }
                    // A full round: more is probably waiting.
                    if r.updates as usize == MAX_UPDATES_PER_ROUND {
                        continue;
                    }
                }
                Err(e) if a.follow => tracing::warn!("learning round failed (retrying in {interval:?}): {e}"),
                Err(e) => return Err(anyhow::Error::from(e)),
            }
            let Some(stop) = &stop else { break };
            let wait = interval.saturating_sub(round_start.elapsed());
            let until = Instant::now() + wait;
            while Instant::now() < until && !stop.flag.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50).min(until.saturating_duration_since(Instant::now()))).await;
            }
            if stop.flag.load(Ordering::SeqCst) {
                tracing::info!("stopping: every update so far is committed");
                break;
            }
        }
        Ok::<_, anyhow::Error>(s)
    })?;
    finish(a, Summary { seconds: t0.elapsed().as_secs_f64(), ..summary })
}

fn finish(a: &LearnArgs, s: Summary) -> Result<i32> {
    tracing::info!(
        "done: {} updates ({} in total), {} events consumed, {} learned, versions published: {:?}",
        s.updates,
        s.total_updates,
        s.events.consumed,
        s.events.learned,
        s.published
    );
    if a.json {
        outln!("{}", serde_json::to_string(&s)?);
    } else if let Some(p) = &s.checkpoint {
        outln!("{}", p.display());
    }
    Ok(0)
}

fn from_file(a: &LearnArgs, file: &Path, cfg: Config) -> Result<i32> {
    let Some(out) = &a.out else { bail!("--log-file needs --out DIR (where the checkpoint is written)") };
    let Some(start) = &a.checkpoint else {
        bail!(
            "--log-file needs --checkpoint FILE|RUN_DIR: the policy to start from (the one that logged, or any)"
        )
    };
    let t0 = Instant::now();
    let events = read_export_jsonl(file)?;
    let ckpt = Checkpoint::open(start, &Device::Cpu)?;
    let obs_dim = ckpt.obs_dim()?;
    let mut trainer = trainer_from_checkpoint(&ckpt, &cfg, &Device::Cpu)?;
    let num_agents = mappo_nn::Policy::num_actions(trainer.policy());
    let mut s = Summary { source: "log-file".into(), rounds: 1, ..Summary::default() };
    let mut i = 0;
    loop {
        let (b, next) = take_batch(&events, i, cfg.train.batch_size, obs_dim, num_agents, &cfg);
        if b.actions.len() < cfg.train.batch_size
            && (b.actions.len() < cfg.learn.min_events || b.actions.is_empty())
        {
            break;
        }
        i = next;
        let m = update_trainer(&mut trainer, &b)?;
        add(&mut s.events, &b.counts);
        s.updates += 1;
        tracing::info!(
            "update {}: {} events learned, mean reward {:.4}, approx_kl {:.4}",
            m.update,
            b.counts.learned,
            m.mean_reward,
            m.approx_kl
        );
        s.last = Some(m);
    }
    if events.len() > i {
        tracing::info!(
            "{} events at the end left out (fewer than learn.min_events learnable)",
            events.len() - i
        );
    }
    s.total_updates = trainer.update_count();
    let path = out.join("checkpoints").join(checkpoint_name(trainer.update_count()));
    std::fs::create_dir_all(path.parent().unwrap_or(out))
        .with_context(|| format!("cannot create {}", out.display()))?;
    trainer.checkpoint()?.save(&path)?;
    s.checkpoint = Some(path);
    finish(a, Summary { seconds: t0.elapsed().as_secs_f64(), ..s })
}
