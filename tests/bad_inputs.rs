//! Bad inputs through the library: checkpoints from another model shape and
//! corpora with broken lines give typed errors naming the file and problem.

use candle_core::{DType, Device, Tensor};
use mappo_tests::small_config;
use mappo_train::{Checkpoint, NoObserver, RunOptions, SyntheticSetup, evaluate_checkpoint_synthetic, run};

#[test]
fn checkpoint_with_a_tensor_of_another_shape_is_refused_by_name() {
    let cfg = small_config(5, &[]);
    let mut setup = SyntheticSetup::new(&cfg).expect("setup");
    let dir = tempfile::tempdir().expect("tmp");
    let path = run(&mut setup.trainer, None, &RunOptions::new(dir.path()), &mut NoObserver)
        .expect("run")
        .final_checkpoint;
    let mut ckpt = Checkpoint::load(&path, &Device::Cpu).expect("load");
    let bad = Tensor::zeros((3, 3), DType::F32, &Device::Cpu).expect("t");
    ckpt.tensors.insert("policy.encoder.0.weight".into(), bad);
    let other = dir.path().join("other.safetensors");
    ckpt.save(&other).expect("save");
    let e =
        evaluate_checkpoint_synthetic(&other, 10, 1, &Device::Cpu).expect_err("shape mismatch").to_string();
    assert!(e.contains("other.safetensors") && e.contains("encoder.0.weight") && e.contains("[3, 3]"), "{e}");
    // A tensor missing altogether.
    ckpt.tensors.remove("policy.encoder.0.weight");
    ckpt.save(&other).expect("save");
    let e = evaluate_checkpoint_synthetic(&other, 10, 1, &Device::Cpu).expect_err("missing").to_string();
    assert!(e.contains("missing tensor `policy.encoder.0.weight`"), "{e}");
}
