//! The decision log against both backends: every test runs on SQLite and on PostgreSQL
//! (`MAPPO_TEST_DATABASE_URL`, see DEVELOPERS.md).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::collections::HashSet;

use common::{TestDb, decision};
use mappo_log::{
    DecisionKind, DecisionLog, EventQuery, ExportOptions, GroupCommitOptions, GroupCommitter, LogError,
    PublishMeta, Timestamp, Watermark,
};
use serde_json::Value;

/// Runs `$name(&TestDb)` as `$name::sqlite` and `$name::postgres`.
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let db = crate::common::TestDb::sqlite();
                super::$name(&db).await;
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                let Some(db) = crate::common::TestDb::postgres(concat!(stringify!($name), "::postgres"))
                else {
                    return;
                };
                super::$name(&db).await;
                db.finish().await;
            }
        }
    };
}

both!(migrations_are_idempotent);
async fn migrations_are_idempotent(db: &TestDb) {
    let log = db.open().await;
    let known: Vec<i64> = log.migrations().iter().map(|m| m.version).collect();
    assert_eq!(log.schema_versions().await.unwrap(), known);
    log.log_decisions(&[decision(1)]).await.unwrap();
    log.close().await;
    // Reopen twice, one of them concurrently with another open: nothing re-applied, data kept.
    let (a, b) = tokio::join!(db.open(), db.open());
    assert_eq!(a.schema_versions().await.unwrap(), known);
    assert_eq!(b.schema_versions().await.unwrap(), known);
    assert_eq!(a.stats().await.unwrap().decisions, 1);
}

both!(decision_round_trips_every_field);
async fn decision_round_trips_every_field(db: &TestDb) {
    let log = db.open().await;
    let ds: Vec<_> = (0..10).map(decision).collect();
    log.log_decisions(&ds).await.unwrap();
    log.close().await;
    let log = db.open().await;
    for d in &ds {
        let got = log.decision(d.id).await.unwrap().expect("logged");
        assert_eq!(&got.decision, d);
        assert!(got.reward.is_none());
        // Bit-exact: PartialEq on f32 would accept -0.0 == 0.0; compare the bits.
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got.decision.embedding), bits(&d.embedding));
        assert_eq!(bits(&got.decision.probabilities), bits(&d.probabilities));
        assert_eq!(got.decision.propensity.to_bits(), d.propensity.to_bits());
    }
    assert!(log.decision(mappo_log::Decision::new_id()).await.unwrap().is_none());
    // A duplicate id is refused and the batch is not half-written.
    let fresh = decision(11);
    let err = log.log_decisions(&[fresh.clone(), ds[0].clone()]).await.unwrap_err();
    assert!(matches!(err, LogError::DuplicateDecision), "{err}");
    assert!(log.decision(fresh.id).await.unwrap().is_none());
    // Invalid decisions are refused before the database.
    let mut bad = decision(12);
    bad.action = 99;
    assert!(matches!(log.log_decisions(&[bad]).await, Err(LogError::InvalidDecision { .. })));
    let mut bad = decision(13);
    bad.propensity = 0.0;
    assert!(matches!(log.log_decisions(&[bad]).await, Err(LogError::InvalidDecision { .. })));
}

both!(rewards_unknown_duplicate_invalid);
async fn rewards_unknown_duplicate_invalid(db: &TestDb) {
    let log = db.open().await;
    let d = decision(0);
    log.log_decisions(std::slice::from_ref(&d)).await.unwrap();
    let unknown = mappo_log::Decision::new_id();
    assert!(matches!(
        log.record_reward(unknown, 1.0).await,
        Err(LogError::UnknownDecision(id)) if id == unknown
    ));
    assert!(matches!(log.record_reward(d.id, f64::NAN).await, Err(LogError::InvalidReward(_))));
    log.record_reward(d.id, 0.25).await.unwrap();
    assert!(matches!(
        log.record_reward(d.id, -1.0).await,
        Err(LogError::AlreadyRewarded(id)) if id == d.id
    ));
    // The first reward stands.
    let got = log.decision(d.id).await.unwrap().unwrap();
    assert_eq!(got.reward.map(|r| r.reward), Some(0.25));
    // The same through the group committer.
    let gc = GroupCommitter::new(log.clone(), GroupCommitOptions::default());
    assert!(matches!(gc.record_reward(unknown, 1.0).await, Err(LogError::UnknownDecision(_))));
    assert!(matches!(gc.record_reward(d.id, 1.0).await, Err(LogError::AlreadyRewarded(_))));
    assert!(matches!(gc.record_reward(d.id, f64::INFINITY).await, Err(LogError::InvalidReward(_))));
    let e = decision(1);
    gc.log_decisions(std::slice::from_ref(&e)).await.unwrap();
    gc.record_reward(e.id, -0.5).await.unwrap();
    assert_eq!(log.decision(e.id).await.unwrap().unwrap().reward.map(|r| r.reward), Some(-0.5));
}

both!(group_commit_loses_nothing);
async fn group_commit_loses_nothing(db: &TestDb) {
    let log = db.open().await;
    let gc = GroupCommitter::new(log.clone(), GroupCommitOptions::default());
    let writers = 32;
    let per_writer = 40;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let gc = gc.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..per_writer {
                // Batches of 1 to 3 decisions, a reward for every other one, and one duplicate
                // request per writer that must fail alone.
                let batch: Vec<_> = (0..1 + (i % 3)).map(|k| decision(w * 1000 + i * 3 + k)).collect();
                gc.log_decisions(&batch).await.unwrap();
                if i == 7 {
                    assert!(matches!(gc.log_decisions(&batch[..1]).await, Err(LogError::DuplicateDecision)));
                }
                for d in &batch {
                    ids.push(d.id);
                }
                if i % 2 == 0 {
                    gc.record_reward(batch[0].id, f64::from(w)).await.unwrap();
                }
            }
            ids
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let expected_decisions = writers as usize * (0..per_writer).map(|i| 1 + (i % 3) as usize).sum::<usize>();
    assert_eq!(all.len(), expected_decisions);
    let stats = log.stats().await.unwrap();
    assert_eq!(stats.decisions as usize, expected_decisions);
    assert_eq!(stats.rewards as usize, writers as usize * per_writer as usize / 2);
    for id in &all {
        assert!(log.decision(*id).await.unwrap().is_some());
    }
    // Batching happened: fewer transactions than requests.
    let c = gc.counters();
    let batches = c.batches.load(std::sync::atomic::Ordering::Relaxed);
    let requests = writers as u64 * per_writer as u64 * 3 / 2;
    assert!(batches < requests, "{batches} transactions for {requests} requests");
    assert_eq!(c.decisions.load(std::sync::atomic::Ordering::Relaxed) as usize, expected_decisions);
}

both!(policy_publish_is_idempotent_and_ordered);
async fn policy_publish_is_idempotent_and_ordered(db: &TestDb) {
    let log = db.open().await;
    assert_eq!(log.latest_policy_version().await.unwrap(), None);
    assert!(log.latest_policy().await.unwrap().is_none());
    assert!(log.list_policies().await.unwrap().is_empty());
    let meta = |s: &str| PublishMeta {
        source: s.into(),
        note: Some(format!("note {s}")),
        meta: serde_json::json!({"gate": {"dr": 0.91, "ci": [0.88, 0.94]}, "s": s}),
    };
    let a = b"checkpoint A".to_vec();
    let b: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let pa = log.publish_policy(&a, &meta("a")).await.unwrap();
    assert_eq!((pa.version, pa.created), (1, true));
    let pb = log.publish_policy(&b, &meta("b")).await.unwrap();
    assert_eq!((pb.version, pb.created), (2, true));
    // Same bytes again: the existing version, nothing new.
    let again = log.publish_policy(&a, &meta("a again")).await.unwrap();
    assert_eq!((again.version, again.created), (1, false));
    assert_eq!(log.latest_policy_version().await.unwrap(), Some(2));
    let latest = log.latest_policy().await.unwrap().unwrap();
    assert_eq!(latest.info.version, 2);
    assert_eq!(latest.checkpoint, b);
    assert_eq!(latest.info.size, b.len() as i64);
    let one = log.policy(1).await.unwrap().unwrap();
    assert_eq!(one.checkpoint, a);
    assert_eq!(one.info.source, "a");
    assert_eq!(one.info.note.as_deref(), Some("note a"));
    assert_eq!(one.info.meta, meta("a").meta);
    // `printf 'checkpoint A' | sha256sum`
    assert_eq!(one.info.sha256, "56ece1fb4ee56b87ff676a3e5aa84330940ac4f402f476b8daba2d213df4c379");
    assert!(log.policy(3).await.unwrap().is_none());
    let list = log.list_policies().await.unwrap();
    assert_eq!(list.iter().map(|p| p.version).collect::<Vec<_>>(), vec![1, 2]);
    assert!(list[0].created <= list[1].created);
    // Concurrent publishers: distinct bytes get distinct, gap-free versions.
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            log.publish_policy(&[i, 1, 2, 3], &PublishMeta::default()).await.unwrap().version
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap());
    }
    versions.sort();
    assert_eq!(versions, (3..=10).collect::<Vec<i64>>());
    // A watcher sees a new version.
    let mut rx = log.watch_policy_version(std::time::Duration::from_millis(50));
    rx.changed().await.unwrap();
    assert_eq!(*rx.borrow(), Some(10));
    log.publish_policy(b"newer", &PublishMeta::default()).await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(2), rx.changed())
        .await
        .expect("the watcher saw the new version within 2 s")
        .unwrap();
    assert_eq!(*rx.borrow(), Some(11));
}

both!(export_writes_every_field);
async fn export_writes_every_field(db: &TestDb) {
    let log = db.open().await;
    let ds: Vec<_> = (0..7).map(decision).collect();
    log.log_decisions(&ds).await.unwrap();
    log.record_reward(ds[0].id, 1.0).await.unwrap();
    log.record_reward(ds[3].id, -0.75).await.unwrap();
    let mut out = Vec::new();
    let n = log.export_jsonl(&mut out, ExportOptions::default()).await.unwrap();
    assert_eq!(n, 7);
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 7);
    let mut seen = HashSet::new();
    for line in &lines {
        let obj = line.as_object().unwrap();
        let id: uuid::Uuid = obj["decision_id"].as_str().unwrap().parse().unwrap();
        seen.insert(id);
        let d = ds.iter().find(|d| d.id == id).expect("an exported id was logged");
        let mut keys: Vec<&str> = obj.keys().map(|k| k.as_str()).collect();
        keys.sort();
        let mut want = vec![
            "action",
            "agent",
            "decision_id",
            "kind",
            "policy_version",
            "probabilities",
            "propensity",
            "replica",
            "reward",
            "time",
        ];
        if d.text.is_some() {
            want.push("text");
        }
        if d.cost_weight.is_some() {
            want.push("cost_weight");
        }
        if d.shadow.is_some() {
            want.push("shadow");
        }
        want.sort();
        assert_eq!(keys, want);
        if let Some(w) = d.cost_weight {
            assert_eq!(obj["cost_weight"].as_f64().unwrap() as f32, w);
        }
        if let Some(s) = d.shadow {
            assert_eq!(obj["shadow"]["version"], Value::from(s.version));
            assert_eq!(obj["shadow"]["action"], Value::from(s.action));
            assert_eq!(obj["shadow"]["propensity"].as_f64().unwrap() as f32, s.propensity);
        }
        assert_eq!(obj["time"], Value::from(d.time.to_rfc3339()));
        assert!(obj["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(obj["policy_version"], Value::from(d.policy_version));
        assert_eq!(obj["action"], Value::from(d.action));
        assert_eq!(obj["agent"], Value::from(d.agent.clone()));
        let probs: Vec<f32> =
            obj["probabilities"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap() as f32).collect();
        assert_eq!(probs, d.probabilities);
        assert_eq!(obj["propensity"].as_f64().unwrap() as f32, d.propensity);
        assert_eq!(obj["kind"], Value::from(d.kind.as_str()));
        assert_eq!(obj["replica"], Value::from(d.replica.as_str()));
        let reward = if id == ds[0].id {
            Value::from(1.0)
        } else if id == ds[3].id {
            Value::from(-0.75)
        } else {
            Value::Null
        };
        assert_eq!(obj["reward"], reward);
        if let Some(t) = &d.text {
            assert_eq!(obj["text"], Value::from(t.clone()));
        }
    }
    assert_eq!(seen.len(), 7);
    // The field order of the documented format.
    let first = text.lines().next().unwrap();
    let pos = |k: &str| first.find(&format!("\"{k}\":")).unwrap();
    assert!(pos("decision_id") < pos("time"));
    assert!(pos("time") < pos("policy_version"));
    assert!(pos("policy_version") < pos("action"));
    assert!(pos("propensity") < pos("reward"));
    // With embeddings.
    let mut out = Vec::new();
    log.export_jsonl(&mut out, ExportOptions { embeddings: true }).await.unwrap();
    let line: Value = serde_json::from_str(String::from_utf8(out).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(line["embedding"].as_array().unwrap().len(), 384);
}

both!(stats_count_and_average);
async fn stats_count_and_average(db: &TestDb) {
    let log = db.open().await;
    let empty = log.stats().await.unwrap();
    assert_eq!((empty.decisions, empty.rewards, empty.join_rate), (0, 0, 0.0));
    assert_eq!(empty.reward_mean, None);
    let ds: Vec<_> = (0..10).map(decision).collect();
    log.log_decisions(&ds).await.unwrap();
    // Reward decisions 0..4 with 0, 0.25, 0.5, 0.75.
    for (i, d) in ds.iter().take(4).enumerate() {
        log.record_reward(d.id, i as f64 * 0.25).await.unwrap();
    }
    log.publish_policy(b"p", &PublishMeta::default()).await.unwrap();
    let s = log.stats().await.unwrap();
    assert_eq!(s.decisions, 10);
    let count = |k: DecisionKind| ds.iter().filter(|d| d.kind == k).count() as i64;
    assert_eq!(s.sampled, count(DecisionKind::Sampled));
    assert_eq!(s.greedy, count(DecisionKind::Greedy));
    assert_eq!(s.forced, count(DecisionKind::Forced));
    assert_eq!(s.rewards, 4);
    assert!((s.join_rate - 0.4).abs() < 1e-12);
    assert!((s.reward_mean.unwrap() - 0.375).abs() < 1e-12);
    assert_eq!((s.policy_versions, s.latest_policy_version), (1, Some(1)));
    assert_eq!(s.first_decision, ds.iter().map(|d| d.time).min());
    assert_eq!(s.last_decision, ds.iter().map(|d| d.time).max());
    // Per agent, by name, computed here independently.
    let mut names: Vec<String> = ds.iter().map(|d| d.agent.clone()).collect();
    names.sort();
    names.dedup();
    assert_eq!(s.agents.iter().map(|a| a.agent.clone()).collect::<Vec<_>>(), names);
    for a in &s.agents {
        let mine: Vec<usize> = (0..10).filter(|&i| ds[i].agent == a.agent).collect();
        let rewarded: Vec<f64> = mine.iter().filter(|&&i| i < 4).map(|&i| i as f64 * 0.25).collect();
        assert_eq!(a.decisions, mine.len() as i64);
        assert_eq!(a.rewarded, rewarded.len() as i64);
        let mean = (!rewarded.is_empty()).then(|| rewarded.iter().sum::<f64>() / rewarded.len() as f64);
        match (a.reward_mean, mean) {
            (Some(x), Some(y)) => assert!((x - y).abs() < 1e-12),
            (x, y) => assert_eq!(x, y),
        }
    }
    // Serialisable for `mappo log stats --json`.
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["decisions"], Value::from(10));
}

both!(joined_events_order_and_watermark);
async fn joined_events_order_and_watermark(db: &TestDb) {
    let log = db.open().await;
    // Times chosen out of insertion order, with ties broken by id.
    let mut ds: Vec<_> = (0..25).map(decision).collect();
    for (i, d) in ds.iter_mut().enumerate() {
        d.time = Timestamp(1_700_000_000_000_000 + ((i * 7) % 10) as i64);
    }
    log.log_decisions(&ds).await.unwrap();
    log.record_reward(ds[5].id, 0.5).await.unwrap();
    let mut want: Vec<Watermark> = ds.iter().map(|d| Watermark { time: d.time, id: d.id }).collect();
    want.sort();
    // Page through with a watermark: every event once, in (time, id) order.
    let mut got = Vec::new();
    let mut q = EventQuery { after: None, before: None, limit: 4 };
    loop {
        let page = log.joined_events(&q).await.unwrap();
        assert!(page.len() <= 4);
        let Some(last) = page.last() else { break };
        q.after = Some(last.watermark());
        for e in &page {
            if e.decision.id == ds[5].id {
                assert_eq!(e.reward.map(|r| r.reward), Some(0.5));
            } else {
                assert!(e.reward.is_none());
            }
            got.push(e.watermark());
        }
    }
    assert_eq!(got, want);
    // Resuming from a watermark in the middle gives exactly the rest.
    let mid = want[10];
    let rest = log.joined_events(&EventQuery { after: Some(mid), before: None, limit: 1000 }).await.unwrap();
    assert_eq!(rest.iter().map(|e| e.watermark()).collect::<Vec<_>>(), want[11..].to_vec());
    // `before` bounds the decision time (strictly).
    let early = log
        .joined_events(&EventQuery {
            after: None,
            before: Some(Timestamp(1_700_000_000_000_000 + 3)),
            limit: 1000,
        })
        .await
        .unwrap();
    assert_eq!(
        early.iter().map(|e| e.watermark()).collect::<Vec<_>>(),
        want.iter().copied().filter(|w| w.time.0 < 1_700_000_000_000_000 + 3).collect::<Vec<_>>()
    );
    assert!(!early.is_empty());
    // Full event contents come back too.
    assert_eq!(rest[0].decision, *ds.iter().find(|d| d.id == rest[0].decision.id).unwrap());
}

#[tokio::test]
async fn unreachable_postgres_is_a_clear_error_without_the_password() {
    // Port 1 on localhost: nothing listens there.
    let url = "postgres://someone:hunter2@127.0.0.1:1/nowhere";
    let err = DecisionLog::open(url).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LogError::Connect { .. }), "{msg}");
    assert!(msg.contains("127.0.0.1:1/nowhere"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
}

#[tokio::test]
async fn bad_urls_are_refused() {
    for url in ["mysql://x@y/z", "serve.db", "sqlite:"] {
        assert!(matches!(DecisionLog::open(url).await, Err(LogError::BadUrl(_))), "{url}");
    }
}

#[tokio::test]
async fn sqlite_uses_wal() {
    let db = TestDb::sqlite();
    let log = db.open().await;
    drop(log);
    let path = db.url.strip_prefix("sqlite:").unwrap();
    use sqlx::Connection;
    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{path}")).await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut c).await.unwrap();
    assert_eq!(mode, "wal");
}

both!(gate_decisions_round_trip);
async fn gate_decisions_round_trip(db: &TestDb) {
    let log = db.open().await;
    assert!(log.schema_versions().await.unwrap().contains(&2));
    assert!(log.gate_decisions().await.unwrap().is_empty());
    let refused = mappo_log::GateRecord {
        id: 0,
        time: Timestamp(1_000),
        published: false,
        candidate_version: None,
        current_version: Some(1),
        candidate_sha256: Some("ab".repeat(32)),
        estimator: "dr".into(),
        margin: 0.01,
        n: 500,
        candidate_value: 0.41,
        candidate_ci: [0.35, 0.47],
        current_value: Some(0.6),
        current_ci: Some([0.55, 0.65]),
        reason: "refused".into(),
        meta: serde_json::json!({"candidate": {"snips": 0.4}}),
    };
    let first = mappo_log::GateRecord {
        published: true,
        candidate_version: Some(1),
        current_version: None,
        current_value: None,
        current_ci: None,
        meta: Value::Null,
        ..refused.clone()
    };
    assert_eq!(log.record_gate_decision(&first).await.unwrap(), 1);
    assert_eq!(log.record_gate_decision(&refused).await.unwrap(), 2);
    let bad = mappo_log::GateRecord { candidate_value: f64::NAN, ..refused.clone() };
    assert!(log.record_gate_decision(&bad).await.is_err());
    let got = log.gate_decisions().await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], mappo_log::GateRecord { id: 1, meta: serde_json::json!({}), ..first });
    assert_eq!(got[1], mappo_log::GateRecord { id: 2, ..refused });
}

both!(learner_state_saves_atomically_with_its_publication);
async fn learner_state_saves_atomically_with_its_publication(db: &TestDb) {
    use mappo_log::LearnerState;
    let log = db.open().await;
    assert_eq!(log.learner_state("default").await.unwrap(), None);
    let d = decision(0);
    let mut s = LearnerState {
        name: "default".into(),
        watermark: Some(Watermark { time: d.time, id: d.id }),
        updates: 1,
        events: 10,
        learned: 7,
        base_version: None,
        checkpoint: vec![1, 2, 3],
        meta: serde_json::json!({"mean_reward": 0.5}),
        updated: Timestamp(0),
    };
    assert_eq!(log.save_learner_state(&s, None, None).await.unwrap(), None);
    let back = log.learner_state("default").await.unwrap().unwrap();
    assert_eq!((back.watermark, back.updates, back.events, back.learned), (s.watermark, 1, 10, 7));
    assert_eq!((back.checkpoint.as_slice(), back.base_version), (&[1u8, 2, 3][..], None));
    assert_eq!(back.meta, s.meta);
    assert!(back.updated.0 > 0);
    // A second "first save", or one that follows a state that is not the stored one: refused.
    assert!(matches!(log.save_learner_state(&s, None, None).await, Err(LogError::LearnerConflict(_))));
    s.updates = 2;
    s.checkpoint = vec![4, 5];
    let meta = PublishMeta { source: "test".into(), ..PublishMeta::default() };
    let refused = log.save_learner_state(&s, Some(7), Some((&[9, 9, 9], &meta))).await;
    assert!(matches!(refused, Err(LogError::LearnerConflict(_))), "{refused:?}");
    // ... and its publication was rolled back with it.
    assert_eq!(log.latest_policy_version().await.unwrap(), None);
    // With publication: the version and the state together; base_version is the new version.
    let p = log.save_learner_state(&s, Some(1), Some((&[9, 9, 9], &meta))).await.unwrap().unwrap();
    assert_eq!((p.version, p.created), (1, true));
    let back = log.learner_state("default").await.unwrap().unwrap();
    assert_eq!((back.updates, back.base_version, back.checkpoint), (2, Some(1), vec![4, 5]));
    assert_eq!(log.latest_policy().await.unwrap().unwrap().checkpoint, vec![9, 9, 9]);
    // Another learner name is another row.
    assert_eq!(log.learner_state("other").await.unwrap(), None);
}

/// `decision(i)` as step `step` of episode `episode`.
fn step(i: u32, episode: &str, step: u32) -> mappo_log::Decision {
    let mut d = decision(i);
    d.episode = Some(mappo_log::EpisodeStep { id: episode.into(), step, stage: format!("stage-{step}") });
    d
}

both!(episodes_steps_ends_export_and_stats);
async fn episodes_steps_ends_export_and_stats(db: &TestDb) {
    let log = db.open().await;
    let committer = GroupCommitter::new(log.clone(), GroupCommitOptions::default());
    assert_eq!(log.episode("chat-1").await.unwrap(), None);
    // Two steps of one conversation, one of another, and a one-step decision.
    let a0 = step(0, "chat-1", 0);
    let a1 = step(1, "chat-1", 1);
    let b0 = step(2, "chat-2", 0);
    let lone = decision(3);
    for d in [&a0, &a1, &b0, &lone] {
        committer.log_decisions(std::slice::from_ref(d)).await.unwrap();
    }
    committer.record_reward(a0.id, 0.5).await.unwrap();
    // A step is taken once, whichever replica asks: the second is refused, and named.
    let again = step(4, "chat-1", 1);
    match committer.log_decisions(std::slice::from_ref(&again)).await {
        Err(LogError::StepTaken { episode, step }) => assert_eq!((episode.as_str(), step), ("chat-1", 1)),
        other => panic!("expected StepTaken, got {other:?}"),
    }
    // A batch with a conflicting step fails alone in the group committer.
    let (c0, clash) = (step(5, "chat-3", 0), step(6, "chat-2", 0));
    let (ok, bad) = tokio::join!(
        committer.log_decisions(std::slice::from_ref(&c0)),
        committer.log_decisions(std::slice::from_ref(&clash))
    );
    assert!(ok.is_ok() && matches!(bad, Err(LogError::StepTaken { .. })), "{ok:?} {bad:?}");
    let st = log.episode("chat-1").await.unwrap().unwrap();
    assert_eq!(st.steps, vec![(0, a0.action, "stage-0".into()), (1, a1.action, "stage-1".into())]);
    assert_eq!(st.end, None);
    // Ends: with a reward, without one; unknown, second end, not finite.
    committer.end_episode("chat-1", Some(2.5)).await.unwrap();
    committer.end_episode("chat-2", None).await.unwrap();
    assert!(matches!(
        committer.end_episode("chat-1", Some(1.0)).await,
        Err(LogError::EpisodeAlreadyEnded(_))
    ));
    assert!(matches!(committer.end_episode("nope", None).await, Err(LogError::UnknownEpisode(_))));
    assert!(matches!(
        log.end_episode("chat-3", Some(f64::NAN)).await,
        Err(LogError::InvalidEpisodeReward(_))
    ));
    // A step after the end is refused; nothing of it is logged.
    let late = step(7, "chat-1", 2);
    assert!(matches!(
        committer.log_decisions(std::slice::from_ref(&late)).await,
        Err(LogError::EpisodeEnded(_))
    ));
    assert!(log.decision(late.id).await.unwrap().is_none());
    let st = log.episode("chat-1").await.unwrap().unwrap();
    assert_eq!(st.end.map(|e| e.reward), Some(Some(2.5)));
    // Read back: the episode fields, the end on every step of an ended episode.
    let e1 = log.decision(a1.id).await.unwrap().unwrap();
    assert_eq!(e1.decision, a1);
    assert!(e1.is_episode_end() && !log.decision(a0.id).await.unwrap().unwrap().is_episode_end());
    assert_eq!(log.decision(lone.id).await.unwrap().unwrap().decision.episode, None);
    // Export: one row per decision, the episode reward on its last row only.
    let mut out = Vec::new();
    assert_eq!(log.export_jsonl(&mut out, ExportOptions::default()).await.unwrap(), 5);
    let rows: Vec<Value> =
        String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let row = |id: uuid::Uuid| rows.iter().find(|r| r["decision_id"] == id.to_string()).unwrap().clone();
    let (r0, r1, rb, rl) = (row(a0.id), row(a1.id), row(b0.id), row(lone.id));
    assert_eq!(
        (r0["episode_id"].as_str(), r0["step"].as_u64(), r0["stage"].as_str()),
        (Some("chat-1"), Some(0), Some("stage-0"))
    );
    assert_eq!(r0["reward"], 0.5);
    assert!(r0.get("episode_end").is_none() && r0.get("episode_reward").is_none(), "{r0}");
    assert_eq!((r1["episode_end"].as_bool(), r1["episode_reward"].as_f64()), (Some(true), Some(2.5)), "{r1}");
    assert_eq!((rb["episode_end"].as_bool(), rb.get("episode_reward")), (Some(true), None), "{rb}");
    assert!(rl.get("episode_id").is_none() && rl.get("step").is_none(), "{rl}");
    // An episode's events in step order, with their rewards and the end.
    let evs = log.episode_events("chat-1").await.unwrap();
    assert_eq!(evs.iter().map(|e| e.decision.id).collect::<Vec<_>>(), vec![a0.id, a1.id]);
    assert_eq!(evs[0].reward.map(|r| r.reward), Some(0.5));
    assert!(evs.iter().all(|e| e.episode_end.and_then(|x| x.reward) == Some(2.5)));
    assert!(log.episode_events("nope").await.unwrap().is_empty());
    // Stats count episodes.
    let s = log.stats().await.unwrap();
    assert_eq!((s.decisions, s.episodes, s.episodes_ended), (5, 3, 2));
    assert_eq!(s.episode_reward_mean, Some(2.5));
}

both!(dashboard_rollup_counts_what_was_logged);
/// The dashboard's rollup (kept by every write transaction) against a count made here from the
/// decisions and rewards sent: written by four concurrent group committers (rewards in the same
/// batches as their decisions and in later ones, a second reward refused), read over a range
/// whose ends fall inside rollup buckets (so both edges are scanned), in minute buckets; then
/// the same after `rebuild_dashboard_rollup` (migration 7's backfill) and from a scan.
async fn dashboard_rollup_counts_what_was_logged(db: &TestDb) {
    use std::collections::BTreeMap;

    use mappo_log::{DashboardQuery, ShadowChoice, Tally};
    let log = db.open().await;
    let base = 1_700_000_000_000_000i64; // a multiple of 10 s
    let mut ds = Vec::new();
    for i in 0..800u32 {
        let mut d = decision(i);
        // 4 minutes, 0.3 s apart, so every 10-s bucket and minute holds several.
        d.time = Timestamp(base + i64::from(i) * 300_000 + 1234);
        if i % 3 == 0 {
            d.cost_weight = Some((i % 7) as f32 * 0.125);
        }
        if i % 4 == 0 {
            d.shadow = Some(ShadowChoice { version: 2 + i64::from(i % 2), action: i % 2, propensity: 0.5 });
        }
        ds.push(d);
    }
    let rewards: BTreeMap<usize, f64> =
        (0..ds.len()).filter(|i| i % 3 != 1).map(|i| (i, (i % 11) as f64 * 0.1 - 0.3)).collect();
    let committer = GroupCommitter::new(log.clone(), GroupCommitOptions::default());
    let mut tasks = Vec::new();
    for part in 0..4 {
        let (c, ds, rewards) = (committer.clone(), ds.clone(), rewards.clone());
        tasks.push(tokio::spawn(async move {
            for (i, d) in ds.iter().enumerate().filter(|(i, _)| i % 4 == part) {
                c.log_decisions(std::slice::from_ref(d)).await.unwrap();
                if let Some(r) = rewards.get(&i).filter(|_| i % 2 == 0) {
                    c.record_reward(d.id, *r).await.unwrap();
                }
            }
            for (i, d) in ds.iter().enumerate().filter(|(i, _)| i % 4 == part) {
                if let Some(r) = rewards.get(&i).filter(|_| i % 2 == 1) {
                    c.record_reward(d.id, *r).await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(matches!(log.record_reward(ds[0].id, 9.0).await, Err(LogError::AlreadyRewarded(_))));

    // The range: from decision 17 to before decision 777, neither on a 10-s boundary.
    let q = DashboardQuery {
        from: ds[17].time,
        to: ds[777].time,
        bucket_us: 60_000_000,
        max_decisions: 100_000,
        recent: 5,
        history: 5,
    };
    assert_ne!(q.from.0 % mappo_log::ROLLUP_US, 0);
    let mut want: BTreeMap<(i64, String, &str), Tally> = BTreeMap::new();
    for (i, d) in ds.iter().enumerate().filter(|(_, d)| d.time >= q.from && d.time < q.to) {
        let t = want.entry((q.bucket_of(d.time).0, d.agent.clone(), d.kind.as_str())).or_default();
        t.decisions += 1;
        match d.kind {
            DecisionKind::Sampled => t.sampled += 1,
            DecisionKind::Greedy => t.greedy += 1,
            DecisionKind::Forced => t.forced += 1,
        }
        if let Some(r) = rewards.get(&i) {
            t.rewarded += 1;
            t.reward_sum += r;
            t.reward_sq_sum += r * r;
        }
        if let Some(cw) = d.cost_weight.map(f64::from) {
            t.cost_weighted += 1;
            t.cost_weight_sum += cw;
            t.cost_weight_min = Some(t.cost_weight_min.map_or(cw, |m| m.min(cw)));
            t.cost_weight_max = Some(t.cost_weight_max.map_or(cw, |m| m.max(cw)));
        }
        if let Some(s) = d.shadow {
            t.shadowed += 1;
            t.shadow_agreed += i64::from(s.action == d.action);
            t.shadow_version = t.shadow_version.max(Some(s.version));
        }
    }
    assert_eq!(want.values().map(|t| t.decisions).sum::<i64>(), 760);
    let check = |dash: &mappo_log::Dashboard, how: &str| {
        assert_eq!(dash.cut_at, None, "{how}");
        let got: BTreeMap<(i64, String, &str), Tally> =
            dash.groups.iter().map(|g| ((g.bucket.0, g.agent.clone(), g.kind.as_str()), g.tally)).collect();
        assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{how}");
        for (k, w) in &want {
            let g = &got[k];
            let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
            assert!(
                close(g.reward_sum, w.reward_sum) && close(g.reward_sq_sum, w.reward_sq_sum),
                "{how} {k:?}"
            );
            assert!(close(g.cost_weight_sum, w.cost_weight_sum), "{how} {k:?}");
            let exact = |t: &Tally| Tally { reward_sum: 0.0, reward_sq_sum: 0.0, cost_weight_sum: 0.0, ..*t };
            assert_eq!(exact(g), exact(w), "{how} {k:?}");
        }
    };
    check(&log.dashboard(&q).await.unwrap(), "rollup");
    // A scan of the same range (10-s buckets summed into minutes by hand would be the rollup
    // again; 30-s buckets are a multiple, 15-s ones are not): 15-s buckets summed per minute.
    let scan = log.dashboard(&DashboardQuery { bucket_us: 15_000_000, ..q }).await.unwrap();
    let mut by_minute = scan.clone();
    by_minute.query = q;
    by_minute.groups.clear();
    let mut merged: BTreeMap<(i64, String, &str), (DecisionKind, Tally)> = BTreeMap::new();
    for g in &scan.groups {
        let e = merged
            .entry((q.bucket_of(g.bucket).0, g.agent.clone(), g.kind.as_str()))
            .or_insert((g.kind, Tally::default()));
        e.1.add(&g.tally);
    }
    for ((b, agent, _), (kind, tally)) in merged {
        by_minute.groups.push(mappo_log::DashboardGroup { bucket: Timestamp(b), agent, kind, tally });
    }
    check(&by_minute, "scan");
    log.rebuild_dashboard_rollup().await.unwrap();
    check(&log.dashboard(&q).await.unwrap(), "rebuilt");
}
