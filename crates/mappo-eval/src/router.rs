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
    /// The turn (1-based) when routed as a conversation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn: Option<usize>,
}

/// A loaded router: embedder and policy from a text checkpoint.
#[derive(Debug)]
pub struct Router {
    embedder: Embedder,
    policy: RoutingPolicy,
    /// A conversation checkpoint's turns per conversation.
    turns: usize,
}

impl Router {
    /// Loads the checkpoint and the embedder its config names.
    pub fn load(ckpt_path: &Path, device: &Device) -> Result<Self, EvalError> {
        let ckpt = Checkpoint::load(ckpt_path, device)?;
        let cfg = if ckpt.config.env.kind == mappo_config::EnvKind::Conversation {
            &ckpt.config
        } else {
            text_config(&ckpt, ckpt_path)?
        };
        let embedder = load_embedder(&cfg.env, device)?;
        let policy = RoutingPolicy::from_checkpoint(&ckpt, device)?;
        Ok(Self { embedder, policy, turns: cfg.env.turns })
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

    /// True for a conversation checkpoint: texts are routed as the turns of one conversation
    /// ([`Router::route_conversation`]).
    pub fn is_conversation(&self) -> bool {
        self.policy.spec().columns().contains(&mappo_env::Column::TurnsLeft)
    }

    /// Routes `texts` as the consecutive turns of one conversation of a conversation checkpoint:
    /// turn t sees its text, the agent chosen (greedily) at turn t − 1 and the share of the
    /// configured turns left (0 past the last).
    pub fn route_conversation(&self, texts: &[&str]) -> Result<Vec<Routed>, EvalError> {
        if !self.is_conversation() {
            return Err(EvalError::Setup("this router was not trained on conversations".into()));
        }
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let turns = self.turns.max(1);
        let emb = self.embedder.embed(texts).map_err(mappo_env::EnvError::from)?;
        let agents = self.policy.agents();
        let mut previous = None;
        let mut out = Vec::with_capacity(texts.len());
        for (t, (text, e)) in texts.iter().zip(&emb).enumerate() {
            let left = turns.saturating_sub(t + 1) as f32 / turns as f32;
            let extras = mappo_env::RowExtras {
                previous_agent: previous,
                turns_left: Some(left),
                ..mappo_env::RowExtras::default()
            };
            let row = self.policy.spec().row(e, extras).ok_or_else(|| {
                EvalError::Setup("a conversation turn does not fit the policy's input".into())
            })?;
            let obs =
                candle_core::Tensor::from_vec(row, (1, self.policy.spec().width()), self.policy.device())?;
            let p = self.policy.probabilities(&obs)?.into_iter().next().unwrap_or_default();
            let i = mappo_env::argmax(&p);
            previous = Some(i as u32);
            out.push(Routed {
                text: text.to_string(),
                agent_index: i,
                agent: agents.get(i).cloned().unwrap_or_default(),
                probabilities: p,
                turn: Some(t + 1),
            });
        }
        Ok(out)
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
                Routed {
                    text: t.to_string(),
                    agent_index: i,
                    agent: agents[i].clone(),
                    probabilities: p,
                    turn: None,
                }
            })
            .collect())
    }
}
