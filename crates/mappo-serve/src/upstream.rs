//! The proxy's upstreams: one HTTP client per agent (`[serve.upstreams.<agent>]`), and the
//! call itself — a JSON answer passed on whole, or server-sent events passed through chunk by
//! chunk as they arrive. A failed call (unreachable, timed out, non-2xx) becomes a 502 whose
//! message says what happened; every outcome is counted per agent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures_util::TryStreamExt;
use mappo_config::{ConfigError, Upstream};
use uuid::Uuid;

use crate::error::{ApiError, ServeError};
use crate::metrics::{AgentLabels, Metrics};

/// Most bytes of an upstream's error answer quoted in the 502's message.
const QUOTED_ERROR_BYTES: usize = 2000;

/// One agent's upstream, ready to call.
pub(crate) struct Target {
    url: String,
    model: String,
    api_key: Option<String>,
    timeout: Duration,
    client: reqwest::Client,
}

/// Every configured upstream, by agent name.
#[derive(Default)]
pub(crate) struct Upstreams {
    targets: BTreeMap<String, Target>,
}

impl Upstreams {
    /// Builds the clients and reads the API keys from their environment variables (an unset
    /// variable is an error naming the key).
    pub fn from_config(cfg: &BTreeMap<String, Upstream>) -> Result<Self, ServeError> {
        let mut targets = BTreeMap::new();
        for (agent, u) in cfg {
            u.validate(agent)?;
            let api_key = if u.api_key_env.is_empty() {
                None
            } else {
                match std::env::var(&u.api_key_env) {
                    Ok(k) if !k.trim().is_empty() => Some(k.trim().to_string()),
                    _ => {
                        return Err(ServeError::Config(ConfigError::Invalid {
                            key: format!("serve.upstreams.{agent}.api_key_env"),
                            message: format!(
                                "the environment variable {} is not set (or empty): export the \
                                 upstream's API key there, or set api_key_env = \"\" for none",
                                u.api_key_env
                            ),
                        }));
                    }
                }
            };
            let timeout = Duration::from_secs_f64(u.timeout_s);
            // The read timeout bounds the wait between two chunks of a streamed answer; a
            // non-streaming call also has a total deadline (set per request).
            let client = reqwest::Client::builder()
                .connect_timeout(timeout)
                .read_timeout(timeout)
                .build()
                .map_err(|e| ServeError::Io(std::io::Error::other(format!("the HTTP client: {e}"))))?;
            let url = format!("{}/chat/completions", u.base_url.trim_end_matches('/'));
            targets.insert(agent.clone(), Target { url, model: u.model.clone(), api_key, timeout, client });
        }
        Ok(Self { targets })
    }

    /// Checks that every upstream is named after one of `agents` (the served policy's); warns
    /// about agents without an upstream.
    pub fn check_agents(&self, agents: &[String], version: i64) -> Result<(), ServeError> {
        if let Some(name) = self.targets.keys().find(|n| !agents.contains(n)) {
            return Err(ServeError::Config(ConfigError::Invalid {
                key: format!("serve.upstreams.{name}"),
                message: format!(
                    "`{name}` is not an agent of the served policy (version {version}; agents: {}): \
                     name each table after an agent",
                    agents.join(", ")
                ),
            }));
        }
        if !self.targets.is_empty() {
            let missing: Vec<&str> =
                agents.iter().filter(|a| !self.targets.contains_key(*a)).map(String::as_str).collect();
            if !missing.is_empty() {
                tracing::warn!(
                    agents = missing.join(", "),
                    "agents without a [serve.upstreams.<agent>] table: /v1/chat/completions answers 503 \
                     when they are chosen"
                );
            }
        }
        Ok(())
    }

    /// The upstream of `agent`, if it has one.
    pub fn get(&self, agent: &str) -> Option<&Target> {
        self.targets.get(agent)
    }
}

/// The cause chain of an error, on one line (reqwest's own message is terse).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let more = c.to_string();
        if !s.contains(&more) {
            s.push_str(": ");
            s.push_str(&more);
        }
        cur = c.source();
    }
    s
}

impl Target {
    /// The upstream's name for the model (what `"model"` becomes before forwarding).
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Posts `body` (a chat completion request, JSON) for `agent`'s `decision` and answers with
    /// the upstream's status, content type and body (streamed through when `stream`). A call
    /// that fails is counted, logged and answered as a 502 naming the upstream.
    pub async fn forward(
        &self,
        agent: &str,
        decision: Uuid,
        body: Vec<u8>,
        stream: bool,
        metrics: &Arc<Metrics>,
    ) -> Result<Response, ApiError> {
        let mut call =
            self.client.post(&self.url).header(header::CONTENT_TYPE, "application/json").body(body);
        if stream {
            call = call.header(header::ACCEPT, "text/event-stream");
        } else {
            call = call.timeout(self.timeout);
        }
        if let Some(k) = &self.api_key {
            call = call.bearer_auth(k);
        }
        let failed = |outcome: &str, message: String| -> ApiError {
            metrics.observe_upstream(agent, outcome);
            tracing::warn!(agent = %agent, decision = %decision, outcome, error = %message, "the upstream failed");
            ApiError::new(StatusCode::BAD_GATEWAY, message)
        };
        let who = format!("the upstream of agent `{agent}` ({})", self.url);
        let t0 = Instant::now();
        let resp = match tokio::time::timeout(self.timeout, call.send()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) if !e.is_timeout() => {
                let outcome = if e.is_connect() { "connect" } else { "error" };
                return Err(failed(outcome, format!("{who} failed: {}", chain(&e))));
            }
            Ok(Err(_)) | Err(_) => {
                return Err(failed(
                    "timeout",
                    format!(
                        "{who} did not answer within {} s (serve.upstreams.{agent}.timeout_s)",
                        self.timeout.as_secs_f64(),
                    ),
                ));
            }
        };
        metrics
            .upstream_latency
            .get_or_create(&AgentLabels { agent: agent.to_string() })
            .observe(t0.elapsed().as_secs_f64());
        let status = resp.status();
        let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
        if !status.is_success() {
            // Quote the beginning of the upstream's error (it says what was wrong: a bad key, a
            // rate limit, an unknown model).
            let mut resp = resp;
            let mut quoted = Vec::new();
            while quoted.len() < QUOTED_ERROR_BYTES {
                match resp.chunk().await {
                    Ok(Some(c)) => quoted.extend_from_slice(&c),
                    _ => break,
                }
            }
            quoted.truncate(QUOTED_ERROR_BYTES);
            let quoted = String::from_utf8_lossy(&quoted);
            return Err(failed("status", format!("{who} answered {status}: {}", quoted.trim())));
        }
        let mut r = if stream {
            // Passed through chunk by chunk: nothing is buffered. A stream that breaks off ends
            // the client's response early (counted and logged).
            let (metrics, agent) = (metrics.clone(), agent.to_string());
            let body = resp.bytes_stream().inspect_err(move |e| {
                metrics.observe_upstream(&agent, "stream_error");
                tracing::warn!(agent = %agent, decision = %decision, error = %chain(e), "the upstream's stream broke off");
            });
            let mut r = Response::new(Body::from_stream(body));
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                content_type.unwrap_or_else(|| HeaderValue::from_static("text/event-stream")),
            );
            r
        } else {
            let bytes = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    let outcome = if e.is_timeout() { "timeout" } else { "error" };
                    return Err(failed(outcome, format!("{who}: reading the answer failed: {}", chain(&e))));
                }
            };
            let mut r = Response::new(Body::from(bytes));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                content_type.unwrap_or_else(|| HeaderValue::from_static("application/json")),
            );
            r
        };
        metrics.observe_upstream(agent, "ok");
        *r.status_mut() = status;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_name_agents_and_need_their_key_variable() {
        let mut cfg = BTreeMap::new();
        cfg.insert(
            "code".to_string(),
            Upstream { base_url: "http://127.0.0.1:9/v1/".into(), model: "m".into(), ..Upstream::default() },
        );
        let u = Upstreams::from_config(&cfg).expect("valid");
        assert_eq!(u.targets["code"].url, "http://127.0.0.1:9/v1/chat/completions");
        let agents = vec!["code".to_string(), "math".to_string()];
        u.check_agents(&agents, 1).expect("code is an agent");
        let e = u.check_agents(&["math".to_string()], 3).expect_err("not an agent").to_string();
        assert!(e.contains("serve.upstreams.code") && e.contains("version 3") && e.contains("math"), "{e}");
        if let Some(u) = cfg.get_mut("code") {
            u.api_key_env = "MAPPO_TEST_SURELY_UNSET_VARIABLE_4711".into();
        }
        let e = Upstreams::from_config(&cfg).err().expect("unset key variable").to_string();
        assert!(
            e.contains("serve.upstreams.code.api_key_env")
                && e.contains("MAPPO_TEST_SURELY_UNSET_VARIABLE_4711"),
            "{e}"
        );
    }
}
