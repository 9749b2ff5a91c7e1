//! `cargo xtask fetch-data clinc150`: CLINC150 (Larson et al. 2019, CC BY 3.0) as
//! `data/clinc150/{train,val,test}.jsonl`, one `{"text": ..., "label": ...}` object per line.
//!
//! Each utterance is labelled with the *domain* of its intent (10 domains of 15 intents each,
//! from `domains.json`), so every domain is one specialist agent; out-of-scope (`oos`) rows are
//! dropped. The source is either the original repository's `data_full.json` (splits train, val,
//! test and their `oos_` twins) or `clinc150_train_val.json` (train and val only); both hold rows
//! `[utterance, intent]`.
//!
//! Sources, in order: the public repository clinc/oos-eval (`data/data_full.json` and
//! `data/domains.json`, downloaded after a 5 s reachability probe; `--url` or
//! `$MAPPO_CLINC150_URL` points at a mirror), then `--from DIR`, a local directory holding the
//! source files. The log says which one was used. (The Hugging Face copy of the data set is
//! Parquet with integer intent ids and has no intent → domain map, so it is not a source.)

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::common::{Options, write_if_changed};
use super::download::{download, public_url};

/// Source files accepted for CLINC150, in order of preference.
const CLINC_SOURCES: &[&str] = &["data_full.json", "clinc150_train_val.json"];
/// Intent → domain mapping file.
const CLINC_DOMAINS: &str = "domains.json";
/// Splits, in output order; `train` and `val` are required, `test` is optional.
const SPLITS: &[(&str, bool)] = &[("train", true), ("val", true), ("test", false)];
/// Label of out-of-scope rows.
const OOS_INTENT: &str = "oos";
/// The public repository's raw files (its `data/` directory).
const CLINC_PUBLIC_URL: &str = "https://raw.githubusercontent.com/clinc/oos-eval/master/data";
/// Environment variable that overrides [`CLINC_PUBLIC_URL`] (a mirror).
const CLINC_URL_ENV: &str = "MAPPO_CLINC150_URL";

/// Converts CLINC150 from the public source, else from `--from`, into `opts.out`.
pub fn run(opts: &Options) -> Result<()> {
    let url = public_url(opts.url.as_deref(), CLINC_URL_ENV, CLINC_PUBLIC_URL);
    let dl = tempfile::Builder::new().prefix("mappo-clinc150-").tempdir().context("temporary directory")?;
    let public = match download(&url, &[CLINC_SOURCES[0], CLINC_DOMAINS], dl.path(), opts.timeout) {
        Ok(()) => {
            eprintln!("using the public source {url}");
            true
        }
        Err(e) => {
            eprintln!("public source {url}: {e:#}");
            false
        }
    };
    let from = if public {
        dl.path().to_path_buf()
    } else if let Some(from) = &opts.from {
        eprintln!("falling back to --from {}", from.display());
        from.clone()
    } else {
        bail!(
            "clinc150: the public source cannot be reached; copy data/data_full.json and \
             data/domains.json of the clinc/oos-eval repository into a local directory and pass \
             `--from DIR` (a directory with clinc150_train_val.json and domains.json works too)"
        );
    };
    convert_from(&from, &opts.out)
}

/// Converts the source files found in `from` into `out`.
fn convert_from(from: &Path, out: &Path) -> Result<()> {
    if !from.is_dir() {
        bail!("--from {}: not a directory", from.display());
    }

    let bases = [from.to_path_buf(), from.join("data")];
    let source = bases
        .iter()
        .flat_map(|b| CLINC_SOURCES.iter().map(move |n| b.join(n)))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "{}: none of {} found (also looked in its data/ subdirectory)",
                from.display(),
                CLINC_SOURCES.join(", ")
            )
        })?;
    let source_dir = source.parent().unwrap_or(from).to_path_buf();
    let domains_path = std::iter::once(source_dir.join(CLINC_DOMAINS))
        .chain(bases.iter().map(|b| b.join(CLINC_DOMAINS)))
        .find(|p| p.is_file())
        .with_context(|| {
            format!("{}: {CLINC_DOMAINS} not found (it maps each intent to its domain)", source_dir.display())
        })?;

    eprintln!("source:  {}", source.display());
    eprintln!("domains: {}", domains_path.display());
    let domains = Domains::parse(&read_json(&domains_path)?)
        .with_context(|| format!("{}: invalid domains file", domains_path.display()))?;
    let splits = convert(&read_json(&source)?, &domains)
        .with_context(|| format!("{}: cannot convert", source.display()))?;

    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for s in &splits {
        let path = out.join(format!("{}.jsonl", s.name));
        let status = write_if_changed(&path, &to_jsonl(&s.rows))?;
        eprintln!(
            "{}: {} rows ({status}; {} out-of-scope rows dropped)",
            path.display(),
            s.rows.len(),
            s.oos_dropped
        );
    }
    if !splits.iter().any(|s| s.name == "test") && out.join("test.jsonl").exists() {
        eprintln!(
            "note: {} was left from an earlier run; this source has no test split",
            out.join("test.jsonl").display()
        );
    }
    print_counts(&splits, &domains);
    Ok(())
}

fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))
}

/// Intent → domain mapping, from a JSON object `{domain: [intent, ...], ...}`.
#[derive(Debug)]
struct Domains {
    /// Domain names, in the order serde_json gives them (sorted).
    names: Vec<String>,
    intent_to_domain: HashMap<String, String>,
}

impl Domains {
    fn parse(v: &Value) -> Result<Self> {
        let obj = v.as_object().context("expected an object mapping each domain to a list of intents")?;
        if obj.is_empty() {
            bail!("no domains");
        }
        let mut names = Vec::with_capacity(obj.len());
        let mut intent_to_domain = HashMap::new();
        for (domain, intents) in obj {
            let list = intents
                .as_array()
                .with_context(|| format!("domain {domain:?}: expected a list of intent names"))?;
            for (i, intent) in list.iter().enumerate() {
                let intent = intent.as_str().with_context(|| {
                    format!("domain {domain:?}, entry {i}: expected a string, got {intent}")
                })?;
                if let Some(prev) = intent_to_domain.insert(intent.to_owned(), domain.clone()) {
                    bail!("intent {intent:?} is listed under both {prev:?} and {domain:?}");
                }
            }
            names.push(domain.clone());
        }
        Ok(Self { names, intent_to_domain })
    }
}

/// One converted split: `(text, domain)` rows and how many out-of-scope rows were dropped.
#[derive(Debug)]
struct Split {
    name: &'static str,
    rows: Vec<(String, String)>,
    oos_dropped: usize,
}

/// Convert a CLINC150 source object (keys `train`, `val`, optionally `test`, and their `oos_`
/// twins) into labelled splits. Unknown intents are an error naming them.
fn convert(source: &Value, domains: &Domains) -> Result<Vec<Split>> {
    let obj = source.as_object().context("expected an object with keys train, val (and optionally test)")?;
    let mut splits = Vec::new();
    // Unknown intent → (rows, first place seen).
    let mut unknown: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for &(name, required) in SPLITS {
        let Some(rows) = obj.get(name) else {
            if required {
                bail!(
                    "split {name:?} missing (keys present: {})",
                    obj.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
            continue;
        };
        let mut split = Split { name, rows: Vec::new(), oos_dropped: 0 };
        for (i, row) in as_rows(rows, name)?.iter().enumerate() {
            let (text, intent) = parse_row(row).with_context(|| format!("{name}[{i}]"))?;
            if intent == OOS_INTENT {
                split.oos_dropped += 1;
            } else if let Some(domain) = domains.intent_to_domain.get(intent) {
                split.rows.push((text.to_owned(), domain.clone()));
            } else {
                unknown.entry(intent.to_owned()).or_insert_with(|| (0, format!("{name}[{i}]"))).0 += 1;
            }
        }
        let oos_key = format!("oos_{name}");
        if let Some(rows) = obj.get(&oos_key) {
            let rows = as_rows(rows, &oos_key)?;
            for (i, row) in rows.iter().enumerate() {
                parse_row(row).with_context(|| format!("{oos_key}[{i}]"))?;
            }
            split.oos_dropped += rows.len();
        }
        splits.push(split);
    }
    if !unknown.is_empty() {
        let list: Vec<String> = unknown
            .iter()
            .map(|(intent, (n, first))| {
                let rows = if *n == 1 { "row" } else { "rows" };
                format!("{intent:?} ({n} {rows}, first at {first})")
            })
            .collect();
        bail!("{} intent(s) not found in {CLINC_DOMAINS}: {}", unknown.len(), list.join(", "));
    }
    Ok(splits)
}

fn as_rows<'a>(v: &'a Value, key: &str) -> Result<&'a Vec<Value>> {
    v.as_array().with_context(|| format!("{key}: expected a list of [utterance, intent] rows"))
}

fn parse_row(row: &Value) -> Result<(&str, &str)> {
    match row.as_array().map(Vec::as_slice) {
        Some([Value::String(text), Value::String(intent)]) => Ok((text, intent)),
        _ => bail!("expected [utterance, intent] (two strings), got {row}"),
    }
}

fn to_jsonl(rows: &[(String, String)]) -> String {
    let mut s = String::with_capacity(rows.len() * 80);
    for (text, label) in rows {
        s.push_str("{\"text\": ");
        s.push_str(&Value::from(text.as_str()).to_string());
        s.push_str(", \"label\": ");
        s.push_str(&Value::from(label.as_str()).to_string());
        s.push_str("}\n");
    }
    s
}

fn print_counts(splits: &[Split], domains: &Domains) {
    let mut counts: Vec<BTreeMap<&str, usize>> = Vec::new();
    for s in splits {
        let mut m = BTreeMap::new();
        for (_, d) in &s.rows {
            *m.entry(d.as_str()).or_default() += 1;
        }
        counts.push(m);
    }
    let width = domains.names.iter().map(String::len).max().unwrap_or(6).max(6);
    print!("{:width$}", "domain");
    for s in splits {
        print!(" {:>7}", s.name);
    }
    println!();
    for d in domains.names.iter().map(String::as_str) {
        print!("{d:width$}");
        for m in &counts {
            print!(" {:>7}", m.get(d).copied().unwrap_or(0));
        }
        println!();
    }
    print!("{:width$}", "total");
    for s in splits {
        print!(" {:>7}", s.rows.len());
    }
    println!();
    print!("{:width$}", "oos (dropped)");
    for s in splits {
        print!(" {:>7}", s.oos_dropped);
    }
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn domains() -> Domains {
        Domains::parse(&json!({
            "banking": ["balance", "transfer"],
            "travel": ["book_flight"],
        }))
        .unwrap()
    }

    #[test]
    fn maps_intents_to_domains_and_drops_oos() {
        let src = json!({
            "train": [["how much money do i have", "balance"], ["fly me to rome", "book_flight"]],
            "val": [["send 5 dollars to sam", "transfer"], ["what is love", "oos"]],
            "oos_train": [["tell me about sharks", "oos"]],
            "oos_val": [["x", "oos"], ["y", "oos"]],
        });
        let splits = convert(&src, &domains()).unwrap();
        assert_eq!(splits.len(), 2, "no test split in the source");
        assert_eq!(splits[0].name, "train");
        assert_eq!(
            splits[0].rows,
            vec![
                ("how much money do i have".to_owned(), "banking".to_owned()),
                ("fly me to rome".to_owned(), "travel".to_owned()),
            ]
        );
        assert_eq!(splits[0].oos_dropped, 1);
        assert_eq!(splits[1].name, "val");
        assert_eq!(splits[1].rows, vec![("send 5 dollars to sam".to_owned(), "banking".to_owned())]);
        assert_eq!(splits[1].oos_dropped, 3);
    }

    #[test]
    fn test_split_is_converted_when_present() {
        let src = json!({
            "train": [["a", "balance"]],
            "val": [["b", "balance"]],
            "test": [["c", "book_flight"]],
            "oos_test": [["d", "oos"]],
        });
        let splits = convert(&src, &domains()).unwrap();
        let test = &splits[2];
        assert_eq!(test.name, "test");
        assert_eq!(test.rows, vec![("c".to_owned(), "travel".to_owned())]);
        assert_eq!(test.oos_dropped, 1);
    }

    #[test]
    fn unknown_intent_is_an_error_naming_it() {
        let src = json!({
            "train": [["a", "balance"], ["b", "order_pizza"], ["c", "order_pizza"]],
            "val": [],
        });
        let err = format!("{:#}", convert(&src, &domains()).unwrap_err());
        assert!(err.contains("\"order_pizza\" (2 rows, first at train[1])"), "{err}");
        assert!(err.contains("domains.json"), "{err}");
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let e = convert(&json!({"train": []}), &domains()).unwrap_err();
        assert!(format!("{e:#}").contains("\"val\" missing"), "{e:#}");
        let e = convert(&json!({"train": [["only text"]], "val": []}), &domains()).unwrap_err();
        assert!(format!("{e:#}").contains("train[0]"), "{e:#}");
        let e = Domains::parse(&json!({"a": ["x"], "b": ["x"]})).unwrap_err();
        assert!(format!("{e:#}").contains("\"x\""), "{e:#}");
        assert!(Domains::parse(&json!(["x"])).is_err());
    }

    #[test]
    fn jsonl_lines_have_text_then_label_and_escape() {
        let s = to_jsonl(&[("say \"hi\"\n".to_owned(), "small_talk".to_owned())]);
        assert_eq!(s, "{\"text\": \"say \\\"hi\\\"\\n\", \"label\": \"small_talk\"}\n");
        let v: Value = serde_json::from_str(s.trim_end()).unwrap();
        assert_eq!(v["text"], "say \"hi\"\n");
    }
}
