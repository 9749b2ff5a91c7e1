//! The learner on logged conversations: whole episodes are learned with GAE over their steps
//! (a reward paid only at the end reaches the first turn), an episode that has not ended is
//! waited for until `learn.episode_timeout_s` and then learned cut (bootstrapped), and a learner
//! killed at arbitrary moments ends bit-identical to one that ran uninterrupted.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use candle_core::Device;
use mappo_config::{Config, Rng};
use mappo_learn::learner::{DEFAULT_LEARNER, Learner};
use mappo_log::{Decision, DecisionKind, DecisionLog, EpisodeStep, PublishMeta, Timestamp};
use mappo_train::{Checkpoint, RoutingPolicy};

const DIM: usize = 8;

/// A two-turn conversation policy over two agents (its corpus is never read: the learner learns
/// from the log).
fn settings(gamma: f64) -> Config {
    Config::load(
        None,
        &[
            "env.kind=\"conversation\"".into(),
            "env.corpus=\"logged-only.jsonl\"".into(),
            "env.reward=\"label\"".into(),
            "env.agents=[{name=\"a\"}, {name=\"b\"}]".into(),
            "env.turns=2".into(),
            "train.rollout_len=2".into(),
            "model.hidden_dim=16".into(),
            "model.projection_dim=0".into(),
            "model.critic=\"centralized\"".into(),
            "train.batch_size=64".into(),
            "ppo.minibatches=2".into(),
            "ppo.lr_actor=0.01".into(),
            format!("ppo.gamma={gamma}"),
            "learn.reward_wait_s=1000000".into(),
            "learn.min_events=16".into(),
            "learn.episode_timeout_s=600".into(),
        ],
    )
    .unwrap()
}

fn fresh_checkpoint(cfg: &Config) -> Vec<u8> {
    let policy = RoutingPolicy::init(cfg, DIM, &Device::Cpu).unwrap();
    Checkpoint::weights_only(cfg, "conversation", policy.network()).unwrap().to_bytes().unwrap()
}

/// The right first agent for a first turn: `a` when its first coordinate is the larger.
fn best(x: &[f32]) -> u32 {
    u32::from(x[1] > x[0])
}

/// Logged conversations and the ends of those that ended.
type Traffic = (Vec<Decision>, Vec<(String, f64)>);

/// `n` two-turn conversations sampled uniformly, started an hour ago, the last `open` of them
/// 100 s ago and not ended; each ended one is paid 1 at its end when its first agent was right,
/// whatever the second turn did (so only GAE over the turns can teach the first turn).
fn traffic(n: usize, open: usize) -> Traffic {
    skewed_traffic(n, open, 0.5)
}

/// [`traffic`] logged by a policy that picks agent `b` with probability `p_b` (a stale
/// version's behaviour, far from a fresh policy's 50/50).
fn skewed_traffic(n: usize, open: usize, p_b: f64) -> Traffic {
    let mut rng = Rng::new(3);
    let now = Timestamp::now().0;
    let mut ends = Vec::new();
    let mut all = Vec::new();
    for i in 0..n {
        let id = format!("chat-{i:05}");
        let t0 = if i + open >= n { now - 100_000_000 } else { now - 3_600_000_000 + i as i64 * 100 };
        let mut first = None;
        let mut ds = Vec::new();
        for step in 0..2u32 {
            let x = rng.normal_vec(DIM);
            let action = u32::from(rng.uniform() < p_b);
            let propensity = if action == 1 { p_b } else { 1.0 - p_b } as f32;
            first.get_or_insert((best(&x), action));
            ds.push(Decision {
                id: Decision::new_id(),
                time: Timestamp(t0 + i64::from(step) * 10),
                policy_version: 1,
                action,
                agent: ["a", "b"][action as usize].into(),
                probabilities: vec![1.0 - p_b as f32, p_b as f32],
                propensity,
                kind: DecisionKind::Sampled,
                embedding: x,
                model_hash: "test".into(),
                text: None,
                replica: "r".into(),
                cost_weight: None,
                shadow: None,
                episode: Some(EpisodeStep { id: id.clone(), step, stage: "route".into() }),
            });
        }
        all.extend(ds);
        if i + open < n {
            let (want, got) = first.unwrap();
            ends.push((id, f64::from(u8::from(want == got))));
        }
    }
    (all, ends)
}

async fn log_of(dir: &std::path::Path, name: &str, cfg: &Config, t: &Traffic) -> DecisionLog {
    let log = DecisionLog::open(&format!("sqlite:{}", dir.join(name).display())).await.unwrap();
    log.publish_policy(&fresh_checkpoint(cfg), &PublishMeta { source: "test".into(), ..Default::default() })
        .await
        .unwrap();
    log.log_decisions(&t.0).await.unwrap();
    for (id, r) in &t.1 {
        log.end_episode(id, Some(*r)).await.unwrap();
    }
    log
}

/// How often the first turn's greedy agent is the right one, on fresh first turns.
fn first_turn_accuracy(bytes: &[u8]) -> f64 {
    let c = Checkpoint::from_bytes(bytes, &Device::Cpu).unwrap();
    let p = RoutingPolicy::from_checkpoint(&c, &Device::Cpu).unwrap();
    let mut rng = Rng::new(99);
    let n = 1000;
    let mut right = 0;
    for _ in 0..n {
        let x = rng.normal_vec(DIM);
        let row = p.step_row(&x, 0.0, &[], None).unwrap();
        let probs = p.step_probabilities(row, &[&[]]).unwrap().remove(0);
        right += usize::from(u32::from(probs[1] > probs[0]) == best(&x));
    }
    right as f64 / n as f64
}

fn far_future() -> Timestamp {
    Timestamp(Timestamp::now().0 + 10_000_000_000_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_reward_teaches_the_first_turn_and_open_episodes_wait_for_their_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = settings(1.0);
    cfg.learn.reward_wait_s = 1.0;
    let log = log_of(dir.path(), "a.db", &cfg, &traffic(1500, 10)).await;
    let mut learner = Learner::new(log.clone(), DEFAULT_LEARNER, cfg.clone()).unwrap();
    let r = learner.round(Timestamp::now(), 1000, None).await.unwrap();
    // 1490 ended episodes of 2 steps; the 10 open ones (started 100 s ago, the timeout is 600 s)
    // wait, and with them the end of the log: the learner stops before the first.
    assert_eq!(r.counts.episodes, 1490, "{r:?}");
    assert_eq!(r.counts.learned, 2 * 1490);
    assert_eq!(r.counts.episode_steps, 1490, "each second turn is consumed with its first");
    let state = log.learner_state(DEFAULT_LEARNER).await.unwrap().unwrap();
    let after = first_turn_accuracy(&state.checkpoint);
    let before = first_turn_accuracy(&fresh_checkpoint(&cfg));
    assert!(after > 0.85 && after > before + 0.25, "first-turn accuracy {before} -> {after}");
    // Nothing is ready now; past their timeout, the open ones are learned cut after their last
    // logged step.
    assert_eq!(learner.round(Timestamp::now(), 1000, None).await.unwrap().updates, 0);
    let r = learner.round(far_future(), 1000, None).await.unwrap();
    assert_eq!((r.counts.episodes, r.counts.learned, r.updates), (10, 20, 1), "{r:?}");

    // With γ = 0 the end reward never reaches the first turn: it learns nothing.
    let myopic = settings(0.0);
    let log = log_of(dir.path(), "b.db", &myopic, &traffic(1500, 0)).await;
    let mut learner = Learner::new(log.clone(), DEFAULT_LEARNER, myopic).unwrap();
    learner.round(far_future(), 1000, None).await.unwrap();
    let state = log.learner_state(DEFAULT_LEARNER).await.unwrap().unwrap();
    let gamma0 = first_turn_accuracy(&state.checkpoint);
    assert!(gamma0 < 0.7 && after > gamma0 + 0.2, "γ = 0: {gamma0} vs {after}");
}

/// Killed at arbitrary moments and restarted, a learner of conversations consumes every step
/// exactly once and ends with the same bytes as one that ran uninterrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_restarted_episode_learner_ends_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = settings(1.0);
    // The learning rates decay over the first half of the log: the schedule restarts right too.
    cfg.learn.lr_decay_events = 600;
    let t = traffic(600, 0);
    let log_a = log_of(dir.path(), "a.db", &cfg, &t).await;
    let log_b = log_of(dir.path(), "b.db", &cfg, &t).await;
    let mut a = Learner::new(log_a.clone(), DEFAULT_LEARNER, cfg.clone()).unwrap();
    let mut longest = Duration::ZERO;
    loop {
        let t0 = std::time::Instant::now();
        let r = a.round(far_future(), 3, None).await.unwrap();
        longest = longest.max(t0.elapsed());
        if r.updates == 0 {
            break;
        }
    }
    let sa = log_a.learner_state(DEFAULT_LEARNER).await.unwrap().unwrap();
    let mut rng = Rng::new(5);
    let mut cap_us = (longest.as_micros() as f64).max(1000.0);
    let (mut kills, mut done, mut conflicts) = (0, 0, 0);
    loop {
        let mut b = Learner::new(log_b.clone(), DEFAULT_LEARNER, cfg.clone()).unwrap();
        let budget = Duration::from_micros(rng.below(cap_us as u64 + 1));
        match tokio::time::timeout(budget, b.round(far_future(), 3, None)).await {
            Err(_) => {
                kills += 1;
                cap_us *= 1.05;
            }
            Ok(Err(mappo_learn::LearnError::Log(mappo_log::LogError::LearnerConflict(_)))) => conflicts += 1,
            Ok(r) => {
                done += 1;
                cap_us = (cap_us * 0.7).max(50.0);
                if r.unwrap().updates == 0 {
                    break;
                }
            }
        }
        assert!(kills + done + conflicts < 5000, "never finished");
    }
    let sb = log_b.learner_state(DEFAULT_LEARNER).await.unwrap().unwrap();
    assert!(kills >= 5, "killed only {kills} times");
    assert_eq!(
        (sb.updates, sb.events, sb.learned, sb.watermark),
        (sa.updates, sa.events, sa.learned, sa.watermark)
    );
    assert!(sa.checkpoint == sb.checkpoint, "the restarted learner's state differs");
    assert!(sa.learned >= 1100, "{}", sa.learned);
}

/// Logged by a stale policy (agent `b` 10% of the time) far from the learner's fresh 50/50, PPO's
/// ratio π/μ starts outside the clip range on every row (0.5/0.9 and 0.5/0.1): the rows that
/// would teach `b` where `b` is right are clipped and give no gradient. Decoupled PPO
/// (`ppo.decoupled_max_weight`) clips against the policy at the start of the update and
/// weights by π_prox/μ, so it learns the first turn from the same log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decoupled_ppo_learns_from_a_stale_behaviour_policy() {
    let dir = tempfile::tempdir().unwrap();
    let t = skewed_traffic(1500, 0, 0.1);
    let mut accuracy = Vec::new();
    for (name, w) in [("coupled.db", 0.0), ("decoupled.db", 3.0)] {
        let mut cfg = settings(1.0);
        cfg.ppo.decoupled_max_weight = w;
        let log = log_of(dir.path(), name, &cfg, &t).await;
        let mut learner = Learner::new(log.clone(), DEFAULT_LEARNER, cfg).unwrap();
        learner.round(far_future(), 1000, None).await.unwrap();
        let state = log.learner_state(DEFAULT_LEARNER).await.unwrap().unwrap();
        accuracy.push(first_turn_accuracy(&state.checkpoint));
    }
    let (coupled, decoupled) = (accuracy[0], accuracy[1]);
    eprintln!("first-turn accuracy from a stale log: coupled {coupled:.3}, decoupled {decoupled:.3}");
    assert!(decoupled > 0.7 && decoupled > coupled + 0.1, "coupled {coupled}, decoupled {decoupled}");
}

/// `learn.lr_decay_events`: the learning rates fall linearly with the events learned, from
/// `ppo.lr_actor` to `learn.lr_floor` times it, and stay there; a restarted learner continues
/// the schedule from its committed count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learning_rates_decay_with_the_events_learned_and_resume_with_the_learner() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = settings(1.0);
    cfg.learn.lr_decay_events = 256;
    cfg.learn.lr_floor = 0.1;
    let log = log_of(dir.path(), "a.db", &cfg, &traffic(400, 0)).await;
    let mut lrs = Vec::new();
    for restart in 0..7 {
        // A new learner every other update: it reads its state back from the log.
        let mut learner = Learner::new(log.clone(), DEFAULT_LEARNER, cfg.clone()).unwrap();
        for _ in 0..(1 + restart % 2) {
            let r = learner.round(far_future(), 1, None).await.unwrap();
            assert_eq!((r.updates, r.counts.learned), (1, 64), "{r:?}");
            let m = r.last.unwrap();
            let scale = (m.lr_actor / cfg.ppo.lr_actor, m.lr_critic / cfg.ppo.lr_critic);
            assert!((scale.0 - scale.1).abs() < 1e-9, "both rates scale alike: {scale:?}");
            lrs.push(m.lr_actor);
        }
    }
    // Updates after 0, 64, 128, ... events: 0.01 · (1 − 0.9 · min(1, learned / 256)).
    let want: Vec<f64> =
        (0..lrs.len()).map(|k| 0.01 * (1.0 - 0.9 * (k as f64 * 64.0 / 256.0).min(1.0))).collect();
    assert_eq!(lrs.len(), 10);
    for (k, (got, want)) in lrs.iter().zip(&want).enumerate() {
        assert!((got - want).abs() < 1e-9, "update {k}: lr {got}, want {want} ({lrs:?})");
    }
}
