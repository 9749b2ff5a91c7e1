//! The `[serve]` section: the routing service (`mappo serve`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// Where one agent lives for the OpenAI-compatible proxy (`POST /v1/chat/completions`): a
/// `[serve.upstreams.<agent>]` table, `<agent>` being one of the policy's agents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Upstream {
    /// Base URL of an OpenAI-compatible API (`http://` or `https://`), e.g.
    /// `http://127.0.0.1:8000/v1`; requests go to `{base_url}/chat/completions`. Required.
    pub base_url: String,
    /// The model name sent upstream in place of the client's `"model"`. Required.
    pub model: String,
    /// Name of the environment variable holding the upstream's API key, sent as
    /// `Authorization: Bearer KEY`; read when the service starts (unset → the service refuses
    /// to start). "" = no key. Default "".
    pub api_key_env: String,
    /// Seconds to wait for the upstream: for the whole answer of a non-streaming request; for
    /// the response headers and then between two chunks of a streamed one. Default 60.
    pub timeout_s: f64,
}

impl Default for Upstream {
    fn default() -> Self {
        Self { base_url: String::new(), model: String::new(), api_key_env: String::new(), timeout_s: 60.0 }
    }
}

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
    /// Longest a request waits for the decision log (a commit, or a read of an episode's
    /// steps), in milliseconds; past it the answer is 503 and `/healthz` says why. Also how
    /// long a pooled connection is waited for. Default 2000.
    pub db_timeout_ms: u64,
    /// Longest a client may take to send a request's headers, in milliseconds (slower: the
    /// connection is closed). Also how long an idle kept-alive connection stays open. Default
    /// 10000.
    pub header_timeout_ms: u64,
    /// Longest a client may take to send a request's body, in milliseconds (slower: 408).
    /// Default 10000.
    pub body_timeout_ms: u64,
    /// Most connections open at once; beyond it a new connection is answered 503 and closed.
    /// Default 1024.
    pub max_connections: usize,
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
    /// The OpenAI-compatible proxy: where each agent lives (`[serve.upstreams.<agent>]` tables
    /// with `base_url`, `model`, `api_key_env`, `timeout_s`). Agents without a table cannot be
    /// proxied to (503). Default: none.
    pub upstreams: BTreeMap<String, Upstream>,
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
            db_timeout_ms: 2000,
            header_timeout_ms: 10_000,
            body_timeout_ms: 10_000,
            max_connections: 1024,
            api_keys_file: String::new(),
            log_text: false,
            reward_min: -1.0,
            reward_max: 1.0,
            cost_weight: 0.0,
            shadow: 0,
            upstreams: BTreeMap::new(),
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
        for (key, v) in [
            ("db_timeout_ms", self.db_timeout_ms),
            ("header_timeout_ms", self.header_timeout_ms),
            ("body_timeout_ms", self.body_timeout_ms),
        ] {
            if !(10..=600_000).contains(&v) {
                return Err(bad(key, &v, "must be an integer in [10, 600000] (milliseconds)"));
            }
        }
        within("max_connections", self.max_connections, 1, 1 << 20)?;
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
        for (agent, u) in &self.upstreams {
            u.validate(agent)?;
        }
        Ok(())
    }
}

impl Upstream {
    /// Checks one `[serve.upstreams.<agent>]` table; the error names the key
    /// (`serve.upstreams.<agent>.…`). Whether `<agent>` is an agent of the policy is checked by
    /// [`crate::Config::validate`] (text env) and when the service starts (the served policy).
    pub fn validate(&self, agent: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, value: &dyn std::fmt::Display, allowed: &str| ConfigError::Invalid {
            key: format!("serve.upstreams.{agent}.{key}"),
            message: format!("{value} is not allowed: {allowed}"),
        };
        if agent.trim().is_empty() || agent == "mappo" {
            return Err(ConfigError::Invalid {
                key: format!("serve.upstreams.{agent}"),
                message: format!(
                    "{agent:?} is not allowed: the table must be named after an agent (and `mappo` is \
                     the router's own model name)"
                ),
            });
        }
        // A light check (this crate stays free of URL and HTTP crates): the scheme, a host, no
        // query or fragment, no spaces. The service's HTTP client parses it fully.
        let rest = self.base_url.strip_prefix("http://").or_else(|| self.base_url.strip_prefix("https://"));
        let url_ok = rest.is_some_and(|r| !r.split('/').next().unwrap_or_default().is_empty())
            && !self.base_url.contains(['?', '#'])
            && !self.base_url.chars().any(|c| c.is_whitespace() || c.is_control());
        if !url_ok {
            return Err(bad(
                "base_url",
                &format!("{:?}", self.base_url),
                "must be an http:// or https:// URL with a host and no query, e.g. http://127.0.0.1:8000/v1",
            ));
        }
        if self.model.trim().is_empty() {
            return Err(bad("model", &"\"\"", "must name the upstream's model, e.g. \"gpt-4o-mini\""));
        }
        let env_ok = self.api_key_env.is_empty()
            || self.api_key_env.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !env_ok {
            return Err(bad(
                "api_key_env",
                &format!("{:?}", self.api_key_env),
                "must be the name of an environment variable (letters, digits, _) or \"\"",
            ));
        }
        if !(self.timeout_s.is_finite() && self.timeout_s > 0.0 && self.timeout_s <= 86_400.0) {
            return Err(bad("timeout_s", &self.timeout_s, "must be a number of seconds in (0, 86400]"));
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

    fn upstream(f: impl FnOnce(&mut Upstream)) -> Result<(), ConfigError> {
        with(|c| {
            let mut u = Upstream {
                base_url: "http://127.0.0.1:8000/v1".into(),
                model: "m".into(),
                ..Upstream::default()
            };
            f(&mut u);
            c.upstreams.insert("code".into(), u);
        })
    }

    #[test]
    fn upstreams_validate_and_bad_values_name_their_key() {
        upstream(|_| {}).expect("a plain upstream validates");
        upstream(|u| u.base_url = "https://api.example.com/v1/".into()).expect("https");
        type Edit = Box<dyn FnOnce(&mut Upstream)>;
        let cases: [(&str, Edit); 8] = [
            ("serve.upstreams.code.base_url", Box::new(|u| u.base_url = String::new())),
            ("serve.upstreams.code.base_url", Box::new(|u| u.base_url = "ftp://host/v1".into())),
            ("serve.upstreams.code.base_url", Box::new(|u| u.base_url = "127.0.0.1:8000".into())),
            ("serve.upstreams.code.base_url", Box::new(|u| u.base_url = "http://h/v1?x=1".into())),
            ("serve.upstreams.code.model", Box::new(|u| u.model = " ".into())),
            ("serve.upstreams.code.api_key_env", Box::new(|u| u.api_key_env = "A=B".into())),
            ("serve.upstreams.code.timeout_s", Box::new(|u| u.timeout_s = 0.0)),
            ("serve.upstreams.code.timeout_s", Box::new(|u| u.timeout_s = f64::NAN)),
        ];
        for (key, f) in cases {
            let e = upstream(f).expect_err(key).to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
        let e = with(|c| {
            c.upstreams.insert("mappo".into(), Upstream::default());
        })
        .expect_err("mappo is reserved")
        .to_string();
        assert!(e.contains("serve.upstreams.mappo"), "{e}");
    }
}
