//! Prometheus metrics of one server (its own registry: several servers in one process, as in
//! tests, never mix their figures).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of the per-request metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    /// `/v1/route`, `/v1/feedback`, `/healthz`, `/metrics`, `/openapi.json` or `other`.
    pub endpoint: String,
    /// The HTTP status code.
    pub status: String,
}

/// Labels of the per-endpoint latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EndpointLabels {
    /// As in [`RequestLabels`].
    pub endpoint: String,
}

/// Labels of the proxy's upstream calls.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct UpstreamLabels {
    /// The agent whose upstream was called.
    pub agent: String,
    /// `ok`, `timeout`, `connect` (cannot connect), `error` (another transport error),
    /// `status` (a non-2xx answer), `stream_error` (a streamed answer broke off),
    /// `unconfigured` (the agent has no `[serve.upstreams.<agent>]`).
    pub outcome: String,
}

/// Labels of the per-agent upstream latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AgentLabels {
    /// The agent whose upstream was called.
    pub agent: String,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric the service exports.
pub(crate) struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    pub batch_texts: Histogram,
    pub decisions_logged: Counter,
    pub rewards_joined: Counter,
    pub episodes_ended: Counter,
    pub policy_version: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub policy_switches: Counter,
    pub policy_load_failures: Counter,
    pub database_errors: Counter<u64, AtomicU64>,
    pub shadow_decisions: Counter,
    pub shadow_agreements: Counter,
    pub upstream_requests: Family<UpstreamLabels, Counter>,
    pub upstream_latency: Family<AgentLabels, Histogram, fn() -> Histogram>,
    pub connections_open: Gauge,
    pub connections_refused: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mappo");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests by endpoint and status", requests.clone());
        let latency = Family::<EndpointLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by endpoint",
            latency.clone(),
        );
        let batch_texts = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register("batch_texts", "Texts per embedding + policy forward pass", batch_texts.clone());
        let decisions_logged = Counter::default();
        registry.register("decisions_logged", "Decisions committed to the log", decisions_logged.clone());
        let rewards_joined = Counter::default();
        registry.register(
            "rewards_joined",
            "Rewards committed and joined to their decision",
            rewards_joined.clone(),
        );
        let episodes_ended = Counter::default();
        registry.register(
            "episodes_ended",
            "Episodes ended (with or without a reward)",
            episodes_ended.clone(),
        );
        let policy_version = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register("policy_version", "The policy version being served", policy_version.clone());
        let policy_switches = Counter::default();
        registry.register(
            "policy_switches",
            "Switches to a newly published policy version",
            policy_switches.clone(),
        );
        let policy_load_failures = Counter::default();
        registry.register(
            "policy_load_failures",
            "Published policy versions that could not be loaded",
            policy_load_failures.clone(),
        );
        let database_errors = Counter::default();
        registry.register("database_errors", "Decision log operations that failed", database_errors.clone());
        let shadow_decisions = Counter::default();
        registry.register(
            "shadow_decisions",
            "Decisions the shadow policy (serve.shadow) also scored",
            shadow_decisions.clone(),
        );
        let shadow_agreements = Counter::default();
        registry.register(
            "shadow_agreements",
            "Shadow-scored decisions where the shadow chose the served agent",
            shadow_agreements.clone(),
        );
        let upstream_requests = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "upstream_requests",
            "Calls of the proxy to an agent's upstream, by agent and outcome",
            upstream_requests.clone(),
        );
        let upstream_latency = Family::<AgentLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "upstream_duration_seconds",
            "Time until an upstream's response headers, by agent",
            upstream_latency.clone(),
        );
        let connections_open = Gauge::default();
        registry.register("connections_open", "HTTP connections open now", connections_open.clone());
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections answered 503 and closed because serve.max_connections were open",
            connections_refused.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            batch_texts,
            decisions_logged,
            rewards_joined,
            episodes_ended,
            policy_version,
            policy_switches,
            policy_load_failures,
            database_errors,
            shadow_decisions,
            shadow_agreements,
            upstream_requests,
            upstream_latency,
            connections_open,
            connections_refused,
        }
    }

    /// Counts one call of the proxy to `agent`'s upstream.
    pub fn observe_upstream(&self, agent: &str, outcome: &str) {
        self.upstream_requests
            .get_or_create(&UpstreamLabels { agent: agent.to_string(), outcome: outcome.to_string() })
            .inc();
    }

    /// Counts one request.
    pub fn observe_request(&self, endpoint: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels { endpoint: endpoint.to_string(), status: status.to_string() })
            .inc();
        self.latency.get_or_create(&EndpointLabels { endpoint: endpoint.to_string() }).observe(seconds);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
