//! `mappo simulate`: simulated users against a running `mappo serve` (see
//! `mappo_client::simulate`); prints the JSON summary.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use mappo_client::{SimOptions, SimPrompt, simulate as run};
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
