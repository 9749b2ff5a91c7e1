//! Training end to end through the library API: learning, determinism,
//! resume bit-identity, the shared encoder being trained.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use mappo_nn::Policy;
use mappo_tests::{StopAt, assert_checkpoints_identical, metrics_without_time, small_config, train_in};
use mappo_train::{RunOptions, SyntheticSetup};

fn weights(p: &impl Policy, name: &str) -> Vec<f32> {
    let v = p.all_vars().into_iter().find(|v| v.name == name).expect("param");
    v.var.flatten_all().and_then(|t| t.to_vec1()).expect("host")
}

#[test]
fn learns_well_above_random_and_trains_the_shared_encoder() {
    let cfg = small_config(300, &[]);
    let mut setup = SyntheticSetup::new(&cfg).expect("setup");
    let before = setup.evaluator.evaluate(setup.trainer.policy()).expect("eval");
    let enc0 = weights(setup.trainer.policy(), "encoder.0.weight");
    let dir = tempfile::tempdir().expect("tmp");
    let s = train_in(&mut setup.trainer, Some(&setup.evaluator), dir.path());
    let after = s.last_eval.expect("evaluated");
    // Random routing agrees with the oracle on 1/4 of prompts and has normalised reward 0.
    assert!(after.oracle_agreement > 0.6, "agreement {}", after.oracle_agreement);
    assert!(after.normalized_reward > 0.8, "normalized {}", after.normalized_reward);
    assert!(after.normalized_reward > before.normalized_reward + 0.3, "{before:?} -> {after:?}");
    let enc1 = weights(setup.trainer.policy(), "encoder.0.weight");
    let moved = enc0.iter().zip(&enc1).filter(|(a, b)| a != b).count();
    assert!(moved > enc0.len() / 2, "the shared encoder must be trained: {moved} of {} moved", enc0.len());
    assert!(s.final_checkpoint.ends_with("checkpoints/update-0000300.safetensors"));
    assert!(dir.path().join("config.toml").exists());
}

#[test]
fn input_dropout_and_value_normalisation_change_the_updates_and_still_learn() {
    let run = |extra: &[&str]| {
        let cfg = small_config(300, extra);
        let mut setup = SyntheticSetup::new(&cfg).expect("setup");
        let dir = tempfile::tempdir().expect("tmp");
        let s = train_in(&mut setup.trainer, Some(&setup.evaluator), dir.path());
        (dir, s)
    };
    let (_da, plain) = run(&[]);
    assert!(
        !mappo_train::Checkpoint::load(&plain.final_checkpoint, &candle_core::Device::Cpu)
            .expect("load")
            .tensors
            .contains_key("value_norm"),
        "no statistics without ppo.value_norm"
    );
    for option in ["ppo.input_dropout=0.2", "ppo.value_norm=true"] {
        let (_db, changed) = run(&[option]);
        let after = changed.last_eval.expect("evaluated");
        assert!(after.oracle_agreement > 0.6, "{option}: agreement {}", after.oracle_agreement);
        assert!(after.normalized_reward > 0.8, "{option}: normalized {}", after.normalized_reward);
        let result = std::panic::catch_unwind(|| {
            assert_checkpoints_identical(&plain.final_checkpoint, &changed.final_checkpoint)
        });
        assert!(result.is_err(), "{option} must change the updates");
        let ckpt = mappo_train::Checkpoint::load(&changed.final_checkpoint, &candle_core::Device::Cpu)
            .expect("load");
        if option == "ppo.value_norm=true" {
            // [running mean, running mean square, debiasing term] of the returns (rewards in [0, 1]).
            let stats: Vec<f64> = ckpt.tensors["value_norm"].to_vec1().expect("f64 statistics");
            let (mean, sq) = (stats[0] / stats[2], stats[1] / stats[2]);
            assert!(stats[2] > 0.0 && (0.0..=1.0).contains(&mean) && sq >= mean * mean, "{stats:?}");
        }
    }
}

#[test]
fn same_seed_same_run_bit_for_bit_and_another_seed_differs() {
    let go = |seed: u64| {
        let cfg = small_config(60, &[&format!("train.seed={seed}")]);
        let mut setup = SyntheticSetup::new(&cfg).expect("setup");
        let dir = tempfile::tempdir().expect("tmp");
        let s = train_in(&mut setup.trainer, Some(&setup.evaluator), dir.path());
        (dir, s.final_checkpoint)
    };
    let (da, a) = go(7);
    let (db, b) = go(7);
    assert_checkpoints_identical(&a, &b);
    assert_eq!(metrics_without_time(da.path()), metrics_without_time(db.path()));
    let (_dc, c) = go(8);
    let result = std::panic::catch_unwind(|| assert_checkpoints_identical(&a, &c));
    assert!(result.is_err(), "a different seed must give a different run");
}

#[test]
fn interrupted_and_resumed_run_ends_bit_identical() {
    for extra in [
        &[][..],
        &["ppo.minibatches=4", "ppo.anneal_lr=true", "ppo.clip_value=true"][..],
        &["ppo.minibatches=4", "ppo.input_dropout=0.2"][..],
        &["ppo.value_norm=true", "ppo.clip_value=true"][..],
    ] {
        let cfg = small_config(80, extra);
        // Uninterrupted.
        let full = tempfile::tempdir().expect("tmp");
        let mut s1 = SyntheticSetup::new(&cfg).expect("setup");
        let a = train_in(&mut s1.trainer, Some(&s1.evaluator), full.path()).final_checkpoint;
        // Stopped after update 37 (not a save point), then resumed from its run directory.
        let part = tempfile::tempdir().expect("tmp");
        let stop = Arc::new(AtomicBool::new(false));
        let mut s2 = SyntheticSetup::new(&cfg).expect("setup");
        let mut stop_at = StopAt(37, stop.clone());
        let opts =
            RunOptions::new(part.path()).evaluator(&s2.evaluator).observer(&mut stop_at).stop_flag(stop);
        let first = s2.trainer.run(opts).expect("run");
        assert!(first.interrupted);
        assert_eq!(first.updates, 37);
        drop(s2);
        let ckpt = mappo_train::Checkpoint::latest(part.path(), &candle_core::Device::Cpu).expect("latest");
        assert_eq!(ckpt.update, 37);
        let mut s3 = SyntheticSetup::new(&ckpt.config).expect("setup");
        s3.trainer.restore(&ckpt).expect("restore");
        let b = train_in(&mut s3.trainer, Some(&s3.evaluator), part.path()).final_checkpoint;
        assert_checkpoints_identical(&a, &b);
        assert_eq!(metrics_without_time(full.path()), metrics_without_time(part.path()), "{extra:?}");
    }
}

/// The first crossing of the agreement target is kept across an interruption:
/// a resumed run reports the same update as an uninterrupted one.
#[test]
fn reached_target_survives_a_resume() {
    let cfg = small_config(150, &["train.eval_interval=10"]);
    let target = 0.5;
    let full = tempfile::tempdir().expect("tmp");
    let mut s1 = SyntheticSetup::new(&cfg).expect("setup");
    let mut opts = RunOptions::new(full.path()).evaluator(&s1.evaluator);
    opts.agreement_target = target;
    let a = s1.trainer.run(opts).expect("run").reached_target.expect("reaches 0.5").0;
    assert!(a < 140, "crossing at {a}: too late to test a resume after it");
    let part = tempfile::tempdir().expect("tmp");
    let stop = Arc::new(AtomicBool::new(false));
    let mut s2 = SyntheticSetup::new(&cfg).expect("setup");
    let mut stop_at = StopAt(a + 5, stop.clone());
    let mut opts =
        RunOptions::new(part.path()).evaluator(&s2.evaluator).observer(&mut stop_at).stop_flag(stop);
    opts.agreement_target = target;
    s2.trainer.run(opts).expect("first part");
    let ckpt = mappo_train::Checkpoint::latest(part.path(), &candle_core::Device::Cpu).expect("latest");
    let mut s3 = SyntheticSetup::new(&ckpt.config).expect("setup");
    s3.trainer.restore(&ckpt).expect("restore");
    let mut opts = RunOptions::new(part.path()).evaluator(&s3.evaluator);
    opts.agreement_target = target;
    let b = s3.trainer.run(opts).expect("resume").reached_target.expect("kept");
    assert_eq!(b.0, a, "the resumed run must report the crossing logged before the interruption");
}
