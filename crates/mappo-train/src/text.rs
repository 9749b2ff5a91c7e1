//! The text router's trainer on mappo-env's text env (cargo feature `text`): a corpus embedded
//! (through the cache), its [`DatasetEnv`] and a periodic evaluator. Everything about corpora,
//! embeddings, the cache and the reward models is in [`mappo_env::text`]; evaluating and routing
//! with a checkpoint is in the `mappo-eval` crate.

use std::path::Path;

use candle_core::Device;
use mappo_config::{Config, Rng};
use mappo_env::embed::Embedder;
use mappo_env::text::{EmbedProgress, EmbeddedCorpus, cache_dir, embed_cached, embed_corpus, load_embedder};
use mappo_env::{CascadeData, CascadeEnv, ConversationEnv, DatasetEnv, EnvError};
use mappo_nn::ActorCritic;

use crate::{EpisodeEvaluator, GreedyEvaluator, RoutingPolicy, TrainError, Trainer};

/// The text router: trainer and periodic evaluator.
#[derive(Debug)]
pub struct TextSetup {
    /// The trainer at update 0.
    pub trainer: Trainer<DatasetEnv, ActorCritic>,
    /// Greedy evaluation on `env.eval_corpus` (or a sample of the training corpus).
    pub evaluator: GreedyEvaluator,
    /// Rows of the training corpus.
    pub corpus_rows: usize,
}

impl TextSetup {
    /// Embeds the corpora (cached) and builds the trainer on `device`.
    pub fn on(cfg: &Config, device: &Device, progress: EmbedProgress<'_>) -> Result<Self, TrainError> {
        let embedder = load_embedder(&cfg.env, device)?;
        let train = embed_corpus(&cfg.env, &embedder, Path::new(&cfg.env.corpus), progress)?;
        let t = &cfg.train;
        let env = train.env(&cfg.env, t.batch_size, cfg.env.reward_noise, t.seed, device)?;
        let mut eval_env = if cfg.env.eval_corpus.is_empty() {
            train.env(&cfg.env, t.eval_prompts.min(train.prompts.len()), 0.0, t.seed ^ 1, device)?
        } else {
            let ev = embed_corpus(&cfg.env, &embedder, Path::new(&cfg.env.eval_corpus), progress)?;
            ev.env(&cfg.env, ev.prompts.len(), 0.0, t.seed ^ 1, device)?
        };
        let evaluator = GreedyEvaluator::new(&mut eval_env, &mut Rng::derived(t.seed, "periodic-eval"))?;
        let policy = RoutingPolicy::init(cfg, train.dim, device)?.into_network();
        Ok(Self {
            trainer: Trainer::from_config(cfg.clone(), env, policy)?,
            evaluator,
            corpus_rows: train.prompts.len(),
        })
    }
}

/// The conversation env's trainer: conversations assembled from the training corpus, and a
/// periodic evaluation on `train.eval_prompts` conversations assembled from `env.eval_corpus`
/// (or the training corpus).
#[derive(Debug)]
pub struct ConversationSetup {
    /// The trainer at update 0.
    pub trainer: Trainer<ConversationEnv, ActorCritic>,
    /// Greedy conversations, the same ones at every evaluation.
    pub evaluator: EpisodeEvaluator<ConversationEnv>,
    /// Rows of the training corpus.
    pub corpus_rows: usize,
}

/// The conversations of `cfg` over an embedded corpus, `num_envs` at a time.
pub fn conversation_env(
    cfg: &Config,
    corpus: EmbeddedCorpus,
    num_envs: usize,
    device: &Device,
) -> Result<ConversationEnv, TrainError> {
    let labels: Vec<Option<usize>> = corpus.prompts.iter().map(|p| p.label).collect();
    Ok(ConversationEnv::new(&cfg.env, corpus.embeddings, corpus.dim, &labels, num_envs, device)?)
}

impl ConversationSetup {
    /// Embeds the corpora (cached) and builds the trainer on `device`.
    pub fn on(cfg: &Config, device: &Device, progress: EmbedProgress<'_>) -> Result<Self, TrainError> {
        let embedder = load_embedder(&cfg.env, device)?;
        let train = embed_corpus(&cfg.env, &embedder, Path::new(&cfg.env.corpus), progress)?;
        let (rows, dim) = (train.prompts.len(), train.dim);
        let t = &cfg.train;
        let eval_corpus = if cfg.env.eval_corpus.is_empty() {
            None
        } else {
            Some(embed_corpus(&cfg.env, &embedder, Path::new(&cfg.env.eval_corpus), progress)?)
        };
        let eval_env = match eval_corpus {
            Some(ev) => conversation_env(cfg, ev, t.eval_prompts, device)?,
            None => ConversationEnv::new(
                &cfg.env,
                train.embeddings.clone(),
                dim,
                &train.prompts.iter().map(|p| p.label).collect::<Vec<_>>(),
                t.eval_prompts,
                device,
            )?,
        };
        let env = conversation_env(cfg, train, t.batch_size, device)?;
        let policy = RoutingPolicy::init(cfg, dim, device)?.into_network();
        Ok(Self {
            trainer: Trainer::from_config(cfg.clone(), env, policy)?,
            evaluator: EpisodeEvaluator::new(eval_env, t.seed),
            corpus_rows: rows,
        })
    }
}

/// A cascade's data from an outcome corpus with answers: the prompts' embeddings (through the
/// cache), every agent's answer embedded (trimmed; through the cache), the outcomes. Every row
/// needs an outcome for every agent and an answer from every agent but the most expensive (whose
/// answer is final).
pub fn cascade_data(
    cfg: &Config,
    embedder: &Embedder,
    corpus: &Path,
    progress: EmbedProgress<'_>,
) -> Result<CascadeData, TrainError> {
    let data = embed_corpus(&cfg.env, embedder, corpus, progress)?;
    let agents = cfg.env.agents.len();
    let strong = mappo_env::CascadeRules::new(&cfg.env).strong;
    let mut texts: Vec<&str> = Vec::new();
    let mut at = Vec::new();
    for (row, p) in data.prompts.iter().enumerate() {
        for a in 0..agents {
            match p.responses.get(a).and_then(Option::as_deref) {
                Some(t) if !t.trim().is_empty() => {
                    texts.push(t.trim());
                    at.push((row, a));
                }
                _ if a != strong => {
                    return Err(EnvError::Corpus {
                        path: corpus.display().to_string(),
                        line: None,
                        problem: format!(
                            "prompt {} has no answer from `{}`, which a cascade needs (rows need \"responses\": {{agent: text}} for every agent but the most expensive; `cargo xtask fetch-data routellm` writes them for GSM8K)",
                            row + 1,
                            cfg.env.agents[a].name
                        ),
                    }
                    .into());
                }
                _ => {}
            }
        }
    }
    let what = format!("embedding the answers in {}", corpus.display());
    let cached = embed_cached(embedder, &texts, &cache_dir(&cfg.env), |d, t| progress(&what, d, t))?;
    let dim = data.dim;
    let mut responses = vec![0f32; data.prompts.len() * agents * dim];
    for (k, &(row, a)) in at.iter().enumerate() {
        let to = (row * agents + a) * dim;
        responses[to..to + dim].copy_from_slice(&cached.rows[k * dim..(k + 1) * dim]);
    }
    Ok(CascadeData { prompts: data.embeddings, responses, outcomes: data.expected, dim, agents })
}

/// The cascade env's trainer: cascades over the training corpus's prompts and answers, λ drawn
/// per episode from `env.cost_weight_range`.
#[derive(Debug)]
pub struct CascadeSetup {
    /// The trainer at update 0.
    pub trainer: Trainer<CascadeEnv, ActorCritic>,
    /// Rows of the training corpus.
    pub corpus_rows: usize,
}

impl CascadeSetup {
    /// Embeds the corpus and its answers (cached) and builds the trainer on `device`.
    pub fn on(cfg: &Config, device: &Device, progress: EmbedProgress<'_>) -> Result<Self, TrainError> {
        let embedder = load_embedder(&cfg.env, device)?;
        let data = cascade_data(cfg, &embedder, Path::new(&cfg.env.corpus), progress)?;
        let (rows, dim) = (data.len(), data.dim);
        let env = CascadeEnv::new(&cfg.env, data, cfg.train.batch_size, device)?;
        let policy = RoutingPolicy::init(cfg, dim, device)?.into_network();
        Ok(Self { trainer: Trainer::from_config(cfg.clone(), env, policy)?, corpus_rows: rows })
    }
}
