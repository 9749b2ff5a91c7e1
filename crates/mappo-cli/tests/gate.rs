//! The promotion gate from the command line, on traffic a real `mappo serve` logged: a policy
//! trained (with `mappo learn --log-file`) on deliberately inverted rewards is refused by
//! `mappo policy publish --gate`, one trained on the true rewards is published, and both
//! decisions are in `mappo policy list`. The exported log carries texts and no embeddings, so
//! `mappo learn --log-file` embeds them.

use std::path::{Path, PathBuf};

mod common;
use common::{export, mappo, start_with, stderr, stdout};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `mappo learn --log-file LOG --checkpoint START --out OUT --json`: the checkpoint it wrote.
fn learn_from_file(log: &Path, start: &str, out: &Path) -> (PathBuf, serde_json::Value) {
    let cfg = repo("configs/prompts.toml");
    let o = mappo(&[
        "learn",
        "--config",
        s(&cfg),
        "--log-file",
        s(log),
        "--checkpoint",
        start,
        "--out",
        s(out),
        "--set",
        "train.batch_size=64",
        "--set",
        "learn.min_events=16",
        "--set",
        "ppo.lr_actor=0.01",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    (PathBuf::from(v["checkpoint"].as_str().expect("checkpoint")), v)
}

fn publish_gated(db: &str, ckpt: &Path) -> std::process::Output {
    mappo(&[
        "policy",
        "publish",
        "--db",
        db,
        "--checkpoint",
        s(ckpt),
        "--gate",
        "--set",
        "learn.reward_wait_s=0",
    ])
}

#[test]
fn the_gate_refuses_a_policy_trained_on_inverted_rewards_and_publishes_a_better_one() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = repo("configs/prompts.toml");
    // A briefly trained starting policy, served and logging texts.
    let run = tmp.path().join("start");
    let o = mappo(&[
        "train",
        "--config",
        s(&cfg),
        "--out",
        s(&run),
        "--set",
        "train.total_updates=3",
        "--set",
        "train.eval_interval=0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let start = common::last_line(&o);
    let db = format!("sqlite:{}", s(&tmp.path().join("serve.db")));
    let (mut child, addr) = start_with(&db, &["--checkpoint", s(&start), "--set", "serve.log_text=true"]);
    let r = common::simulate(&addr, 800, 3);
    assert_eq!(r["errors"], 0, "{r}");
    child.kill().expect("kill");
    child.wait().expect("wait");

    // The log as exported (texts, no embeddings), and a copy with every reward inverted.
    let lines = export(&db);
    assert_eq!(lines.len(), 800);
    assert!(lines.iter().all(|l| l["text"].is_string() && l.get("embedding").is_none()));
    let write = |name: &str, invert: bool| {
        let path = tmp.path().join(name);
        let body: Vec<String> = lines
            .iter()
            .map(|l| {
                let mut l = l.clone();
                if invert && let Some(r) = l["reward"].as_f64() {
                    l["reward"] = serde_json::json!(-r);
                }
                l.to_string()
            })
            .collect();
        std::fs::write(&path, body.join("\n")).expect("write");
        path
    };
    let (truth, inverted) = (write("true.jsonl", false), write("inverted.jsonl", true));
    let (good, summary) = learn_from_file(&truth, s(&start), &tmp.path().join("good"));
    assert!(
        summary["events"]["learned"].as_u64().is_some_and(|n| n >= 700),
        "texts embedded and learned: {summary}"
    );
    let (bad, _) = learn_from_file(&inverted, s(&start), &tmp.path().join("bad"));

    // The served version is 1; the inverted candidate is refused, the true one published.
    let o = publish_gated(&db, &bad);
    assert!(!o.status.success(), "a policy trained on inverted rewards must be refused: {}", stdout(&o));
    assert!(stderr(&o).contains("refused by the promotion gate"), "{}", stderr(&o));
    let o = publish_gated(&db, &good);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "2");
    let o = mappo(&["policy", "list", "--db", &db, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let list: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("JSON");
    let refused = list[0]["refused"].as_array().expect("refused");
    assert_eq!(refused.len(), 1, "{list}");
    let r = &refused[0];
    assert!(
        r["candidate_high"].as_f64() < r["current_value"].as_f64(),
        "clearly worse: the candidate's whole interval is below the current estimate: {r}"
    );
    assert_eq!(list[1]["version"], 2, "{list}");
    assert_eq!(list[1]["gate"]["published"], true, "{list}");
}
