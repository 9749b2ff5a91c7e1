//! Routing texts with a text checkpoint: [`Router`].

use std::path::Path;

use candle_core::Device;
use mappo_env::embed::Embedder;
use mappo_env::text::load_embedder;
use mappo_train::{Checkpoint, RoutingPolicy};
use serde::Serialize;

use crate::EvalError;
use crate::corpus::text_config;

/// One routed text.
#[derive(Debug, Clone, Serialize)]
pub struct Routed {
    /// The text.
    pub text: String,
    /// Chosen agent's index (the most probable).
    pub agent_index: usize,
    /// Chosen agent's name.
    pub agent: String,
    /// π(agent | text) for every agent, in index order.
    pub probabilities: Vec<f32>,
}

/// A loaded router: embedder and policy from a text checkpoint.
#[derive(Debug)]
pub struct Router {
    embedder: Embedder,
    policy: RoutingPolicy,
}

impl Router {
    /// Loads the checkpoint and the embedder its config names.
    pub fn load(ckpt_path: &Path, device: &Device) -> Result<Self, EvalError> {
        let ckpt = Checkpoint::load(ckpt_path, device)?;
        let cfg = text_config(&ckpt, ckpt_path)?;
        let embedder = load_embedder(&cfg.env, device)?;
        let policy = RoutingPolicy::from_checkpoint(&ckpt, device)?;
        Ok(Self { embedder, policy })
    }

    /// The agents' names.
    pub fn agents(&self) -> &[String] {
        self.policy.agents()
    }

    /// True when the router takes a cost weight λ (its agents have costs).
    pub fn cost_aware(&self) -> bool {
        self.policy.cost_aware()
    }

    /// The policy it routes with.
    pub fn policy(&self) -> &RoutingPolicy {
        &self.policy
    }

    /// Routes texts: one forward pass for all of them (a cost-aware router at λ = 0).
    pub fn route(&self, texts: &[&str]) -> Result<Vec<Routed>, EvalError> {
        self.route_at(texts, 0.0)
    }

    /// Routes texts at cost weight `cost_weight` (ignored by a router without costs).
    pub fn route_at(&self, texts: &[&str], cost_weight: f64) -> Result<Vec<Routed>, EvalError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let emb = self.embedder.embed_tensor(texts).map_err(mappo_env::EnvError::from)?;
        let obs = self.policy.observe(&emb, &vec![cost_weight as f32; texts.len()])?;
        let probs = self.policy.probabilities(&obs)?;
        let agents = self.policy.agents();
        Ok(texts
            .iter()
            .zip(probs)
            .map(|(t, p)| {
                let i = mappo_env::argmax(&p);
                Routed { text: t.to_string(), agent_index: i, agent: agents[i].clone(), probabilities: p }
            })
            .collect())
    }
}
