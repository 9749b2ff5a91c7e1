//! The records the log stores and returns.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::LogError;

/// A point in time: microseconds since the Unix epoch (UTC). Stored as a 64-bit integer in both
/// backends, so ordering and equality are exact and identical everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current wall-clock time (microsecond resolution).
    pub fn now() -> Self {
        let now = time::OffsetDateTime::now_utc();
        Timestamp((now.unix_timestamp_nanos() / 1_000) as i64)
    }

    /// Microseconds since the Unix epoch.
    pub fn as_micros(self) -> i64 {
        self.0
    }

    /// RFC 3339 in UTC, e.g. `2025-11-26T12:09:00.123456Z` (sub-second digits only as needed).
    pub fn to_rfc3339(self) -> String {
        let nanos = i128::from(self.0) * 1_000;
        match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
            Ok(t) => t
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| self.0.to_string()),
            // Out of the representable range (year > 9999): fall back to the raw number.
            Err(_) => self.0.to_string(),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// How the action of a decision was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecisionKind {
    /// Sampled from the logged probabilities: the only kind off-policy learning uses.
    Sampled,
    /// The argmax, logged with propensity 1 (not used for learning).
    Greedy,
    /// Chosen by the caller, not by the policy (e.g. an override); not used for learning.
    Forced,
}

impl DecisionKind {
    /// The value stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Sampled => "sampled",
            DecisionKind::Greedy => "greedy",
            DecisionKind::Forced => "forced",
        }
    }
}

impl fmt::Display for DecisionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DecisionKind {
    type Err = LogError;
    fn from_str(s: &str) -> Result<Self, LogError> {
        match s {
            "sampled" => Ok(DecisionKind::Sampled),
            "greedy" => Ok(DecisionKind::Greedy),
            "forced" => Ok(DecisionKind::Forced),
            other => Err(LogError::Corrupt(format!("unknown decision kind `{other}`"))),
        }
    }
}

/// One routing decision, as the service logs it before answering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Unique across replicas; [`Decision::new_id`] gives a time-ordered UUID v7.
    pub id: Uuid,
    /// When the decision was taken.
    pub time: Timestamp,
    /// The policy version that produced `probabilities`.
    pub policy_version: i64,
    /// Index of the chosen agent in `probabilities`.
    pub action: u32,
    /// Name of the chosen agent.
    pub agent: String,
    /// The probability of every agent (after the exploration floor), in agent order.
    pub probabilities: Vec<f32>,
    /// The probability the chosen action was taken with (`probabilities[action]` when sampled, 1
    /// when greedy).
    pub propensity: f32,
    /// Sampled, greedy or forced.
    pub kind: DecisionKind,
    /// The context embedding (e.g. 384 floats), stored bit-exact as f32 little-endian.
    pub embedding: Vec<f32>,
    /// Identifies the embedding model (e.g. the sha256 of its weights).
    pub model_hash: String,
    /// The prompt, only when the service logs texts (`serve.log_text`).
    pub text: Option<String>,
    /// Which replica took the decision.
    pub replica: String,
    /// The cost weight λ the policy decided at (cost-aware policies only; `None` otherwise).
    #[serde(default)]
    pub cost_weight: Option<f32>,
    /// What a shadow candidate (`serve.shadow`) would have chosen, when one ran.
    #[serde(default)]
    pub shadow: Option<ShadowChoice>,
    /// The episode this decision is a step of (a conversation turn, a cascade or pipeline
    /// stage); `None` for a one-step decision.
    #[serde(default)]
    pub episode: Option<EpisodeStep>,
}

/// Where a decision sits in its episode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpisodeStep {
    /// The client's episode (conversation) id: 1 to [`EpisodeStep::MAX_ID_BYTES`] bytes.
    pub id: String,
    /// 0-based; the log refuses a second decision for the same step of an episode.
    pub step: u32,
    /// The stage decided (`route` for a one-stage policy, a cascade's `first`/`escalation`, a
    /// pipeline's stage name).
    pub stage: String,
}

impl EpisodeStep {
    /// The longest episode id accepted, in bytes.
    pub const MAX_ID_BYTES: usize = 128;

    /// Checks the id: not empty, at most [`EpisodeStep::MAX_ID_BYTES`] bytes, no control
    /// characters.
    pub fn check_id(id: &str) -> Result<(), String> {
        if id.is_empty() {
            return Err("an episode id may not be empty".into());
        }
        if id.len() > Self::MAX_ID_BYTES {
            return Err(format!(
                "an episode id has at most {} bytes, this one {}",
                Self::MAX_ID_BYTES,
                id.len()
            ));
        }
        if id.chars().any(char::is_control) {
            return Err("an episode id may not hold control characters".into());
        }
        Ok(())
    }
}

/// An episode's end (table `episode_ends`): when it was ended and the reward for the episode as a
/// whole, if one was given.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpisodeEnd {
    /// The episode's reward (`None`: ended without one; its steps' own rewards stand).
    pub reward: Option<f64>,
    /// When it was ended.
    pub time: Timestamp,
}

/// One episode as the log knows it: its steps so far and whether it has ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpisodeState {
    /// The episode id.
    pub id: String,
    /// Its decisions' (step, action, stage), in step order.
    pub steps: Vec<(u32, u32, String)>,
    /// Its end, once ended.
    pub end: Option<EpisodeEnd>,
}

/// What a shadow candidate would have chosen for a decision, and with what probability; the
/// service logs it without acting on it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ShadowChoice {
    /// The candidate's policy version.
    pub version: i64,
    /// The agent it would have chosen (sampled from its own floored probabilities, or its argmax
    /// for a greedy request).
    pub action: u32,
    /// The probability it would have chosen `action` with (1 for a greedy request).
    pub propensity: f32,
}

impl Decision {
    /// A fresh decision id: a UUID v7 (time-ordered, random in its low bits, unique across
    /// replicas).
    pub fn new_id() -> Uuid {
        Uuid::now_v7()
    }

    /// Checks what the database cannot: finite numbers, an action inside the probabilities.
    pub fn validate(&self) -> Result<(), LogError> {
        let bad = |reason: String| LogError::InvalidDecision { id: self.id, reason };
        if self.probabilities.is_empty() {
            return Err(bad("no probabilities".into()));
        }
        if self.action as usize >= self.probabilities.len() {
            return Err(bad(format!(
                "action {} out of range for {} probabilities",
                self.action,
                self.probabilities.len()
            )));
        }
        if self.probabilities.iter().any(|p| !p.is_finite() || *p < 0.0) {
            return Err(bad("a probability is negative or not finite".into()));
        }
        if !self.propensity.is_finite() || self.propensity <= 0.0 || self.propensity > 1.0 {
            return Err(bad(format!("propensity {} is not in (0, 1]", self.propensity)));
        }
        if self.embedding.iter().any(|x| !x.is_finite()) {
            return Err(bad("the embedding has a non-finite value".into()));
        }
        if self.cost_weight.is_some_and(|w| !w.is_finite()) {
            return Err(bad("the cost weight is not finite".into()));
        }
        if let Some(e) = &self.episode {
            EpisodeStep::check_id(&e.id).map_err(bad)?;
        }
        if let Some(s) = self.shadow
            && (s.action as usize >= self.probabilities.len()
                || !s.propensity.is_finite()
                || s.propensity <= 0.0
                || s.propensity > 1.0)
        {
            return Err(bad(format!("shadow choice {s:?} out of range")));
        }
        Ok(())
    }
}

/// Encodes floats as f32 little-endian bytes (the blob format of `embedding` and
/// `probabilities`).
pub fn f32s_to_bytes(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Decodes f32 little-endian bytes; the length must be a multiple of 4.
pub fn bytes_to_f32s(b: &[u8]) -> Result<Vec<f32>, LogError> {
    if !b.len().is_multiple_of(4) {
        return Err(LogError::Corrupt(format!("a float blob of {} bytes is not a multiple of 4", b.len())));
    }
    Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// A reward joined to its decision.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reward {
    /// The reward value.
    pub reward: f64,
    /// When it was recorded.
    pub time: Timestamp,
}

/// A decision with its reward, if one has arrived: what the learner reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinedEvent {
    /// The logged decision.
    pub decision: Decision,
    /// Its reward, `None` when none has arrived (yet).
    pub reward: Option<Reward>,
    /// For a step of an episode that has ended: the end (with the episode's reward, if any).
    #[serde(default)]
    pub episode_end: Option<EpisodeEnd>,
    /// For a step of an episode: the episode's highest logged step so far.
    #[serde(default)]
    pub episode_last_step: Option<u32>,
}

impl JoinedEvent {
    /// True for the last logged step of an episode that has ended (where its end, and its
    /// reward, belong).
    pub fn is_episode_end(&self) -> bool {
        match (&self.decision.episode, self.episode_end, self.episode_last_step) {
            (Some(e), Some(_), Some(last)) => e.step == last,
            _ => false,
        }
    }

    /// The position of this event in the stable order of [`crate::DecisionLog::joined_events`].
    pub fn watermark(&self) -> Watermark {
        Watermark { time: self.decision.time, id: self.decision.id }
    }
}

/// A position in the stable order of decisions: `(time, id)`, ascending. Events strictly after a
/// watermark are those with a greater `(time, id)` pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Watermark {
    /// Decision time.
    pub time: Timestamp,
    /// Decision id (breaks ties between equal times; compared bytewise, as both databases do).
    pub id: Uuid,
}

/// Which events [`crate::DecisionLog::joined_events`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventQuery {
    /// Only events strictly after this position (`None`: from the start).
    pub after: Option<Watermark>,
    /// Only decisions taken strictly before this time (`None`: no bound). A learner that waits
    /// `reward_wait_s` for rewards passes `now - reward_wait_s`, so it never consumes a decision
    /// whose reward may still come, nor one a replica has not committed yet.
    pub before: Option<Timestamp>,
    /// At most this many events (the page size).
    pub limit: u32,
}

/// A policy version without its checkpoint bytes (what `mappo policy list` shows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyInfo {
    /// The version: 1, 2, 3, … in publication order.
    pub version: i64,
    /// When it was published.
    pub created: Timestamp,
    /// sha256 of the checkpoint bytes (lowercase hex).
    pub sha256: String,
    /// Who published it (`"mappo policy publish"`, `"mappo serve --config"`, `"mappo learn"`, …).
    pub source: String,
    /// Free text.
    pub note: Option<String>,
    /// Free-form JSON, e.g. the promotion gate's estimates.
    pub meta: serde_json::Value,
    /// Size of the checkpoint in bytes.
    pub size: i64,
}

/// A policy version with its checkpoint (the contents of the safetensors file).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Everything but the bytes.
    pub info: PolicyInfo,
    /// The checkpoint file's contents.
    pub checkpoint: Vec<u8>,
}

/// What [`crate::DecisionLog::publish_policy`] records beside the bytes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PublishMeta {
    /// Who publishes.
    pub source: String,
    /// Free text.
    pub note: Option<String>,
    /// Free-form JSON (`Value::Null` is stored as `{}`).
    pub meta: serde_json::Value,
}

/// The outcome of [`crate::DecisionLog::publish_policy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The version of these bytes.
    pub version: i64,
    /// `false` when the same bytes (same sha256) were already published: `version` is that one.
    pub created: bool,
}

/// Per-agent figures in [`Stats`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStats {
    /// The agent's name.
    pub agent: String,
    /// Decisions that chose it.
    pub decisions: i64,
    /// Of those, how many have a reward.
    pub rewarded: i64,
    /// Mean reward over those (`None` when none).
    pub reward_mean: Option<f64>,
}

/// Counts over the whole log (`mappo log stats`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// All decisions.
    pub decisions: i64,
    /// Decisions by kind: sampled, greedy, forced.
    pub sampled: i64,
    /// Greedy decisions.
    pub greedy: i64,
    /// Forced decisions.
    pub forced: i64,
    /// Rewards (each joined to exactly one decision).
    pub rewards: i64,
    /// `rewards / decisions` (0 when there are no decisions).
    pub join_rate: f64,
    /// Mean of all rewards.
    pub reward_mean: Option<f64>,
    /// Published policy versions.
    pub policy_versions: i64,
    /// The newest version.
    pub latest_policy_version: Option<i64>,
    /// First and last decision times.
    pub first_decision: Option<Timestamp>,
    /// Last decision time.
    pub last_decision: Option<Timestamp>,
    /// Per agent, by name.
    pub agents: Vec<AgentStats>,
    /// Episodes (distinct episode ids among the decisions).
    #[serde(default)]
    pub episodes: i64,
    /// Of those, episodes ended.
    #[serde(default)]
    pub episodes_ended: i64,
    /// Mean of the episode rewards given at the end (`None` when none).
    #[serde(default)]
    pub episode_reward_mean: Option<f64>,
}

/// Options of [`crate::DecisionLog::export_jsonl`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExportOptions {
    /// Also write `"embedding"` (an array of floats) on each line, for tools that do not embed.
    pub embeddings: bool,
}

/// One line of `mappo log export`, in this field order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportLine {
    /// The decision id.
    pub decision_id: Uuid,
    /// RFC 3339, UTC.
    pub time: String,
    /// The policy version that decided.
    pub policy_version: i64,
    /// Index of the chosen agent.
    pub action: u32,
    /// Name of the chosen agent.
    pub agent: String,
    /// Every agent's probability.
    pub probabilities: Vec<f32>,
    /// The chosen action's logged probability.
    pub propensity: f32,
    /// The reward, `null` when none.
    pub reward: Option<f64>,
    /// The prompt, present only when it was logged.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub text: Option<String>,
    /// `sampled`, `greedy` or `forced`.
    pub kind: DecisionKind,
    /// The replica (`mappo serve` process) that decided.
    #[serde(default)]
    pub replica: String,
    /// The cost weight λ the policy decided at (cost-aware policies only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cost_weight: Option<f32>,
    /// What the shadow candidate would have chosen, when one ran.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub shadow: Option<ShadowChoice>,
    /// The embedding, only with [`ExportOptions::embeddings`].
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub embedding: Option<Vec<f32>>,
    /// The episode of a step (absent for a one-step decision).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub episode_id: Option<String>,
    /// The step within the episode (0-based).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub step: Option<u32>,
    /// The stage decided.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stage: Option<String>,
    /// `true` on the last logged step of an episode that has ended.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub episode_end: Option<bool>,
    /// The episode's reward, on its last row (when the end carried one).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub episode_reward: Option<f64>,
}

impl ExportLine {
    /// The line for one joined event.
    pub fn new(e: &JoinedEvent, opts: ExportOptions) -> Self {
        let d = &e.decision;
        ExportLine {
            decision_id: d.id,
            time: d.time.to_rfc3339(),
            policy_version: d.policy_version,
            action: d.action,
            agent: d.agent.clone(),
            probabilities: d.probabilities.clone(),
            propensity: d.propensity,
            reward: e.reward.map(|r| r.reward),
            text: d.text.clone(),
            kind: d.kind,
            replica: d.replica.clone(),
            cost_weight: d.cost_weight,
            shadow: d.shadow,
            embedding: opts.embeddings.then(|| d.embedding.clone()),
            episode_id: d.episode.as_ref().map(|e| e.id.clone()),
            step: d.episode.as_ref().map(|e| e.step),
            stage: d.episode.as_ref().map(|e| e.stage.clone()),
            episode_end: e.is_episode_end().then_some(true),
            episode_reward: e.is_episode_end().then(|| e.episode_end.and_then(|x| x.reward)).flatten(),
        }
    }
}

/// One decision of the promotion gate (table `gate_decisions`): whether a candidate policy was
/// published, and the off-policy estimates it was judged on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateRecord {
    /// Assigned by the log (1, 2, 3, …); ignored by [`crate::DecisionLog::record_gate_decision`].
    pub id: i64,
    /// When the gate decided.
    pub time: Timestamp,
    /// Whether the candidate was published.
    pub published: bool,
    /// The version the candidate became, when published.
    pub candidate_version: Option<i64>,
    /// The version it was compared with (`None`: nothing was published yet).
    pub current_version: Option<i64>,
    /// sha256 of the candidate's checkpoint bytes, when known.
    pub candidate_sha256: Option<String>,
    /// The estimator compared: `dr` or `snips`.
    pub estimator: String,
    /// `learn.gate_margin`.
    pub margin: f64,
    /// Events evaluated.
    pub n: i64,
    /// The candidate's estimate.
    pub candidate_value: f64,
    /// Its 95% interval.
    pub candidate_ci: [f64; 2],
    /// The current version's estimate (`None` without a current version).
    pub current_value: Option<f64>,
    /// Its 95% interval.
    pub current_ci: Option<[f64; 2]>,
    /// One line: why.
    pub reason: String,
    /// Free-form JSON, e.g. every estimate of both policies (`Value::Null` is stored as `{}`).
    pub meta: serde_json::Value,
}

/// A learner's durable state (table `learner_state`, one row per learner name): how far it has
/// read the log and everything it needs to continue exactly where it stopped. Written in one
/// transaction with each update ([`crate::DecisionLog::save_learner_state`]), so a learner killed
/// at any moment resumes neither skipping nor repeating an event.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnerState {
    /// The learner's name (one row each; `mappo learn` uses `"default"`).
    pub name: String,
    /// Every event up to and including this position is consumed; `None`: nothing yet.
    pub watermark: Option<Watermark>,
    /// Updates done.
    pub updates: i64,
    /// Events consumed (learned from or skipped).
    pub events: i64,
    /// Of those, events learned from.
    pub learned: i64,
    /// The newest policy version the learner knows of (its own last publication, or the version
    /// it started from); a newer one published by someone else is adopted.
    pub base_version: Option<i64>,
    /// The trainer's whole state: a checkpoint's bytes (weights, optimizer moments, RNG).
    pub checkpoint: Vec<u8>,
    /// Free-form JSON (e.g. the last update's metrics).
    pub meta: serde_json::Value,
    /// When it was written (set by the log on save).
    pub updated: Timestamp,
}
