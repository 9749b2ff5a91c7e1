//! mappo's estimators against a second implementation (numpy, `fixtures/ope_reference.py`),
//! whose output `fixtures/ope_reference.json` is committed: the same log must give the same
//! IPS, SNIPS, DR (with a fixed reward model and with the cross-fitted ridge one), intervals,
//! effective sample size and logging value.

use mappo_learn::LoggedEvent;
use mappo_learn::ope::{BanditData, Candidate, Estimate, OpeOptions, estimate, evaluate};
use serde::Deserialize;

#[derive(Deserialize)]
struct Expected {
    ips: Est,
    snips: Est,
    dr: Est,
    ess: f64,
    logging_value: f64,
}

#[derive(Deserialize)]
struct Est {
    value: f64,
    ci: [f64; 2],
}

#[derive(Deserialize)]
struct Fixture {
    n: usize,
    k: usize,
    d: usize,
    folds: usize,
    ridge: f64,
    contexts: Vec<Vec<f64>>,
    #[serde(rename = "W")]
    w: Vec<Vec<f64>>,
    actions: Vec<usize>,
    probabilities: Vec<Vec<f64>>,
    rewards: Vec<f64>,
    target: Vec<Vec<f64>>,
    reward_model_fixed: Vec<Vec<f64>>,
    expected_fixed: Expected,
    expected_crossfit: Expected,
}

fn fixture() -> Fixture {
    serde_json::from_str(include_str!("fixtures/ope_reference.json")).expect("the fixture parses")
}

fn close(name: &str, got: f64, want: f64, tol: f64) {
    assert!((got - want).abs() <= tol, "{name}: got {got}, numpy says {want}");
}

fn compare(what: &str, got: (Estimate, Estimate, Estimate, f64, f64), want: &Expected, tol: f64) {
    let (ips, snips, dr, ess, logging) = got;
    for (name, g, w) in [("ips", ips, &want.ips), ("snips", snips, &want.snips), ("dr", dr, &want.dr)] {
        close(&format!("{what} {name}"), g.value, w.value, tol);
        close(&format!("{what} {name} low"), g.ci[0], w.ci[0], tol);
        close(&format!("{what} {name} high"), g.ci[1], w.ci[1], tol);
    }
    close(&format!("{what} ess"), ess, want.ess, tol * 100.0);
    close(&format!("{what} logging value"), logging, want.logging_value, 1e-12);
}

#[test]
fn estimators_match_numpy_with_a_fixed_reward_model() {
    let f = fixture();
    let props: Vec<f64> =
        f.actions.iter().zip(&f.probabilities).map(|(&a, p)| f64::from(p[a] as f32)).collect();
    let target: Vec<f64> = f.target.concat();
    let rhat: Vec<f64> = f.reward_model_fixed.concat();
    let got = estimate(&BanditData {
        k: f.k,
        actions: &f.actions,
        propensities: &props,
        rewards: &f.rewards,
        target: &target,
        reward_model: &rhat,
    })
    .expect("estimates");
    compare("fixed r-hat", got, &f.expected_fixed, 1e-9);
}

#[test]
fn the_whole_evaluation_matches_numpy_with_cross_fitting() {
    let f = fixture();
    assert_eq!(f.contexts.len(), f.n);
    let events: Vec<LoggedEvent> = (0..f.n)
        .map(|i| LoggedEvent {
            decision_id: None,
            policy_version: None,
            action: f.actions[i],
            agent: None,
            probabilities: f.probabilities[i].iter().map(|&p| p as f32).collect(),
            propensity: None,
            reward: Some(f.rewards[i]),
            kind: mappo_log::DecisionKind::Sampled,
            embedding: Some(f.contexts[i].iter().map(|&v| v as f32).collect()),
            text: None,
            cost_weight: None,
        })
        .collect();
    let (w, k, d) = (f.w.clone(), f.k, f.d);
    let candidate = Candidate::from_fn("softmax(xW)", k, move |x| {
        let logits: Vec<f64> =
            (0..k).map(|j| (0..d).map(|i| f64::from(x[i]) * w[i][j]).sum::<f64>()).collect();
        let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| (v / s) as f32).collect()
    });
    let r = evaluate(&events, &candidate, &OpeOptions { folds: f.folds, ridge: f.ridge, reward_range: None })
        .expect("evaluates");
    assert_eq!(r.n, f.n);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    // The candidate's probabilities pass through f32: agreement to 1e-5, not 1e-12.
    compare("cross-fitted", (r.ips, r.snips, r.dr, r.ess, r.logging_value), &f.expected_crossfit, 1e-5);
}
