//! `mappo log export|stats` and `mappo policy publish|list`: the decision log's database.

use std::io::Write;

use anyhow::{Context, Result, bail};
use candle_core::Device;
use mappo_log::{DecisionLog, ExportOptions, PublishMeta};
use mappo_train::Checkpoint;

use crate::args::{LogCmd, PolicyCmd};
use crate::outln;

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")
}

pub fn log(cmd: LogCmd) -> Result<()> {
    runtime()?.block_on(async {
        match cmd {
            LogCmd::Export { db, output, embeddings } => {
                let log = DecisionLog::open(&db).await?;
                let opts = ExportOptions { embeddings };
                let n = match &output {
                    Some(p) => {
                        let f = std::fs::File::create(p)
                            .with_context(|| format!("cannot create {}", p.display()))?;
                        let mut w = std::io::BufWriter::new(f);
                        let n = log.export_jsonl(&mut w, opts).await?;
                        w.flush()?;
                        n
                    }
                    None => {
                        let mut w = std::io::BufWriter::new(std::io::stdout().lock());
                        let n = log.export_jsonl(&mut w, opts).await?;
                        w.flush()?;
                        n
                    }
                };
                tracing::info!("exported {n} decisions from {}", log.db());
            }
            LogCmd::Stats { db, json } => {
                let log = DecisionLog::open(&db).await?;
                let s = log.stats().await?;
                if json {
                    outln!("{}", serde_json::to_string(&s)?);
                } else {
                    outln!("{:<24} {}", "decisions", s.decisions);
                    outln!("{:<24} {} / {} / {}", "sampled / greedy / forced", s.sampled, s.greedy, s.forced);
                    outln!("{:<24} {}", "rewards", s.rewards);
                    outln!("{:<24} {:.4}", "join rate", s.join_rate);
                    let mean = |m: Option<f64>| m.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
                    outln!("{:<24} {}", "mean reward", mean(s.reward_mean));
                    outln!("{:<24} {}", "policy versions", s.policy_versions);
                    if s.episodes > 0 {
                        outln!("{:<24} {} ({} ended)", "episodes", s.episodes, s.episodes_ended);
                        outln!("{:<24} {}", "mean episode reward", mean(s.episode_reward_mean));
                    }
                    let width = s.agents.iter().map(|a| a.agent.len()).max().unwrap_or(5).max(5);
                    outln!("");
                    outln!(
                        "{:<width$} {:>10} {:>10} {:>12}",
                        "agent",
                        "decisions",
                        "rewarded",
                        "mean reward"
                    );
                    for a in &s.agents {
                        outln!(
                            "{:<width$} {:>10} {:>10} {:>12}",
                            a.agent,
                            a.decisions,
                            a.rewarded,
                            mean(a.reward_mean)
                        );
                    }
                }
            }
        }
        Ok(())
    })
}

pub fn policy(cmd: PolicyCmd) -> Result<()> {
    runtime()?.block_on(async {
        match cmd {
            PolicyCmd::Publish { db, checkpoint, note, gate, config, set } => {
                // Only a checkpoint that loads is published.
                let ckpt = Checkpoint::open(&checkpoint, &Device::Cpu)?;
                let path = ckpt.path.clone().context("checkpoint without a path")?;
                let bytes =
                    std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
                let meta = PublishMeta {
                    source: format!("mappo policy publish {}", path.display()),
                    note,
                    meta: serde_json::json!({"update": ckpt.update, "env_kind": ckpt.env_kind}),
                };
                let log = DecisionLog::open(&db).await?;
                if gate {
                    let cfg = mappo_config::Config::load(config.as_deref(), &set)?;
                    let v = crate::learn::publish_through_gate(&log, &bytes, &cfg, &meta).await?;
                    tracing::info!("published {} as version {v} through the promotion gate", path.display());
                    outln!("{v}");
                    return Ok(());
                }
                let p = log.publish_policy(&bytes, &meta).await?;
                if p.created {
                    tracing::info!("published {} as version {}", path.display(), p.version);
                } else {
                    tracing::info!("{} was already published as version {}", path.display(), p.version);
                }
                outln!("{}", p.version);
            }
            PolicyCmd::Export { db, version, out, force } => {
                if out.exists() && !force {
                    bail!("{} exists: choose another --out or pass --force", out.display());
                }
                let log = DecisionLog::open(&db).await?;
                let p = match version {
                    Some(v) => {
                        log.policy(v).await?.with_context(|| format!("no policy version {v} in {db}"))?
                    }
                    None => log
                        .latest_policy()
                        .await?
                        .with_context(|| format!("no policy is published in {db}"))?,
                };
                // Written whole or not at all.
                let tmp = out.with_extension("safetensors.partial");
                std::fs::write(&tmp, &p.checkpoint)
                    .with_context(|| format!("cannot write {}", tmp.display()))?;
                std::fs::rename(&tmp, &out).with_context(|| format!("cannot write {}", out.display()))?;
                tracing::info!("version {} written to {}", p.info.version, out.display());
                outln!("{}", out.display());
            }
            PolicyCmd::List { db, json } => {
                let log = DecisionLog::open(&db).await?;
                let list = log.list_policies().await?;
                let gates = log.gate_decisions().await?;
                if json {
                    // The versions, each with the gate decision that published it ("gate") and
                    // the candidates the gate refused while it was the current version ("refused").
                    let out: Vec<serde_json::Value> = list
                        .iter()
                        .map(|p| {
                            let mut v = serde_json::to_value(p)?;
                            let gate = gates.iter().find(|g| g.candidate_version == Some(p.version));
                            let refused: Vec<_> = gates
                                .iter()
                                .filter(|g| !g.published && g.current_version == Some(p.version))
                                .collect();
                            if let serde_json::Value::Object(m) = &mut v {
                                m.insert("gate".into(), serde_json::to_value(gate)?);
                                m.insert("refused".into(), serde_json::to_value(refused)?);
                            }
                            Ok(v)
                        })
                        .collect::<Result<_, serde_json::Error>>()?;
                    outln!("{}", serde_json::to_string(&out)?);
                } else {
                    outln!("{:>7}  {:<32}  {:>10}  {}", "version", "created", "bytes", "source / note");
                    for p in &list {
                        let note = p.note.as_deref().map(|n| format!(" ({n})")).unwrap_or_default();
                        outln!(
                            "{:>7}  {:<32}  {:>10}  {}{note}",
                            p.version,
                            p.created.to_rfc3339(),
                            p.size,
                            p.source
                        );
                    }
                    if !gates.is_empty() {
                        outln!("");
                        outln!("promotion gate decisions:");
                        outln!(
                            "{:>4}  {:<32}  {:<9}  {:>7}  {:>7}  {:<6} {:>8} {:>19}  {:>8}",
                            "id",
                            "time",
                            "outcome",
                            "version",
                            "vs",
                            "est.",
                            "cand.",
                            "cand. 95% interval",
                            "current"
                        );
                        let opt = |v: Option<i64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
                        for g in &gates {
                            outln!(
                                "{:>4}  {:<32}  {:<9}  {:>7}  {:>7}  {:<6} {:>8.4} {:>19}  {:>8}",
                                g.id,
                                g.time.to_rfc3339(),
                                if g.published { "published" } else { "refused" },
                                opt(g.candidate_version),
                                opt(g.current_version),
                                g.estimator,
                                g.candidate_value,
                                format!("[{:.4}, {:.4}]", g.candidate_ci[0], g.candidate_ci[1]),
                                g.current_value.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"))
                            );
                        }
                    }
                }
            }
        }
        Ok(())
    })
}

/// `mappo serve`: the service runs until Ctrl-C or SIGTERM, then drains and exits 0.
pub fn serve(a: crate::args::ServeArgs) -> Result<()> {
    let mut sets = a.set.clone();
    if let Some(addr) = &a.addr {
        sets.push(format!("serve.addr={addr:?}"));
    }
    let cfg = mappo_config::Config::load(a.config.as_deref(), &sets)?;
    let checkpoint = match &a.checkpoint {
        Some(p) => Some(crate::commands::checkpoint_file(p)?),
        None => None,
    };
    let mut opts = mappo_serve::ServeOptions::new(a.db.clone(), cfg);
    opts.checkpoint = checkpoint;
    opts.publish_fresh = a.config.is_some();
    opts.insecure = a.insecure;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(mappo_serve::serve(opts))?;
    Ok(())
}
