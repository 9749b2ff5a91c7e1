//! The promotion gate: a candidate policy is published only when off-policy evaluation on the
//! logged traffic says it is not worse than the current version.
//!
//! Rule: publish when `lower CI bound of the candidate's estimate ≥ current version's estimate −
//! learn.gate_margin`, the estimator being DR (default) or SNIPS (`learn.gate_estimator`). Both
//! policies are evaluated on the same events with the same cross-fitted reward model, each
//! acting as it would be served (floored at `serve.min_prob`).

use mappo_log::{DecisionLog, GateRecord, PublishMeta, Published, Timestamp};
use serde::Serialize;
use sha2::Digest;

use crate::episode_ope::{EpisodeOpeReport, LoggedEpisode};
use crate::ope::{
    Candidate, Estimate, OpeOptions, OpeReport, cross_fit_reward_model, evaluate_prepared, prepare,
};
use crate::{LearnError, LoggedEvent};

pub use mappo_config::GateEstimator;

/// The gate's settings (`learn.gate_margin`, `learn.gate_estimator`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateConfig {
    /// How much worse than the current version's estimate the candidate's lower bound may be.
    pub margin: f64,
    /// Which estimate is compared.
    pub estimator: GateEstimator,
    /// OPE settings (folds, ridge).
    pub ope: OpeOptions,
}

impl GateConfig {
    /// The gate settings of a config's `[learn]` section.
    pub fn from_config(learn: &mappo_config::LearnConfig) -> Self {
        GateConfig { margin: learn.gate_margin, estimator: learn.gate_estimator, ope: OpeOptions::default() }
    }
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig { margin: 0.01, estimator: GateEstimator::Dr, ope: OpeOptions::default() }
    }
}

/// One decision of the gate, with both policies' estimates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateDecision {
    /// Whether the candidate may be published.
    pub publish: bool,
    /// The estimate compared: `dr` or `snips` (`learn.gate_estimator`), or `wpdis` for a policy
    /// of episodes.
    pub estimator: String,
    /// The margin applied.
    pub margin: f64,
    /// The candidate's compared estimate.
    pub candidate_value: f64,
    /// Its 95% interval.
    pub candidate_ci: [f64; 2],
    /// The current version's compared estimate.
    pub current_value: f64,
    /// Its 95% interval.
    pub current_ci: [f64; 2],
    /// Events evaluated.
    pub n: usize,
    /// One line: why.
    pub reason: String,
    /// The candidate's whole report.
    pub candidate: GateReport,
    /// The current version's whole report.
    pub current: GateReport,
}

/// A policy's off-policy evaluation in a gate decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum GateReport {
    /// IPS, SNIPS and DR on one-step decisions.
    Bandit(OpeReport),
    /// PDIS and WPDIS on episodes.
    Episodes(EpisodeOpeReport),
}

/// The rule, once both estimates are known: publish when the candidate's lower bound is at
/// least the current estimate minus the margin.
fn judge(
    estimator: &str,
    margin: f64,
    n: usize,
    (c, k): (Estimate, Estimate),
    (candidate, current): (GateReport, GateReport),
) -> GateDecision {
    let publish = c.ci[0] >= k.value - margin;
    let verdict = if publish { "published: the candidate's" } else { "refused: the candidate's" };
    let cmp = if publish { "≥" } else { "<" };
    let reason = format!(
        "{verdict} {estimator} lower bound {:.4} {cmp} the current {estimator} {:.4} − margin {margin}",
        c.ci[0], k.value
    );
    GateDecision {
        publish,
        estimator: estimator.to_string(),
        margin,
        candidate_value: c.value,
        candidate_ci: c.ci,
        current_value: k.value,
        current_ci: k.ci,
        n,
        reason,
        candidate,
        current,
    }
}

/// [`gate`] for policies of episodes: both are evaluated with WPDIS on the same logged episodes
/// (`gamma` the discount of their returns; `seed` seeds the bootstrap intervals).
pub fn gate_episodes(
    episodes: &[LoggedEpisode],
    candidate: &Candidate,
    current: &Candidate,
    cfg: &GateConfig,
    gamma: f64,
    seed: u64,
) -> Result<GateDecision, LearnError> {
    if candidate.num_actions() != current.num_actions() || candidate.shape != current.shape {
        return Err(LearnError::Mismatch(format!(
            "the candidate ({} agents, {:?}) and the current version ({} agents, {:?}) differ",
            candidate.num_actions(),
            candidate.shape,
            current.num_actions(),
            current.shape
        )));
    }
    let cand = crate::episode_ope::evaluate(episodes, candidate, gamma, seed)?;
    let cur = crate::episode_ope::evaluate(episodes, current, gamma, seed)?;
    Ok(judge(
        "wpdis",
        cfg.margin,
        cand.n,
        (cand.wpdis, cur.wpdis),
        (GateReport::Episodes(cand), GateReport::Episodes(cur)),
    ))
}

/// Decides whether `candidate` may replace `current`, by off-policy evaluation of both on
/// `events` (see the module documentation).
pub fn gate(
    events: &[LoggedEvent],
    candidate: &Candidate,
    current: &Candidate,
    cfg: &GateConfig,
) -> Result<GateDecision, LearnError> {
    if candidate.num_actions() != current.num_actions() {
        return Err(LearnError::Mismatch(format!(
            "the candidate has {} agents, the current version {}",
            candidate.num_actions(),
            current.num_actions()
        )));
    }
    if let (Some(a), Some(b)) = (candidate.layout(), current.layout())
        && a != b
    {
        return Err(LearnError::Mismatch(format!(
            "the candidate takes inputs {} wide ({:?}), the current version {} ({:?})",
            a.width(),
            a.columns(),
            b.width(),
            b.columns()
        )));
    }
    let p = prepare(events, candidate.num_actions(), candidate.layout().or(current.layout()))?;
    let rhat = cross_fit_reward_model(&p, &cfg.ope);
    let cand = evaluate_prepared(&p, candidate, &rhat)?;
    let cur = evaluate_prepared(&p, current, &rhat)?;
    let pick = |r: &OpeReport| match cfg.estimator {
        GateEstimator::Dr => r.dr,
        GateEstimator::Snips => r.snips,
    };
    let (c, k) = (pick(&cand), pick(&cur));
    Ok(judge(
        cfg.estimator.as_str(),
        cfg.margin,
        p.len(),
        (c, k),
        (GateReport::Bandit(cand), GateReport::Bandit(cur)),
    ))
}

impl GateDecision {
    /// The row for `gate_decisions`: `candidate_version` is the version the candidate became
    /// (when published), `current_version` the one it was compared with.
    pub fn record(
        &self,
        candidate_version: Option<i64>,
        current_version: Option<i64>,
        sha256: Option<String>,
    ) -> GateRecord {
        GateRecord {
            id: 0,
            time: Timestamp::now(),
            published: self.publish,
            candidate_version,
            current_version,
            candidate_sha256: sha256,
            estimator: self.estimator.clone(),
            margin: self.margin,
            n: self.n as i64,
            candidate_value: self.candidate_value,
            candidate_ci: self.candidate_ci,
            current_value: Some(self.current_value),
            current_ci: Some(self.current_ci),
            reason: self.reason.clone(),
            meta: serde_json::json!({"candidate": self.candidate, "current": self.current}),
        }
    }
}

/// What [`publish_through_gate`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct GateOutcome {
    /// The gate's decision (`None` when nothing was published yet: the first version needs no
    /// gate).
    pub decision: Option<GateDecision>,
    /// The version published, when the gate let it through.
    pub published: Option<Published>,
    /// The id of the row recorded in `gate_decisions`.
    pub record_id: i64,
}

/// Publishes `checkpoint` (a checkpoint file's bytes, the candidate `candidate`) when the gate
/// lets it through against the newest published version (`current`: its version and policy;
/// `None` when nothing is published, then it is published without a comparison), and records
/// the decision either way in `gate_decisions`.
pub async fn publish_through_gate(
    log: &DecisionLog,
    events: &[LoggedEvent],
    checkpoint: &[u8],
    candidate: &Candidate,
    current: Option<(i64, &Candidate)>,
    cfg: &GateConfig,
    meta: &PublishMeta,
) -> Result<GateOutcome, LearnError> {
    let Some((current_version, current)) = current else {
        let published = log.publish_policy(checkpoint, meta).await?;
        let record = GateRecord {
            id: 0,
            time: Timestamp::now(),
            published: true,
            candidate_version: Some(published.version),
            current_version: None,
            candidate_sha256: Some(format!("{:x}", sha2::Sha256::digest(checkpoint))),
            estimator: cfg.estimator.as_str().into(),
            margin: cfg.margin,
            n: 0,
            candidate_value: 0.0,
            candidate_ci: [0.0, 0.0],
            current_value: None,
            current_ci: None,
            reason: "published: nothing was published before (no comparison)".into(),
            meta: serde_json::Value::Null,
        };
        let record_id = log.record_gate_decision(&record).await?;
        return Ok(GateOutcome { decision: None, published: Some(published), record_id });
    };
    let sha = format!("{:x}", sha2::Sha256::digest(checkpoint));
    let decision = gate(events, candidate, current, cfg)?;
    let published = if decision.publish {
        let mut meta = meta.clone();
        let gate_json = serde_json::json!({
            "estimator": decision.estimator.as_str(),
            "candidate": decision.candidate_value,
            "candidate_ci": decision.candidate_ci,
            "current": decision.current_value,
            "current_version": current_version,
        });
        match &mut meta.meta {
            serde_json::Value::Object(m) => {
                m.insert("gate".into(), gate_json);
            }
            other => *other = serde_json::json!({ "gate": gate_json }),
        }
        Some(log.publish_policy(checkpoint, &meta).await?)
    } else {
        None
    };
    let record = decision.record(published.map(|p| p.version), Some(current_version), Some(sha));
    let record_id = log.record_gate_decision(&record).await?;
    Ok(GateOutcome { decision: Some(decision), published, record_id })
}

#[cfg(test)]
mod tests {
    use mappo_config::Rng;
    use mappo_log::DecisionKind;

    use super::*;

    /// A 3-action bandit: action 0 is best when x[0] > 0, action 2 otherwise; logged by a
    /// uniform-ish policy.
    fn log(n: usize, seed: u64) -> Vec<LoggedEvent> {
        let mut rng = Rng::new(seed);
        let mu = [0.4f32, 0.3, 0.3];
        (0..n)
            .map(|_| {
                let x = vec![rng.uniform() as f32 * 2.0 - 1.0, rng.uniform() as f32];
                let m = if x[0] > 0.0 { [0.9, 0.4, 0.1] } else { [0.1, 0.4, 0.9] };
                let a = rng.categorical(&mu);
                let r = if rng.uniform() < m[a] { 1.0 } else { 0.0 };
                LoggedEvent {
                    decision_id: None,
                    policy_version: Some("1".into()),
                    action: a,
                    agent: None,
                    probabilities: mu.to_vec(),
                    propensity: Some(f64::from(mu[a])),
                    reward: Some(r),
                    kind: DecisionKind::Sampled,
                    embedding: Some(x),
                    text: None,
                    cost_weight: None,
                }
            })
            .collect()
    }

    fn good() -> Candidate {
        Candidate::from_fn("good", 3, |x| if x[0] > 0.0 { vec![1.0, 0.0, 0.0] } else { vec![0.0, 0.0, 1.0] })
            .with_min_prob(0.05)
    }

    /// "Trained on shuffled labels": the right actions swapped.
    fn bad() -> Candidate {
        Candidate::from_fn("bad", 3, |x| if x[0] > 0.0 { vec![0.0, 0.0, 1.0] } else { vec![1.0, 0.0, 0.0] })
            .with_min_prob(0.05)
    }

    fn middling() -> Candidate {
        Candidate::from_fn("uniform", 3, |_| vec![1.0 / 3.0; 3])
    }

    #[test]
    fn the_gate_refuses_a_worse_candidate_and_accepts_a_better_one() {
        let events = log(3000, 1);
        for estimator in [GateEstimator::Dr, GateEstimator::Snips] {
            let cfg = GateConfig { estimator, ..GateConfig::default() };
            let d = gate(&events, &bad(), &middling(), &cfg).expect("gates");
            assert!(!d.publish, "{estimator:?}: {}", d.reason);
            assert!(d.reason.starts_with("refused"), "{}", d.reason);
            let d = gate(&events, &good(), &middling(), &cfg).expect("gates");
            assert!(d.publish, "{estimator:?}: {}", d.reason);
            // A candidate equal to the current one passes (its lower bound is within the margin
            // only when the interval is narrow: here it is, with 3000 events and a wide margin).
            let wide = GateConfig { margin: 0.1, ..cfg };
            assert!(gate(&events, &good(), &good(), &wide).expect("gates").publish);
        }
    }

    #[test]
    fn gate_settings_come_from_the_config() {
        let c = mappo_config::Config::from_toml_str(
            "[learn]\ngate_margin = 0.05\ngate_estimator = \"snips\"\n",
            "gate.toml",
        )
        .expect("valid");
        let g = GateConfig::from_config(&c.learn);
        assert_eq!((g.margin, g.estimator), (0.05, GateEstimator::Snips));
        let e = mappo_config::Config::from_toml_str("[learn]\ngate_estimator = \"ips\"\n", "gate.toml")
            .expect_err("ips is not a gate estimator");
        assert!(e.to_string().contains("learn.gate_estimator"), "{e}");
    }

    #[tokio::test]
    async fn every_gate_decision_is_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite:{}", dir.path().join("log.db").display());
        let db = DecisionLog::open(&url).await.expect("opens");
        let events = log(2000, 2);
        let cfg = GateConfig::default();
        let meta = PublishMeta { source: "test".into(), ..PublishMeta::default() };
        let first =
            publish_through_gate(&db, &events, b"v1", &middling(), None, &cfg, &meta).await.expect("first");
        assert_eq!(first.published.map(|p| p.version), Some(1));
        let refused = publish_through_gate(&db, &events, b"bad", &bad(), Some((1, &middling())), &cfg, &meta)
            .await
            .expect("bad");
        assert!(refused.published.is_none());
        let ok = publish_through_gate(&db, &events, b"good", &good(), Some((1, &middling())), &cfg, &meta)
            .await
            .expect("good");
        assert_eq!(ok.published.map(|p| p.version), Some(2));
        let rows = db.gate_decisions().await.expect("reads");
        assert_eq!(rows.iter().map(|r| r.published).collect::<Vec<_>>(), [true, false, true]);
        assert_eq!(rows[1].current_version, Some(1));
        assert_eq!(rows[1].candidate_version, None);
        assert!(rows[1].current_value.expect("current") > rows[1].candidate_ci[1]);
        assert_eq!(rows[2].candidate_version, Some(2));
        assert!(rows[2].meta["candidate"]["dr"]["value"].is_number(), "{}", rows[2].meta);
        let versions = db.list_policies().await.expect("versions");
        assert_eq!(versions.len(), 2);
        assert!(versions[1].meta["gate"]["candidate"].is_number(), "{}", versions[1].meta);
    }
}
