//! The `[serve]` section: the routing service (`mappo serve`).

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// The routing service: where it listens, how it explores, its limits and
/// what it logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// `HOST:PORT` to listen on. Default `127.0.0.1:8080`. A non-loopback
    /// address needs `api_keys_file` (or `mappo serve --insecure`).
    pub addr: String,
    /// Every agent's probability is floored at this and the others are
    /// rescaled so that they still sum to 1: exploration never stops and every
    /// logged propensity is > 0. Must be below 1 / (number of agents).
    /// Default 0.01.
    pub min_prob: f64,
    /// Longest text accepted, in UTF-8 bytes (longer → 413). Default 16384.
    pub max_text_bytes: usize,
    /// Most texts in one request (more → 413), and most texts the batching
    /// queue puts into one embedding + policy forward pass. Default 64.
    pub max_batch_texts: usize,
    /// Largest request body, in bytes (larger → 413). Default 1048576 (1 MiB).
    pub max_body_bytes: usize,
    /// How long the batching queue waits for more requests once one has
    /// arrived, in milliseconds (requests that arrive while the model is busy
    /// are batched anyway). Default 1.
    pub batch_wait_ms: u64,
    /// File of API keys, one per line (blank lines and `#` comments ignored);
    /// when set, every `/v1/*` and `/metrics` request needs
    /// `Authorization: Bearer KEY`. "" = no keys. Default "".
    pub api_keys_file: String,
    /// Log the prompt text with each decision. Default false: prompts may be
    /// private (their embeddings are always logged).
    pub log_text: bool,
    /// Smallest reward accepted by `/v1/feedback` (smaller → 422). Default -1.
    pub reward_min: f64,
    /// Largest reward accepted by `/v1/feedback` (larger → 422). Default 1.
    pub reward_max: f64,
    /// Cost weight λ given to a cost-aware router (agents with a `cost`; see
    /// `env.cost_weight_range`) when a request names none (`"cost_weight"` in `/v1/route`).
    /// 0 = quality only. `mappo calibrate` finds the λ that meets a budget. Default 0.
    pub cost_weight: f64,
    /// Shadow mode: a published policy version that also scores every request, so a candidate
    /// can be watched on live traffic before it serves anyone. What it would have chosen (and
    /// with what probability, floored like the served policy's) is logged with each decision
    /// (`shadow` in `mappo log export`); it never acts. Its agents must be the served policy's.
    /// 0 = none. Default 0.
    pub shadow: i64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:8080".into(),
            min_prob: 0.01,
            max_text_bytes: 16384,
            max_batch_texts: 64,
            max_body_bytes: 1 << 20,
            batch_wait_ms: 1,
            api_keys_file: String::new(),
            log_text: false,
            reward_min: -1.0,
            reward_max: 1.0,
            cost_weight: 0.0,
            shadow: 0,
        }
    }
}

impl ServeConfig {
    /// Checks every value's range; the error names the key (`serve.…`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, value: &dyn std::fmt::Display, allowed: &str| ConfigError::Invalid {
            key: format!("serve.{key}"),
            message: format!("{value} is not allowed: {allowed}"),
        };
        if self.addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(bad("addr", &format!("{:?}", self.addr), "must be IP:PORT, e.g. 127.0.0.1:8080"));
        }
        if !(self.min_prob.is_finite() && (0.0..0.5).contains(&self.min_prob)) {
            return Err(bad("min_prob", &self.min_prob, "must be in [0, 0.5)"));
        }
        let within = |key: &str, v: usize, min: usize, max: usize| {
            if (min..=max).contains(&v) {
                Ok(())
            } else {
                Err(bad(key, &v, &format!("must be an integer in [{min}, {max}]")))
            }
        };
        within("max_text_bytes", self.max_text_bytes, 1, 1 << 24)?;
        within("max_batch_texts", self.max_batch_texts, 1, 1 << 16)?;
        within("max_body_bytes", self.max_body_bytes, 64, 1 << 30)?;
        if self.batch_wait_ms > 10_000 {
            return Err(bad("batch_wait_ms", &self.batch_wait_ms, "must be at most 10000"));
        }
        for (key, v) in [("reward_min", self.reward_min), ("reward_max", self.reward_max)] {
            if !v.is_finite() {
                return Err(bad(key, &v, "must be a finite number"));
            }
        }
        if !self.cost_weight.is_finite() {
            return Err(bad("cost_weight", &self.cost_weight, "must be a finite number"));
        }
        if self.shadow < 0 {
            return Err(bad(
                "shadow",
                &self.shadow,
                "must be a published policy version (1, 2, ...) or 0 for none",
            ));
        }
        if self.reward_min > self.reward_max {
            return Err(bad("reward_min", &self.reward_min, "must be at most serve.reward_max"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut ServeConfig)) -> Result<(), ConfigError> {
        let mut c = ServeConfig::default();
        f(&mut c);
        c.validate()
    }

    #[test]
    fn defaults_validate_and_match_the_issue() {
        let c = ServeConfig::default();
        assert_eq!(c.addr, "127.0.0.1:8080");
        assert!(!c.log_text);
        assert_eq!((c.reward_min, c.reward_max), (-1.0, 1.0));
        c.validate().expect("defaults validate");
    }

    #[test]
    fn bad_values_name_their_key() {
        type Edit = Box<dyn FnOnce(&mut ServeConfig)>;
        let cases: [(&str, Edit); 8] = [
            ("serve.shadow", Box::new(|c| c.shadow = -1)),
            ("serve.addr", Box::new(|c| c.addr = "localhost".into())),
            ("serve.min_prob", Box::new(|c| c.min_prob = 0.5)),
            ("serve.min_prob", Box::new(|c| c.min_prob = f64::NAN)),
            ("serve.max_batch_texts", Box::new(|c| c.max_batch_texts = 0)),
            ("serve.max_text_bytes", Box::new(|c| c.max_text_bytes = 0)),
            ("serve.reward_min", Box::new(|c| c.reward_min = 2.0)),
            ("serve.reward_max", Box::new(|c| c.reward_max = f64::INFINITY)),
        ];
        for (key, f) in cases {
            let e = with(f).expect_err(key).to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }
}
