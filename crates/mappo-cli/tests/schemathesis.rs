//! The OpenAPI document says exactly what the server does: schemathesis (in a venv this test
//! makes) runs every check it has (`--checks all`) against the real `mappo serve` with the
//! document the server itself serves — (a) without API keys, (b) with an API keys file (the key
//! passed as a header), (c) as the chat proxy in front of a fake upstream — and must find nothing.
//!
//! The run is configured, not weakened, in two places, both below with their reasons: 413 counts
//! as a rejection of schema-violating data (`NEGATIVE_413`), and requests whose conversation id
//! is in the header and, differently, in the body are not generated (`HOOKS`). Runs (a) and (b)
//! leave out `POST /v1/chat/completions`: without upstreams every routed request is the 503 the
//! document describes, which schemathesis counts as a server error; run (c) tests it.

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

mod common;
use common::{http_with, json, python_venv, read_request, start_with};

/// The schemathesis release the test installs.
const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// The most test cases per operation, and the seed: the runs are reproducible and take seconds
/// each.
const MAX_EXAMPLES: &str = "100";
const SEED: &str = "20241";

/// schemathesis.toml: the default statuses of `negative_data_rejection` plus 413. A text over
/// `serve.max_text_bytes` or a batch over `serve.max_batch_texts` violates the schema
/// (`maxLength`, `maxItems`) and the server rejects it with 413 Content Too Large, as its
/// configuration documents — a rejection, which the default list (4xx codes other than 413)
/// does not name.
const NEGATIVE_413: &str = r#"[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
"#;

/// A schemathesis hook: the proxy takes a conversation id from the `x-mappo-episode-id` header
/// or `mappo.episode_id` in the body, and answers 422 when both are given and differ (the
/// document says so in words). OpenAPI cannot tie a header to a body field, so a generator
/// following the document alone would send such pairs as valid data; they are not generated.
const HOOKS: &str = r#"import schemathesis


@schemathesis.hook
def filter_case(context, case):
    if context.operation is None or context.operation.path != "/v1/chat/completions":
        return True
    header = (case.headers or {}).get("x-mappo-episode-id")
    options = case.body.get("mappo") if isinstance(case.body, dict) else None
    body = options.get("episode_id") if isinstance(options, dict) else None
    return header is None or body is None or header.strip(" ") == body
"#;

/// schemathesis's executable in a venv kept under the target directory (built once per test
/// binary: the tests run side by side).
fn schemathesis_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| python_venv("schemathesis", SCHEMATHESIS_VERSION).join("bin/schemathesis")).clone()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A fake OpenAI-compatible upstream on a loopback port: every `POST` gets a chat completion,
/// as JSON or, for `"stream": true`, as server-sent events ending with `[DONE]`.
fn fake_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a fake upstream");
    let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = answer(conn);
            });
        }
    });
    url
}

fn answer(conn: TcpStream) -> std::io::Result<()> {
    let (_, _, body) = read_request(&mut BufReader::new(conn.try_clone()?))?;
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let message = json!({"role": "assistant", "content": "an answer"});
    let (content_type, out) = if body["stream"] == json!(true) {
        let chunk = json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": message}]});
        ("text/event-stream", format!("data: {chunk}\n\ndata: [DONE]\n\n"))
    } else {
        let c = json!({"object": "chat.completion", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]});
        ("application/json", c.to_string())
    };
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{out}",
        out.len()
    )
}

/// One schemathesis run against a fresh `mappo serve --config configs/prompts.toml --set SETS`,
/// with the document the server serves (saved to a file, so that `/openapi.json` is tested too:
/// schemathesis leaves out the path it loaded the document from). Asserts `check_doc` of the
/// document, that schemathesis found nothing, and that it tested `tested(doc)` operations.
fn run(
    name: &str,
    sets: &[String],
    key: Option<&str>,
    filters: &[&str],
    check_doc: impl Fn(&Value),
    tested: impl Fn(&Value) -> usize,
) {
    let schemathesis = schemathesis_bin();
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/prompts.toml");
    let mut args = vec!["--config".to_string(), cfg.to_str().expect("utf-8 path").to_string()];
    for s in sets {
        args.extend(["--set".to_string(), s.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let db = format!("sqlite:{}", tmp.path().join("serve.db").display());
    let (mut child, addr) = start_with(&db, &args);

    let (status, _, doc) = http_with(&addr, "GET", "/openapi.json", &[], "");
    assert_eq!(status, 200, "{doc}");
    let doc_file = tmp.path().join("openapi.json");
    std::fs::write(&doc_file, &doc).expect("write the document");
    std::fs::write(tmp.path().join("schemathesis.toml"), NEGATIVE_413).expect("write schemathesis.toml");
    std::fs::write(tmp.path().join("mappo_schemathesis_hooks.py"), HOOKS).expect("write the hooks");

    let mut cmd = Command::new(&schemathesis);
    cmd.current_dir(tmp.path())
        .env("SCHEMATHESIS_HOOKS", "mappo_schemathesis_hooks")
        .env("PYTHONPATH", tmp.path())
        .args(["--config-file", "schemathesis.toml", "run"])
        .arg(&doc_file)
        .args(["--url", &format!("http://{addr}"), "--checks", "all", "--max-examples", MAX_EXAMPLES])
        .args(["--seed", SEED, "--generation-database", "none", "--no-color"])
        .args(filters);
    if let Some(k) = key {
        cmd.args(["-H", &format!("Authorization: Bearer {k}")]);
    }
    let o: Output = cmd.output().expect("run schemathesis");
    let _ = child.kill();
    let _ = child.wait();
    let parsed = json(&doc);
    check_doc(&parsed);
    let out = text(&o.stdout);
    let summary = out.split_once("SUMMARY").map_or(out.as_str(), |(_, s)| s.trim_start_matches([' ', '=']));
    eprintln!("schemathesis ({name}, {}):{summary}", filters.join(" "));
    assert!(o.status.success(), "schemathesis found failures ({name}):\n{out}\n{}", text(&o.stderr));
    let n = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Tested: "))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no `Tested:` line:\n{out}"));
    assert_eq!(n, tested(&parsed), "the operations tested ({name}):\n{out}");
}

fn operations(doc: &Value) -> Vec<(String, &Value)> {
    let paths = doc["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(p, item)| {
            item.as_object().expect("a path item").iter().map(move |(m, op)| (format!("{m} {p}"), op))
        })
        .collect()
}

/// Every operation but the proxy's chat completions.
fn all_but_chat(doc: &Value) -> usize {
    operations(doc).len() - 1
}

#[test]
fn a_server_without_api_keys_does_what_its_document_says() {
    let filters = ["--exclude-path", "/v1/chat/completions"];
    let check = |doc: &Value| {
        assert!(doc["components"].get("securitySchemes").is_none(), "no keys, no security scheme");
        for (op, o) in operations(doc) {
            assert!(o.get("security").is_none() && o["responses"].get("401").is_none(), "{op}: {o}");
        }
    };
    run("without API keys", &[], None, &filters, check, all_but_chat);
}

#[test]
fn a_server_with_api_keys_does_what_its_document_says() {
    let tmp = tempfile::tempdir().expect("tmp");
    let keys = tmp.path().join("keys.txt");
    std::fs::write(&keys, "schemathesis-key\n").expect("keys");
    let sets = [format!("serve.api_keys_file={:?}", keys.to_str().expect("utf-8"))];
    let filters = ["--exclude-path", "/v1/chat/completions"];
    let check = |doc: &Value| {
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(
            (schemes["bearer"]["scheme"].as_str(), schemes["basic"]["scheme"].as_str()),
            (Some("bearer"), Some("basic"))
        );
        for (op, o) in operations(doc) {
            let open = op.ends_with(" /healthz") || op.ends_with(" /openapi.json");
            assert_eq!(o.get("security").is_none(), open, "{op}: {o}");
            assert_eq!(o["responses"].get("401").is_none(), open, "{op}: {o}");
        }
    };
    run("with API keys", &sets, Some("schemathesis-key"), &filters, check, all_but_chat);
}

#[test]
fn the_chat_proxy_in_front_of_an_upstream_does_what_its_document_says() {
    let upstream = fake_upstream();
    let sets: Vec<String> = ["code", "math", "writing", "support"]
        .iter()
        .map(|a| format!("serve.upstreams.{a}={{base_url={upstream:?}, model=\"fake-{a}\"}}"))
        .collect();
    let filters = ["--include-path", "/v1/chat/completions", "--include-path", "/v1/models"];
    let check = |doc: &Value| {
        let max = doc.pointer("/components/schemas/ChatMessage/properties/content/oneOf/0/maxLength");
        assert_eq!(max, Some(&json!(16384)), "serve.max_text_bytes is in the document");
    };
    run("the chat proxy", &sets, None, &filters, check, |_| 2);
}
