//! The proxy route under hostile and random bodies: never a 500 or a panic, always a JSON
//! answer with a status the OpenAPI document lists, the server healthy afterwards. (The
//! end-to-end proxy tests, with fake upstreams and the `openai` client, are in
//! crates/mappo-cli/tests/proxy.rs.)

mod common;

use common::{config, start};
use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};

/// Chat requests: plausible shapes with hostile values.
fn chat_body() -> impl Strategy<Value = Vec<u8>> {
    let model = prop_oneof![
        Just(json!("mappo")),
        Just(json!("code")),
        Just(json!("support")),
        ".{0,12}".prop_map(Value::String),
        Just(json!(3)),
        Just(Value::Null),
    ];
    let content = prop_oneof![
        "\\PC{0,60}".prop_map(Value::String),
        proptest::collection::vec(
            prop_oneof![
                "\\PC{0,20}".prop_map(|t| json!({"type": "text", "text": t})),
                Just(json!({"type": "image_url", "image_url": {"url": "data:,"}})),
                Just(json!({"type": "text", "text": 5})),
                Just(json!(null)),
            ],
            0..4
        )
        .prop_map(Value::Array),
        Just(json!(42)),
    ];
    let role = prop_oneof![Just("user"), Just("system"), Just("assistant"), Just("")];
    let message = (role, content).prop_map(|(r, c)| json!({"role": r, "content": c}));
    let extra = prop_oneof![
        Just(json!(null)),
        Just(json!({"cost_weight": 0.3})),
        Just(json!({"cost_weight": "x"})),
        Just(json!({"other": 1})),
        Just(json!(7)),
    ];
    let stream = prop_oneof![Just(json!(true)), Just(json!(false)), Just(json!("yes")), Just(Value::Null)];
    prop_oneof![
        (model, proptest::collection::vec(message, 0..4), extra, stream).prop_map(|(m, msgs, x, st)| {
            json!({"model": m, "messages": msgs, "mappo": x, "stream": st}).to_string().into_bytes()
        }),
        proptest::collection::vec(any::<u8>(), 0..200),
        "\\PC{0,100}".prop_map(String::into_bytes),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_chat_requests_never_give_a_500() {
    // `code` has an upstream nobody listens on (every call fails fast: 502); `support` none (503).
    let down = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let srv = start(
        config(&[
            &format!("serve.upstreams.code.base_url=\"http://{down}/v1\""),
            "serve.upstreams.code.model=\"m\"",
            "serve.upstreams.code.timeout_s=2",
            "serve.upstreams.math.base_url=\"http://127.0.0.1:9/v1\"",
            "serve.upstreams.math.model=\"m\"",
            "serve.upstreams.writing.base_url=\"http://127.0.0.1:9/v1\"",
            "serve.upstreams.writing.model=\"m\"",
            "serve.max_body_bytes=8192",
        ]),
        |_| {},
    )
    .await;
    // A fixed seed: the same 200 bodies on every run (a random draw may hold no request valid
    // enough to reach an upstream).
    let mut runner = TestRunner::new_with_rng(
        PropConfig { cases: 200, failure_persistence: None, ..PropConfig::default() },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let handle = tokio::runtime::Handle::current();
    let url = format!("{}/v1/chat/completions", srv.url);
    let client = srv.client.clone();
    let result = tokio::task::spawn_blocking(move || {
        runner.run(&chat_body(), |b| {
            let (s, text) = handle.block_on(async {
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(b.clone())
                    .send()
                    .await
                    .expect("send");
                let s = r.status().as_u16();
                (s, r.text().await.expect("body"))
            });
            prop_assert!(
                [400, 404, 413, 422, 502, 503].contains(&s),
                "{:?} → {}: {}",
                String::from_utf8_lossy(&b),
                s,
                text
            );
            let v: Result<Value, _> = serde_json::from_str(&text);
            prop_assert!(v.is_ok_and(|v| v["error"].is_string()), "not a JSON error: {}", text);
            Ok(())
        })
    })
    .await
    .expect("join");
    if let Err(e) = result {
        panic!("{e}");
    }
    // A well-formed request for an agent whose upstream is down: 502, whatever was drawn above.
    let r = srv
        .client
        .post(format!("{}/v1/chat/completions", srv.url))
        .header("content-type", "application/json")
        .body(json!({"model": "code", "messages": [{"role": "user", "content": "hi"}]}).to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 502);
    let (s, _) = srv.get("/healthz").await;
    assert_eq!(s, 200);
    let (s, m) = srv.get("/v1/models").await;
    assert_eq!(s, 200, "{m}");
    let (_, m) = srv.get("/metrics").await;
    assert!(!m.contains("status=\"500\""), "no 500 was ever answered:\n{m}");
    assert!(
        m.contains("endpoint=\"/v1/chat/completions\",status=\"502\""),
        "the failed upstream call is counted:\n{m}"
    );
    srv.stop().await.expect("clean stop");
}
