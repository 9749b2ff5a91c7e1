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

use crate::routing::{
    CurvePoint, CurveSummary, OutcomeTable, RIDGE_ALPHAS, RidgeRouter, SingleAgent, choose_by_scores,
    score_sweep,
};
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
        let env = train.env(&cfg.env, t.batch_size, cfg.env.reward_noise, t.seed, device)?;
        let mut eval_env = if cfg.env.eval_corpus.is_empty() {
            train.env(&cfg.env, t.eval_prompts.min(train.prompts.len()), 0.0, t.seed ^ 1, device)?
        } else {
            let ev = embed_corpus(&cfg.env, &embedder, Path::new(&cfg.env.eval_corpus), progress)?;
            ev.env(&cfg.env, ev.prompts.len(), 0.0, t.seed ^ 1, device)?
        };
        let evaluator = GreedyEvaluator::new(&mut eval_env, &mut Rng::derived(t.seed, "periodic-eval"))?;
        let mut rng = Rng::derived(t.seed, "init");
        let obs_dim = train.dim + usize::from(cfg.env.cost_input());
        let policy = ActorCritic::new(obs_dim, na, &cfg.model, &mut rng, device)?;
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
    /// The cost weight λ the figures above were measured at (0 unless a cost-aware router
    /// was evaluated with another; their reward is `quality − λ·normalised cost`).
    pub cost_weight: f64,
    /// Quality–cost evaluation, when every row of the corpus has `outcomes` for every agent.
    pub routing: Option<RoutingReport>,
}

/// A router's evaluation on an outcome corpus (see [`crate::routing`] for the definitions).
#[derive(Debug, Clone, Serialize)]
pub struct RoutingReport {
    /// The quality–cost curve over a sweep of λ (101 values across the trained
    /// `env.cost_weight_range`; one point, λ = 0, for a router without costs), APGR, CPT(50%),
    /// CPT(80%).
    #[serde(flatten)]
    pub summary: CurveSummary,
    /// The cheapest agent (RouteLLM's weak model).
    pub weak: String,
    /// The best single agent (RouteLLM's strong model).
    pub strong: String,
    /// Each agent alone: quality and cost.
    pub agents: Vec<SingleAgent>,
    /// Mean quality of an oracle that picks a best agent for every prompt (the cheapest of them).
    pub oracle_quality: f64,
    /// The oracle's routing as a point (its cost and shares).
    pub oracle: CurvePoint,
    /// The router at the requested cost weight (`--cost-weight`), when one was requested.
    pub at: Option<CurvePoint>,
    /// The full-information ridge router fit on `--baseline-train`, when requested.
    pub baseline: Option<BaselineReport>,
}

/// A full-information ridge-regression router on the same embeddings: fit on a training
/// corpus's whole outcome table, scored here with the same curve code.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineReport {
    /// The corpus it was fit on.
    pub train_corpus: String,
    /// Its L2 penalty (given, or chosen by cross-validation).
    pub alpha: f64,
    /// The cross-validated APGR on the training corpus that chose `alpha` (None when given).
    pub cv_apgr: Option<f64>,
    /// Its curve (a threshold sweep: 0%, 1%, …, 100% of prompts to the stronger agents), APGR, CPT.
    #[serde(flatten)]
    pub summary: CurveSummary,
}

/// Options of [`evaluate_corpus_with`].
#[derive(Debug, Clone, Default)]
pub struct CorpusEvalOptions {
    /// Cost weight λ of the greedy figures and of `routing.at` (None: 0, and no `at`).
    pub cost_weight: Option<f64>,
    /// Fit the full-information ridge baseline on this outcome corpus.
    pub baseline_train: Option<std::path::PathBuf>,
    /// Ridge penalty; 0 → chosen from [`RIDGE_ALPHAS`] by 5-fold cross-validation on the
    /// training corpus (the APGR of the held-out folds).
    pub ridge_alpha: f64,
}

/// The policy of a checkpoint over a fixed set of embeddings: greedy choices at any λ.
struct Decider {
    policy: ActorCritic,
    emb: Tensor,
    cost_input: bool,
}

impl Decider {
    fn obs(&self, lambda: f64) -> Result<Tensor, TrainError> {
        if !self.cost_input {
            return Ok(self.emb.clone());
        }
        let n = self.emb.dims()[0];
        let col = Tensor::full(lambda as f32, (n, 1), self.emb.device())?;
        Ok(Tensor::cat(&[&self.emb, &col], 1)?)
    }

    fn choices(&self, lambda: f64) -> Result<Vec<usize>, TrainError> {
        Ok(crate::greedy_actions(&self.policy, &self.obs(lambda)?)?.into_iter().map(|a| a as usize).collect())
    }
}

/// The λ values a cost-aware router is swept over: 101 across its trained range.
fn lambda_sweep(cfg: &Config) -> Vec<f64> {
    if !cfg.env.cost_input() {
        return vec![0.0];
    }
    let [lo, hi] = cfg.env.cost_weight_range;
    (0..=100).map(|k| lo + (hi - lo) * k as f64 / 100.0).collect()
}

/// The outcome table of a corpus, when every row has outcomes.
fn outcome_table(
    cfg: &Config,
    data: &mappo_env::text::EmbeddedCorpus,
    path: &Path,
) -> Result<Option<OutcomeTable>, TrainError> {
    if data.prompts.iter().any(|p| p.outcomes.is_empty()) {
        return Ok(None);
    }
    let q = mappo_env::text::outcome_rewards(&data.prompts, &cfg.env.agents, path)?;
    let names = cfg.env.agents.iter().map(|a| a.name.clone()).collect();
    let costs = cfg.env.agents.iter().map(|a| a.cost).collect();
    Ok(Some(OutcomeTable::new(names, costs, q)?))
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
    evaluate_corpus_with(ckpt_path, corpus, device, &CorpusEvalOptions::default(), progress)
}

/// [`evaluate_corpus`] with options: the cost weight of the greedy figures, and the
/// full-information ridge baseline. On an outcome corpus (every row has every agent's
/// `outcomes`) the report's `routing` holds the quality–cost curve, APGR and CPT.
pub fn evaluate_corpus_with(
    ckpt_path: &Path,
    corpus: &Path,
    device: &Device,
    opts: &CorpusEvalOptions,
    progress: EmbedProgress<'_>,
) -> Result<CorpusReport, TrainError> {
    let ckpt = Checkpoint::load(ckpt_path, device)?;
    let cfg = text_config(&ckpt, ckpt_path)?;
    let embedder = load_embedder(&cfg.env, device)?;
    let data = embed_corpus(&cfg.env, &embedder, corpus, progress)?;
    let n = data.prompts.len();
    let na = cfg.env.agents.len();
    let lambda = opts.cost_weight.unwrap_or(0.0);
    let decider = Decider {
        policy: ckpt.policy(data.dim, device)?,
        emb: Tensor::from_slice(&data.embeddings, (n, data.dim), device)?,
        cost_input: cfg.env.cost_input(),
    };
    let obs = decider.obs(lambda)?;
    let policy = &decider.policy;
    let costs = cfg.env.normalized_costs();
    let expected: Vec<f32> = data
        .expected
        .chunks(na)
        .flat_map(|r| r.iter().zip(&costs).map(|(q, c)| q - (lambda * c) as f32).collect::<Vec<_>>())
        .collect();
    let by_reward = GreedyEvaluator::from_parts(obs.clone(), expected, na).evaluate(policy)?;
    let greedy = sample_actions(&policy.forward(&obs)?.logits, &mut Rng::new(0), true)?.actions;
    let routing = match outcome_table(cfg, &data, corpus)? {
        None => None,
        Some(table) => {
            let mut curve = Vec::new();
            for l in lambda_sweep(cfg) {
                curve.push(table.point(l, &decider.choices(l)?));
            }
            let (weak, strong) = table.weak_strong();
            let at = match opts.cost_weight {
                Some(l) => Some(table.point(l, &decider.choices(l)?)),
                None => None,
            };
            let baseline = match &opts.baseline_train {
                None => None,
                Some(train_path) => {
                    let train = embed_corpus(&cfg.env, &embedder, train_path, progress)?;
                    let tq = outcome_table(cfg, &train, train_path)?.ok_or_else(|| {
                        TrainError::Setup(format!(
                            "{}: the baseline needs an outcome corpus (every row with `outcomes`)",
                            train_path.display()
                        ))
                    })?;
                    let (ridge, alpha, cv_apgr) = if opts.ridge_alpha > 0.0 {
                        let r = RidgeRouter::fit(
                            &train.embeddings,
                            train.dim,
                            &tq.quality,
                            na,
                            opts.ridge_alpha,
                        )?;
                        (r, opts.ridge_alpha, None)
                    } else {
                        let raw_costs: Vec<f64> = cfg.env.agents.iter().map(|a| a.cost).collect();
                        let (r, a, cv) = RidgeRouter::fit_cv(
                            &train.embeddings,
                            train.dim,
                            &tq.quality,
                            &table.agents,
                            &raw_costs,
                            RIDGE_ALPHAS,
                            5,
                        )?;
                        (r, a, Some(cv))
                    };
                    let pred = ridge.predict(&data.embeddings);
                    let curve = score_sweep(&pred, &costs, weak)
                        .into_iter()
                        .map(|l| table.point(l, &choose_by_scores(&pred, &costs, l)))
                        .collect();
                    Some(BaselineReport {
                        train_corpus: train_path.display().to_string(),
                        alpha,
                        cv_apgr,
                        summary: table.summarize(curve),
                    })
                }
            };
            Some(RoutingReport {
                weak: table.agents[weak].clone(),
                strong: table.agents[strong].clone(),
                agents: table.singles(),
                oracle_quality: table.oracle_quality(),
                oracle: table.point(f64::NAN, &table.oracle_choices()),
                summary: table.summarize(curve),
                at,
                baseline,
            })
        }
    };
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
        cost_weight: lambda,
        routing,
    })
}

/// A budget for [`calibrate`].
#[derive(Debug, Clone, PartialEq)]
pub enum Budget {
    /// Mean cost per request at most this (the agents' `cost` units).
    MaxCost(f64),
    /// At most this share (0–1) of the prompts routed to this agent.
    MaxShare(String, f64),
}

/// What [`calibrate`] found.
#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    /// The least cost weight λ (within the trained range) whose routing of the calibration
    /// corpus meets the budget; use it as `serve.cost_weight`, `--cost-weight` or a request's
    /// `"cost_weight"`.
    pub cost_weight: f64,
    /// The routing of the calibration corpus at that λ.
    pub point: CurvePoint,
    /// The budgeted quantity at that λ (mean cost, or the agent's share).
    pub value: f64,
    /// Whether the budgeted quantity was non-increasing in λ over a 101-point grid of the
    /// range (bisection assumes it; when false, the λ found meets the budget but may not be
    /// the least one that does).
    pub monotone: bool,
    /// The largest increase of the quantity between neighbouring grid points (0 when monotone).
    pub max_increase: f64,
}

/// Finds the cost weight λ that meets a budget on a calibration corpus (RouteLLM's threshold
/// calibration, for N agents and real costs): the least λ in the router's trained range whose
/// greedy routing of the corpus has mean cost ≤ C (or routes at most a share S of the prompts
/// to an agent), by bisection (40 halvings) after a 101-point grid that checks the quantity
/// falls as λ grows. Any corpus of prompts works (no outcomes needed).
pub fn calibrate(
    ckpt_path: &Path,
    corpus: &Path,
    budget: &Budget,
    device: &Device,
    progress: EmbedProgress<'_>,
) -> Result<Calibration, TrainError> {
    let ckpt = Checkpoint::load(ckpt_path, device)?;
    let cfg = text_config(&ckpt, ckpt_path)?;
    if !cfg.env.cost_input() {
        return Err(TrainError::Checkpoint {
            path: ckpt_path.display().to_string(),
            problem: "its router has no cost input (no agent has a `cost`): there is no λ to calibrate"
                .into(),
        });
    }
    let agents: Vec<String> = cfg.env.agents.iter().map(|a| a.name.clone()).collect();
    let costs: Vec<f64> = cfg.env.agents.iter().map(|a| a.cost).collect();
    let target = match budget {
        Budget::MaxCost(c) => (None, *c),
        Budget::MaxShare(name, s) => {
            let i = agents.iter().position(|a| a == name).ok_or_else(|| {
                TrainError::Setup(format!(
                    "--max-share: `{name}` is not an agent (agents: {})",
                    agents.join(", ")
                ))
            })?;
            (Some(i), *s)
        }
    };
    let embedder = load_embedder(&cfg.env, device)?;
    let prompts = mappo_env::text::load_corpus(corpus, &cfg.env.agents)?;
    let texts: Vec<&str> = prompts.iter().map(|p| p.text.as_str()).collect();
    let what = format!("embedding {}", corpus.display());
    let cached =
        mappo_env::text::embed_cached(&embedder, &texts, &mappo_env::text::cache_dir(&cfg.env), |d, t| {
            progress(&what, d, t)
        })?;
    let n = texts.len();
    let decider = Decider {
        policy: ckpt.policy(embedder.dim(), device)?,
        emb: Tensor::from_slice(&cached.rows, (n, embedder.dim()), device)?,
        cost_input: true,
    };
    let table = OutcomeTable::new(agents.clone(), costs, vec![0.0; n * agents.len()])?;
    let measure = |l: f64| -> Result<(f64, CurvePoint), TrainError> {
        let p = table.point(l, &decider.choices(l)?);
        let v = match target.0 {
            None => p.cost,
            Some(i) => p.share[&agents[i]],
        };
        Ok((v, p))
    };
    let [lo, hi] = cfg.env.cost_weight_range;
    let mut grid = Vec::new();
    for k in 0..=100 {
        grid.push(measure(lo + (hi - lo) * k as f64 / 100.0)?.0);
    }
    let max_increase = grid.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    let (v_lo, p_lo) = measure(lo)?;
    if v_lo <= target.1 {
        return Ok(Calibration {
            cost_weight: lo,
            point: p_lo,
            value: v_lo,
            monotone: max_increase <= 0.0,
            max_increase,
        });
    }
    let (v_hi, _) = measure(hi)?;
    if v_hi > target.1 {
        return Err(TrainError::Setup(format!(
            "the budget {} cannot be met within the router's trained λ range [{lo}, {hi}]: at λ = {hi} it is {v_hi:.4} \
             (train with a wider env.cost_weight_range)",
            target.1
        )));
    }
    let (mut a, mut b) = (lo, hi);
    for _ in 0..40 {
        let m = 0.5 * (a + b);
        if measure(m)?.0 <= target.1 { b = m } else { a = m }
    }
    let (value, point) = measure(b)?;
    Ok(Calibration { cost_weight: b, point, value, monotone: max_increase <= 0.0, max_increase })
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
    cost_input: bool,
}

impl Router {
    /// Loads the checkpoint and the embedder its config names.
    pub fn load(ckpt_path: &Path, device: &Device) -> Result<Self, TrainError> {
        let ckpt = Checkpoint::load(ckpt_path, device)?;
        let cfg = text_config(&ckpt, ckpt_path)?;
        let embedder = load_embedder(&cfg.env, device)?;
        let policy = ckpt.policy(embedder.dim(), device)?;
        let agents = cfg.env.agents.iter().map(|a| a.name.clone()).collect();
        Ok(Self { embedder, policy, agents, device: device.clone(), cost_input: cfg.env.cost_input() })
    }

    /// The agents' names.
    pub fn agents(&self) -> &[String] {
        &self.agents
    }

    /// True when the router takes a cost weight λ (its agents have costs).
    pub fn cost_aware(&self) -> bool {
        self.cost_input
    }

    /// Routes texts: one forward pass for all of them (a cost-aware router at λ = 0).
    pub fn route(&self, texts: &[&str]) -> Result<Vec<Routed>, TrainError> {
        self.route_at(texts, 0.0)
    }

    /// Routes texts at cost weight `cost_weight` (ignored by a router without costs).
    pub fn route_at(&self, texts: &[&str], cost_weight: f64) -> Result<Vec<Routed>, TrainError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let emb = self.embedder.embed_tensor(texts).map_err(mappo_env::EnvError::from)?;
        let mut x = emb.to_device(&self.device)?;
        if self.cost_input {
            let col = Tensor::full(cost_weight as f32, (texts.len(), 1), &self.device)?;
            x = Tensor::cat(&[&x, &col], 1)?;
        }
        let logits = self.policy.forward(&x)?.logits;
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
