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

/// `mappo route` sends `stdin` to a run of `args` and waits for it.
fn mappo_with_stdin(args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_mappo"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mappo");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("wait")
}

/// Issue 22: `mappo route` on a pipeline checkpoint routes prompts through every stage in order,
/// greedy, with each stage's probabilities, and scores each joint choice against the optimum —
/// on the prompts `mappo eval` draws for the same count and seed, so the means agree.
#[test]
fn a_pipeline_checkpoint_routes_prompts_through_every_stage() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let run = tmp.path().join("pipeline");
    let o = mappo(&[
        "train",
        "--config",
        s(&root.join("configs/pipeline.toml")),
        "--out",
        s(&run),
        "--quiet",
        "--set",
        "train.device=\"cpu\"",
        "--set",
        "train.total_updates=100",
        "--set",
        "train.save_interval=100",
        "--set",
        "train.eval_interval=0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stages = ["retrieval", "answerer", "checker"];
    let options: [&[&str]; 3] = [
        &["none", "docs", "web", "hybrid"],
        &["small", "medium", "large", "code"],
        &["none", "self-check", "verifier", "human-rubric"],
    ];

    let o = mappo(&["route", "--checkpoint", s(&run), "--samples", "200", "--seed", "1", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let routed: Vec<serde_json::Value> =
        stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert_eq!(routed.len(), 200, "one object per prompt");
    let (mut expected, mut optimal) = (0f64, 0f64);
    for (i, r) in routed.iter().enumerate() {
        assert_eq!(r["prompt"], i, "{r}");
        let got = r["stages"].as_array().expect("stages");
        assert_eq!(got.len(), 3, "{r}");
        for (k, st) in got.iter().enumerate() {
            assert_eq!(st["stage"], stages[k], "stages in config order: {r}");
            let p: Vec<f64> = st["probabilities"]
                .as_array()
                .expect("probabilities")
                .iter()
                .filter_map(|x| x.as_f64())
                .collect();
            assert_eq!(p.len(), options[k].len(), "{st}");
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-4, "{st}");
            let best = (0..p.len()).fold(0, |b, j| if p[j] > p[b] { j } else { b });
            assert_eq!(st["agent_index"], best, "greedy: {st}");
            assert_eq!(st["agent"], options[k][best], "{st}");
            for (name, q) in options[k].iter().zip(&p) {
                assert_eq!(st["by_agent"][name].as_f64(), Some(*q), "{st}");
            }
        }
        let (e, b) = (
            r["expected_reward"].as_f64().expect("expected"),
            r["optimal_reward"].as_f64().expect("optimal"),
        );
        assert!(e <= b + 1e-6, "no joint choice beats the optimum: {r}");
        let best: Vec<&str> = r["optimal_agents"]
            .as_array()
            .expect("optimal agents")
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert!(best.len() == 3 && best.iter().zip(options).all(|(a, o)| o.contains(a)), "{r}");
        let chosen: Vec<&str> = got.iter().filter_map(|st| st["agent"].as_str()).collect();
        if chosen == best {
            assert!((e - b).abs() < 1e-6, "{r}");
        }
        expected += e / 200.0;
        optimal += b / 200.0;
    }
    // The same prompts as `mappo eval --episodes 200 --seed 1`, the same greedy choices.
    let o = mappo(&["eval", "--checkpoint", s(&run), "--episodes", "200", "--seed", "1", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ev = json_last_line(&o);
    let (mean, best, random) = (
        ev["mean_return"].as_f64().expect("mean"),
        ev["optimal_return"].as_f64().expect("optimal"),
        ev["random_return"].as_f64().expect("random"),
    );
    assert!((expected - mean).abs() < 1e-6, "route's mean {expected} vs eval's {mean}: {ev}");
    assert!((optimal - best).abs() < 1e-6, "route's optimum {optimal} vs eval's {best}: {ev}");
    assert!(
        expected > random + 0.8 * (best - random),
        "it learned: {expected} vs random {random}, optimum {best}"
    );
    // Another seed draws other prompts.
    let o = mappo(&["route", "--checkpoint", s(&run), "--samples", "200", "--seed", "2", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(stdout(&o).lines().next(), Some(serde_json::to_string(&routed[0]).expect("json").as_str()));

    // The text form: a line per stage, then the rewards.
    let o = mappo(&["route", "--checkpoint", s(&run), "--samples", "2", "--seed", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<Vec<String>> =
        stdout(&o).lines().map(|l| l.split('\t').map(str::to_string).collect()).collect();
    assert_eq!(lines.len(), 8, "{lines:?}");
    for (k, line) in lines[..3].iter().enumerate() {
        assert_eq!((line.len(), line[0].as_str(), line[1].as_str()), (5, "0", stages[k]), "{line:?}");
        assert_eq!(line[3], routed[0]["stages"][k]["agent"], "{line:?}");
    }
    assert!(lines[3][1].starts_with("expected_reward=") && lines[7][0] == "1", "{lines:?}");

    // Prompt vectors on stdin, one per line: normalised as the env's (a scaled copy routes the
    // same), numbered in order; an empty line is skipped.
    let v: Vec<f64> = (0..32).map(|i| (f64::from(i) * 0.7).sin()).collect();
    let scaled: Vec<f64> = v.iter().map(|x| 3.0 * x).collect();
    let input = format!("{}\n\n{}\n", serde_json::json!(v), serde_json::json!(scaled));
    let o = mappo_with_stdin(&["route", "--checkpoint", s(&run), "--json", "--quiet"], &input);
    assert!(o.status.success(), "{}", stderr(&o));
    let two: Vec<serde_json::Value> =
        stdout(&o).lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
    assert_eq!(two.len(), 2, "{two:?}");
    assert_eq!((two[0]["prompt"].as_u64(), two[1]["prompt"].as_u64()), (Some(0), Some(1)));
    // A prompt's length does not matter (up to the rounding of its normalisation).
    for (a, b) in
        two[0]["stages"].as_array().expect("stages").iter().zip(two[1]["stages"].as_array().expect("stages"))
    {
        assert_eq!(a["agent"], b["agent"], "{two:?}");
        let p = |st: &serde_json::Value| -> Vec<f64> {
            st["probabilities"].as_array().expect("p").iter().filter_map(|x| x.as_f64()).collect()
        };
        assert!(p(a).iter().zip(p(b)).all(|(x, y)| (x - y).abs() < 1e-5), "{two:?}");
    }
    assert!(
        (two[0]["expected_reward"].as_f64().expect("r") - two[1]["expected_reward"].as_f64().expect("r"))
            .abs()
            < 1e-6
    );

    // Clear errors, no panics.
    let refused = |o: &std::process::Output, want: &[&str]| {
        let e = stderr(o);
        assert!(!o.status.success() && !e.contains("panicked"), "{e}");
        assert!(want.iter().all(|w| e.contains(w)), "{want:?} in: {e}");
    };
    let o = mappo(&["route", "--checkpoint", s(&run), "my parcel never arrived"]);
    refused(&o, &["routes prompt vectors, not texts", "--samples N", "JSON arrays of 32 numbers"]);
    let o = mappo_with_stdin(&["route", "--checkpoint", s(&run)], "[1, 2, 3]\n");
    refused(&o, &["stdin line 1", "3 numbers", "32"]);
    let o = mappo_with_stdin(&["route", "--checkpoint", s(&run)], "my parcel never arrived\n");
    refused(&o, &["stdin line 1", "not a JSON array", "--samples"]);
    let o = mappo_with_stdin(
        &["route", "--checkpoint", s(&run)],
        &format!("{}\n", serde_json::json!(vec![0.0; 32])),
    );
    refused(&o, &["stdin line 1", "all zeros"]);
    let o = mappo(&["route", "--checkpoint", s(&run), "--samples", "0"]);
    refused(&o, &["--samples must be at least 1"]);
    let o = mappo(&["route", "--checkpoint", s(&run), "--samples", "2", "--response", "an answer"]);
    refused(&o, &["--response is for cascade checkpoints"]);

    // --samples is for pipelines: a text checkpoint says what to give it instead.
    let text_run = tmp.path().join("text");
    let o = mappo(&[
        "train",
        "--config",
        s(&root.join("configs/prompts.toml")),
        "--out",
        s(&text_run),
        "--quiet",
        "--set",
        &format!("env.corpus={:?}", s(&root.join("data/prompts.jsonl"))),
        "--set",
        &format!("env.cache_dir={:?}", s(&tmp.path().join("cache"))),
        "--set",
        "train.total_updates=2",
        "--set",
        "train.eval_interval=0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = mappo(&["route", "--checkpoint", s(&text_run), "--samples", "5"]);
    refused(&o, &["--samples draws prompt vectors from a pipeline env", "`text`", "give it texts"]);
}
