//! The real-text environment (cargo feature `text`, on by default): a corpus of prompts,
//! embedded once with all-MiniLM-L6-v2 ([`mappo_embed`]) and cached, served by a
//! [`DatasetEnv`](crate::DatasetEnv); the reward of routing a prompt to an agent comes from
//! the configured reward model, plus optional noise. The learner only ever sees the reward of
//! the agent it chose.
//!
//! This module owns the whole path from an [`EnvConfig`] to an environment: where the model
//! and the cache live ([`model_dir`], [`cache_dir`]), the corpus format ([`load_corpus`]),
//! the embedding cache ([`embed_cached`]) and the reward models ([`expected_rewards`]).
//! [`embed_corpus`] runs it all; [`EmbeddedCorpus::env`] builds the environment.

mod cache;
mod corpus;

use std::path::{Path, PathBuf};

use candle_core::Device;
use mappo_config::{EnvConfig, RewardModel};
use mappo_embed::Embedder;

use crate::{DatasetEnv, EnvError};

pub use cache::{CachedEmbeddings, default_cache_dir, embed_cached};
pub use corpus::{Prompt, json_lines, load_corpus};

/// Progress of long embedding work: `(what, done, total)`.
pub type EmbedProgress<'a> = &'a mut dyn FnMut(&str, usize, usize);

/// The model directory a config points to: `env.model_dir`, else
/// [`mappo_embed::default_model_dir`].
pub fn model_dir(env: &EnvConfig) -> PathBuf {
    if env.model_dir.is_empty() { mappo_embed::default_model_dir() } else { PathBuf::from(&env.model_dir) }
}

/// The embedding cache directory a config points to: `env.cache_dir`, else
/// [`default_cache_dir`].
pub fn cache_dir(env: &EnvConfig) -> PathBuf {
    if env.cache_dir.is_empty() { default_cache_dir() } else { PathBuf::from(&env.cache_dir) }
}

/// Loads the embedder a config asks for, onto `device`.
pub fn load_embedder(env: &EnvConfig, device: &Device) -> Result<Embedder, EnvError> {
    Ok(Embedder::load(&model_dir(env), device)?)
}

/// A corpus embedded (with the cache) and scored by the config's reward model.
#[derive(Debug)]
pub struct EmbeddedCorpus {
    /// The prompts.
    pub prompts: Vec<Prompt>,
    /// Row-major `[n, dim]` unit embeddings.
    pub embeddings: Vec<f32>,
    /// Embedding width (384).
    pub dim: usize,
    /// Row-major `[n, agents]` expected rewards.
    pub expected: Vec<f32>,
}

impl EmbeddedCorpus {
    /// A [`DatasetEnv`] over this corpus: `num_envs` prompts per batch, Gaussian reward noise
    /// of standard deviation `noise`, passes shuffled from `seed`. Cost-aware when `env` is
    /// ([`EnvConfig::cost_input`]): λ drawn per prompt from `env.cost_weight_range`, appended
    /// to the observation, and the reward `quality − λ·normalised cost`.
    pub fn env(
        &self,
        cfg: &EnvConfig,
        num_envs: usize,
        noise: f64,
        seed: u64,
        device: &Device,
    ) -> Result<DatasetEnv, EnvError> {
        let num_actions = self.expected.len() / self.prompts.len().max(1);
        let env = DatasetEnv::new(
            &self.embeddings,
            self.dim,
            self.expected.clone(),
            num_actions,
            num_envs,
            noise,
            seed,
            device,
        )?;
        if cfg.cost_input() {
            let costs = cfg.normalized_costs().into_iter().map(|c| c as f32).collect();
            let [lo, hi] = cfg.cost_weight_range;
            env.with_costs(costs, lo as f32, hi as f32)
        } else {
            Ok(env)
        }
    }
}

/// Loads a corpus, embeds it (through the cache of `env.cache_dir`) and scores it with the
/// config's reward model. Logs whether the embeddings came from the cache.
pub fn embed_corpus(
    env: &EnvConfig,
    embedder: &Embedder,
    path: &Path,
    progress: EmbedProgress<'_>,
) -> Result<EmbeddedCorpus, EnvError> {
    let prompts = load_corpus(path, &env.agents)?;
    let texts: Vec<&str> = prompts.iter().map(|p| p.text.as_str()).collect();
    let what = format!("embedding {}", path.display());
    let start = std::time::Instant::now();
    let cached = embed_cached(embedder, &texts, &cache_dir(env), |d, t| progress(&what, d, t))?;
    if cached.from_cache {
        tracing::info!(
            "{}: embeddings of {} prompts from cache {}",
            path.display(),
            texts.len(),
            cached.path.display()
        );
    } else {
        tracing::info!(
            "{}: embedded {} prompts in {:.1} s (cached in {})",
            path.display(),
            texts.len(),
            start.elapsed().as_secs_f64(),
            cached.path.display()
        );
    }
    let expected = expected_rewards(env, embedder, &prompts, &cached.rows, path)?;
    Ok(EmbeddedCorpus { prompts, embeddings: cached.rows, dim: embedder.dim(), expected })
}

/// The expected reward `[n, agents]` of every (prompt, agent) under the config's reward
/// model (`env.reward`):
/// - `label`: 1 for the prompt's labelled agent, 0 for the others; every prompt needs a label;
/// - `cosine`: the dot product of the prompt's and the agent description's unit embeddings;
/// - `outcome`: the row's `outcomes` (every prompt needs one for every agent).
///
/// These are the *quality* of each choice; the cost term of a cost-aware router is applied by
/// the environment ([`DatasetEnv::with_costs`]), since λ varies per prompt.
///
/// `embeddings` are the prompts' rows (`[n, dim]`); `path` names the corpus in errors.
pub fn expected_rewards(
    env: &EnvConfig,
    embedder: &Embedder,
    prompts: &[Prompt],
    embeddings: &[f32],
    path: &Path,
) -> Result<Vec<f32>, EnvError> {
    match env.reward {
        RewardModel::Cosine => {
            let descs: Vec<&str> = env.agents.iter().map(|a| a.description.as_str()).collect();
            let agents: Vec<f32> = embedder.embed(&descs)?.into_iter().flatten().collect();
            Ok(cosine_rewards(embeddings, &agents, embedder.dim()))
        }
        RewardModel::Label => {
            if let Some(i) = prompts.iter().position(|p| p.label.is_none()) {
                return Err(EnvError::Corpus {
                    path: path.display().to_string(),
                    line: None,
                    problem: format!(
                        "prompt {} has no label, which the `label` reward needs (use env.reward = \"cosine\" for unlabelled corpora)",
                        i + 1
                    ),
                });
            }
            Ok(label_rewards(prompts, env.agents.len()))
        }
        RewardModel::Outcome => outcome_rewards(prompts, &env.agents, path),
    }
}

/// Expected rewards `[n, agents]` of the outcome model: every row's `outcomes`, in agent order.
/// A row without an agent's outcome is an error naming the row and the agent.
pub fn outcome_rewards(
    prompts: &[Prompt],
    agents: &[mappo_config::AgentSpec],
    path: &Path,
) -> Result<Vec<f32>, EnvError> {
    let mut r = Vec::with_capacity(prompts.len() * agents.len());
    for (i, p) in prompts.iter().enumerate() {
        for (k, a) in agents.iter().enumerate() {
            match p.outcomes.get(k).copied().flatten() {
                Some(v) => r.push(v),
                None => {
                    return Err(EnvError::Corpus {
                        path: path.display().to_string(),
                        line: None,
                        problem: format!(
                            "prompt {} has no outcome for agent `{}`, which the `outcome` reward needs \
                             (every row needs \"outcomes\": {{\"{}\": reward, ...}} for every agent)",
                            i + 1,
                            a.name,
                            a.name
                        ),
                    });
                }
            }
        }
    }
    Ok(r)
}

/// Expected rewards `[n, agents]` of the label model: 1 for the labelled
/// agent, 0 otherwise (rows without a label get 0 everywhere).
fn label_rewards(prompts: &[Prompt], num_agents: usize) -> Vec<f32> {
    let mut r = vec![0f32; prompts.len() * num_agents];
    for (i, p) in prompts.iter().enumerate() {
        if let Some(l) = p.label {
            r[i * num_agents + l] = 1.0;
        }
    }
    r
}

/// Expected rewards `[n, agents]` of the cosine model: dot products of unit
/// prompt embeddings `[n, dim]` and unit agent-description embeddings `[agents, dim]`.
fn cosine_rewards(prompts: &[f32], agents: &[f32], dim: usize) -> Vec<f32> {
    let mut r = Vec::with_capacity(prompts.len() / dim * (agents.len() / dim));
    for p in prompts.chunks(dim) {
        for a in agents.chunks(dim) {
            r.push(p.iter().zip(a).map(|(x, y)| x * y).sum());
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reward_models() {
        let p = vec![
            Prompt {
                text: "a".into(),
                label: Some(1),
                outcomes: vec![Some(0.5), Some(1.0), Some(0.0)],
                responses: Vec::new(),
            },
            Prompt {
                text: "b".into(),
                label: None,
                outcomes: vec![Some(1.0), None, Some(0.0)],
                responses: Vec::new(),
            },
        ];
        assert_eq!(label_rewards(&p, 3), vec![0.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        let r = cosine_rewards(&[1.0, 0.0, 0.6, 0.8], &[0.0, 1.0, 1.0, 0.0], 2);
        assert_eq!(r, vec![0.0, 1.0, 0.8, 0.6]);
        let agents: Vec<mappo_config::AgentSpec> = ["x", "y", "z"]
            .iter()
            .map(|n| mappo_config::AgentSpec { name: n.to_string(), ..Default::default() })
            .collect();
        assert_eq!(outcome_rewards(&p[..1], &agents, Path::new("c.jsonl")).expect("ok"), vec![0.5, 1.0, 0.0]);
        let e = outcome_rewards(&p, &agents, Path::new("c.jsonl")).expect_err("missing").to_string();
        assert!(e.contains("prompt 2") && e.contains("`y`") && e.contains("c.jsonl"), "{e}");
    }

    #[test]
    fn config_dirs_override_the_defaults() {
        let env = EnvConfig { model_dir: "/m".into(), cache_dir: "/c".into(), ..EnvConfig::default() };
        assert_eq!(model_dir(&env), PathBuf::from("/m"));
        assert_eq!(cache_dir(&env), PathBuf::from("/c"));
        assert_eq!(cache_dir(&EnvConfig::default()), default_cache_dir());
    }
}
