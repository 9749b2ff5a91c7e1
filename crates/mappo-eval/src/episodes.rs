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

pub(crate) fn expect_kind(ckpt: &Checkpoint, kind: EnvKind) -> Result<(), EvalError> {
    if ckpt.env_kind == kind.as_str() {
        return Ok(());
    }
    let path = ckpt.path.as_deref().unwrap_or(Path::new("<checkpoint>")).display().to_string();
    Err(EvalError::Checkpoint {
        path,
        problem: format!("it was trained on the `{}` environment, not `{kind}`", ckpt.env_kind),
    })
}

/// A cascade checkpoint's evaluation on an outcome corpus with answers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CascadeReport {
    /// Prompts.
    pub n: usize,
    /// The quality–cost curve over the λ sweep (x axis: the share of prompts that reach the strong
    /// agent, at step 1 or by escalation), APGR, CPT, the agents alone and the oracle, as for
    /// one-step routers.
    pub routing: crate::RoutingReport,
    /// Per curve point: the mean cost paid per prompt (the agents' `cost` units; a cascade pays
    /// the cheaper call before an escalation).
    pub cost_paid: Vec<f64>,
    /// Per curve point: the share of prompts escalated after the cheaper agent's answer.
    pub escalated: Vec<f64>,
    /// A one-step router of the same agents on the same corpus, side by side
    /// ([`CascadeReport::compare_one_step`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub one_step: Option<crate::RoutingReport>,
}

impl CascadeReport {
    /// Evaluates the one-step router `checkpoint` (a text-env checkpoint with the same agents, in
    /// the same order) on `corpus` — the corpus this report was made from — and keeps its
    /// routing report as [`CascadeReport::one_step`].
    pub fn compare_one_step(
        &mut self,
        checkpoint: &Path,
        corpus: &Path,
        device: &Device,
        progress: EmbedProgress<'_>,
    ) -> Result<(), EvalError> {
        let r = crate::evaluate_corpus_with(checkpoint, corpus, device, &Default::default(), progress)?;
        let names = |r: &crate::RoutingReport| r.agents.iter().map(|a| a.agent.clone()).collect::<Vec<_>>();
        let routing = r.routing.ok_or_else(|| {
            EvalError::Setup(format!("{} is not an outcome corpus: no curve to compare", corpus.display()))
        })?;
        if names(&routing) != names(&self.routing) {
            return Err(EvalError::Checkpoint {
                path: checkpoint.display().to_string(),
                problem: format!(
                    "its agents {:?} are not the cascade's {:?}",
                    names(&routing),
                    names(&self.routing)
                ),
            });
        }
        self.one_step = Some(routing);
        Ok(())
    }
}

/// Greedy cascades of a `cascade` checkpoint on every prompt of `corpus` (an outcome corpus
/// with `responses`), over 101 values of λ across the trained `env.cost_weight_range`.
pub fn evaluate_cascade(
    ckpt: &Checkpoint,
    corpus: &Path,
    device: &Device,
    progress: EmbedProgress<'_>,
) -> Result<CascadeReport, EvalError> {
    expect_kind(ckpt, EnvKind::Cascade)?;
    let cfg = &ckpt.config;
    let embedder = load_embedder(&cfg.env, device)?;
    let data = mappo_train::cascade_data(cfg, &embedder, corpus, progress)?;
    let n = data.len();
    let agents = data.agents;
    let names: Vec<String> = cfg.env.agents.iter().map(|a| a.name.clone()).collect();
    let raw_costs: Vec<f64> = cfg.env.agents.iter().map(|a| a.cost).collect();
    let table = crate::OutcomeTable::new(names, raw_costs.clone(), data.outcomes.clone())?;
    let env = mappo_env::CascadeEnv::new(&cfg.env, data, 1, device)?;
    let rules = env.rules().clone();
    let policy = RoutingPolicy::from_checkpoint(ckpt, device)?;
    let width = policy.spec().width();
    let greedy = |rows: Vec<f32>| -> Result<Vec<usize>, EvalError> {
        let k = rows.len() / width.max(1);
        if k == 0 {
            return Ok(Vec::new());
        }
        let obs = candle_core::Tensor::from_vec(rows, (k, width), device)?;
        policy.greedy(&obs)
    };
    let [lo, hi] = cfg.env.cost_weight_range;
    let mut curve = Vec::new();
    let (mut cost_paid, mut escalated) = (Vec::new(), Vec::new());
    for step in 0..=100 {
        let lambda = lo + (hi - lo) * f64::from(step) / 100.0;
        let mut rows = Vec::with_capacity(n * width);
        for p in 0..n {
            rows.extend(env.row(p, 0, 0, lambda as f32)?);
        }
        let first = greedy(rows)?;
        let asked: Vec<usize> = (0..n).filter(|&p| first[p] != rules.strong).collect();
        let mut rows = Vec::with_capacity(asked.len() * width);
        for &p in &asked {
            rows.extend(env.row(p, 1, first[p], lambda as f32)?);
        }
        let second = greedy(rows)?;
        let mut escalate = vec![false; n];
        for (&p, &d) in asked.iter().zip(&second) {
            escalate[p] = d == 1;
        }
        let mut finals = Vec::with_capacity(n);
        let mut paid = 0f64;
        for p in 0..n {
            let (agent, _) = rules.outcome_of(first[p], escalate[p]);
            finals.push(agent.min(agents - 1));
            paid += raw_costs[first[p]] + if agent != first[p] { raw_costs[agent] } else { 0.0 };
        }
        curve.push(table.point(lambda, &finals));
        cost_paid.push(paid / n.max(1) as f64);
        escalated.push(escalate.iter().filter(|&&e| e).count() as f64 / n.max(1) as f64);
    }
    let (weak, strong) = table.weak_strong();
    let routing = crate::RoutingReport {
        weak: table.agents[weak].clone(),
        strong: table.agents[strong].clone(),
        agents: table.singles(),
        oracle_quality: table.oracle_quality(),
        oracle: table.point(f64::NAN, &table.oracle_choices()),
        summary: table.summarize(curve),
        at: None,
        baseline: None,
    };
    Ok(CascadeReport { n, routing, cost_paid, escalated, one_step: None })
}
