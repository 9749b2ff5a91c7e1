//! A small load generator for benchmarks (`cargo xtask bench-serve`): sends texts one per
//! request to `POST /v1/route` at a fixed concurrency and reports throughput and latency
//! percentiles.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::client::{Client, ClientError};

/// How to load a server.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The server, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Sent as `Authorization: Bearer KEY` when set.
    pub api_key: Option<String>,
    /// Ask for greedy decisions.
    pub greedy: bool,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl LoadOptions {
    /// `concurrency` requests at a time against `base_url`, sampled decisions, 30 s timeout.
    pub fn new(base_url: impl Into<String>, concurrency: usize) -> Self {
        Self {
            base_url: base_url.into(),
            concurrency,
            api_key: None,
            greedy: false,
            timeout: Duration::from_secs(30),
        }
    }
}

/// What a load run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Requests sent (one text each).
    pub requests: usize,
    /// Requests that did not get a 200 (status or transport error).
    pub failed: usize,
    /// Wall-clock seconds of the whole run.
    pub seconds: f64,
    /// Routed texts (200s) per second.
    pub texts_per_s: f64,
    /// Median latency of the 200s, milliseconds.
    pub p50_ms: f64,
    /// 99th-percentile latency of the 200s, milliseconds.
    pub p99_ms: f64,
    /// Answers by status code (0 = no answer: connection or timeout error).
    pub statuses: BTreeMap<u16, usize>,
}

/// The `q`-quantile (0..=1) of sorted values, nearest rank; 0 when empty.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sends every text once, `opts.concurrency` at a time, to `POST /v1/route`.
pub async fn run_load(texts: &[String], opts: &LoadOptions) -> Result<LoadReport, ClientError> {
    let client = Client::new(&opts.base_url, opts.api_key.clone(), opts.timeout, opts.concurrency.max(1))?;
    let url = client.url("/v1/route");
    // The bodies are serialized before the clock starts.
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        texts
            .iter()
            .map(|t| {
                serde_json::to_vec(&serde_json::json!({"text": t, "greedy": opts.greedy})).unwrap_or_default()
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..opts.concurrency.max(1) {
        let (client, url, bodies, next) = (client.clone(), url.clone(), bodies.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let s = Instant::now();
                let status = match client.post(&url, body.clone()).send().await {
                    Ok(r) => {
                        let code = r.status().as_u16();
                        // Read the body so the connection can be reused.
                        let _ = r.bytes().await;
                        code
                    }
                    Err(_) => 0,
                };
                if status == 200 {
                    lat.push(s.elapsed().as_secs_f64() * 1000.0);
                }
                *statuses.entry(status).or_default() += 1;
            }
            (lat, statuses)
        }));
    }
    let mut lat = Vec::new();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for w in workers {
        if let Ok((l, s)) = w.await {
            lat.extend(l);
            for (k, v) in s {
                *statuses.entry(k).or_default() += v;
            }
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let ok = lat.len();
    Ok(LoadReport {
        concurrency: opts.concurrency,
        requests: texts.len(),
        failed: texts.len() - ok,
        seconds,
        texts_per_s: if seconds > 0.0 { ok as f64 / seconds } else { 0.0 },
        p50_ms: quantile(&lat, 0.5),
        p99_ms: quantile(&lat, 0.99),
        statuses,
    })
}

/// Texts of the warm-up before [`run_levels`] measures (the first batches pay for allocation).
pub const WARM_UP_TEXTS: usize = 64;

/// Warms the server up (the first [`WARM_UP_TEXTS`] texts at concurrency 4, not reported),
/// then sends every text once at each of `concurrencies` in turn; one report each, in order.
/// `opts.concurrency` is ignored.
pub async fn run_levels(
    texts: &[String],
    opts: &LoadOptions,
    concurrencies: &[usize],
) -> Result<Vec<LoadReport>, ClientError> {
    let warm = LoadOptions { concurrency: 4, ..opts.clone() };
    run_load(&texts[..texts.len().min(WARM_UP_TEXTS)], &warm).await?;
    let mut out = Vec::with_capacity(concurrencies.len());
    for &c in concurrencies {
        out.push(run_load(texts, &LoadOptions { concurrency: c, ..opts.clone() }).await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
    }
}
