//! The seam between the service and mappo's model code: the only module of this crate that
//! touches `mappo-train`, `mappo-env`, `mappo-nn` or candle. Everything else talks to the
//! [`ModelLoader`], [`TextEmbedder`] and [`PolicyModel`] traits, so that when the model crates
//! move, only this file changes.

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::Device;
use mappo_config::{Config, EnvKind};
use mappo_train::{Checkpoint, RoutingPolicy, TrainError};

/// A failure of model code: loading files, a checkpoint that does not fit, a forward pass.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ModelError(pub String);

impl From<TrainError> for ModelError {
    fn from(e: TrainError) -> Self {
        ModelError(e.to_string())
    }
}

impl From<candle_core::Error> for ModelError {
    fn from(e: candle_core::Error) -> Self {
        ModelError(format!("tensor error: {e}"))
    }
}

/// Embeds texts into fixed-size vectors (owned by the model thread).
pub trait TextEmbedder: Send + 'static {
    /// Width of one embedding.
    fn dim(&self) -> usize;
    /// Identifies the embedding model (logged with every decision).
    fn model_hash(&self) -> &str;
    /// Embeds `texts`: row-major `[texts.len(), dim]`.
    fn embed(&mut self, texts: &[&str]) -> Result<Vec<f32>, ModelError>;
}

/// One step of an episode as the model thread hands it to a policy: what came before it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepInput {
    /// The actions of the episode's earlier steps, in step order (empty: a one-step decision or
    /// an episode's first step).
    pub earlier: Vec<u32>,
    /// The embedding of the earlier agent's answer, where the step sees one (a cascade's second
    /// step).
    pub response: Option<Vec<f32>>,
}

/// The stage a step decides.
#[derive(Debug, Clone, PartialEq)]
pub struct StageInfo {
    /// Its name (`route` for a one-stage policy).
    pub name: String,
    /// Its options, in action order.
    pub options: Vec<String>,
    /// Whether the step sees the earlier agent's answer.
    pub needs_response: bool,
}

/// A policy: embeddings in, one probability per agent out.
pub trait PolicyModel: Send + 'static {
    /// The agents' names, in action order.
    fn agents(&self) -> &[String];
    /// π(agent | embedding) for each of the `rows` row-major embeddings.
    fn probabilities(&self, embeddings: &[f32], rows: usize) -> Result<Vec<Vec<f32>>, ModelError>;
    /// π(agent | embedding, λ) with each row's cost weight λ (`cost_weights`, one per row): a
    /// cost-aware policy (agents with costs) takes λ as an input; others ignore it (default).
    fn probabilities_at(
        &self,
        embeddings: &[f32],
        rows: usize,
        cost_weights: &[f32],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let _ = cost_weights;
        self.probabilities(embeddings, rows)
    }
    /// Whether the policy takes the cost weight λ as an input (then λ is logged with each
    /// decision). Default false.
    fn cost_aware(&self) -> bool {
        false
    }
    /// Each agent's cost per request (its `[[env.agents]] cost`, in any unit shared by all
    /// agents), in the order of [`PolicyModel::agents`]; empty when the policy knows no costs
    /// (default). The dashboard prices the logged decisions with it.
    fn costs(&self) -> Vec<f64> {
        Vec::new()
    }
    /// The stage of the step after `earlier` (an episode's actions so far), or why the episode
    /// has no such step. Default: one stage, the agents, every step.
    fn stage(&self, earlier: &[u32]) -> Result<StageInfo, String> {
        let _ = earlier;
        Ok(StageInfo { name: "route".into(), options: self.agents().to_vec(), needs_response: false })
    }
    /// For a cascade, the agent its escalation calls (its steps after any other agent see that
    /// agent's answer); `None` for every other policy (default).
    fn escalates_to(&self) -> Option<usize> {
        None
    }
    /// π over each row's stage options, the rows being steps of episodes (`steps`, one per row).
    /// Default: the steps do not change the input ([`PolicyModel::probabilities_at`]).
    fn step_probabilities(
        &self,
        embeddings: &[f32],
        rows: usize,
        cost_weights: &[f32],
        steps: &[StepInput],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let _ = steps;
        self.probabilities_at(embeddings, rows, cost_weights)
    }
}

/// Builds embedders and policies from checkpoint bytes (as stored in the decision log's policy
/// versions).
pub trait ModelLoader: Send + Sync + 'static {
    /// The embedder a checkpoint's config asks for.
    fn embedder(&self, checkpoint: &[u8]) -> Result<Box<dyn TextEmbedder>, ModelError>;
    /// The policy of a checkpoint, for embeddings of width `embed_dim`.
    fn policy(&self, checkpoint: &[u8], embed_dim: usize) -> Result<Box<dyn PolicyModel>, ModelError>;
    /// A checkpoint holding a freshly initialised policy for a text config (seeded by
    /// `train.seed`), for a team that starts with no trained model.
    fn fresh_checkpoint(&self, cfg: &Config) -> Result<Vec<u8>, ModelError>;
}

/// The real models: all-MiniLM-L6-v2 and mappo's actor-critic, on the CPU (or the given device).
#[derive(Debug, Clone)]
pub struct CandleLoader {
    device: Device,
    model_dir: Option<PathBuf>,
}

impl CandleLoader {
    /// Loads on the CPU; `model_dir` overrides the checkpoint config's `env.model_dir`.
    pub fn new(model_dir: Option<PathBuf>) -> Self {
        Self { device: Device::Cpu, model_dir }
    }

    fn parse(&self, bytes: &[u8]) -> Result<(Checkpoint, tempfile::NamedTempFile), ModelError> {
        // Checkpoint::load reads a file: give it one.
        let mut f = tempfile::NamedTempFile::new()
            .map_err(|e| ModelError(format!("cannot create a temporary file: {e}")))?;
        f.write_all(bytes).map_err(|e| ModelError(format!("cannot write a temporary file: {e}")))?;
        let ckpt = Checkpoint::load(f.path(), &self.device)?;
        let cfg = &ckpt.config;
        if !servable(cfg) {
            return Err(ModelError(format!(
                "the policy is not a text router: its config has env.kind = \"{}\" with {} agents; \
                 mappo serve routes text, conversation and cascade policies with at least 2 [[env.agents]]",
                cfg.env.kind,
                cfg.env.agents.len()
            )));
        }
        Ok((ckpt, f))
    }

    fn model_dir_for(&self, cfg: &Config) -> PathBuf {
        self.model_dir.clone().unwrap_or_else(|| mappo_env::text::model_dir(&cfg.env))
    }
}

struct MiniLm {
    inner: mappo_env::embed::Embedder,
    hash: String,
}

impl TextEmbedder for MiniLm {
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    fn model_hash(&self) -> &str {
        &self.hash
    }

    fn embed(&mut self, texts: &[&str]) -> Result<Vec<f32>, ModelError> {
        let t = self.inner.embed_tensor(texts).map_err(|e| ModelError(e.to_string()))?;
        Ok(t.flatten_all()?.to_vec1::<f32>()?)
    }
}

/// A checkpoint's [`RoutingPolicy`]: its input layout, softmax and agents are the ones every
/// other part of mappo (route, eval, learn, ope) uses.
struct MlpPolicy {
    policy: RoutingPolicy,
    /// The checkpoint config's agent costs, one per agent (empty when they do not line up).
    costs: Vec<f64>,
}

impl PolicyModel for MlpPolicy {
    fn agents(&self) -> &[String] {
        self.policy.agents()
    }

    fn probabilities(&self, embeddings: &[f32], rows: usize) -> Result<Vec<Vec<f32>>, ModelError> {
        self.probabilities_at(embeddings, rows, &vec![0.0; rows])
    }

    fn probabilities_at(
        &self,
        embeddings: &[f32],
        rows: usize,
        cost_weights: &[f32],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        if rows == 0 {
            return Ok(Vec::new());
        }
        if embeddings.len() != rows * self.policy.spec().embed_dim() {
            return Err(ModelError(format!(
                "{} embedding values for {rows} rows of width {}",
                embeddings.len(),
                self.policy.spec().embed_dim()
            )));
        }
        if self.policy.episode() != mappo_train::EpisodeShape::OneStep {
            // A request without an episode to a policy of episodes: the first step of a new one.
            let steps = vec![StepInput::default(); rows];
            return self.step_probabilities(embeddings, rows, cost_weights, &steps);
        }
        let obs = self.policy.observe_rows(embeddings, cost_weights)?;
        Ok(self.policy.probabilities(&obs)?)
    }

    fn cost_aware(&self) -> bool {
        self.policy.cost_aware()
    }

    fn costs(&self) -> Vec<f64> {
        self.costs.clone()
    }

    fn escalates_to(&self) -> Option<usize> {
        match self.policy.episode() {
            mappo_train::EpisodeShape::Cascade { strong } => Some(strong),
            _ => None,
        }
    }

    fn stage(&self, earlier: &[u32]) -> Result<StageInfo, String> {
        let k = self.policy.next_stage(earlier)?;
        Ok(StageInfo {
            name: self.policy.stage_names().get(k).cloned().unwrap_or_else(|| "route".into()),
            options: self.policy.stage_agents().get(k).cloned().unwrap_or_default(),
            needs_response: self.policy.needs_response(earlier),
        })
    }

    fn step_probabilities(
        &self,
        embeddings: &[f32],
        rows: usize,
        cost_weights: &[f32],
        steps: &[StepInput],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let dim = self.policy.spec().embed_dim();
        if embeddings.len() != rows * dim || steps.len() != rows || cost_weights.len() != rows {
            return Err(ModelError(format!(
                "{} embedding values, {} steps and {} cost weights for {rows} rows of width {dim}",
                embeddings.len(),
                steps.len(),
                cost_weights.len()
            )));
        }
        let mut flat = Vec::with_capacity(rows * self.policy.spec().width());
        for ((e, s), &w) in embeddings.chunks_exact(dim.max(1)).zip(steps).zip(cost_weights) {
            flat.extend(self.policy.step_row(e, w, &s.earlier, s.response.as_deref())?);
        }
        let earlier: Vec<&[u32]> = steps.iter().map(|s| s.earlier.as_slice()).collect();
        Ok(self.policy.step_probabilities(flat, &earlier)?)
    }
}

impl ModelLoader for CandleLoader {
    fn embedder(&self, checkpoint: &[u8]) -> Result<Box<dyn TextEmbedder>, ModelError> {
        let (ckpt, _f) = self.parse(checkpoint)?;
        let dir = self.model_dir_for(&ckpt.config);
        let inner = mappo_env::embed::Embedder::load(&dir, &self.device)
            .map_err(|e| ModelError(format!("the embedding model in {}: {e}", dir.display())))?;
        let hash = inner.model_hash().to_string();
        Ok(Box::new(MiniLm { inner, hash }))
    }

    fn policy(&self, checkpoint: &[u8], embed_dim: usize) -> Result<Box<dyn PolicyModel>, ModelError> {
        let (ckpt, _f) = self.parse(checkpoint)?;
        let policy = RoutingPolicy::from_checkpoint(&ckpt, &self.device)?;
        if policy.spec().embed_dim() != embed_dim {
            return Err(ModelError(format!(
                "the policy takes embeddings {} wide, the embedder gives {embed_dim}",
                policy.spec().embed_dim()
            )));
        }
        // The agents are the config's `[[env.agents]]` (a servable config has them), so their
        // costs line up; anything else prices nothing.
        let costs: Vec<f64> = ckpt.config.env.agents.iter().map(|a| a.cost).collect();
        let names_match = ckpt.config.env.agents.iter().map(|a| &a.name).eq(policy.agents().iter());
        let costs = if names_match { costs } else { Vec::new() };
        Ok(Box::new(MlpPolicy { policy, costs }))
    }

    fn fresh_checkpoint(&self, cfg: &Config) -> Result<Vec<u8>, ModelError> {
        if !servable(cfg) {
            return Err(ModelError(
                "a fresh policy needs a text, conversation or cascade config (env.kind with at least 2 \
                 [[env.agents]])"
                    .into(),
            ));
        }
        // The embedding width is the embedder's: read it from the model's config.json, which
        // the embedder itself checks when it loads.
        let dim = embedding_dim(&self.model_dir_for(cfg))?;
        let policy = RoutingPolicy::init(cfg, dim, &self.device)?;
        // The same config always gives the same bytes: publishing it twice is one version.
        Ok(Checkpoint::weights_only(cfg, cfg.env.kind.as_str(), policy.network())?.to_bytes()?)
    }
}

/// Whether `mappo serve` can route with a policy of this config: prompts embedded as text (the
/// text, conversation and cascade envs), at least two agents.
fn servable(cfg: &Config) -> bool {
    matches!(cfg.env.kind, EnvKind::Text | EnvKind::Conversation | EnvKind::Cascade)
        && cfg.env.agents.len() >= 2
}

/// The width of the embedding model in `dir` (`hidden_size` in its config.json).
fn embedding_dim(dir: &Path) -> Result<usize, ModelError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        ModelError(format!("cannot read {} ({e}); run `cargo xtask fetch-model`", path.display()))
    })?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError(format!("{} is not JSON: {e}", path.display())))?;
    v.get("hidden_size")
        .and_then(serde_json::Value::as_u64)
        .and_then(|d| usize::try_from(d).ok())
        .filter(|d| *d > 0)
        .ok_or_else(|| ModelError(format!("{} has no positive `hidden_size`", path.display())))
}
