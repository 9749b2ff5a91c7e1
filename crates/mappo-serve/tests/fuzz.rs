//! Random and hostile bodies never yield a 5xx, a panic or a non-JSON answer, and the server
//! stays healthy afterwards.

mod common;

use common::{config, start};
use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestRunner};
use serde_json::{Value, json};

/// Arbitrary JSON values, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        Just(json!("00000000-0000-0000-0000-000000000000")),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("text".to_string()),
                    Just("texts".to_string()),
                    Just("greedy".to_string()),
                    Just("decision_id".to_string()),
                    Just("reward".to_string()),
                    "[a-z_]{1,8}",
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Bodies: raw bytes, mangled JSON, and structurally plausible requests with hostile values.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        (json_value(), any::<usize>()).prop_map(|(v, cut)| {
            let s = v.to_string().into_bytes();
            let n = if s.is_empty() { 0 } else { cut % s.len() };
            s[..n].to_vec()
        }),
        ("\\PC{0,200}", any::<bool>())
            .prop_map(|(t, g)| json!({"text": t, "greedy": g}).to_string().into_bytes()),
        proptest::collection::vec("\\PC{0,30}", 0..6)
            .prop_map(|ts| json!({ "texts": ts }).to_string().into_bytes()),
        (".{0,40}", any::<f64>()).prop_map(|(id, r)| {
            format!(r#"{{"decision_id": {}, "reward": {r:e}}}"#, json!(id)).into_bytes()
        }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_never_give_a_5xx() {
    let srv = start(config(&["serve.max_batch_texts=8", "serve.max_body_bytes=8192"]), |_| {}).await;
    let handcrafted: Vec<Vec<u8>> = vec![
        format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
        format!("{{\"text\": {}\"x\"{}}}", "[".repeat(200), "]".repeat(200)).into_bytes(),
        br#"{"text": "\ud800"}"#.to_vec(),
        br#"{"text": "\u0000\u0001\u001f"}"#.to_vec(),
        br#"{"text": "a", "text": "b"}"#.to_vec(),
        br#"{"decision_id": "x", "reward": 1e999999}"#.to_vec(),
        br#"{"decision_id": "x", "reward": -0}"#.to_vec(),
        format!("{{\"text\": \"{}\"}}", "\u{202e}\u{1F600}\u{0301}".repeat(300)).into_bytes(),
        format!("{{\"text\": \"{}\"}}", "supercalifragilistic".repeat(300)).into_bytes(),
        format!("{{\"text\": \"{}\"}}", "\\u0000".repeat(1000)).into_bytes(),
        format!("{{\"texts\": [{}]}}", vec!["\"\""; 3000].join(",")).into_bytes(),
        b"\xff\xfe{\"text\": \"x\"}".to_vec(),
        br#"{"text": "ok"#.to_vec(),
        vec![0u8; 9000],
    ];
    let client = srv.client.clone();
    let send = |path: &'static str, b: Vec<u8>| {
        let client = client.clone();
        let url = format!("{}{path}", srv.url);
        async move {
            let r = client
                .post(url)
                .header("content-type", "application/json")
                .body(b)
                .send()
                .await
                .expect("send");
            let status = r.status().as_u16();
            let text = r.text().await.expect("body");
            (status, text)
        }
    };
    for b in handcrafted {
        for path in ["/v1/route", "/v1/feedback"] {
            let (s, text) = send(path, b.clone()).await;
            assert!(s < 500, "{path} {:?} → {s}: {text}", String::from_utf8_lossy(&b[..b.len().min(80)]));
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
            if s != 200 {
                assert!(v["error"].is_string(), "{text}");
            }
        }
    }

    // Random bodies: proptest generates them, the runtime sends them.
    let mut runner =
        TestRunner::new(PropConfig { cases: 256, failure_persistence: None, ..PropConfig::default() });
    let handle = tokio::runtime::Handle::current();
    let url = srv.url.clone();
    let client = srv.client.clone();
    let result = tokio::task::spawn_blocking(move || {
        runner.run(&(body(), any::<bool>()), |(b, feedback)| {
            let path = if feedback { "/v1/feedback" } else { "/v1/route" };
            let (s, text) = handle.block_on(async {
                let r = client
                    .post(format!("{url}{path}"))
                    .header("content-type", "application/json")
                    .body(b.clone())
                    .send()
                    .await
                    .expect("send");
                let s = r.status().as_u16();
                (s, r.text().await.expect("body"))
            });
            prop_assert!(s < 500, "{} {:?} → {}: {}", path, String::from_utf8_lossy(&b), s, text);
            let v: Result<Value, _> = serde_json::from_str(&text);
            prop_assert!(v.is_ok(), "not JSON: {}", text);
            Ok(())
        })
    })
    .await
    .expect("join");
    if let Err(e) = result {
        panic!("{e}");
    }

    let (s, _) = srv.get("/healthz").await;
    assert_eq!(s, 200);
    let (s, d) = srv.post("/v1/route", r#"{"text": "still routing?"}"#).await;
    assert_eq!(s, 200, "{d}");
    let (_, m) = srv.get("/metrics").await;
    assert!(!m.contains("status=\"5"), "no 5xx was ever answered:\n{m}");
    srv.stop().await.expect("clean stop");
}
