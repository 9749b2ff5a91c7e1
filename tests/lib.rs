//! Helpers shared by the workspace-level integration tests.

use std::path::Path;

use candle_core::Device;
use mappo_config::Config;
use mappo_train::Checkpoint;

/// A small but real training config, on the CPU (where runs are bit-reproducible)
/// whatever the build's features.
pub fn small_config(updates: u64, extra: &[&str]) -> Config {
    let mut sets: Vec<String> = vec![
        "train.device=cpu".into(),
        format!("train.total_updates={updates}"),
        "train.save_interval=25".into(),
        "train.log_interval=5".into(),
        "train.eval_interval=25".into(),
        "train.eval_prompts=512".into(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    match Config::load(None, &sets) {
        Ok(c) => c,
        Err(e) => panic!("test config invalid: {e}"),
    }
}

/// Asserts two checkpoint files are byte-identical (weights, optimizer
/// state, RNG, update, environment state and config alike), naming the first
/// difference when they are not.
pub fn assert_checkpoints_identical(a: &Path, b: &Path) {
    let (x, y) = (std::fs::read(a).expect("read a"), std::fs::read(b).expect("read b"));
    if x == y {
        return;
    }
    let ca = Checkpoint::load(a, &Device::Cpu).expect("load a");
    let cb = Checkpoint::load(b, &Device::Cpu).expect("load b");
    assert_eq!(ca.update, cb.update, "update");
    assert_eq!(ca.rng_state, cb.rng_state, "rng state");
    assert_eq!(ca.adam_steps, cb.adam_steps, "adam steps");
    assert_eq!(ca.env_state, cb.env_state, "environment state");
    assert_eq!(ca.config, cb.config, "config");
    let at = x.iter().zip(&y).position(|(p, q)| p != q).unwrap_or(x.len().min(y.len()));
    panic!(
        "{} and {} differ from byte {at} on (lengths {} and {})",
        a.display(),
        b.display(),
        x.len(),
        y.len()
    );
}

/// Runs `trainer` into `dir` with the periodic evaluator and nothing else.
pub fn train_in<E: mappo_env::Env, P: mappo_nn::Policy>(
    trainer: &mut mappo_train::Trainer<E, P>,
    evaluator: Option<&mappo_train::GreedyEvaluator>,
    dir: &Path,
) -> mappo_train::RunSummary {
    let mut opts = mappo_train::RunOptions::new(dir);
    opts.evaluator = evaluator.map(|e| e as &dyn mappo_train::Evaluate);
    trainer.run(opts).expect("run")
}

/// The metrics log without its wall-clock fields.
pub fn metrics_without_time(run_dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).expect("metrics.jsonl");
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).expect("json line");
            if let Some(o) = v.as_object_mut() {
                o.remove("train_seconds");
                o.remove("updates_per_s");
            }
            v
        })
        .collect()
}

/// An observer that raises the stop flag after update `.0` (simulates Ctrl-C).
#[derive(Debug)]
pub struct StopAt(pub u64, pub std::sync::Arc<std::sync::atomic::AtomicBool>);

impl mappo_train::Observer for StopAt {
    fn on_update(&mut self, m: &mappo_train::UpdateMetrics, _: f64) {
        if m.update == self.0 {
            self.1.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}
