//! `cargo xtask fetch-data routellm`: per-prompt correctness of Mixtral-8x7B and GPT-4-1106 on
//! MMLU and GSM8K (lm-sys/RouteLLM, Apache-2.0) as outcome corpora,
//! `data/routellm/{mmlu,gsm8k}_{train,val}.jsonl`, one
//! `{"text": ..., "subject": ..., "outcomes": {"mixtral-8x7b": 0|1, "gpt-4-1106": 0|1}}` per line.
//! GSM8K rows have no `subject` but carry each model's answer text after the outcomes,
//! `"responses": {"mixtral-8x7b": "...", "gpt-4-1106": "..."}` (verbatim from the CSV's
//! `<model>_response` columns, for environments that show one model's answer to a second step).
//!
//! Sources, in order: the public repository's `routellm/evals` files (the 57
//! `mmlu/responses/mmlu_<subject>.csv`, `gsm8k/gsm8k_responses.csv` and both
//! `contaminated_prompts.jsonl`; downloaded after a reachability probe; `--url` or
//! `$MAPPO_ROUTELLM_URL` points at a mirror), then `--from DIR`: either a copy of that `evals`
//! directory (converted the same way) or a directory holding the four converted files (checked
//! and copied; when it also holds `raw/gsm8k_responses.csv`, the GSM8K rows without responses
//! get them from the CSV record whose `prompt` is their `text`, and keep their order and outcomes).
//! The conversion drops the contaminated prompts (as RouteLLM's own benchmarks do)
//! and splits by the sha256 of the text read as a big-endian integer, modulo 10: 2 → val,
//! 3–9 → train, 0–1 are a held-back test split that is not written. Lines are written as
//! Python's `json.dumps(row, ensure_ascii=False)` writes them, so a conversion made with Python
//! and this one are byte-identical.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::common::{Options, write_if_changed};
use super::download::{download, public_url};

/// The converted files.
pub const FILES: &[&str] = &["mmlu_train.jsonl", "mmlu_val.jsonl", "gsm8k_train.jsonl", "gsm8k_val.jsonl"];
/// The agents every row gives an outcome for, with their CSV columns (RouteLLM's model names).
const AGENTS: &[(&str, &str)] =
    &[("mixtral-8x7b", "mistralai/Mixtral-8x7B-Instruct-v0.1"), ("gpt-4-1106", "gpt-4-1106-preview")];
/// The public repository's `routellm/evals` directory.
const PUBLIC_URL: &str = "https://raw.githubusercontent.com/lm-sys/RouteLLM/main/routellm/evals";
/// Environment variable that overrides [`PUBLIC_URL`] (a mirror).
const URL_ENV: &str = "MAPPO_ROUTELLM_URL";
/// The 57 MMLU subjects of RouteLLM's `mmlu/responses/mmlu_<subject>.csv`.
const MMLU_SUBJECTS: &[&str] = &[
    "abstract_algebra",
    "anatomy",
    "astronomy",
    "business_ethics",
    "clinical_knowledge",
    "college_biology",
    "college_chemistry",
    "college_computer_science",
    "college_mathematics",
    "college_medicine",
    "college_physics",
    "computer_security",
    "conceptual_physics",
    "econometrics",
    "electrical_engineering",
    "elementary_mathematics",
    "formal_logic",
    "global_facts",
    "high_school_biology",
    "high_school_chemistry",
    "high_school_computer_science",
    "high_school_european_history",
    "high_school_geography",
    "high_school_government_and_politics",
    "high_school_macroeconomics",
    "high_school_mathematics",
    "high_school_microeconomics",
    "high_school_physics",
    "high_school_psychology",
    "high_school_statistics",
    "high_school_us_history",
    "high_school_world_history",
    "human_aging",
    "human_sexuality",
    "international_law",
    "jurisprudence",
    "logical_fallacies",
    "machine_learning",
    "management",
    "marketing",
    "medical_genetics",
    "miscellaneous",
    "moral_disputes",
    "moral_scenarios",
    "nutrition",
    "philosophy",
    "prehistory",
    "professional_accounting",
    "professional_law",
    "professional_medicine",
    "professional_psychology",
    "public_relations",
    "security_studies",
    "sociology",
    "us_foreign_policy",
    "virology",
    "world_religions",
];

/// Converts RouteLLM's outcomes from the public source, else from `--from` (RouteLLM's files
/// or the converted ones), into `opts.out`.
pub fn run(opts: &Options) -> Result<()> {
    let out = &opts.out;
    let url = public_url(opts.url.as_deref(), URL_ENV, PUBLIC_URL);
    let dl = tempfile::Builder::new().prefix("mappo-routellm-").tempdir().context("temporary directory")?;
    match download(&url, &public_files(), dl.path(), opts.timeout) {
        Ok(()) => {
            eprintln!("routellm: using the public source {url}");
            return convert_evals(dl.path(), out);
        }
        Err(e) => eprintln!("routellm: public source {url}: {e:#}"),
    }
    let Some(from) = &opts.from else {
        bail!(
            "routellm: the public source cannot be reached; pass `--from DIR`: a copy of the \
             lm-sys/RouteLLM repository's routellm/evals directory, or a directory with the \
             converted {}",
            FILES.join(", ")
        );
    };
    if from.join("mmlu").join("responses").is_dir() {
        eprintln!("routellm: converting the RouteLLM files in --from {}", from.display());
        convert_evals(from, out)
    } else {
        eprintln!("routellm: using the converted files in --from {}", from.display());
        copy_converted(from, out)
    }
}

/// The files [`convert_evals`] reads, relative to the `evals` directory.
fn public_files() -> Vec<String> {
    let mut files: Vec<String> =
        MMLU_SUBJECTS.iter().map(|s| format!("mmlu/responses/mmlu_{s}.csv")).collect();
    files.extend(
        ["mmlu/contaminated_prompts.jsonl", "gsm8k/gsm8k_responses.csv", "gsm8k/contaminated_prompts.jsonl"]
            .map(String::from),
    );
    files
}

/// Checks and copies already converted files from `from` to `out`; with
/// `from/raw/gsm8k_responses.csv`, adds the responses to the GSM8K rows (see [`add_responses`]).
fn copy_converted(from: &Path, out: &Path) -> Result<()> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let csv = from.join("raw").join("gsm8k_responses.csv");
    let responses = if csv.is_file() {
        eprintln!("routellm: adding the GSM8K responses of {}", csv.display());
        Some(responses_by_prompt(&csv)?)
    } else {
        eprintln!("routellm: no {}: GSM8K rows are copied without responses", csv.display());
        None
    };
    for name in FILES {
        let src = from.join(name);
        let text = fs::read_to_string(&src).with_context(|| format!("reading {}", src.display()))?;
        let mut rows = 0usize;
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(line)
                .with_context(|| format!("{}, line {}: not JSON", src.display(), n + 1))?;
            if !v.get("text").is_some_and(Value::is_string) {
                bail!("{}, line {}: no string `text`", src.display(), n + 1);
            }
            for (agent, _) in AGENTS {
                if !v.get("outcomes").and_then(|o| o.get(agent)).is_some_and(Value::is_number) {
                    bail!("{}, line {}: no numeric outcome for `{agent}`", src.display(), n + 1);
                }
            }
            rows += 1;
        }
        let path = out.join(name);
        match responses.as_ref().filter(|_| name.starts_with("gsm8k_")) {
            Some(by_prompt) => {
                let (text, added) = add_responses(&text, &src, by_prompt)?;
                let status = write_if_changed(&path, &text)?;
                eprintln!(
                    "{}: {rows} rows, {} with responses ({} already had them), {} without a \
                     prompt in {} ({status})",
                    path.display(),
                    added.matched + added.kept,
                    added.kept,
                    added.unmatched,
                    csv.display()
                );
                if added.unmatched > 0 {
                    eprintln!(
                        "routellm: warning: {} rows of {} match no prompt of {}: copied without \
                         responses",
                        added.unmatched,
                        src.display(),
                        csv.display()
                    );
                }
                if added.disagree > 0 {
                    eprintln!(
                        "routellm: warning: {} rows of {} have outcomes other than the True/False \
                         of their CSV record (the responses are added all the same)",
                        added.disagree,
                        src.display()
                    );
                }
            }
            None => {
                let status = write_if_changed(&path, &text)?;
                eprintln!("{}: {rows} rows ({status})", path.display());
            }
        }
    }
    Ok(())
}

/// What [`add_responses`] did to the rows of one file.
#[derive(Debug, Default, PartialEq)]
struct Added {
    /// Rows that got responses.
    matched: usize,
    /// Rows that already had `responses` (left as they are).
    kept: usize,
    /// Rows whose `text` is no CSV record's `prompt` (left as they are).
    unmatched: usize,
    /// Matched rows whose outcomes differ from their record's True/False.
    disagree: usize,
}

/// The `text` of a converted file with `"responses": {...}` added at the end of every row
/// whose `text` is exactly a record's `prompt` in `by_prompt` and that has no `responses` yet.
/// Every other byte is kept: the rows, their order, their outcomes and the line ends. `src`
/// names the file in errors.
fn add_responses(text: &str, src: &Path, by_prompt: &HashMap<String, Record>) -> Result<(String, Added)> {
    let mut out = String::with_capacity(text.len() * 3);
    let mut added = Added::default();
    for (n, piece) in text.split_inclusive('\n').enumerate() {
        let body = piece.trim_end_matches(['\n', '\r']);
        if body.trim().is_empty() {
            out.push_str(piece);
            continue;
        }
        let v: Value = serde_json::from_str(body)
            .with_context(|| format!("{}, line {}: not JSON", src.display(), n + 1))?;
        let row_text = v.get("text").and_then(Value::as_str);
        let row_text =
            row_text.with_context(|| format!("{}, line {}: no string `text`", src.display(), n + 1))?;
        if v.get("responses").is_some() {
            added.kept += 1;
            out.push_str(piece);
            continue;
        }
        let Some(rec) = by_prompt.get(row_text) else {
            added.unmatched += 1;
            out.push_str(piece);
            continue;
        };
        let Some(responses) = &rec.responses else {
            bail!("{}, line {}: its CSV record has no responses", src.display(), n + 1);
        };
        let open = body.trim_end().strip_suffix('}');
        let open = open.with_context(|| format!("{}, line {}: not a JSON object", src.display(), n + 1))?;
        out.push_str(open);
        out.push_str(", ");
        out.push_str(&responses_json(responses)?);
        out.push('}');
        out.push_str(&piece[body.len()..]);
        added.matched += 1;
        let same = AGENTS.iter().zip(&rec.outcomes).all(|((agent, _), &o)| {
            v.get("outcomes").and_then(|x| x.get(agent)).and_then(Value::as_f64) == Some(f64::from(o))
        });
        if !same {
            added.disagree += 1;
        }
    }
    Ok((out, added))
}

/// The records of a GSM8K responses CSV by prompt (the first record of a prompt that occurs
/// more than once).
fn responses_by_prompt(path: &Path) -> Result<HashMap<String, Record>> {
    let mut out = HashMap::new();
    for rec in read_csv(path, true)? {
        out.entry(rec.text.clone()).or_insert(rec);
    }
    Ok(out)
}

/// The split of a text: sha256 as a big-endian integer, modulo 10 (2 → val, 3–9 → train,
/// 0–1 → the held-back test split, `None`).
fn split_of(text: &str) -> Option<&'static str> {
    let bucket = Sha256::digest(text.as_bytes()).iter().fold(0u32, |r, &b| (r * 256 + u32::from(b)) % 10);
    match bucket {
        2 => Some("val"),
        3..=9 => Some("train"),
        _ => None,
    }
}

/// The `eval_prompt` of every line of a `contaminated_prompts.jsonl`; an absent file is empty
/// (with a warning).
fn contaminated(path: &Path) -> Result<HashSet<String>> {
    let Ok(text) = fs::read_to_string(path) else {
        eprintln!("routellm: {} not found: no prompt is removed as contaminated", path.display());
        return Ok(HashSet::new());
    };
    let mut out = HashSet::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{}, line {}: not JSON", path.display(), n + 1))?;
        let p = v.get("eval_prompt").and_then(Value::as_str);
        let p = p.with_context(|| format!("{}, line {}: no string `eval_prompt`", path.display(), n + 1))?;
        out.insert(p.to_string());
    }
    Ok(out)
}

/// One output line, as Python's `json.dumps(row, ensure_ascii=False)` writes it.
fn line(text: &str, subject: Option<&str>, outcomes: &[u8], responses: Option<&[String]>) -> Result<String> {
    let mut s = format!("{{\"text\": {}", serde_json::to_string(text)?);
    if let Some(subject) = subject {
        s.push_str(&format!(", \"subject\": {}", serde_json::to_string(subject)?));
    }
    s.push_str(", \"outcomes\": {");
    for (i, ((agent, _), o)) in AGENTS.iter().zip(outcomes).enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&format!("\"{agent}\": {o}"));
    }
    s.push('}');
    if let Some(responses) = responses {
        s.push_str(", ");
        s.push_str(&responses_json(responses)?);
    }
    s.push_str("}\n");
    Ok(s)
}

/// `"responses": {"<agent>": "<text>", ...}` (in [`AGENTS`] order), as Python's `json.dumps`
/// with `ensure_ascii=False` writes that member.
fn responses_json(responses: &[String]) -> Result<String> {
    let mut s = String::from("\"responses\": {");
    for (i, ((agent, _), r)) in AGENTS.iter().zip(responses).enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&format!("\"{agent}\": {}", serde_json::to_string(r)?));
    }
    s.push('}');
    Ok(s)
}

/// One record of a RouteLLM CSV.
#[derive(Debug)]
struct Record {
    /// The `prompt`.
    text: String,
    /// Each agent's outcome (in [`AGENTS`] order): 1 for `True`, 0 for `False`.
    outcomes: Vec<u8>,
    /// Each agent's answer (in [`AGENTS`] order), from the `<column>_response` columns, when
    /// they were asked for.
    responses: Option<Vec<String>>,
}

/// Reads a RouteLLM CSV: `prompt` and a `True`/`False` column per agent, and with `responses`
/// also the agent's `<column>_response` text column (an error when absent).
fn read_csv(path: &Path, responses: bool) -> Result<Vec<Record>> {
    let mut r = csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let headers = r.headers().with_context(|| format!("{}: the header", path.display()))?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("{}: no `{name}` column", path.display()))
    };
    let prompt = col("prompt")?;
    let cols: Vec<usize> = AGENTS.iter().map(|(_, c)| col(c)).collect::<Result<_>>()?;
    let response_cols: Option<Vec<usize>> = if responses {
        Some(AGENTS.iter().map(|(_, c)| col(&format!("{c}_response"))).collect::<Result<_>>()?)
    } else {
        None
    };
    let mut out = Vec::new();
    for (n, rec) in r.records().enumerate() {
        let rec = rec.with_context(|| format!("{}, record {}", path.display(), n + 1))?;
        let text = rec.get(prompt).unwrap_or_default().to_string();
        let mut outcomes = Vec::with_capacity(cols.len());
        for (&c, (agent, column)) in cols.iter().zip(AGENTS) {
            outcomes.push(match rec.get(c) {
                Some("True") => 1,
                Some("False") => 0,
                other => bail!(
                    "{}, record {}: `{column}` ({agent}) is {other:?}, not True or False",
                    path.display(),
                    n + 1
                ),
            });
        }
        let responses = match &response_cols {
            None => None,
            Some(rcols) => {
                let mut v = Vec::with_capacity(rcols.len());
                for (&c, (agent, column)) in rcols.iter().zip(AGENTS) {
                    let r = rec.get(c).with_context(|| {
                        format!("{}, record {}: no `{column}_response` ({agent})", path.display(), n + 1)
                    })?;
                    v.push(r.to_string());
                }
                Some(v)
            }
        };
        out.push(Record { text, outcomes, responses });
    }
    Ok(out)
}

/// Appends the rows of one RouteLLM CSV (see [`read_csv`]; with `responses`, the rows carry
/// them) to `train` and `val`; returns (rows read, rows dropped as contaminated).
fn convert_csv(
    path: &Path,
    subject: Option<&str>,
    responses: bool,
    skip: &HashSet<String>,
    train: &mut String,
    val: &mut String,
) -> Result<(usize, usize)> {
    let records = read_csv(path, responses)?;
    let (rows, mut dropped) = (records.len(), 0);
    for rec in &records {
        if skip.contains(&rec.text) {
            dropped += 1;
            continue;
        }
        let row = || line(&rec.text, subject, &rec.outcomes, rec.responses.as_deref());
        match split_of(&rec.text) {
            Some("val") => val.push_str(&row()?),
            Some(_) => train.push_str(&row()?),
            None => {}
        }
    }
    Ok((rows, dropped))
}

/// Converts a RouteLLM `evals` directory into the four files in `out`.
pub fn convert_evals(evals: &Path, out: &Path) -> Result<()> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // MMLU: every mmlu_<subject>.csv, in file-name order.
    let dir = evals.join("mmlu").join("responses");
    let mut csvs: Vec<(String, PathBuf)> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            let subject = name.strip_prefix("mmlu_")?.strip_suffix(".csv")?.to_string();
            Some((subject, p))
        })
        .collect();
    csvs.sort();
    if csvs.is_empty() {
        bail!("{}: no mmlu_<subject>.csv", dir.display());
    }
    let skip = contaminated(&evals.join("mmlu").join("contaminated_prompts.jsonl"))?;
    let (mut train, mut val) = (String::new(), String::new());
    let (mut rows, mut dropped) = (0, 0);
    for (subject, path) in &csvs {
        let (r, d) = convert_csv(path, Some(subject), false, &skip, &mut train, &mut val)?;
        rows += r;
        dropped += d;
    }
    eprintln!("routellm: MMLU, {} subjects: {rows} prompts, {dropped} contaminated dropped", csvs.len());
    write(out, "mmlu", &train, &val)?;
    // GSM8K.
    let skip = contaminated(&evals.join("gsm8k").join("contaminated_prompts.jsonl"))?;
    let (mut train, mut val) = (String::new(), String::new());
    let gsm8k = evals.join("gsm8k").join("gsm8k_responses.csv");
    let (rows, dropped) = convert_csv(&gsm8k, None, true, &skip, &mut train, &mut val)?;
    eprintln!("routellm: GSM8K: {rows} prompts, {dropped} contaminated dropped");
    write(out, "gsm8k", &train, &val)
}

fn write(out: &Path, name: &str, train: &str, val: &str) -> Result<()> {
    for (split, text) in [("train", train), ("val", val)] {
        let path = out.join(format!("{name}_{split}.jsonl"));
        let status = write_if_changed(&path, text)?;
        eprintln!("{}: {} rows ({status})", path.display(), text.lines().count());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two responses (Mixtral's, GPT-4's) the fixture gives the `i`-th GSM8K record: a
    /// leading space, newlines, a comma and quotes, as in RouteLLM's file.
    fn responses_of(i: usize) -> [String; 2] {
        [format!(" Step {i}, then \"{i}\".\n#### {i}\n"), format!("The answer is {i} — ünï.")]
    }

    /// A RouteLLM-shaped `evals` directory: quoted prompts with newlines, commas and doubled
    /// quotes, a contaminated prompt, rows in every split bucket, and GSM8K response columns.
    fn fixture(dir: &Path) -> Vec<String> {
        let texts: Vec<String> =
            (0..40).map(|i| format!("Question {i}, \"quoted\" — ünï\nA. yes\nB. no\nAnswer:")).collect();
        fs::create_dir_all(dir.join("mmlu/responses")).unwrap();
        fs::create_dir_all(dir.join("gsm8k")).unwrap();
        let csv_of = |rows: &[String], extra: &str| {
            let mut s = format!("prompt,mistralai/Mixtral-8x7B-Instruct-v0.1,gpt-4-1106-preview{extra}\n");
            for (i, t) in rows.iter().enumerate() {
                let q = t.replace('"', "\"\"");
                let resp = if extra.is_empty() {
                    String::new()
                } else {
                    let [a, b] = responses_of(i).map(|r| r.replace('"', "\"\""));
                    format!(",\"{a}\",\"{b}\"")
                };
                s.push_str(&format!(
                    "\"{q}\",{},{}{resp}\n",
                    if i % 2 == 0 { "True" } else { "False" },
                    if i % 3 == 0 { "False" } else { "True" }
                ));
            }
            s
        };
        fs::write(dir.join("mmlu/responses/mmlu_zoology.csv"), csv_of(&texts[..20], "")).unwrap();
        fs::write(dir.join("mmlu/responses/mmlu_anatomy.csv"), csv_of(&texts[20..30], "")).unwrap();
        fs::write(
            dir.join("gsm8k/gsm8k_responses.csv"),
            csv_of(
                &texts[30..],
                ",mistralai/Mixtral-8x7B-Instruct-v0.1_response,gpt-4-1106-preview_response",
            ),
        )
        .unwrap();
        let contaminated = format!("{}\n", serde_json::json!({ "eval_prompt": texts[21] }));
        fs::write(dir.join("mmlu/contaminated_prompts.jsonl"), contaminated).unwrap();
        texts
    }

    #[test]
    fn converts_the_csvs_split_by_hash_without_contaminated_prompts() {
        let tmp = tempfile::tempdir().unwrap();
        let texts = fixture(&tmp.path().join("evals"));
        let out = tmp.path().join("out");
        convert_evals(&tmp.path().join("evals"), &out).unwrap();
        let read = |name: &str| -> Vec<Value> {
            fs::read_to_string(out.join(name))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        let (mt, mv, gt, gv) = (
            read("mmlu_train.jsonl"),
            read("mmlu_val.jsonl"),
            read("gsm8k_train.jsonl"),
            read("gsm8k_val.jsonl"),
        );
        // Every row in its bucket's file, the held-back buckets and the contaminated one nowhere.
        for (i, t) in texts.iter().enumerate() {
            let (train, val) = if i < 30 { (&mt, &mv) } else { (&gt, &gv) };
            let found = |rows: &Vec<Value>| rows.iter().any(|r| r["text"] == t.as_str());
            let want = if i == 21 { None } else { split_of(t) };
            assert_eq!(found(train), want == Some("train"), "row {i}");
            assert_eq!(found(val), want == Some("val"), "row {i}");
        }
        assert!(!mt.is_empty() && !mv.is_empty() && !gt.is_empty(), "the fixture covers every split");
        // Subjects in file-name order (anatomy before zoology), outcomes from True/False.
        let first = &mt[0];
        assert_eq!(first["subject"], "anatomy");
        let i = texts.iter().position(|t| first["text"] == t.as_str()).unwrap() - 20;
        assert_eq!(first["outcomes"]["mixtral-8x7b"], if i % 2 == 0 { 1 } else { 0 });
        assert_eq!(first["outcomes"]["gpt-4-1106"], if i % 3 == 0 { 0 } else { 1 });
        assert!(gt.iter().all(|r| r.get("subject").is_none()), "GSM8K rows have no subject");
        // GSM8K rows carry both responses, verbatim; MMLU rows none.
        assert!(mt.iter().chain(&mv).all(|r| r.get("responses").is_none()), "MMLU rows have no responses");
        for r in gt.iter().chain(&gv) {
            let i = texts.iter().position(|t| r["text"] == t.as_str()).unwrap() - 30;
            let [a, b] = responses_of(i);
            assert_eq!(r["responses"], serde_json::json!({ "mixtral-8x7b": a, "gpt-4-1106": b }), "row {i}");
        }
        let raw = fs::read_to_string(out.join("gsm8k_train.jsonl")).unwrap();
        let l = raw.lines().next().unwrap();
        let i = texts.iter().position(|t| gt[0]["text"] == t.as_str()).unwrap() - 30;
        let [a, b] = responses_of(i);
        let tail = format!(
            "}}, \"responses\": {{\"mixtral-8x7b\": {}, \"gpt-4-1106\": {}}}}}",
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        assert!(l.ends_with(&tail) && l.contains(&format!("#### {i}\\n")) && !l.contains("\\u00"), "{l}");
        // Python's json.dumps(row, ensure_ascii=False) layout.
        let raw = fs::read_to_string(out.join("mmlu_train.jsonl")).unwrap();
        let l = raw.lines().next().unwrap();
        assert!(
            l.starts_with("{\"text\": \"Question ") && l.contains("\\\"quoted\\\" — ünï\\nA. yes"),
            "{l}"
        );
        let (a, b) = (first["outcomes"]["mixtral-8x7b"].clone(), first["outcomes"]["gpt-4-1106"].clone());
        let want = format!(
            "{{\"text\": {}, \"subject\": \"anatomy\", \"outcomes\": {{\"mixtral-8x7b\": {a}, \"gpt-4-1106\": {b}}}}}",
            serde_json::to_string(first["text"].as_str().unwrap()).unwrap()
        );
        assert_eq!(l, want);
    }

    #[test]
    fn a_bad_outcome_names_the_file_record_and_column() {
        let tmp = tempfile::tempdir().unwrap();
        let evals = tmp.path().join("evals");
        fixture(&evals);
        fs::write(
            evals.join("mmlu/responses/mmlu_anatomy.csv"),
            "prompt,mistralai/Mixtral-8x7B-Instruct-v0.1,gpt-4-1106-preview\nq,True,maybe\n",
        )
        .unwrap();
        let e = convert_evals(&evals, &tmp.path().join("out")).unwrap_err().to_string();
        assert!(e.contains("mmlu_anatomy.csv, record 1") && e.contains("gpt-4-1106-preview"), "{e}");
    }

    #[test]
    fn gsm8k_without_response_columns_names_the_file_and_column() {
        let tmp = tempfile::tempdir().unwrap();
        let evals = tmp.path().join("evals");
        fixture(&evals);
        fs::write(
            evals.join("gsm8k/gsm8k_responses.csv"),
            "prompt,mistralai/Mixtral-8x7B-Instruct-v0.1,gpt-4-1106-preview\nq,True,False\n",
        )
        .unwrap();
        let e = convert_evals(&evals, &tmp.path().join("out")).unwrap_err().to_string();
        assert!(
            e.contains("gsm8k_responses.csv") && e.contains("mistralai/Mixtral-8x7B-Instruct-v0.1_response"),
            "{e}"
        );
    }

    /// Removes the `responses` member a converted line ends with.
    fn without_responses(l: &str) -> String {
        match l.find(", \"responses\": ") {
            Some(at) => format!("{}}}", &l[..at]),
            None => l.to_string(),
        }
    }

    #[test]
    fn copying_converted_files_adds_the_responses_of_raw_csv() {
        let tmp = tempfile::tempdir().unwrap();
        let evals = tmp.path().join("evals");
        fixture(&evals);
        let full = tmp.path().join("full");
        convert_evals(&evals, &full).unwrap();
        // A converted directory as the shared copy has it: GSM8K rows without responses, one
        // row that is in no CSV record, CRLF line ends in one file, and the raw CSV.
        let conv = tmp.path().join("converted");
        fs::create_dir_all(conv.join("raw")).unwrap();
        let stray = "{\"text\": \"not in the CSV\", \"outcomes\": {\"mixtral-8x7b\": 0, \"gpt-4-1106\": 1}}";
        for name in FILES {
            let text = fs::read_to_string(full.join(name)).unwrap();
            let mut lines: Vec<String> = text.lines().map(without_responses).collect();
            if *name == "gsm8k_train.jsonl" {
                lines.insert(1, stray.to_string());
            }
            let eol = if *name == "gsm8k_val.jsonl" { "\r\n" } else { "\n" };
            fs::write(conv.join(name), lines.iter().map(|l| format!("{l}{eol}")).collect::<String>())
                .unwrap();
        }
        // Without the raw CSV the files are copied as they are.
        let plain = tmp.path().join("plain");
        copy_converted(&conv, &plain).unwrap();
        for name in FILES {
            assert_eq!(fs::read(plain.join(name)).unwrap(), fs::read(conv.join(name)).unwrap(), "{name}");
        }
        fs::copy(evals.join("gsm8k/gsm8k_responses.csv"), conv.join("raw/gsm8k_responses.csv")).unwrap();
        let out = tmp.path().join("out");
        copy_converted(&conv, &out).unwrap();
        // MMLU unchanged; GSM8K as the conversion from the CSVs writes it, in the same order,
        // the stray row kept without responses, the line ends kept.
        for name in ["mmlu_train.jsonl", "mmlu_val.jsonl"] {
            assert_eq!(fs::read(out.join(name)).unwrap(), fs::read(conv.join(name)).unwrap(), "{name}");
        }
        let got = fs::read_to_string(out.join("gsm8k_train.jsonl")).unwrap();
        let mut want: Vec<String> =
            fs::read_to_string(full.join("gsm8k_train.jsonl")).unwrap().lines().map(String::from).collect();
        want.insert(1, stray.to_string());
        assert_eq!(got, want.iter().map(|l| format!("{l}\n")).collect::<String>());
        let got = fs::read_to_string(out.join("gsm8k_val.jsonl")).unwrap();
        let want = fs::read_to_string(full.join("gsm8k_val.jsonl")).unwrap().replace('\n', "\r\n");
        assert_eq!(got, want);
        assert!(got.contains("\"responses\""), "the fixture has GSM8K val rows");
        // Copying the result again keeps it as it is (rows that have responses are left alone).
        let again = tmp.path().join("again");
        fs::create_dir_all(again.join("raw")).unwrap();
        for name in FILES {
            fs::copy(out.join(name), again.join(name)).unwrap();
        }
        fs::copy(evals.join("gsm8k/gsm8k_responses.csv"), again.join("raw/gsm8k_responses.csv")).unwrap();
        let out2 = tmp.path().join("out2");
        copy_converted(&again, &out2).unwrap();
        for name in FILES {
            assert_eq!(fs::read(out2.join(name)).unwrap(), fs::read(out.join(name)).unwrap(), "{name}");
        }
    }

    #[test]
    fn add_responses_counts_and_a_bad_csv_names_file_and_record() {
        let rec = |t: &str, o: [u8; 2]| Record {
            text: t.into(),
            outcomes: o.to_vec(),
            responses: Some(vec!["a".into(), "b".into()]),
        };
        let by_prompt: HashMap<String, Record> =
            [("x".to_string(), rec("x", [1, 0])), ("y".to_string(), rec("y", [1, 1]))].into();
        let text = "{\"text\": \"x\", \"outcomes\": {\"mixtral-8x7b\": 1, \"gpt-4-1106\": 0}}\n\n\
                    {\"text\": \"y\", \"outcomes\": {\"mixtral-8x7b\": 0, \"gpt-4-1106\": 1}}\n\
                    {\"text\": \"z\", \"outcomes\": {\"mixtral-8x7b\": 0, \"gpt-4-1106\": 1}}";
        let (out, added) = add_responses(text, Path::new("g.jsonl"), &by_prompt).unwrap();
        assert_eq!(added, Added { matched: 2, kept: 0, unmatched: 1, disagree: 1 });
        assert!(out.starts_with(
            "{\"text\": \"x\", \"outcomes\": {\"mixtral-8x7b\": 1, \"gpt-4-1106\": 0}, \
             \"responses\": {\"mixtral-8x7b\": \"a\", \"gpt-4-1106\": \"b\"}}\n\n"
        ));
        assert!(out.ends_with("\"z\", \"outcomes\": {\"mixtral-8x7b\": 0, \"gpt-4-1106\": 1}}"), "{out}");
        let e = add_responses("{\"text\": \"x\"}\n{\"text\": 1}\n", Path::new("g.jsonl"), &by_prompt)
            .unwrap_err()
            .to_string();
        assert!(e.contains("g.jsonl, line 2"), "{e}");
        // A record with too few fields in the raw CSV.
        let tmp = tempfile::tempdir().unwrap();
        let csv = tmp.path().join("gsm8k_responses.csv");
        fs::write(
            &csv,
            "prompt,mistralai/Mixtral-8x7B-Instruct-v0.1,gpt-4-1106-preview,\
             mistralai/Mixtral-8x7B-Instruct-v0.1_response,gpt-4-1106-preview_response\n\
             q,True,False,\"a\nb\",c\nr,True,False,d\n",
        )
        .unwrap();
        let e = responses_by_prompt(&csv).unwrap_err().to_string();
        assert!(e.contains("gsm8k_responses.csv, record 2"), "{e}");
    }

    #[test]
    fn the_split_is_the_digest_as_a_big_integer_mod_10() {
        // sha256("abc") = ba7816bf…f20015ad; as an integer it is ≡ 5 (mod 10) (Python:
        // int(hashlib.sha256(b"abc").hexdigest(), 16) % 10).
        let d = Sha256::digest(b"abc");
        let big = d.iter().fold(0u32, |r, &b| (r * 256 + u32::from(b)) % 10);
        assert_eq!(big, 5);
        assert_eq!(split_of("abc"), Some("train"));
    }
}
