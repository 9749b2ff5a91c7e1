//! Neural networks for mappo: the actor-critic policy, orthogonal
//! initialisation from the project's seeded RNG, and an Adam optimizer whose
//! moments are tensors that checkpoints can save.
//!
//! * [`Policy`] — the trait the trainer calls: a forward pass from a batch of
//!   observations to action logits and state values, and the policy's
//!   parameters split into the actor's and the critic's groups.
//! * [`ActorCritic`] — a shared ReLU MLP encoder (optionally preceded by a
//!   learned linear projection, e.g. 384→32 for sentence embeddings) with a
//!   policy head and a value head.
//! * [`Adam`] — Adam without weight decay, saveable state, fused with the
//!   global gradient-norm clip.
//! * [`sample_actions`] — categorical sampling with the seeded RNG.

mod adam;
mod floor;
mod init;
mod policy;

pub use adam::{Adam, AdamSettings, global_grad_norm};
pub use floor::floor_probabilities;
pub use init::orthogonal;
pub use policy::{
    ActorCritic, Linear, MASKED_LOGIT, NamedVar, NetworkLayout, Policy, PolicyOutput, Sampled,
    log_softmax_row, relu, sample_actions,
};

use thiserror::Error;

/// Errors of this crate.
#[derive(Debug, Error)]
pub enum NnError {
    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// Saved state does not fit the network or optimizer.
    #[error("state does not match: {0}")]
    StateMismatch(String),
    /// The network's shape cannot be built as asked.
    #[error("network shape: {0}")]
    Shape(String),
}
