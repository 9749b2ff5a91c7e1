//! mappo's learner from logged feedback.
//!
//! - [`events`]: [`LoggedEvent`], one logged decision with its reward, from the database
//!   ([`mappo_log::JoinedEvent`]) or an exported log ([`read_export_jsonl`]).
//! - [`ope`]: off-policy evaluation (IPS, SNIPS, DR with confidence intervals) of a candidate
//!   policy on logged decisions.
//! - [`learner`]: off-policy PPO from the decision log, with its state (watermark, optimizer,
//!   RNG) kept in the database.
//! - [`gate`]: the promotion gate between a trained candidate and the published version.
//!
//! It sits above `mappo-train` and `mappo-log` and below the CLI; it knows no HTTP.

pub mod episode_ope;
pub mod error;
pub mod events;
pub mod gate;
pub mod learner;
pub mod ope;

pub use error::LearnError;
pub use events::{LoggedEvent, embed_texts, read_export, read_export_jsonl};
