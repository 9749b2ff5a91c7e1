//! The text router's trainer on mappo-env's text env (cargo feature `text`): a corpus embedded
//! (through the cache), its [`DatasetEnv`] and a periodic evaluator. Everything about corpora,
//! embeddings, the cache and the reward models is in [`mappo_env::text`]; evaluating and routing
//! with a checkpoint is in the `mappo-eval` crate.

use std::path::Path;

use candle_core::Device;
use mappo_config::{Config, Rng};
use mappo_env::text::{EmbedProgress, EmbeddedCorpus, embed_corpus, load_embedder};
use mappo_env::{ConversationEnv, DatasetEnv};
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
