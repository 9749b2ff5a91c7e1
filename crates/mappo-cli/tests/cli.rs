//! The `mappo` binary as a user runs it.

mod common;
use common::{last_line, mappo, stderr, stdout, train};

use std::path::Path;
use std::process::Command;

#[test]
fn train_then_eval_json() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = tmp.path().join("run");
    let o = train(&run, &["train.total_updates=300", "train.save_interval=100", "train.eval_interval=100"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ckpt = last_line(&o);
    assert!(ckpt.is_file(), "last stdout line must be the final checkpoint: {ckpt:?}");
    assert!(ckpt.ends_with("update-0000300.safetensors"));
    for f in ["config.toml", "metrics.jsonl", "summary.json", "checkpoints/update-0000100.safetensors"] {
        assert!(run.join(f).exists(), "{f}");
    }
    let o = mappo(&["eval", "--checkpoint", ckpt.to_str().expect("utf-8"), "--episodes", "2000", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    let get = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("missing {k}: {v}"));
    let (mean, oracle, random) = (get("mean_reward"), get("oracle_reward"), get("random_reward"));
    assert!(oracle > random);
    let norm = get("normalized_reward");
    assert!((norm - (mean - random) / (oracle - random)).abs() < 1e-9);
    assert!(norm > 0.8, "well above random (0): {norm}");
    assert!(get("oracle_agreement") > 0.6, "random agrees on 1/4: {v}");
    assert_eq!(v["n"].as_u64(), Some(2000));
}

#[test]
fn resume_from_run_dir_matches_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().expect("tmp");
    let full = tmp.path().join("full");
    let sets = ["train.total_updates=60", "train.save_interval=20", "train.eval_interval=0"];
    let o = train(&full, &sets);
    assert!(o.status.success(), "{}", stderr(&o));
    let a = std::fs::read(last_line(&o)).expect("read");
    // The same run with its last checkpoint removed, resumed from update 40.
    let part = tmp.path().join("part");
    let o = train(&part, &sets);
    assert!(o.status.success());
    std::fs::remove_file(last_line(&o)).expect("rm");
    std::fs::write(part.join("checkpoints/update-0000050.safetensors"), b"torn").expect("garbage");
    let o = mappo(&["train", "--resume", part.to_str().expect("utf-8")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("update-0000040"),
        "resumes from the latest valid checkpoint: {}",
        stderr(&o)
    );
    let b = std::fs::read(last_line(&o)).expect("read");
    let (ta, tb) = (tensors(&a), tensors(&b));
    assert_eq!(ta, tb, "resumed run must end bit-identical");
}

fn tensors(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let st = safetensors_names(bytes);
    st.into_iter().collect()
}

/// (name, raw bytes) of every tensor, sorted by name; parses the safetensors
/// header by hand so that this test checks the file format independently.
fn safetensors_names(bytes: &[u8]) -> std::collections::BTreeMap<String, Vec<u8>> {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header json");
    let data = &bytes[8 + n..];
    let mut out = std::collections::BTreeMap::new();
    for (k, v) in header.as_object().expect("object") {
        if k == "__metadata__" {
            continue;
        }
        let off = v["data_offsets"].as_array().expect("offsets");
        let (s, e) = (off[0].as_u64().expect("s") as usize, off[1].as_u64().expect("e") as usize);
        out.insert(k.clone(), data[s..e].to_vec());
    }
    out
}

#[test]
fn config_errors_name_the_key_and_exit_nonzero_without_panic() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("x");
    for (set, needle) in [
        ("ppo.lr_actorr=1", "ppo.lr_actorr"),
        ("ppo.lr_actor=-1", "ppo.lr_actor"),
        ("train.batch_size=0", "train.batch_size"),
        ("env.num_agents=1", "env.num_agents"),
        ("ppo.clip_eps=zero", "ppo.clip_eps"),
        ("train.total_updates=-3", "train.total_updates"),
        ("nonsense", "KEY=VALUE"),
    ] {
        let o = train(&out, &[set]);
        assert_eq!(o.status.code(), Some(1), "{set}");
        let err = stderr(&o);
        assert!(err.contains(needle), "{set}: {err}");
        assert!(!err.contains("panicked"), "{set}: {err}");
    }
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[ppo]\nclip_eps = 0.2\nepochs = = 4\n").expect("write");
    let o =
        mappo(&["train", "--config", bad.to_str().expect("utf-8"), "--out", out.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("bad.toml") && stderr(&o).contains("line 3"), "{}", stderr(&o));
}

#[test]
fn bad_checkpoints_are_clear_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    let garbage = tmp.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"not a checkpoint at all").expect("write");
    let missing = tmp.path().join("missing.safetensors");
    for p in [&garbage, &missing] {
        let o = mappo(&["eval", "--checkpoint", p.to_str().expect("utf-8")]);
        assert_eq!(o.status.code(), Some(1));
        let err = stderr(&o);
        assert!(err.contains(p.file_name().and_then(|n| n.to_str()).expect("name")), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn help_explains_the_commands() {
    let o = mappo(&["--help"]);
    assert!(o.status.success());
    for w in ["train", "eval", "config"] {
        assert!(stdout(&o).contains(w), "{w}");
    }
    let o = mappo(&["train", "--help"]);
    assert!(stdout(&o).contains("--resume") && stdout(&o).contains("--set"));
}

#[test]
fn sigkill_mid_run_then_resume_is_bit_identical() {
    let tmp = tempfile::tempdir().expect("tmp");
    let sets = [
        "train.total_updates=2000",
        "train.save_interval=5",
        "train.eval_interval=0",
        "train.log_interval=50",
    ];
    let full = tmp.path().join("full");
    let o = train(&full, &sets);
    assert!(o.status.success(), "{}", stderr(&o));
    let a = std::fs::read(last_line(&o)).expect("read");
    // The same run, killed with SIGKILL while it trains and writes checkpoints.
    let part = tmp.path().join("part");
    let mut args: Vec<String> =
        vec!["train".into(), "--quiet".into(), "--out".into(), part.display().to_string()];
    for s in sets {
        args.push("--set".into());
        args.push(s.into());
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_mappo"))
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    // Wait until a few checkpoints exist, then kill at an arbitrary moment.
    let ckdir = part.join("checkpoints");
    let t0 = std::time::Instant::now();
    loop {
        let n = std::fs::read_dir(&ckdir).map(|d| d.count()).unwrap_or(0);
        if n >= 15 || t0.elapsed().as_secs() > 60 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "the run must have been killed before finishing");
    let o = mappo(&["train", "--quiet", "--resume", part.to_str().expect("utf-8")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let b = std::fs::read(last_line(&o)).expect("read");
    assert_eq!(tensors(&a), tensors(&b), "killed and resumed run must end bit-identical");
}

#[test]
fn truncated_checkpoint_and_resume_of_an_empty_run_are_clear_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = tmp.path().join("run");
    let o = train(&run, &["train.total_updates=20", "train.save_interval=10", "train.eval_interval=0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(last_line(&o)).expect("read");
    let cut = tmp.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let o = mappo(&["eval", "--checkpoint", cut.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cut.safetensors") && !stderr(&o).contains("panicked"), "{}", stderr(&o));
    let empty = tmp.path().join("empty-run");
    std::fs::create_dir_all(empty.join("checkpoints")).expect("mkdir");
    let o = mappo(&["train", "--quiet", "--resume", empty.to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no checkpoint"), "{}", stderr(&o));
}

#[test]
fn divergence_stops_with_the_update_named_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = tmp.path().join("run");
    // An absurd learning rate with no gradient clipping blows the weights up.
    let o = train(
        &run,
        &[
            "train.total_updates=200",
            "train.save_interval=1",
            "train.eval_interval=0",
            // Diverges at update 2 (seeded, so always), after update 1 was saved.
            "ppo.lr_actor=7e5",
            "ppo.lr_critic=7e5",
            "ppo.max_grad_norm=0",
            "ppo.anneal_lr=false",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("diverged at update") && !err.contains("panicked"), "{err}");
    // The message names the checkpoint that is kept, and it exists.
    let kept = err.split("the last good checkpoint is ").nth(1).expect(&err).trim();
    assert!(Path::new(kept).is_file(), "{kept}: {err}");
    // Every checkpoint on disk loads and evaluates.
    for e in std::fs::read_dir(run.join("checkpoints")).expect("dir") {
        let p = e.expect("entry").path();
        let o = mappo(&["eval", "--checkpoint", p.to_str().expect("utf-8"), "--episodes", "10"]);
        assert!(o.status.success(), "{}: {}", p.display(), stderr(&o));
    }
}

#[test]
fn sigint_and_sigterm_write_a_checkpoint_and_exit_with_their_own_status() {
    for (signal, code) in [("-INT", 130), ("-TERM", 143)] {
        stop_with(signal, code);
    }
}

fn stop_with(signal: &str, code: i32) {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = tmp.path().join("run");
    let child = Command::new(env!("CARGO_BIN_EXE_mappo"))
        .args(["train", "--quiet", "--out", run.to_str().expect("utf-8")])
        .args(["--set", "train.total_updates=1000000", "--set", "train.eval_interval=0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    // Wait until training is under way (the run directory has its config).
    let t0 = std::time::Instant::now();
    while !run.join("config.toml").exists() && t0.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let ok = Command::new("kill").args([signal, &child.id().to_string()]).status().expect("kill");
    assert!(ok.success());
    let o = child.wait_with_output().expect("wait");
    assert_eq!(o.status.code(), Some(code), "{signal}: {}", stderr(&o));
    let ckpt = last_line(&o);
    assert!(ckpt.is_file(), "{ckpt:?}");
    // Acknowledged at once, and the way on is said.
    assert!(stderr(&o).contains("stopping after the current update"), "{}", stderr(&o));
    assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).expect("summary"))
            .expect("json");
    assert_eq!(summary["interrupted"], serde_json::json!(true), "{summary}");
    let o = mappo(&["eval", "--checkpoint", ckpt.to_str().expect("utf-8"), "--episodes", "10"]);
    assert!(o.status.success());
}

#[test]
fn missing_model_and_bad_embed_input_are_clear_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    let input = tmp.path().join("in.jsonl");
    std::fs::write(&input, "{\"text\": \"ok\"}\n").expect("write");
    let o = Command::new(env!("CARGO_BIN_EXE_mappo"))
        .args(["embed", "--quiet", "--input", input.to_str().expect("utf-8")])
        .env("MAPPO_MODEL_DIR", tmp.path().join("nowhere"))
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cargo xtask fetch-model"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"));
}

#[test]
fn bad_corpora_are_refused_with_file_and_line() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let run = tmp.path().join("run");
    let cfg = root.join("configs/prompts.toml");
    let corpus = root.join("data/prompts.jsonl");
    let cache = tmp.path().join("cache");
    let o = mappo(&[
        "train",
        "--quiet",
        "--config",
        cfg.to_str().expect("utf-8"),
        "--out",
        run.to_str().expect("utf-8"),
        "--set",
        &format!("env.corpus={:?}", corpus.display().to_string()),
        "--set",
        &format!("env.cache_dir={:?}", cache.display().to_string()),
        "--set",
        "train.total_updates=5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ckpt = last_line(&o);
    for (body, needle) in [
        ("{\"text\": \"ok\", \"label\": \"code\"}\n{not json\n", "line 2"),
        ("{\"label\": \"code\"}\n", "missing `text`"),
        ("{\"text\": \"x\", \"label\": \"chef\"}\n", "`chef` is not an agent"),
        ("", "empty"),
    ] {
        let bad = tmp.path().join("bad.jsonl");
        std::fs::write(&bad, body).expect("write");
        let o = mappo(&[
            "eval",
            "--quiet",
            "--checkpoint",
            ckpt.to_str().expect("utf-8"),
            "--corpus",
            bad.to_str().expect("utf-8"),
        ]);
        assert_eq!(o.status.code(), Some(1), "{body}");
        let err = stderr(&o);
        assert!(err.contains("bad.jsonl") && err.contains(needle) && !err.contains("panicked"), "{err}");
    }
    // Empty, whitespace-only, non-ASCII and very long texts are valid input.
    let odd = tmp.path().join("odd.jsonl");
    let long = "word ".repeat(2000);
    let lines = [
        serde_json::json!({"text": "", "label": "code"}),
        serde_json::json!({"text": "   \t ", "label": "math"}),
        serde_json::json!({"text": "Ünïcödé ✓ 数学の問題 🚀", "label": "math"}),
        serde_json::json!({"text": long, "label": "writing"}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&odd, text).expect("write");
    let o = mappo(&[
        "eval",
        "--quiet",
        "--json",
        "--checkpoint",
        ckpt.to_str().expect("utf-8"),
        "--corpus",
        odd.to_str().expect("utf-8"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("json");
    assert_eq!(v["n"].as_u64(), Some(4));
}

#[test]
fn device_auto_says_what_it_chose_and_explicit_cuda_never_falls_back() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = tmp.path().join("run");
    let run = run.to_str().expect("utf-8");
    let sets = ["--set", "train.total_updates=2", "--set", "train.eval_interval=0"];
    let mut args = vec!["train", "--device", "auto", "--out", run];
    args.extend(sets);
    let o = mappo(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    if cfg!(feature = "cuda") {
        assert!(
            stderr(&o).contains("device cuda:0") || stderr(&o).contains("no GPU answered"),
            "{}",
            stderr(&o)
        );
    } else {
        assert!(
            stderr(&o).contains("device cpu: this binary was built without the `cuda` feature"),
            "{}",
            stderr(&o)
        );
        // An explicit CUDA device is an error, not a silent CPU run.
        for dev in ["cuda", "cuda:1"] {
            let mut args = vec!["train", "--quiet", "--device", dev, "--out", run];
            args.extend(sets);
            let o = mappo(&args);
            assert_eq!(o.status.code(), Some(1), "{dev}: {}", stderr(&o));
            let err = stderr(&o);
            assert!(err.contains(&format!("device `{dev}`")) && err.contains("`cuda` feature"), "{err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    }
    let o = mappo(&["train", "--quiet", "--device", "tpu", "--out", run]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("train.device") && !stderr(&o).contains("panicked"), "{}", stderr(&o));
}

/// `mappo ... | head -1`: a closed stdout ends the command quietly (exit 0), not with a panic.
#[test]
fn closed_stdout_is_not_a_panic() {
    let tmp = tempfile::tempdir().expect("tmp");
    let run = tmp.path().join("run");
    let o = train(&run, &["train.total_updates=20", "train.eval_interval=0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ckpt = last_line(&o);
    let ckpt = ckpt.to_str().expect("utf-8");
    for args in [
        &["config"][..],
        &["eval", "--checkpoint", ckpt, "--episodes", "100"][..],
        &["eval", "--checkpoint", ckpt, "--episodes", "100", "--json"][..],
    ] {
        // A pipe whose reading end is already closed: the first write fails with EPIPE.
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let o =
            Command::new(env!("CARGO_BIN_EXE_mappo")).args(args).stdout(writer).output().expect("run mappo");
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{args:?}: {}", stderr(&o));
    }
}
