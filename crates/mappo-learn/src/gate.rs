//! The promotion gate: a candidate policy is published only when off-policy evaluation on the
//! logged traffic says it is not worse than the current version.
//!
//! Rule: publish when `lower CI bound of the candidate's estimate ≥ current version's estimate −
//! learn.gate_margin`, the estimator being DR (default) or SNIPS (`learn.gate_estimator`). Both
//! policies are evaluated on the same events with the same cross-fitted reward model, each
//! acting as it would be served (floored at `serve.min_prob`).

use serde::{Deserialize, Serialize};

use crate::ope::{Candidate, OpeOptions, OpeReport, cross_fit_reward_model, evaluate_prepared, prepare};
use crate::{LearnError, LoggedEvent};

/// Which estimate the gate compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GateEstimator {
    /// Doubly robust (default).
    #[default]
    Dr,
    /// Self-normalised IPS.
    Snips,
}

impl GateEstimator {
    /// `dr` or `snips`.
    pub fn as_str(self) -> &'static str {
        match self {
            GateEstimator::Dr => "dr",
            GateEstimator::Snips => "snips",
        }
    }

    /// Parses `dr` or `snips` (the `learn.gate_estimator` values).
    pub fn parse(s: &str) -> Result<Self, LearnError> {
        match s {
            "dr" => Ok(GateEstimator::Dr),
            "snips" => Ok(GateEstimator::Snips),
            other => {
                Err(LearnError::Config(format!("learn.gate_estimator = `{other}`: expected `dr` or `snips`")))
            }
        }
    }
}

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
    /// `dr` or `snips`.
    pub estimator: GateEstimator,
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
    pub candidate: OpeReport,
    /// The current version's whole report.
    pub current: OpeReport,
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
    let p = prepare(events, candidate.num_actions(), candidate.context_dim().or(current.context_dim()))?;
    let rhat = cross_fit_reward_model(&p, &cfg.ope);
    let cand = evaluate_prepared(&p, candidate, &rhat)?;
    let cur = evaluate_prepared(&p, current, &rhat)?;
    let pick = |r: &OpeReport| match cfg.estimator {
        GateEstimator::Dr => r.dr,
        GateEstimator::Snips => r.snips,
    };
    let (c, k) = (pick(&cand), pick(&cur));
    let threshold = k.value - cfg.margin;
    let publish = c.ci[0] >= threshold;
    let est = cfg.estimator.as_str();
    let reason = if publish {
        format!(
            "published: the candidate's {est} lower bound {:.4} ≥ the current {est} {:.4} − margin {}",
            c.ci[0], k.value, cfg.margin
        )
    } else {
        format!(
            "refused: the candidate's {est} lower bound {:.4} < the current {est} {:.4} − margin {}",
            c.ci[0], k.value, cfg.margin
        )
    };
    Ok(GateDecision {
        publish,
        estimator: cfg.estimator,
        margin: cfg.margin,
        candidate_value: c.value,
        candidate_ci: c.ci,
        current_value: k.value,
        current_ci: k.ci,
        n: p.len(),
        reason,
        candidate: cand,
        current: cur,
    })
}
