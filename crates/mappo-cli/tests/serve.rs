//! `mappo serve` as a user runs it: the real binary on a loopback port, routing,
//! feedback, a clean SIGTERM, SIGKILL under load, and `mappo log export`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

mod common;
use common::{export, http, json, start_with};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Starts `mappo serve` on a free port with the prompts config and returns the child and its
/// address.
fn start(db: &str) -> (Child, String) {
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/prompts.toml");
    start_with(db, &["--config", s(&cfg)])
}

#[test]
fn route_feedback_sigterm_then_export_has_every_field() {
    let tmp = tempfile::tempdir().expect("tmp");
    route_feedback_sigterm_export(&format!("sqlite:{}", s(&tmp.path().join("serve.db"))));
}

#[test]
fn postgres_route_feedback_sigterm_then_export_has_every_field() {
    let Some(pg) = common::PgDb::create("postgres_route_feedback_sigterm") else { return };
    route_feedback_sigterm_export(&pg.url);
}

fn route_feedback_sigterm_export(db: &str) {
    let db = db.to_string();
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
    sigkill_under_load(&format!("sqlite:{}", s(&tmp.path().join("serve.db"))));
}

#[test]
fn postgres_sigkill_under_load_loses_no_acknowledged_decision_or_reward() {
    let Some(pg) = common::PgDb::create("postgres_sigkill_under_load") else { return };
    sigkill_under_load(&pg.url);
}

fn sigkill_under_load(db: &str) {
    let db = db.to_string();
    let (mut child, addr) = start(&db);
    // Acknowledged decisions (with their episode and step), rewards and episode ends.
    type Acked = (Vec<(String, String, u64)>, Vec<String>, Vec<String>);
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Acked::default()));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (addr, acked) = (addr.clone(), acked.clone());
            std::thread::spawn(move || {
                for n in 0..10_000 {
                    let Ok(mut stream) = TcpStream::connect(&addr) else { return };
                    // Every request is a step of a three-step episode; the third ends it.
                    let (episode, step) = (format!("w{w}-e{}", n / 3), (n % 3) as u64);
                    let body = format!(r#"{{"text": "request {n} of worker {w}", "episode_id": "{episode}"}}"#);
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
                    acked.lock().expect("lock").0.push((id.clone(), episode.clone(), step));
                    if step == 2 {
                        let Ok(mut st) = TcpStream::connect(&addr) else { return };
                        let end = format!(r#"{{"episode_id": "{episode}", "reward": 0.5, "end": true}}"#);
                        let req = format!(
                            "POST /v1/feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{end}",
                            end.len()
                        );
                        let mut r = String::new();
                        if st.write_all(req.as_bytes()).is_err() || st.read_to_string(&mut r).is_err() {
                            return;
                        }
                        if r.starts_with("HTTP/1.1 200") {
                            acked.lock().expect("lock").2.push(episode.clone());
                        }
                    }
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
    let (decisions, rewards, ends) = acked.lock().expect("lock").clone();
    assert!(decisions.len() >= 150, "the load must have run: {}", decisions.len());
    let rows = export(&db);
    let by_id: std::collections::HashMap<String, &serde_json::Value> =
        rows.iter().map(|r| (r["decision_id"].as_str().unwrap_or_default().to_string(), r)).collect();
    let lost: Vec<&String> =
        decisions.iter().map(|(id, _, _)| id).filter(|id| !by_id.contains_key(*id)).collect();
    assert!(lost.is_empty(), "{} of {} acknowledged decisions lost", lost.len(), decisions.len());
    for (id, episode, step) in &decisions {
        let r = by_id[id];
        assert_eq!(
            (r["episode_id"].as_str(), r["step"].as_u64()),
            (Some(episode.as_str()), Some(*step)),
            "{r}"
        );
    }
    // Every acknowledged episode end is on its last step's row, with its reward.
    assert!(ends.len() >= 40, "the load must have ended episodes: {}", ends.len());
    for e in &ends {
        let last = rows.iter().find(|r| r["episode_id"] == e.as_str() && r["step"] == 2);
        assert!(
            last.is_some_and(|r| r["episode_end"] == true && r["episode_reward"] == 0.5),
            "episode {e}: its acknowledged end is lost: {last:?}"
        );
    }
    let lost_rewards: Vec<&String> =
        rewards.iter().filter(|id| by_id.get(*id).is_none_or(|r| r["reward"].is_null())).collect();
    assert!(lost_rewards.is_empty(), "{} of {} acknowledged rewards lost", lost_rewards.len(), rewards.len());
}

/// The checkpoints of a short training run on the prompts corpus (`updates` updates, one
/// checkpoint every 2), in update order.
fn train_checkpoints(dir: &Path, updates: u32, seed: u32) -> Vec<String> {
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/prompts.toml");
    let run = dir.join(format!("run-{seed}"));
    let (total, seed) = (format!("train.total_updates={updates}"), format!("train.seed={seed}"));
    let o = common::mappo(&[
        "train",
        "--config",
        s(&cfg),
        "--out",
        s(&run),
        "--set",
        &total,
        "--set",
        "train.save_interval=2",
        "--set",
        "train.eval_interval=0",
        "--set",
        &seed,
    ]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    (1..=updates / 2)
        .map(|k| {
            let c = run.join(format!("checkpoints/update-{:07}.safetensors", 2 * k));
            assert!(c.is_file(), "{c:?}");
            s(&c).to_string()
        })
        .collect()
}

/// Two checkpoint files of one short training run (different weights).
fn two_checkpoints(dir: &Path) -> (String, String) {
    let mut c = train_checkpoints(dir, 4, 42);
    let b = c.pop().expect("update 4");
    let a = c.pop().expect("update 2");
    (a, b)
}

fn publish(db: &str, checkpoint: &str) -> i64 {
    let o = common::mappo(&["policy", "publish", "--db", db, "--checkpoint", checkpoint]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    common::stdout(&o).trim().parse().expect("publish prints the version")
}

fn route_version(addr: &str) -> (u16, Option<i64>) {
    let (code, body) = http(addr, "POST", "/v1/route", r#"{"text": "my card was charged twice"}"#);
    let v = serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|d| d["policy_version"].as_i64());
    (code, v)
}

#[test]
fn a_checkpoint_given_is_served_even_when_newer_versions_exist_and_later_ones_are_followed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let db = format!("sqlite:{}", s(&tmp.path().join("serve.db")));
    let (a, b) = two_checkpoints(tmp.path());
    assert_eq!(publish(&db, &a), 1);
    assert_eq!(publish(&db, &b), 2);
    // Pinned to the older checkpoint: version 1, not the newest (2).
    let (mut child, addr) = start_with(&db, &["--checkpoint", &a]);
    let (code, h) = http(&addr, "GET", "/healthz", "");
    assert_eq!(code, 200, "{h}");
    assert_eq!(json(&h)["policy_version"], 1, "{h}");
    for _ in 0..5 {
        assert_eq!(route_version(&addr), (200, Some(1)));
    }
    // Still version 1 after several poll periods: 2 was there before the start.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(route_version(&addr), (200, Some(1)));
    // A version published after the start is followed.
    // Republishing a known checkpoint gives its old version: train a third one instead.
    let c = train_checkpoints(&tmp.path().join("second"), 2, 9).remove(0);
    assert_eq!(publish(&db, &c), 3);
    let t = Instant::now();
    loop {
        let (code, v) = route_version(&addr);
        assert_eq!(code, 200);
        if v == Some(3) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(2), "version 3 not served 2 s after its publication");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill");
    child.wait().expect("wait");
}

#[test]
fn postgres_two_replicas_switch_to_a_published_version_within_two_seconds_without_a_failed_request() {
    let Some(pg) = common::PgDb::create("postgres_two_replicas") else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let (_, b) = two_checkpoints(tmp.path());
    // Replica A publishes a freshly initialised policy (version 1); B serves it.
    let (mut ra, addr_a) = start(&pg.url);
    let (mut rb, addr_b) = start(&pg.url);
    for addr in [&addr_a, &addr_b] {
        assert_eq!(route_version(addr), (200, Some(1)));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic: Vec<_> = [addr_a.clone(), addr_a.clone(), addr_b.clone(), addr_b.clone()]
        .into_iter()
        .map(|addr| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (code, v) = route_version(&addr);
                    seen.push((Instant::now(), code, v));
                }
                (addr, seen)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(publish(&pg.url, &b), 2);
    let t_pub = Instant::now();
    std::thread::sleep(Duration::from_millis(3500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut first_new = std::collections::HashMap::new();
    for t in traffic {
        let (addr, seen) = t.join().expect("traffic thread");
        assert!(seen.len() > 10, "{addr}: too little traffic ({})", seen.len());
        let failed: Vec<_> = seen.iter().filter(|(_, c, v)| *c != 200 || v.is_none()).collect();
        assert!(failed.is_empty(), "{addr}: {} of {} requests failed", failed.len(), seen.len());
        let switch = seen.iter().position(|(_, _, v)| *v == Some(2));
        let switch = switch.unwrap_or_else(|| panic!("{addr} never served version 2"));
        // Never back to 1 once switched.
        assert!(seen[switch..].iter().all(|(_, _, v)| *v == Some(2)), "{addr} went back to version 1");
        let after = seen[switch].0.saturating_duration_since(t_pub);
        first_new.entry(addr).and_modify(|d: &mut Duration| *d = (*d).min(after)).or_insert(after);
    }
    assert_eq!(first_new.len(), 2, "both replicas served: {first_new:?}");
    for (addr, d) in &first_new {
        assert!(*d < Duration::from_secs(2), "{addr} switched {d:?} after the publication");
    }
    for c in [&mut ra, &mut rb] {
        Command::new("kill").args(["-TERM", &c.id().to_string()]).status().expect("kill");
        assert_eq!(c.wait().expect("wait").code(), Some(0));
    }
    // Both replicas logged into the one database.
    let rows = export(&pg.url);
    let replicas: std::collections::HashSet<_> =
        rows.iter().filter_map(|r| r["replica"].as_str().map(str::to_string)).collect();
    assert!(rows.len() > 40, "{}", rows.len());
    assert_eq!(replicas.len(), 2, "each replica names itself in the log: {replicas:?}");
}
