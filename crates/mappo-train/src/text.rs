//! The text router on mappo-env's text env (cargo feature `text`): a trainer on an embedded
//! corpus, greedy evaluation of a checkpoint on a labelled corpus (accuracy, per-agent
//! precision/recall, confusion matrix), and routing texts with a checkpoint. Everything about
//! corpora, embeddings, the cache and the reward models is in [`mappo_env::text`].

use std::path::Path;

use candle_core::{Device, Tensor};
use mappo_config::{Config, EnvKind, Rng};
use mappo_env::DatasetEnv;
use mappo_env::embed::Embedder;
use mappo_env::text::{EmbedProgress, embed_corpus, load_embedder};
use mappo_nn::{ActorCritic, Policy, sample_actions};
use serde::Serialize;

use crate::{Checkpoint, GreedyEvaluator, TrainError, Trainer};

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
        let na = cfg.env.agents.len();
        let t = &cfg.train;
        let env = train.env(t.batch_size, cfg.env.reward_noise, t.seed, device)?;
        let mut eval_env = if cfg.env.eval_corpus.is_empty() {
            train.env(t.eval_prompts.min(train.prompts.len()), 0.0, t.seed ^ 1, device)?
        } else {
            let ev = embed_corpus(&cfg.env, &embedder, Path::new(&cfg.env.eval_corpus), progress)?;
            ev.env(ev.prompts.len(), 0.0, t.seed ^ 1, device)?
        };
        let evaluator = GreedyEvaluator::new(&mut eval_env, &mut Rng::derived(t.seed, "periodic-eval"))?;
        let mut rng = Rng::derived(t.seed, "init");
        let policy = ActorCritic::new(train.dim, na, &cfg.model, &mut rng, device)?;
        Ok(Self {
            trainer: Trainer::from_config(cfg.clone(), env, policy)?,
            evaluator,
            corpus_rows: train.prompts.len(),
        })
    }
}

/// Precision, recall and support of one agent.
#[derive(Debug, Clone, Serialize)]
pub struct AgentScore {
    /// Agent name.
    pub agent: String,
    /// Of the prompts routed to it, the share labelled with it (NaN → null when none).
    pub precision: Option<f64>,
    /// Of the prompts labelled with it, the share routed to it.
    pub recall: Option<f64>,
    /// Prompts labelled with it.
    pub support: usize,
    /// Prompts routed to it.
    pub predicted: usize,
}

/// Greedy routing of a labelled corpus.
#[derive(Debug, Clone, Serialize)]
pub struct CorpusReport {
    /// Prompts evaluated.
    pub n: usize,
    /// Prompts with a label (accuracy, precision, recall and the confusion matrix count these).
    pub labelled: usize,
    /// Share of labelled prompts routed to their label; `null` when no prompt has a label.
    pub accuracy: Option<f64>,
    /// Mean expected reward (the checkpoint's reward model) of the greedy choices.
    pub mean_reward: f64,
    /// Mean reward of always choosing the best agent under the reward model.
    pub oracle_reward: f64,
    /// Mean reward of choosing uniformly at random.
    pub random_reward: f64,
    /// `(mean − random) / (oracle − random)`: 0 = random, 1 = oracle.
    pub normalized_reward: f64,
    /// Share of prompts whose greedy choice is the reward model's best agent.
    pub oracle_agreement: f64,
    /// Per agent.
    pub per_agent: Vec<AgentScore>,
    /// `confusion[label][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
    /// Agent names, in index order.
    pub agents: Vec<String>,
}

/// Evaluates a text checkpoint greedily on a corpus: by its reward model (every
/// prompt; `label` needs labels, `cosine` does not) and, for labelled prompts,
/// by accuracy, per-agent precision/recall and the confusion matrix.
pub fn evaluate_corpus(
    ckpt_path: &Path,
    corpus: &Path,
    device: &Device,
    progress: EmbedProgress<'_>,
) -> Result<CorpusReport, TrainError> {
    let ckpt = Checkpoint::load(ckpt_path, device)?;
    let cfg = text_config(&ckpt, ckpt_path)?;
    let embedder = load_embedder(&cfg.env, device)?;
    let data = embed_corpus(&cfg.env, &embedder, corpus, progress)?;
    let policy = ckpt.policy(data.dim, device)?;
    let n = data.prompts.len();
    let obs = Tensor::from_slice(&data.embeddings, (n, data.dim), device)?;
    let na = cfg.env.agents.len();
    let by_reward = GreedyEvaluator::from_parts(obs.clone(), data.expected.clone(), na).evaluate(&policy)?;
    let greedy = sample_actions(&policy.forward(&obs)?.logits, &mut Rng::new(0), true)?.actions;
    let mut confusion = vec![vec![0usize; na]; na];
    let (mut correct, mut labelled) = (0usize, 0usize);
    for (p, &a) in data.prompts.iter().zip(&greedy) {
        if let Some(l) = p.label {
            labelled += 1;
            correct += usize::from(l == a as usize);
            confusion[l][a as usize] += 1;
        }
    }
    let per_agent = (0..na)
        .map(|k| {
            let support: usize = confusion[k].iter().sum();
            let predicted: usize = confusion.iter().map(|row| row[k]).sum();
            let tp = confusion[k][k] as f64;
            AgentScore {
                agent: cfg.env.agents[k].name.clone(),
                precision: (predicted > 0).then(|| tp / predicted as f64),
                recall: (support > 0).then(|| tp / support as f64),
                support,
                predicted,
            }
        })
        .collect();
    Ok(CorpusReport {
        n,
        labelled,
        accuracy: (labelled > 0).then(|| correct as f64 / labelled as f64),
        mean_reward: by_reward.mean_reward,
        oracle_reward: by_reward.oracle_reward,
        random_reward: by_reward.random_reward,
        normalized_reward: by_reward.normalized_reward,
        oracle_agreement: by_reward.oracle_agreement,
        per_agent,
        confusion,
        agents: cfg.env.agents.iter().map(|a| a.name.clone()).collect(),
    })
}

fn text_config<'a>(ckpt: &'a Checkpoint, path: &Path) -> Result<&'a Config, TrainError> {
    if ckpt.config.env.kind != EnvKind::Text {
        return Err(TrainError::Checkpoint {
            path: path.display().to_string(),
            problem: format!(
                "it was trained on the `{}` environment; this command needs a text-env checkpoint",
                ckpt.config.env.kind
            ),
        });
    }
    Ok(&ckpt.config)
}

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
    policy: ActorCritic,
    agents: Vec<String>,
    device: Device,
}

impl Router {
    /// Loads the checkpoint and the embedder its config names.
    pub fn load(ckpt_path: &Path, device: &Device) -> Result<Self, TrainError> {
        let ckpt = Checkpoint::load(ckpt_path, device)?;
        let cfg = text_config(&ckpt, ckpt_path)?;
        let embedder = load_embedder(&cfg.env, device)?;
        let policy = ckpt.policy(embedder.dim(), device)?;
        let agents = cfg.env.agents.iter().map(|a| a.name.clone()).collect();
        Ok(Self { embedder, policy, agents, device: device.clone() })
    }

    /// The agents' names.
    pub fn agents(&self) -> &[String] {
        &self.agents
    }

    /// Routes texts: one forward pass for all of them.
    pub fn route(&self, texts: &[&str]) -> Result<Vec<Routed>, TrainError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let emb = self.embedder.embed_tensor(texts).map_err(mappo_env::EnvError::from)?;
        let logits = self.policy.forward(&emb.to_device(&self.device)?)?.logits;
        let probs = candle_nn::ops::softmax_last_dim(&logits)?.to_vec2::<f32>()?;
        Ok(texts
            .iter()
            .zip(probs)
            .map(|(t, p)| {
                let i = mappo_env::argmax(&p);
                Routed {
                    text: t.to_string(),
                    agent_index: i,
                    agent: self.agents[i].clone(),
                    probabilities: p,
                }
            })
            .collect())
    }
}
