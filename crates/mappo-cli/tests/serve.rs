//! `mappo serve` as a user runs it: the real binary on a loopback port, routing,
//! feedback, a clean SIGTERM, SIGKILL under load, and `mappo log export`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Starts `mappo serve` on a free port and returns the child and its address.
fn start(db: &str) -> (Child, String) {
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/prompts.toml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mappo"))
        .args(["serve", "--db", db, "--config", s(&cfg), "--addr", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mappo serve");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("serve ended before listening").expect("stderr line");
        if let Some(a) = line.split("listening on http://").nth(1) {
            break a.trim().to_string();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

/// One HTTP/1.1 request; returns the status and the body.
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status line");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn export(db: &str) -> Vec<serde_json::Value> {
    let o = Command::new(env!("CARGO_BIN_EXE_mappo"))
        .args(["log", "export", "--db", db])
        .output()
        .expect("export");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).lines().map(json).collect()
}

#[test]
fn route_feedback_sigterm_then_export_has_every_field() {
    let tmp = tempfile::tempdir().expect("tmp");
    let db = format!("sqlite:{}", s(&tmp.path().join("serve.db")));
    let (mut child, addr) = start(&db);
    let (code, body) = http(&addr, "GET", "/healthz", "");
    assert_eq!(code, 200, "{body}");
    let (code, body) = http(&addr, "POST", "/v1/route", r#"{"text": "my parcel never arrived"}"#);
    assert_eq!(code, 200, "{body}");
    let d = json(&body);
    let i = d["agent_index"].as_u64().expect("agent_index") as usize;
    let probs: Vec<f64> =
        d["probabilities"].as_array().expect("probabilities").iter().filter_map(|p| p.as_f64()).collect();
    assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-4, "{d}");
    assert!((d["propensity"].as_f64().expect("propensity") - probs[i]).abs() < 1e-9, "{d}");
    let id = d["decision_id"].as_str().expect("decision_id").to_string();
    let (code, body) =
        http(&addr, "POST", "/v1/feedback", &format!(r#"{{"decision_id": "{id}", "reward": 0.5}}"#));
    assert_eq!(code, 200, "{body}");
    let (code, _) =
        http(&addr, "POST", "/v1/feedback", &format!(r#"{{"decision_id": "{id}", "reward": 0.5}}"#));
    assert_eq!(code, 409);
    let (code, body) = http(&addr, "POST", "/v1/route", "{not json");
    assert_eq!(code, 400, "{body}");
    assert!(json(&body)["error"].is_string(), "{body}");
    // SIGTERM drains and exits 0.
    let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(ok.success());
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "SIGTERM must end the service cleanly");
    let rows = export(&db);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!(r["decision_id"], serde_json::json!(id));
    assert_eq!(r["action"], serde_json::json!(i));
    assert_eq!(r["agent"], d["agent"]);
    assert_eq!(r["policy_version"], d["policy_version"]);
    assert_eq!(r["reward"], serde_json::json!(0.5));
    assert!(r["time"].as_str().is_some_and(|t| t.contains('T')), "RFC 3339 time: {r}");
    assert!(r.get("text").is_none(), "prompts are not logged by default: {r}");
    let logged: Vec<f64> =
        r["probabilities"].as_array().expect("probs").iter().filter_map(|p| p.as_f64()).collect();
    assert_eq!(logged.len(), probs.len());
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_decision_or_reward() {
    let tmp = tempfile::tempdir().expect("tmp");
    let db = format!("sqlite:{}", s(&tmp.path().join("serve.db")));
    let (mut child, addr) = start(&db);
    let acked = std::sync::Arc::new(std::sync::Mutex::new((Vec::<String>::new(), Vec::<String>::new())));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (addr, acked) = (addr.clone(), acked.clone());
            std::thread::spawn(move || {
                for n in 0..10_000 {
                    let Ok(mut stream) = TcpStream::connect(&addr) else { return };
                    let body = format!(r#"{{"text": "request {n} of worker {w}"}}"#);
                    let req = format!(
                        "POST /v1/route HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(req.as_bytes()).is_err() {
                        return;
                    }
                    let mut resp = String::new();
                    if stream.read_to_string(&mut resp).is_err() || !resp.starts_with("HTTP/1.1 200") {
                        return;
                    }
                    let Some(v) = resp.split_once("\r\n\r\n").and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(b).ok()) else { return };
                    let Some(id) = v["decision_id"].as_str().map(str::to_string) else { return };
                    acked.lock().expect("lock").0.push(id.clone());
                    if n % 2 == 0 {
                        let (code, _) = {
                            let Ok(mut st) = TcpStream::connect(&addr) else { return };
                            let fb = format!(r#"{{"decision_id": "{id}", "reward": 1.0}}"#);
                            let req = format!(
                                "POST /v1/feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{fb}",
                                fb.len()
                            );
                            if st.write_all(req.as_bytes()).is_err() {
                                return;
                            }
                            let mut r = String::new();
                            if st.read_to_string(&mut r).is_err() {
                                return;
                            }
                            (r.starts_with("HTTP/1.1 200"), ())
                        };
                        if code {
                            acked.lock().expect("lock").1.push(id);
                        }
                    }
                }
            })
        })
        .collect();
    // Let the load run, then SIGKILL the server mid-flight.
    let t0 = std::time::Instant::now();
    while acked.lock().expect("lock").0.len() < 150 && t0.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    for w in workers {
        w.join().expect("worker");
    }
    let (decisions, rewards) = acked.lock().expect("lock").clone();
    assert!(decisions.len() >= 150, "the load must have run: {}", decisions.len());
    let rows = export(&db);
    let by_id: std::collections::HashMap<String, &serde_json::Value> =
        rows.iter().map(|r| (r["decision_id"].as_str().unwrap_or_default().to_string(), r)).collect();
    let lost: Vec<&String> = decisions.iter().filter(|id| !by_id.contains_key(*id)).collect();
    assert!(lost.is_empty(), "{} of {} acknowledged decisions lost", lost.len(), decisions.len());
    let lost_rewards: Vec<&String> =
        rewards.iter().filter(|id| by_id.get(*id).is_none_or(|r| r["reward"].is_null())).collect();
    assert!(lost_rewards.is_empty(), "{} of {} acknowledged rewards lost", lost_rewards.len(), rewards.len());
}
