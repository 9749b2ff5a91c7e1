//! `mappo ope` and the promotion gate's decisions in `mappo policy list`, without the model:
//! a synthetic-env checkpoint evaluated on an exported log whose rows carry embeddings.

mod common;

use std::io::Write;

use candle_core::Device;
use common::{last_line, mappo, stderr, stdout, train};
use mappo_train::Checkpoint;

fn s(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn ope_estimates_a_checkpoint_on_an_exported_log() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let o = train(&tmp.path().join("run"), &["train.total_updates=2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ckpt_path = last_line(&o);
    let ckpt = Checkpoint::load(&ckpt_path, &Device::Cpu).expect("checkpoint");
    let (k, dim) = (
        if ckpt.config.env.agents.is_empty() {
            ckpt.config.env.num_agents
        } else {
            ckpt.config.env.agents.len()
        },
        ckpt.config.env.embed_dim,
    );
    let log = tmp.path().join("log.jsonl");
    let mut f = std::fs::File::create(&log).expect("create");
    let mut state = 12345u64;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as f64 / (1u64 << 31) as f64
    };
    let p = vec![1.0 / k as f64; k];
    for i in 0..400 {
        let x: Vec<f64> = (0..dim).map(|_| next() - 0.5).collect();
        let a = (next() * k as f64) as usize % k;
        let reward = if (x[0] > 0.0) == (a == 0) { 1.0 } else { 0.0 };
        let kind = if i == 0 { "greedy" } else { "sampled" };
        let line = serde_json::json!({"action": a, "probabilities": p, "propensity": p[a], "reward": reward,
            "kind": kind, "embedding": x});
        writeln!(f, "{line}").expect("write");
    }
    drop(f);
    let o =
        mappo(&["ope", "--checkpoint", s(&ckpt_path), "--log-file", s(&log), "--json", "--device", "cpu"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("json");
    assert_eq!(v["n"], serde_json::json!(399), "{v}");
    for est in ["ips", "snips", "dr"] {
        let (lo, val, hi) = (
            v[est]["ci"][0].as_f64().expect("low"),
            v[est]["value"].as_f64().expect("value"),
            v[est]["ci"][1].as_f64().expect("high"),
        );
        assert!(lo <= val && val <= hi, "{est}: {v}");
    }
    assert!(v["ess"].as_f64().expect("ess") > 0.0);
    assert!(v["warnings"][0].as_str().expect("a warning").contains("greedy"), "{v}");
    // The readable table, and the refusal of a log that does not fit.
    let o = mappo(&["ope", "--checkpoint", s(&ckpt_path), "--log-file", s(&log), "--device", "cpu"]);
    assert!(o.status.success() && stdout(&o).contains("DR"), "{}", stderr(&o));
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"action\": 0, \"propensity\": 0.5, \"reward\": 1, \"embedding\": [1.0]}\n")
        .expect("write");
    let o = mappo(&["ope", "--checkpoint", s(&ckpt_path), "--log-file", s(&bad), "--device", "cpu"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no usable event") && stderr(&o).contains("width"), "{}", stderr(&o));
    let o = mappo(&["ope", "--checkpoint", s(&ckpt_path)]);
    assert_eq!(o.status.code(), Some(2), "--db or --log-file is required");
}

#[test]
fn policy_list_shows_gate_decisions() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = format!("sqlite:{}", tmp.path().join("log.db").display());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let log = mappo_log::DecisionLog::open(&db).await.expect("open");
        let meta = mappo_log::PublishMeta { source: "test".into(), ..Default::default() };
        let v = log.publish_policy(b"v1", &meta).await.expect("publish").version;
        let rec = mappo_log::GateRecord {
            id: 0,
            time: mappo_log::Timestamp::now(),
            published: false,
            candidate_version: None,
            current_version: Some(v),
            candidate_sha256: None,
            estimator: "dr".into(),
            margin: 0.01,
            n: 100,
            candidate_value: 0.3,
            candidate_ci: [0.2, 0.4],
            current_value: Some(0.6),
            current_ci: Some([0.5, 0.7]),
            reason: "refused: worse".into(),
            meta: serde_json::Value::Null,
        };
        log.record_gate_decision(&rec).await.expect("record");
        log.close().await;
    });
    let o = mappo(&["policy", "list", "--db", &db, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("json");
    assert_eq!(v[0]["version"], serde_json::json!(1));
    assert_eq!(v[0]["gate"], serde_json::Value::Null);
    assert_eq!(v[0]["refused"][0]["candidate_value"], serde_json::json!(0.3), "{v}");
    let o = mappo(&["policy", "list", "--db", &db]);
    assert!(stdout(&o).contains("refused") && stdout(&o).contains("[0.2000, 0.4000]"), "{}", stdout(&o));
}
