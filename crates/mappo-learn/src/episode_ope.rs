//! Off-policy evaluation of a policy over episodes (conversations): what return a candidate
//! would have had on logged episodes that another policy decided.
//!
//! For logged episode i with steps t — logged propensities μ_it, the candidate's probabilities
//! π_it of the logged actions (acting as it would be served), rewards r_it (an episode reward
//! counts on its last step) — and the cumulative ratio ρ_it = Π_{s≤t} π_is / μ_is:
//!
//! - **PDIS** (per-decision importance sampling): V = (1/N) Σ_i Σ_t γ^t ρ_it r_it.
//! - **WPDIS** (its weighted form): V = Σ_t γ^t (Σ_i ρ_it r_it) / (Σ_i ρ_it), an episode that has
//!   ended before step t keeping its last ratio with reward 0 (as if absorbed).
//!
//! Intervals: the 2.5% and 97.5% quantiles of the estimate over [`RESAMPLES`] bootstrap
//! resamples of the episodes (seeded), the standard error their standard deviation. The
//! effective sample size is (Σ_i ρ_i)² / Σ_i ρ_i² over the final cumulative ratios; long
//! episodes make those explode, and an ESS under 5% of the episodes is warned about.

use mappo_config::Rng;
use mappo_env::ObservationSpec;
use mappo_train::EpisodeShape;
use serde::Serialize;

use crate::LearnError;
use crate::events::LearnEvent;
use crate::ope::{Candidate, Estimate};

/// Bootstrap resamples of the intervals.
pub const RESAMPLES: usize = 1000;

/// One logged episode as the estimators need it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedEpisode {
    /// The policy inputs of its steps, row-major `[steps, width]`.
    pub contexts: Vec<f32>,
    /// The logged action of each step.
    pub actions: Vec<usize>,
    /// μ of each logged action, in (0, 1].
    pub propensities: Vec<f64>,
    /// Each step's reward (the episode reward added to the last step's).
    pub rewards: Vec<f64>,
}

impl LoggedEpisode {
    /// Number of steps.
    pub fn len(&self) -> usize {
        self.actions.len()
    }

    /// True for an episode without steps.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

/// Why a logged episode cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    /// A step was not sampled (greedy or forced): no propensity weighs it.
    NotSampled,
    /// A step's input does not fit the policy, or its action or propensity is out of range.
    Bad,
    /// A cascade's second step: its input (the first agent's answer) is not logged.
    NoAnswer,
}

/// The policy inputs and rewards of an episode's steps (`steps`, in step order), laid out as the
/// policy of `layout` and `shape` sees them (each step after the earlier steps' actions), the
/// episode's `end_reward` added to the last step: what the learner trains on and OPE weighs.
pub fn episode_inputs(
    steps: &[LearnEvent],
    end_reward: Option<f64>,
    layout: &ObservationSpec,
    shape: EpisodeShape,
    num_agents: usize,
) -> Result<LoggedEpisode, Unusable> {
    if steps.iter().any(|s| s.kind != mappo_log::DecisionKind::Sampled) {
        return Err(Unusable::NotSampled);
    }
    if matches!(shape, EpisodeShape::Cascade { .. }) && steps.len() > 1 {
        return Err(Unusable::NoAnswer);
    }
    let actions: Vec<u32> = steps.iter().map(|s| s.action).collect();
    let mut ep = LoggedEpisode {
        contexts: Vec::new(),
        actions: Vec::new(),
        propensities: Vec::new(),
        rewards: Vec::new(),
    };
    for (k, s) in steps.iter().enumerate() {
        let ok = (s.num_agents == 0 || s.num_agents <= num_agents)
            && (s.action as usize) < num_agents
            && s.propensity.is_finite()
            && s.propensity > 0.0
            && s.propensity <= 1.0;
        let row = layout
            .row(&s.embedding, shape.extras(&actions[..k], s.cost_weight, None))
            .filter(|r| ok && r.iter().all(|v| v.is_finite()))
            .ok_or(Unusable::Bad)?;
        ep.contexts.extend(row);
        ep.actions.push(s.action as usize);
        ep.propensities.push(f64::from(s.propensity));
        ep.rewards.push(s.reward.unwrap_or(0.0));
    }
    if let Some(last) = ep.rewards.last_mut() {
        *last += end_reward.unwrap_or(0.0);
    }
    Ok(ep)
}

/// The newest `limit` ended episodes of a decision log, laid out for a policy of `layout` and
/// `shape` over `num_agents` agents (rewards later than `reward_wait_s` after their decision
/// count as missing, as for the learner), with a warning per kind of episode left out.
pub async fn read_ended_episodes(
    log: &mappo_log::DecisionLog,
    limit: u32,
    reward_wait_s: f64,
    layout: &ObservationSpec,
    shape: EpisodeShape,
    num_agents: usize,
) -> Result<(Vec<LoggedEpisode>, Vec<String>), LearnError> {
    let mut out = Vec::new();
    let (mut not_sampled, mut bad, mut no_answer) = (0, 0, 0);
    for id in log.ended_episodes(limit).await? {
        let events = log.episode_events(&id).await?;
        let steps: Vec<LearnEvent> =
            events.iter().map(|e| LearnEvent::from_joined(e, reward_wait_s)).collect();
        let end_reward = events.first().and_then(|e| e.episode_end).and_then(|e| e.reward);
        match episode_inputs(&steps, end_reward, layout, shape, num_agents) {
            Ok(ep) if !ep.is_empty() => out.push(ep),
            Ok(_) => {}
            Err(Unusable::NotSampled) => not_sampled += 1,
            Err(Unusable::Bad) => bad += 1,
            Err(Unusable::NoAnswer) => no_answer += 1,
        }
    }
    out.reverse(); // oldest first
    let mut warnings = Vec::new();
    for (n, why) in [
        (not_sampled, "with a greedy or forced step (no propensity to weigh it)"),
        (bad, "whose steps do not fit the policy (inputs, agents or propensities)"),
        (no_answer, "of cascades with a second step (the first answer is not logged)"),
    ] {
        if n > 0 {
            warnings.push(format!("{n} ended episodes left out, {why}"));
        }
    }
    Ok((out, warnings))
}

/// PDIS and WPDIS of a candidate on logged episodes, with the logs' own figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpisodeOpeReport {
    /// Episodes used.
    pub n: usize,
    /// Their steps.
    pub steps: usize,
    /// The discount of the returns.
    pub gamma: f64,
    /// Effective sample size on the final cumulative ratios.
    pub ess: f64,
    /// Mean discounted return of the logging policy on the episodes used.
    pub logging_value: f64,
    /// Per-decision importance sampling.
    pub pdis: Estimate,
    /// Weighted per-decision importance sampling.
    pub wpdis: Estimate,
    /// Excluded episodes, a small effective sample size.
    pub warnings: Vec<String>,
}

/// PDIS and WPDIS for episodes of `lengths` steps with per-step ratios π/μ (`ratios`) and
/// rewards, flattened episode after episode: `(pdis, wpdis)`.
fn estimators(lengths: &[usize], ratios: &[f64], rewards: &[f64], gamma: f64, pick: &[usize]) -> (f64, f64) {
    let starts: Vec<usize> = lengths
        .iter()
        .scan(0, |s, &l| {
            let start = *s;
            *s += l;
            Some(start)
        })
        .collect();
    let horizon = lengths.iter().copied().max().unwrap_or(0);
    let (mut num, mut den) = (vec![0f64; horizon], vec![0f64; horizon]);
    let mut pdis = 0f64;
    for &i in pick {
        let (start, len) = (starts[i], lengths[i]);
        let mut rho = 1f64;
        let mut disc = 1f64;
        for t in 0..horizon {
            let r = if t < len {
                rho *= ratios[start + t];
                rewards[start + t]
            } else {
                0.0
            };
            pdis += disc * rho * r;
            num[t] += rho * r;
            den[t] += rho;
            disc *= gamma;
        }
    }
    let n = pick.len().max(1) as f64;
    let mut wpdis = 0f64;
    let mut disc = 1f64;
    for t in 0..horizon {
        if den[t] > 0.0 {
            wpdis += disc * num[t] / den[t];
        }
        disc *= gamma;
    }
    (pdis / n, wpdis)
}

/// The estimate with its bootstrap interval.
fn bootstrap(value: f64, draws: &mut [f64]) -> Estimate {
    draws.sort_by(f64::total_cmp);
    let q = |p: f64| draws[((draws.len() - 1) as f64 * p).round() as usize];
    let m = draws.iter().sum::<f64>() / draws.len() as f64;
    let se = (draws.iter().map(|d| (d - m).powi(2)).sum::<f64>() / (draws.len() - 1).max(1) as f64).sqrt();
    Estimate { value, ci: [q(0.025), q(0.975)], se }
}

/// PDIS and WPDIS on episodes given the candidate's probability of each logged action
/// (`target`, flattened like the episodes' steps); `seed` seeds the bootstrap.
pub fn estimate(
    episodes: &[LoggedEpisode],
    target: &[f64],
    gamma: f64,
    seed: u64,
) -> Result<EpisodeOpeReport, LearnError> {
    let lengths: Vec<usize> = episodes.iter().map(LoggedEpisode::len).collect();
    let steps: usize = lengths.iter().sum();
    if episodes.is_empty() || steps == 0 {
        return Err(LearnError::Mismatch("no usable episode to evaluate on".into()));
    }
    if target.len() != steps {
        return Err(LearnError::Mismatch(format!("{} target probabilities for {steps} steps", target.len())));
    }
    let mu = episodes.iter().flat_map(|e| e.propensities.iter().copied());
    let ratios: Vec<f64> = target.iter().zip(mu).map(|(p, m)| p / m).collect();
    let rewards: Vec<f64> = episodes.iter().flat_map(|e| e.rewards.iter().copied()).collect();
    let all: Vec<usize> = (0..episodes.len()).collect();
    let (pdis, wpdis) = estimators(&lengths, &ratios, &rewards, gamma, &all);
    let mut rng = Rng::derived(seed, "episode-ope-bootstrap");
    let n = episodes.len();
    let (mut bp, mut bw) = (Vec::with_capacity(RESAMPLES), Vec::with_capacity(RESAMPLES));
    let mut pick = vec![0usize; n];
    for _ in 0..RESAMPLES {
        for p in pick.iter_mut() {
            *p = rng.below(n as u64) as usize;
        }
        let (a, b) = estimators(&lengths, &ratios, &rewards, gamma, &pick);
        bp.push(a);
        bw.push(b);
    }
    // Final cumulative ratios and the logging policy's own discounted return.
    let mut finals = Vec::with_capacity(n);
    let mut logging = 0f64;
    let mut start = 0;
    for &len in &lengths {
        finals.push(ratios[start..start + len].iter().product::<f64>());
        logging += rewards[start..start + len]
            .iter()
            .enumerate()
            .map(|(t, r)| gamma.powi(t as i32) * r)
            .sum::<f64>();
        start += len;
    }
    let (s1, s2) = finals.iter().fold((0f64, 0f64), |(a, b), w| (a + w, b + w * w));
    let ess = if s2 > 0.0 { s1 * s1 / s2 } else { 0.0 };
    let mut warnings = Vec::new();
    if ess < 0.05 * n as f64 {
        warnings.push(format!(
            "effective sample size {ess:.1} is under 5% of the {n} episodes: the cumulative ratios are dominated by a few episodes, the estimates are unreliable"
        ));
    }
    Ok(EpisodeOpeReport {
        n,
        steps,
        gamma,
        ess,
        logging_value: logging / n as f64,
        pdis: bootstrap(pdis, &mut bp),
        wpdis: bootstrap(wpdis, &mut bw),
        warnings,
    })
}

/// PDIS and WPDIS of `candidate` (acting as it would be served) on logged episodes.
pub fn evaluate(
    episodes: &[LoggedEpisode],
    candidate: &Candidate,
    gamma: f64,
    seed: u64,
) -> Result<EpisodeOpeReport, LearnError> {
    let width = candidate
        .layout()
        .map(ObservationSpec::width)
        .or_else(|| episodes.first().map(|e| e.contexts.len() / e.len().max(1)))
        .unwrap_or(0);
    let contexts: Vec<f32> = episodes.iter().flat_map(|e| e.contexts.iter().copied()).collect();
    let steps: usize = episodes.iter().map(LoggedEpisode::len).sum();
    let probs = candidate.action_probabilities(&contexts, steps, width)?;
    let k = candidate.num_actions();
    let actions = episodes.iter().flat_map(|e| e.actions.iter().copied());
    let target: Vec<f64> =
        actions.enumerate().map(|(i, a)| probs.get(i * k + a).copied().unwrap_or(0.0)).collect();
    estimate(episodes, &target, gamma, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-step chain: two actions per step, reward 1 at the end when both actions were 0.
    /// The truth of a policy taking 0 with probability p at each step is p².
    fn log(n: usize, mu: f64, seed: u64) -> Vec<LoggedEpisode> {
        let mut rng = Rng::new(seed);
        (0..n)
            .map(|_| {
                let a: Vec<usize> = (0..2).map(|_| usize::from(rng.uniform() >= mu)).collect();
                let p: Vec<f64> = a.iter().map(|&x| if x == 0 { mu } else { 1.0 - mu }).collect();
                let r = f64::from(u8::from(a == [0, 0]));
                LoggedEpisode { contexts: vec![0.0; 2], actions: a, propensities: p, rewards: vec![0.0, r] }
            })
            .collect()
    }

    fn target(eps: &[LoggedEpisode], p: f64) -> Vec<f64> {
        eps.iter().flat_map(|e| e.actions.iter().map(move |&a| if a == 0 { p } else { 1.0 - p })).collect()
    }

    #[test]
    fn pdis_and_wpdis_find_the_truth_and_their_intervals_cover_it() {
        let (p, truth) = (0.8, 0.64);
        let mut covered = (0, 0);
        let mut err = (0.0, 0.0);
        for seed in 0..20 {
            let eps = log(2000, 0.5, seed);
            let r = estimate(&eps, &target(&eps, p), 1.0, seed).expect("estimate");
            assert_eq!((r.n, r.steps), (2000, 4000));
            covered.0 += usize::from(r.pdis.ci[0] <= truth && truth <= r.pdis.ci[1]);
            covered.1 += usize::from(r.wpdis.ci[0] <= truth && truth <= r.wpdis.ci[1]);
            err.0 += (r.pdis.value - truth).abs() / 20.0;
            err.1 += (r.wpdis.value - truth).abs() / 20.0;
            assert!((r.logging_value - 0.25).abs() < 0.04, "{}", r.logging_value);
            assert!(r.ess > 100.0 && r.ess < 2000.0, "{}", r.ess);
        }
        assert!(covered.0 >= 17 && covered.1 >= 17, "coverage {covered:?} of 20");
        assert!(err.0 < 0.04 && err.1 < 0.04, "mean errors {err:?}");
    }

    #[test]
    fn the_logging_policy_is_estimated_exactly_and_a_tiny_ess_is_warned_about() {
        let eps = log(500, 0.5, 1);
        let r = estimate(&eps, &target(&eps, 0.5), 1.0, 1).expect("estimate");
        assert!(
            (r.pdis.value - r.logging_value).abs() < 1e-12 && (r.wpdis.value - r.logging_value).abs() < 1e-12
        );
        assert!((r.ess - 500.0).abs() < 1e-9 && r.warnings.is_empty());
        // A deterministic candidate far from a lopsided logger: few episodes carry all weight.
        let eps = log(500, 0.95, 2);
        let r = estimate(&eps, &target(&eps, 0.0), 1.0, 2).expect("estimate");
        assert!(r.warnings.iter().any(|w| w.contains("effective sample size")), "{r:?}");
        assert!(estimate(&[], &[], 1.0, 0).is_err());
        assert!(estimate(&eps, &[0.5], 1.0, 0).is_err());
    }

    #[test]
    fn discounting_weighs_later_steps_less() {
        let eps = log(300, 0.5, 3);
        let t = target(&eps, 0.5);
        let (full, half) =
            (estimate(&eps, &t, 1.0, 3).expect("γ=1"), estimate(&eps, &t, 0.5, 3).expect("γ=½"));
        assert!((half.pdis.value - 0.5 * full.pdis.value).abs() < 1e-12, "reward only at step 2");
    }
}
