//! The example workspaces build, train and learn: `examples/csv-bandit` (a custom one-step `Env`
//! trained with `mappo-train` without default features), which also rejects bad CSV files with
//! an error naming the file and line instead of a panic, and `examples/two-stage` (a custom
//! two-step env with a head per stage and a centralized critic).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `cargo run --locked` of the csv-bandit example with `args`.
fn run_example(args: &[&Path]) -> Output {
    run_named("csv-bandit", args)
}

/// `cargo run --locked` of example workspace `name` with `args`.
fn run_named(name: &str, args: &[&Path]) -> Output {
    let example = root().join("examples").join(name);
    // Its own target directory: the outer `cargo test` holds the workspace's.
    let target = root().join("target/example-workspace");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    Command::new(cargo)
        .args(["run", "--quiet", "--locked", "--manifest-path"])
        .arg(example.join("Cargo.toml"))
        .arg("--")
        .args(args)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("cargo run")
}

#[test]
fn the_csv_bandit_example_builds_and_learns() {
    let run = tempfile::tempdir().expect("tmp");
    let o = run_example(&[&root().join("examples/csv-bandit/data.csv"), run.path()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}\n{}", out, String::from_utf8_lossy(&o.stderr));
    let agreement: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("oracle_agreement "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no agreement printed: {out}"));
    // Three arms: random routing agrees with the best arm a third of the time.
    assert!(agreement > 0.9, "the example must learn its bandit: agreement {agreement}");
    let ckpt = mappo_train::Checkpoint::load(
        Path::new(out.lines().find_map(|l| l.strip_prefix("checkpoint ")).expect("checkpoint line")),
        &candle_core::Device::Cpu,
    )
    .expect("the example's checkpoint loads");
    assert_eq!(ckpt.env_kind, "csv-bandit", "the checkpoint records the custom env's kind");
    assert_eq!(ckpt.update, 300);
}

#[test]
fn the_two_stage_example_builds_and_learns_its_episodes() {
    let run = tempfile::tempdir().expect("tmp");
    let o = run_named("two-stage", &[run.path()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}\n{}", out, String::from_utf8_lossy(&o.stderr));
    let field = |name: &str| -> f64 {
        out.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {name} printed: {out}"))
    };
    // Random joint choices earn about a third of the optimum's margin; learning must come close
    // to the optimum (the answerer's best choice depends on the tool's).
    let normalized = field("normalized_return ");
    assert!(normalized > 0.9, "the two-stage example must learn: normalized return {normalized}\n{out}");
    assert!(field("optimal_return ") > field("random_return "));
    let ckpt = mappo_train::Checkpoint::load(
        Path::new(out.lines().find_map(|l| l.strip_prefix("checkpoint ")).expect("checkpoint line")),
        &candle_core::Device::Cpu,
    )
    .expect("the example's checkpoint loads");
    assert_eq!(ckpt.env_kind, "two-stage");
    assert!(ckpt.tensors.contains_key("policy.policy_head.1.weight"), "a head per stage");
    assert!(ckpt.tensors.contains_key("policy.critic.value_head.weight"), "a critic network of its own");
}

#[test]
fn the_csv_bandit_example_rejects_bad_files_naming_file_and_line() {
    let tmp = tempfile::tempdir().expect("tmp");
    let header = "x,y,reward_a,reward_b,reward_c\n";
    let good = "0.1,0.2,1,0,0\n";
    // (file name, content or None for a missing file, what the error must say)
    let cases: &[(&str, Option<String>, &[&str])] = &[
        (
            "short.csv",
            Some(format!("{header}{good}0.3,0.4,1,0\n")),
            &["short.csv, line 3", "4 fields, expected 5"],
        ),
        (
            "word.csv",
            Some(format!("{header}{good}{good}0.3,abc,1,0,0\n")),
            &["word.csv, line 4", "y: \"abc\""],
        ),
        (
            "nan.csv",
            Some(format!("{header}0.3,0.4,NaN,0,0\n")),
            &["nan.csv, line 2", "reward_a", "not a finite"],
        ),
        ("inf.csv", Some(format!("{header}{good}0.3,-inf,1,0,0\n")), &["inf.csv, line 3", "not a finite"]),
        ("empty.csv", Some(String::new()), &["empty.csv: the file is empty"]),
        ("header-only.csv", Some(header.to_string()), &["header-only.csv: no rows"]),
        ("no-arms.csv", Some(format!("x,y,z\n{good}")), &["no-arms.csv, line 1", "reward"]),
        ("missing.csv", None, &["missing.csv: cannot read it"]),
    ];
    for (name, content, wants) in cases {
        let file = tmp.path().join(name);
        if let Some(content) = content {
            std::fs::write(&file, content).expect("write the fixture");
        }
        let o = run_example(&[&file, &tmp.path().join("run")]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{name}: exit status 1 (an error, not a panic's 101)\n{err}");
        for want in *wants {
            assert!(err.contains(want), "{name}: the error must say {want:?}:\n{err}");
        }
        assert!(err.contains(&file.display().to_string()), "{name}: the error names the file:\n{err}");
        assert!(!err.contains("panicked"), "{name}: no panic:\n{err}");
        assert!(o.stdout.is_empty(), "{name}: nothing trained or printed");
    }
}
