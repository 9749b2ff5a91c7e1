//! mappo-client: HTTP clients of `mappo serve`.
//!
//! - [`Client`]: one service, `POST /v1/route` and `POST /v1/feedback`, with the API key; its
//!   answers are this crate's own types ([`RouteDecision`], [`FeedbackAck`]: what a client reads,
//!   checked against the real server by mappo-serve's tests).
//! - [`loadgen`]: a load generator for benchmarks (`cargo xtask bench-serve`): texts sent one
//!   per request at a fixed concurrency, throughput and latency percentiles.
//! - [`simulate`]: simulated users with label rewards (`mappo simulate`): route corpus texts and
//!   send the reward of the chosen agent back, after a delay or never.
//!
//! The crate depends on no model code and not on the server: HTTP (reqwest on tokio), JSON and
//! mappo-config's seeded RNG.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mappo_client::ClientError> {
//! use std::time::Duration;
//! let client = mappo_client::Client::new("http://127.0.0.1:8080", None, Duration::from_secs(30), 4)?;
//! let d = client.route("my invoice is wrong", false).await?;
//! println!("{} (p = {})", d.agent, d.propensity);
//! client.feedback(&d.decision_id, 1.0).await?;
//! # Ok(())
//! # }
//! ```

mod client;
pub mod conversations;
pub mod loadgen;
pub mod simulate;
mod wire;

pub use client::{Client, ClientError};
pub use conversations::{ConversationOptions, ConversationReport, simulate_conversations};
pub use loadgen::{LoadOptions, LoadReport, quantile, run_levels, run_load};
pub use simulate::{SimOptions, SimPrompt, SimReport, simulate};
pub use wire::{EpisodeEndAck, FeedbackAck, RouteDecision};
