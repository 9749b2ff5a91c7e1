//! [`Client`]: the service's base URL, an HTTP client and the API key.

use std::time::Duration;

use crate::wire::{EpisodeEndAck, ErrorAnswer, FeedbackAck, RouteDecision};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The HTTP client cannot be built (e.g. no TLS backend).
    #[error("cannot build the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
    /// The options cannot be used (e.g. no server to talk to).
    #[error("{0}")]
    Setup(String),
    /// No answer: the connection failed or timed out.
    #[error("{url}: {source}")]
    Transport {
        /// The endpoint.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The service answered with an error status.
    #[error("{url} answered {status}: {message}")]
    Status {
        /// The endpoint.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The service's `{"error": ...}` message (or the body, when it is not one).
        message: String,
    },
    /// A 2xx answer that is not what the endpoint answers.
    #[error("{url}: unexpected answer: {source}")]
    Decode {
        /// The endpoint.
        url: String,
        /// Why it does not decode.
        #[source]
        source: reqwest::Error,
    },
}

impl ClientError {
    /// The HTTP status of an error answer, if there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client of one `mappo serve` (cheap to clone: clones share connections).
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    api_key: Option<String>,
}

impl Client {
    /// A client of the service at `base_url` (e.g. `http://127.0.0.1:8080`), sending
    /// `Authorization: Bearer KEY` when `api_key` is set, with a per-request `timeout`, keeping
    /// up to `idle` connections open for reuse.
    pub fn new(
        base_url: impl Into<String>,
        api_key: Option<String>,
        timeout: Duration,
        idle: usize,
    ) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(idle)
            .build()
            .map_err(ClientError::Build)?;
        let base = base_url.into().trim_end_matches('/').to_string();
        Ok(Self { http, base, api_key })
    }

    /// The full URL of `path` (`/v1/route`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A POST of a JSON `body` to `url`, with the API key.
    pub(crate) fn post(&self, url: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
        let req = self.http.post(url).header("content-type", "application/json").body(body);
        match &self.api_key {
            Some(k) => req.bearer_auth(k),
            None => req,
        }
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        let resp = self
            .post(&url, body.to_string().into_bytes())
            .send()
            .await
            .map_err(|source| ClientError::Transport { url: url.clone(), source })?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let message = serde_json::from_str::<ErrorAnswer>(&text).map_or(text, |e| e.error);
            return Err(ClientError::Status { url, status: status.as_u16(), message });
        }
        resp.json().await.map_err(|source| ClientError::Decode { url, source })
    }

    /// `POST /v1/route` with one text: the decision (sampled, or the argmax when `greedy`).
    pub async fn route(&self, text: &str, greedy: bool) -> Result<RouteDecision, ClientError> {
        self.call("/v1/route", serde_json::json!({"text": text, "greedy": greedy})).await
    }

    /// `POST /v1/feedback`: the reward of a decision.
    pub async fn feedback(&self, decision_id: &str, reward: f64) -> Result<FeedbackAck, ClientError> {
        self.call("/v1/feedback", serde_json::json!({"decision_id": decision_id, "reward": reward})).await
    }

    /// `POST /v1/route` with one text as the next step of episode `episode_id` (a conversation's
    /// next turn): the decision (sampled).
    pub async fn route_step(&self, text: &str, episode_id: &str) -> Result<RouteDecision, ClientError> {
        self.call("/v1/route", serde_json::json!({"text": text, "episode_id": episode_id})).await
    }

    /// `POST /v1/feedback` that ends episode `episode_id`, with its reward as a whole or none.
    pub async fn end_episode(
        &self,
        episode_id: &str,
        reward: Option<f64>,
    ) -> Result<EpisodeEndAck, ClientError> {
        let mut body = serde_json::json!({"episode_id": episode_id, "end": true});
        if let Some(r) = reward {
            body["reward"] = r.into();
        }
        self.call("/v1/feedback", body).await
    }
}
