//! What `mappo serve`'s dashboard (`GET /ui`) shows, read from the log with a bounded amount of
//! work per call: [`DecisionLog::dashboard`] aggregates the decisions of a time range by time
//! bucket, agent and kind in one indexed range query (at most [`DashboardQuery::max_decisions`],
//! the newest of the range), and reads the newest decisions, policy versions and gate
//! decisions. One SQL text serves both backends (integer division of `time_us` by the bucket
//! groups the rows on either).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

use crate::LogError;
use crate::log::{Backend, DecisionLog, GATE_COLUMNS, decode_gate, on_pool};
use crate::tally::{ROLLUP_US, Tally};
use crate::types::{DecisionKind, GateRecord, Timestamp};

/// What [`DecisionLog::dashboard`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DashboardQuery {
    /// The range's start (inclusive).
    pub from: Timestamp,
    /// The range's end (exclusive).
    pub to: Timestamp,
    /// Microseconds per time bucket (≥ 1); buckets start at multiples of it since the epoch.
    pub bucket_us: i64,
    /// The most decisions aggregated: the newest of the range (the bound on the work of a call).
    pub max_decisions: u32,
    /// How many of the newest decisions of the range to list one by one.
    pub recent: u32,
    /// How many of the newest policy versions and gate decisions to read.
    pub history: u32,
}

impl DashboardQuery {
    /// The newest `minutes` before `now`, in buckets of `bucket_seconds`, with the dashboard's
    /// bounds (100,000 decisions aggregated, 50 listed, 50 versions and gate decisions).
    pub fn last_minutes(now: Timestamp, minutes: i64, bucket_seconds: i64) -> Self {
        DashboardQuery {
            from: Timestamp(now.0.saturating_sub(minutes.saturating_mul(60_000_000))),
            to: Timestamp(now.0.saturating_add(1)),
            bucket_us: bucket_seconds.saturating_mul(1_000_000).max(1),
            max_decisions: 100_000,
            recent: 50,
            history: 50,
        }
    }

    /// The start of the bucket holding `t`.
    pub fn bucket_of(&self, t: Timestamp) -> Timestamp {
        let b = self.bucket_us.max(1);
        Timestamp(t.0.div_euclid(b) * b)
    }

    /// The start of every bucket that meets the range, oldest first.
    pub fn buckets(&self) -> Vec<Timestamp> {
        let b = self.bucket_us.max(1);
        let first = self.bucket_of(self.from).0;
        let last = self.bucket_of(Timestamp(self.to.0.saturating_sub(1))).0;
        let mut out = Vec::new();
        let mut t = first;
        while t <= last {
            out.push(Timestamp(t));
            t = t.saturating_add(b);
        }
        out
    }
}

/// The decisions of one bucket, agent and kind.
#[derive(Debug, Clone, PartialEq)]
pub struct DashboardGroup {
    /// The bucket's start.
    pub bucket: Timestamp,
    /// The agent chosen.
    pub agent: String,
    /// How it was chosen.
    pub kind: DecisionKind,
    /// Their counts and sums.
    pub tally: Tally,
}

/// One of the newest decisions.
#[derive(Debug, Clone, PartialEq)]
pub struct RecentDecision {
    /// Its id.
    pub id: Uuid,
    /// When it was taken.
    pub time: Timestamp,
    /// The agent chosen.
    pub agent: String,
    /// How.
    pub kind: DecisionKind,
    /// The logged propensity.
    pub propensity: f64,
    /// The policy version that decided.
    pub policy_version: i64,
    /// Its reward, when one arrived.
    pub reward: Option<f64>,
    /// The cost weight λ it was decided at (cost-aware policies).
    pub cost_weight: Option<f64>,
    /// The prompt, only when it was logged.
    pub text: Option<String>,
}

/// A published policy version, without its bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionMark {
    /// The version.
    pub version: i64,
    /// When it was published.
    pub published: Timestamp,
    /// Who published it.
    pub source: String,
    /// Its note.
    pub note: Option<String>,
}

/// What the dashboard shows, as read by [`DecisionLog::dashboard`].
#[derive(Debug, Clone, PartialEq)]
pub struct Dashboard {
    /// The query answered.
    pub query: DashboardQuery,
    /// The aggregated decisions by bucket, agent and kind (bucket, agent, kind ascending).
    pub groups: Vec<DashboardGroup>,
    /// Set when the range held more than [`DashboardQuery::max_decisions`] decisions: the
    /// aggregates cover only the decisions after this time (the newest ones).
    pub cut_at: Option<Timestamp>,
    /// The newest decisions of the range, newest first.
    pub recent: Vec<RecentDecision>,
    /// The newest policy versions, newest first.
    pub versions: Vec<VersionMark>,
    /// The newest gate decisions, newest first.
    pub gates: Vec<GateRecord>,
}

impl Dashboard {
    /// Everything aggregated.
    pub fn total(&self) -> Tally {
        let mut t = Tally::default();
        for g in &self.groups {
            t.add(&g.tally);
        }
        t
    }

    /// Per agent, by name.
    pub fn by_agent(&self) -> BTreeMap<String, Tally> {
        let mut m: BTreeMap<String, Tally> = BTreeMap::new();
        for g in &self.groups {
            m.entry(g.agent.clone()).or_default().add(&g.tally);
        }
        m
    }

    /// Per bucket: every bucket of the range (empty ones too), oldest first.
    pub fn by_bucket(&self) -> Vec<(Timestamp, Tally)> {
        let mut m: BTreeMap<Timestamp, Tally> =
            self.query.buckets().into_iter().map(|b| (b, Tally::default())).collect();
        for g in &self.groups {
            m.entry(g.bucket).or_default().add(&g.tally);
        }
        m.into_iter().collect()
    }

    /// Per bucket and agent: the decisions of each agent in each bucket of
    /// [`Dashboard::by_bucket`]'s order, agents by name.
    pub fn agent_series(&self) -> BTreeMap<String, Vec<i64>> {
        let buckets = self.query.buckets();
        let index: BTreeMap<Timestamp, usize> = buckets.iter().enumerate().map(|(i, b)| (*b, i)).collect();
        let mut m: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for g in &self.groups {
            let row = m.entry(g.agent.clone()).or_insert_with(|| vec![0; buckets.len()]);
            if let Some(slot) = index.get(&g.bucket).and_then(|&i| row.get_mut(i)) {
                *slot += g.tally.decisions;
            }
        }
        m
    }
}

/// How long [`DecisionLog::time_dashboard`]'s calls took.
#[derive(Debug, Clone, PartialEq)]
pub struct DashboardTiming {
    /// Calls made.
    pub runs: usize,
    /// Decisions aggregated by the last call.
    pub decisions: i64,
    /// Whether the bound cut the range.
    pub cut: bool,
    /// The median call.
    pub p50: Duration,
    /// The 95th percentile.
    pub p95: Duration,
    /// The slowest.
    pub max: Duration,
}

/// The rollup rows of whole buckets `[$1, $2)`.
const ROLLUP_SQL: &str = "SELECT bucket_us, agent, kind, decisions, rewarded, reward_sum, reward_sq_sum, \
     cost_weighted, cost_weight_sum, cost_weight_min, cost_weight_max, shadowed, shadow_agreed, \
     shadow_version FROM dashboard_rollup WHERE bucket_us >= $1 AND bucket_us < $2";

/// How [`DecisionLog::dashboard`] reads a range's aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Span {
    /// Whole rollup buckets `[lo, hi)`, if any, and a scan of each partial edge.
    Rollup { whole: Option<(i64, i64)>, edges: [Option<(i64, i64)>; 2] },
    /// One bounded scan of the range (a bucket that is not a multiple of [`ROLLUP_US`]).
    Scan,
}

/// How `q`'s range splits into whole rollup buckets and scanned edges.
fn rollup_span(q: &DashboardQuery) -> Span {
    let (from, to) = (q.from.0, q.to.0);
    if q.bucket_us % ROLLUP_US != 0 || from < 0 || to <= from {
        return Span::Scan;
    }
    // Whole buckets b with from <= b and b + ROLLUP_US <= to.
    let lo = (from / ROLLUP_US + i64::from(from % ROLLUP_US != 0)).saturating_mul(ROLLUP_US);
    let hi = (to / ROLLUP_US) * ROLLUP_US;
    if lo >= hi {
        return Span::Rollup { whole: None, edges: [Some((from, to)), None] };
    }
    Span::Rollup {
        whole: Some((lo, hi)),
        edges: [(from < lo).then_some((from, lo)), (hi < to).then_some((hi, to))],
    }
}

/// The aggregate of decisions by bucket, agent and kind, rewards joined, with `$filter` added to
/// its WHERE; its columns are named as the rollup's ([`ROLLUP_SQL`]), so one decoding reads both.
macro_rules! groups_sql {
    ($filter:literal) => {
        concat!(
            "SELECT (d.time_us / $1) * $1 AS bucket_us, d.agent AS agent, d.kind AS kind, \
             COUNT(*) AS decisions, COUNT(r.decision_id) AS rewarded, SUM(r.reward) AS reward_sum, \
             SUM(r.reward * r.reward) AS reward_sq_sum, COUNT(d.cost_weight) AS cost_weighted, \
             SUM(d.cost_weight) AS cost_weight_sum, MIN(d.cost_weight) AS cost_weight_min, \
             MAX(d.cost_weight) AS cost_weight_max, COUNT(d.shadow_action) AS shadowed, \
             COUNT(CASE WHEN d.shadow_action = d.action THEN 1 END) AS shadow_agreed, \
             MAX(d.shadow_version) AS shadow_version \
             FROM decisions d LEFT JOIN rewards r ON r.decision_id = d.id \
             WHERE d.time_us >= $2 AND d.time_us < $3",
            $filter,
            " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        )
    };
}

/// The aggregate of the decisions of `[$2, $3)` (a rollup's partial edge).
const GROUPS_SQL: &str = groups_sql!("");

/// The aggregate of the decisions of `[$2, $3)` after the cut `($4, $5)` = (time, id). Only the
/// bounded scan uses it: SQLite plans the OR as a second range, fast for a cut far into the
/// range, but 25x slower than [`GROUPS_SQL`] on a short edge (61 ms against 2.3 ms for 1,653
/// decisions of a 1M log).
const GROUPS_AFTER_CUT_SQL: &str = groups_sql!(" AND (d.time_us > $4 OR (d.time_us = $4 AND d.id > $5))");

/// The newest decision left out by the bound, if any: the `max_decisions`-th after the newest.
const CUT_SQL: &str = "SELECT time_us, id FROM decisions WHERE time_us >= $1 AND time_us < $2 \
     ORDER BY time_us DESC, id DESC LIMIT 1 OFFSET $3";

const RECENT_SQL: &str = "SELECT d.id AS id, d.time_us AS time_us, d.agent AS agent, d.kind AS kind, \
     d.propensity AS propensity, d.policy_version AS policy_version, d.text AS text, \
     d.cost_weight AS cost_weight, r.reward AS reward \
     FROM decisions d LEFT JOIN rewards r ON r.decision_id = d.id \
     WHERE d.time_us >= $1 AND d.time_us < $2 ORDER BY d.time_us DESC, d.id DESC LIMIT $3";

const VERSIONS_SQL: &str =
    "SELECT version, created_us, source, note FROM policy_versions ORDER BY version DESC LIMIT $1";

impl DecisionLog {
    /// The dashboard's data for `q`: the range's newest `q.max_decisions` decisions aggregated
    /// by bucket, agent and kind (one range query on the `(time_us, id)` index, rewards joined
    /// by decision id), its newest `q.recent` decisions, and the newest `q.history` policy
    /// versions and gate decisions.
    pub async fn dashboard(&self, q: &DashboardQuery) -> Result<Dashboard, LogError> {
        if q.bucket_us < 1 || q.to <= q.from {
            return Err(LogError::Corrupt(format!(
                "dashboard query with bucket {} µs over [{}, {})",
                q.bucket_us, q.from.0, q.to.0
            )));
        }
        let c = |e: sqlx::Error| LogError::Corrupt(e.to_string());
        // (bucket start, agent, kind) → tally, from the scans and the rollup.
        let mut merged: BTreeMap<(i64, String, &'static str), Tally> = BTreeMap::new();
        let mut add = |bucket: i64, agent: String, kind: DecisionKind, t: Tally| {
            merged.entry((bucket, agent, kind.as_str())).or_default().add(&t);
        };
        let span = rollup_span(q);
        on_pool!(self, p, Db, pg => {
            // The rows of a GROUPS query or of the rollup (the same columns), added to `merged`.
            macro_rules! scan {
                ($query:expr) => {{
                    let rows = $query
                        .fetch_all(p)
                        .await
                        .map_err(|e| self.err(e))?;
                    for row in &rows {
                        let kind = DecisionKind::from_str(&row.try_get::<String, _>("kind").map_err(c)?)?;
                        let sum = |name: &str| -> Result<f64, LogError> {
                            Ok(row.try_get::<Option<f64>, _>(name).map_err(c)?.unwrap_or(0.0))
                        };
                        let tally = Tally {
                            decisions: row.try_get("decisions").map_err(c)?,
                            rewarded: row.try_get("rewarded").map_err(c)?,
                            reward_sum: sum("reward_sum")?,
                            reward_sq_sum: sum("reward_sq_sum")?,
                            cost_weighted: row.try_get("cost_weighted").map_err(c)?,
                            cost_weight_sum: sum("cost_weight_sum")?,
                            cost_weight_min: row.try_get("cost_weight_min").map_err(c)?,
                            cost_weight_max: row.try_get("cost_weight_max").map_err(c)?,
                            shadowed: row.try_get("shadowed").map_err(c)?,
                            shadow_agreed: row.try_get("shadow_agreed").map_err(c)?,
                            shadow_version: row.try_get("shadow_version").map_err(c)?,
                            ..Tally::default()
                        }
                        .of_kind(kind);
                        let bucket = q.bucket_of(Timestamp(row.try_get("bucket_us").map_err(c)?)).0;
                        add(bucket, row.try_get("agent").map_err(c)?, kind, tally);
                    }
                }};
            }
            let mut cut_at = None;
            match span {
                Span::Rollup { whole, edges } => {
                    for (lo, hi) in edges.into_iter().flatten() {
                        scan!(sqlx::query(GROUPS_SQL).bind(q.bucket_us).bind(lo).bind(hi));
                    }
                    if let Some((lo, hi)) = whole {
                        scan!(sqlx::query(ROLLUP_SQL).bind(lo).bind(hi));
                    }
                }
                Span::Scan => {
                    let cut = sqlx::query(CUT_SQL)
                        .bind(q.from.0)
                        .bind(q.to.0)
                        .bind(i64::from(q.max_decisions))
                        .fetch_optional(p)
                        .await
                        .map_err(|e| self.err(e))?;
                    let cut: Option<(i64, Uuid)> = match cut {
                        Some(row) => Some((row.try_get("time_us").map_err(c)?, row.try_get("id").map_err(c)?)),
                        None => None,
                    };
                    cut_at = cut.map(|(t, _)| Timestamp(t));
                    match cut {
                        Some((cut_time, cut_id)) => scan!(
                            sqlx::query(GROUPS_AFTER_CUT_SQL)
                                .bind(q.bucket_us)
                                .bind(q.from.0)
                                .bind(q.to.0)
                                .bind(cut_time)
                                .bind(cut_id)
                        ),
                        None => scan!(sqlx::query(GROUPS_SQL).bind(q.bucket_us).bind(q.from.0).bind(q.to.0)),
                    }
                }
            }
            let mut groups = Vec::with_capacity(merged.len());
            for ((bucket, agent, kind), tally) in std::mem::take(&mut merged) {
                groups.push(DashboardGroup {
                    bucket: Timestamp(bucket),
                    agent,
                    kind: DecisionKind::from_str(kind)?,
                    tally,
                });
            }
            let rows = sqlx::query(RECENT_SQL)
                .bind(q.from.0)
                .bind(q.to.0)
                .bind(i64::from(q.recent))
                .fetch_all(p)
                .await
                .map_err(|e| self.err(e))?;
            let mut recent = Vec::with_capacity(rows.len());
            for row in &rows {
                recent.push(RecentDecision {
                    id: row.try_get("id").map_err(c)?,
                    time: Timestamp(row.try_get("time_us").map_err(c)?),
                    agent: row.try_get("agent").map_err(c)?,
                    kind: DecisionKind::from_str(&row.try_get::<String, _>("kind").map_err(c)?)?,
                    propensity: row.try_get("propensity").map_err(c)?,
                    policy_version: row.try_get("policy_version").map_err(c)?,
                    reward: row.try_get("reward").map_err(c)?,
                    cost_weight: row.try_get("cost_weight").map_err(c)?,
                    text: row.try_get("text").map_err(c)?,
                });
            }
            let rows = sqlx::query(VERSIONS_SQL)
                .bind(i64::from(q.history))
                .fetch_all(p)
                .await
                .map_err(|e| self.err(e))?;
            let mut versions = Vec::with_capacity(rows.len());
            for row in &rows {
                versions.push(VersionMark {
                    version: row.try_get("version").map_err(c)?,
                    published: Timestamp(row.try_get("created_us").map_err(c)?),
                    source: row.try_get("source").map_err(c)?,
                    note: row.try_get("note").map_err(c)?,
                });
            }
            let rows = sqlx::query(AssertSqlSafe(format!(
                "SELECT {GATE_COLUMNS} FROM gate_decisions ORDER BY id DESC LIMIT $1"
            )))
            .bind(i64::from(q.history))
            .fetch_all(p)
            .await
            .map_err(|e| self.err(e))?;
            let gates = rows.iter().map(|row| decode_gate!(row)).collect::<Result<Vec<_>, _>>()?;
            Ok(Dashboard {
                query: *q,
                groups,
                cut_at,
                recent,
                versions,
                gates,
            })
        })
    }

    /// Recomputes the dashboard's rollup from the decisions and rewards logged, in one
    /// transaction (what migration 7 did once; the write path keeps it since). For a log whose
    /// rollup is in doubt, e.g. rows changed by hand.
    pub async fn rebuild_dashboard_rollup(&self) -> Result<(), LogError> {
        on_pool!(self, p, Db, pg => {
            let mut tx = if pg { p.begin().await } else { p.begin_with("BEGIN IMMEDIATE").await }
                .map_err(|e| self.err(e))?;
            sqlx::query("DELETE FROM dashboard_rollup").execute(&mut *tx).await.map_err(|e| self.err(e))?;
            sqlx::query(crate::migrations::ROLLUP_BACKFILL)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
            tx.commit().await.map_err(|e| self.err(e))
        })
    }

    /// Times `runs` (at least 1) calls of [`DecisionLog::dashboard`] for `q`, one after the
    /// other: the benchmark of the dashboard's reads on a large log.
    pub async fn time_dashboard(&self, q: &DashboardQuery, runs: usize) -> Result<DashboardTiming, LogError> {
        let runs = runs.max(1);
        let mut took = Vec::with_capacity(runs);
        let mut last = None;
        for _ in 0..runs {
            let t0 = Instant::now();
            let d = self.dashboard(q).await?;
            took.push(t0.elapsed());
            last = Some(d);
        }
        took.sort();
        let at = |f: f64| took[((took.len() as f64 * f).ceil() as usize).clamp(1, took.len()) - 1];
        Ok(DashboardTiming {
            runs,
            decisions: last.as_ref().map_or(0, |d| d.total().decisions),
            cut: last.as_ref().is_some_and(|d| d.cut_at.is_some()),
            p50: at(0.5),
            p95: at(0.95),
            max: at(1.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Decision, GroupCommitter, PublishMeta, ShadowChoice};

    fn decision(t: i64, agent: &str, action: u32, kind: DecisionKind) -> Decision {
        Decision {
            id: Decision::new_id(),
            time: Timestamp(t),
            policy_version: 1,
            action,
            agent: agent.into(),
            probabilities: vec![0.5, 0.5],
            propensity: 0.5,
            kind,
            embedding: vec![0.0; 4],
            model_hash: "m".into(),
            text: None,
            replica: "r".into(),
            cost_weight: None,
            shadow: None,
            episode: None,
        }
    }

    #[test]
    fn buckets_cover_the_range() {
        let q = DashboardQuery { from: Timestamp(95), to: Timestamp(301), bucket_us: 100, ..last(0) };
        assert_eq!(q.buckets(), vec![Timestamp(0), Timestamp(100), Timestamp(200), Timestamp(300)]);
        assert_eq!(q.bucket_of(Timestamp(199)), Timestamp(100));
    }

    fn last(now: i64) -> DashboardQuery {
        DashboardQuery::last_minutes(Timestamp(now), 1, 1)
    }

    #[tokio::test]
    async fn aggregates_by_bucket_agent_and_kind_within_the_bound() {
        let dir = tempfile::tempdir().expect("tmp");
        let log =
            DecisionLog::open(&format!("sqlite:{}", dir.path().join("d.db").display())).await.expect("open");
        log.publish_policy(b"v1", &PublishMeta { source: "test".into(), ..Default::default() })
            .await
            .expect("publish");
        let base = 1_000_000_000_000i64;
        let mut ds = Vec::new();
        for i in 0..30i64 {
            let kind = if i % 3 == 0 { DecisionKind::Greedy } else { DecisionKind::Sampled };
            let (agent, action) = if i % 2 == 0 { ("a", 0) } else { ("b", 1) };
            let mut d = decision(base + i * 1_000_000, agent, action, kind);
            d.cost_weight = Some(0.25 * (i % 4) as f32);
            if i < 10 {
                d.shadow = Some(ShadowChoice { version: 2, action: 0, propensity: 0.5 });
            }
            ds.push(d);
        }
        let committer = GroupCommitter::new(log.clone(), Default::default());
        committer.log_decisions(&ds).await.expect("log");
        for (i, d) in ds.iter().enumerate().filter(|(i, _)| i % 5 == 0) {
            log.record_reward(d.id, i as f64 / 10.0).await.expect("reward");
        }
        let q = DashboardQuery {
            from: Timestamp(base),
            to: Timestamp(base + 30_000_000),
            bucket_us: 10_000_000,
            max_decisions: 1000,
            recent: 5,
            history: 10,
        };
        let dash = log.dashboard(&q).await.expect("dashboard");
        assert_eq!(dash.cut_at, None);
        let t = dash.total();
        assert_eq!((t.decisions, t.greedy, t.sampled, t.forced, t.rewarded), (30, 10, 20, 0, 6));
        let want: f64 = (0..30).step_by(5).map(|i| i as f64 / 10.0).sum();
        assert!((t.reward_sum - want).abs() < 1e-9);
        assert_eq!((t.shadowed, t.shadow_agreed, t.shadow_version), (10, 5, Some(2)));
        assert_eq!((t.cost_weighted, t.cost_weight_min, t.cost_weight_max), (30, Some(0.0), Some(0.75)));
        assert_eq!(dash.by_bucket().len(), 3);
        assert!(dash.by_bucket().iter().all(|(_, t)| t.decisions == 10));
        let agents = dash.agent_series();
        assert_eq!(agents["a"], vec![5, 5, 5]);
        assert_eq!(dash.by_agent()["b"].decisions, 15);
        assert_eq!(dash.recent.len(), 5);
        assert_eq!(dash.recent[0].id, ds[29].id);
        assert_eq!(dash.versions.len(), 1);
        assert!(dash.gates.is_empty());

        // From the rollup the bound does not apply: every decision is counted.
        let dash = log.dashboard(&DashboardQuery { max_decisions: 12, ..q }).await.expect("rollup");
        assert_eq!((dash.total().decisions, dash.cut_at), (30, None));
        // A bucket that is not a multiple of the rollup's is scanned: the bound keeps the
        // newest decisions and says where it cut.
        let five = DashboardQuery { max_decisions: 12, bucket_us: 5_000_000, ..q };
        let dash = log.dashboard(&five).await.expect("cut");
        assert_eq!(dash.total().decisions, 12);
        assert_eq!(dash.cut_at, Some(ds[17].time));
        assert_eq!(dash.by_bucket().len(), 6);
        let timing = log.time_dashboard(&q, 3).await.expect("timing");
        assert_eq!((timing.runs, timing.decisions, timing.cut), (3, 30, false));
        assert!(timing.p50 <= timing.p95 && timing.p95 <= timing.max);

        // The newest gate decision comes first, decoded whole.
        let gate = GateRecord {
            id: 0,
            time: Timestamp(base),
            published: false,
            candidate_version: None,
            current_version: Some(1),
            candidate_sha256: None,
            estimator: "dr".into(),
            margin: 0.01,
            n: 30,
            candidate_value: 0.2,
            candidate_ci: [0.1, 0.3],
            current_value: Some(0.4),
            current_ci: Some([0.35, 0.45]),
            reason: "worse".into(),
            meta: serde_json::json!({"candidate": {"dr": {"value": 0.2}}}),
        };
        log.record_gate_decision(&gate).await.expect("gate");
        log.record_gate_decision(&GateRecord { reason: "second".into(), ..gate.clone() })
            .await
            .expect("gate");
        let dash = log.dashboard(&q).await.expect("dashboard");
        assert_eq!(dash.gates.len(), 2);
        assert_eq!((dash.gates[0].id, dash.gates[0].reason.as_str()), (2, "second"));
        assert_eq!(dash.gates[1], GateRecord { id: 1, ..gate });
    }

    /// The dashboard over a log larger than its bound: a log of `MAPPO_DASHBOARD_BENCH_N`
    /// decisions (default 30,000 — the benchmark runs it with 1,000,000; 384-float embeddings,
    /// spread over the last hour, a third rewarded) in `MAPPO_DASHBOARD_BENCH_DB` (default a fresh
    /// SQLite file); the dashboards of the last hour and the last 5 minutes read from the rollup
    /// count every decision of their range, a scanned one (7-s buckets) is cut at its bound;
    /// prints p50/p95 of 20 calls each.
    /// The benchmark: `MAPPO_DASHBOARD_BENCH_N=1000000 cargo test -p mappo-log --release --lib
    /// dashboard_over_a_log -- --nocapture` (docs/results/dashboard.md).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dashboard_over_a_log_larger_than_its_bound() {
        let n: usize =
            std::env::var("MAPPO_DASHBOARD_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(30_000);
        let dir = tempfile::tempdir().expect("tmp");
        let url = std::env::var("MAPPO_DASHBOARD_BENCH_DB")
            .unwrap_or_else(|_| format!("sqlite:{}", dir.path().join("bench.db").display()));
        let opts = crate::OpenOptions { sqlite_full_sync: false, ..Default::default() };
        let log = DecisionLog::open_with(&url, opts).await.expect("open");
        let now = Timestamp::now();
        let agents = ["code", "math", "writing", "support"];
        let t0 = Instant::now();
        let step = 3_600_000_000 / n.max(1) as i64;
        for start in (0..n).step_by(1000) {
            let chunk: Vec<Decision> = (start..(start + 1000).min(n))
                .map(|i| {
                    let mut d = decision(
                        now.0 - 3_600_000_000 + i as i64 * step,
                        agents[i % 4],
                        (i % 4) as u32,
                        if i % 10 == 0 { DecisionKind::Greedy } else { DecisionKind::Sampled },
                    );
                    d.probabilities = vec![0.25; 4];
                    d.embedding = vec![0.01 * (i % 100) as f32; 384];
                    d
                })
                .collect();
            let refs: Vec<&Decision> = chunk.iter().collect();
            let rewards: Vec<crate::log::RewardWrite> = chunk
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 3 == 0)
                .map(|(i, d)| crate::log::RewardWrite { id: d.id, reward: (i % 2) as f64, time: d.time })
                .collect();
            log.write(&refs, &rewards, &[]).await.expect("write");
        }
        eprintln!("wrote {n} decisions in {:?} to {}", t0.elapsed(), log.db());
        // The last hour from the rollup (minute buckets), the last 5 minutes too, then the last
        // hour in 7-second buckets, which the rollup cannot serve: a scan cut at its bound.
        for (minutes, bucket_s) in [(60, 60), (5, 10), (60, 7)] {
            let mut q = DashboardQuery::last_minutes(Timestamp::now(), minutes, bucket_s);
            // The default bound on the benchmark's log; a tenth of the log in the test.
            if n < 1_000_000 {
                q.max_decisions = (n / 10) as u32;
            }
            let scanned = q.bucket_us % ROLLUP_US != 0;
            let t = log.time_dashboard(&q, 20).await.expect("timing");
            eprintln!(
                "last {minutes} min in {bucket_s}-s buckets ({}): {} decisions aggregated (cut: {}), \
                 p50 {:?}, p95 {:?}, max {:?}",
                if scanned { "scan" } else { "rollup" },
                t.decisions,
                t.cut,
                t.p50,
                t.p95,
                t.max
            );
            // Rows are `step` apart from an hour before `now`: those at or after the range's start.
            let base = now.0 - 3_600_000_000;
            let (ahead, step) = ((q.from.0 - base).max(0), step.max(1));
            let first = (ahead + step - 1) / step;
            let held = (n as i64 - first).max(0);
            let expect = if scanned { held.min(q.max_decisions as i64) } else { held };
            assert!((t.decisions - expect).abs() <= 2 + n as i64 / 1000, "{} vs {expect}", t.decisions);
            assert_eq!(t.cut, scanned && held > q.max_decisions as i64 + 2 + n as i64 / 1000);
        }
    }
}
