//! mappo-client against the real service: its own response types read the server's answers
//! (the fields it reads exist, with the server's values), its calls are accepted, and its
//! errors carry the server's status and message. A field renamed on either side fails here,
//! not in a user's simulation.

mod common;

use std::time::Duration;

use common::{AGENTS, config, start};
use mappo_client::{Client, FeedbackAck, LoadOptions, SimOptions, SimPrompt};
use serde::Serialize;
use serde_json::Value;

/// Every field of the client's `mine` is a field of the server's `theirs`, with the same value.
fn same_fields(mine: &impl Serialize, theirs: &impl Serialize) {
    let (mine, theirs) =
        (serde_json::to_value(mine).expect("json"), serde_json::to_value(theirs).expect("json"));
    let (Value::Object(m), Value::Object(t)) = (&mine, &theirs) else { panic!("objects: {mine} {theirs}") };
    assert!(!m.is_empty());
    for (k, v) in m {
        assert_eq!(t.get(k), Some(v), "field `{k}`: the client's {mine} vs the server's {theirs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reads_what_the_server_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("keys");
    std::fs::write(&key_file, "client-key\n").expect("write keys");
    let srv =
        start(config(&[&format!("serve.api_keys_file={:?}", key_file.display().to_string())]), |_| {}).await;
    let client =
        Client::new(srv.url.clone(), Some("client-key".into()), Duration::from_secs(30), 2).expect("client");

    // Route: a sampled decision, as the server answers it.
    let d = client.route("why does my rust code not compile", false).await.expect("route");
    assert_eq!(AGENTS.get(d.agent_index).copied(), Some(d.agent.as_str()), "{d:?}");
    assert!(d.propensity > 0.0 && d.propensity < 1.0, "sampled: {d:?}");
    assert_eq!(d.policy_version, 1);
    assert!(uuid::Uuid::parse_str(&d.decision_id).is_ok(), "{d:?}");

    // The wire types: every field the client reads is in a raw answer, with the value the
    // server's own type reads.
    let (s, raw) =
        srv.post_with("/v1/route", r#"{"text": "fix my loop", "greedy": true}"#, Some("client-key")).await;
    assert_eq!(s, 200, "{raw}");
    let mine: mappo_client::RouteDecision = serde_json::from_value(raw.clone()).expect("the client's type");
    let theirs: mappo_serve::RouteDecision = serde_json::from_value(raw.clone()).expect("the server's type");
    same_fields(&mine, &theirs);
    assert_eq!(mine.propensity, 1.0, "greedy: {mine:?}");

    // Feedback: accepted once, then 409 with the server's message.
    let ack = client.feedback(&d.decision_id, 1.0).await.expect("feedback");
    assert_eq!(ack, FeedbackAck { decision_id: d.decision_id.clone(), accepted: true });
    let e = client.feedback(&d.decision_id, 1.0).await.expect_err("a second reward");
    assert_eq!(e.status(), Some(409), "{e}");
    assert!(e.to_string().contains("already has a reward"), "{e}");
    let body = format!(r#"{{"decision_id": "{}", "reward": 0.5}}"#, mine.decision_id);
    let (s, raw) = srv.post_with("/v1/feedback", &body, Some("client-key")).await;
    assert_eq!(s, 200, "{raw}");
    let ack: FeedbackAck = serde_json::from_value(raw.clone()).expect("the client's type");
    let theirs: mappo_serve::FeedbackResponse = serde_json::from_value(raw).expect("the server's type");
    same_fields(&ack, &theirs);

    // A wrong key: 401 with the server's message.
    let wrong =
        Client::new(srv.url.clone(), Some("nope".into()), Duration::from_secs(30), 1).expect("client");
    let e = wrong.route("x", false).await.expect_err("wrong key");
    assert_eq!(e.status(), Some(401), "{e}");
    assert!(e.to_string().contains("missing or wrong API key"), "{e}");

    // Simulated users and the load generator complete against it.
    let corpus = vec![
        SimPrompt { text: "fix my loop".into(), label: "code".into() },
        SimPrompt { text: "what is 2+2".into(), label: "math".into() },
    ];
    let mut opts = SimOptions::new(srv.url.clone(), 8);
    opts.api_key = Some("client-key".into());
    let r = mappo_client::simulate(&corpus, &opts).await.expect("simulate");
    assert_eq!((r.requests, r.errors, r.feedback_sent, r.feedback_errors), (8, 0, 8, 0), "{r:?}");
    let mut load = LoadOptions::new(srv.url.clone(), 2);
    load.api_key = Some("client-key".into());
    let texts: Vec<String> = (0..6).map(|i| format!("text number {i}")).collect();
    let r = mappo_client::run_load(&texts, &load).await.expect("load");
    assert_eq!((r.requests, r.failed, r.statuses.get(&200)), (6, 0, Some(&6)), "{r:?}");
    srv.stop().await.expect("stop");
}
