//! mappo-serve: the routing service behind `mappo serve`.
//!
//! `POST /v1/route` embeds prompts (all-MiniLM-L6-v2), runs the policy, floors every agent's
//! probability at `serve.min_prob`, **samples** the agent with a seeded RNG (or takes the argmax
//! for `"greedy": true`), commits each decision with its propensity and embedding to the
//! decision log ([`mappo_log`]) and only then answers. `POST /v1/feedback` joins a reward to a
//! decision. `POST /v1/chat/completions` is an OpenAI-compatible proxy: it routes the
//! conversation's last user message the same way and forwards the request to the chosen agent's
//! upstream (`[serve.upstreams.<agent>]`), streaming included; `GET /v1/models` lists `mappo`
//! and the agents. `GET /healthz`, `GET /metrics` (Prometheus) and `GET /openapi.json` complete
//! it.
//!
//! Concurrent requests are batched dynamically on a dedicated model thread (one embedding and one
//! policy forward pass per batch, never on the async executor). Policy versions live in the
//! database: every replica polls the newest version and switches to it between batches.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mappo_serve::ServeError> {
//! let cfg = mappo_config::Config::load(None, &[])?;
//! let mut opts = mappo_serve::ServeOptions::new("sqlite:runs/serve/mappo.db", cfg);
//! opts.checkpoint = Some("runs/prompts/checkpoints/update-0000300.safetensors".into());
//! let server = mappo_serve::Server::start(opts).await?;
//! eprintln!("listening on http://{}", server.local_addr());
//! server.run_until(mappo_serve::shutdown_signal()).await
//! # }
//! ```
//!
//! HTTP clients of the service (the load generator, simulated users) are in `mappo-client`.
//!
//! # Modules
//!
//! Dependencies point one way, top to bottom (`tests/module_cycles.rs` keeps the modules free
//! of cycles); this file only declares them and re-exports the public API.
//!
//! - `server`: [`Server`] and [`ServeOptions`]: start-up, the policy watcher, shutdown.
//! - `router`: the axum router and its middleware (API keys, metrics, body limits, caught
//!   panics, the JSON 404) and the OpenAPI document ([`ApiDoc`]).
//! - `handlers`: one module per endpoint group — `route`, `feedback`, `chat` (the proxy's
//!   `/v1/chat/completions` and `/v1/models`), `ops` (`/healthz`, `/metrics`,
//!   `/openapi.json`) — with their request and response types.
//! - `decide`: the one "decide and log" step of `/v1/route` and the proxy: check the texts,
//!   route them through the model thread, build and commit the decisions.
//! - `state`: what the handlers share (`AppState`) and the decision log's error mapping.
//! - `ui`: `GET /ui`, the dashboard: one HTML page with inline SVG charts drawn from the
//!   decision log.
//! - `upstream`: the proxy's upstream calls (one HTTP client per agent, SSE pass-through).
//! - `error`: [`ServeError`], the request errors and their JSON body ([`ErrorBody`]).
//! - `engine`: the batching queue and the model thread; `metrics`: Prometheus; `auth`: API
//!   keys; [`model`]: the crate's only contact with model code.

mod auth;
mod decide;
mod engine;
mod error;
mod handlers;
mod limits;
mod metrics;
pub mod model;
mod router;
mod server;
mod state;
mod ui;
mod upstream;

pub use auth::ApiKeys;
pub use engine::floor_probabilities;
pub use error::{ErrorBody, ServeError};
pub use handlers::chat::{
    AGENT_HEADER, ChatCompletionRequest, ChatMessage, DECISION_HEADER, MappoOptions, ModelEntry, ModelList,
    ROUTER_MODEL,
};
pub use handlers::feedback::{FeedbackRequest, FeedbackResponse};
pub use handlers::ops::HealthResponse;
pub use handlers::route::{RouteBatchResponse, RouteDecision, RouteRequest, RouteResponse};
pub use model::{CandleLoader, ModelError, ModelLoader, PolicyModel, TextEmbedder};
pub use router::{ApiDoc, openapi_json, openapi_json_for};
pub use server::{ServeOptions, Server, serve, shutdown_signal};
