//! `mappo learn`: off-policy PPO from the decision log (`--db`), or from an exported log
//! (`--log-file`), with progress lines and a JSON summary.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use candle_core::Device;
use mappo_config::Config;
use mappo_learn::episode_ope::{LoggedEpisode, read_ended_episodes};
use mappo_learn::gate::{GateConfig, GateDecision, gate, gate_episodes};
use mappo_learn::learner::{
    Candidate, EventCounts, LearnEvent, Learner, PublishGate, take_batch, trainer_from_checkpoint,
    update_trainer,
};
use mappo_learn::ope::Candidate as OpePolicy;
use mappo_learn::{LoggedEvent, read_export_jsonl};
use mappo_log::{DecisionKind, DecisionLog, EventQuery, Timestamp, Watermark};
use mappo_train::{Checkpoint, UpdateMetrics};
use serde::Serialize;
use sha2::Digest;

use crate::args::{DEFAULT_DB, LearnArgs};
use crate::outln;
use crate::signals::StopRequest;

/// The newest rewarded events the promotion gate evaluates on.
const GATE_WINDOW: usize = 2000;

/// The newest ended episodes the promotion gate evaluates a policy of episodes on.
const GATE_EPISODES: u32 = 1000;

/// The promotion gate of `mappo learn --publish`: before each round it reads the newest events
/// (decisions older than `learn.reward_wait_s`, as the learner) and the current version; a
/// round's candidate is published only when off-policy evaluation on those events says it is
/// not worse than the current version (`mappo_learn::gate`). Every decision is recorded in
/// `gate_decisions` (`mappo policy list`).
///
/// The events are also ones the learner trains on, so the candidate's estimate is in-sample
/// (optimistic); the margin and the interval's lower bound are what keep a clearly worse
/// candidate out.
struct Gate {
    cfg: GateConfig,
    reward_wait: Duration,
    window: VecDeque<LoggedEvent>,
    after: Option<Watermark>,
    current: Option<(i64, OpePolicy)>,
    /// The decision taken by the last `should_publish`, to be recorded after the round.
    last: Option<(GateDecision, String)>,
    /// For a policy of episodes: the newest ended episodes, laid out for the current version.
    episodes: Vec<LoggedEpisode>,
    /// The discount of episode returns (`ppo.gamma`).
    gamma: f64,
}

impl Gate {
    fn new(cfg: &Config) -> Result<Self> {
        Ok(Gate {
            cfg: GateConfig::from_config(&cfg.learn),
            reward_wait: Duration::from_secs_f64(cfg.learn.reward_wait_s),
            window: VecDeque::new(),
            after: None,
            current: None,
            last: None,
            episodes: Vec::new(),
            gamma: cfg.ppo.gamma,
        })
    }

    /// Reads the events logged since the last call and the newest published version.
    async fn refresh(&mut self, log: &DecisionLog) -> Result<()> {
        let before = Timestamp(Timestamp::now().as_micros() - self.reward_wait.as_micros() as i64);
        loop {
            let page = log
                .joined_events(&EventQuery { after: self.after, before: Some(before), limit: 5000 })
                .await?;
            let Some(last) = page.last() else { break };
            self.after = Some(last.watermark());
            for e in &page {
                if e.reward.is_some() && e.decision.kind == DecisionKind::Sampled {
                    self.window.push_back(LoggedEvent::from(e));
                }
            }
            while self.window.len() > GATE_WINDOW {
                self.window.pop_front();
            }
        }
        if let Some(p) = log.latest_policy().await?
            && self.current.as_ref().is_none_or(|(v, _)| *v != p.info.version)
        {
            let ckpt = Checkpoint::from_bytes(&p.checkpoint, &Device::Cpu)?;
            self.current = Some((p.info.version, OpePolicy::from_checkpoint(&ckpt, &Device::Cpu)?));
        }
        if let Some((_, current)) = &self.current
            && current.shape != mappo_train::EpisodeShape::OneStep
            && let Some(layout) = current.layout()
        {
            let wait = self.reward_wait.as_secs_f64();
            let (eps, warnings) =
                read_ended_episodes(log, GATE_EPISODES, wait, layout, current.shape, current.num_actions())
                    .await?;
            for w in warnings {
                tracing::debug!("gate: {w}");
            }
            self.episodes = eps;
        }
        Ok(())
    }

    fn decide(&self, bytes: &[u8]) -> Result<Option<GateDecision>> {
        let Some((_, current)) = &self.current else { return Ok(None) };
        let ckpt = Checkpoint::from_bytes(bytes, &Device::Cpu)?;
        let candidate = OpePolicy::from_checkpoint(&ckpt, &Device::Cpu)?;
        if candidate.shape != mappo_train::EpisodeShape::OneStep {
            return Ok(Some(gate_episodes(&self.episodes, &candidate, current, &self.cfg, self.gamma, 0)?));
        }
        let events: Vec<LoggedEvent> = self.window.iter().cloned().collect();
        Ok(Some(gate(&events, &candidate, current, &self.cfg)?))
    }

    /// Records the last decision (with the version the candidate became, if published).
    async fn record(&mut self, log: &DecisionLog, published: Option<i64>) -> Result<()> {
        if let Some((d, sha)) = self.last.take() {
            let current = self.current.as_ref().map(|(v, _)| *v);
            log.record_gate_decision(&d.record(published, current, Some(sha))).await?;
            tracing::info!("gate: {}", d.reason);
        }
        Ok(())
    }
}

impl PublishGate for Gate {
    fn should_publish(&mut self, _candidate: &Candidate, bytes: &[u8]) -> bool {
        match self.decide(bytes) {
            // Nothing published to compare with: the first version goes out.
            Ok(None) => true,
            Ok(Some(d)) => {
                let publish = d.publish;
                let sha = format!("{:x}", sha2::Sha256::digest(bytes));
                self.last = Some((d, sha));
                publish
            }
            Err(e) => {
                tracing::warn!("gate: cannot evaluate the candidate, not publishing it: {e:#}");
                false
            }
        }
    }
}

/// `mappo policy publish --gate`: judges a checkpoint with the promotion gate of `mappo learn
/// --publish` (same events, estimator and margin), records the decision, and publishes it only
/// when the gate lets it through (or when nothing is published yet). Returns the version; a
/// refusal is an error that says why.
pub async fn publish_through_gate(
    log: &DecisionLog,
    bytes: &[u8],
    cfg: &Config,
    meta: &mappo_log::PublishMeta,
) -> Result<i64> {
    let mut gate = Gate::new(cfg)?;
    gate.refresh(log).await?;
    let decision = gate.decide(bytes)?;
    let sha = format!("{:x}", sha2::Sha256::digest(bytes));
    let Some(d) = decision else {
        // Nothing published yet: nothing to compare with.
        return Ok(log.publish_policy(bytes, meta).await?.version);
    };
    let publish = d.publish;
    let reason = d.reason.clone();
    gate.last = Some((d, sha));
    let version = if publish { Some(log.publish_policy(bytes, meta).await?.version) } else { None };
    gate.record(log, version).await?;
    match version {
        Some(v) => Ok(v),
        None => bail!("refused by the promotion gate: {reason}"),
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
    let round_updates = cfg.learn.round_updates;
    let stop = a.follow.then(StopRequest::install);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let t0 = Instant::now();
    let summary = rt.block_on(async {
        let log = open_log(&db, a.follow, stop.as_ref()).await?;
        let Some(log) = log else {
            return Ok(Summary { source: "db".into(), ..Summary::default() });
        };
        let mut gate = Gate::new(&cfg)?;
        let mut learner = Learner::new(log.clone(), a.name.clone(), cfg)?;
        let mut s = Summary { source: "db".into(), ..Summary::default() };
        // Rounds failed in a row (the database unreachable, say): the wait before the next one
        // doubles with each, up to MAX_BACKOFF.
        let mut failures: u32 = 0;
        loop {
            let round_start = Instant::now();
            if a.publish
                && let Err(e) = gate.refresh(&log).await
            {
                tracing::warn!("gate: cannot read the newest events: {e:#}");
            }
            let result = learner
                .round(Timestamp::now(), round_updates, if a.publish { Some(&mut gate) } else { None })
                .await;
            let mut wait = interval;
            match result {
                Ok(r) => {
                    if failures > 0 {
                        tracing::info!("learning resumed after {failures} failed rounds");
                        failures = 0;
                    }
                    if a.publish
                        && let Err(e) = gate.record(&log, r.published).await
                    {
                        // The gate's verdict is a record for people; the update and any
                        // version published are committed already.
                        if !a.follow {
                            return Err(e);
                        }
                        tracing::warn!("gate: cannot record its decision: {e:#}");
                    }
                    s.rounds += 1;
                    s.updates += r.updates;
                    s.total_updates = r.total_updates;
                    s.events.add(&r.counts);
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
                    if r.updates as usize == round_updates {
                        continue;
                    }
                }
                Err(e) if a.follow => {
                    // Nothing of a failed round is kept: the learner reloads its committed state
                    // (events after its watermark, its last checkpoint) once the log answers, so
                    // no event is skipped or learned twice.
                    failures += 1;
                    wait = backoff(interval, failures);
                    tracing::warn!(
                        "learning round failed ({failures} in a row; retrying in {:.1} s): {e}",
                        wait.as_secs_f64()
                    );
                }
                Err(e) => return Err(anyhow::Error::from(e)),
            }
            let Some(stop) = &stop else { break };
            let wait = wait.saturating_sub(round_start.elapsed());
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

/// The longest wait between two failed rounds of `--follow`.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The wait after `failures` failed rounds in a row: `interval` doubled for each (at least
/// 0.5 s, at most [`MAX_BACKOFF`]).
fn backoff(interval: Duration, failures: u32) -> Duration {
    let base = interval.max(Duration::from_millis(500));
    base.saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(MAX_BACKOFF)
}

/// Opens the decision log; with `--follow`, an unreachable database is waited for (retried with
/// [`backoff`], logged) until it answers or a stop signal comes (`None`).
async fn open_log(db: &str, follow: bool, stop: Option<&StopRequest>) -> Result<Option<DecisionLog>> {
    let mut failures = 0;
    loop {
        match DecisionLog::open(db).await {
            Ok(log) => return Ok(Some(log)),
            Err(e) if follow && (e.is_unavailable() || matches!(e, mappo_log::LogError::Connect { .. })) => {
                failures += 1;
                let wait = backoff(Duration::from_secs(1), failures);
                tracing::warn!(
                    "cannot open the decision log ({failures} tries; retrying in {:.1} s): {e}",
                    wait.as_secs_f64()
                );
                let until = Instant::now() + wait;
                while Instant::now() < until {
                    if stop.is_some_and(|s| s.flag.load(Ordering::SeqCst)) {
                        return Ok(None);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
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
    let mut logged = read_export_jsonl(file)?;
    let ckpt = Checkpoint::open(start, &Device::Cpu)?;
    // Rows with a text but no embedding (a foreign log) are embedded with the checkpoint's
    // embedder, as `mappo ope` does.
    crate::ope::embed_missing(&mut logged, &ckpt, &Device::Cpu)?;
    let events: Vec<LearnEvent> = logged.iter().map(LearnEvent::from_logged).collect();
    let layout = ckpt.observation_spec()?;
    let mut trainer = trainer_from_checkpoint(&ckpt, &cfg, &Device::Cpu)?;
    let num_agents = mappo_nn::Policy::num_actions(trainer.policy());
    let mut s = Summary { source: "log-file".into(), rounds: 1, ..Summary::default() };
    let mut i = 0;
    loop {
        let (b, next) = take_batch(&events, i, cfg.train.batch_size, &layout, num_agents, &cfg);
        if b.actions.len() < cfg.train.batch_size
            && (b.actions.len() < cfg.learn.min_events || b.actions.is_empty())
        {
            break;
        }
        i = next;
        let m = update_trainer(&mut trainer, &b, s.events.learned)?;
        s.events.add(&b.counts);
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
    let path = out.join("checkpoints").join(Checkpoint::file_name(trainer.update_count()));
    std::fs::create_dir_all(path.parent().unwrap_or(out))
        .with_context(|| format!("cannot create {}", out.display()))?;
    trainer.checkpoint()?.save(&path)?;
    s.checkpoint = Some(path);
    finish(a, Summary { seconds: t0.elapsed().as_secs_f64(), ..s })
}
