//! Calibration: the cost weight λ at which a cost-aware router meets a budget on a corpus.

use std::path::Path;

use candle_core::Device;
use mappo_env::text::{EmbedProgress, load_embedder};
use mappo_train::{Checkpoint, RoutingPolicy};
use serde::Serialize;

use crate::EvalError;
use crate::corpus::{Decider, text_config};
use crate::curve::{CurvePoint, OutcomeTable};

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
) -> Result<Calibration, EvalError> {
    let ckpt = Checkpoint::load(ckpt_path, device)?;
    let cfg = text_config(&ckpt, ckpt_path)?;
    let policy = RoutingPolicy::from_checkpoint(&ckpt, device)?;
    if !policy.cost_aware() {
        return Err(EvalError::Checkpoint {
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
                EvalError::Setup(format!(
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
    let decider = Decider::new(&policy, &cached.rows)?;
    let table = OutcomeTable::new(agents.clone(), costs, vec![0.0; n * agents.len()])?;
    let measure = |l: f64| -> Result<(f64, CurvePoint), EvalError> {
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
        return Err(EvalError::Setup(format!(
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
