//! mappo's decision log: every routing decision with the probability it was taken with, the
//! rewards that arrive later, and the published policy versions — in SQLite (embedded, WAL,
//! the default) or PostgreSQL (many replicas, one learner).
//!
//! ```no_run
//! # async fn demo() -> Result<(), mappo_log::LogError> {
//! use mappo_log::{Decision, DecisionKind, DecisionLog, GroupCommitter, Timestamp};
//! let log = DecisionLog::open("sqlite:runs/serve/mappo.db").await?;
//! let committer = GroupCommitter::new(log.clone(), Default::default());
//! let d = Decision {
//!     id: Decision::new_id(),
//!     time: Timestamp::now(),
//!     policy_version: 1,
//!     action: 0,
//!     agent: "billing".into(),
//!     probabilities: vec![0.7, 0.3],
//!     propensity: 0.7,
//!     kind: DecisionKind::Sampled,
//!     embedding: vec![0.0; 384],
//!     model_hash: "sha256-of-the-model".into(),
//!     text: None,
//!     replica: "replica-1".into(),
//!     cost_weight: None,
//!     shadow: None,
//!     episode: None,
//! };
//! committer.log_decisions(std::slice::from_ref(&d)).await?; // committed when it returns
//! committer.record_reward(d.id, 1.0).await?;
//! # Ok(()) }
//! ```
//!
//! The schema (both backends, see [`migrations`]): `decisions`, `rewards` (one per decision),
//! `policy_versions`, `gate_decisions` (the promotion gate's decisions), `learner_state`, `schema_migrations`. Times are microseconds since the Unix epoch
//! (`time_us`); embeddings and probabilities are f32 little-endian blobs.

mod dashboard;
mod error;
mod group;
mod log;
pub mod migrations;
mod tally;
mod types;
mod url;

pub use dashboard::{
    Dashboard, DashboardGroup, DashboardQuery, DashboardTiming, RecentDecision, VersionMark,
};
pub use error::LogError;
pub use group::{CommitCounters, GroupCommitOptions, GroupCommitter};
pub use log::{DecisionLog, OpenOptions};
pub use tally::{MeanCi, ROLLUP_US, Tally, mean_ci, share};
pub use types::{
    AgentStats, Decision, DecisionKind, EpisodeEnd, EpisodeState, EpisodeStep, EventQuery, ExportLine,
    ExportOptions, GateRecord, JoinedEvent, LearnerState, Policy, PolicyInfo, PublishMeta, Published, Reward,
    ShadowChoice, Stats, Timestamp, Watermark, bytes_to_f32s, f32s_to_bytes,
};
pub use url::{DbUrl, redact};
