//! The real-text environment end to end: needs all-MiniLM-L6-v2
//! (`cargo xtask fetch-model`; `cargo xtask test` does it first).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use candle_core::Device;
use mappo_config::Config;
use mappo_nn::Policy;
use mappo_tests::{StopAt, assert_checkpoints_identical, metrics_without_time, train_in};
use mappo_train::{RunOptions, TextSetup};

fn config(updates: u64, cache: &std::path::Path) -> Config {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let file = root.join("configs/prompts.toml");
    let sets = vec![
        format!("env.corpus={:?}", root.join("data/prompts.jsonl").display().to_string()),
        format!("env.cache_dir={:?}", cache.display().to_string()),
        format!("train.total_updates={updates}"),
        "train.save_interval=10".into(),
        "train.eval_interval=10".into(),
        "train.threads=0".into(),
    ];
    match Config::load(Some(&file), &sets) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

fn projection(p: &impl Policy) -> Vec<f32> {
    let v = p.all_vars().into_iter().find(|v| v.name == "encoder.projection.weight").expect("projection");
    assert_eq!(v.var.dims(), &[32, 384]);
    v.var.flatten_all().and_then(|t| t.to_vec1()).expect("host")
}

#[test]
fn routes_the_prompt_corpus_and_trains_the_projection() {
    let cache = tempfile::tempdir().expect("tmp");
    let cfg = config(60, cache.path());
    let mut setup = TextSetup::on(&cfg, &Device::Cpu, &mut |_, _, _| {})
        .expect("text setup (if the model is missing, run `cargo xtask fetch-model`)");
    assert_eq!(setup.corpus_rows, 248);
    let before = setup.evaluator.evaluate(setup.trainer.policy()).expect("eval");
    let p0 = projection(setup.trainer.policy());
    let dir = tempfile::tempdir().expect("tmp");
    let s = train_in(&mut setup.trainer, Some(&setup.evaluator), dir.path());
    let after = s.last_eval.expect("eval");
    // Four agents: routing at random is right a quarter of the time.
    assert!(after.oracle_agreement > 0.8, "{before:?} -> {after:?}");
    let p1 = projection(setup.trainer.policy());
    let moved = p0.iter().zip(&p1).filter(|(a, b)| a != b).count();
    assert!(moved > p0.len() / 2, "the 384→32 projection must be trained: {moved} of {} moved", p0.len());
    // The cache was written and is reused: a second setup needs no embedding.
    assert_eq!(std::fs::read_dir(cache.path()).expect("cache dir").count(), 1);

    // Corpus evaluation and routing from the checkpoint.
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/prompts.jsonl");
    let r = mappo_eval::evaluate_corpus(&s.final_checkpoint, &corpus, &Device::Cpu, &mut |_, _, _| {})
        .expect("eval corpus");
    assert_eq!(r.n, 248);
    let accuracy = r.accuracy.expect("the corpus is labelled");
    assert!(accuracy > 0.8, "{accuracy}");
    assert_eq!(r.labelled, r.n);
    assert_eq!(r.confusion.iter().flatten().sum::<usize>(), 248);
    let router = mappo_eval::Router::load(&s.final_checkpoint, &Device::Cpu).expect("router");
    let routed = router.route(&["My package never arrived and I want a refund.", ""]).expect("route");
    assert_eq!(routed.len(), 2);
    for x in &routed {
        assert!((x.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        assert_eq!(x.agent, router.agents()[x.agent_index]);
    }
}

#[test]
fn text_run_resumes_bit_identical_including_the_corpus_position() {
    let cache = tempfile::tempdir().expect("tmp");
    let cfg = config(30, cache.path());
    let full = tempfile::tempdir().expect("tmp");
    let mut s1 = TextSetup::on(&cfg, &Device::Cpu, &mut |_, _, _| {}).expect("setup");
    let a = train_in(&mut s1.trainer, Some(&s1.evaluator), full.path()).final_checkpoint;
    let part = tempfile::tempdir().expect("tmp");
    let stop = Arc::new(AtomicBool::new(false));
    let mut s2 = TextSetup::on(&cfg, &Device::Cpu, &mut |_, _, _| {}).expect("setup");
    let mut stop_at = StopAt(13, stop.clone());
    let opts = RunOptions::new(part.path()).evaluator(&s2.evaluator).observer(&mut stop_at).stop_flag(stop);
    s2.trainer.run(opts).expect("run");
    let ckpt = mappo_train::Checkpoint::latest(part.path(), &Device::Cpu).expect("latest");
    assert_eq!(ckpt.update, 13);
    assert_eq!(ckpt.env_state, vec![13 * 64], "the corpus position is saved");
    let mut s3 = TextSetup::on(&ckpt.config, &Device::Cpu, &mut |_, _, _| {}).expect("setup");
    s3.trainer.restore(&ckpt).expect("restore");
    let b = train_in(&mut s3.trainer, Some(&s3.evaluator), part.path()).final_checkpoint;
    assert_checkpoints_identical(&a, &b);
    assert_eq!(metrics_without_time(full.path()), metrics_without_time(part.path()));
}

/// A cosine-reward checkpoint evaluated on unlabelled prompts: by its reward
/// model, not a silent `"n": 0, "accuracy": 0`.
#[test]
fn cosine_checkpoints_evaluate_unlabelled_corpora_by_their_reward_model() {
    let cache = tempfile::tempdir().expect("tmp");
    let mut cfg = config(30, cache.path());
    cfg.env.reward = mappo_config::RewardModel::Cosine;
    let dir = tempfile::tempdir().expect("tmp");
    let unlabelled = dir.path().join("unlabelled.jsonl");
    let body: String = ["reset my password please", "integrate x^2 from 0 to 1", "write a haiku about rain"]
        .iter()
        .map(|t| format!("{}\n", serde_json::json!({ "text": t })))
        .collect();
    std::fs::write(&unlabelled, body).expect("write");
    let mut setup = TextSetup::on(&cfg, &Device::Cpu, &mut |_, _, _| {}).expect("setup");
    let s = train_in(&mut setup.trainer, Some(&setup.evaluator), &dir.path().join("run"));
    let r = mappo_eval::evaluate_corpus(&s.final_checkpoint, &unlabelled, &Device::Cpu, &mut |_, _, _| {})
        .expect("eval");
    assert_eq!((r.n, r.labelled, r.accuracy), (3, 0, None));
    assert!(r.oracle_reward >= r.mean_reward && r.oracle_reward > r.random_reward, "{r:?}");
    assert!(r.normalized_reward.is_finite() && (0.0..=1.0).contains(&r.oracle_agreement), "{r:?}");
}

/// Conversations over the repository's prompt corpus: 4 agents, 6 turns, a continuity bonus
/// above a right answer, the reward at the end.
#[test]
fn conversations_learn_to_keep_and_switch_agents_and_route_as_turns() {
    let cache = tempfile::tempdir().expect("tmp");
    let mut cfg = config(150, cache.path());
    let sets = [
        "env.kind=\"conversation\"",
        "env.turns=6",
        "env.p_stay=0.8",
        "env.continuity_bonus=1.2",
        "env.reward_at=\"end\"",
        "model.critic=\"centralized\"",
        "model.projection_dim=0",
        "ppo.gamma=1.0",
        "ppo.lr_actor=0.001",
        "ppo.entropy_coef=0.1",
        "train.batch_size=64",
        "train.rollout_len=6",
        "train.eval_prompts=1000",
    ];
    let mut all: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    all.push(format!("env.corpus={:?}", cfg.env.corpus));
    all.push(format!("env.cache_dir={:?}", cfg.env.cache_dir));
    all.push("train.total_updates=150".into());
    all.push("train.save_interval=150".into());
    all.push("train.eval_interval=150".into());
    all.push("train.threads=0".into());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    cfg = Config::load(Some(&root.join("configs/prompts.toml")), &all).expect("conversation config");
    let mut setup = mappo_train::ConversationSetup::on(&cfg, &Device::Cpu, &mut |_, _, _| {}).expect("setup");
    let before = setup.evaluator.report(setup.trainer.policy()).expect("eval");
    let dir = tempfile::tempdir().expect("tmp");
    let s = train_in(&mut setup.trainer, None, dir.path());
    let after = setup.evaluator.report(setup.trainer.policy()).expect("eval");
    let myopic = after.myopic_return.expect("the conversation env has a myopic oracle");
    assert_eq!(after.mean_steps, 6.0);
    assert!(after.optimal_return > myopic && myopic > after.random_return, "{after:?}");
    assert!(after.normalized_return > 0.6, "{before:?} -> {after:?}");
    assert!(after.normalized_return > before.normalized_return + 0.3, "{before:?} -> {after:?}");
    // mappo-eval assembles conversations from a corpus with its own seed.
    let ckpt = mappo_train::Checkpoint::load(&s.final_checkpoint, &Device::Cpu).expect("ckpt");
    let corpus = root.join("data/prompts.jsonl");
    let r = mappo_eval::evaluate_conversation(&ckpt, &corpus, 500, 3, &Device::Cpu, &mut |_, _, _| {})
        .expect("eval");
    assert_eq!(r.episodes, 500);
    assert!(r.normalized_return > 0.5, "{r:?}");
    // Routing texts as the turns of one conversation: each turn sees the previous one's agent.
    let router = mappo_eval::Router::load(&s.final_checkpoint, &Device::Cpu).expect("router");
    assert!(router.is_conversation());
    let turns = ["my parcel never arrived", "where is my refund", "prove that sqrt(2) is irrational"];
    let routed = router.route_conversation(&turns).expect("route");
    assert_eq!(routed.iter().map(|r| r.turn).collect::<Vec<_>>(), vec![Some(1), Some(2), Some(3)]);
    for r in &routed {
        assert!((r.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    }
}
