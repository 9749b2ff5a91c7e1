//! Bad inputs through the library: checkpoints from another model shape and
//! corpora with broken lines give typed errors naming the file and problem.

use candle_core::{DType, Device, Tensor};
use mappo_eval::evaluate_synthetic;
use mappo_tests::small_config;
use mappo_tests::train_in;
use mappo_train::{Checkpoint, SyntheticSetup};

#[test]
fn checkpoint_with_a_tensor_of_another_shape_is_refused_by_name() {
    let cfg = small_config(5, &[]);
    let mut setup = SyntheticSetup::new(&cfg).expect("setup");
    let dir = tempfile::tempdir().expect("tmp");
    let path = train_in(&mut setup.trainer, None, dir.path()).final_checkpoint;
    let mut ckpt = Checkpoint::load(&path, &Device::Cpu).expect("load");
    let bad = Tensor::zeros((3, 3), DType::F32, &Device::Cpu).expect("t");
    ckpt.tensors.insert("policy.encoder.0.weight".into(), bad);
    let other = dir.path().join("other.safetensors");
    ckpt.save(&other).expect("save");
    let reloaded = Checkpoint::load(&other, &Device::Cpu).expect("load");
    let e = evaluate_synthetic(&reloaded, 10, 1, &Device::Cpu).expect_err("shape mismatch").to_string();
    assert!(e.contains("other.safetensors") && e.contains("encoder.0.weight") && e.contains("[3, 3]"), "{e}");
    // A tensor missing altogether.
    ckpt.tensors.remove("policy.encoder.0.weight");
    ckpt.save(&other).expect("save");
    let reloaded = Checkpoint::load(&other, &Device::Cpu).expect("load");
    let e = evaluate_synthetic(&reloaded, 10, 1, &Device::Cpu).expect_err("missing").to_string();
    assert!(e.contains("missing tensor `policy.encoder.0.weight`"), "{e}");
}

#[test]
fn corpora_with_broken_lines_are_refused_with_file_and_line() {
    let agents: Vec<mappo_config::AgentSpec> = ["code", "math"]
        .iter()
        .map(|n| mappo_config::AgentSpec {
            name: n.to_string(),
            description: format!("{n} questions"),
            cost: 0.0,
        })
        .collect();
    let dir = tempfile::tempdir().expect("tmp");
    let cases = [
        ("{\"text\": \"ok\", \"label\": \"code\"}\n{\"text\": \"broken\"\n", 2, "JSON"),
        ("{\"text\": \"ok\"}\n{\"label\": \"code\"}\n", 2, "text"),
        ("{\"text\": \"ok\", \"label\": \"poetry\"}\n", 1, "poetry"),
    ];
    for (i, (body, line, mention)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.jsonl"));
        std::fs::write(&path, body).expect("write");
        let e = mappo_env::load_corpus(&path, &agents).expect_err(body).to_string();
        assert!(e.contains(&format!("bad{i}.jsonl")), "{e}");
        assert!(e.contains(&format!("line {line}")), "{body}: {e}");
        assert!(e.to_lowercase().contains(&mention.to_lowercase()), "{body}: {e}");
    }
    let e =
        mappo_env::load_corpus(&dir.path().join("absent.jsonl"), &agents).expect_err("absent").to_string();
    assert!(e.contains("absent.jsonl"), "{e}");
}
