//! Routing between LLMs: an outcome corpus, agent costs, one cost-aware router, its
//! quality–cost evaluation, calibration to a budget and routing at a cost weight.

mod common;
use common::{last_line, mappo, stderr, stdout, train};

use std::path::Path;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn a_cost_aware_router_is_evaluated_calibrated_and_routes_at_a_cost_weight() {
    let tmp = tempfile::tempdir().expect("tmp");
    let corpus = root().join("data/outcomes.jsonl");
    let corpus_s = corpus.to_str().expect("utf-8");
    let cache = tmp.path().join("cache");
    let sets = [
        "env.kind=text".to_string(),
        format!("env.corpus={corpus_s:?}"),
        "env.reward=outcome".into(),
        "env.reward_noise=0".into(),
        "env.agents=[{name=\"small\", cost=1.0}, {name=\"large\", cost=10.0}]".into(),
        "env.cost_weight_range=[0.0, 0.6]".into(),
        format!("env.cache_dir={:?}", cache.to_str().expect("utf-8")),
        "ppo.lr_actor=0.003".into(),
        "train.total_updates=150".into(),
        "train.batch_size=64".into(),
        "train.save_interval=150".into(),
        "train.eval_interval=50".into(),
    ];
    let refs: Vec<&str> = sets.iter().map(String::as_str).collect();
    let o = train(&tmp.path().join("run"), &refs);
    assert!(o.status.success(), "{}", stderr(&o));
    let ckpt = last_line(&o);
    let ck = ckpt.to_str().expect("utf-8");

    let plot = tmp.path().join("curve.svg");
    let o = mappo(&[
        "eval",
        "--checkpoint",
        ck,
        "--corpus",
        corpus_s,
        "--baseline-train",
        corpus_s,
        "--cost-weight",
        "0.3",
        "--plot",
        plot.to_str().expect("utf-8"),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    let r = &v["routing"];
    assert_eq!((r["weak"].as_str(), r["strong"].as_str()), (Some("small"), Some("large")), "{r}");
    assert_eq!(r["curve"].as_array().map(Vec::len), Some(101), "a 101-point λ sweep");
    let p0 = &r["curve"][0];
    for k in ["cost_weight", "quality", "cost"] {
        assert!(p0[k].is_number(), "{k}: {p0}");
    }
    assert!(p0["share"]["large"].is_number() && p0["share"]["small"].is_number(), "{p0}");
    // The oracle needs the large model only for code and math prompts, and is right everywhere.
    assert_eq!(r["oracle_quality"].as_f64(), Some(1.0));
    let apgr = r["apgr"].as_f64().expect("apgr");
    assert!(apgr > 0.6, "well above random routing (0.5): {apgr}");
    let base = r["baseline"]["apgr"].as_f64().expect("baseline apgr");
    assert!(base > 0.6, "the full-information ridge router sees the pattern too: {base}");
    assert!(r["cpt50"].as_f64().expect("cpt50") < 0.5, "{r}");
    assert!(r["at"]["cost_weight"].as_f64() == Some(0.3), "{r}");
    let svg = std::fs::read_to_string(&plot).expect("the plot");
    assert!(svg.starts_with("<svg") && svg.contains("oracle"), "an SVG with a legend");

    // Calibration: at most 55% of the prompts to the large model (code + math, where only the
    // large model is right, are about half: no λ in the range is worth losing them).
    let o = mappo(&[
        "calibrate",
        "--checkpoint",
        ck,
        "--corpus",
        corpus_s,
        "--max-share",
        "large=0.55",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let c: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("JSON");
    let share = c["point"]["share"]["large"].as_f64().expect("share");
    assert!(share <= 0.55 + 1e-9, "{c}");
    let o = mappo(&["calibrate", "--checkpoint", ck, "--corpus", corpus_s, "--max-share", "large=0.2"]);
    assert!(!o.status.success() && stderr(&o).contains("cannot be met"), "{}", stderr(&o));
    let lambda = c["cost_weight"].as_f64().expect("λ");
    assert!((0.0..=0.6).contains(&lambda), "{c}");
    let o = mappo(&["calibrate", "--checkpoint", ck, "--corpus", corpus_s, "--max-share", "huge=0.4"]);
    assert!(!o.status.success() && stderr(&o).contains("`huge` is not an agent"), "{}", stderr(&o));

    // Routing: a higher cost weight never sends more prompts to the large model.
    let text = "Prove that the square root of 2 is irrational.";
    let share_at = |w: &str| {
        let o = mappo(&["route", "--checkpoint", ck, "--cost-weight", w, "--json", text]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("JSON");
        v["by_agent"]["large"].as_f64().expect("probability")
    };
    assert!(share_at("0") >= share_at("0.6"), "π(large) falls as λ grows");
    let o = mappo(&["route", "--checkpoint", ck, "--cost-weight=inf", text]);
    assert!(!o.status.success() && stderr(&o).contains("--cost-weight"), "{}", stderr(&o));
}

#[test]
fn an_outcome_corpus_missing_an_agent_is_refused_with_the_row_and_agent() {
    let tmp = tempfile::tempdir().expect("tmp");
    let corpus = tmp.path().join("c.jsonl");
    std::fs::write(
        &corpus,
        "{\"text\": \"hello\", \"outcomes\": {\"small\": 1, \"large\": 1}}\n{\"text\": \"2+2\", \"outcomes\": {\"small\": 1}}\n",
    )
    .expect("write");
    let sets = [
        "env.kind=text".to_string(),
        format!("env.corpus={:?}", corpus.to_str().expect("utf-8")),
        "env.reward=outcome".into(),
        "env.agents=[{name=\"small\", cost=1.0}, {name=\"large\", cost=10.0}]".into(),
        format!("env.cache_dir={:?}", tmp.path().join("cache").to_str().expect("utf-8")),
        "train.total_updates=1".into(),
    ];
    let refs: Vec<&str> = sets.iter().map(String::as_str).collect();
    let o = train(&tmp.path().join("run"), &refs);
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("prompt 2") && e.contains("`large`") && e.contains("c.jsonl"),
        "{e}"
    );
}
