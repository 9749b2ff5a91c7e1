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

    let early = common::simulate(&addr, 600, 1);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let late = common::simulate(&addr, 600, 2);

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

/// `mappo learn` over a copy of a served log, with one update per round (one commit each).
fn learner(db: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mappo"));
    c.args(["learn", "--db", db, "--config", s(&repo("configs/prompts.toml")), "--json"])
        .args(["--set", "learn.reward_wait_s=1", "--set", "learn.round_updates=1"])
        .args(["--set", "train.batch_size=32", "--set", "learn.min_events=16"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    c
}

/// The learner's committed state in a database: counters, watermark and checkpoint bytes.
fn learner_state(db: &str) -> (i64, i64, i64, Option<mappo_log::Watermark>, Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let log = mappo_log::DecisionLog::open(db).await.expect("open");
        let st = log
            .learner_state(mappo_learn::learner::DEFAULT_LEARNER)
            .await
            .expect("query")
            .expect("a learner state");
        log.close().await;
        (st.updates, st.events, st.learned, st.watermark, st.checkpoint)
    })
}

/// A `mappo learn` process SIGKILLed five times (each a random 0–20 ms after its 2nd, 5th, …
/// commit) and started again ends with the same committed state (watermark, counters, checkpoint bytes) as one that was never
/// interrupted: no event skipped, none counted twice.
#[test]
fn a_learner_killed_with_sigkill_and_restarted_ends_bit_identical() {
    let tmp = tempfile::tempdir().expect("tmp");
    let served = tmp.path().join("served.db");
    let (mut server, addr) = serve(&format!("sqlite:{}", s(&served)));
    let r = common::simulate(&addr, 700, 5);
    assert_eq!(r["errors"], 0, "{r}");
    term(&server);
    assert_eq!(server.wait().expect("serve exit").code(), Some(0));
    // Two identical copies of the log (the database and its write-ahead log, if any).
    let copy = |name: &str| {
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).expect("mkdir");
        for suffix in ["", "-wal", "-shm"] {
            let from = tmp.path().join(format!("served.db{suffix}"));
            if from.exists() {
                std::fs::copy(&from, dir.join(format!("log.db{suffix}"))).expect("copy");
            }
        }
        format!("sqlite:{}", s(&dir.join("log.db")))
    };
    let (a, b) = (copy("a"), copy("b"));
    std::thread::sleep(std::time::Duration::from_millis(1100)); // every reward is within reward_wait_s

    let t0 = std::time::Instant::now();
    let out = learner(&a).output().expect("learner A");
    let full = t0.elapsed();
    assert!(out.status.success(), "uninterrupted learner failed");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary");
    assert!(summary["updates"].as_u64().is_some_and(|n| n >= 15), "{summary}");

    // B is killed once it has committed 2, 5, 8, 11 and 14 updates (plus a random 0-20 ms, to
    // land anywhere in the next update or its commit), restarted each time, then run to the end.
    let total = summary["updates"].as_u64().expect("updates") as i64;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let log_b = rt.block_on(mappo_log::DecisionLog::open(&b)).expect("open B");
    let committed = || {
        rt.block_on(log_b.learner_state(mappo_learn::learner::DEFAULT_LEARNER))
            .expect("query")
            .map_or(0, |st| st.updates)
    };
    let mut rng = mappo_config::Rng::new(17);
    let mut kills = 0;
    for target in [2, 5, 8, 11, 14] {
        assert!(target < total);
        let mut child = learner(&b).spawn().expect("learner B");
        let t = std::time::Instant::now();
        while committed() < target {
            assert!(child.try_wait().expect("try_wait").is_none(), "learner B ended before update {target}");
            assert!(t.elapsed() < full * 20 + std::time::Duration::from_secs(30), "no progress");
            std::thread::sleep(std::time::Duration::from_millis(3));
        }
        std::thread::sleep(std::time::Duration::from_millis(rng.below(21)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        kills += 1;
        assert!(committed() >= target);
    }
    rt.block_on(log_b.close());
    let out = learner(&b).output().expect("learner B, to the end");
    assert!(out.status.success(), "the restarted learner failed");
    assert_eq!(kills, 5);
    let (sa, sb) = (learner_state(&a), learner_state(&b));
    assert_eq!((sb.0, sb.1, sb.2, sb.3), (sa.0, sa.1, sa.2, sa.3), "counters and watermark");
    assert!(sa.4 == sb.4, "the restarted learner's checkpoint differs from the uninterrupted one's");
}
