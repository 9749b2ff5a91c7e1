//! `mappo serve` as an OpenAI-compatible proxy: the real binary in front of small fake upstreams
//! on loopback, called by the official `openai` Python client (in a venv this test makes) and
//! by plain HTTP for the failure cases; then `mappo log export`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;

use common::{export, http_with, json, start_with_env};

/// The `openai` release the test installs.
const OPENAI_VERSION: &str = "2.54.0";

/// What a fake upstream received.
#[derive(Debug, Clone)]
struct Seen {
    authorization: Option<String>,
    body: Value,
}

/// A fake OpenAI-compatible upstream on a loopback port. It answers `POST .../chat/completions`
/// with `"[NAME] MODEL: <last user text>"` (MODEL = the `model` it was sent), as one JSON
/// completion or, with `"stream": true`, as server-sent events in pieces with a 1 s pause after
/// the first, ending with `data: [DONE]`. A user text containing `rate-limit-me` gets a 429
/// with an OpenAI-style error; `delay` holds every answer back (a slow upstream).
struct FakeUpstream {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// What a fake upstream answers to a user text, when not the default `"[NAME] MODEL: text"`.
type Reply = fn(&str) -> String;

impl FakeUpstream {
    fn start(name: &'static str, delay: Duration) -> Self {
        Self::start_with(name, delay, None)
    }

    fn start_with(name: &'static str, delay: Duration, reply: Option<Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a fake upstream");
        let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let log = log.clone();
                std::thread::spawn(move || {
                    let _ = answer(name, delay, reply, conn, &log);
                });
            }
        });
        Self { url, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

fn answer(
    name: &str,
    delay: Duration,
    reply: Option<Reply>,
    conn: TcpStream,
    log: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let (mut length, mut authorization) = (0usize, None);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse().unwrap_or(0),
                "authorization" => authorization = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    log.lock().expect("lock").push(Seen { authorization, body: body.clone() });
    std::thread::sleep(delay);
    let mut conn = conn;
    if !request_line.starts_with("POST ") || !request_line.contains("/v1/chat/completions ") {
        return write!(conn, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    }
    let model = body["model"].as_str().unwrap_or("?").to_string();
    let text = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .map(|m| match &m["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => {
                parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("\n")
            }
            _ => String::new(),
        })
        .unwrap_or_default();
    if text.contains("rate-limit-me") {
        let e = json!({"error": {"message": format!("{name}: rate limit reached"), "type": "rate_limit"}});
        let e = e.to_string();
        return write!(
            conn,
            "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{e}",
            e.len()
        );
    }
    let content = reply.map_or_else(|| format!("[{name}] {model}: {text}"), |f| f(&text));
    if body["stream"] == json!(true) {
        write!(conn, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")?;
        let chunk = |delta: Value, finish: Value| {
            let c = json!({"id": format!("chatcmpl-{name}"), "object": "chat.completion.chunk",
                "created": 0, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
            format!("data: {c}\n\n")
        };
        conn.write_all(chunk(json!({"role": "assistant", "content": ""}), Value::Null).as_bytes())?;
        // Pieces of the content: the first, a pause, the rest.
        let words: Vec<&str> = content.split_inclusive(' ').collect();
        for (i, w) in words.iter().enumerate() {
            conn.write_all(chunk(json!({"content": w}), Value::Null).as_bytes())?;
            conn.flush()?;
            if i == 0 {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        conn.write_all(chunk(json!({}), json!("stop")).as_bytes())?;
        conn.write_all(b"data: [DONE]\n\n")?;
        return conn.flush();
    }
    let c = json!({"id": format!("chatcmpl-{name}"), "object": "chat.completion", "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}});
    let c = c.to_string();
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{c}",
        c.len()
    )
}

/// A config file: configs/prompts.toml (agents code, math, writing, support) with `extra`
/// appended (the `[serve]` tables).
fn config_file(dir: &Path, extra: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let base = std::fs::read_to_string(root.join("configs/prompts.toml")).expect("configs/prompts.toml");
    let corpus = root.join("data/prompts.jsonl");
    let base = base.replace(
        "corpus = \"../data/prompts.jsonl\"",
        &format!("corpus = {:?}", corpus.to_str().expect("utf-8 path")),
    );
    let path = dir.join("proxy.toml");
    std::fs::write(&path, format!("{base}\n{extra}")).expect("write the config");
    path
}

fn upstream_table(agent: &str, url: &str, model: &str, more: &str) -> String {
    format!("[serve.upstreams.{agent}]\nbase_url = {url:?}\nmodel = {model:?}\n{more}\n")
}

/// A Python venv with `openai` installed, kept under the target directory across runs. Python
/// and the package registry are required: their absence fails the test with the reason.
/// The tests of this binary run side by side: one of them builds the venv while the others
/// wait (they used to race, one deleting the venv the other was creating).
fn openai_venv() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_openai_venv).clone()
}

fn build_openai_venv() -> PathBuf {
    common::python_venv("openai", OPENAI_VERSION).join("bin/python")
}

fn by_id(rows: &[Value], id: &str) -> Value {
    rows.iter()
        .find(|r| r["decision_id"] == json!(id))
        .cloned()
        .unwrap_or_else(|| panic!("decision {id} is not in the export: {rows:?}"))
}

#[test]
fn the_openai_client_gets_routed_streamed_and_forced_answers_and_feedback_is_joined() {
    let python = openai_venv();
    let tmp = tempfile::tempdir().expect("tmp");
    let alpha = FakeUpstream::start("alpha", Duration::ZERO);
    let beta = FakeUpstream::start("beta", Duration::ZERO);
    let keys = tmp.path().join("keys.txt");
    std::fs::write(&keys, "mappo-test-key\n").expect("keys");
    // code and writing live on alpha (which needs a key), math and support on beta.
    let extra = [
        format!("[serve]\napi_keys_file = {:?}\n", keys.to_str().expect("utf-8")),
        upstream_table("code", &alpha.url, "alpha-code", "api_key_env = \"MAPPO_TEST_ALPHA_KEY\""),
        upstream_table("writing", &alpha.url, "alpha-writing", "api_key_env = \"MAPPO_TEST_ALPHA_KEY\""),
        upstream_table("math", &beta.url, "beta-math", "timeout_s = 10"),
        upstream_table("support", &beta.url, "beta-support", ""),
    ]
    .concat();
    let cfg = config_file(tmp.path(), &extra);
    let db = format!("sqlite:{}", tmp.path().join("serve.db").display());
    let (mut child, addr) = start_with_env(
        &db,
        &["--config", cfg.to_str().expect("utf-8")],
        &[("MAPPO_TEST_ALPHA_KEY", "alpha-secret")],
    );
    let expected = json!({
        "code": {"upstream": "alpha", "model": "alpha-code"},
        "writing": {"upstream": "alpha", "model": "alpha-writing"},
        "math": {"upstream": "beta", "model": "beta-math"},
        "support": {"upstream": "beta", "model": "beta-support"},
    });
    // Without the key: 401, as every /v1 route.
    let (s, _, b) = http_with(&addr, "POST", "/v1/chat/completions", &[], r#"{"model": "mappo"}"#);
    assert_eq!(s, 401, "{b}");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/proxy_openai_client.py");
    let o = Command::new(&python)
        .arg(&script)
        .args([&format!("http://{addr}"), "mappo-test-key", &expected.to_string()])
        .output()
        .expect("run the openai client script");
    assert!(
        o.status.success(),
        "the openai client script failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let out = json(String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or_default());
    eprintln!("openai client: {out}");
    assert_eq!(out["openai_version"], json!(OPENAI_VERSION));

    // The upstreams saw their own model names, alpha its key, and never the `mappo` object.
    let (a, b) = (alpha.seen(), beta.seen());
    assert_eq!(a.len() + b.len(), 6, "six calls went upstream: {a:?} {b:?}");
    for s in &a {
        assert_eq!(s.authorization.as_deref(), Some("Bearer alpha-secret"), "{s:?}");
        assert!(s.body["model"].as_str().is_some_and(|m| m.starts_with("alpha-")), "{s:?}");
    }
    for s in &b {
        assert_eq!(s.authorization, None, "beta has no key: {s:?}");
        assert!(s.body["model"].as_str().is_some_and(|m| m.starts_with("beta-")), "{s:?}");
    }
    for s in a.iter().chain(&b) {
        assert!(s.body.get("mappo").is_none(), "the mappo object is not forwarded: {s:?}");
        assert!(s.body["messages"].is_array(), "{s:?}");
    }
    assert!(b.iter().any(|s| s.body["model"] == "beta-math"), "the forced call reached beta: {b:?}");

    let (s, _, m) = http_with(&addr, "GET", "/metrics", &[("Authorization", "Bearer mappo-test-key")], "");
    assert_eq!(s, 200);
    assert!(
        m.contains("mappo_http_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"} 6"),
        "{m}"
    );
    assert!(m.contains("mappo_upstream_requests_total{agent=\"math\",outcome=\"ok\"}"), "{m}");

    let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(ok.success());
    assert_eq!(child.wait().expect("wait").code(), Some(0));

    let rows = export(&db);
    assert_eq!(rows.len(), 6, "one decision per proxied call: {rows:?}");
    let routed = by_id(&rows, out["routed"]["decision_id"].as_str().expect("routed id"));
    assert_eq!(routed["agent"], out["routed"]["agent"]);
    assert_eq!(routed["kind"], "sampled");
    assert_eq!(routed["reward"], json!(1.0), "the feedback is joined: {routed}");
    let i = routed["action"].as_u64().expect("action") as usize;
    assert_eq!(routed["propensity"], routed["probabilities"][i], "{routed}");
    let streamed = by_id(&rows, out["streamed"]["decision_id"].as_str().expect("streamed id"));
    assert_eq!(
        (streamed["agent"].clone(), streamed["kind"].clone()),
        (out["streamed"]["agent"].clone(), json!("sampled"))
    );
    assert!(streamed["reward"].is_null());
    let forced = by_id(&rows, out["forced"]["decision_id"].as_str().expect("forced id"));
    assert_eq!(
        (forced["agent"].as_str(), forced["kind"].as_str()),
        (Some("math"), Some("forced")),
        "{forced}"
    );
    assert_eq!(forced["propensity"], json!(1.0), "{forced}");

    // The conversation: one episode, its three turns as steps 0, 1, 2, the episode's reward on
    // the last; the turn after the end was not logged.
    let conversation = out["conversation"]["episode_id"].as_str().expect("episode id");
    let turns = out["conversation"]["turns"].as_array().expect("turns");
    let steps: Vec<&Value> = rows.iter().filter(|r| r["episode_id"] == conversation).collect();
    assert_eq!(steps.len(), 3, "{steps:?}");
    for (i, (row, turn)) in steps.iter().zip(turns).enumerate() {
        assert_eq!(row["decision_id"], turn["decision_id"], "{row}");
        assert_eq!((row["step"].as_u64(), row["agent"].clone()), (Some(i as u64), turn["agent"].clone()));
        assert_eq!(row["kind"], "sampled");
    }
    assert_eq!(steps[2]["episode_reward"], json!(0.5), "{:?}", steps[2]);
    assert!(steps[..2].iter().all(|r| r.get("episode_reward").is_none()), "{steps:?}");
}

#[test]
fn upstream_failures_are_502_json_and_logged_and_unknown_models_are_404() {
    let tmp = tempfile::tempdir().expect("tmp");
    let gamma = FakeUpstream::start("gamma", Duration::ZERO);
    let slow = FakeUpstream::start("slow", Duration::from_secs(5));
    // A port nothing listens on.
    let down = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}/v1", l.local_addr().expect("addr"))
    };
    let extra = [
        "[serve]\n".to_string(),
        upstream_table("code", &gamma.url, "gamma-code", "timeout_s = 0.5"),
        upstream_table("math", &down, "down-math", "timeout_s = 2"),
        upstream_table("writing", &slow.url, "slow-writing", "timeout_s = 0.5"),
    ]
    .concat();
    let cfg = config_file(tmp.path(), &extra);
    let db = format!("sqlite:{}", tmp.path().join("serve.db").display());
    let (mut child, addr) = start_with_env(&db, &["--config", cfg.to_str().expect("utf-8")], &[]);
    let chat = |model: &str, text: &str, stream: bool| {
        let body = json!({"model": model, "messages": [{"role": "user", "content": text}], "stream": stream});
        let t0 = Instant::now();
        let (s, h, b) = http_with(&addr, "POST", "/v1/chat/completions", &[], &body.to_string());
        (s, h, json(&b), t0.elapsed())
    };
    let mut decided = Vec::new();

    // Connection refused, plain and streamed.
    for stream in [false, true] {
        let (s, h, b, _) = chat("math", "what is 2 + 2?", stream);
        assert_eq!(s, 502, "{b}");
        let e = b["error"].as_str().expect("JSON error");
        assert!(e.contains("agent `math`") && e.contains(&down), "{e}");
        assert_eq!(h.get("x-mappo-agent").map(String::as_str), Some("math"));
        decided.push(h["x-mappo-decision-id"].clone());
    }
    // A timeout.
    let (s, h, b, took) = chat("writing", "a poem, please", false);
    assert_eq!(s, 502, "{b}");
    let e = b["error"].as_str().expect("JSON error");
    assert!(
        e.contains("did not answer within 0.5 s") && e.contains("serve.upstreams.writing.timeout_s"),
        "{e}"
    );
    assert!(took < Duration::from_secs(4), "the timeout is 0.5 s, the answer took {took:?}");
    decided.push(h["x-mappo-decision-id"].clone());
    // A non-2xx answer: 502 quoting the upstream's error.
    let (s, h, b, _) = chat("code", "please rate-limit-me", false);
    assert_eq!(s, 502, "{b}");
    let e = b["error"].as_str().expect("JSON error");
    assert!(e.contains("429") && e.contains("gamma: rate limit reached"), "{e}");
    decided.push(h["x-mappo-decision-id"].clone());
    // A healthy upstream still answers.
    let (s, h, b, _) = chat("code", "fix my build", false);
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["choices"][0]["message"]["content"], "[gamma] gamma-code: fix my build");
    decided.push(h["x-mappo-decision-id"].clone());

    // A stream that stalls longer than timeout_s between two chunks (gamma pauses 1 s after its
    // first piece) is cut off after what arrived: the client sees no [DONE].
    let (s, h, b) = http_with(
        &addr,
        "POST",
        "/v1/chat/completions",
        &[],
        &json!({"model": "code", "messages": [{"role": "user", "content": "tell me"}], "stream": true})
            .to_string(),
    );
    assert_eq!(s, 200, "{b}");
    assert!(b.contains("data: {") && !b.contains("[DONE]"), "{b}");
    decided.push(h["x-mappo-decision-id"].clone());

    // No upstream for the agent: 503, no decision.
    let (s, h, b, _) = chat("support", "where is my parcel?", false);
    assert_eq!(s, 503, "{b}");
    assert!(b["error"].as_str().is_some_and(|e| e.contains("[serve.upstreams.support]")), "{b}");
    assert!(!h.contains_key("x-mappo-decision-id"));
    // Unknown model: 404 listing the models.
    let (s, _, b, _) = chat("gpt-4o", "hello", false);
    assert_eq!(s, 404, "{b}");
    let e = b["error"].as_str().expect("JSON error");
    for m in ["\"mappo\"", "\"code\"", "\"math\"", "\"writing\"", "\"support\""] {
        assert!(e.contains(m), "{e}");
    }
    // Requests the router cannot decide on.
    for bad in [
        json!({"messages": [{"role": "user", "content": "hi"}]}),
        json!({"model": "mappo", "messages": [{"role": "system", "content": "no user"}]}),
        json!({"model": "mappo", "messages": [{"role": "user", "content": "hi"}], "mappo": {"budget": 1}}),
        json!({"model": "mappo", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}),
        json!({"model": "mappo", "messages": [{"role": "user", "content": "hi"}], "mappo": {"episode_id": ""}}),
        json!({"model": "mappo", "messages": [{"role": "user", "content": "hi"}],
            "mappo": {"episode_id": "x".repeat(129)}}),
    ] {
        let (s, _, b) = http_with(&addr, "POST", "/v1/chat/completions", &[], &bad.to_string());
        assert_eq!(s, 422, "{bad} → {b}");
        assert!(json(&b)["error"].is_string(), "{b}");
    }
    // A conversation id in the header and another in the body: 422 naming both, nothing decided.
    let body = json!({"model": "mappo", "messages": [{"role": "user", "content": "hi"}],
        "mappo": {"episode_id": "chat-b"}});
    let (s, h, b) = http_with(
        &addr,
        "POST",
        "/v1/chat/completions",
        &[("x-mappo-episode-id", "chat-a")],
        &body.to_string(),
    );
    assert_eq!(s, 422, "{b}");
    assert!(b.contains("chat-a") && b.contains("chat-b"), "{b}");
    assert!(!h.contains_key("x-mappo-decision-id"));
    let (s, _, b) = http_with(&addr, "POST", "/v1/chat/completions", &[], "{not json");
    assert_eq!(s, 400, "{b}");
    // The models list and the OpenAPI document.
    let (s, _, b) = http_with(&addr, "GET", "/v1/models", &[], "");
    assert_eq!(s, 200, "{b}");
    let ids: Vec<String> = json(&b)["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(ids, ["mappo", "code", "math", "writing", "support"]);
    let (_, _, o) = http_with(&addr, "GET", "/openapi.json", &[], "");
    let o = json(&o);
    for p in ["/v1/chat/completions", "/v1/models"] {
        assert!(o["paths"][p].is_object(), "openapi lacks {p}");
    }

    let (_, _, m) = http_with(&addr, "GET", "/metrics", &[], "");
    for needle in [
        "mappo_upstream_requests_total{agent=\"math\",outcome=\"connect\"} 2",
        "mappo_upstream_requests_total{agent=\"writing\",outcome=\"timeout\"} 1",
        "mappo_upstream_requests_total{agent=\"code\",outcome=\"status\"} 1",
        "mappo_upstream_requests_total{agent=\"code\",outcome=\"ok\"} 2",
        "mappo_upstream_requests_total{agent=\"code\",outcome=\"stream_error\"} 1",
        "mappo_upstream_requests_total{agent=\"support\",outcome=\"unconfigured\"} 1",
        "mappo_http_requests_total{endpoint=\"/v1/chat/completions\",status=\"502\"} 4",
    ] {
        assert!(m.contains(needle), "metrics lack {needle:?}:\n{m}");
    }
    child.kill().expect("kill");
    child.wait().expect("wait");

    // Every decision made is in the log, forced, and takes feedback later.
    let rows = export(&db);
    assert_eq!(rows.len(), decided.len(), "{rows:?}");
    for id in &decided {
        let r = by_id(&rows, id);
        assert_eq!(r["kind"], "forced", "{r}");
    }
}

#[test]
fn an_upstream_for_a_stranger_or_an_unset_key_variable_stops_the_start() {
    let tmp = tempfile::tempdir().expect("tmp");
    let db = format!("sqlite:{}", tmp.path().join("serve.db").display());
    let run = |extra: &str| {
        let cfg = config_file(tmp.path(), extra);
        common::mappo(&[
            "serve",
            "--db",
            &db,
            "--addr",
            "127.0.0.1:0",
            "--config",
            cfg.to_str().expect("utf-8"),
        ])
    };
    let o = run(&upstream_table("lawyer", "http://127.0.0.1:9/v1", "m", ""));
    assert!(!o.status.success());
    let e = common::stderr(&o);
    assert!(e.contains("serve.upstreams.lawyer") && e.contains("code, math, writing, support"), "{e}");
    let o = run(&upstream_table(
        "code",
        "http://127.0.0.1:9/v1",
        "m",
        "api_key_env = \"MAPPO_TEST_UNSET_KEY_VAR\"",
    ));
    assert!(!o.status.success());
    let e = common::stderr(&o);
    assert!(e.contains("serve.upstreams.code.api_key_env") && e.contains("MAPPO_TEST_UNSET_KEY_VAR"), "{e}");
    let o = run(&upstream_table("code", "localhost:9", "m", ""));
    assert!(!o.status.success());
    assert!(common::stderr(&o).contains("serve.upstreams.code.base_url"), "{}", common::stderr(&o));
}

#[test]
fn a_cost_aware_router_behind_the_proxy_decides_at_the_requested_cost_weight() {
    let tmp = tempfile::tempdir().expect("tmp");
    let up = FakeUpstream::start("delta", Duration::ZERO);
    // The four agents of configs/prompts.toml with costs: the fresh policy is cost-aware (λ is
    // one more input of the network), and `serve.cost_weight` is the λ of a request naming none.
    let extra = [
        "[serve]\ncost_weight = 0.1\n".to_string(),
        upstream_table("code", &up.url, "d-code", ""),
        upstream_table("math", &up.url, "d-math", ""),
        upstream_table("writing", &up.url, "d-writing", ""),
        upstream_table("support", &up.url, "d-support", ""),
    ]
    .concat();
    let cfg = config_file(tmp.path(), &extra);
    let text = std::fs::read_to_string(&cfg).expect("read the config");
    let mut costs = [1.0, 2.0, 5.0, 10.0].into_iter();
    let with_costs: String = text
        .lines()
        .map(|l| match l.starts_with("name = ") {
            true => format!("{l}\ncost = {}\n", costs.next().expect("four agents")),
            false => format!("{l}\n"),
        })
        .collect();
    assert!(costs.next().is_none(), "every agent got a cost");
    std::fs::write(&cfg, with_costs).expect("write the config");
    let db = format!("sqlite:{}", tmp.path().join("serve.db").display());
    let (mut child, addr) = start_with_env(&db, &["--config", cfg.to_str().expect("utf-8")], &[]);

    let chat = |extra: Value| {
        let mut body =
            json!({"model": "mappo", "messages": [{"role": "user", "content": "integrate x^2 from 0 to 1"}]});
        if !extra.is_null() {
            body["mappo"] = extra;
        }
        let (s, h, b) = http_with(&addr, "POST", "/v1/chat/completions", &[], &body.to_string());
        assert_eq!(s, 200, "{body} → {b}");
        let id = h.get("x-mappo-decision-id").cloned().unwrap_or_else(|| panic!("no decision id: {h:?}"));
        let agent = h.get("x-mappo-agent").cloned().unwrap_or_else(|| panic!("no agent: {h:?}"));
        let answer = json(&b);
        let content = answer["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string();
        assert!(
            content.starts_with(&format!("[delta] d-{agent}:")),
            "the chosen agent's upstream answered: {b}"
        );
        id
    };
    let explicit = chat(json!({"cost_weight": 0.25}));
    let negative = chat(json!({"cost_weight": -0.05}));
    let default = chat(Value::Null);
    let (s, _, b) = http_with(
        &addr,
        "POST",
        "/v1/chat/completions",
        &[],
        &json!({"model": "mappo", "messages": [{"role": "user", "content": "hi"}], "mappo": {"cost_weight": "cheap"}})
            .to_string(),
    );
    assert_eq!(s, 422, "a cost weight that is not a number: {b}");
    assert_eq!(up.seen().len(), 3, "only the three routed calls went upstream");
    child.kill().expect("kill");
    child.wait().expect("wait");

    let rows = export(&db);
    assert_eq!(rows.len(), 3, "{rows:?}");
    for (id, want) in [(&explicit, 0.25), (&negative, -0.05), (&default, 0.1)] {
        let r = by_id(&rows, id);
        let got = r["cost_weight"].as_f64().unwrap_or_else(|| panic!("no cost_weight logged: {r}"));
        assert!((got - want).abs() < 1e-6, "λ logged {got}, asked {want}: {r}");
        assert_eq!(r["kind"], "sampled", "{r}");
        let i = r["action"].as_u64().expect("action") as usize;
        assert_eq!(r["propensity"], r["probabilities"][i], "{r}");
    }
}

/// What the fake `small` agent says when it is unsure (as its unsure answers in
/// data/cascade.jsonl) and when it is sure.
const SMALL_BAD: &str = "Sorry, I am not sure about this one; my answer is probably wrong.";
const SMALL_GOOD: &str = "Here is the complete answer, checked step by step.";

#[test]
fn a_cascade_behind_the_proxy_calls_the_first_agent_and_escalates_when_its_answer_is_bad() {
    let python = openai_venv();
    let tmp = tempfile::tempdir().expect("tmp");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let corpus = root.join("data/cascade.jsonl");
    // A cascade trained on data/cascade.jsonl (as tests/llm_routing.rs trains it): it accepts
    // `small`'s answer when it sounds sure and escalates when it does not.
    let ckpt = common::train_cascade(tmp.path(), &corpus);

    fn small_reply(text: &str) -> String {
        if text.ends_with(" (hard)") { SMALL_BAD } else { SMALL_GOOD }.to_string()
    }
    let small = FakeUpstream::start_with("small", Duration::ZERO, Some(small_reply));
    let large = FakeUpstream::start("large", Duration::ZERO);
    let cfg = tmp.path().join("serve.toml");
    let extra = [
        "[serve]\nmin_prob = 0.05\n".to_string(),
        upstream_table("small", &small.url, "small-model", ""),
        upstream_table("large", &large.url, "large-model", ""),
    ]
    .concat();
    std::fs::write(&cfg, extra).expect("write the config");
    let db = format!("sqlite:{}", tmp.path().join("serve.db").display());
    // Published first, then served with the proxy's [serve] section.
    let o = common::mappo(&["policy", "publish", "--db", &db, "--checkpoint", ckpt.to_str().expect("utf-8")]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let (mut child, addr) = start_with_env(&db, &["--config", cfg.to_str().expect("utf-8")], &[]);

    // 40 prompts of the corpus, every other one answered badly by `small`.
    let text = std::fs::read_to_string(&corpus).expect("corpus");
    let prompts: Vec<Value> = text
        .lines()
        .take(40)
        .enumerate()
        .map(|(i, l)| {
            let t = json(l)["text"].as_str().expect("text").to_string();
            let bad = i % 2 == 0;
            json!({"text": if bad { format!("{t} (hard)") } else { t }, "bad": bad})
        })
        .collect();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/proxy_openai_cascade.py");
    let o = Command::new(&python)
        .arg(&script)
        .args([&format!("http://{addr}"), &Value::from(prompts).to_string(), SMALL_BAD, SMALL_GOOD])
        .output()
        .expect("run the openai cascade script");
    assert!(
        o.status.success(),
        "the openai cascade script failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let out = json(String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or_default());
    let cascades = out["cascades"].as_array().expect("cascades");
    assert_eq!(cascades.len(), 40);

    // Who was called: `small` then maybe `large`, or `large` alone; one decision per step.
    let (mut bad, mut bad_escalated, mut good, mut good_escalated) = (0, 0, 0, 0);
    for c in cascades {
        let agents = c["agents"].as_str().expect("agents");
        let n = c["decisions"].as_array().expect("decisions").len();
        match agents {
            "large" => assert_eq!(n, 1, "{c}"),
            "small" | "small,large" => {
                assert_eq!(n, 2, "{c}");
                let escalated = agents == "small,large";
                if c["bad"] == json!(true) {
                    bad += 1;
                    bad_escalated += usize::from(escalated);
                } else {
                    good += 1;
                    good_escalated += usize::from(escalated);
                }
            }
            other => panic!("agents {other:?}: {c}"),
        }
    }
    eprintln!(
        "cascades: {bad_escalated}/{bad} bad first answers escalated, {good_escalated}/{good} good ones"
    );
    assert!(bad >= 5 && good >= 5, "too few cascades started with `small`: {bad} bad, {good} good");
    let (bad_share, good_share) = (bad_escalated as f64 / bad as f64, good_escalated as f64 / good as f64);
    assert!(
        bad_share >= 0.7 && good_share <= 0.3,
        "escalated after {bad_escalated}/{bad} bad and {good_escalated}/{good} good first answers"
    );
    // Every upstream call is one the headers name: `small` saw every cascade that started with
    // it (without `stream`: its answer is read whole), `large` every escalation and direct call.
    let calls =
        |who: &str| cascades.iter().filter(|c| c["agents"].as_str().is_some_and(|a| a.contains(who))).count();
    assert_eq!(small.seen().len(), calls("small"));
    assert_eq!(large.seen().len(), calls("large"));
    assert!(small.seen().iter().all(|s| s.body.get("stream").is_none()), "the first call is not streamed");

    let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(ok.success());
    assert_eq!(child.wait().expect("wait").code(), Some(0));

    // The log: each cascade one episode, its steps `first` then `escalation` (accept or
    // escalate, as the headers said), ended with its reward on the last step.
    let rows = export(&db);
    assert_eq!(
        rows.len(),
        cascades.iter().map(|c| c["decisions"].as_array().map_or(0, Vec::len)).sum::<usize>()
    );
    for c in cascades {
        let steps: Vec<&Value> = rows.iter().filter(|r| r["episode_id"] == c["episode_id"]).collect();
        let ids: Vec<&Value> = steps.iter().map(|r| &r["decision_id"]).collect();
        assert_eq!(ids, c["decisions"].as_array().expect("ids").iter().collect::<Vec<_>>(), "{c}");
        assert_eq!(steps[0]["stage"], "first", "{:?}", steps[0]);
        assert_eq!(steps[0]["agent"], c["agents"].as_str().and_then(|a| a.split(',').next()).expect("first"));
        if let Some(second) = steps.get(1) {
            let want = if c["agents"] == "small,large" { "escalate" } else { "accept" };
            assert_eq!(
                (second["stage"].as_str(), second["agent"].as_str()),
                (Some("escalation"), Some(want))
            );
        }
        let last = steps.last().expect("a step");
        assert!(last["episode_reward"].is_number(), "{last}");
    }
}
