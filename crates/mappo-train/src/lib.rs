//! mappo-train: PPO for prompt routing, as a library.
//!
//! The [`Trainer`] is generic over an environment ([`mappo_env::Env`]) and a
//! policy ([`mappo_nn::Policy`]); [`run`] drives it with logging, periodic
//! greedy evaluation and checkpoints in a run directory; [`Checkpoint`] is
//! the self-describing file that `mappo eval` and `mappo route` read.
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

mod checkpoint;
mod error;
mod eval;
mod loss;
mod routing;
mod run;
mod setup;
#[cfg(feature = "text")]
mod text;
mod trainer;

// The crates a user of the library needs, so that one dependency is enough.
pub use candle_core;
pub use mappo_config as config;
pub use mappo_env as env;
pub use mappo_nn as nn;

pub use checkpoint::{Checkpoint, FORMAT, checkpoint_name, latest_valid_checkpoint, list_checkpoints};
pub use error::TrainError;
pub use eval::{EvalReport, GreedyEvaluator, evaluate_checkpoint_synthetic, greedy_actions};
pub use loss::LossStats;
#[cfg(feature = "text")]
pub use mappo_env::text::EmbedProgress;
pub use routing::{
    CurvePoint, CurveSummary, OutcomeTable, RIDGE_ALPHAS, RidgeRouter, SingleAgent, area, choose_by_scores,
    cpt, pgr_curve, score_sweep,
};
pub use run::{NoObserver, Observer, RunOptions, RunSummary};
pub use setup::{SyntheticSetup, select_device};
#[cfg(feature = "text")]
pub use text::{
    AgentScore, BaselineReport, Budget, Calibration, CorpusEvalOptions, CorpusReport, Routed, Router,
    RoutingReport, TextSetup, calibrate, evaluate_corpus, evaluate_corpus_with,
};
pub use trainer::{LoggedBatch, TrainSettings, Trainer, UpdateMetrics, explained_variance};
