//! The CUDA build on a GPU (compiled only with `--features cuda`; build it with
//! `cargo xtask build-cuda --tests` and run it where a GPU is): training on the GPU
//! learns like training on the CPU, checkpoints cross devices both ways, and the
//! text pipeline (embedder, cached table, policy) runs on the GPU and agrees with
//! the CPU. A CUDA build with no GPU fails these tests: they are never skipped.
#![cfg(feature = "cuda")]

use candle_core::{Device, Tensor};
use mappo_config::Rng;
use mappo_env::{Env, SyntheticEnv};
use mappo_eval::evaluate_synthetic;
use mappo_nn::Policy;
use mappo_tests::{small_config, train_in};
use mappo_train::{Checkpoint, RoutingPolicy, SyntheticSetup, TextSetup};

fn gpu() -> Device {
    match Device::new_cuda(0) {
        Ok(d) => d,
        Err(e) => panic!("this is the CUDA build's test and needs a GPU: {e}"),
    }
}

fn host(t: &Tensor) -> Vec<f32> {
    t.to_device(&Device::Cpu).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1()).expect("host")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn selecting_auto_picks_the_gpu() {
    let (d, why) = mappo_train::select_device(mappo_config::Device::Auto).expect("auto");
    assert!(d.is_cuda(), "auto must pick the GPU in a CUDA build with a GPU: {why}");
}

#[test]
fn gpu_training_learns_like_cpu_training_and_checkpoints_cross_devices() {
    // Long enough to converge (the CPU reaches 0.946-0.959 agreement at 1000 updates over
    // seeds 1-4 and 42), so that the GPU's different rounding, which changes the sampled
    // trajectory, cannot move the end point much.
    let cfg = small_config(1000, &["train.save_interval=500", "train.eval_interval=0"]);
    let train_on = |device: &Device| {
        let mut setup = SyntheticSetup::on(&cfg, device).expect("setup");
        let dir = tempfile::tempdir().expect("tmp");
        let s = train_in(&mut setup.trainer, Some(&setup.evaluator), dir.path());
        (dir, s.final_checkpoint)
    };
    let (_dc, cpu_ckpt) = train_on(&Device::Cpu);
    let (_dg, gpu_ckpt) = train_on(&gpu());

    // Both checkpoints evaluated on the CPU, on the same 4096 fresh prompts.
    let load = |p: &std::path::Path, d: &Device| Checkpoint::load(p, d).expect("checkpoint loads");
    let cpu = evaluate_synthetic(&load(&cpu_ckpt, &Device::Cpu), 4096, 2024, &Device::Cpu).expect("cpu eval");
    let gpu_on_cpu =
        evaluate_synthetic(&load(&gpu_ckpt, &Device::Cpu), 4096, 2024, &Device::Cpu).expect("eval");
    assert!(cpu.oracle_agreement > 0.93, "CPU run: {cpu:?}");
    assert!(gpu_on_cpu.oracle_agreement > 0.93, "GPU run did not learn as well: {gpu_on_cpu:?}");
    assert!(
        (gpu_on_cpu.oracle_agreement - cpu.oracle_agreement).abs() < 0.03,
        "GPU {gpu_on_cpu:?} vs CPU {cpu:?}"
    );
    // The GPU checkpoint evaluated on the GPU agrees with itself evaluated on the CPU.
    let gpu_on_gpu = evaluate_synthetic(&load(&gpu_ckpt, &gpu()), 4096, 2024, &gpu()).expect("eval");
    assert!((gpu_on_gpu.oracle_agreement - gpu_on_cpu.oracle_agreement).abs() < 0.01);

    // Same weights, same logits on both devices (CPU checkpoint loaded on the GPU and back).
    let on_gpu =
        RoutingPolicy::from_checkpoint(&load(&cpu_ckpt, &gpu()), &gpu()).expect("policy").into_network();
    let on_cpu = RoutingPolicy::from_checkpoint(&load(&cpu_ckpt, &Device::Cpu), &Device::Cpu)
        .expect("policy")
        .into_network();
    let mut env = SyntheticEnv::new(&cfg.env, 256, 5, &Device::Cpu);
    let obs = env.reset(&mut Rng::new(9)).expect("reset");
    let a = on_cpu.forward(&obs).expect("cpu forward");
    let b = on_gpu.forward(&obs.to_device(&gpu()).expect("to gpu")).expect("gpu forward");
    assert!(max_abs_diff(&host(&a.logits), &host(&b.logits)) < 1e-4);
    assert!(max_abs_diff(&host(&a.values), &host(&b.values)) < 1e-4);
}

#[test]
fn text_pipeline_runs_on_the_gpu_and_matches_the_cpu() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cache = tempfile::tempdir().expect("tmp");
    let sets = vec![
        format!("env.corpus={:?}", root.join("data/prompts.jsonl").display().to_string()),
        format!("env.cache_dir={:?}", cache.path().display().to_string()),
        "train.total_updates=60".into(),
        "train.save_interval=60".into(),
        "train.eval_interval=10".into(),
    ];
    let cfg = mappo_config::Config::load(Some(&root.join("configs/prompts.toml")), &sets).expect("config");
    // Embedding on the GPU (the cache is written by this call), then training on the GPU.
    let mut setup = TextSetup::on(&cfg, &gpu(), &mut |_, _, _| {}).expect("text setup on the gpu");
    let dir = tempfile::tempdir().expect("tmp");
    let s = train_in(&mut setup.trainer, Some(&setup.evaluator), dir.path());
    let after = s.last_eval.expect("eval");
    assert!(after.oracle_agreement > 0.8, "{after:?}");

    // The GPU's embedding table matches the CPU's.
    let texts = ["fix this segfault in my C code", "", "prove that sqrt(2) is irrational"];
    let model = mappo_env::text::model_dir(&cfg.env);
    let e_gpu = mappo_env::embed::Embedder::load(&model, &gpu()).expect("embedder on gpu");
    let e_cpu = mappo_env::embed::Embedder::load(&model, &Device::Cpu).expect("embedder on cpu");
    let (g, c) = (e_gpu.embed(&texts).expect("gpu"), e_cpu.embed(&texts).expect("cpu"));
    for (g, c) in g.iter().zip(&c) {
        let cos: f32 = g.iter().zip(c).map(|(x, y)| x * y).sum();
        assert!(cos > 0.9999, "cosine {cos}");
    }
}
