//! The closed loop through the real binaries: `mappo serve --config` (an untrained policy),
//! `mappo learn --follow --publish` and `mappo simulate` on the in-repository prompt corpus. The
//! learner publishes versions, the service switches to them, and the simulated users' reward
//! goes up.

use std::path::Path;

mod common;
use std::process::{Child, Command, Stdio};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn repo(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

/// Starts `mappo serve` on a free port with the prompts config; returns the child and its address.
fn serve(db: &str) -> (Child, String) {
    common::start_with(db, &["--config", s(&repo("configs/prompts.toml"))])
}

fn simulate(addr: &str, requests: usize, seed: u64) -> serde_json::Value {
    let o = Command::new(env!("CARGO_BIN_EXE_mappo"))
        .args([
            "simulate",
            "--url",
            &format!("http://{addr}"),
            "--corpus",
            s(&repo("data/prompts.jsonl")),
            "--requests",
            &requests.to_string(),
            "--concurrency",
            "4",
            "--seed",
            &seed.to_string(),
        ])
        .output()
        .expect("mappo simulate");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(out.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn term(child: &Child) {
    let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(ok.success());
}

#[test]
fn serve_learn_simulate_publishes_versions_and_reward_improves() {
    let tmp = tempfile::tempdir().expect("tmp");
    let db = format!("sqlite:{}", s(&tmp.path().join("loop.db")));
    let (mut server, addr) = serve(&db);
    let learner = Command::new(env!("CARGO_BIN_EXE_mappo"))
        .args([
            "learn",
            "--db",
            &db,
            "--config",
            s(&repo("configs/prompts.toml")),
            "--follow",
            "--publish",
            "--json",
        ])
        .args([
            "--set",
            "learn.reward_wait_s=0.5",
            "--set",
            "learn.interval_s=0.5",
            "--set",
            "train.batch_size=32",
        ])
        .args(["--set", "learn.min_events=16", "--set", "ppo.lr_actor=0.01"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mappo learn");

    let early = simulate(&addr, 600, 1);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let late = simulate(&addr, 600, 2);

    term(&learner);
    let out = learner.wait_with_output().expect("learner output");
    assert_eq!(out.status.code(), Some(0), "SIGTERM must stop the learner cleanly");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    term(&server);
    assert_eq!(server.wait().expect("serve exit").code(), Some(0));

    for r in [&early, &late] {
        assert_eq!(r["errors"], 0, "{r}");
        assert_eq!(r["feedback_sent"], 600, "{r}");
    }
    let published = summary["published"].as_array().expect("published").len();
    assert!(published >= 5, "only {published} versions published: {summary}");
    assert!(summary["events"]["learned"].as_u64().expect("learned") >= 1000, "{summary}");
    let (e, l) = (early["mean_reward"].as_f64().expect("early"), late["mean_reward"].as_f64().expect("late"));
    // Four agents: an untrained router earns about 0.25.
    assert!(l >= 0.7 && l > e, "mean reward {e} (first 600 requests) -> {l} (after learning)");
    // Every version the learner published went through the promotion gate, which recorded it.
    let o = Command::new(env!("CARGO_BIN_EXE_mappo"))
        .args(["policy", "list", "--db", &db, "--json"])
        .output()
        .expect("policy list");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let versions: serde_json::Value = serde_json::from_slice(&o.stdout).expect("policy list --json");
    let versions = versions.as_array().expect("an array of versions");
    let learned: Vec<&serde_json::Value> =
        versions.iter().filter(|v| v["version"].as_i64().is_some_and(|n| n > 1)).collect();
    assert_eq!(learned.len(), published, "{versions:?}");
    for v in learned {
        assert_eq!(v["gate"]["published"], true, "a learner's version without its gate decision: {v}");
        assert!(v["gate"]["n"].as_i64().is_some_and(|n| n > 0), "{v}");
    }
}
