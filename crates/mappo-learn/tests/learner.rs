//! The learner against a real (SQLite) decision log: it learns a routing task from logged bandit
//! feedback, and a learner killed at arbitrary moments and restarted ends bit-identical to one
//! that was never interrupted.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::HashMap;
use std::time::Duration;

use candle_core::{Device, Tensor};
use mappo_config::{Config, Rng};
use mappo_env::ObservationSpec;
use mappo_learn::learner::{AlwaysPublish, DEFAULT_LEARNER, Learner};
use mappo_log::{Decision, DecisionKind, DecisionLog, PublishMeta, Timestamp};
use mappo_nn::{ActorCritic, Policy};
use mappo_train::{Checkpoint, RoutingPolicy};

const DIM: usize = 8;
const AGENTS: usize = 3;

/// The settings of every test: small batches, rewards wait "forever" (every logged reward counts).
fn settings() -> Config {
    Config::load(
        None,
        &[
            "env.num_agents=3".into(),
            "model.hidden_dim=16".into(),
            "model.projection_dim=0".into(),
            "train.batch_size=64".into(),
            "ppo.minibatches=2".into(),
            "ppo.lr_actor=0.01".into(),
            "learn.reward_wait_s=1000000".into(),
            "learn.min_events=16".into(),
        ],
    )
    .unwrap()
}

/// [`settings`] for a cost-aware router: agents with costs (the corpus is never read: the
/// learner learns from the log).
fn cost_aware_settings() -> Config {
    let mut cfg = settings();
    cfg.env.kind = mappo_config::EnvKind::Text;
    cfg.env.corpus = "logged-only.jsonl".into();
    cfg.env.agents = [0.0, 0.5, 1.0]
        .iter()
        .enumerate()
        .map(|(i, &cost)| mappo_config::AgentSpec { name: format!("agent-{i}"), cost, ..Default::default() })
        .collect();
    cfg.validate().unwrap();
    cfg
}

/// A freshly initialised policy's checkpoint bytes (weights only, like `mappo serve --config`).
fn fresh_checkpoint(cfg: &Config) -> Vec<u8> {
    fresh_checkpoint_of_width(cfg, DIM)
}

/// The same for policy inputs of width `width` (DIM + 1: a cost-aware policy, λ its last input).
fn fresh_checkpoint_of_width(cfg: &Config, width: usize) -> Vec<u8> {
    let net =
        ActorCritic::new(width, AGENTS, &cfg.model, &mut Rng::derived(7, "init"), &Device::Cpu).unwrap();
    let tensors: HashMap<String, Tensor> = net
        .all_vars()
        .into_iter()
        .map(|nv| (format!("policy.{}", nv.name), nv.var.as_tensor().copy().unwrap()))
        .collect();
    let c = Checkpoint {
        config: cfg.clone(),
        env_kind: "synthetic".into(),
        update: 0,
        rng_state: Rng::new(1).state(),
        adam_steps: (0, 0),
        env_state: Vec::new(),
        tensors,
        path: None,
    };
    c.to_bytes().unwrap()
}

/// The best agent for an embedding: the largest of its first three coordinates.
fn best(x: &[f32]) -> u32 {
    (0..AGENTS).max_by(|&a, &b| x[a].total_cmp(&x[b])).unwrap() as u32
}

/// `n` logged decisions (uniform sampling, a few greedy ones, some without a reward) with their
/// rewards: 1 for the best agent, else 0.
fn traffic(n: usize, seed: u64) -> (Vec<Decision>, Vec<(uuid::Uuid, f64)>) {
    let mut rng = Rng::new(seed);
    let t0 = Timestamp::now().0 - 3_600_000_000;
    let mut ds = Vec::new();
    let mut rewards = Vec::new();
    for i in 0..n {
        let x = rng.normal_vec(DIM);
        let greedy = i % 10 == 9;
        let action = if greedy { best(&x) } else { rng.below(AGENTS as u64) as u32 };
        let d = Decision {
            id: Decision::new_id(),
            time: Timestamp(t0 + i as i64 * 1000),
            policy_version: 1,
            action,
            agent: format!("a{action}"),
            probabilities: vec![1.0 / AGENTS as f32; AGENTS],
            propensity: if greedy { 1.0 } else { 1.0 / AGENTS as f32 },
            kind: if greedy { DecisionKind::Greedy } else { DecisionKind::Sampled },
            embedding: x.clone(),
            model_hash: "test".into(),
            text: None,
            replica: "r".into(),
            cost_weight: None,
            shadow: None,
            episode: None,
        };
        if i % 7 != 3 {
            rewards.push((d.id, if action == best(&x) { 1.0 } else { 0.0 }));
        }
        ds.push(d);
    }
    (ds, rewards)
}

async fn log_with(
    dir: &std::path::Path,
    name: &str,
    ds: &[Decision],
    rewards: &[(uuid::Uuid, f64)],
    ckpt: &[u8],
) -> DecisionLog {
    let log = DecisionLog::open(&format!("sqlite:{}", dir.join(name).display())).await.unwrap();
    log.publish_policy(ckpt, &PublishMeta { source: "test".into(), ..PublishMeta::default() }).await.unwrap();
    log.log_decisions(ds).await.unwrap();
    for (id, r) in rewards {
        log.record_reward(*id, *r).await.unwrap();
    }
    log
}

/// Greedy accuracy of a checkpoint on fresh contexts.
fn accuracy(bytes: &[u8]) -> f64 {
    let c = Checkpoint::from_bytes(bytes, &Device::Cpu).unwrap();
    let net = RoutingPolicy::from_checkpoint(&c, &Device::Cpu).unwrap().into_network();
    let mut rng = Rng::new(99);
    let n = 2000;
    let xs = rng.normal_vec(n * DIM);
    let logits = net.forward(&Tensor::from_slice(&xs, (n, DIM), &Device::Cpu).unwrap()).unwrap().logits;
    let rows = logits.to_vec2::<f32>().unwrap();
    let right = rows
        .iter()
        .enumerate()
        .filter(|(i, r)| {
            let a = (0..AGENTS).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap() as u32;
            a == best(&xs[i * DIM..(i + 1) * DIM])
        })
        .count();
    right as f64 / n as f64
}

fn far_future() -> Timestamp {
    Timestamp(Timestamp::now().0 + 10_000_000_000_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learns_from_logged_feedback_and_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = settings();
    let ckpt = fresh_checkpoint(&cfg);
    let (ds, rewards) = traffic(3000, 1);
    let log = log_with(dir.path(), "a.db", &ds, &rewards, &ckpt).await;
    let mut learner = Learner::new(log.clone(), DEFAULT_LEARNER, cfg).unwrap();
    let mut gate = AlwaysPublish;
    let r = learner.round(far_future(), 1000, Some(&mut gate)).await.unwrap();
    // 3000 events: 300 greedy (not learned), 2700 sampled of which every 7th has no reward
    // (default reward 0): 2700 learned, in 42 updates of 64 and one of 12 < min_events left.
    assert_eq!(r.adopted, Some(1));
    assert_eq!(r.updates, 42, "{r:?}");
    assert_eq!(r.counts.learned, 42 * 64);
    assert!(r.counts.not_sampled > 250 && r.counts.defaulted > 300, "{r:?}");
    assert_eq!(r.published, Some(2));
    // Nothing new: nothing done.
    let again = learner.round(far_future(), 1000, Some(&mut gate)).await.unwrap();
    assert_eq!((again.updates, again.published), (0, None));
    let state = log.learner_state(DEFAULT_LEARNER).await.unwrap().unwrap();
    assert_eq!((state.updates, state.learned, state.base_version), (42, 42 * 64, Some(2)));
    let published = log.latest_policy().await.unwrap().unwrap();
    assert_eq!(published.checkpoint, state.checkpoint);
    let (before, after) = (accuracy(&ckpt), accuracy(&state.checkpoint));
    assert!(after > 0.8 && after > before + 0.3, "greedy accuracy {before} -> {after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_leaves_unrewarded_decisions_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = settings();
    cfg.learn.missing_reward = mappo_config::MissingReward::Skip;
    let ckpt = fresh_checkpoint(&cfg);
    let (ds, rewards) = traffic(700, 2);
    let log = log_with(dir.path(), "a.db", &ds, &rewards, &ckpt).await;
    let mut learner = Learner::new(log.clone(), DEFAULT_LEARNER, cfg).unwrap();
    let r = learner.round(far_future(), 1000, None).await.unwrap();
    assert_eq!(r.counts.defaulted, 0);
    assert!(r.counts.skipped_missing > 50, "{r:?}");
    assert_eq!(r.published, None);
    // A reward that arrives after reward_wait_s counts as missing.
    let dir2 = tempfile::tempdir().unwrap();
    let mut cfg = settings();
    cfg.learn.reward_wait_s = 1.0;
    cfg.learn.missing_reward = mappo_config::MissingReward::Skip;
    let log = log_with(dir2.path(), "b.db", &ds, &rewards, &ckpt).await;
    let mut learner = Learner::new(log, DEFAULT_LEARNER, cfg).unwrap();
    let r = learner.round(Timestamp::now(), 1000, None).await.unwrap();
    assert_eq!((r.updates, r.counts.learned), (0, 0), "the rewards came an hour late: {r:?}");
}

/// A learner killed at arbitrary moments (its round future dropped mid-flight, the learner
/// itself dropped, a new one opened on the same database) consumes every event exactly once and
/// ends with the same bytes as one that ran uninterrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_restarted_learner_ends_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = settings();
    let ckpt = fresh_checkpoint(&cfg);
    let (ds, rewards) = traffic(2000, 3);
    let log_a = log_with(dir.path(), "a.db", &ds, &rewards, &ckpt).await;
    let log_b = log_with(dir.path(), "b.db", &ds, &rewards, &ckpt).await;

    let mut a = Learner::new(log_a.clone(), DEFAULT_LEARNER, cfg.clone()).unwrap();
    let mut gate = AlwaysPublish;
    let mut longest = Duration::ZERO;
    loop {
        let t0 = std::time::Instant::now();
        let r = a.round(far_future(), 3, Some(&mut gate)).await.unwrap();
        longest = longest.max(t0.elapsed());
        if r.updates == 0 {
            break;
        }
    }
    let sa = log_a.learner_state(DEFAULT_LEARNER).await.unwrap().unwrap();

    // The kill moment is drawn below a cap that adapts to this machine's speed: it shrinks after
    // a round that completed and grows slowly after a kill, so most rounds are killed somewhere
    // inside (a fixed cap let every round finish on a fast machine).
    let mut rng = Rng::new(5);
    let mut cap_us = (longest.as_micros() as f64).max(1000.0);
    let mut kills = 0;
    let mut completed_rounds = 0;
    let mut conflicts = 0;
    loop {
        let mut b = Learner::new(log_b.clone(), DEFAULT_LEARNER, cfg.clone()).unwrap();
        let budget = Duration::from_micros(rng.below(cap_us as u64 + 1));
        let mut gate = AlwaysPublish;
        match tokio::time::timeout(budget, b.round(far_future(), 3, Some(&mut gate))).await {
            Err(_) => {
                kills += 1;
                cap_us *= 1.05;
            }
            // A dropped future does not stop a statement SQLite's worker thread already runs: a
            // killed learner's last commit may land after its successor read the state. The
            // successor's save is then refused as a whole (compare-and-set on `updates`), as
            // it would be against a second learner of the same name; it starts over.
            Ok(Err(mappo_learn::LearnError::Log(mappo_log::LogError::LearnerConflict(_)))) => conflicts += 1,
            Ok(r) => {
                let r = r.unwrap();
                completed_rounds += 1;
                cap_us = (cap_us * 0.7).max(50.0);
                if r.updates == 0 {
                    break;
                }
            }
        }
        drop(b);
        assert!(kills + completed_rounds + conflicts < 5000, "never finished");
    }
    eprintln!("kills {kills}, completed rounds {completed_rounds}, conflicts {conflicts}");
    let sb = log_b.learner_state(DEFAULT_LEARNER).await.unwrap().unwrap();
    assert!(kills >= 5, "the test killed the learner only {kills} times");
    assert_eq!(
        (sb.updates, sb.events, sb.learned, sb.watermark),
        (sa.updates, sa.events, sa.learned, sa.watermark)
    );
    assert!(
        sa.checkpoint == sb.checkpoint,
        "the restarted learner's state differs from the uninterrupted one's"
    );
    // Every consumed event counted once: all 2000 but the short tail.
    assert!(sa.events > 1900 && sa.events <= 2000, "{}", sa.events);
}

/// A cost-aware policy (λ its last input) learns from decisions logged with their λ: here the
/// cheap agent 0 is right whenever λ > 0.5, the best agent for the context otherwise, which no
/// policy blind to λ gets right more than ~2/3 of the time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cost_aware_policy_learns_from_the_logged_cost_weight() {
    let target = |x: &[f32], w: f32| if w > 0.5 { 0 } else { best(x) };
    let dir = tempfile::tempdir().unwrap();
    let cfg = cost_aware_settings();
    let ckpt = fresh_checkpoint_of_width(&cfg, DIM + 1);
    let (mut ds, _) = traffic(6000, 4);
    let mut rng = Rng::new(11);
    let mut rewards = Vec::new();
    for d in &mut ds {
        let w = rng.uniform() as f32;
        d.cost_weight = Some(w);
        rewards.push((d.id, if d.action == target(&d.embedding, w) { 1.0 } else { 0.0 }));
    }
    let log = log_with(dir.path(), "a.db", &ds, &rewards, &ckpt).await;
    let mut learner = Learner::new(log.clone(), DEFAULT_LEARNER, cfg).unwrap();
    let r = learner.round(far_future(), 1000, None).await.unwrap();
    assert_eq!(r.counts.skipped_bad, 0, "every sampled decision has its λ: {r:?}");
    assert!(r.counts.learned > 5000, "{r:?}");
    let state = log.learner_state(DEFAULT_LEARNER).await.unwrap().unwrap();
    let learned = Checkpoint::from_bytes(&state.checkpoint, &Device::Cpu).unwrap();
    assert_eq!(learned.observation_spec().unwrap().width(), DIM + 1, "the embedding, then λ");
    let net = RoutingPolicy::from_checkpoint(&learned, &Device::Cpu).unwrap().into_network();
    let mut rng = Rng::new(99);
    let n = 2000;
    let mut rows = Vec::with_capacity(n * (DIM + 1));
    let mut want = Vec::with_capacity(n);
    for _ in 0..n {
        let x = rng.normal_vec(DIM);
        let w = rng.uniform() as f32;
        want.push(target(&x, w));
        rows.extend_from_slice(&x);
        rows.push(w);
    }
    let logits = net.forward(&Tensor::from_slice(&rows, (n, DIM + 1), &Device::Cpu).unwrap()).unwrap().logits;
    let right = logits
        .to_vec2::<f32>()
        .unwrap()
        .iter()
        .zip(&want)
        .filter(|(r, t)| (0..AGENTS).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap() as u32 == **t)
        .count();
    let acc = right as f64 / n as f64;
    assert!(acc > 0.8, "greedy accuracy {acc} (a policy blind to λ gets at most ~0.67)");
    // Without λ in the log, a cost-aware policy has nothing to learn from: every event is unusable.
    let dir2 = tempfile::tempdir().unwrap();
    for d in &mut ds {
        d.cost_weight = None;
    }
    let log = log_with(dir2.path(), "b.db", &ds, &rewards, &ckpt).await;
    let mut learner = Learner::new(log.clone(), DEFAULT_LEARNER, settings()).unwrap();
    let r = learner.round(far_future(), 1000, None).await.unwrap();
    assert_eq!((r.updates, r.counts.learned), (0, 0), "{r:?}");
    let page =
        log.joined_events(&mappo_log::EventQuery { after: None, before: None, limit: 500 }).await.unwrap();
    let events: Vec<_> = page.iter().map(|e| mappo_learn::learner::LearnEvent::from_joined(e, 1e6)).collect();
    let layout = Checkpoint::from_bytes(&ckpt, &Device::Cpu).unwrap().observation_spec().unwrap();
    assert_eq!(layout, ObservationSpec::embedding(DIM).with_cost_weight());
    let (b, _) = mappo_learn::learner::take_batch(&events, 0, 64, &layout, AGENTS, &settings());
    assert_eq!(b.counts.learned, 0);
    assert!(b.counts.skipped_bad > 400, "{:?}", b.counts);
}
