//! Versioned schema migrations, applied in order at open and recorded in `schema_migrations`.
//!
//! Both backends get the same tables, columns and meaning; only the column types differ
//! (`BLOB`/`BYTEA`, `UUID`, `JSONB`). To change the schema, append a migration to **both** lists
//! with the next version number; never edit one that has shipped.
//!
//! - 1: `decisions`, `rewards`, `policy_versions`.
//! - 2: `gate_decisions` (every promotion-gate decision, published or not, with both estimates)
//!   and the nullable shadow columns of `decisions` (`shadow_version`, `shadow_action`,
//!   `shadow_propensity`: what a shadow candidate would have chosen; NULL when none ran).
//! - 3: `learner_state` (one row per learner: watermark, counters, the trainer's checkpoint).
//! - 4: `decisions.cost_weight` (nullable): the cost weight λ a cost-aware policy decided at.
//! - 5: episodes: `decisions.episode_id`, `step`, `stage` (nullable; NULL for a one-step
//!   decision) with a unique index on `(episode_id, step)` (one decision per step, whichever
//!   replica takes it), and `episode_ends` (one row per ended episode, with its reward if any).
//! - 6: `decisions_dashboard`, an index covering the dashboard's range aggregate.
//! - 7: `dashboard_rollup`: the decisions' counts and sums per 10-second bucket, agent and kind
//!   (what `GET /ui` reads for any range in time proportional to its buckets), kept by every write
//!   transaction (`log.rs`'s write, with `tally.rs`) and filled here from the rows already logged.

/// One schema step.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Applied in increasing order; recorded in `schema_migrations.version`.
    pub version: i64,
    /// Short name, recorded beside the version.
    pub name: &'static str,
    /// The statements (several, separated by `;`).
    pub sql: &'static str,
}

/// The bookkeeping table itself (created before any migration).
pub const SCHEMA_MIGRATIONS: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    applied_us BIGINT NOT NULL
)";

/// SQLite's migrations.
pub const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "decisions, rewards, policy_versions",
        sql: "
CREATE TABLE policy_versions (
    version BIGINT PRIMARY KEY,
    created_us BIGINT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    checkpoint BLOB NOT NULL,
    source TEXT NOT NULL,
    note TEXT,
    meta TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE decisions (
    id BLOB PRIMARY KEY,
    time_us BIGINT NOT NULL,
    policy_version BIGINT NOT NULL,
    action BIGINT NOT NULL,
    agent TEXT NOT NULL,
    probabilities BLOB NOT NULL,
    propensity DOUBLE PRECISION NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('sampled', 'greedy', 'forced')),
    embedding BLOB NOT NULL,
    model_hash TEXT NOT NULL,
    text TEXT,
    replica TEXT NOT NULL
);
CREATE INDEX decisions_time_id ON decisions (time_us, id);
CREATE TABLE rewards (
    decision_id BLOB PRIMARY KEY REFERENCES decisions (id),
    reward DOUBLE PRECISION NOT NULL,
    time_us BIGINT NOT NULL
);
",
    },
    Migration {
        version: 2,
        name: "gate_decisions, shadow columns",
        sql: "
CREATE TABLE gate_decisions (
    id BIGINT PRIMARY KEY,
    time_us BIGINT NOT NULL,
    published BOOLEAN NOT NULL,
    candidate_version BIGINT,
    current_version BIGINT,
    candidate_sha256 TEXT,
    estimator TEXT NOT NULL,
    margin DOUBLE PRECISION NOT NULL,
    n BIGINT NOT NULL,
    candidate_value DOUBLE PRECISION NOT NULL,
    candidate_low DOUBLE PRECISION NOT NULL,
    candidate_high DOUBLE PRECISION NOT NULL,
    current_value DOUBLE PRECISION,
    current_low DOUBLE PRECISION,
    current_high DOUBLE PRECISION,
    reason TEXT NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}'
);
ALTER TABLE decisions ADD COLUMN shadow_version BIGINT;
ALTER TABLE decisions ADD COLUMN shadow_action BIGINT;
ALTER TABLE decisions ADD COLUMN shadow_propensity DOUBLE PRECISION;
",
    },
    Migration {
        version: 3,
        name: "learner_state",
        sql: "
CREATE TABLE learner_state (
    name TEXT PRIMARY KEY,
    updated_us BIGINT NOT NULL,
    watermark_time_us BIGINT,
    watermark_id BLOB,
    updates BIGINT NOT NULL,
    events BIGINT NOT NULL,
    learned BIGINT NOT NULL,
    base_version BIGINT,
    checkpoint BLOB NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}'
);
",
    },
    Migration {
        version: 4,
        name: "decisions.cost_weight",
        sql: "
ALTER TABLE decisions ADD COLUMN cost_weight DOUBLE PRECISION;
",
    },
    Migration {
        version: 5,
        name: "episodes",
        sql: "
ALTER TABLE decisions ADD COLUMN episode_id TEXT;
ALTER TABLE decisions ADD COLUMN step BIGINT;
ALTER TABLE decisions ADD COLUMN stage TEXT;
CREATE UNIQUE INDEX decisions_episode_step ON decisions (episode_id, step);
CREATE TABLE episode_ends (
    episode_id TEXT PRIMARY KEY,
    reward DOUBLE PRECISION,
    time_us BIGINT NOT NULL
);
",
    },
    Migration {
        version: 6,
        name: "dashboard index",
        // Covers the dashboard's aggregate over a time range (mappo-log's dashboard.rs): the
        // query reads the index, never the wide rows with their embeddings.
        sql: "
CREATE INDEX decisions_dashboard ON decisions
    (time_us, agent, kind, action, cost_weight, shadow_version, shadow_action, id);
",
    },
    Migration { version: 7, name: "dashboard rollup", sql: ROLLUP_SQL },
];

/// PostgreSQL's migrations.
pub const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "decisions, rewards, policy_versions",
        sql: "
CREATE TABLE policy_versions (
    version BIGINT PRIMARY KEY,
    created_us BIGINT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    checkpoint BYTEA NOT NULL,
    source TEXT NOT NULL,
    note TEXT,
    meta JSONB NOT NULL DEFAULT '{}'
);
CREATE TABLE decisions (
    id UUID PRIMARY KEY,
    time_us BIGINT NOT NULL,
    policy_version BIGINT NOT NULL,
    action BIGINT NOT NULL,
    agent TEXT NOT NULL,
    probabilities BYTEA NOT NULL,
    propensity DOUBLE PRECISION NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('sampled', 'greedy', 'forced')),
    embedding BYTEA NOT NULL,
    model_hash TEXT NOT NULL,
    text TEXT,
    replica TEXT NOT NULL
);
CREATE INDEX decisions_time_id ON decisions (time_us, id);
CREATE TABLE rewards (
    decision_id UUID PRIMARY KEY REFERENCES decisions (id),
    reward DOUBLE PRECISION NOT NULL,
    time_us BIGINT NOT NULL
);
",
    },
    Migration {
        version: 2,
        name: "gate_decisions, shadow columns",
        sql: "
CREATE TABLE gate_decisions (
    id BIGINT PRIMARY KEY,
    time_us BIGINT NOT NULL,
    published BOOLEAN NOT NULL,
    candidate_version BIGINT,
    current_version BIGINT,
    candidate_sha256 TEXT,
    estimator TEXT NOT NULL,
    margin DOUBLE PRECISION NOT NULL,
    n BIGINT NOT NULL,
    candidate_value DOUBLE PRECISION NOT NULL,
    candidate_low DOUBLE PRECISION NOT NULL,
    candidate_high DOUBLE PRECISION NOT NULL,
    current_value DOUBLE PRECISION,
    current_low DOUBLE PRECISION,
    current_high DOUBLE PRECISION,
    reason TEXT NOT NULL,
    meta JSONB NOT NULL DEFAULT '{}'
);
ALTER TABLE decisions ADD COLUMN shadow_version BIGINT;
ALTER TABLE decisions ADD COLUMN shadow_action BIGINT;
ALTER TABLE decisions ADD COLUMN shadow_propensity DOUBLE PRECISION;
",
    },
    Migration {
        version: 3,
        name: "learner_state",
        sql: "
CREATE TABLE learner_state (
    name TEXT PRIMARY KEY,
    updated_us BIGINT NOT NULL,
    watermark_time_us BIGINT,
    watermark_id UUID,
    updates BIGINT NOT NULL,
    events BIGINT NOT NULL,
    learned BIGINT NOT NULL,
    base_version BIGINT,
    checkpoint BYTEA NOT NULL,
    meta JSONB NOT NULL DEFAULT '{}'
);
",
    },
    Migration {
        version: 4,
        name: "decisions.cost_weight",
        sql: "
ALTER TABLE decisions ADD COLUMN cost_weight DOUBLE PRECISION;
",
    },
    Migration {
        version: 5,
        name: "episodes",
        sql: "
ALTER TABLE decisions ADD COLUMN episode_id TEXT;
ALTER TABLE decisions ADD COLUMN step BIGINT;
ALTER TABLE decisions ADD COLUMN stage TEXT;
CREATE UNIQUE INDEX decisions_episode_step ON decisions (episode_id, step);
CREATE TABLE episode_ends (
    episode_id TEXT PRIMARY KEY,
    reward DOUBLE PRECISION,
    time_us BIGINT NOT NULL
);
",
    },
    Migration {
        version: 6,
        name: "dashboard index",
        // Covers the dashboard's aggregate over a time range (mappo-log's dashboard.rs): the
        // query reads the index, never the wide rows with their embeddings.
        sql: "
CREATE INDEX decisions_dashboard ON decisions
    (time_us, agent, kind, action, cost_weight, shadow_version, shadow_action, id);
",
    },
    Migration { version: 7, name: "dashboard rollup", sql: ROLLUP_SQL },
];

/// The rollup's rows computed from every decision (and reward) logged, in buckets of
/// [`crate::ROLLUP_US`] (10 s: the `10000000` below). Integer division truncates on both
/// backends, as the writers' buckets do for the times a log holds (after 1970). Migration 7
/// runs it once; `DecisionLog::rebuild_dashboard_rollup` runs it again.
macro_rules! rollup_backfill {
    () => {
        "INSERT INTO dashboard_rollup
SELECT (d.time_us / 10000000) * 10000000, d.agent, d.kind, COUNT(*), COUNT(r.decision_id),
    COALESCE(SUM(r.reward), 0), COALESCE(SUM(r.reward * r.reward), 0),
    COUNT(d.cost_weight), COALESCE(SUM(d.cost_weight), 0), MIN(d.cost_weight), MAX(d.cost_weight),
    COUNT(d.shadow_action), COUNT(CASE WHEN d.shadow_action = d.action THEN 1 END), MAX(d.shadow_version)
FROM decisions d LEFT JOIN rewards r ON r.decision_id = d.id
GROUP BY 1, 2, 3"
    };
}

/// See [`rollup_backfill!`].
pub const ROLLUP_BACKFILL: &str = rollup_backfill!();

/// Migration 7, the same on both backends: the rollup table, then the rows of every decision
/// (and reward) already logged.
const ROLLUP_SQL: &str = concat!(
    "
CREATE TABLE dashboard_rollup (
    bucket_us BIGINT NOT NULL,
    agent TEXT NOT NULL,
    kind TEXT NOT NULL,
    decisions BIGINT NOT NULL,
    rewarded BIGINT NOT NULL,
    reward_sum DOUBLE PRECISION NOT NULL,
    reward_sq_sum DOUBLE PRECISION NOT NULL,
    cost_weighted BIGINT NOT NULL,
    cost_weight_sum DOUBLE PRECISION NOT NULL,
    cost_weight_min DOUBLE PRECISION,
    cost_weight_max DOUBLE PRECISION,
    shadowed BIGINT NOT NULL,
    shadow_agreed BIGINT NOT NULL,
    shadow_version BIGINT,
    PRIMARY KEY (bucket_us, agent, kind)
);
",
    rollup_backfill!(),
    ";\n"
);
