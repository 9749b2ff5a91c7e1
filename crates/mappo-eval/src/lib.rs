//! mappo-eval: what you do with a trained router besides training it — evaluate it, calibrate
//! it, route with it.
//!
//! * [`evaluate_corpus`] / [`evaluate_corpus_with`]: greedy routing of a corpus by a text
//!   checkpoint, scored by its reward model, by label (accuracy, per-agent precision/recall,
//!   the confusion matrix) and, on an outcome corpus (every agent's quality known per prompt),
//!   by the quality–cost curve, APGR and CPT ([`curve`]) beside the full-information
//!   [`RidgeRouter`] baseline; [`evaluate_synthetic`] for a synthetic-env checkpoint.
//! * [`calibrate`]: the cost weight λ at which a cost-aware router meets a budget.
//! * [`Router`]: a checkpoint and its embedder, routing texts; [`PipelineRouter`]: a pipeline
//!   checkpoint routing prompt vectors through its stages.
//! * [`ridge`]: the one ridge-regression solver (the baseline's, and off-policy evaluation's
//!   reward model in `mappo-learn`).
//!
//! Every policy is run through [`mappo_train::RoutingPolicy`], so evaluation scores exactly the
//! choices `mappo route` and `mappo serve` make.
//!
//! ```no_run
//! use std::path::Path;
//! let device = mappo_train::candle_core::Device::Cpu;
//! let router = mappo_eval::Router::load(Path::new("runs/prompts/checkpoints/update-0000200.safetensors"), &device)?;
//! for r in router.route(&["my parcel never arrived"])? {
//!     println!("{} → {} ({:.2})", r.text, r.agent, r.probabilities[r.agent_index]);
//! }
//! # Ok::<(), mappo_eval::EvalError>(())
//! ```

#![warn(missing_docs)]

mod baseline;
mod calibrate;
mod corpus;
pub mod curve;
mod episodes;
mod error;
mod pipeline;
pub mod ridge;
mod router;

pub use baseline::{RIDGE_ALPHAS, RidgeRouter};
pub use calibrate::{Budget, Calibration, calibrate};
pub use corpus::{
    AgentScore, BaselineReport, CorpusEvalOptions, CorpusReport, RoutingReport, evaluate_corpus,
    evaluate_corpus_with, evaluate_synthetic,
};
pub use curve::{CurvePoint, CurveSummary, OutcomeTable, SingleAgent};
pub use episodes::{CascadeReport, evaluate_cascade, evaluate_conversation, evaluate_pipeline};
pub use error::EvalError;
pub use mappo_env::text::EmbedProgress;
pub use pipeline::{PipelineRoute, PipelineRouter, StageChoice};
pub use router::{Routed, Router};
