//! `cargo xtask fetch-data <DATASET>`: convert a public data set into `data/<DATASET>/*.jsonl`.
//!
//! One file per data set (`clinc150`, `routellm`), each trying its public source first (through
//! the one download helper, [`download`]) and falling back to `--from DIR`, a local copy; the
//! shared options and [`common::write_if_changed`] live in [`common`]. Dependencies go one way:
//! this file → the data sets → `download` and `common`. Output files are written under
//! temporary names and renamed, and a file whose content would not change is left untouched.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};

mod clinc150;
mod common;
mod download;
mod routellm;

use common::Options;

/// A data set's conversion: reads its sources, writes its files under `Options::out`.
type Convert = fn(&Options) -> Result<()>;

/// Data sets this command knows how to convert, with their conversions.
const DATASETS: &[(&str, Convert)] = &[("clinc150", clinc150::run), ("routellm", routellm::run)];

#[derive(clap::Args)]
pub struct Args {
    /// Data set to convert (supported: clinc150, routellm).
    #[arg(value_name = "DATASET")]
    pub dataset: String,
    /// Local directory holding the source files (for clinc150: data_full.json or
    /// clinc150_train_val.json, plus domains.json; a `data/` subdirectory is also searched; for
    /// routellm: a copy of RouteLLM's routellm/evals directory, or the four converted files).
    #[arg(long, value_name = "DIR")]
    pub from: Option<PathBuf>,
    /// Output directory [default: <workspace>/data/<DATASET>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Base URL of the public files [default: for clinc150 $MAPPO_CLINC150_URL, else the
    /// clinc/oos-eval repository's data/ directory; for routellm $MAPPO_ROUTELLM_URL, else the
    /// lm-sys/RouteLLM repository's routellm/evals directory].
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Seconds to wait for a connection to the public source before falling back to --from.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub timeout: u64,
}

/// Converts the data set `a.dataset` names.
pub fn run(a: Args) -> Result<()> {
    let Some(&(name, convert)) = DATASETS.iter().find(|(name, _)| *name == a.dataset) else {
        let supported: Vec<&str> = DATASETS.iter().map(|(name, _)| *name).collect();
        bail!("unknown data set {:?}; supported: {}", a.dataset, supported.join(", "));
    };
    let out = a.out.unwrap_or_else(|| crate::workspace_root().join("data").join(name));
    convert(&Options { from: a.from, out, url: a.url, timeout: Duration::from_secs(a.timeout.max(1)) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::fs;

    #[test]
    fn unknown_dataset_lists_supported_names() {
        let err = run(args("mnist", None, None)).unwrap_err();
        assert!(err.to_string().contains("supported: clinc150, routellm"), "{err}");
    }

    #[test]
    fn routellm_copies_checked_outcome_files_from_a_directory() {
        let src = tempfile::tempdir().unwrap();
        let row = "{\"text\": \"2+2?\", \"outcomes\": {\"mixtral-8x7b\": 1, \"gpt-4-1106\": 1}}\n";
        for name in routellm::FILES {
            fs::write(src.path().join(name), row).unwrap();
        }
        let out = tempfile::tempdir().unwrap();
        run(args("routellm", Some(src.path().to_path_buf()), Some(out.path().to_path_buf()))).unwrap();
        assert_eq!(fs::read_to_string(out.path().join("gsm8k_val.jsonl")).unwrap(), row);
        fs::write(
            src.path().join("mmlu_val.jsonl"),
            "{\"text\": \"a\", \"outcomes\": {\"gpt-4-1106\": 1}}\n",
        )
        .unwrap();
        let err = run(args("routellm", Some(src.path().to_path_buf()), Some(out.path().to_path_buf())))
            .unwrap_err()
            .to_string();
        assert!(err.contains("mmlu_val.jsonl") && err.contains("mixtral-8x7b"), "{err}");
        let err = run(args("routellm", None, Some(out.path().to_path_buf()))).unwrap_err().to_string();
        assert!(err.contains("cannot be reached") && err.contains("--from DIR"), "{err}");
    }

    fn args(dataset: &str, from: Option<PathBuf>, out: Option<PathBuf>) -> Args {
        // Port 9 (discard) on the loopback: refused at once, like an unreachable source.
        Args { dataset: dataset.into(), from, out, url: Some("http://127.0.0.1:9/data".into()), timeout: 1 }
    }

    #[test]
    fn an_unreachable_public_source_falls_back_to_from() {
        let src = tempfile::tempdir().unwrap();
        fs::write(
            src.path().join("clinc150_train_val.json"),
            json!({"train": [["how much money do i have", "balance"]], "val": [["fly me", "book_flight"]]})
                .to_string(),
        )
        .unwrap();
        fs::write(
            src.path().join("domains.json"),
            json!({"banking": ["balance"], "travel": ["book_flight"]}).to_string(),
        )
        .unwrap();
        let out = tempfile::tempdir().unwrap();
        run(args("clinc150", Some(src.path().to_path_buf()), Some(out.path().to_path_buf()))).unwrap();
        let train = fs::read_to_string(out.path().join("train.jsonl")).unwrap();
        assert_eq!(train, "{\"text\": \"how much money do i have\", \"label\": \"banking\"}\n");
        assert!(out.path().join("val.jsonl").is_file());

        let err = run(args("clinc150", None, Some(out.path().to_path_buf()))).unwrap_err().to_string();
        assert!(err.contains("cannot be reached") && err.contains("--from DIR"), "{err}");
    }
}
