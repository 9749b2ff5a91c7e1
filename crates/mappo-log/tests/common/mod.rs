//! Test databases: a SQLite file in a temporary directory, or a fresh schema in the PostgreSQL
//! database named by `MAPPO_TEST_DATABASE_URL` (`cargo xtask test` starts a throwaway cluster
//! and sets it; see DEVELOPERS.md).
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

use mappo_log::{Decision, DecisionKind, DecisionLog, OpenOptions, ShadowChoice, Timestamp};

/// The variable naming the PostgreSQL database for tests.
pub const PG_VAR: &str = "MAPPO_TEST_DATABASE_URL";

/// A database for one test.
pub struct TestDb {
    pub url: String,
    pub opts: OpenOptions,
    pub schema: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

/// `MAPPO_TEST_DATABASE_URL`, or `None` after saying plainly that the PostgreSQL tests are
/// skipped. With `CI=true` a skip is a failure (panics).
pub fn pg_url(test: &str) -> Option<String> {
    match std::env::var(PG_VAR) {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "{PG_VAR} is not set and CI=true: the PostgreSQL tests must run in CI \
                 (run them through `cargo xtask test`, which starts a throwaway cluster)"
            );
            // Straight to stderr, not eprintln!: the test harness would capture that and hide
            // the skip.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED {test} (PostgreSQL): {PG_VAR} is not set; `cargo xtask test` starts a \
                 throwaway cluster and sets it (DEVELOPERS.md)"
            );
            None
        }
    }
}

/// A schema name unique to this process and call.
pub fn unique_schema() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("mappo_test_{}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed), nanos)
}

impl TestDb {
    /// A SQLite file in a fresh temporary directory (`sub/dir/log.db`, to check that parent
    /// directories are created).
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite:{}", dir.path().join("sub/dir/log.db").display());
        TestDb { url, opts: OpenOptions::default(), schema: None, _dir: Some(dir) }
    }

    /// A fresh schema on the test PostgreSQL database, `None` (after saying so) when there is
    /// none.
    pub fn postgres(test: &str) -> Option<Self> {
        let url = pg_url(test)?;
        let schema = unique_schema();
        Some(TestDb {
            url,
            opts: OpenOptions { pg_schema: Some(schema.clone()), ..OpenOptions::default() },
            schema: Some(schema),
            _dir: None,
        })
    }

    /// Opens (or reopens) the log.
    pub async fn open(&self) -> DecisionLog {
        DecisionLog::open_with(&self.url, self.opts.clone())
            .await
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.url))
    }

    /// Drops the PostgreSQL schema (a failed test leaves it for inspection).
    pub async fn finish(self) {
        if let Some(schema) = &self.schema {
            drop_schema(&self.url, schema).await;
        }
    }
}

/// Drops a test schema.
pub async fn drop_schema(url: &str, schema: &str) {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")))
        .execute(&mut c)
        .await
        .expect("drop schema");
}

/// A decision with every field set to something distinctive; `i` varies it.
pub fn decision(i: u32) -> Decision {
    let k = 3 + (i % 3) as usize;
    let mut probabilities: Vec<f32> = (0..k).map(|j| 1.0 + j as f32 + i as f32 * 0.1).collect();
    let sum: f32 = probabilities.iter().sum();
    for p in &mut probabilities {
        *p /= sum;
    }
    let action = i % k as u32;
    Decision {
        id: Decision::new_id(),
        time: Timestamp::now(),
        policy_version: 1 + i64::from(i % 4),
        action,
        agent: format!("agent-{action}"),
        propensity: probabilities[action as usize],
        probabilities,
        kind: match i % 5 {
            3 => DecisionKind::Greedy,
            4 => DecisionKind::Forced,
            _ => DecisionKind::Sampled,
        },
        // Values whose bits a lossy path would change: tiny, negative, subnormal, large.
        embedding: (0..384)
            .map(|j| match j % 4 {
                0 => (j as f32 * 0.001 + i as f32).sin(),
                1 => -1.0e-30 * (j as f32 + 1.0),
                2 => f32::from_bits(0x0000_0001 + j),
                _ => 3.402_823e38 / (j as f32 + 1.0),
            })
            .collect(),
        model_hash: "0123456789abcdef".into(),
        text: i.is_multiple_of(2).then(|| format!("prompt number {i} — ünïcödé")),
        replica: format!("replica-{}", i % 2),
        cost_weight: i.is_multiple_of(3).then_some(0.25 * i as f32),
        shadow: i.is_multiple_of(2).then(|| ShadowChoice {
            version: 9,
            action: (action + 1) % k as u32,
            propensity: 1.0 / (i as f32 + 2.0),
        }),
        episode: None,
    }
}
