//! Conversations through the real binaries: `mappo serve` an untrained conversation policy,
//! `mappo simulate --env conversation` plays multi-turn users, `mappo learn --publish` learns
//! the logged episodes through the promotion gate (WPDIS), `mappo ope` evaluates a trained
//! conversation checkpoint on them, and `mappo log stats` / `export` show the episodes.

use std::path::Path;

mod common;
use common::{mappo, stderr, stdout};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// configs/prompts.toml as a three-turn conversation policy paid at the end, written to `dir`.
fn conversation_config(dir: &Path) -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join("configs/prompts.toml")).expect("prompts.toml");
    let corpus = root.join("data/prompts.jsonl");
    let text = text
        .replace(
            "kind = \"text\"",
            "kind = \"conversation\"\nturns = 3\ncontinuity_bonus = 1.0\nreward_at = \"end\"",
        )
        .replace("\"../data/prompts.jsonl\"", &format!("{:?}", s(&corpus)))
        .replace("total_updates = 300", "total_updates = 30\nrollout_len = 3")
        .replace("[ppo]", "[ppo]\ngamma = 1.0");
    let text = format!("{text}\n[serve]\nreward_max = 10.0\n");
    let path = dir.join("conversation.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn json_last_line(o: &std::process::Output) -> serde_json::Value {
    let out = stdout(o);
    serde_json::from_str(out.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn conversations_are_served_simulated_learned_gated_and_evaluated_from_the_log() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = conversation_config(tmp.path());
    let db = format!("sqlite:{}", s(&tmp.path().join("conv.db")));
    let (mut server, addr) = common::start_with(&db, &["--config", s(&cfg)]);
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/prompts.jsonl");
    let url = format!("http://{addr}");
    let o = mappo(&[
        "simulate",
        "--url",
        &url,
        "--corpus",
        s(&corpus),
        "--env",
        "conversation",
        "--config",
        s(&cfg),
        "--episodes",
        "300",
        "--concurrency",
        "4",
        "--seed",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sim = json_last_line(&o);
    assert_eq!(
        (sim["episodes"].as_u64(), sim["steps"].as_u64(), sim["errors"].as_u64()),
        (Some(300), Some(900), Some(0)),
        "{sim}"
    );
    assert_eq!(sim["feedback_sent"], 300, "one end (with the conversation's reward) each: {sim}");
    let ret = sim["mean_return"].as_f64().expect("mean return");
    assert!((0.0..=5.0).contains(&ret), "{sim}");
    // Usage errors.
    let o = mappo(&[
        "simulate",
        "--url",
        &url,
        "--corpus",
        s(&corpus),
        "--env",
        "conversation",
        "--episodes",
        "3",
    ]);
    assert!(!o.status.success(), "--config is required for conversations");

    // The log holds the episodes: three steps each, the reward on the last.
    let o = mappo(&["log", "stats", "--db", &db, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let st = json_last_line(&o);
    assert_eq!(
        (st["decisions"].as_u64(), st["episodes"].as_u64(), st["episodes_ended"].as_u64()),
        (Some(900), Some(300), Some(300)),
        "{st}"
    );
    let rows = common::export(&db);
    let last_rows: Vec<&serde_json::Value> = rows.iter().filter(|r| r["episode_end"] == true).collect();
    assert_eq!(last_rows.len(), 300);
    assert!(
        last_rows.iter().all(|r| r["step"] == 2 && r["episode_reward"].is_number()),
        "{:?}",
        last_rows[0]
    );
    let mean_end: f64 = last_rows.iter().filter_map(|r| r["episode_reward"].as_f64()).sum::<f64>() / 300.0;
    assert!(
        (mean_end - ret).abs() < 1e-9,
        "the log's episode rewards are the simulated returns: {mean_end} vs {ret}"
    );

    // The learner learns every ended episode and the gate judges the candidate with WPDIS.
    let o = mappo(&[
        "learn",
        "--db",
        &db,
        "--config",
        s(&cfg),
        "--publish",
        "--json",
        "--set",
        "learn.reward_wait_s=0",
        "--set",
        "learn.min_events=16",
        "--set",
        "train.batch_size=96",
    ]);
    assert!(o.status.success() || o.status.code() == Some(1), "{}", stderr(&o));
    let learned = json_last_line(&o);
    assert_eq!(learned["events"]["episodes"], 300, "{learned}");
    assert_eq!(learned["events"]["learned"], 900, "{learned}");
    assert_eq!(learned["events"]["episode_steps"], 600, "{learned}");
    let o = mappo(&["policy", "list", "--db", &db, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let list: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("JSON");
    let decisions: Vec<&serde_json::Value> = list
        .as_array()
        .expect("versions")
        .iter()
        .flat_map(|v| {
            v["gate"]
                .as_object()
                .map(|_| &v["gate"])
                .into_iter()
                .chain(v["refused"].as_array().into_iter().flatten())
        })
        .collect();
    assert!(!decisions.is_empty(), "the gate decided: {list}");
    assert!(decisions.iter().all(|d| d["estimator"] == "wpdis" && d["n"] == 300), "{decisions:?}");

    // The served version, exported, routes conversations; a second export is refused.
    let v1 = tmp.path().join("v1.safetensors");
    let o = mappo(&["policy", "export", "--db", &db, "--version", "1", "--out", s(&v1)]);
    assert!(o.status.success() && v1.exists(), "{}", stderr(&o));
    let o = mappo(&[
        "route",
        "--checkpoint",
        s(&v1),
        "--json",
        "my card was declined",
        "and my account is locked",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 2, "two turns");
    let o = mappo(&["policy", "export", "--db", &db, "--out", s(&v1)]);
    assert!(!o.status.success() && stderr(&o).contains("--force"), "{}", stderr(&o));
    let o = mappo(&["policy", "export", "--db", &db, "--version", "99", "--out", s(&tmp.path().join("x"))]);
    assert!(!o.status.success() && stderr(&o).contains("no policy version 99"), "{}", stderr(&o));

    // A conversation checkpoint trained offline, evaluated on the served episodes.
    let run = tmp.path().join("run");
    let o = mappo(&["train", "--config", s(&cfg), "--out", s(&run), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = mappo(&["ope", "--db", &db, "--checkpoint", s(&run), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = json_last_line(&o);
    assert_eq!((r["n"].as_u64(), r["steps"].as_u64()), (Some(300), Some(900)), "{r}");
    for k in ["pdis", "wpdis"] {
        let (v, lo, hi) = (
            r[k]["value"].as_f64().expect("v"),
            r[k]["ci"][0].as_f64().expect("lo"),
            r[k]["ci"][1].as_f64().expect("hi"),
        );
        assert!(lo <= v && v <= hi && v.is_finite(), "{k}: {r}");
    }
    assert!((r["logging_value"].as_f64().expect("logging") - ret).abs() < 1e-9, "{r}");
    let o = mappo(&["ope", "--log-file", s(&tmp.path().join("x.jsonl")), "--checkpoint", s(&run)]);
    assert!(!o.status.success() && stderr(&o).contains("--db"), "{}", stderr(&o));

    let ok =
        std::process::Command::new("kill").args(["-TERM", &server.id().to_string()]).status().expect("kill");
    assert!(ok.success());
    assert_eq!(server.wait().expect("serve exit").code(), Some(0));
}
