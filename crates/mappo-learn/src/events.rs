//! [`LoggedEvent`]: one logged decision with its reward, as the learner and off-policy
//! evaluation read it — from the decision log ([`mappo_log::JoinedEvent`]) or from an exported
//! log (`mappo log export`, JSON lines, [`read_export_jsonl`]).

use std::io::BufRead;
use std::path::Path;

use mappo_env::{ObservationSpec, RowExtras};
use mappo_log::{DecisionKind, JoinedEvent, Timestamp, Watermark};
use serde::Deserialize;

use crate::LearnError;

/// One logged decision and its reward.
///
/// From the database every field is present (`text` only when the service logged texts). From an
/// exported or foreign JSON-lines log, only `action` is required; a row is *usable* for learning
/// or evaluation when it has a reward, a propensity (or `probabilities` to read it from), and an
/// embedding or a text to embed.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedEvent {
    /// The decision id as the log gives it: mappo's UUID, or a foreign log's own id (`"ev-0"`,
    /// Vowpal Wabbit's `EventId`, a number), kept as given (`None` in a log without one).
    pub decision_id: Option<String>,
    /// The policy version that decided, as the log gives it (mappo's integer, or a foreign
    /// log's string such as `"v2"`; `None` when unknown).
    pub policy_version: Option<String>,
    /// Index of the chosen agent.
    pub action: usize,
    /// Name of the chosen agent, when known.
    pub agent: Option<String>,
    /// Every agent's logged probability, in agent order (empty when the log has none).
    pub probabilities: Vec<f32>,
    /// The probability the chosen action was taken with, μ(a|x) (`None` when the log has none:
    /// see [`LoggedEvent::logged_propensity`]).
    pub propensity: Option<f64>,
    /// The reward, `None` when none arrived.
    pub reward: Option<f64>,
    /// How the action was chosen. Only [`DecisionKind::Sampled`] events are learned from or
    /// evaluated on (greedy ones have propensity 1 and carry no exploration; forced ones were
    /// not chosen by the policy). A foreign log without `kind` counts as sampled.
    pub kind: DecisionKind,
    /// The context embedding (e.g. 384 floats), when logged or exported with `--embeddings`.
    pub embedding: Option<Vec<f32>>,
    /// The prompt, when logged.
    pub text: Option<String>,
    /// The cost weight λ a cost-aware policy decided at (`None` for other policies).
    pub cost_weight: Option<f32>,
}

impl LoggedEvent {
    /// Whether the action was sampled from the logged probabilities (the only events used).
    pub fn is_sampled(&self) -> bool {
        self.kind == DecisionKind::Sampled
    }

    /// Whether the decision was the argmax, logged with propensity 1.
    pub fn is_greedy(&self) -> bool {
        self.kind == DecisionKind::Greedy
    }

    /// μ(a|x): the logged propensity, else `probabilities[action]` when the log has
    /// probabilities; `None` when neither is there.
    pub fn logged_propensity(&self) -> Option<f64> {
        self.propensity.or_else(|| self.probabilities.get(self.action).map(|&p| f64::from(p)))
    }

    /// The policy input for a policy with input layout `spec`, built from the logged embedding
    /// and cost weight λ (see [`ObservationSpec::row`]); `None` when the embedding is missing or
    /// of another width, or the layout needs a λ the event does not carry.
    pub fn context(&self, spec: &ObservationSpec) -> Option<Vec<f32>> {
        spec.row(
            self.embedding.as_deref()?,
            RowExtras { cost_weight: self.cost_weight, ..RowExtras::default() },
        )
    }
}

impl From<&JoinedEvent> for LoggedEvent {
    fn from(e: &JoinedEvent) -> Self {
        let d = &e.decision;
        LoggedEvent {
            decision_id: Some(d.id.to_string()),
            policy_version: Some(d.policy_version.to_string()),
            action: d.action as usize,
            agent: Some(d.agent.clone()),
            probabilities: d.probabilities.clone(),
            propensity: Some(f64::from(d.propensity)),
            reward: e.reward.map(|r| r.reward),
            kind: d.kind,
            embedding: (!d.embedding.is_empty()).then(|| d.embedding.clone()),
            text: d.text.clone(),
            cost_weight: d.cost_weight,
        }
    }
}

impl From<JoinedEvent> for LoggedEvent {
    fn from(e: JoinedEvent) -> Self {
        let d = e.decision;
        LoggedEvent {
            decision_id: Some(d.id.to_string()),
            policy_version: Some(d.policy_version.to_string()),
            action: d.action as usize,
            agent: Some(d.agent),
            probabilities: d.probabilities,
            propensity: Some(f64::from(d.propensity)),
            reward: e.reward.map(|r| r.reward),
            kind: d.kind,
            embedding: (!d.embedding.is_empty()).then_some(d.embedding),
            text: d.text,
            cost_weight: d.cost_weight,
        }
    }
}

/// One line of an exported log as read: the fields of [`mappo_log::ExportLine`], all but
/// `action` optional, unknown fields ignored (a foreign logger may add its own).
#[derive(Debug, Deserialize)]
struct RawLine {
    #[serde(default, deserialize_with = "opaque_id")]
    decision_id: Option<String>,
    #[serde(default, deserialize_with = "opaque_id")]
    policy_version: Option<String>,
    action: usize,
    #[serde(default)]
    agent: Option<String>,
    #[serde(default)]
    probabilities: Option<Vec<f32>>,
    #[serde(default)]
    propensity: Option<f64>,
    #[serde(default)]
    reward: Option<f64>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    kind: Option<DecisionKind>,
    #[serde(default)]
    embedding: Option<Vec<f32>>,
    #[serde(default)]
    cost_weight: Option<f32>,
}

/// An id as a foreign log writes it: a string kept as given, a number in its JSON form; `null`
/// is none. Objects and arrays are refused (they are not ids).
fn opaque_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => Ok(Some(s)),
        serde_json::Value::Number(n) => Ok(Some(n.to_string())),
        serde_json::Value::Bool(b) => Ok(Some(b.to_string())),
        other => Err(serde::de::Error::custom(format!("an id must be a string or a number, not {other}"))),
    }
}

/// Reads an exported log (`mappo log export [--embeddings]`, one JSON object per line; blank
/// lines are skipped). Errors name the file and the line. Values are not judged here (a
/// propensity of 0 or a missing reward is the evaluator's business, reported as a warning);
/// only the shape is: `action` must be a non-negative integer, numbers must be numbers.
pub fn read_export_jsonl(path: &Path) -> Result<Vec<LoggedEvent>, LearnError> {
    let file = std::fs::File::open(path).map_err(|source| LearnError::Read { path: path.into(), source })?;
    read_export(std::io::BufReader::new(file), path)
}

/// [`read_export_jsonl`] from any reader; `path` only names the source in errors.
pub fn read_export<R: BufRead>(reader: R, path: &Path) -> Result<Vec<LoggedEvent>, LearnError> {
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|source| LearnError::Read { path: path.into(), source })?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| LearnError::BadLine { path: path.into(), line: i + 1, message };
        let raw: RawLine = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
        if let Some(r) = raw.reward
            && !r.is_finite()
        {
            return Err(bad(format!("reward {r} is not finite")));
        }
        out.push(LoggedEvent {
            decision_id: raw.decision_id,
            policy_version: raw.policy_version,
            action: raw.action,
            agent: raw.agent,
            probabilities: raw.probabilities.unwrap_or_default(),
            propensity: raw.propensity,
            reward: raw.reward,
            kind: raw.kind.unwrap_or(DecisionKind::Sampled),
            embedding: raw.embedding,
            text: raw.text,
            cost_weight: raw.cost_weight,
        });
    }
    Ok(out)
}

/// Embeds, with `embedder`, the text of every event that has a text but no embedding; returns
/// how many were embedded. Events with an embedding keep it (the service logged exactly what its
/// policy saw).
pub fn embed_texts(
    events: &mut [LoggedEvent],
    embedder: &mappo_env::embed::Embedder,
) -> Result<usize, LearnError> {
    let todo: Vec<usize> =
        (0..events.len()).filter(|&i| events[i].embedding.is_none() && events[i].text.is_some()).collect();
    for chunk in todo.chunks(256) {
        let texts: Vec<&str> = chunk.iter().filter_map(|&i| events[i].text.as_deref()).collect();
        let emb = embedder
            .embed(&texts)
            .map_err(|e| LearnError::Train(mappo_train::TrainError::Env(mappo_env::EnvError::from(e))))?;
        for (&i, x) in chunk.iter().zip(emb) {
            events[i].embedding = Some(x);
        }
    }
    Ok(todo.len())
}

/// One logged decision as the learner sees it (a decision-log row or a line of an exported
/// log), its reward already resolved against `learn.reward_wait_s`.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnEvent {
    /// Its position in the log (`None` for a line of a file).
    pub watermark: Option<Watermark>,
    /// Sampled, greedy or forced: only sampled decisions are learned from.
    pub kind: DecisionKind,
    /// The chosen agent.
    pub action: u32,
    /// How many agents the logging policy had.
    pub num_agents: usize,
    /// μ(action | context).
    pub propensity: f32,
    /// The context embedding.
    pub embedding: Vec<f32>,
    /// The cost weight λ a cost-aware policy decided at (appended to the embedding as the
    /// policy's last input when the policy takes it).
    pub cost_weight: Option<f32>,
    /// The reward, `None` when it did not arrive (in time).
    pub reward: Option<f64>,
    /// Where it sits in its episode (`None`: a one-step decision).
    pub episode: Option<mappo_log::EpisodeStep>,
    /// For an episode's first step, when the learner learns episodes: the whole episode,
    /// resolved when it was read (see [`Trajectory`]).
    pub trajectory: Option<Trajectory>,
}

/// An episode as the learner takes it, at its first step.
#[derive(Debug, Clone, PartialEq)]
pub struct Trajectory {
    /// Its steps in step order, the first included.
    pub steps: Vec<LearnEvent>,
    /// The episode's end reward when it ended with one (added to its last step's reward).
    pub end_reward: Option<f64>,
    /// Whether it ended; else it is cut after its last logged step.
    pub ended: bool,
    /// Whether it may be learned now: ended, or started more than `learn.episode_timeout_s`
    /// before the learner's clock. A first step that is not ready stops the batch there.
    pub ready: bool,
}

impl LearnEvent {
    /// A decision-log row: a reward recorded more than `reward_wait_s` after its decision counts
    /// as missing (so what an event contributes never depends on when the learner ran).
    pub fn from_joined(e: &JoinedEvent, reward_wait_s: f64) -> Self {
        let d = &e.decision;
        let wait_us = (reward_wait_s * 1e6) as i64;
        LearnEvent {
            watermark: Some(e.watermark()),
            kind: d.kind,
            action: d.action,
            num_agents: d.probabilities.len(),
            propensity: d.propensity,
            embedding: d.embedding.clone(),
            cost_weight: d.cost_weight,
            reward: e.reward.filter(|r| r.time.0.saturating_sub(d.time.0) <= wait_us).map(|r| r.reward),
            episode: d.episode.clone(),
            trajectory: None,
        }
    }

    /// The first step of an episode with the whole episode (`events`: its joined events in step
    /// order, as [`DecisionLog::episode_events`] returns them) resolved at time `now`.
    pub fn with_trajectory(
        mut self,
        events: &[JoinedEvent],
        reward_wait_s: f64,
        timeout_s: f64,
        now: Timestamp,
    ) -> Self {
        let start = events.first().map_or(now, |e| e.decision.time);
        let end = events.first().and_then(|e| e.episode_end);
        let timeout_us = (timeout_s * 1e6) as i64;
        self.trajectory = Some(Trajectory {
            steps: events.iter().map(|e| LearnEvent::from_joined(e, reward_wait_s)).collect(),
            end_reward: end.and_then(|x| x.reward),
            ended: end.is_some(),
            ready: end.is_some() || now.0.saturating_sub(start.0) > timeout_us,
        });
        self
    }

    /// An event of an exported or foreign log ([`crate::read_export_jsonl`]), its text
    /// already embedded ([`crate::embed_texts`]): one without an embedding or a propensity is
    /// kept (it counts as consumed) and skipped as unusable when batched.
    pub fn from_logged(e: &LoggedEvent) -> Self {
        LearnEvent {
            watermark: None,
            kind: e.kind,
            action: u32::try_from(e.action).unwrap_or(u32::MAX),
            num_agents: e.probabilities.len(),
            propensity: e.logged_propensity().map_or(f32::NAN, |p| p as f32),
            embedding: e.embedding.clone().unwrap_or_default(),
            cost_weight: e.cost_weight,
            reward: e.reward,
            episode: None,
            trajectory: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_export_with_and_without_embeddings() {
        let text = concat!(
            r#"{"decision_id":"0193c4a2-0000-7000-8000-000000000001","time":"2026-01-01T00:00:00Z","#,
            r#""policy_version":1,"action":1,"agent":"b","probabilities":[0.25,0.75],"propensity":0.75,"#,
            r#""reward":1.0,"kind":"sampled","embedding":[0.5,-0.5]}"#,
            "\n\n",
            r#"{"action":0,"propensity":0.5,"reward":null,"text":"hello","kind":"greedy"}"#,
            "\n",
            r#"{"action":0,"probabilities":[0.4,0.6],"reward":0}"#,
            "\n",
        );
        let ev = read_export(text.as_bytes(), Path::new("x.jsonl")).expect("reads");
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[0].embedding.as_deref(), Some(&[0.5f32, -0.5][..]));
        assert_eq!(ev[0].logged_propensity(), Some(0.75));
        assert!(ev[0].is_sampled());
        assert!(ev[1].is_greedy());
        assert_eq!(ev[1].text.as_deref(), Some("hello"));
        assert_eq!(ev[1].reward, None);
        // No propensity: read from the probabilities.
        assert!((ev[2].logged_propensity().expect("from probabilities") - 0.4).abs() < 1e-6);
        assert!(ev[2].is_sampled(), "a foreign log without kind counts as sampled");
    }

    #[test]
    fn foreign_ids_and_versions_are_kept_as_given() {
        let text = concat!(
            r#"{"decision_id":"ev-0","policy_version":"v2","action":0,"propensity":0.5,"reward":1}"#,
            "\n",
            r#"{"decision_id":17,"policy_version":3,"action":1,"propensity":0.5,"reward":0}"#,
            "\n",
            r#"{"decision_id":null,"action":1,"propensity":0.5,"reward":0}"#,
            "\n",
        );
        let ev = read_export(text.as_bytes(), Path::new("vw.jsonl")).expect("reads");
        let ids: Vec<Option<&str>> = ev.iter().map(|e| e.decision_id.as_deref()).collect();
        assert_eq!(ids, [Some("ev-0"), Some("17"), None]);
        let versions: Vec<Option<&str>> = ev.iter().map(|e| e.policy_version.as_deref()).collect();
        assert_eq!(versions, [Some("v2"), Some("3"), None]);
        let err = read_export(r#"{"decision_id":{"a":1},"action":0}"#.as_bytes(), Path::new("x.jsonl"))
            .expect_err("an object is no id");
        assert!(err.to_string().contains("string or a number"), "{err}");
    }

    #[test]
    fn a_bad_line_is_named() {
        let text = "{\"action\":0}\n{\"action\":-1}\n";
        let err = read_export(text.as_bytes(), Path::new("log.jsonl")).expect_err("refused");
        assert!(err.to_string().starts_with("log.jsonl:2:"), "{err}");
    }
}
