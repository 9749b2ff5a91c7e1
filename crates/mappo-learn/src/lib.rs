//! mappo's learner from logged feedback.
//!
//! - [`ope`]: off-policy evaluation (IPS, SNIPS, DR with confidence intervals) of a candidate
//!   policy on logged decisions.
//! - [`learner`]: off-policy PPO from the decision log, with its state (watermark, optimizer,
//!   RNG) kept in the database.
//! - [`gate`]: the promotion gate between a trained candidate and the published version.
//!
//! It sits above `mappo-train` and `mappo-log` and below the CLI; it knows no HTTP.

pub mod error;
pub mod gate;
pub mod learner;
pub mod ope;

pub use error::LearnError;
