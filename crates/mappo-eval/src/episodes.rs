//! Evaluating checkpoints of multi-step envs: greedy episodes against the env's optimum.

use std::path::Path;

use candle_core::Device;
use mappo_config::{EnvKind, Rng};
use mappo_env::PipelineEnv;
use mappo_env::text::{EmbedProgress, embed_corpus, load_embedder};
use mappo_train::{Checkpoint, EpisodeReport, RoutingPolicy, conversation_env, evaluate_episodes};

use crate::EvalError;

/// Greedy episodes of a `pipeline` checkpoint on `episodes` fresh prompts (drawn from stream
/// `fresh-eval` of `eval_seed`), noise-free: the mean return beside the optimum (best joint
/// action per prompt, by enumeration) and random (the mean over joint actions).
pub fn evaluate_pipeline(
    ckpt: &Checkpoint,
    episodes: usize,
    eval_seed: u64,
    device: &Device,
) -> Result<EpisodeReport, EvalError> {
    expect_kind(ckpt, EnvKind::Pipeline)?;
    let cfg = &ckpt.config;
    let mut env = PipelineEnv::new(&cfg.env, episodes.max(1), cfg.train.seed, device)?.noise_free();
    let policy = RoutingPolicy::from_checkpoint(ckpt, device)?;
    evaluate_episodes(&mut env, policy.network(), &mut Rng::derived(eval_seed, "fresh-eval"))
}

/// Greedy conversations of a `conversation` checkpoint: `episodes` conversations assembled from
/// `corpus` (any labelled split, e.g. the validation one) with the stream `fresh-eval` of
/// `eval_seed`, beside the planning label oracle, the myopic oracle and random (exact
/// expectations under the chain).
pub fn evaluate_conversation(
    ckpt: &Checkpoint,
    corpus: &Path,
    episodes: usize,
    eval_seed: u64,
    device: &Device,
    progress: EmbedProgress<'_>,
) -> Result<EpisodeReport, EvalError> {
    expect_kind(ckpt, EnvKind::Conversation)?;
    let cfg = &ckpt.config;
    let embedder = load_embedder(&cfg.env, device)?;
    let data = embed_corpus(&cfg.env, &embedder, corpus, progress)?;
    let mut env = conversation_env(cfg, data, episodes.max(1), device)?;
    let policy = RoutingPolicy::from_checkpoint(ckpt, device)?;
    evaluate_episodes(&mut env, policy.network(), &mut Rng::derived(eval_seed, "fresh-eval"))
}

fn expect_kind(ckpt: &Checkpoint, kind: EnvKind) -> Result<(), EvalError> {
    if ckpt.env_kind == kind.as_str() {
        return Ok(());
    }
    let path = ckpt.path.as_deref().unwrap_or(Path::new("<checkpoint>")).display().to_string();
    Err(EvalError::Checkpoint {
        path,
        problem: format!("it was trained on the `{}` environment, not `{kind}`", ckpt.env_kind),
    })
}
