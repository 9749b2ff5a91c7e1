//! The example workspace (`examples/csv-bandit`: a custom `Env` trained with
//! `mappo-train` without default features) builds, trains and learns.

use std::path::Path;
use std::process::Command;

#[test]
fn the_csv_bandit_example_builds_and_learns() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let example = root.join("examples/csv-bandit");
    let run = tempfile::tempdir().expect("tmp");
    // Its own target directory: the outer `cargo test` holds the workspace's.
    let target = root.join("target/example-workspace");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let o = Command::new(cargo)
        .args(["run", "--quiet", "--locked", "--manifest-path"])
        .arg(example.join("Cargo.toml"))
        .arg("--")
        .arg(example.join("data.csv"))
        .arg(run.path())
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("cargo run");
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
