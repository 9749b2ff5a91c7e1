//! Multi-step episodes through the library API: one-stage configs train exactly as before the
//! stages existed, and the pipeline's stages learn together.

use mappo_config::{Config, Rng};
use mappo_nn::{ActorCritic, Policy};
use mappo_tests::{assert_checkpoints_identical, small_config, train_in};
use mappo_train::{PipelineSetup, SyntheticSetup, Trainer};

fn pipeline_config(updates: u64, extra: &[&str]) -> Config {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/pipeline.toml");
    let mut sets: Vec<String> = vec![
        "train.device=\"cpu\"".into(),
        format!("train.total_updates={updates}"),
        format!("train.save_interval={updates}"),
        format!("train.eval_interval={updates}"),
        "train.eval_prompts=2048".into(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    match Config::load(Some(&file), &sets) {
        Ok(c) => c,
        Err(e) => panic!("configs/pipeline.toml with {sets:?}: {e}"),
    }
}

/// The network as it was built before stages and critic kinds existed: `ActorCritic::new` with
/// the env's sizes and the `init` stream of the seed.
fn old_network(cfg: &Config, obs_dim: usize, actions: usize) -> ActorCritic {
    let mut rng = Rng::derived(cfg.train.seed, "init");
    ActorCritic::new(obs_dim, actions, &cfg.model, &mut rng, &candle_core::Device::Cpu).expect("network")
}

#[test]
fn a_one_stage_config_trains_the_same_tensors_as_before_stages() {
    for extra in [&[][..], &["model.critic=\"shared\"", "ppo.minibatches=4"][..]] {
        let cfg = small_config(30, extra);
        let mut now = SyntheticSetup::new(&cfg).expect("setup");
        let spec =
            mappo_env::Env::spec(&mappo_env::SyntheticEnv::new(&cfg.env, 1, 0, &candle_core::Device::Cpu));
        let env = mappo_env::SyntheticEnv::new(
            &cfg.env,
            cfg.train.batch_size,
            cfg.train.seed,
            &candle_core::Device::Cpu,
        );
        let mut before =
            Trainer::from_config(cfg.clone(), env, old_network(&cfg, spec.obs_dim, spec.num_actions))
                .expect("trainer");
        let (da, db) = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));
        let a = train_in(&mut now.trainer, None, da.path()).final_checkpoint;
        let b = train_in(&mut before, None, db.path()).final_checkpoint;
        assert_checkpoints_identical(&a, &b);
    }
}

#[test]
fn a_centralized_or_local_critic_is_a_network_of_its_own() {
    for (critic, want) in [("centralized", 6), ("local", 6), ("shared", 2)] {
        let cfg = pipeline_config(1, &[&format!("model.critic=\"{critic}\"")]);
        let setup = PipelineSetup::on(&cfg, &candle_core::Device::Cpu).expect("setup");
        let names: Vec<String> = setup.trainer.policy().critic_vars().into_iter().map(|v| v.name).collect();
        assert_eq!(names.len(), want, "{critic}: {names:?}");
        let heads =
            setup.trainer.policy().actor_vars().iter().filter(|v| v.name.starts_with("policy_head.")).count();
        assert_eq!(heads, 6, "three stages, a head each");
    }
}

#[test]
fn the_pipeline_stages_learn_together_and_gamma_zero_cannot() {
    let run = |extra: &[&str]| {
        let cfg = pipeline_config(100, extra);
        let mut setup = PipelineSetup::on(&cfg, &candle_core::Device::Cpu).expect("setup");
        let before = setup.evaluator.report(setup.trainer.policy()).expect("eval");
        let dir = tempfile::tempdir().expect("tmp");
        let summary = train_in(&mut setup.trainer, None, dir.path());
        let after = setup.evaluator.report(setup.trainer.policy()).expect("eval");
        let ckpt = mappo_train::Checkpoint::load(&summary.final_checkpoint, &candle_core::Device::Cpu)
            .expect("ckpt");
        (before, after, ckpt, dir)
    };
    let (before, after, ckpt, _dir) = run(&[]);
    assert_eq!(after.mean_steps, 3.0, "three stages, one decision each");
    assert!(after.stagewise_not_optimal.expect("share") >= 0.3, "interactions must matter: {after:?}");
    assert!(after.normalized_return > 0.9, "joint training: {before:?} -> {after:?}");
    assert!(after.normalized_return > before.normalized_return + 0.5, "{before:?} -> {after:?}");
    // The checkpoint evaluates the same way through mappo-eval (fresh prompts), and records stages.
    let fresh = mappo_eval::evaluate_pipeline(&ckpt, 2000, 7, &candle_core::Device::Cpu).expect("eval");
    assert!(fresh.normalized_return > 0.85, "{fresh:?}");
    assert!(fresh.optimal_return >= fresh.mean_return && fresh.mean_return > fresh.random_return);
    assert_eq!(ckpt.config.env.stages.len(), 3);
    assert_eq!(ckpt.config.model.critic, mappo_config::CriticKind::Centralized);
    // With γ = 0 the first two stages see only their own (zero) rewards: they cannot learn.
    let (_, myopic, _, _dir) = run(&["ppo.gamma=0.0"]);
    assert!(myopic.normalized_return < after.normalized_return - 0.3, "γ = 0: {myopic:?} vs {after:?}");
}

/// A served or logged conversation step is laid out exactly as the training env lays it out:
/// `EpisodeShape::extras` after the earlier turns' actions gives the env's rows, turn by turn.
#[test]
fn a_conversation_step_row_is_the_envs_row() {
    use mappo_env::Env;
    let mut cfg = Config::default();
    cfg.env.kind = mappo_config::EnvKind::Conversation;
    cfg.env.reward = mappo_config::RewardModel::Label;
    cfg.env.corpus = "unused.jsonl".into();
    cfg.env.turns = 3;
    cfg.env.agents = ["a", "b", "c"]
        .iter()
        .map(|n| mappo_config::AgentSpec { name: (*n).into(), ..Default::default() })
        .collect();
    let dim = 4;
    let texts = 12;
    let emb: Vec<f32> = (0..texts * dim).map(|i| (i as f32 * 0.37).sin()).collect();
    let labels: Vec<Option<usize>> = (0..texts).map(|i| Some(i % 3)).collect();
    let dev = candle_core::Device::Cpu;
    let mut env = mappo_env::ConversationEnv::new(&cfg.env, emb, dim, &labels, 5, &dev).expect("env");
    let shape = mappo_train::EpisodeShape::of(&cfg);
    let spec = mappo_env::ObservationSpec::for_env(&cfg.env, dim);
    let mut rng = Rng::new(4);
    let mut obs = env.reset(&mut rng).expect("reset");
    let mut earlier: Vec<Vec<u32>> = vec![Vec::new(); 5];
    for turn in 0..3 {
        let rows = obs.to_vec2::<f32>().expect("rows");
        for (row, e) in rows.iter().zip(&earlier) {
            let mine = spec.row(&row[..dim], shape.extras(e, None, None)).expect("fits");
            assert_eq!(&mine, row, "turn {turn}, earlier {e:?}");
        }
        let actions: Vec<u32> = (0..5).map(|i| ((i + turn) % 3) as u32).collect();
        for (e, &a) in earlier.iter_mut().zip(&actions) {
            e.push(a);
        }
        let step = env.step(&actions, &mut rng).expect("step");
        match step.next_obs {
            Some(o) => obs = o,
            None => break,
        }
    }
    assert!(earlier.iter().all(|e| e.len() == 3), "three turns stepped");
}

/// A routed pipeline step (`mappo route`) is laid out exactly as the training env lays it out:
/// `RoutingPolicy::step_row` after the earlier stages' actions gives the env's rows, stage by
/// stage, and no stage follows the last.
#[test]
fn a_pipeline_step_row_is_the_envs_row() {
    use mappo_env::Env;
    let cfg = pipeline_config(1, &[]);
    let dev = candle_core::Device::Cpu;
    let dim = cfg.env.embed_dim;
    let policy = mappo_train::RoutingPolicy::init(&cfg, dim, &dev).expect("policy");
    let mut env = mappo_env::PipelineEnv::new(&cfg.env, 6, cfg.train.seed, &dev).expect("env");
    let mut rng = Rng::new(4);
    let mut obs = env.reset(&mut rng).expect("reset");
    let mut earlier: Vec<Vec<u32>> = vec![Vec::new(); 6];
    for stage in 0..3 {
        let rows = obs.to_vec2::<f32>().expect("rows");
        for (row, e) in rows.iter().zip(&earlier) {
            let mine = policy.step_row(&row[..dim], 0.0, e, None).expect("fits");
            assert_eq!(&mine, row, "stage {stage}, earlier {e:?}");
        }
        let actions: Vec<u32> = (0..6).map(|i| ((i + stage) % 4) as u32).collect();
        for (e, &a) in earlier.iter_mut().zip(&actions) {
            e.push(a);
        }
        let step = env.step(&actions, &mut rng).expect("step");
        match step.next_obs {
            Some(o) => obs = o,
            None => break,
        }
    }
    assert!(earlier.iter().all(|e| e.len() == 3), "three stages stepped");
    assert!(policy.step_row(&vec![0.0; dim], 0.0, &earlier[0], None).is_err(), "no fourth stage");
}
