//! The text router's trainer on mappo-env's text env (cargo feature `text`): a corpus embedded
//! (through the cache), its [`DatasetEnv`] and a periodic evaluator. Everything about corpora,
//! embeddings, the cache and the reward models is in [`mappo_env::text`]; evaluating and routing
//! with a checkpoint is in the `mappo-eval` crate.

use std::path::Path;

use candle_core::Device;
use mappo_config::{Config, Rng};
use mappo_env::DatasetEnv;
use mappo_env::text::{EmbedProgress, embed_corpus, load_embedder};
use mappo_nn::ActorCritic;

use crate::{GreedyEvaluator, RoutingPolicy, TrainError, Trainer};

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
