//! Counts and sums over decisions ([`Tally`]) and the dashboard's rollup: the per-10-second
//! rows of `dashboard_rollup` (migration 7) that every write transaction of the log keeps
//! (`log.rs`) and `GET /ui` reads (`dashboard.rs`). Pure code and SQL texts, no database.

use std::collections::BTreeMap;

use crate::types::{Decision, DecisionKind};

/// Counts and sums over some decisions (a bucket, an agent, the whole range): everything a
/// dashboard panel derives its numbers from.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Tally {
    /// Decisions.
    pub decisions: i64,
    /// Of those, sampled (exploration: drawn from the floored probabilities).
    pub sampled: i64,
    /// Greedy (argmax).
    pub greedy: i64,
    /// Forced (chosen by the caller).
    pub forced: i64,
    /// Decisions with a reward.
    pub rewarded: i64,
    /// Sum of their rewards.
    pub reward_sum: f64,
    /// Sum of their squared rewards.
    pub reward_sq_sum: f64,
    /// Decisions that logged a cost weight λ.
    pub cost_weighted: i64,
    /// Sum of those λ.
    pub cost_weight_sum: f64,
    /// Smallest λ logged.
    pub cost_weight_min: Option<f64>,
    /// Largest λ logged.
    pub cost_weight_max: Option<f64>,
    /// Decisions a shadow candidate also scored.
    pub shadowed: i64,
    /// Of those, where the shadow chose the served agent.
    pub shadow_agreed: i64,
    /// The newest shadow version seen.
    pub shadow_version: Option<i64>,
}

/// A mean with its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanCi {
    /// The values averaged.
    pub n: i64,
    /// Their mean.
    pub mean: f64,
    /// The interval's lower end (the mean when n < 2).
    pub low: f64,
    /// Its upper end.
    pub high: f64,
}

impl Tally {
    /// Adds `other`'s counts and sums to these.
    pub fn add(&mut self, other: &Tally) {
        self.decisions += other.decisions;
        self.sampled += other.sampled;
        self.greedy += other.greedy;
        self.forced += other.forced;
        self.rewarded += other.rewarded;
        self.reward_sum += other.reward_sum;
        self.reward_sq_sum += other.reward_sq_sum;
        self.cost_weighted += other.cost_weighted;
        self.cost_weight_sum += other.cost_weight_sum;
        self.cost_weight_min = min_opt(self.cost_weight_min, other.cost_weight_min);
        self.cost_weight_max = max_opt(self.cost_weight_max, other.cost_weight_max);
        self.shadowed += other.shadowed;
        self.shadow_agreed += other.shadow_agreed;
        self.shadow_version = self.shadow_version.max(other.shadow_version);
    }

    /// These counts with `sampled`, `greedy` and `forced` set from `decisions` for a group of
    /// one kind.
    pub(crate) fn of_kind(mut self, kind: DecisionKind) -> Self {
        let n = self.decisions;
        (self.sampled, self.greedy, self.forced) = match kind {
            DecisionKind::Sampled => (n, 0, 0),
            DecisionKind::Greedy => (0, n, 0),
            DecisionKind::Forced => (0, 0, n),
        };
        self
    }

    /// The mean reward with its 95% interval (normal approximation from the count, the sum and
    /// the sum of squares); `None` without a reward.
    pub fn reward(&self) -> Option<MeanCi> {
        mean_ci(self.rewarded, self.reward_sum, self.reward_sq_sum)
    }

    /// The share of decisions with a reward (0 without decisions).
    pub fn rewarded_share(&self) -> f64 {
        share(self.rewarded, self.decisions)
    }

    /// The mean cost weight λ, `None` when no decision logged one.
    pub fn cost_weight_mean(&self) -> Option<f64> {
        (self.cost_weighted > 0).then(|| self.cost_weight_sum / self.cost_weighted as f64)
    }

    /// The share of shadowed decisions where the shadow chose the served agent.
    pub fn shadow_agreement(&self) -> Option<f64> {
        (self.shadowed > 0).then(|| share(self.shadow_agreed, self.shadowed))
    }
}

/// `part / whole`, 0 when `whole` is 0.
pub fn share(part: i64, whole: i64) -> f64 {
    if whole > 0 { part as f64 / whole as f64 } else { 0.0 }
}

/// The mean of `n` values from their sum and sum of squares, with its 95% interval by the
/// normal approximation (sample variance, 1.96 standard errors); `None` when `n` is 0.
pub fn mean_ci(n: i64, sum: f64, sq_sum: f64) -> Option<MeanCi> {
    if n <= 0 {
        return None;
    }
    let nf = n as f64;
    let mean = sum / nf;
    let half = if n > 1 {
        let var = ((sq_sum - nf * mean * mean) / (nf - 1.0)).max(0.0);
        1.96 * (var / nf).sqrt()
    } else {
        0.0
    };
    Some(MeanCi { n, mean, low: mean - half, high: mean + half })
}

fn min_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

/// The rollup's bucket: 10 seconds. `dashboard_rollup` (migration 7) holds the counts and sums
/// of [`Tally`] per 10-second bucket, agent and kind, kept by every write transaction; a
/// dashboard whose bucket is a multiple of it reads whole rollup buckets and scans only the
/// decisions of the range's partial first and last 10 seconds.
pub const ROLLUP_US: i64 = 10_000_000;

/// The rollup bucket of a decision taken at `time_us`: integer division truncating toward zero,
/// as the migration's SQL fills it (the same for every time after 1970).
pub(crate) fn rollup_bucket(time_us: i64) -> i64 {
    (time_us / ROLLUP_US) * ROLLUP_US
}

/// A rollup row's key: bucket, agent, kind.
pub(crate) type RollupKey = (i64, String, &'static str);

/// Adds `decisions` to `into` (one entry per rollup row they touch).
pub(crate) fn tally_decisions<'a>(
    into: &mut BTreeMap<RollupKey, Tally>,
    decisions: impl IntoIterator<Item = &'a Decision>,
) {
    for d in decisions {
        let t = into.entry((rollup_bucket(d.time.0), d.agent.clone(), d.kind.as_str())).or_default();
        t.decisions += 1;
        match d.kind {
            DecisionKind::Sampled => t.sampled += 1,
            DecisionKind::Greedy => t.greedy += 1,
            DecisionKind::Forced => t.forced += 1,
        }
        if let Some(cw) = d.cost_weight.map(f64::from) {
            t.cost_weighted += 1;
            t.cost_weight_sum += cw;
            t.cost_weight_min = min_opt(t.cost_weight_min, Some(cw));
            t.cost_weight_max = max_opt(t.cost_weight_max, Some(cw));
        }
        if let Some(s) = d.shadow {
            t.shadowed += 1;
            t.shadow_agreed += i64::from(s.action == d.action);
            t.shadow_version = t.shadow_version.max(Some(s.version));
        }
    }
}

/// Adds one reward to the rollup row of its decision.
pub(crate) fn tally_reward(into: &mut BTreeMap<RollupKey, Tally>, key: RollupKey, reward: f64) {
    let t = into.entry(key).or_default();
    t.rewarded += 1;
    t.reward_sum += reward;
    t.reward_sq_sum += reward * reward;
}

/// Adds a [`Tally`] to its rollup row (creating it). A write transaction applies its changes in
/// key order, after every other statement, so that concurrent writers (PostgreSQL replicas)
/// lock rollup rows in one order and never deadlock.
pub(crate) const ROLLUP_UPSERT_SQL: &str = "INSERT INTO dashboard_rollup AS r (bucket_us, agent, kind, \
     decisions, rewarded, reward_sum, reward_sq_sum, cost_weighted, cost_weight_sum, cost_weight_min, \
     cost_weight_max, shadowed, shadow_agreed, shadow_version) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
     ON CONFLICT (bucket_us, agent, kind) DO UPDATE SET decisions = r.decisions + excluded.decisions, \
     rewarded = r.rewarded + excluded.rewarded, reward_sum = r.reward_sum + excluded.reward_sum, \
     reward_sq_sum = r.reward_sq_sum + excluded.reward_sq_sum, \
     cost_weighted = r.cost_weighted + excluded.cost_weighted, \
     cost_weight_sum = r.cost_weight_sum + excluded.cost_weight_sum, \
     cost_weight_min = CASE WHEN r.cost_weight_min IS NULL OR excluded.cost_weight_min < r.cost_weight_min \
         THEN excluded.cost_weight_min ELSE r.cost_weight_min END, \
     cost_weight_max = CASE WHEN r.cost_weight_max IS NULL OR excluded.cost_weight_max > r.cost_weight_max \
         THEN excluded.cost_weight_max ELSE r.cost_weight_max END, \
     shadowed = r.shadowed + excluded.shadowed, shadow_agreed = r.shadow_agreed + excluded.shadow_agreed, \
     shadow_version = CASE WHEN r.shadow_version IS NULL OR excluded.shadow_version > r.shadow_version \
         THEN excluded.shadow_version ELSE r.shadow_version END";

/// The rollup key of a rewarded decision.
pub(crate) const ROLLUP_KEY_SQL: &str = "SELECT time_us, agent, kind FROM decisions WHERE id = $1";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_ci_is_the_normal_approximation() {
        assert_eq!(mean_ci(0, 0.0, 0.0), None);
        let one = mean_ci(1, 0.5, 0.25).expect("one");
        assert_eq!((one.mean, one.low, one.high), (0.5, 0.5, 0.5));
        // 0, 1, 0, 1: mean 0.5, sample variance 1/3, se = sqrt(1/12).
        let m = mean_ci(4, 2.0, 2.0).expect("four");
        let half = 1.96 * (1.0f64 / 12.0).sqrt();
        assert!((m.mean - 0.5).abs() < 1e-12 && (m.high - 0.5 - half).abs() < 1e-12, "{m:?}");
        assert!((m.low - 0.5 + half).abs() < 1e-12);
    }
}
