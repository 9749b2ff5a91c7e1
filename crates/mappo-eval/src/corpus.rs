//! Greedy evaluation of a text checkpoint on a corpus: by its reward model, by label (accuracy,
//! per-agent precision/recall, the confusion matrix) and, on an outcome corpus, by the
//! quality–cost curve (APGR, CPT) beside the full-information ridge baseline; and greedy
//! evaluation of a synthetic-env checkpoint on fresh prompts.

use std::path::Path;

use candle_core::{Device, Tensor};
use mappo_config::{Config, EnvKind, Rng};
use mappo_env::SyntheticEnv;
use mappo_env::text::{EmbedProgress, embed_corpus, load_embedder};
use mappo_train::{Checkpoint, EvalReport, GreedyEvaluator, RoutingPolicy};
use serde::Serialize;

use crate::EvalError;
use crate::baseline::{RIDGE_ALPHAS, RidgeRouter};
use crate::curve::{CurvePoint, CurveSummary, OutcomeTable, SingleAgent, choose_by_scores, score_sweep};

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

/// A router's evaluation on an outcome corpus (see [`crate::curve`] for the definitions).
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
pub(crate) struct Decider<'a> {
    policy: &'a RoutingPolicy,
    emb: Tensor,
}

impl<'a> Decider<'a> {
    /// Over row-major `embeddings` (the policy's embedding width).
    pub(crate) fn new(policy: &'a RoutingPolicy, embeddings: &[f32]) -> Result<Self, EvalError> {
        let dim = policy.spec().embed_dim();
        let emb = Tensor::from_slice(embeddings, (embeddings.len() / dim.max(1), dim), policy.device())?;
        Ok(Self { policy, emb })
    }

    /// The policy's input at cost weight `lambda` (the same λ for every row).
    pub(crate) fn obs(&self, lambda: f64) -> Result<Tensor, EvalError> {
        let n = self.emb.dims()[0];
        self.policy.observe(&self.emb, &vec![lambda as f32; n])
    }

    /// The greedy choice of every row at `lambda`.
    pub(crate) fn choices(&self, lambda: f64) -> Result<Vec<usize>, EvalError> {
        self.policy.greedy(&self.obs(lambda)?)
    }
}

/// The λ values a router is swept over: for a cost-aware one 101 across its trained range,
/// else λ = 0 alone.
fn lambda_sweep(policy: &RoutingPolicy, cfg: &Config) -> Vec<f64> {
    if !policy.cost_aware() {
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
) -> Result<Option<OutcomeTable>, EvalError> {
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
) -> Result<CorpusReport, EvalError> {
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
) -> Result<CorpusReport, EvalError> {
    let ckpt = Checkpoint::load(ckpt_path, device)?;
    let cfg = text_config(&ckpt, ckpt_path)?;
    let embedder = load_embedder(&cfg.env, device)?;
    let data = embed_corpus(&cfg.env, &embedder, corpus, progress)?;
    let n = data.prompts.len();
    let na = cfg.env.agents.len();
    let lambda = opts.cost_weight.unwrap_or(0.0);
    let policy = RoutingPolicy::from_checkpoint(&ckpt, device)?;
    let decider = Decider::new(&policy, &data.embeddings)?;
    let obs = decider.obs(lambda)?;
    let costs = cfg.env.normalized_costs();
    let expected: Vec<f32> = data
        .expected
        .chunks(na)
        .flat_map(|r| r.iter().zip(&costs).map(|(q, c)| q - (lambda * c) as f32).collect::<Vec<_>>())
        .collect();
    let by_reward = GreedyEvaluator::from_parts(obs.clone(), expected, na).evaluate(policy.network())?;
    let greedy = policy.greedy(&obs)?;
    let routing = match outcome_table(cfg, &data, corpus)? {
        None => None,
        Some(table) => {
            let mut curve = Vec::new();
            for l in lambda_sweep(&policy, cfg) {
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
                        EvalError::Setup(format!(
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
            correct += usize::from(l == a);
            confusion[l][a] += 1;
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

pub(crate) fn text_config<'a>(ckpt: &'a Checkpoint, path: &Path) -> Result<&'a Config, EvalError> {
    if ckpt.config.env.kind != EnvKind::Text {
        return Err(EvalError::Checkpoint {
            path: path.display().to_string(),
            problem: format!(
                "it was trained on the `{}` environment; this command needs a text-env checkpoint",
                ckpt.config.env.kind
            ),
        });
    }
    Ok(&ckpt.config)
}

/// Greedy evaluation of a synthetic-env checkpoint on `episodes` fresh prompts (drawn from
/// `eval_seed`; the agents come from the run's seed).
pub fn evaluate_synthetic(
    ckpt: &Checkpoint,
    episodes: usize,
    eval_seed: u64,
    device: &Device,
) -> Result<EvalReport, EvalError> {
    if ckpt.env_kind != EnvKind::Synthetic.as_str() {
        let path = ckpt.path.as_deref().unwrap_or(Path::new("<checkpoint>")).display().to_string();
        let problem = if ckpt.env_kind == EnvKind::Text.as_str() {
            "it was trained on the text environment: evaluate it on prompts with `--corpus FILE.jsonl` \
             (e.g. the run's env.eval_corpus)"
                .to_string()
        } else {
            format!(
                "it was trained on a custom `{}` environment, which only its own program can rebuild",
                ckpt.env_kind
            )
        };
        return Err(EvalError::Checkpoint { path, problem });
    }
    let cfg = &ckpt.config;
    let mut env = SyntheticEnv::new(&cfg.env, episodes.max(1), cfg.train.seed, device);
    let policy = RoutingPolicy::from_checkpoint(ckpt, device)?;
    let evaluator = GreedyEvaluator::new(&mut env, &mut Rng::derived(eval_seed, "fresh-eval"))?;
    evaluator.evaluate(policy.network())
}
