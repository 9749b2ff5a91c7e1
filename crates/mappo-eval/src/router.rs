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
    /// A conversation checkpoint's turns per conversation.
    turns: usize,
    /// A cascade checkpoint's rules (which agent is escalated to).
    cascade: Option<mappo_env::CascadeRules>,
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
        let cascade =
            (kind == mappo_config::EnvKind::Cascade).then(|| mappo_env::CascadeRules::new(&cfg.env));
        Ok(Self { embedder, policy, turns: cfg.env.turns, cascade })
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

    /// True for a cascade checkpoint: a prompt is routed to a first agent, and that agent's
    /// answer decides whether to escalate ([`Router::route_cascade`]).
    pub fn is_cascade(&self) -> bool {
        self.cascade.is_some()
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
        let Some(rules) = &self.cascade else {
            return Err(EvalError::Setup("this router was not trained as a cascade".into()));
        };
        let stages = self.policy.stage_agents();
        let names = self.policy.stage_names();
        let emb = self.embedder.embed(&[text]).map_err(mappo_env::EnvError::from)?;
        let prompt = emb.first().ok_or_else(|| EvalError::Setup("no embedding came back".into()))?;
        let lambda = cost_weight as f32;
        let decide = |step: usize, extras: mappo_env::RowExtras<'_>| -> Result<Routed, EvalError> {
            let row =
                self.policy.spec().row(prompt, extras).ok_or_else(|| {
                    EvalError::Setup("a cascade step does not fit the policy's input".into())
                })?;
            let obs =
                candle_core::Tensor::from_vec(row, (1, self.policy.spec().width()), self.policy.device())?;
            let options = stages.get(step).map_or(0, Vec::len);
            let mut p = self.policy.probabilities(&obs)?.into_iter().next().unwrap_or_default();
            p.truncate(options);
            let i = mappo_env::argmax(&p);
            Ok(Routed {
                text: text.to_string(),
                agent_index: i,
                agent: stages.get(step).and_then(|o| o.get(i)).cloned().unwrap_or_default(),
                probabilities: p,
                turn: None,
                stage: names.get(step).cloned(),
            })
        };
        let first = decide(
            0,
            mappo_env::RowExtras { cost_weight: Some(lambda), stage: Some(0), ..Default::default() },
        )?;
        let mut out = vec![first];
        if let Some(answer) = response
            && out[0].agent_index != rules.strong
        {
            let answer = self.embedder.embed(&[answer]).map_err(mappo_env::EnvError::from)?;
            let choices = [out[0].agent_index as u32];
            let second = decide(
                1,
                mappo_env::RowExtras {
                    cost_weight: Some(lambda),
                    stage: Some(1),
                    choices: &choices,
                    response: answer.first().map(Vec::as_slice),
                    ..Default::default()
                },
            )?;
            out.push(second);
        }
        Ok(out)
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
                stage: None,
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
                    stage: None,
                }
            })
            .collect())
    }
}
