//! mappo-train: PPO for prompt routing, as a library.
//!
//! The [`Trainer`] is generic over an environment ([`mappo_env::Env`]) and a
//! policy ([`mappo_nn::Policy`]); [`Trainer::run`] drives it with logging, periodic
//! greedy evaluation and checkpoints in a run directory; [`Checkpoint`] is
//! the self-describing file that `mappo eval` and `mappo route` read, and
//! [`RoutingPolicy`] the policy in it together with the layout of its input —
//! what every other crate runs. Evaluating and routing with a checkpoint
//! (corpus evaluation, quality–cost curves, calibration, the `Router`) is the
//! `mappo-eval` crate's.
//!
//! ```no_run
//! use mappo_config::Config;
//! let cfg = Config::load(None, &["train.total_updates=100".into()])?;
//! let mut setup = mappo_train::SyntheticSetup::new(&cfg)?;
//! let opts = mappo_train::RunOptions::new("runs/example").evaluator(&setup.evaluator);
//! let summary = setup.trainer.run(opts)?;
//! println!("{}", summary.final_checkpoint.display());
//! # Ok::<(), mappo_train::TrainError>(())
//! ```
//!
//! Your own environment: implement [`mappo_env::Env`] (and
//! [`mappo_env::KnownRewards`] for oracle baselines), build a policy
//! ([`mappo_nn::ActorCritic`]) and call [`Trainer::new`]; see
//! `examples/csv-bandit` in the repository. With `default-features = false`
//! this crate compiles no tokenizer and no BERT.

#![warn(missing_docs)]

mod checkpoint;
mod error;
mod eval;
mod loss;
pub mod metrics;
mod policy;
mod run;
mod setup;
#[cfg(feature = "text")]
mod text;
mod trainer;
mod value_norm;

// The crates a user of the library needs, so that one dependency is enough.
pub use candle_core;
pub use mappo_config as config;
pub use mappo_env as env;
pub use mappo_nn as nn;

pub use checkpoint::{Checkpoint, FORMAT};
pub use error::TrainError;
pub use eval::{
    EpisodeEvaluator, EpisodeReport, EvalReport, Evaluate, GreedyEvaluator, evaluate_episodes, greedy_actions,
};
pub use policy::{EpisodeShape, RoutingPolicy, network_layout};
pub use run::{NoObserver, Observer, RunOptions, RunSummary};
pub use setup::{PipelineSetup, SyntheticSetup, select_device};
#[cfg(feature = "text")]
pub use text::{CascadeSetup, ConversationSetup, TextSetup, cascade_data, conversation_env};
pub use trainer::{LoggedBatch, StepEnd, TrainSettings, Trainer, UpdateMetrics};
