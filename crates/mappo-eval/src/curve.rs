//! Quality–cost metrics of LLM routers (RouteLLM, arXiv 2406.18665), generalised to N agents
//! with real costs.
//!
//! A router is measured on a corpus whose rows carry every agent's quality (an *outcome
//! corpus*). The *weak* agent is the cheapest, the *strong* one the best single agent (highest
//! mean quality). For a routing of the corpus:
//! - quality `q` = mean quality of the chosen agents; `PGR = (q − q_weak) / (q_strong − q_weak)`;
//! - cost axis `c` = (mean cost − cost_weak) / (cost_strong − cost_weak), which for two agents is
//!   the share of calls to the strong one;
//! - `APGR` = the area under PGR(c) for c ∈ [0, 1]; `CPT(x)` = the least c with PGR(c) ≥ x.
//!
//! A router gives a set of (c, PGR) points (one per cost weight λ of a sweep, or per threshold).
//! The curve is their piecewise-linear interpolation, anchored at (0, 0) (always weak) and
//! (1, 1) (always strong): points are sorted by c, points with the same c are averaged, c is
//! clipped to [0, 1], and the area is the trapezoid rule. Linear interpolation between two
//! routers is achievable (route each prompt to one of them at random), so the curve is one a
//! user could actually get; random routing is the diagonal, APGR 0.5.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::EvalError;

/// One routing of a corpus: at a cost weight λ, what it earned and what it cost.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CurvePoint {
    /// The cost weight λ (or, for the ridge baseline, the score threshold in λ units).
    pub cost_weight: f64,
    /// Mean quality of the chosen agents.
    pub quality: f64,
    /// Mean cost per request of the chosen agents (the agents' `cost` units).
    pub cost: f64,
    /// Share of prompts routed to each agent.
    pub share: BTreeMap<String, f64>,
}

/// One agent used alone.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SingleAgent {
    /// Its name.
    pub agent: String,
    /// Mean quality when it answers every prompt.
    pub quality: f64,
    /// Its cost per request.
    pub cost: f64,
}

/// A router's quality–cost curve and RouteLLM's summary numbers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CurveSummary {
    /// The measured points, in sweep order.
    pub curve: Vec<CurvePoint>,
    /// Area under PGR(c), c ∈ [0, 1]; `null` when the weak and strong agents cost the same or
    /// are equally good (PGR undefined).
    pub apgr: Option<f64>,
    /// Least cost axis value c (for two agents: share of strong calls) with PGR ≥ 0.5.
    pub cpt50: Option<f64>,
    /// Least c with PGR ≥ 0.8.
    pub cpt80: Option<f64>,
}

/// The agents of an outcome corpus: qualities `[n, agents]` and costs, with the derived weak /
/// strong pair.
#[derive(Debug, Clone)]
pub struct OutcomeTable {
    /// Agent names.
    pub agents: Vec<String>,
    /// Cost per request of each agent.
    pub costs: Vec<f64>,
    /// Row-major `[n, agents]` quality.
    pub quality: Vec<f32>,
}

impl OutcomeTable {
    /// Checks the sizes.
    pub fn new(agents: Vec<String>, costs: Vec<f64>, quality: Vec<f32>) -> Result<Self, EvalError> {
        let na = agents.len();
        if na < 2 || costs.len() != na || quality.is_empty() || !quality.len().is_multiple_of(na) {
            return Err(EvalError::Setup(format!(
                "an outcome table needs >= 2 agents, one cost each and [n, agents] qualities; got {na} agents, {} costs, {} qualities",
                costs.len(),
                quality.len()
            )));
        }
        Ok(Self { agents, costs, quality })
    }

    /// Number of prompts.
    pub fn rows(&self) -> usize {
        self.quality.len() / self.agents.len()
    }

    /// Each agent alone.
    pub fn singles(&self) -> Vec<SingleAgent> {
        let na = self.agents.len();
        let n = self.rows() as f64;
        (0..na)
            .map(|a| SingleAgent {
                agent: self.agents[a].clone(),
                quality: self.quality.chunks(na).map(|r| f64::from(r[a])).sum::<f64>() / n,
                cost: self.costs[a],
            })
            .collect()
    }

    /// The cheapest agent (ties: the better one) and the best single agent (ties: the cheaper).
    pub fn weak_strong(&self) -> (usize, usize) {
        let s = self.singles();
        let weak = (0..s.len())
            .min_by(|&a, &b| s[a].cost.total_cmp(&s[b].cost).then(s[b].quality.total_cmp(&s[a].quality)))
            .unwrap_or(0);
        let strong = (0..s.len())
            .max_by(|&a, &b| s[a].quality.total_cmp(&s[b].quality).then(s[b].cost.total_cmp(&s[a].cost)))
            .unwrap_or(0);
        (weak, strong)
    }

    /// Mean of the best quality of each row (an oracle that always picks a best agent).
    pub fn oracle_quality(&self) -> f64 {
        let na = self.agents.len();
        self.quality.chunks(na).map(|r| f64::from(r.iter().copied().fold(f32::MIN, f32::max))).sum::<f64>()
            / self.rows() as f64
    }

    /// The oracle's routing: for each row the cheapest agent among those of best quality.
    pub fn oracle_choices(&self) -> Vec<usize> {
        let na = self.agents.len();
        self.quality
            .chunks(na)
            .map(|r| {
                let best = r.iter().copied().fold(f32::MIN, f32::max);
                (0..na)
                    .filter(|&a| r[a] >= best)
                    .min_by(|&a, &b| self.costs[a].total_cmp(&self.costs[b]))
                    .unwrap_or(0)
            })
            .collect()
    }

    /// The point of one routing (`choices[row]` = agent index) at `cost_weight`.
    pub fn point(&self, cost_weight: f64, choices: &[usize]) -> CurvePoint {
        let na = self.agents.len();
        let n = choices.len().max(1) as f64;
        let mut counts = vec![0usize; na];
        let (mut q, mut c) = (0f64, 0f64);
        for (row, &a) in self.quality.chunks(na).zip(choices) {
            counts[a] += 1;
            q += f64::from(row[a]);
            c += self.costs[a];
        }
        CurvePoint {
            cost_weight,
            quality: q / n,
            cost: c / n,
            share: self.agents.iter().cloned().zip(counts.iter().map(|&k| k as f64 / n)).collect(),
        }
    }

    /// The (cost axis, PGR) coordinates of a point; `None` when undefined (weak and strong
    /// cost the same or are equally good).
    pub fn coordinates(&self, p: &CurvePoint) -> Option<(f64, f64)> {
        let (w, s) = self.weak_strong();
        let singles = self.singles();
        let (qw, qs) = (singles[w].quality, singles[s].quality);
        let (cw, cs) = (self.costs[w], self.costs[s]);
        if (qs - qw).abs() < 1e-12 || (cs - cw).abs() < 1e-12 {
            return None;
        }
        Some(((p.cost - cw) / (cs - cw), (p.quality - qw) / (qs - qw)))
    }

    /// The summary of a curve: APGR, CPT(50%), CPT(80%) (see the module documentation).
    pub fn summarize(&self, curve: Vec<CurvePoint>) -> CurveSummary {
        let coords: Option<Vec<(f64, f64)>> = curve.iter().map(|p| self.coordinates(p)).collect();
        let (apgr, cpt50, cpt80) = match coords {
            Some(xy) => {
                let pts = pgr_curve(&xy);
                (Some(area(&pts)), cpt(&pts, 0.5), cpt(&pts, 0.8))
            }
            None => (None, None, None),
        };
        CurveSummary { curve, apgr, cpt50, cpt80 }
    }
}

/// The interpolated PGR curve of measured `(c, pgr)` points: anchored at (0, 0) and (1, 1),
/// c clipped to [0, 1], sorted, equal c averaged.
pub fn pgr_curve(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut all: Vec<(f64, f64)> = points
        .iter()
        .filter(|(c, p)| c.is_finite() && p.is_finite())
        .map(|&(c, p)| (c.clamp(0.0, 1.0), p))
        .collect();
    all.push((0.0, 0.0));
    all.push((1.0, 1.0));
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out: Vec<(f64, f64, usize)> = Vec::new();
    for (c, p) in all {
        match out.last_mut() {
            Some(last) if (last.0 - c).abs() < 1e-9 => {
                last.1 += p;
                last.2 += 1;
            }
            _ => out.push((c, p, 1)),
        }
    }
    out.into_iter().map(|(c, p, k)| (c, p / k as f64)).collect()
}

/// Trapezoid area under a sorted piecewise-linear curve.
pub fn area(curve: &[(f64, f64)]) -> f64 {
    curve.windows(2).map(|w| (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0).sum()
}

/// The least c at which the interpolated curve reaches `target`.
pub fn cpt(curve: &[(f64, f64)], target: f64) -> Option<f64> {
    let first = curve.first()?;
    if first.1 >= target {
        return Some(first.0);
    }
    curve.windows(2).find(|w| w[1].1 >= target).map(|w| {
        let (c0, p0, c1, p1) = (w[0].0, w[0].1, w[1].0, w[1].1);
        if (p1 - p0).abs() < 1e-15 { c1 } else { c0 + (target - p0) * (c1 - c0) / (p1 - p0) }
    })
}

/// Routes by predicted quality minus `λ ·` normalised cost: the choices of each row.
pub fn choose_by_scores(pred: &[f64], norm_costs: &[f64], lambda: f64) -> Vec<usize> {
    let na = norm_costs.len();
    pred.chunks(na)
        .map(|r| {
            (0..na)
                .max_by(|&a, &b| {
                    (r[a] - lambda * norm_costs[a])
                        .total_cmp(&(r[b] - lambda * norm_costs[b]))
                        .then(b.cmp(&a))
                })
                .unwrap_or(0)
        })
        .collect()
}

/// The λ values at which a score router (predictions `pred`) crosses from the weak to the
/// other agents on each row, at 101 quantiles (0%, 1%, …, 100%) plus one beyond the largest:
/// for two agents, exactly the thresholds that send 100%, 99%, …, 0% of the calls to the
/// strong agent.
pub fn score_sweep(pred: &[f64], norm_costs: &[f64], weak: usize) -> Vec<f64> {
    let na = norm_costs.len();
    let mut b: Vec<f64> = pred
        .chunks(na)
        .map(|r| {
            (0..na)
                .filter(|&a| a != weak && norm_costs[a] > norm_costs[weak])
                .map(|a| (r[a] - r[weak]) / (norm_costs[a] - norm_costs[weak]))
                .fold(f64::MIN, f64::max)
        })
        .collect();
    b.sort_by(f64::total_cmp);
    if b.is_empty() {
        return vec![0.0];
    }
    let mut out: Vec<f64> = (0..=100).map(|k| b[(k * (b.len() - 1)) / 100] - 1e-12).collect();
    out.push(b[b.len() - 1] + 1e-9);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(q: &[[f32; 2]]) -> OutcomeTable {
        OutcomeTable::new(
            vec!["weak".into(), "strong".into()],
            vec![0.6, 10.0],
            q.iter().flatten().copied().collect(),
        )
        .expect("table")
    }

    #[test]
    fn random_routing_has_apgr_one_half() {
        // Random routing at share c: PGR(c) = c exactly, whatever the table.
        let pts: Vec<(f64, f64)> = (0..=10).map(|k| (k as f64 / 10.0, k as f64 / 10.0)).collect();
        let c = pgr_curve(&pts);
        assert!((area(&c) - 0.5).abs() < 1e-12);
        assert!((cpt(&c, 0.5).expect("cpt") - 0.5).abs() < 1e-12);
        assert!((cpt(&c, 0.8).expect("cpt") - 0.8).abs() < 1e-12);
        // Only the anchors (a router that never answers anything in between): still 0.5.
        assert!((area(&pgr_curve(&[])) - 0.5).abs() < 1e-12);
        // On a real table: random routings' expected points lie on the diagonal.
        let t = table(&[[1.0, 1.0], [0.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]);
        let weak = t.point(0.0, &[0; 5]);
        let strong = t.point(0.0, &[1; 5]);
        assert_eq!(t.coordinates(&weak), Some((0.0, 0.0)));
        assert_eq!(t.coordinates(&strong), Some((1.0, 1.0)));
    }

    #[test]
    fn known_small_cases() {
        // Rows: both right, only strong right, only weak right, both wrong, only strong right:
        // weak right on rows 0, 2 (0.4); strong on rows 0, 1, 4 (0.6).
        let t = table(&[[1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]);
        let s = t.singles();
        assert_eq!((s[0].quality, s[1].quality), (0.4, 0.6));
        assert_eq!(t.weak_strong(), (0, 1));
        assert!((t.oracle_quality() - 0.8).abs() < 1e-12);
        // The oracle sends rows 1 and 4 to strong: c = 0.4, q = 0.8 → PGR = 2.
        let o = t.point(0.0, &t.oracle_choices());
        let (c, p) = t.coordinates(&o).expect("defined");
        assert!((c - 0.4).abs() < 1e-12 && (p - 2.0).abs() < 1e-12);
        // A router with one point at (0.4, 2): area = 0.4·2/2 + 0.6·(2+1)/2 = 0.4 + 0.9 = 1.3.
        let summary = t.summarize(vec![o]);
        assert!((summary.apgr.expect("apgr") - 1.3).abs() < 1e-12);
        assert!(summary.apgr.expect("apgr") > 0.5, "the oracle beats random");
        // CPT(50%) on the segment (0,0)→(0.4,2): c = 0.1; CPT(80%) = 0.16.
        assert!((summary.cpt50.expect("cpt") - 0.1).abs() < 1e-12);
        assert!((summary.cpt80.expect("cpt") - 0.16).abs() < 1e-12);
        // A bad router (strong exactly where weak is right): below the diagonal.
        let bad = t.point(0.0, &[0, 0, 1, 0, 0]);
        let (c, p) = t.coordinates(&bad).expect("defined");
        assert!((c - 0.2).abs() < 1e-12 && (p - (-1.0)).abs() < 1e-12);
        assert!(t.summarize(vec![bad]).apgr.expect("apgr") < 0.5);
        // Equal costs: the cost axis is undefined.
        let same = OutcomeTable::new(
            vec!["a".into(), "b".into()],
            vec![1.0, 1.0],
            vec![1.0, 0.0, 0.0, 1.0, 0.0, 1.0],
        )
        .expect("table");
        assert_eq!(same.summarize(vec![same.point(0.0, &[0, 1, 1])]).apgr, None);
    }

    #[test]
    fn equal_c_points_are_averaged_and_c_is_clipped() {
        let c = pgr_curve(&[(0.5, 0.4), (0.5, 0.8), (1.5, 1.0)]);
        assert_eq!(c.len(), 3);
        assert_eq!((c[0], c[2]), ((0.0, 0.0), (1.0, 1.0)));
        assert!((c[1].0 - 0.5).abs() < 1e-12 && (c[1].1 - 0.6).abs() < 1e-12, "{c:?}");
    }
}
