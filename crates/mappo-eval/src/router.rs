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
    /// The stage decided, for a multi-stage policy (a cascade's `first` or `escalation`);
    /// `agent` and `probabilities` are then that stage's options.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
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
        let kind = ckpt.config.env.kind;
        let cfg = if matches!(kind, mappo_config::EnvKind::Conversation | mappo_config::EnvKind::Cascade) {
            &ckpt.config
        } else {
            text_config(&ckpt, ckpt_path)?
        };
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

    /// True for a conversation checkpoint: texts are routed as the turns of one conversation
    /// ([`Router::route_conversation`]).
    pub fn is_conversation(&self) -> bool {
        matches!(self.policy.episode(), mappo_train::EpisodeShape::Conversation { .. })
    }

    /// True for a cascade checkpoint: a prompt is routed to a first agent, and that agent's
    /// answer decides whether to escalate ([`Router::route_cascade`]).
    pub fn is_cascade(&self) -> bool {
        matches!(self.policy.episode(), mappo_train::EpisodeShape::Cascade { .. })
    }

    /// The names of the options of `r`'s stage (the agents for a one-stage router).
    pub fn options_of(&self, r: &Routed) -> &[String] {
        let p = &self.policy;
        r.stage
            .as_ref()
            .and_then(|s| p.stage_names().iter().position(|n| n == s))
            .and_then(|i| p.stage_agents().get(i))
            .map_or(p.agents(), Vec::as_slice)
    }

    /// The greedy decisions of a cascade checkpoint for `text` at cost weight λ: the first agent;
    /// then, when `response` (that agent's answer) is given and the first agent is not the
    /// strongest, whether to accept the answer or escalate to the strongest agent.
    pub fn route_cascade(
        &self,
        text: &str,
        response: Option<&str>,
        cost_weight: f64,
    ) -> Result<Vec<Routed>, EvalError> {
        if !self.is_cascade() {
            return Err(EvalError::Setup("this router was not trained as a cascade".into()));
        }
        let emb = self.embedder.embed(&[text]).map_err(mappo_env::EnvError::from)?;
        let prompt = emb.first().ok_or_else(|| EvalError::Setup("no embedding came back".into()))?;
        let first = self.step(text, prompt, cost_weight as f32, &[], None)?;
        let earlier = [first.agent_index as u32];
        let mut out = vec![first];
        if let Some(answer) = response
            && self.policy.next_stage(&earlier).is_ok()
        {
            let answer = self.embedder.embed(&[answer]).map_err(mappo_env::EnvError::from)?;
            out.push(self.step(
                text,
                prompt,
                cost_weight as f32,
                &earlier,
                answer.first().map(Vec::as_slice),
            )?);
        }
        Ok(out)
    }

    /// The greedy decision of the step after `earlier` in an episode (see
    /// [`RoutingPolicy::step_row`]).
    fn step(
        &self,
        text: &str,
        embedding: &[f32],
        cost_weight: f32,
        earlier: &[u32],
        response: Option<&[f32]>,
    ) -> Result<Routed, EvalError> {
        let p = &self.policy;
        let row = p.step_row(embedding, cost_weight, earlier, response)?;
        let probabilities = p.step_probabilities(row, &[earlier])?.into_iter().next().unwrap_or_default();
        let stage = p.next_stage(earlier).map_err(EvalError::Setup)?;
        let i = mappo_env::argmax(&probabilities);
        let multi = p.stage_names().len() > 1;
        Ok(Routed {
            text: text.to_string(),
            agent_index: i,
            agent: p.stage_agents().get(stage).and_then(|o| o.get(i)).cloned().unwrap_or_default(),
            probabilities,
            turn: None,
            stage: multi.then(|| p.stage_names().get(stage).cloned()).flatten(),
        })
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
        let emb = self.embedder.embed(texts).map_err(mappo_env::EnvError::from)?;
        let mut earlier = Vec::with_capacity(texts.len());
        let mut out = Vec::with_capacity(texts.len());
        for (t, (text, e)) in texts.iter().zip(&emb).enumerate() {
            let mut r = self.step(text, e, 0.0, &earlier, None)?;
            r.turn = Some(t + 1);
            earlier.push(r.agent_index as u32);
            out.push(r);
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
                    stage: None,
                }
            })
            .collect())
    }
}
