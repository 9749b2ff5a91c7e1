//! `mappo simulate`: simulated users against a running `mappo serve` (see
//! `mappo_client::simulate`); prints the JSON summary.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use mappo_client::{ConversationOptions, SimOptions, SimPrompt, simulate as run, simulate_conversations};
use mappo_env::EnvError;
use serde_json::Value;

use crate::args::SimulateArgs;
use crate::outln;

/// Reads `{"text", "label"}` JSON lines with mappo-env's reader; errors name the file and line.
fn read_corpus(path: &std::path::Path) -> Result<Vec<SimPrompt>> {
    let origin = path.display().to_string();
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {origin}"))?;
    let mut out = Vec::new();
    for row in mappo_env::text::json_lines(std::io::BufReader::new(file), &origin) {
        let (line, obj) = row?;
        let field = |k: &str| match obj.get(k) {
            Some(Value::String(s)) => Ok(s.clone()),
            other => {
                let problem = if other.is_some() {
                    format!("`{k}` must be a string")
                } else {
                    format!("missing `{k}`")
                };
                Err(EnvError::Corpus { path: origin.clone(), line: Some(line), problem })
            }
        };
        out.push(SimPrompt { text: field("text")?, label: field("label")? });
    }
    if out.is_empty() {
        bail!("{origin} holds no prompts");
    }
    Ok(out)
}

/// The first key line of an API key file.
fn api_key(f: &std::path::Path) -> Result<String> {
    let key = std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
    let key = key.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#'));
    Ok(key.with_context(|| format!("{} holds no key", f.display()))?.to_string())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// `mappo simulate --env conversation`: multi-turn users (see `mappo_client::conversations`).
fn conversations(a: &SimulateArgs, corpus: &[SimPrompt]) -> Result<()> {
    let (Some(config), Some(episodes)) = (&a.config, a.episodes) else {
        bail!("--env conversation needs --config FILE and --episodes N");
    };
    let cfg = mappo_config::Config::load(Some(config), &[])?;
    let env = &cfg.env;
    let unix_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let opts = ConversationOptions {
        base_urls: a.url.clone(),
        episodes,
        concurrency: a.concurrency.max(1),
        turns: env.turns,
        p_stay: env.p_stay,
        continuity_bonus: env.continuity_bonus,
        reward_at_end: env.reward_at == mappo_config::RewardAt::End,
        seed: a.seed,
        id_prefix: format!("sim-{unix_ms}-{}", a.seed),
        api_key: a.api_key_file.as_deref().map(api_key).transpose()?,
        timeout: Duration::from_secs(30),
    };
    tracing::info!(
        "simulating {episodes} conversations of {} turns against {} ({} at a time)",
        env.turns,
        a.url.join(", "),
        opts.concurrency
    );
    let report = runtime()?.block_on(simulate_conversations(corpus, &opts))?;
    tracing::info!(
        "{} conversations ({} turns), {} errors, mean return {:.4} in {:.1} s",
        report.episodes,
        report.steps,
        report.errors,
        report.mean_return,
        report.seconds
    );
    outln!("{}", serde_json::to_string(&report)?);
    Ok(())
}

pub fn simulate(a: SimulateArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&a.missing_feedback) {
        bail!("--missing-feedback must be a probability in [0, 1], got {}", a.missing_feedback);
    }
    let corpus = read_corpus(&a.corpus)?;
    if a.env == "conversation" {
        return conversations(&a, &corpus);
    }
    let Some(requests) = a.requests else { bail!("--requests N is needed with --env text") };
    let [url] = a.url.as_slice() else { bail!("--env text takes one --url") };
    let mut opts = SimOptions::new(url.clone(), requests);
    opts.concurrency = a.concurrency.max(1);
    opts.feedback_delay = Duration::from_millis(a.feedback_delay_ms);
    opts.missing_feedback = a.missing_feedback;
    opts.seed = a.seed;
    opts.api_key = a.api_key_file.as_deref().map(api_key).transpose()?;
    let rt = runtime()?;
    tracing::info!("simulating {requests} requests against {url} ({} at a time)", opts.concurrency);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_corpus_needs_a_text_and_a_label_and_errors_name_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users.jsonl");
        let write = |body: &str| std::fs::write(&path, body).expect("write");
        write(
            "{\"text\": \"fix my loop\", \"label\": \"code\"}\n\n{\"text\": \"2+2\", \"label\": \"math\", \"id\": 1}\n",
        );
        let c = read_corpus(&path).expect("corpus");
        assert_eq!(
            c,
            [
                SimPrompt { text: "fix my loop".into(), label: "code".into() },
                SimPrompt { text: "2+2".into(), label: "math".into() }
            ]
        );
        for (body, needle, line) in [
            ("{\"text\": \"a\", \"label\": \"code\"}\nnot json\n", "not valid JSON", 2),
            ("{\"text\": \"a\"}\n", "missing `label`", 1),
            ("\n{\"label\": \"code\"}\n", "missing `text`", 2),
            ("{\"text\": \"a\", \"label\": 3}\n", "`label` must be a string", 1),
        ] {
            write(body);
            let e = format!("{:#}", read_corpus(&path).expect_err(body));
            assert!(e.contains(needle) && e.contains(&format!("line {line}")), "{e}");
            assert!(e.contains(&path.display().to_string()), "{e}");
        }
        write("\n");
        assert!(format!("{:#}", read_corpus(&path).expect_err("empty")).contains("holds no prompts"));
        let e = format!("{:#}", read_corpus(&dir.path().join("missing.jsonl")).expect_err("missing"));
        assert!(e.contains("missing.jsonl"), "{e}");
    }
}
