//! `mappo simulate`: simulated users against a running `mappo serve` (see
//! `mappo_serve::simulate`); prints the JSON summary.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use mappo_serve::simulate::{SimOptions, SimPrompt, simulate as run};

use crate::args::SimulateArgs;
use crate::outln;

/// Reads `{"text", "label"}` JSON lines; errors name the file and line.
fn read_corpus(path: &std::path::Path) -> Result<Vec<SimPrompt>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
        let field = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_str)
                .map(str::to_string)
                .with_context(|| format!("{}:{}: no string \"{k}\"", path.display(), i + 1))
        };
        out.push(SimPrompt { text: field("text")?, label: field("label")? });
    }
    if out.is_empty() {
        bail!("{} holds no prompts", path.display());
    }
    Ok(out)
}

pub fn simulate(a: SimulateArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&a.missing_feedback) {
        bail!("--missing-feedback must be a probability in [0, 1], got {}", a.missing_feedback);
    }
    let corpus = read_corpus(&a.corpus)?;
    let mut opts = SimOptions::new(a.url.clone(), a.requests);
    opts.concurrency = a.concurrency.max(1);
    opts.feedback_delay = Duration::from_millis(a.feedback_delay_ms);
    opts.missing_feedback = a.missing_feedback;
    opts.seed = a.seed;
    if let Some(f) = &a.api_key_file {
        let key = std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        let key = key.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#'));
        opts.api_key = Some(key.with_context(|| format!("{} holds no key", f.display()))?.to_string());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    tracing::info!("simulating {} requests against {} ({} at a time)", a.requests, a.url, opts.concurrency);
    let report = rt.block_on(run(&corpus, &opts))?;
    tracing::info!(
        "{} requests, {} errors, mean reward {:.4}, {} rewards sent in {:.1} s",
        report.requests,
        report.errors,
        report.mean_reward,
        report.feedback_sent,
        report.seconds
    );
    outln!("{}", serde_json::to_string(&report)?);
    Ok(())
}
