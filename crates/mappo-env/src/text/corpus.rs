//! Corpora: JSON lines `{"text": "...", "label": "<agent>"}`, optionally with every agent's
//! known reward, `"outcomes": {"<agent>": reward, ...}` (outcome corpora), and with agents'
//! answer texts, `"responses": {"<agent>": "...", ...}` (e.g. RouteLLM's GSM8K rows).

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use mappo_config::AgentSpec;
use serde_json::{Map, Value};

use crate::EnvError;

/// One prompt of a corpus.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// The text.
    pub text: String,
    /// Index of its labelled agent, if labelled.
    pub label: Option<usize>,
    /// The known reward of each agent (in agent order) from the row's `outcomes`; `None` for
    /// an agent the row gives none for, and an empty vector for a row without `outcomes`.
    pub outcomes: Vec<Option<f32>>,
    /// Each agent's answer text (in agent order) from the row's `responses`; `None` for an
    /// agent the row gives none for, and an empty vector for a row without `responses`.
    pub responses: Vec<Option<String>>,
}

/// Reads JSON lines: one object per non-blank line, with its 1-based line number. A UTF-8
/// byte-order mark at the start is skipped. Errors name `origin` (a path, or e.g. `stdin`)
/// and the line. Shared by corpora and every other JSON-lines input (e.g. `mappo embed`).
pub fn json_lines(
    reader: impl BufRead,
    origin: &str,
) -> impl Iterator<Item = Result<(usize, Map<String, Value>), EnvError>> {
    let origin = origin.to_string();
    reader.lines().enumerate().filter_map(move |(n, line)| {
        let err = |problem: String| EnvError::Corpus { path: origin.clone(), line: Some(n + 1), problem };
        let line = match line {
            Ok(l) => l,
            Err(e) => return Some(Err(err(format!("cannot read: {e}")))),
        };
        let line = if n == 0 { line.strip_prefix('\u{feff}').unwrap_or(&line) } else { &line };
        if line.trim().is_empty() {
            return None;
        }
        Some(match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(obj)) => Ok((n + 1, obj)),
            Ok(_) => Err(err("expected a JSON object".into())),
            Err(e) => Err(err(format!("not valid JSON: {e}"))),
        })
    })
}

/// Reads a JSON-lines corpus: one `{"text": "...", "label": "<agent>"}` per
/// line (`label` optional; blank lines and a leading byte-order mark skipped), optionally with
/// `"outcomes": {"<agent>": number, ...}` (names of agents not configured are ignored, so a
/// table of many models can serve a router over some of them) and
/// `"responses": {"<agent>": "text", ...}` (every name must be a configured agent). Errors name
/// the file and line.
pub fn load_corpus(path: &Path, agents: &[AgentSpec]) -> Result<Vec<Prompt>, EnvError> {
    let origin = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| EnvError::Corpus {
        path: origin.clone(),
        line: None,
        problem: format!("cannot open: {e}"),
    })?;
    let index: HashMap<&str, usize> = agents.iter().enumerate().map(|(i, a)| (a.name.as_str(), i)).collect();
    let mut out = Vec::new();
    for item in json_lines(std::io::BufReader::new(file), &origin) {
        let (n, obj) = item?;
        let err = |problem: String| EnvError::Corpus { path: origin.clone(), line: Some(n), problem };
        let text = match obj.get("text") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(err("`text` must be a string".into())),
            None => return Err(err("missing `text`".into())),
        };
        let label = match obj.get("label") {
            None | Some(Value::Null) => None,
            Some(Value::String(l)) => Some(*index.get(l.as_str()).ok_or_else(|| {
                let names: Vec<&str> = agents.iter().map(|a| a.name.as_str()).collect();
                err(format!("label `{l}` is not an agent (agents: {})", names.join(", ")))
            })?),
            Some(_) => return Err(err("`label` must be a string".into())),
        };
        let outcomes = match obj.get("outcomes") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(o)) => {
                let mut v = vec![None; agents.len()];
                for (name, r) in o {
                    let Some(&i) = index.get(name.as_str()) else { continue };
                    match r.as_f64().filter(|x| x.is_finite()) {
                        Some(x) => v[i] = Some(x as f32),
                        None => {
                            return Err(err(format!("outcome of `{name}` must be a finite number, got {r}")));
                        }
                    }
                }
                v
            }
            Some(_) => return Err(err("`outcomes` must be an object {\"agent\": reward, ...}".into())),
        };
        let responses = match obj.get("responses") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(o)) => {
                let mut v = vec![None; agents.len()];
                for (name, r) in o {
                    let Some(&i) = index.get(name.as_str()) else {
                        let names: Vec<&str> = agents.iter().map(|a| a.name.as_str()).collect();
                        return Err(err(format!(
                            "response of `{name}`: not an agent (agents: {})",
                            names.join(", ")
                        )));
                    };
                    match r {
                        Value::String(t) => v[i] = Some(t.clone()),
                        _ => return Err(err(format!("response of `{name}` must be a string, got {r}"))),
                    }
                }
                v
            }
            Some(_) => return Err(err("`responses` must be an object {\"agent\": \"text\", ...}".into())),
        };
        out.push(Prompt { text, label, outcomes, responses });
    }
    if out.is_empty() {
        return Err(EnvError::Corpus {
            path: origin,
            line: None,
            problem: "the corpus is empty: expected JSON lines {\"text\": ..., \"label\": ...}".into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agents() -> Vec<AgentSpec> {
        ["code", "math"]
            .iter()
            .map(|n| AgentSpec { name: n.to_string(), description: String::new(), cost: 0.0 })
            .collect()
    }

    fn write(lines: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        std::io::Write::write_all(&mut f, lines.as_bytes()).expect("write");
        f
    }

    #[test]
    fn corpus_parses_and_errors_name_file_and_line() {
        let f = write(
            "{\"text\": \"fix my loop\", \"label\": \"code\"}\n\n{\"text\": \"\"}\n{\"text\": \"2+2\", \"label\": \"math\"}\n",
        );
        let c = load_corpus(f.path(), &agents()).expect("corpus");
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].label, Some(0));
        assert_eq!(
            c[1],
            Prompt { text: String::new(), label: None, outcomes: Vec::new(), responses: Vec::new() }
        );
        for (body, needle, line) in [
            ("{\"text\": \"a\"}\nnot json\n", "not valid JSON", 2),
            ("{\"label\": \"code\"}\n", "missing `text`", 1),
            ("{\"text\": \"a\", \"label\": \"cooking\"}\n", "`cooking` is not an agent", 1),
            ("{\"text\": 3}\n", "must be a string", 1),
            ("\n[1, 2]\n", "expected a JSON object", 2),
        ] {
            let f = write(body);
            let e = load_corpus(f.path(), &agents()).expect_err(body).to_string();
            assert!(e.contains(needle) && e.contains(&format!("line {line}")), "{e}");
            assert!(e.contains(&f.path().display().to_string()), "{e}");
        }
        let f = write("\n");
        assert!(load_corpus(f.path(), &agents()).expect_err("empty").to_string().contains("empty"));
    }

    #[test]
    fn a_byte_order_mark_is_skipped_on_the_first_line_only() {
        let f = write("\u{feff}{\"text\": \"fix my loop\", \"label\": \"code\"}\n{\"text\": \"2+2\"}\n");
        let c = load_corpus(f.path(), &agents()).expect("a corpus with a BOM loads");
        assert_eq!(
            c[0],
            Prompt {
                text: "fix my loop".into(),
                label: Some(0),
                outcomes: Vec::new(),
                responses: Vec::new()
            }
        );
        assert_eq!(c.len(), 2);
        // A BOM in the middle of the file is not a line start marker: it is an error there.
        let f = write("{\"text\": \"a\"}\n\u{feff}{\"text\": \"b\"}\n");
        let e = load_corpus(f.path(), &agents()).expect_err("BOM on line 2").to_string();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn outcomes_are_read_per_agent() {
        let f = write(
            "{\"text\": \"a\", \"outcomes\": {\"math\": 1, \"code\": 0.5, \"gpt-5\": 1}}\n{\"text\": \"b\", \"outcomes\": {\"code\": 0}}\n",
        );
        let c = load_corpus(f.path(), &agents()).expect("corpus");
        assert_eq!(c[0].outcomes, vec![Some(0.5), Some(1.0)], "agent order, unknown names ignored");
        assert_eq!(c[1].outcomes, vec![Some(0.0), None]);
        for (body, needle) in [
            ("{\"text\": \"a\", \"outcomes\": [1, 0]}\n", "`outcomes` must be an object"),
            (
                "{\"text\": \"a\", \"outcomes\": {\"code\": \"yes\"}}\n",
                "outcome of `code` must be a finite number",
            ),
        ] {
            let f = write(body);
            let e = load_corpus(f.path(), &agents()).expect_err(body).to_string();
            assert!(e.contains(needle) && e.contains("line 1"), "{e}");
        }
    }

    #[test]
    fn responses_are_read_per_agent() {
        let f = write(concat!(
            "{\"text\": \"a\", \"outcomes\": {\"code\": 1}, \"responses\": {\"math\": \" 4\\n#### 4\", \"code\": \"\"}}\n",
            "{\"text\": \"b\", \"responses\": {\"code\": \"ok — ünï\"}}\n",
            "{\"text\": \"c\", \"responses\": null}\n",
            "{\"text\": \"d\"}\n",
        ));
        let c = load_corpus(f.path(), &agents()).expect("corpus");
        assert_eq!(c[0].responses, vec![Some(String::new()), Some(" 4\n#### 4".into())], "agent order");
        assert_eq!(c[0].outcomes, vec![Some(1.0), None]);
        assert_eq!(c[1].responses, vec![Some("ok — ünï".into()), None]);
        assert!(c[1].outcomes.is_empty());
        assert!(c[2].responses.is_empty() && c[3].responses.is_empty(), "no responses: an empty vector");
        for (body, needle) in [
            ("{\"text\": \"a\", \"responses\": [\"x\"]}\n", "`responses` must be an object"),
            ("{\"text\": \"a\", \"responses\": \"x\"}\n", "`responses` must be an object"),
            (
                "{\"text\": \"a\", \"responses\": {\"math\": 4}}\n",
                "response of `math` must be a string, got 4",
            ),
            ("{\"text\": \"a\", \"responses\": {\"code\": null}}\n", "response of `code` must be a string"),
            (
                "{\"text\": \"a\", \"responses\": {\"gpt-5\": \"x\"}}\n",
                "`gpt-5`: not an agent (agents: code, math)",
            ),
        ] {
            let f = write(&format!("{{\"text\": \"ok\"}}\n{body}"));
            let e = load_corpus(f.path(), &agents()).expect_err(body).to_string();
            assert!(e.contains(needle) && e.contains("line 2"), "{e}");
            assert!(e.contains(&f.path().display().to_string()), "{e}");
        }
    }

    #[test]
    fn json_lines_gives_objects_with_line_numbers() {
        let input = "\u{feff}{\"text\": \"a\", \"id\": 7}\n\n{\"text\": \"b\"}\n";
        let rows: Vec<_> = json_lines(input.as_bytes(), "stdin").collect::<Result<_, _>>().expect("rows");
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].0, rows[0].1["id"].as_u64()), (1, Some(7)));
        assert_eq!(rows[1].0, 3);
        let e = json_lines("{\"text\": \"a\"}\nnope\n".as_bytes(), "stdin")
            .find_map(Result::err)
            .expect("an error")
            .to_string();
        assert!(e.contains("stdin") && e.contains("line 2"), "{e}");
    }
}
