//! What a new user hit when trying every documented command (issue: run
//! directories that mix runs, summaries that lie, checkpoints that are not
//! byte-identical, and smaller mismatches). Each test fails on the old binary.

mod common;
use common::{last_line, mappo, stderr, stdout, train};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn a_run_directory_is_never_mixed_with_another_run() {
    let tmp = tempfile::tempdir().expect("tmp");
    let tw = tmp.path().join("tw");
    let o = train(&tw, &["train.total_updates=20", "train.eval_interval=0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let first = std::fs::read(tw.join("checkpoints/update-0000020.safetensors")).expect("first run");
    let o = train(&tw, &["train.total_updates=10", "train.seed=7", "train.eval_interval=0"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("already holds a run") && err.contains("--resume") && err.contains("--force"),
        "{err}"
    );
    // Nothing of the first run was touched.
    assert_eq!(std::fs::read(tw.join("checkpoints/update-0000020.safetensors")).expect("kept"), first);
    assert!(std::fs::read_to_string(tw.join("config.toml")).expect("config").contains("seed = 42"));
    // --force replaces it: only the new run's files remain.
    let o = mappo(&[
        "train",
        "--force",
        "--out",
        s(&tw),
        "--set",
        "train.total_updates=10",
        "--set",
        "train.seed=7",
        "--set",
        "train.eval_interval=0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let names: Vec<String> = std::fs::read_dir(tw.join("checkpoints"))
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["update-0000010.safetensors".to_string()]);
    assert!(std::fs::read_to_string(tw.join("config.toml")).expect("config").contains("seed = 7"));
}

#[test]
fn resuming_a_finished_run_keeps_its_summary() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = tmp.path().join("run");
    let o = train(&run, &["train.total_updates=30", "train.eval_interval=10"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ckpt = last_line(&o);
    let before = std::fs::read(run.join("summary.json")).expect("summary");
    let o = mappo(&["train", "--resume", s(&run)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(last_line(&o), ckpt, "still prints the final checkpoint");
    assert!(stderr(&o).contains("already complete"), "{}", stderr(&o));
    assert_eq!(std::fs::read(run.join("summary.json")).expect("summary"), before);
}

#[test]
fn identical_runs_give_byte_identical_checkpoints() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let oa = train(&a, &["train.total_updates=20"]);
    let ob = train(&b, &["train.total_updates=20"]);
    assert!(oa.status.success() && ob.status.success(), "{}", stderr(&oa));
    let (x, y) = (std::fs::read(last_line(&oa)).expect("a"), std::fs::read(last_line(&ob)).expect("b"));
    assert!(x == y, "checkpoints differ from byte {:?}", x.iter().zip(&y).position(|(p, q)| p != q));
}

#[test]
fn divergence_before_any_checkpoint_says_none_was_written() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = tmp.path().join("run");
    let o = train(
        &run,
        &["ppo.lr_actor=1e30", "ppo.lr_critic=1e30", "ppo.max_grad_norm=0", "train.eval_interval=0"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("diverged at update"), "{err}");
    assert!(
        !err.contains("the last good checkpoint is"),
        "no checkpoint exists, the message must not claim one: {err}"
    );
    assert!(err.contains("no checkpoint had been written"), "{err}");
    let n = std::fs::read_dir(run.join("checkpoints")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(n, 0);
}

#[test]
fn eval_says_what_a_text_checkpoint_needs_and_refuses_flags_it_would_ignore() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = tmp.path().join("run");
    let o = train(&run, &["train.total_updates=5", "train.eval_interval=0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A checkpoint that says it was trained on the text env.
    let mut ckpt = mappo_train::Checkpoint::load(&last_line(&o), &candle_core::Device::Cpu).expect("load");
    ckpt.env_kind = "text".into();
    let text = tmp.path().join("text.safetensors");
    ckpt.save(&text).expect("save");
    let o = mappo(&["eval", "--checkpoint", s(&text)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--corpus FILE"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("shape"), "{}", stderr(&o));
    // --episodes/--seed mean nothing with --corpus: refused, not ignored.
    let o = mappo(&["eval", "--checkpoint", s(&text), "--corpus", "x.jsonl", "--episodes", "5"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--episodes") && stderr(&o).contains("--corpus"), "{}", stderr(&o));
}

#[test]
fn eval_takes_a_run_directory_like_resume_does() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = tmp.path().join("run");
    let o = train(&run, &["train.total_updates=20", "train.save_interval=10", "train.eval_interval=0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(run.join("checkpoints/update-0000030.safetensors"), b"torn").expect("garbage");
    let o = mappo(&["eval", "--checkpoint", s(&run), "--episodes", "50", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("update-0000020"), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("json");
    assert_eq!(v["n"].as_u64(), Some(50));
}

#[test]
fn logs_are_plain_text_off_a_terminal_and_quiet_means_quiet() {
    let tmp = tempfile::tempdir().expect("tmp");
    let o = train(&tmp.path().join("a"), &["train.total_updates=5"]);
    assert!(o.status.success());
    assert!(stderr(&o).contains("INFO"), "{}", stderr(&o));
    assert!(!stderr(&o).contains('\u{1b}'), "ANSI codes in a redirected log: {:?}", stderr(&o));
    let o = mappo(&["--quiet", "train", "--out", s(&tmp.path().join("b")), "--set", "train.total_updates=5"]);
    assert!(o.status.success());
    assert!(!stderr(&o).contains("INFO"), "--quiet must hide info lines: {}", stderr(&o));
    assert!(last_line(&o).is_file(), "the checkpoint path is still printed");
    let o = mappo(&["--log", "bogus_level", "config"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("bogus_level") && stderr(&o).contains("not a level"), "{}", stderr(&o));
    let o = mappo(&["--log", "warn,mappo_train=debug", "config"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_missing_config_file_is_said_once() {
    let o = mappo(&["train", "--config", "nonexist.toml"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("nonexist.toml"), "{err}");
    let cause = "No such file or directory";
    assert_eq!(err.matches(cause).count(), 1, "{err}");
}

#[test]
fn config_prints_a_resolved_config() {
    let o = mappo(&["config", "--set", "train.seed=7", "--set", "ppo.epochs=2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg = mappo_config::Config::from_toml_str(&stdout(&o), "stdout").expect("valid TOML config");
    assert_eq!((cfg.train.seed, cfg.ppo.epochs), (7, 2));
    let o = mappo(&["config", "--set", "ppo.epochs=0"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn route_help_names_the_json_keys() {
    let o = mappo(&["route", "--help"]);
    assert!(o.status.success());
    for k in ["agent_index", "\"agent\"", "probabilities", "by_agent", "English"] {
        assert!(stdout(&o).contains(k), "{k}: {}", stdout(&o));
    }
}

#[test]
fn metrics_log_both_learning_rates() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = tmp.path().join("run");
    let o = train(&run, &["train.total_updates=10", "train.log_interval=5"]);
    assert!(o.status.success());
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics");
    let line: serde_json::Value = serde_json::from_str(text.lines().next().expect("a line")).expect("json");
    assert!(line["lr_actor"].as_f64().is_some() && line["lr_critic"].as_f64().is_some(), "{line}");
    assert!(
        line["lr_critic"].as_f64() > line["lr_actor"].as_f64(),
        "defaults: 1e-3 vs 3e-4 (annealed alike)"
    );
}

/// A text checkpoint trained for a few updates on the project's prompts.
fn text_checkpoint(tmp: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let run = tmp.join("text-run");
    let o = mappo(&[
        "--quiet",
        "train",
        "--config",
        s(&root.join("configs/prompts.toml")),
        "--out",
        s(&run),
        "--set",
        &format!("env.cache_dir={:?}", s(&tmp.join("cache"))),
        "--set",
        "train.total_updates=5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    last_line(&o)
}

#[test]
fn route_is_a_filter_refuses_empty_texts_and_names_the_agents() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ckpt = text_checkpoint(tmp.path());
    let o = mappo(&["route", "--checkpoint", s(&ckpt), "fine", "  "]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("text 2 is empty"), "{}", stderr(&o));
    // Line by line: the answer to the first line comes before stdin is closed.
    let mut child = Command::new(env!("CARGO_BIN_EXE_mappo"))
        .args(["route", "--json", "--checkpoint", s(&ckpt)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let out = child.stdout.take().expect("stdout");
    use std::io::{BufRead, Write};
    writeln!(stdin, "my parcel never arrived").expect("write");
    stdin.flush().expect("flush");
    let mut reader = std::io::BufReader::new(out);
    let mut first = String::new();
    reader.read_line(&mut first).expect("an answer while stdin is still open");
    let v: serde_json::Value = serde_json::from_str(&first).expect("json");
    let agent = v["agent"].as_str().expect("agent").to_string();
    let p = v["by_agent"][&agent].as_f64().expect("by_agent names every agent");
    let i = v["agent_index"].as_u64().expect("index") as usize;
    assert!((p - v["probabilities"][i].as_f64().expect("prob")).abs() < 1e-6, "{v}");
    writeln!(stdin).expect("an empty line is skipped");
    writeln!(stdin, "prove that sqrt(2) is irrational").expect("write");
    drop(stdin);
    let rest: Vec<String> = reader.lines().map(|l| l.expect("line")).collect();
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert!(child.wait().expect("wait").success());
    // The eval table labels the confusion matrix's rows with the agents.
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/prompts.jsonl");
    let o = mappo(&["eval", "--checkpoint", s(&ckpt), "--corpus", s(&corpus)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(table.contains("confusion matrix"), "{table}");
    assert!(table.lines().all(|l| l.len() < 200), "no one-line matrix: {table}");
    let rows = table.lines().skip_while(|l| !l.starts_with("confusion")).skip(2).count();
    assert!(rows >= 2, "one row per agent: {table}");
}

#[test]
fn embed_passes_every_field_through() {
    let tmp = tempfile::tempdir().expect("tmp");
    let input = tmp.path().join("in.jsonl");
    std::fs::write(
        &input,
        "\u{feff}{\"id\": 7, \"text\": \"hello\", \"label\": \"x\"}\n{\"text\": \"second\"}\n",
    )
    .expect("write");
    let o = mappo(&["--quiet", "embed", "--input", s(&input)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> =
        stdout(&o).lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["id"], serde_json::json!(7));
    assert_eq!(lines[0]["label"], serde_json::json!("x"));
    assert_eq!(lines[0]["embedding"].as_array().map(Vec::len), Some(384));
    assert_eq!(lines[1]["text"], serde_json::json!("second"));
}

#[test]
fn policy_publish_list_and_log_stats_on_a_fresh_database() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = tmp.path().join("run");
    let o = train(&run, &["train.total_updates=10", "train.eval_interval=0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let db = format!("sqlite:{}", s(&tmp.path().join("db/mappo.db")));
    let o = mappo(&["policy", "publish", "--db", &db, "--checkpoint", s(&run), "--note", "first"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "1");
    // The same file again is the same version; a file that is not a checkpoint is refused.
    let o = mappo(&["policy", "publish", "--db", &db, "--checkpoint", s(&last_line(&o).with_file_name("x"))]);
    assert_eq!(o.status.code(), Some(1));
    let o = mappo(&["policy", "publish", "--db", &db, "--checkpoint", s(&run)]);
    assert_eq!(stdout(&o).trim(), "1", "{}", stderr(&o));
    let o = mappo(&["policy", "list", "--db", &db, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("json");
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v[0]["version"], serde_json::json!(1));
    assert_eq!(v[0]["note"], serde_json::json!("first"));
    let o = mappo(&["log", "stats", "--db", &db, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("json");
    assert_eq!((v["decisions"].as_i64(), v["policy_versions"].as_i64()), (Some(0), Some(1)), "{v}");
    let o = mappo(&["log", "export", "--db", &db]);
    assert!(o.status.success() && stdout(&o).is_empty(), "{}", stderr(&o));
    // An unreachable database is named, without its password.
    let o = mappo(&["log", "stats", "--db", "postgres://me:secret@127.0.0.1:1/none"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("127.0.0.1:1") && !stderr(&o).contains("secret"), "{}", stderr(&o));
}
