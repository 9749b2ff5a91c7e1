//! The `[learn]` section: learning from logged feedback and the promotion gate.

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// Settings of learning from the decision log. (The promotion gate's keys; the learner's own
/// keys sit beside them.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LearnConfig {
    /// A candidate policy is published only when the lower end of its 95% interval is at least
    /// the current version's estimate minus this. Default 0.01.
    pub gate_margin: f64,
    /// The estimate the promotion gate compares: `dr` (doubly robust) or `snips`. Default `dr`.
    pub gate_estimator: String,
}

impl Default for LearnConfig {
    fn default() -> Self {
        Self { gate_margin: 0.01, gate_estimator: "dr".into() }
    }
}

impl LearnConfig {
    /// Checks every value's range; the error names the key (`learn.…`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, value: &dyn std::fmt::Display, allowed: &str| ConfigError::Invalid {
            key: format!("learn.{key}"),
            message: format!("{value} is not allowed: {allowed}"),
        };
        if !(self.gate_margin.is_finite() && (0.0..=1e6).contains(&self.gate_margin)) {
            return Err(bad("gate_margin", &self.gate_margin, "must be a finite number >= 0"));
        }
        if !matches!(self.gate_estimator.as_str(), "dr" | "snips") {
            return Err(bad(
                "gate_estimator",
                &format!("{:?}", self.gate_estimator),
                "must be \"dr\" or \"snips\"",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_keys_validate() {
        LearnConfig::default().validate().expect("defaults validate");
        let e = LearnConfig { gate_margin: -0.1, ..Default::default() }.validate().expect_err("negative");
        assert!(e.to_string().contains("learn.gate_margin"), "{e}");
        let e =
            LearnConfig { gate_estimator: "ips".into(), ..Default::default() }.validate().expect_err("ips");
        assert!(e.to_string().contains("learn.gate_estimator"), "{e}");
    }
}
