//! The observation layout: what one row of a routing policy's input holds, and in which order.
//!
//! An [`ObservationSpec`] is the one place that knows the columns of the policy's input. Today a
//! row is the prompt's embedding, followed by the cost weight λ when the router is cost-aware
//! (some agent has a `cost`: [`ObservationSpec::for_env`]). Everything that builds a policy input —
//! the text env, evaluation, `mappo route`, `mappo serve`, the learner and off-policy evaluation —
//! assembles it here ([`ObservationSpec::observe`], [`ObservationSpec::row`]), and everything that
//! needs a width asks it ([`ObservationSpec::width`]); no other code appends λ or adds one to a
//! width.
//!
//! Multi-step envs add the episode's columns here too: a pipeline's row is the prompt, the
//! one-hot choices of the earlier stages and the one-hot stage id; a conversation's is the turn's
//! embedding, the previous turn's agent (one-hot) and the share of turns left. Their envs build
//! rows with [`ObservationSpec::row`] and a [`RowExtras`] saying where the episode is.

use std::ops::Range;

use candle_core::{Device, Tensor};
use mappo_config::{EnvConfig, EnvKind};

use crate::EnvError;

/// A block of columns of an observation row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    /// The prompt's embedding: `dim` columns.
    Embedding {
        /// Its width (384 for all-MiniLM-L6-v2).
        dim: usize,
    },
    /// The cost weight λ of a cost-aware router: one column.
    CostWeight,
    /// The choices of the earlier stages of a pipeline, one-hot per stage (all stages but the
    /// last, whose choice no stage sees): `width` = Σ of their option counts.
    Choices {
        /// Its width.
        width: usize,
    },
    /// The previous turn's agent, one-hot (all zero at the first turn).
    PreviousAgent {
        /// Number of agents.
        agents: usize,
    },
    /// The share of turns left after this one, `(T − t) / T`: one column.
    TurnsLeft,
    /// The embedding of the answer an earlier step's agent gave (a cascade's second step; zeros
    /// at its first).
    Response {
        /// Its width (the embedding's).
        dim: usize,
    },
    /// The stage id, one-hot.
    Stage {
        /// Number of stages.
        stages: usize,
    },
}

impl Column {
    /// How many columns the block spans.
    pub fn width(&self) -> usize {
        match self {
            Column::Embedding { dim } => *dim,
            Column::CostWeight | Column::TurnsLeft => 1,
            Column::Choices { width } => *width,
            Column::PreviousAgent { agents } => *agents,
            Column::Stage { stages } => *stages,
            Column::Response { dim } => *dim,
        }
    }
}

/// The layout of a policy's input row: its [`Column`] blocks, in order (the embedding first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservationSpec {
    columns: Vec<Column>,
    /// Options per stage (a pipeline's; one entry otherwise): where each stage's one-hot
    /// choice sits in [`Column::Choices`].
    stage_sizes: Vec<usize>,
}

/// What a row holds besides its embedding; a field is used only when the layout has its column.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RowExtras<'a> {
    /// The cost weight λ (a cost-aware router's input).
    pub cost_weight: Option<f32>,
    /// The stage this row decides (0-based; a pipeline's).
    pub stage: Option<usize>,
    /// The choices of the stages before it, in order (a pipeline's).
    pub choices: &'a [u32],
    /// The previous turn's agent (`None` at the first turn).
    pub previous_agent: Option<u32>,
    /// The share of turns left after this one.
    pub turns_left: Option<f32>,
    /// The embedding of the earlier agent's answer (`None`: zeros, a cascade's first step).
    pub response: Option<&'a [f32]>,
}

impl ObservationSpec {
    /// Rows holding only an embedding of width `dim`.
    pub fn embedding(dim: usize) -> Self {
        Self { columns: vec![Column::Embedding { dim }], stage_sizes: Vec::new() }
    }

    /// The same layout with the cost weight λ as the last column.
    pub fn with_cost_weight(mut self) -> Self {
        if !self.has_cost_weight() {
            self.columns.push(Column::CostWeight);
        }
        self
    }

    /// The layout of an environment's policy for embeddings of width `embed_dim`: the embedding,
    /// then λ when the router is cost-aware ([`EnvConfig::cost_input`]).
    ///
    /// A pipeline's rows add the earlier stages' choices and the stage id (with more than one
    /// stage); a conversation's the previous agent and the turns left.
    pub fn for_env(env: &EnvConfig, embed_dim: usize) -> Self {
        let mut spec = Self::embedding(embed_dim);
        if env.kind == EnvKind::Pipeline {
            spec.stage_sizes = env.stage_sizes();
        }
        if env.kind == EnvKind::Cascade {
            // prompt ⊕ the first agent's answer ⊕ λ ⊕ step.
            spec.stage_sizes = env.stage_sizes();
            spec.columns.push(Column::Response { dim: embed_dim });
            spec.columns.push(Column::CostWeight);
            spec.columns.push(Column::Stage { stages: 2 });
            return spec;
        }
        if env.cost_input() {
            spec = spec.with_cost_weight();
        }
        match env.kind {
            EnvKind::Pipeline if spec.stage_sizes.len() > 1 => {
                let k = spec.stage_sizes.len();
                let width = spec.stage_sizes[..k - 1].iter().sum();
                spec.columns.push(Column::Choices { width });
                spec.columns.push(Column::Stage { stages: k });
            }
            EnvKind::Conversation => {
                spec.columns.push(Column::PreviousAgent { agents: env.action_count() });
                spec.columns.push(Column::TurnsLeft);
            }
            _ => {}
        }
        spec
    }

    /// The layout of a stored network whose first layer takes `width` inputs (a checkpoint's
    /// [`input width`](Self::width)): [`for_env`](Self::for_env) with the embedding width that
    /// makes it `width` wide. Errors when `width` is too small for the env's extra columns.
    pub fn for_input_width(env: &EnvConfig, width: usize) -> Result<Self, EnvError> {
        let extra = Self::for_env(env, 0).width();
        if env.kind == EnvKind::Cascade {
            // The embedding's width appears twice (prompt and answer).
            if width <= extra || !(width - extra).is_multiple_of(2) {
                return Err(EnvError::Setup(format!("a cascade policy input cannot be {width} wide")));
            }
            return Ok(Self::for_env(env, (width - extra) / 2));
        }
        if width <= extra {
            return Err(EnvError::Setup(format!(
                "a policy input {width} wide has no room for an embedding beside its {extra} other column(s)"
            )));
        }
        Ok(Self::for_env(env, width - extra))
    }

    /// The blocks, in column order.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// Width of one row: the network's input width.
    pub fn width(&self) -> usize {
        self.columns.iter().map(Column::width).sum()
    }

    /// Width of the embedding block.
    pub fn embed_dim(&self) -> usize {
        self.columns
            .iter()
            .find_map(|c| match c {
                Column::Embedding { dim } => Some(*dim),
                _ => None,
            })
            .unwrap_or(0)
    }

    /// The range of block `which`'s columns, if the layout has it.
    fn range_of(&self, which: impl Fn(&Column) -> bool) -> Option<Range<usize>> {
        let mut start = 0;
        for c in &self.columns {
            if which(c) {
                return Some(start..start + c.width());
            }
            start += c.width();
        }
        None
    }

    /// The one-hot stage id's columns (a multi-stage layout's).
    pub fn stage_columns(&self) -> Option<Range<usize>> {
        self.range_of(|c| matches!(c, Column::Stage { .. }))
    }

    /// Options per stage of a pipeline's layout (empty for every other).
    pub fn stage_sizes(&self) -> &[usize] {
        &self.stage_sizes
    }

    /// The columns a local (IPPO) critic sees: the prompt's embedding, λ and the stage id —
    /// nothing about earlier choices or the episode's progress.
    pub fn local_columns(&self) -> Vec<usize> {
        let mut out = Vec::new();
        let mut start = 0;
        for c in &self.columns {
            if matches!(c, Column::Embedding { .. } | Column::CostWeight | Column::Stage { .. }) {
                out.extend(start..start + c.width());
            }
            start += c.width();
        }
        out
    }

    /// Whether rows carry an episode's columns (earlier choices, previous agent, turns left,
    /// stage): such rows are built one by one with [`row`](Self::row).
    pub fn is_episodic(&self) -> bool {
        self.columns.iter().any(|c| !matches!(c, Column::Embedding { .. } | Column::CostWeight))
    }

    /// Whether a row carries the cost weight λ.
    pub fn has_cost_weight(&self) -> bool {
        self.columns.contains(&Column::CostWeight)
    }

    /// The columns of the embedding block (what input dropout may zero; λ is never dropped).
    pub fn embedding_columns(&self) -> Range<usize> {
        let mut start = 0;
        for c in &self.columns {
            if let Column::Embedding { dim } = c {
                return start..start + dim;
            }
            start += c.width();
        }
        0..0
    }

    /// One row for `embedding` with `extras`; `None` when the embedding has another width or a
    /// column the layout needs is missing (a cost-aware row without λ).
    pub fn row(&self, embedding: &[f32], extras: RowExtras) -> Option<Vec<f32>> {
        let mut out = Vec::with_capacity(self.width());
        for c in &self.columns {
            match c {
                Column::Embedding { dim } => {
                    if embedding.len() != *dim {
                        return None;
                    }
                    out.extend_from_slice(embedding);
                }
                Column::CostWeight => out.push(extras.cost_weight?),
                Column::Choices { width } => {
                    let start = out.len();
                    out.resize(start + width, 0.0);
                    let mut offset = 0;
                    for (k, &a) in extras.choices.iter().enumerate() {
                        let n = *self.stage_sizes.get(k)?;
                        if a as usize >= n || offset + n > *width {
                            return None;
                        }
                        out[start + offset + a as usize] = 1.0;
                        offset += n;
                    }
                }
                Column::PreviousAgent { agents } => {
                    let start = out.len();
                    out.resize(start + agents, 0.0);
                    if let Some(a) = extras.previous_agent {
                        *out.get_mut(start + a as usize).filter(|_| (a as usize) < *agents)? = 1.0;
                    }
                }
                Column::TurnsLeft => out.push(extras.turns_left?),
                Column::Response { dim } => match extras.response {
                    Some(r) if r.len() == *dim => out.extend_from_slice(r),
                    Some(_) => return None,
                    None => out.resize(out.len() + dim, 0.0),
                },
                Column::Stage { stages } => {
                    let k = extras.stage?;
                    if k >= *stages || extras.choices.len() != k {
                        return None;
                    }
                    let start = out.len();
                    out.resize(start + stages, 0.0);
                    out[start + k] = 1.0;
                }
            }
        }
        Some(out)
    }

    /// Row-major rows for row-major `embeddings` (`rows` of them, the layout's embedding width)
    /// and one cost weight per row (`cost_weights`, read only when the layout has λ), on the
    /// host.
    pub fn rows(&self, embeddings: &[f32], cost_weights: &[f32]) -> Result<Vec<f32>, EnvError> {
        let n = self.check(embeddings.len(), cost_weights.len())?;
        if self.columns.len() == 1 {
            return Ok(embeddings.to_vec());
        }
        let dim = self.embed_dim();
        let mut out = Vec::with_capacity(n * self.width());
        for i in 0..n {
            for c in &self.columns {
                match c {
                    Column::Embedding { .. } => out.extend_from_slice(&embeddings[i * dim..(i + 1) * dim]),
                    Column::CostWeight => out.push(cost_weights[i]),
                    _ => return Err(Self::episodic_error()),
                }
            }
        }
        Ok(out)
    }

    /// The policy input `[rows, width]` on the embeddings' device, from an embedding tensor
    /// `[rows, embed_dim]` and one cost weight per row (read only when the layout has λ).
    pub fn observe(&self, embeddings: &Tensor, cost_weights: &[f32]) -> Result<Tensor, EnvError> {
        let (n, d) = embeddings.dims2()?;
        self.check(n * d, cost_weights.len())?;
        if d != self.embed_dim() {
            return Err(EnvError::Setup(format!(
                "embeddings {d} wide for a policy that takes {}",
                self.embed_dim()
            )));
        }
        if self.columns.len() == 1 {
            return Ok(embeddings.clone());
        }
        let device = embeddings.device();
        let mut parts = Vec::with_capacity(self.columns.len());
        for c in &self.columns {
            parts.push(match c {
                Column::Embedding { .. } => embeddings.clone(),
                Column::CostWeight => Tensor::from_slice(&cost_weights[..n], (n, 1), device)?,
                _ => return Err(Self::episodic_error()),
            });
        }
        Ok(Tensor::cat(&parts, 1)?)
    }

    /// [`observe`](Self::observe) from row-major host embeddings.
    pub fn observe_rows(
        &self,
        embeddings: &[f32],
        cost_weights: &[f32],
        device: &Device,
    ) -> Result<Tensor, EnvError> {
        let n = self.check(embeddings.len(), cost_weights.len())?;
        let emb = Tensor::from_slice(embeddings, (n, self.embed_dim()), device)?;
        self.observe(&emb, cost_weights)
    }

    fn episodic_error() -> EnvError {
        EnvError::Setup("rows of an episode's layout are built one by one (ObservationSpec::row)".into())
    }

    /// The number of rows of `floats` embedding values, checking the cost weights' count.
    fn check(&self, floats: usize, cost_weights: usize) -> Result<usize, EnvError> {
        if self.is_episodic() {
            return Err(Self::episodic_error());
        }
        let dim = self.embed_dim();
        if dim == 0 || !floats.is_multiple_of(dim) {
            return Err(EnvError::Setup(format!(
                "{floats} embedding values are not whole rows of the policy's {dim}"
            )));
        }
        let n = floats / dim;
        if self.has_cost_weight() && cost_weights < n {
            return Err(EnvError::Setup(format!(
                "{cost_weights} cost weights for {n} rows of a cost-aware policy"
            )));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use mappo_config::{AgentSpec, EnvKind};

    use super::*;

    fn env(costs: &[f64]) -> EnvConfig {
        let mut e = EnvConfig { kind: EnvKind::Text, ..EnvConfig::default() };
        e.agents = costs
            .iter()
            .enumerate()
            .map(|(i, &c)| AgentSpec { name: format!("a{i}"), cost: c, ..AgentSpec::default() })
            .collect();
        e
    }

    #[test]
    fn a_cost_aware_layout_ends_with_lambda_and_inverts_from_its_width() {
        let plain = ObservationSpec::for_env(&env(&[0.0, 0.0]), 4);
        assert_eq!((plain.width(), plain.has_cost_weight()), (4, false));
        let costly = ObservationSpec::for_env(&env(&[0.0, 2.0]), 4);
        assert_eq!((costly.width(), costly.embed_dim(), costly.has_cost_weight()), (5, 4, true));
        assert_eq!(costly.embedding_columns(), 0..4);
        assert_eq!(ObservationSpec::for_input_width(&env(&[0.0, 2.0]), 5).expect("fits"), costly);
        assert_eq!(ObservationSpec::for_input_width(&env(&[0.0, 0.0]), 4).expect("fits"), plain);
        assert!(ObservationSpec::for_input_width(&env(&[0.0, 2.0]), 1).is_err());
    }

    #[test]
    fn rows_tensors_and_single_rows_agree() {
        let spec = ObservationSpec::embedding(2).with_cost_weight();
        let emb = [1.0, 2.0, 3.0, 4.0];
        let host = spec.rows(&emb, &[0.5, 0.25]).expect("rows");
        assert_eq!(host, vec![1.0, 2.0, 0.5, 3.0, 4.0, 0.25]);
        let t = spec.observe_rows(&emb, &[0.5, 0.25], &Device::Cpu).expect("tensor");
        assert_eq!(t.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("values"), host);
        let one =
            spec.row(&emb[2..], RowExtras { cost_weight: Some(0.25), ..RowExtras::default() }).expect("row");
        assert_eq!(one, host[3..].to_vec());
        // A cost-aware row without λ, or an embedding of another width, has no row.
        assert!(spec.row(&emb[2..], RowExtras::default()).is_none());
        assert!(spec.row(&emb, RowExtras { cost_weight: Some(0.0), ..RowExtras::default() }).is_none());
        assert!(spec.rows(&emb, &[0.5]).is_err());
        assert!(spec.rows(&emb[..3], &[0.5, 0.5]).is_err());
        // Without λ the cost weights are ignored.
        let plain = ObservationSpec::embedding(2);
        assert_eq!(plain.rows(&emb, &[]).expect("rows"), emb.to_vec());
        assert_eq!(
            plain.row(&emb[..2], RowExtras { cost_weight: Some(9.0), ..RowExtras::default() }),
            Some(vec![1.0, 2.0])
        );
    }

    fn pipeline(sizes: &[usize]) -> EnvConfig {
        let mut e = EnvConfig { kind: EnvKind::Pipeline, ..EnvConfig::default() };
        e.stages = sizes
            .iter()
            .enumerate()
            .map(|(k, &n)| mappo_config::StageSpec {
                name: format!("s{k}"),
                agents: (0..n).map(|i| AgentSpec { name: format!("o{i}"), ..AgentSpec::default() }).collect(),
            })
            .collect();
        e
    }

    #[test]
    fn a_pipeline_row_is_prompt_earlier_choices_and_stage() {
        let spec = ObservationSpec::for_env(&pipeline(&[3, 2, 4]), 2);
        // 2 prompt columns, 3 + 2 choice columns (the last stage's choice is never seen), 3 stages.
        assert_eq!(spec.width(), 2 + 5 + 3);
        assert_eq!(spec.stage_columns(), Some(7..10));
        assert_eq!(spec.local_columns(), vec![0, 1, 7, 8, 9]);
        assert!(spec.is_episodic());
        let x = [0.5, -0.5];
        let at = |stage, choices: &[u32]| {
            spec.row(&x, RowExtras { stage: Some(stage), choices, ..RowExtras::default() })
        };
        assert_eq!(at(0, &[]), Some(vec![0.5, -0.5, 0., 0., 0., 0., 0., 1., 0., 0.]));
        assert_eq!(at(1, &[2]), Some(vec![0.5, -0.5, 0., 0., 1., 0., 0., 0., 1., 0.]));
        assert_eq!(at(2, &[0, 1]), Some(vec![0.5, -0.5, 1., 0., 0., 0., 1., 0., 0., 1.]));
        // The stage must match the choices so far, and each choice must exist.
        assert_eq!(at(2, &[0]), None);
        assert_eq!(at(1, &[3]), None);
        assert!(spec.rows(&x, &[]).is_err(), "episode rows are built one by one");
        // One stage is today's layout, whatever the kind.
        assert_eq!(ObservationSpec::for_env(&pipeline(&[4]), 2).columns(), &[Column::Embedding { dim: 2 }]);
    }

    #[test]
    fn a_conversation_row_is_embedding_previous_agent_and_turns_left() {
        let mut e = env(&[0.0, 0.0, 0.0]);
        e.kind = EnvKind::Conversation;
        let spec = ObservationSpec::for_env(&e, 2);
        assert_eq!(spec.width(), 2 + 3 + 1);
        let row = |prev, left| {
            spec.row(
                &[0.1, 0.2],
                RowExtras { previous_agent: prev, turns_left: left, ..RowExtras::default() },
            )
        };
        assert_eq!(row(None, Some(0.75)), Some(vec![0.1, 0.2, 0., 0., 0., 0.75]));
        assert_eq!(row(Some(2), Some(0.0)), Some(vec![0.1, 0.2, 0., 0., 1., 0.0]));
        assert_eq!(row(Some(3), Some(0.0)), None);
        assert_eq!(row(Some(0), None), None);
        assert_eq!(ObservationSpec::for_input_width(&e, 6).expect("fits"), spec);
    }
}
