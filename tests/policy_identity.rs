//! One routing policy: for the same checkpoint and texts, `mappo serve` (what it answers and
//! logs), off-policy evaluation (the candidate scored on the logged decisions) and `mappo route`
//! (the `Router`, floored as served) give identical probabilities — bit for bit — for a
//! cost-aware router, whose input is the embedding followed by λ.
//!
//! Bit for bit needs the same rows in a forward pass: candle's matrix product may round the last
//! bit of a row differently when the pass holds another number of rows. So each text is served
//! alone (a request of its own), evaluated alone and routed alone; all rows in one pass (as OPE
//! runs a log) agree within 1e-5.
//!
//! Needs the model (`cargo xtask fetch-model`; `cargo xtask test` fetches it first).

use std::path::Path;

use candle_core::Device;
use mappo_config::Config;
use mappo_eval::Router;
use mappo_learn::LoggedEvent;
use mappo_learn::ope::Candidate;
use mappo_log::{DecisionLog, EventQuery};
use mappo_nn::floor_probabilities;
use mappo_serve::{ServeOptions, Server};
use mappo_train::Checkpoint;
use serde_json::{Value, json};

const MIN_PROB: f64 = 0.05;

/// A cost-aware router over `data/outcomes.jsonl` (agents `small` and `large` with costs); the
/// policy head's large init gain makes a fresh policy far from uniform.
fn config() -> Config {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = format!(
        r#"
[env]
kind = "text"
corpus = {corpus:?}
reward = "outcome"
cost_weight_range = [0.0, 1.0]

[[env.agents]]
name = "small"
cost = 1.0

[[env.agents]]
name = "large"
cost = 10.0

[model]
init_gain_policy = 100.0

[serve]
addr = "127.0.0.1:0"
min_prob = {MIN_PROB}
"#,
        corpus = root.join("data/outcomes.jsonl").display().to_string(),
    );
    match Config::from_toml_str(&text, "identity.toml") {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

fn f32s(v: &Value) -> Vec<f32> {
    // serde_json writes an f32 in its shortest form; parsed as f64 and narrowed it is that f32.
    v.as_array().expect("an array").iter().map(|p| p.as_f64().expect("a number") as f32).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_ope_and_route_give_identical_probabilities() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", dir.path().join("serve.db").display());
    let mut opts = ServeOptions::new(db.clone(), config());
    opts.publish_fresh = true;
    opts.replica = Some("identity".into());
    let server = Server::start(opts)
        .await
        .unwrap_or_else(|e| panic!("server start (if the model is missing: cargo xtask fetch-model): {e}"));
    let url = format!("http://{}", server.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run_until(async move {
        let _ = stopped.await;
    }));

    // One text per request (each a forward pass of its own), at several cost weights.
    let texts = [
        "Can you tighten this abstract to 150 words?",
        "Prove that there are infinitely many primes.",
        "my parcel never arrived",
        "Write a haiku about compilers.",
        "What is 17 * 23?",
        "Explain the difference between TCP and UDP in detail.",
    ];
    let lambdas = [0.0, 0.15, 0.4, 0.55, 0.8, 1.0];
    let client = reqwest::Client::new();
    let mut served = Vec::new();
    for (t, l) in texts.iter().zip(lambdas) {
        let resp = client
            .post(format!("{url}/v1/route"))
            .json(&json!({ "text": t, "cost_weight": l }))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status().as_u16(), 200);
        let d: Value = resp.json().await.expect("JSON");
        served.push((d["decision_id"].as_str().expect("id").to_string(), f32s(&d["probabilities"])));
    }
    let _ = stop.send(());
    task.await.expect("server task").expect("server stops cleanly");

    // The served policy, as published in the log.
    let log = DecisionLog::open(&db).await.expect("open the log");
    let published = log.latest_policy().await.expect("query").expect("a published policy");
    let ckpt_path = dir.path().join("served.safetensors");
    std::fs::write(&ckpt_path, &published.checkpoint).expect("write the checkpoint");
    let ckpt = Checkpoint::load(&ckpt_path, &Device::Cpu).expect("checkpoint");
    let layout = ckpt.observation_spec().expect("layout");
    assert!(layout.has_cost_weight(), "a cost-aware router takes λ");
    let events: Vec<LoggedEvent> = log
        .joined_events(&EventQuery { after: None, before: None, limit: 100 })
        .await
        .expect("events")
        .iter()
        .map(LoggedEvent::from)
        .collect();
    log.close().await;
    assert_eq!(events.len(), texts.len());

    // Off-policy evaluation's candidate, on the logged embeddings and λ: one row per pass, and
    // all rows in one pass.
    let candidate = Candidate::from_checkpoint(&ckpt, &Device::Cpu).expect("candidate");
    assert_eq!(candidate.min_prob, MIN_PROB, "the candidate is floored as served");
    let w = layout.width();
    let contexts: Vec<f32> =
        events.iter().flat_map(|e| e.context(&layout).expect("embedding and λ logged")).collect();
    let ope: Vec<f64> =
        contexts.chunks(w).flat_map(|row| candidate.action_probabilities(row, 1, w).expect("ope")).collect();
    let batched = candidate.action_probabilities(&contexts, events.len(), w).expect("ope");
    assert!(ope.iter().zip(&batched).all(|(a, b)| (a - b).abs() < 1e-5), "{ope:?} vs {batched:?}");

    // `mappo route`: the same checkpoint with its own embedder, one text at a time.
    let router = Router::load(&ckpt_path, &Device::Cpu).expect("router");
    let mut distinct = std::collections::BTreeSet::new();
    for ((id, p), (text, l)) in served.iter().zip(texts.iter().zip(lambdas)) {
        let i = events
            .iter()
            .position(|e| e.decision_id.as_deref() == Some(id.as_str()))
            .expect("the decision is logged");
        assert_eq!(events[i].cost_weight, Some(l as f32), "λ is logged with the decision");
        assert_eq!(&events[i].probabilities, p, "the log holds what was answered");
        let from_ope: Vec<f32> = ope[i * 2..(i + 1) * 2].iter().map(|&v| v as f32).collect();
        assert_eq!(&from_ope, p, "OPE vs serve for {text:?} at λ = {l}");
        assert!(ope[i * 2..(i + 1) * 2].iter().zip(p).all(|(a, b)| *a == f64::from(*b)));
        let routed = router.route_at(&[text], l).expect("route");
        let from_route = floor_probabilities(&routed[0].probabilities, MIN_PROB);
        assert_eq!(&from_route, p, "route vs serve for {text:?} at λ = {l}");
        distinct.insert(p.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    }
    // Not a degenerate policy: the texts and weights got different probabilities.
    assert!(distinct.len() >= 4, "{served:?}");
}
