//! `mappo ope`: off-policy evaluation of a checkpoint on a decision log or an exported log.

use anyhow::{Context, Result, bail};
use candle_core::Device;
use mappo_learn::episode_ope::read_ended_episodes;
use mappo_learn::ope::{Candidate, OpeOptions, OpeReport, evaluate};
use mappo_learn::{LoggedEvent, embed_texts, read_export_jsonl};
use mappo_log::{DecisionLog, EventQuery};
use mappo_train::{Checkpoint, select_device};

use crate::args::OpeArgs;
use crate::outln;

/// Every event of the database, oldest first.
pub(crate) async fn db_events(log: &DecisionLog) -> Result<Vec<LoggedEvent>> {
    let mut q = EventQuery { after: None, before: None, limit: 1000 };
    let mut out = Vec::new();
    loop {
        let page = log.joined_events(&q).await?;
        let Some(last) = page.last() else { break };
        q.after = Some(last.watermark());
        out.extend(page.into_iter().map(LoggedEvent::from));
    }
    Ok(out)
}

/// Embeds, with the checkpoint's embedder, the rows of a log that have a text but no embedding.
pub fn embed_missing(events: &mut [LoggedEvent], ckpt: &Checkpoint, device: &Device) -> Result<()> {
    if !events.iter().any(|e| e.embedding.is_none() && e.text.is_some()) {
        return Ok(());
    }
    let embedder = mappo_env::text::load_embedder(&ckpt.config.env, device)?;
    let n = embed_texts(events, &embedder)?;
    tracing::info!("embedded {n} logged texts");
    Ok(())
}

pub fn ope(a: OpeArgs) -> Result<()> {
    let (device, _) = select_device(a.device.parse().context("--device")?)?;
    let ckpt_path = crate::commands::checkpoint_file(&a.checkpoint)?;
    let ckpt = Checkpoint::load(&ckpt_path, &device)?;
    if mappo_train::EpisodeShape::of(&ckpt.config) != mappo_train::EpisodeShape::OneStep {
        return ope_episodes(&a, &ckpt, &device);
    }
    let mut events = match (&a.db, &a.log_file) {
        (Some(db), None) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(async {
                let log = DecisionLog::open(db).await?;
                let ev = db_events(&log).await;
                log.close().await;
                ev
            })?
        }
        (None, Some(path)) => read_export_jsonl(path)?,
        _ => bail!("give exactly one of --db URL and --log-file FILE.jsonl"),
    };
    embed_missing(&mut events, &ckpt, &device)?;
    let mut candidate = Candidate::from_checkpoint(&ckpt, &device)?.with_greedy(a.greedy);
    if let Some(m) = a.min_prob {
        if !(m.is_finite() && (0.0..0.5).contains(&m)) {
            bail!("--min-prob {m}: must be in [0, 0.5)");
        }
        candidate = candidate.with_min_prob(m);
    }
    let serve = &ckpt.config.serve;
    let opts = OpeOptions {
        folds: a.folds,
        reward_range: Some([serve.reward_min, serve.reward_max]),
        ..OpeOptions::default()
    };
    if opts.folds < 2 {
        bail!("--folds {}: at least 2", opts.folds);
    }
    let r = evaluate(&events, &candidate, &opts)?;
    if a.json {
        // The table prints them; with --json they also go to stderr.
        for w in &r.warnings {
            tracing::warn!("{w}");
        }
        outln!("{}", serde_json::to_string(&r)?);
    } else {
        print_table(&r, &candidate)?;
    }
    Ok(())
}

/// `mappo ope` for a policy of episodes: PDIS and WPDIS on every ended episode of the decision
/// log (every logged reward counts).
fn ope_episodes(a: &OpeArgs, ckpt: &Checkpoint, device: &Device) -> Result<()> {
    let Some(db) = &a.db else {
        bail!(
            "this checkpoint's policy decides episodes: evaluate it on a decision log's episodes with --db URL"
        );
    };
    let mut candidate = Candidate::from_checkpoint(ckpt, device)?.with_greedy(a.greedy);
    if let Some(m) = a.min_prob {
        if !(m.is_finite() && (0.0..0.5).contains(&m)) {
            bail!("--min-prob {m}: must be in [0, 0.5)");
        }
        candidate = candidate.with_min_prob(m);
    }
    let layout = ckpt.observation_spec()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (episodes, mut warnings) = rt.block_on(async {
        let log = DecisionLog::open(db).await?;
        let r = read_ended_episodes(
            &log,
            u32::MAX,
            f64::INFINITY,
            &layout,
            candidate.shape,
            candidate.num_actions(),
        )
        .await;
        log.close().await;
        r
    })?;
    let mut r = mappo_learn::episode_ope::evaluate(&episodes, &candidate, ckpt.config.ppo.gamma, 0)?;
    warnings.append(&mut r.warnings);
    r.warnings = warnings;
    if a.json {
        for w in &r.warnings {
            tracing::warn!("{w}");
        }
        outln!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    let acts = if candidate.greedy {
        "argmax".to_string()
    } else {
        format!("probabilities floored at {}", candidate.min_prob)
    };
    outln!("{:<16} {} ({acts})", "candidate", candidate.name);
    outln!("{:<16} {} ({} steps, γ = {})", "episodes", r.n, r.steps, r.gamma);
    outln!("{:<16} {:.1}", "effective n", r.ess);
    outln!("{:<16} {:.4}", "logging value", r.logging_value);
    outln!("");
    outln!("{:<16} {:>8} {:>20}", "estimator", "value", "95% interval");
    for (name, e) in [("PDIS", r.pdis), ("WPDIS", r.wpdis)] {
        outln!("{:<16} {:>8.4} {:>20}", name, e.value, format!("[{:.4}, {:.4}]", e.ci[0], e.ci[1]));
    }
    for w in &r.warnings {
        outln!("warning: {w}");
    }
    Ok(())
}

fn print_table(r: &OpeReport, c: &Candidate) -> Result<()> {
    let acts =
        if c.greedy { "argmax".to_string() } else { format!("probabilities floored at {}", c.min_prob) };
    outln!("{:<16} {} ({acts})", "candidate", c.name);
    outln!("{:<16} {}", "events", r.n);
    outln!("{:<16} {:.1}", "effective n", r.ess);
    outln!("{:<16} {:.4}", "logging value", r.logging_value);
    outln!("");
    outln!("{:<16} {:>8} {:>20}", "estimator", "value", "95% interval");
    for (name, e) in [("IPS", r.ips), ("SNIPS", r.snips), ("DR", r.dr)] {
        outln!("{:<16} {:>8.4} {:>20}", name, e.value, format!("[{:.4}, {:.4}]", e.ci[0], e.ci[1]));
    }
    if !r.warnings.is_empty() {
        outln!("");
        for w in &r.warnings {
            outln!("warning: {w}");
        }
    }
    Ok(())
}
