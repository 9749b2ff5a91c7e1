//! Routing between LLMs: an outcome corpus, agent costs, one cost-aware router, its
//! quality–cost evaluation, calibration to a budget and routing at a cost weight.

mod common;
use common::{export, http, json, last_line, mappo, start_with, stderr, stdout, train};

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
    // The same plot as a PNG: a real image, with text drawn by the embedded font.
    let png = tmp.path().join("curve.png");
    let o =
        mappo(&["eval", "--checkpoint", ck, "--corpus", corpus_s, "--plot", png.to_str().expect("utf-8")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&png).expect("the PNG");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG file");
    assert!(bytes.len() > 5_000, "a drawn image, not an empty one: {} bytes", bytes.len());
    let o = mappo(&["eval", "--checkpoint", ck, "--corpus", corpus_s, "--plot", "curve.gif"]);
    assert!(!o.status.success() && stderr(&o).contains(".png or .svg"), "{}", stderr(&o));

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

    served_learned_and_evaluated_at_logged_cost_weights(tmp.path(), ck, &corpus, text);
}

/// The same router served over HTTP: the per-request `cost_weight` is the policy's λ input and
/// is logged with each decision; `mappo learn` and `mappo ope` then use the logged λ.
fn served_learned_and_evaluated_at_logged_cost_weights(dir: &Path, ck: &str, corpus: &Path, text: &str) {
    let db = format!("sqlite:{}", dir.join("serve.db").display());
    let (mut child, addr) = start_with(&db, &["--checkpoint", ck, "--set", "serve.min_prob=0.05"]);
    let large_at = |w: f64| {
        let body = serde_json::json!({ "text": text, "cost_weight": w, "greedy": true }).to_string();
        let (code, b) = http(&addr, "POST", "/v1/route", &body);
        assert_eq!(code, 200, "{b}");
        json(&b)["probabilities"][1].as_f64().expect("π(large)")
    };
    let (p0, p6) = (large_at(0.0), large_at(0.6));
    assert!(p0 >= p6, "π(large) falls as the request's cost weight grows: {p0} at 0, {p6} at 0.6");
    let (code, b) = http(&addr, "POST", "/v1/route", r#"{"text": "hi", "cost_weight": "cheap"}"#);
    assert!((400..500).contains(&code), "{code}: {b}");

    // Traffic at two budgets, rewarded with quality − λ·cost/max cost (costs 1 and 10).
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(corpus)
        .expect("corpus")
        .lines()
        .map(|l| serde_json::from_str(l).expect("row"))
        .collect();
    for (i, row) in rows.iter().chain(rows.iter()).enumerate() {
        let w = if i % 2 == 0 { 0.0 } else { 0.6 };
        let body = serde_json::json!({ "text": row["text"], "cost_weight": w }).to_string();
        let (code, b) = http(&addr, "POST", "/v1/route", &body);
        assert_eq!(code, 200, "{b}");
        let d = json(&b);
        let agent = d["agent"].as_str().expect("agent");
        let cost = if agent == "large" { 1.0 } else { 0.1 };
        let reward = row["outcomes"][agent].as_f64().expect("outcome") - w * cost;
        let fb = serde_json::json!({ "decision_id": d["decision_id"], "reward": reward }).to_string();
        let (code, b) = http(&addr, "POST", "/v1/feedback", &fb);
        assert_eq!(code, 200, "{b}");
    }
    child.kill().expect("kill");
    child.wait().expect("wait");
    let lines = export(&db);
    assert_eq!(lines.len(), 2 * rows.len() + 2, "every decision is logged");
    let at_six =
        lines.iter().filter(|l| l["cost_weight"].as_f64().is_some_and(|w| (w - 0.6).abs() < 1e-6)).count();
    assert_eq!(at_six, rows.len() + 1, "each decision carries its request's λ");
    assert!(
        lines.iter().all(|l| l["cost_weight"].is_number()),
        "a cost-aware policy logs λ with every decision"
    );

    // The log trains the cost-aware router (λ appended to each embedding) ...
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let o = mappo(&[
        "learn",
        "--db",
        &db,
        "--set",
        "learn.reward_wait_s=1",
        "--set",
        "learn.min_events=16",
        "--set",
        "train.batch_size=64",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("JSON");
    assert!(s["events"]["learned"].as_u64().is_some_and(|n| n as usize >= 2 * rows.len() - 16), "{s}");
    assert_eq!(s["events"]["skipped_bad"], 0, "{s}");
    // ... and evaluates it off-policy on the same contexts.
    let o = mappo(&["ope", "--db", &db, "--checkpoint", ck, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("JSON");
    assert_eq!(v["n"].as_u64(), Some(2 * rows.len() as u64), "{v}");
    assert!(v["dr"]["value"].as_f64().is_some_and(f64::is_finite), "{v}");
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

#[test]
fn a_cascade_sees_the_cheap_answer_and_escalates_only_when_it_pays() {
    let tmp = tempfile::tempdir().expect("tmp");
    let corpus = root().join("data/cascade.jsonl");
    let corpus_s = corpus.to_str().expect("utf-8");
    let sets = common::cascade_sets(tmp.path(), &corpus);
    let ckpt = common::train_cascade(tmp.path(), &corpus);
    let o = mappo(&["eval", "--checkpoint", ckpt.to_str().expect("utf-8"), "--corpus", corpus_s, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = json(&stdout(&o));
    let routing = &r["routing"];
    assert_eq!(r["n"], 248);
    assert_eq!(routing["curve"].as_array().expect("curve").len(), 101);
    // `small`'s answer says whether it is right (the prompt only partly does): accepting it when
    // it sounds sure and escalating otherwise answers (nearly) every prompt right with only the
    // prompts `small` gets wrong reaching `large` (plus at most 0.1) — a one-step router needs far
    // more of them there for that quality.
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&corpus)
        .expect("corpus")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("row"))
        .collect();
    let small_wrong = rows.iter().filter(|r| r["outcomes"]["small"] == 0).count() as f64 / rows.len() as f64;
    let first = &routing["curve"][0];
    let quality = first["quality"].as_f64().expect("quality");
    let large = first["share"]["large"].as_f64().expect("share");
    assert!(
        quality > 0.95 && large < small_wrong + 0.1,
        "λ = 0: quality {quality} with {large} at large ({small_wrong} is the least that can be): {first}"
    );
    let apgr = routing["apgr"].as_f64().expect("apgr");
    assert!(apgr > 0.7, "cascade APGR {apgr}: {routing}");
    let escalated: Vec<f64> =
        r["escalated"].as_array().expect("escalated").iter().filter_map(|v| v.as_f64()).collect();
    // Part of `small`'s mistakes can be foreseen from the prompt (those go to `large` at once,
    // how many depends on the run); the rest must be caught by escalating after its answer.
    assert!(escalated.iter().any(|&e| e > 0.15), "it must escalate after unsure answers: {escalated:?}");
    // An escalation pays both calls: the cost paid is at least the final agents' cost.
    for (p, paid) in
        routing["curve"].as_array().expect("curve").iter().zip(r["cost_paid"].as_array().expect("paid"))
    {
        assert!(paid.as_f64().expect("paid") + 1e-9 >= p["cost"].as_f64().expect("cost"), "{p} {paid}");
    }
    // The text form names the figures too.
    let o = mappo(&["eval", "--checkpoint", ckpt.to_str().expect("utf-8"), "--corpus", corpus_s]);
    assert!(o.status.success() && stdout(&o).contains("APGR"), "{}", stderr(&o));

    // `mappo route` shows both decisions: the first agent, then (given that agent's answer)
    // accept or escalate. On the same prompt, an unsure answer is escalated, a sure one accepted
    // (a prompt `small` is sent: one the policy foresees it failing goes to `large` at once).
    let ck = ckpt.to_str().expect("utf-8");
    let route = |text: &str, answer: &str| -> Vec<serde_json::Value> {
        let o = mappo(&[
            "route",
            "--checkpoint",
            ck,
            "--json",
            "--cost-weight",
            "0.3",
            "--response",
            answer,
            text,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o).lines().map(json).collect()
    };
    let unsure = route(
        "Estimate the square root of 50 to two decimal places without a calculator.",
        "Sorry, I am not sure about this one; my answer is probably wrong.",
    );
    let sure = route(
        "Estimate the square root of 50 to two decimal places without a calculator.",
        "Here is the complete answer, checked step by step.",
    );
    for (steps, second) in [(&unsure, "escalate"), (&sure, "accept")] {
        assert_eq!(
            steps.len(),
            2,
            "the first agent (small at λ = 0.3) and the escalation decision: {steps:?}"
        );
        assert_eq!((steps[0]["stage"].as_str(), steps[0]["agent"].as_str()), (Some("first"), Some("small")));
        assert_eq!(steps[1]["stage"], "escalation", "{steps:?}");
        assert_eq!(steps[1]["agent"], second, "{steps:?}");
        let p: f64 =
            steps[1]["by_agent"].as_object().expect("by_agent").values().filter_map(|v| v.as_f64()).sum();
        assert!((p - 1.0).abs() < 1e-4, "accept + escalate = 1: {steps:?}");
    }
    let o = mappo(&["route", "--checkpoint", ck, "--response", "an answer", "one", "two"]);
    assert!(!o.status.success() && stderr(&o).contains("exactly one text"), "{}", stderr(&o));

    // Beside a one-step router of the same agents on the same corpus (it sees only the prompt,
    // which says nothing about `small`'s answer): the cascade's APGR is clearly higher.
    let one_step_sets: Vec<String> = sets
        .iter()
        .filter(|s| {
            !s.starts_with("env.kind") && !s.starts_with("train.rollout_len") && !s.starts_with("ppo.gamma")
        })
        .cloned()
        .chain(["env.kind=text".to_string(), "model.critic=\"shared\"".into()])
        .filter(|s| s != "model.critic=\"centralized\"")
        .collect();
    let refs: Vec<&str> = one_step_sets.iter().map(String::as_str).collect();
    let o = train(&tmp.path().join("one-step"), &refs);
    assert!(o.status.success(), "{}", stderr(&o));
    let one = last_line(&o);
    let one_s = one.to_str().expect("utf-8");
    let o = mappo(&["eval", "--checkpoint", ck, "--corpus", corpus_s, "--one-step", one_s, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let both = json(&stdout(&o));
    assert_eq!(both["routing"]["apgr"], r["routing"]["apgr"], "the cascade's own figures are unchanged");
    let one_apgr = both["one_step"]["apgr"].as_f64().expect("one-step APGR");
    assert_eq!(both["one_step"]["curve"].as_array().expect("curve").len(), 101);
    assert!(apgr > one_apgr + 0.03, "cascade {apgr} vs one-step {one_apgr}");
    // For the cascade's quality at λ = 0, the one-step router sends more prompts to `large`.
    let one_large = both["one_step"]["curve"]
        .as_array()
        .expect("curve")
        .iter()
        .filter(|p| p["quality"].as_f64().is_some_and(|q| q >= quality - 0.01))
        .filter_map(|p| p["share"]["large"].as_f64())
        .fold(1.0f64, f64::min);
    assert!(
        one_large > large + 0.1,
        "one-step {one_large} vs cascade {large} at large for quality {quality}"
    );
    // --one-step is only for cascades.
    let o = mappo(&["eval", "--checkpoint", one_s, "--corpus", corpus_s, "--one-step", one_s]);
    assert!(!o.status.success() && stderr(&o).contains("--one-step is for cascade"), "{}", stderr(&o));
}
