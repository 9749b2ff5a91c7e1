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

/// Asserts two checkpoints hold bit-identical tensors and equal metadata.
pub fn assert_checkpoints_identical(a: &Path, b: &Path) {
    let ca = Checkpoint::load(a, &Device::Cpu).expect("load a");
    let cb = Checkpoint::load(b, &Device::Cpu).expect("load b");
    assert_eq!(ca.update, cb.update, "update");
    assert_eq!(ca.rng_state, cb.rng_state, "rng state");
    assert_eq!(ca.adam_steps, cb.adam_steps, "adam steps");
    assert_eq!(ca.config, cb.config, "config");
    let mut names: Vec<&String> = ca.tensors.keys().collect();
    names.sort();
    let mut names_b: Vec<&String> = cb.tensors.keys().collect();
    names_b.sort();
    assert_eq!(names, names_b, "tensor names");
    for n in names {
        let x: Vec<u32> = bits(&ca.tensors[n]);
        let y: Vec<u32> = bits(&cb.tensors[n]);
        assert_eq!(x, y, "tensor {n} differs");
    }
}

fn bits(t: &candle_core::Tensor) -> Vec<u32> {
    let v: Vec<f32> = t.flatten_all().and_then(|t| t.to_vec1()).expect("f32 tensor");
    v.into_iter().map(f32::to_bits).collect()
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
