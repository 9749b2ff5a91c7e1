//! Off-policy evaluation: the value (mean reward) a candidate policy would have had on logged
//! traffic, estimated from decisions another policy took.
//!
//! For a usable logged event i — context x_i, action a_i taken with probability μ_i, reward r_i —
//! and a candidate π with w_i = π(a_i|x_i) / μ_i:
//!
//! - **IPS**: V = (1/n) Σ w_i r_i.
//! - **SNIPS**: V = Σ w_i r_i / Σ w_i.
//! - **DR**: V = (1/n) Σ [ Σ_a π(a|x_i) r̂(x_i,a) + w_i (r_i − r̂(x_i,a_i)) ], with a reward model
//!   r̂ fitted by **cross-fitting**: the events are split into `folds` folds (event i is in fold
//!   i mod `folds`) and r̂ for the events of one fold is fitted on the others only. The reward
//!   model is a per-action ridge regression on the context (the candidate's policy input: the
//!   embedding, and λ for a cost-aware router) with an unpenalised intercept — mappo's one ridge
//!   solver, [`mappo_eval::ridge`] —, clipped to the observed reward range.
//!
//! Each estimate carries a 95% confidence interval from the normal approximation on the
//! per-event terms (IPS, DR) or on the delta-method influence terms w_i (r_i − V) / mean(w)
//! (SNIPS). The effective sample size is (Σ w)² / Σ w².
//!
//! **Which events are used**: sampled decisions with a reward, a propensity in (0, 1] (or
//! `probabilities[action]` when the log has no propensity), an action inside the candidate's
//! agents and a context the candidate's input layout can be built from. Greedy decisions (propensity 1, no
//! exploration) and forced ones are excluded; every exclusion, and every suspicious propensity
//! (tiny, or different from `probabilities[action]`), is reported in
//! [`OpeReport::warnings`].
//!
//! **How the candidate acts**: as it would be served. [`Candidate::from_checkpoint`] runs the
//! checkpoint's [`RoutingPolicy`] — the same code, input layout and softmax as `mappo serve` and
//! `mappo route` — and floors the probabilities at `min_prob` exactly as `mappo serve` does
//! (`serve.min_prob`, water-filling, [`mappo_nn::floor_probabilities`]); with
//! [`Candidate::greedy`] it takes the argmax (probability 1), as a greedy route does.

use std::fmt;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use mappo_env::ObservationSpec;
use mappo_eval::ridge::Gram;
use mappo_nn::floor_probabilities;
use mappo_train::{Checkpoint, RoutingPolicy};
use serde::Serialize;

use crate::{LearnError, LoggedEvent};

/// The two-sided 95% quantile of the standard normal distribution.
pub const Z95: f64 = 1.959_963_984_540_054;

/// A propensity below this is reported as tiny (its weight can dominate an estimate).
pub const TINY_PROPENSITY: f64 = 1e-3;

/// Largest accepted difference between a logged propensity and `probabilities[action]`.
pub const PROPENSITY_TOLERANCE: f64 = 1e-4;

/// A policy's action probabilities for a batch of contexts: what OPE needs of a candidate.
pub trait ActionProbabilities: Send + Sync {
    /// Number of actions (agents).
    fn num_actions(&self) -> usize;
    /// The layout of the policy input it takes (`None`: the logged embedding as it is, of any
    /// width).
    fn layout(&self) -> Option<&ObservationSpec>;
    /// Row-major `[n, num_actions]` probabilities for `n` contexts of width `dim` (row-major).
    fn probabilities(&self, contexts: &[f32], n: usize, dim: usize) -> Result<Vec<f32>, LearnError>;
}

/// A routing policy: its softmax, exactly as `mappo serve` computes it before the floor.
struct Network {
    policy: RoutingPolicy,
}

impl ActionProbabilities for Network {
    fn num_actions(&self) -> usize {
        self.policy.num_actions()
    }

    fn layout(&self) -> Option<&ObservationSpec> {
        Some(self.policy.spec())
    }

    fn probabilities(&self, contexts: &[f32], n: usize, dim: usize) -> Result<Vec<f32>, LearnError> {
        let mut out = Vec::with_capacity(n * self.num_actions());
        // Chunks bound the memory of one forward pass.
        for chunk in contexts.chunks(4096 * dim.max(1)) {
            let rows = chunk.len() / dim.max(1);
            let obs = Tensor::from_slice(chunk, (rows, dim), self.policy.device())
                .map_err(|e| LearnError::Train(e.into()))?;
            out.extend(self.policy.probabilities(&obs)?.into_iter().flatten());
        }
        Ok(out)
    }
}

/// A fixed function of the context (tests, synthetic policies).
struct FnPolicy<F> {
    actions: usize,
    f: F,
}

impl<F> ActionProbabilities for FnPolicy<F>
where
    F: Fn(&[f32]) -> Vec<f32> + Send + Sync,
{
    fn num_actions(&self) -> usize {
        self.actions
    }

    fn layout(&self) -> Option<&ObservationSpec> {
        None
    }

    fn probabilities(&self, contexts: &[f32], n: usize, dim: usize) -> Result<Vec<f32>, LearnError> {
        let mut out = Vec::with_capacity(n * self.actions);
        for i in 0..n {
            let p = (self.f)(&contexts[i * dim..(i + 1) * dim]);
            if p.len() != self.actions {
                return Err(LearnError::Mismatch(format!(
                    "the policy gave {} probabilities for {} actions",
                    p.len(),
                    self.actions
                )));
            }
            out.extend(p);
        }
        Ok(out)
    }
}

/// A candidate policy as it would be served: its probabilities floored at `min_prob`, or its
/// argmax when greedy.
#[derive(Clone)]
pub struct Candidate {
    policy: Arc<dyn ActionProbabilities>,
    /// The exploration floor (`serve.min_prob`) applied to the probabilities; 0 for none.
    pub min_prob: f64,
    /// Act with the argmax (probability 1) instead of the probabilities.
    pub greedy: bool,
    /// A name for messages (e.g. the checkpoint's path or `version 3`).
    pub name: String,
    /// What its episodes look like (one step unless it comes from a checkpoint of episodes).
    pub shape: mappo_train::EpisodeShape,
}

impl fmt::Debug for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Candidate")
            .field("name", &self.name)
            .field("actions", &self.policy.num_actions())
            .field("min_prob", &self.min_prob)
            .field("greedy", &self.greedy)
            .finish()
    }
}

impl Candidate {
    /// The policy of a checkpoint ([`RoutingPolicy`]), floored at the checkpoint config's
    /// `serve.min_prob`; its contexts are built from logged events by the policy's
    /// [`ObservationSpec`] (the embedding, then the logged λ for a cost-aware router).
    pub fn from_checkpoint(ckpt: &Checkpoint, device: &Device) -> Result<Self, LearnError> {
        let policy = RoutingPolicy::from_checkpoint(ckpt, device)?;
        let name = ckpt.path.as_ref().map_or_else(|| "checkpoint".to_string(), |p| p.display().to_string());
        Ok(Candidate {
            min_prob: policy.min_prob(),
            shape: policy.episode(),
            policy: Arc::new(Network { policy }),
            greedy: false,
            name,
        })
    }

    /// Any function from a context to `actions` probabilities (no floor unless set).
    pub fn from_fn<F>(name: &str, actions: usize, f: F) -> Self
    where
        F: Fn(&[f32]) -> Vec<f32> + Send + Sync + 'static,
    {
        Candidate {
            policy: Arc::new(FnPolicy { actions, f }),
            min_prob: 0.0,
            greedy: false,
            name: name.into(),
            shape: mappo_train::EpisodeShape::OneStep,
        }
    }

    /// The same candidate with another floor.
    pub fn with_min_prob(mut self, min_prob: f64) -> Self {
        self.min_prob = min_prob;
        self
    }

    /// The same candidate acting greedily (`true`) or with its probabilities.
    pub fn with_greedy(mut self, greedy: bool) -> Self {
        self.greedy = greedy;
        self
    }

    /// Number of actions.
    pub fn num_actions(&self) -> usize {
        self.policy.num_actions()
    }

    /// The layout of the policy input it takes (`None`: logged embeddings as they are).
    pub fn layout(&self) -> Option<&ObservationSpec> {
        self.policy.layout()
    }

    /// Row-major `[n, actions]` probabilities with which it acts on `contexts`: floored at
    /// `min_prob`, or one-hot on the argmax (first on ties) when greedy.
    pub fn action_probabilities(
        &self,
        contexts: &[f32],
        n: usize,
        dim: usize,
    ) -> Result<Vec<f64>, LearnError> {
        if contexts.len() != n * dim {
            return Err(LearnError::Mismatch(format!(
                "{} floats for {n} contexts of width {dim}",
                contexts.len()
            )));
        }
        let k = self.num_actions();
        let raw = self.policy.probabilities(contexts, n, dim)?;
        let mut out = Vec::with_capacity(n * k);
        for row in raw.chunks(k.max(1)) {
            if self.greedy {
                let best = row.iter().enumerate().fold(0, |b, (i, x)| if *x > row[b] { i } else { b });
                out.extend((0..k).map(|i| if i == best { 1.0 } else { 0.0 }));
            } else if self.min_prob > 0.0 {
                out.extend(floor_probabilities(row, self.min_prob).into_iter().map(f64::from));
            } else {
                out.extend(row.iter().map(|&p| f64::from(p)));
            }
        }
        Ok(out)
    }
}

/// Settings of [`evaluate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpeOptions {
    /// Cross-fitting folds of DR's reward model (≥ 2).
    pub folds: usize,
    /// Ridge penalty of the reward model.
    pub ridge: f64,
    /// The range rewards can take (`[serve.reward_min, serve.reward_max]`), when known: SNIPS's
    /// interval is then at least the Wilson score interval of a mean over the effective sample
    /// size, in the range the used rewards span (this one when they are all equal), so it stays
    /// honest where the delta method collapses (every matched reward equal gives a standard
    /// error of 0). `None`: the delta method alone.
    pub reward_range: Option<[f64; 2]>,
}

impl Default for OpeOptions {
    fn default() -> Self {
        OpeOptions { folds: 5, ridge: 1.0, reward_range: None }
    }
}

/// The Wilson score interval (95%) of a mean `value` of rewards in `range` seen `n` times
/// (here the effective sample size), mapped back to the reward scale.
pub fn score_interval(value: f64, range: [f64; 2], n: f64) -> [f64; 2] {
    let [lo, hi] = range;
    let width = hi - lo;
    if width.is_nan() || width <= 0.0 || n.is_nan() || n <= 0.0 || !value.is_finite() {
        return [lo.min(value), hi.max(value)];
    }
    let p = ((value - lo) / width).clamp(0.0, 1.0);
    let z2 = Z95 * Z95;
    let denom = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denom;
    let half = Z95 / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    [lo + width * (center - half).max(0.0), lo + width * (center + half).min(1.0)]
}

/// One estimate with its 95% confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    /// The estimated mean reward.
    pub value: f64,
    /// The 95% confidence interval `[low, high]` (normal approximation).
    pub ci: [f64; 2],
    /// The standard error.
    pub se: f64,
}

impl Estimate {
    fn normal(value: f64, se: f64) -> Self {
        Estimate { value, ci: [value - Z95 * se, value + Z95 * se], se }
    }
}

/// IPS, SNIPS and DR of one candidate on one log, and the log's own figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpeReport {
    /// Events used.
    pub n: usize,
    /// Effective sample size (Σ w)² / Σ w².
    pub ess: f64,
    /// Mean reward of the logging policy on the events used.
    pub logging_value: f64,
    /// Inverse propensity scoring.
    pub ips: Estimate,
    /// Self-normalised IPS.
    pub snips: Estimate,
    /// Doubly robust, with a cross-fitted reward model.
    pub dr: Estimate,
    /// Excluded events, suspicious propensities, a small effective sample size.
    pub warnings: Vec<String>,
}

/// A bandit log in arrays: what the estimators compute on (see [`estimate`]).
#[derive(Debug, Clone, Copy)]
pub struct BanditData<'a> {
    /// Number of actions.
    pub k: usize,
    /// The logged action of each event.
    pub actions: &'a [usize],
    /// μ(a_i|x_i) of each event, in (0, 1].
    pub propensities: &'a [f64],
    /// The reward of each event.
    pub rewards: &'a [f64],
    /// Row-major `[n, k]`: π(a|x_i).
    pub target: &'a [f64],
    /// Row-major `[n, k]`: r̂(x_i, a) (for DR).
    pub reward_model: &'a [f64],
}

/// The estimates on arrays: IPS, SNIPS, DR, the effective sample size and the logging value.
/// Needs at least one event and consistent lengths.
pub fn estimate(d: &BanditData<'_>) -> Result<(Estimate, Estimate, Estimate, f64, f64), LearnError> {
    let n = d.actions.len();
    let k = d.k;
    if n == 0 {
        return Err(LearnError::NoEvents("no event to estimate on".into()));
    }
    if d.propensities.len() != n
        || d.rewards.len() != n
        || d.target.len() != n * k
        || d.reward_model.len() != n * k
    {
        return Err(LearnError::Mismatch("the arrays of the bandit log differ in length".into()));
    }
    let mut w = Vec::with_capacity(n);
    for i in 0..n {
        let a = d.actions[i];
        if a >= k {
            return Err(LearnError::Mismatch(format!("action {a} of event {i} is not below {k}")));
        }
        w.push(d.target[i * k + a] / d.propensities[i]);
    }
    let nf = n as f64;
    let ips_terms: Vec<f64> = w.iter().zip(d.rewards).map(|(w, r)| w * r).collect();
    let ips = mean_and_se(&ips_terms);
    let sw: f64 = w.iter().sum();
    let sw2: f64 = w.iter().map(|x| x * x).sum();
    let ess = if sw2 > 0.0 { sw * sw / sw2 } else { 0.0 };
    let snips = if sw > 0.0 {
        let v = ips_terms.iter().sum::<f64>() / sw;
        let wbar = sw / nf;
        let infl: Vec<f64> = w.iter().zip(d.rewards).map(|(w, r)| w * (r - v) / wbar).collect();
        Estimate::normal(v, mean_and_se(&infl).se)
    } else {
        // The candidate never takes a logged action: SNIPS is undefined; report 0 ± 0.
        Estimate::normal(0.0, 0.0)
    };
    let dr_terms: Vec<f64> = (0..n)
        .map(|i| {
            let row = &d.reward_model[i * k..(i + 1) * k];
            let pi = &d.target[i * k..(i + 1) * k];
            let direct: f64 = pi.iter().zip(row).map(|(p, r)| p * r).sum();
            direct + w[i] * (d.rewards[i] - row[d.actions[i]])
        })
        .collect();
    let dr = mean_and_se(&dr_terms);
    let logging = d.rewards.iter().sum::<f64>() / nf;
    Ok((ips, snips, dr, ess, logging))
}

/// Mean and standard error (sample standard deviation / √n; 0 for one event).
fn mean_and_se(t: &[f64]) -> Estimate {
    let n = t.len() as f64;
    let m = t.iter().sum::<f64>() / n;
    let var = if t.len() > 1 { t.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    Estimate::normal(m, (var / n).sqrt())
}

/// Counts of the excluded and suspicious events, turned into warnings.
#[derive(Debug, Default)]
struct Tally {
    greedy: usize,
    forced: usize,
    no_reward: usize,
    no_propensity: usize,
    bad_propensity: usize,
    inconsistent: usize,
    tiny: usize,
    bad_action: usize,
    no_context: usize,
    bad_width: usize,
    probs_len: usize,
    no_support: usize,
}

impl Tally {
    fn warnings(&self, total: usize) -> Vec<String> {
        let mut w = Vec::new();
        let mut say = |n: usize, what: &str| {
            if n > 0 {
                w.push(format!("{n} of {total} events {what}"));
            }
        };
        say(self.greedy, "are greedy decisions (propensity 1, no exploration): excluded");
        say(self.forced, "are forced decisions (not chosen by the policy): excluded");
        say(self.no_reward, "have no reward: excluded");
        say(self.no_propensity, "have neither a propensity nor probabilities: excluded");
        say(self.bad_propensity, "have a propensity outside (0, 1]: excluded");
        say(self.bad_action, "have an action outside the candidate's agents: excluded");
        say(self.probs_len, "log another number of probabilities than the candidate's agents: excluded");
        say(self.no_context, "have neither an embedding nor a text: excluded");
        say(self.bad_width, "have an embedding of another width than the candidate's: excluded");
        say(
            self.inconsistent,
            &format!(
                "have a propensity that differs from probabilities[action] by more than {PROPENSITY_TOLERANCE} (the propensity is used)"
            ),
        );
        say(self.tiny, &format!("have a tiny propensity (< {TINY_PROPENSITY}): their weights may dominate"));
        say(
            self.no_support,
            "give probability 0 (logged) to an action the candidate may take: every estimate but DR's direct part misses it",
        );
        w
    }
}

/// The usable events of a log in arrays, with the reasons the others were left out.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// Number of actions.
    pub k: usize,
    /// Context width.
    pub dim: usize,
    /// Row-major `[n, dim]` contexts.
    pub contexts: Vec<f32>,
    /// Logged actions.
    pub actions: Vec<usize>,
    /// Logged propensities μ(a_i|x_i).
    pub propensities: Vec<f64>,
    /// Rewards.
    pub rewards: Vec<f64>,
    /// Row-major `[n, k]` logged probabilities where every used event has them (else empty).
    pub logged: Vec<f64>,
    /// Warnings about excluded or suspicious events.
    pub warnings: Vec<String>,
}

impl Prepared {
    /// Number of usable events.
    pub fn len(&self) -> usize {
        self.actions.len()
    }

    /// True when no event is usable.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

/// Selects the usable events for `k` actions and builds their contexts with `layout` (`None`:
/// the logged embeddings as they are, all of the first one's width). Events without an
/// embedding are excluded: embed their texts first (the CLI does, with the checkpoint's
/// embedder).
pub fn prepare(
    events: &[LoggedEvent],
    k: usize,
    layout: Option<&ObservationSpec>,
) -> Result<Prepared, LearnError> {
    let layout = match layout {
        Some(l) => l.clone(),
        None => ObservationSpec::embedding(
            events.iter().find_map(|e| e.embedding.as_ref().map(Vec::len)).unwrap_or(0),
        ),
    };
    let dim = layout.width();
    let mut t = Tally::default();
    let mut p = Prepared {
        k,
        dim,
        contexts: Vec::new(),
        actions: Vec::new(),
        propensities: Vec::new(),
        rewards: Vec::new(),
        logged: Vec::new(),
        warnings: Vec::new(),
    };
    let mut all_logged = true;
    for e in events {
        match e.kind {
            mappo_log::DecisionKind::Greedy => {
                t.greedy += 1;
                continue;
            }
            mappo_log::DecisionKind::Forced => {
                t.forced += 1;
                continue;
            }
            mappo_log::DecisionKind::Sampled => {}
        }
        let Some(r) = e.reward.filter(|r| r.is_finite()) else {
            t.no_reward += 1;
            continue;
        };
        let Some(mu) = e.logged_propensity() else {
            t.no_propensity += 1;
            continue;
        };
        if !(mu.is_finite() && mu > 0.0 && mu <= 1.0) {
            t.bad_propensity += 1;
            continue;
        }
        if e.action >= k {
            t.bad_action += 1;
            continue;
        }
        if !e.probabilities.is_empty() && e.probabilities.len() != k {
            t.probs_len += 1;
            continue;
        }
        if e.embedding.is_none() {
            t.no_context += 1;
            continue;
        }
        let Some(x) = e.context(&layout).filter(|x| x.iter().all(|v| v.is_finite())) else {
            t.bad_width += 1;
            continue;
        };
        if let Some(&pa) = e.probabilities.get(e.action)
            && (f64::from(pa) - mu).abs() > PROPENSITY_TOLERANCE
        {
            t.inconsistent += 1;
        }
        if mu < TINY_PROPENSITY {
            t.tiny += 1;
        }
        if e.probabilities.is_empty() {
            all_logged = false;
        } else if all_logged {
            p.logged.extend(e.probabilities.iter().map(|&v| f64::from(v)));
        }
        p.contexts.extend_from_slice(&x);
        p.actions.push(e.action);
        p.propensities.push(mu);
        p.rewards.push(r);
    }
    if !all_logged {
        p.logged.clear();
    }
    p.warnings = t.warnings(events.len());
    if p.is_empty() {
        let why = if p.warnings.is_empty() { "the log is empty".to_string() } else { p.warnings.join("; ") };
        return Err(LearnError::NoEvents(why));
    }
    Ok(p)
}

/// Cross-fitted reward model r̂: row-major `[n, k]`, each event's row fitted on the other folds
/// (per action, a ridge regression of the reward on the context with an unpenalised intercept:
/// [`mappo_eval::ridge`]; the mean reward of the other folds where an action has no rows there).
pub fn cross_fit_reward_model(p: &Prepared, opts: &OpeOptions) -> Vec<f64> {
    let n = p.len();
    let (k, dim) = (p.k, p.dim);
    let folds = opts.folds.clamp(2, n.max(2));
    let lo = p.rewards.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = p.rewards.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    // The normal equations of each (fold, action), accumulated once; a fold's model is the sum
    // of the other folds'.
    let mut grams = vec![vec![Gram::zero(dim, 1); k]; folds];
    for i in 0..n {
        grams[i % folds][p.actions[i]].add_row(&p.contexts[i * dim..(i + 1) * dim], &p.rewards[i..=i]);
    }
    let alpha = opts.ridge.max(1e-9);
    let mut out = vec![0.0; n * k];
    for f in 0..folds {
        let test: Vec<usize> = (0..n).filter(|i| i % folds == f).collect();
        let train: Vec<usize> = (0..n).filter(|i| i % folds != f).collect();
        if test.is_empty() {
            continue;
        }
        let fallback = if train.is_empty() {
            0.0
        } else {
            train.iter().map(|&i| p.rewards[i]).sum::<f64>() / train.len() as f64
        };
        for a in 0..k {
            let mut g = Gram::zero(dim, 1);
            for (j, gj) in grams.iter().enumerate() {
                if j != f {
                    g.add(&gj[a]);
                }
            }
            let model = if g.rows() == 0 { None } else { g.solve(alpha) };
            for &i in &test {
                let x = &p.contexts[i * dim..(i + 1) * dim];
                let v = model.as_ref().map_or(fallback, |m| m.predict_one(x, 0));
                out[i * k + a] = v.clamp(lo, hi);
            }
        }
    }
    out
}

/// Estimates the candidate's value on the logged events: selects the usable ones (warning about
/// the rest), computes the candidate's action probabilities, cross-fits DR's reward model and
/// returns IPS, SNIPS and DR with their 95% intervals. Events need an embedding (embed texts
/// first).
pub fn evaluate(
    events: &[LoggedEvent],
    candidate: &Candidate,
    opts: &OpeOptions,
) -> Result<OpeReport, LearnError> {
    let p = prepare(events, candidate.num_actions(), candidate.layout())?;
    let reward_model = cross_fit_reward_model(&p, opts);
    let mut r = evaluate_prepared(&p, candidate, &reward_model)?;
    if let Some(configured) = opts.reward_range {
        // The rewards' own range when they differ, else the configured one (all equal: the
        // delta method's collapse this guards against).
        let lo = p.rewards.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = p.rewards.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let range = if hi > lo { [lo, hi] } else { configured };
        let [a, b] = score_interval(r.snips.value, range, r.ess);
        let [c, d] = r.snips.ci;
        if a < c - 1e-12 || b > d + 1e-12 {
            r.warnings.push(format!(
                "SNIPS's delta-method interval [{c:.4}, {d:.4}] is narrower than the score interval [{a:.4}, {b:.4}] \
                 of a mean in [{}, {}] over the effective sample size {:.1}: the wider one is reported",
                range[0], range[1], r.ess
            ));
            r.snips.ci = [c.min(a), d.max(b)];
        }
    }
    Ok(r)
}

/// [`evaluate`] on prepared events with a given reward model (row-major `[n, k]`): lets one
/// reward model serve several candidates (the promotion gate).
pub fn evaluate_prepared(
    p: &Prepared,
    candidate: &Candidate,
    reward_model: &[f64],
) -> Result<OpeReport, LearnError> {
    let n = p.len();
    let target = candidate.action_probabilities(&p.contexts, n, p.dim)?;
    let (ips, snips, dr, ess, logging_value) = estimate(&BanditData {
        k: p.k,
        actions: &p.actions,
        propensities: &p.propensities,
        rewards: &p.rewards,
        target: &target,
        reward_model,
    })?;
    let mut warnings = p.warnings.clone();
    if !p.logged.is_empty() {
        let unsupported = (0..n)
            .filter(|&i| (0..p.k).any(|a| p.logged[i * p.k + a] <= 0.0 && target[i * p.k + a] > 0.0))
            .count();
        if unsupported > 0 {
            warnings.push(format!(
                "{unsupported} of {n} used events give probability 0 (logged) to an action the candidate may take: \
                 IPS and SNIPS cannot see those actions' rewards"
            ));
        }
    }
    if ess < 0.1 * n as f64 {
        warnings.push(format!(
            "effective sample size {ess:.1} is under 10% of the {n} events: the candidate differs much from the \
             logging policy, estimates are uncertain"
        ));
    }
    Ok(OpeReport { n, ess, logging_value, ips, snips, dr, warnings })
}

#[cfg(test)]
mod tests {
    use mappo_config::Rng;

    use super::*;

    /// A bandit with 3 actions whose mean reward depends on the sign of the 2-d context.
    fn bandit(n: usize, seed: u64, logging: &[f32; 3]) -> (Vec<LoggedEvent>, Vec<[f64; 3]>) {
        let mut rng = Rng::new(seed);
        let mut events = Vec::new();
        let mut means = Vec::new();
        for _ in 0..n {
            let x = [rng.uniform() as f32 * 2.0 - 1.0, rng.uniform() as f32 * 2.0 - 1.0];
            let m = if x[0] > 0.0 { [0.8, 0.3, 0.1] } else { [0.2, 0.5, 0.9] };
            let a = rng.categorical(logging);
            let r = if rng.uniform() < m[a] { 1.0 } else { 0.0 };
            events.push(LoggedEvent {
                decision_id: None,
                policy_version: None,
                action: a,
                agent: None,
                probabilities: logging.to_vec(),
                propensity: Some(f64::from(logging[a])),
                reward: Some(r),
                kind: mappo_log::DecisionKind::Sampled,
                embedding: Some(x.to_vec()),
                text: None,
                cost_weight: None,
            });
            means.push(m);
        }
        (events, means)
    }

    fn smart() -> Candidate {
        Candidate::from_fn(
            "smart",
            3,
            |x| if x[0] > 0.0 { vec![0.9, 0.05, 0.05] } else { vec![0.05, 0.05, 0.9] },
        )
    }

    fn truth(c: &Candidate, events: &[LoggedEvent], means: &[[f64; 3]]) -> f64 {
        let mut v = 0.0;
        for (e, m) in events.iter().zip(means) {
            let x = e.embedding.as_ref().expect("embedding");
            let p = c.action_probabilities(x, 1, x.len()).expect("probabilities");
            v += p.iter().zip(m).map(|(p, m)| p * m).sum::<f64>();
        }
        v / events.len() as f64
    }

    #[test]
    fn snips_keeps_an_honest_interval_when_every_matched_reward_is_equal() {
        // 300 rows, every reward 1: the delta method gives SNIPS the interval [1, 1] (se 0);
        // with the reward range known, the score interval over the effective sample size is
        // reported instead, and said so.
        let (mut ev, _) = bandit(300, 11, &[0.5, 0.3, 0.2]);
        for e in &mut ev {
            e.reward = Some(1.0);
        }
        let c = smart();
        let plain = evaluate(&ev, &c, &OpeOptions::default()).expect("evaluates");
        assert_eq!((plain.snips.value, plain.snips.se), (1.0, 0.0));
        assert_eq!(plain.snips.ci, [1.0, 1.0], "the collapse this guards against");
        let opts = OpeOptions { reward_range: Some([0.0, 1.0]), ..OpeOptions::default() };
        let loose = OpeOptions { reward_range: Some([-1.0, 1.0]), ..OpeOptions::default() };
        let r = evaluate(&ev, &c, &loose).expect("evaluates");
        assert!(r.snips.ci[0] < 0.98 && r.snips.ci[1] == 1.0, "{:?}", r.snips);
        let r = evaluate(&ev, &c, &opts).expect("evaluates");
        assert_eq!(r.snips.value, 1.0);
        let want = score_interval(1.0, [0.0, 1.0], r.ess);
        assert_eq!(r.snips.ci, [want[0], 1.0]);
        // About n / (n + z²) with n the effective sample size.
        let n = r.ess;
        assert!((r.snips.ci[0] - n / (n + Z95 * Z95)).abs() < 1e-9 && r.snips.ci[0] < 0.99, "{:?}", r.snips);
        assert!(r.warnings.iter().any(|w| w.contains("score interval")), "{:?}", r.warnings);
        eprintln!(
            "300 rows, every reward 1: SNIPS {:?} (delta method {:?}), ESS {:.1}",
            r.snips.ci, plain.snips.ci, r.ess
        );
        // On an ordinary log of 0/1 rewards the two intervals nearly agree (the rewards' own
        // range is used, not a looser configured one): little changes.
        let (ev, _) = bandit(3000, 12, &[0.5, 0.3, 0.2]);
        let (a, b) = (
            evaluate(&ev, &c, &OpeOptions::default()).expect("evaluates"),
            evaluate(&ev, &c, &loose).expect("evaluates"),
        );
        let (wa, wb) = (a.snips.ci[1] - a.snips.ci[0], b.snips.ci[1] - b.snips.ci[0]);
        assert!(wb >= wa && wb < 1.3 * wa, "delta width {wa}, reported {wb}");
    }

    #[test]
    fn ips_is_unbiased_on_a_known_bandit() {
        // The average of IPS over many logs is the true value, within its standard error.
        let logging = [0.5f32, 0.3, 0.2];
        let c = smart();
        let (mut sum, mut truth_sum) = (0.0, 0.0);
        let reps = 40;
        for s in 0..reps {
            let (ev, means) = bandit(2000, 100 + s, &logging);
            let r = evaluate(&ev, &c, &OpeOptions::default()).expect("evaluates");
            sum += r.ips.value;
            truth_sum += truth(&c, &ev, &means);
            assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        }
        let (ips, t) = (sum / reps as f64, truth_sum / reps as f64);
        assert!((ips - t).abs() < 0.01, "mean IPS {ips} vs truth {t}");
    }

    #[test]
    fn dr_is_close_and_tighter_than_ips() {
        let (ev, means) = bandit(5000, 7, &[0.5, 0.3, 0.2]);
        let c = smart();
        let t = truth(&c, &ev, &means);
        let r = evaluate(&ev, &c, &OpeOptions::default()).expect("evaluates");
        assert!((r.dr.value - t).abs() < 0.03, "DR {} vs truth {t}", r.dr.value);
        assert!(r.dr.ci[0] <= t && t <= r.dr.ci[1], "{:?} misses {t}", r.dr.ci);
        assert!(r.dr.se < r.ips.se, "DR se {} vs IPS se {}", r.dr.se, r.ips.se);
        assert!(r.logging_value > 0.0 && r.logging_value < 1.0);
    }

    #[test]
    fn ess_is_n_when_the_candidate_is_the_logging_policy() {
        let logging = [0.5f32, 0.3, 0.2];
        let (ev, _) = bandit(500, 3, &logging);
        let same = Candidate::from_fn("same", 3, move |_| logging.to_vec());
        let r = evaluate(&ev, &same, &OpeOptions::default()).expect("evaluates");
        assert!((r.ess - 500.0).abs() < 1e-6, "{}", r.ess);
        // All weights 1: IPS and SNIPS are the logging value.
        assert!((r.ips.value - r.logging_value).abs() < 1e-9);
        assert!((r.snips.value - r.logging_value).abs() < 1e-9);
    }

    #[test]
    fn snips_stays_within_the_reward_bounds() {
        // A candidate far from the logging policy: IPS can leave [0, 1], SNIPS cannot.
        let (ev, _) = bandit(300, 11, &[0.9, 0.05, 0.05]);
        let c = Candidate::from_fn("other", 3, |_| vec![0.0, 0.0, 1.0]);
        let r = evaluate(&ev, &c, &OpeOptions::default()).expect("evaluates");
        assert!((0.0..=1.0).contains(&r.snips.value), "{}", r.snips.value);
        assert!(r.ess < 0.2 * r.n as f64);
        assert!(r.warnings.iter().any(|w| w.contains("effective sample size")), "{:?}", r.warnings);
    }

    #[test]
    fn greedy_and_bad_events_are_excluded_with_warnings() {
        let (mut ev, _) = bandit(50, 5, &[0.5, 0.3, 0.2]);
        ev[0].kind = mappo_log::DecisionKind::Greedy;
        ev[0].propensity = Some(1.0);
        ev[1].reward = None;
        ev[2].propensity = Some(0.0);
        ev[3].propensity = None;
        ev[3].probabilities.clear();
        ev[4].embedding = None;
        ev[5].propensity = Some(ev[5].propensity.expect("set") * 0.5);
        ev[6].action = 7;
        let r = evaluate(&ev, &smart(), &OpeOptions::default()).expect("evaluates");
        assert_eq!(r.n, 44);
        let all = r.warnings.join("\n");
        for needle in [
            "greedy",
            "no reward",
            "outside (0, 1]",
            "neither a propensity",
            "neither an embedding",
            "differs",
            "outside the candidate",
        ] {
            assert!(all.contains(needle), "no `{needle}` in {all}");
        }
    }

    #[test]
    fn an_unusable_log_is_an_error() {
        let (mut ev, _) = bandit(5, 5, &[0.5, 0.3, 0.2]);
        ev.iter_mut().for_each(|e| e.reward = None);
        let e = evaluate(&ev, &smart(), &OpeOptions::default()).expect_err("no events");
        assert!(e.to_string().contains("no reward"), "{e}");
    }

    #[test]
    fn the_floor_and_greedy_change_how_the_candidate_acts() {
        let c = Candidate::from_fn("c", 3, |_| vec![0.97, 0.03, 0.0]);
        let floored = c.clone().with_min_prob(0.05).action_probabilities(&[0.0], 1, 1).expect("p");
        assert!(floored.iter().all(|&p| p >= 0.05 - 1e-7), "{floored:?}");
        assert!((floored.iter().sum::<f64>() - 1.0).abs() < 1e-6);
        let greedy = c.with_greedy(true).action_probabilities(&[0.0], 1, 1).expect("p");
        assert_eq!(greedy, vec![1.0, 0.0, 0.0]);
    }
}
