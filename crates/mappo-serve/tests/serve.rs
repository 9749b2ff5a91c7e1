//! The service end to end, in-process, through a real socket on 127.0.0.1 (port 0).

mod common;

use std::time::{Duration, Instant};

use common::{AGENTS, config, probs, start};
use mappo_log::{DecisionKind, DecisionLog, PublishMeta};
use mappo_serve::{CandleLoader, ModelLoader, ServeError, ServeOptions, Server};
use serde_json::{Value, json};
use uuid::Uuid;

const MIN_PROB: f64 = 0.01;

fn check_decision(d: &Value, version: i64) {
    let p = probs(d);
    assert_eq!(p.len(), 4, "{d}");
    let i = d["agent_index"].as_u64().expect("agent_index") as usize;
    assert!(i < 4, "{d}");
    assert_eq!(d["agent"], AGENTS[i], "{d}");
    assert_eq!(d["policy_version"], version, "{d}");
    for x in &p {
        assert!(*x >= MIN_PROB, "every probability is floored at {MIN_PROB}: {d}");
    }
    assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-5, "{d}");
    Uuid::parse_str(d["decision_id"].as_str().expect("id")).expect("a UUID");
    if d["greedy"] == json!(true) {
        assert_eq!(d["propensity"], 1.0, "{d}");
        let best = p.iter().cloned().fold(f64::MIN, f64::max);
        assert_eq!(p[i], best, "greedy takes the argmax: {d}");
    } else {
        assert_eq!(d["greedy"], json!(false), "{d}");
        assert_eq!(d["propensity"], d["probabilities"][i], "propensity == probabilities[agent_index]: {d}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_logs_before_answering_and_joins_feedback() {
    let srv = start(config(&[]), |_| {}).await;
    let log = DecisionLog::open(&srv.db).await.expect("open the same log");

    // One text.
    let (s, d) = srv.post("/v1/route", r#"{"text": "why does my rust code not compile"}"#).await;
    assert_eq!(s, 200, "{d}");
    check_decision(&d, 1);
    // Committed before the answer: visible to another connection as soon as we have it.
    let id = Uuid::parse_str(d["decision_id"].as_str().expect("id")).expect("uuid");
    let e = log.decision(id).await.expect("query").expect("the decision is in the log");
    assert_eq!(e.decision.kind, DecisionKind::Sampled);
    assert_eq!(
        e.decision.propensity,
        d["propensity"].as_f64().expect("p") as f32,
        "the logged propensity is the answered one"
    );
    assert_eq!(e.decision.action as u64, d["agent_index"].as_u64().expect("i"));
    assert_eq!(e.decision.embedding.len(), 384);
    assert_eq!(e.decision.policy_version, 1);
    assert_eq!(e.decision.text, None, "texts are not logged by default");
    assert_eq!(e.decision.replica, "test-replica");
    assert!(e.reward.is_none());

    // A batch, in order.
    let texts = ["solve 2x + 3 = 7", "write a poem about the sea", "where is my parcel"];
    let (s, b) = srv.post("/v1/route", &json!({ "texts": texts }).to_string()).await;
    assert_eq!(s, 200, "{b}");
    let ds = b["decisions"].as_array().expect("decisions");
    assert_eq!(ds.len(), 3);
    for d in ds {
        check_decision(d, 1);
    }
    // The same text in a batch or alone gets the same probabilities (one forward pass, rows kept apart).
    let (_, alone) = srv.post("/v1/route", r#"{"text": "write a poem about the sea"}"#).await;
    let (a, bt) = (probs(&alone), probs(&ds[1]));
    for (x, y) in a.iter().zip(&bt) {
        assert!((x - y).abs() < 1e-5, "{a:?} vs {bt:?}");
    }

    // Greedy: the argmax, propensity 1, logged as greedy.
    let (s, g) = srv.post("/v1/route", r#"{"text": "my invoice is wrong", "greedy": true}"#).await;
    assert_eq!(s, 200, "{g}");
    assert_eq!(g["greedy"], true);
    check_decision(&g, 1);
    let gid = Uuid::parse_str(g["decision_id"].as_str().expect("id")).expect("uuid");
    let ge = log.decision(gid).await.expect("query").expect("logged");
    assert_eq!(ge.decision.kind, DecisionKind::Greedy);
    assert_eq!(ge.decision.propensity, 1.0);

    // Feedback: 200, then 409 for a second reward, 404 for an unknown id, 422 for bad rewards.
    let fb = |id: &str, r: &str| format!(r#"{{"decision_id": "{id}", "reward": {r}}}"#);
    let (s, f) = srv.post("/v1/feedback", &fb(&id.to_string(), "0.5")).await;
    assert_eq!((s, &f["accepted"], &f["decision_id"]), (200, &json!(true), &json!(id.to_string())), "{f}");
    let joined = log.decision(id).await.expect("query").expect("logged");
    assert_eq!(joined.reward.map(|r| r.reward), Some(0.5), "the reward is committed before its 200");
    let (s, f) = srv.post("/v1/feedback", &fb(&id.to_string(), "1")).await;
    assert_eq!(s, 409, "{f}");
    assert!(f["error"].as_str().is_some_and(|e| e.contains("already")), "{f}");
    let (s, f) = srv.post("/v1/feedback", &fb(&Uuid::now_v7().to_string(), "1")).await;
    assert_eq!(s, 404, "{f}");
    for bad in ["1.5", "-1.01", "1e400", "\"high\"", "null"] {
        let (s, f) = srv.post("/v1/feedback", &fb(&gid.to_string(), bad)).await;
        assert_eq!(s, 422, "reward {bad}: {f}");
        assert!(f["error"].is_string(), "{f}");
    }
    let (s, f) = srv.post("/v1/feedback", &fb("not-a-uuid", "1")).await;
    assert_eq!(s, 422, "{f}");
    // The greedy decision takes a reward too (after the refused ones).
    let (s, _) = srv.post("/v1/feedback", &fb(&gid.to_string(), "-1")).await;
    assert_eq!(s, 200);

    // healthz, metrics, openapi.
    let (s, h) = srv.get("/healthz").await;
    assert_eq!(s, 200, "{h}");
    let h: Value = serde_json::from_str(&h).expect("json");
    assert_eq!((h["status"].as_str(), h["policy_version"].as_i64()), (Some("ok"), Some(1)), "{h}");
    let (s, m) = srv.get("/metrics").await;
    assert_eq!(s, 200);
    for needle in [
        "mappo_http_requests_total{endpoint=\"/v1/route\",status=\"200\"} 4",
        "mappo_http_requests_total{endpoint=\"/v1/feedback\",status=\"409\"} 1",
        "mappo_http_request_duration_seconds_bucket{le=",
        "mappo_decisions_logged_total 6",
        "mappo_rewards_joined_total 2",
        "mappo_batch_texts_count",
        "mappo_policy_version 1",
    ] {
        assert!(m.contains(needle), "metrics lack {needle:?}:\n{m}");
    }
    let (s, o) = srv.get("/openapi.json").await;
    assert_eq!(s, 200);
    let o: Value = serde_json::from_str(&o).expect("openapi.json parses");
    assert!(o["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{o}");
    for p in ["/v1/route", "/v1/feedback", "/healthz", "/metrics"] {
        assert!(o["paths"][p].is_object(), "openapi lacks {p}");
    }
    assert!(o["components"]["schemas"]["RouteDecision"]["properties"]["propensity"].is_object());

    let _db_dir = srv.stop().await.expect("clean shutdown");
    // Everything acknowledged is in the log after shutdown.
    let stats = log.stats().await.expect("stats");
    assert_eq!((stats.decisions, stats.greedy, stats.rewards), (6, 1, 2), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_agents_follow_the_probabilities() {
    let srv = start(config(&["serve.max_batch_texts=100"]), |_| {}).await;
    let text = "please fix the bug in my python script";
    let mut counts = [0usize; 4];
    let mut p = Vec::new();
    for _ in 0..8 {
        let (s, b) = srv.post("/v1/route", &json!({ "texts": vec![text; 100] }).to_string()).await;
        assert_eq!(s, 200, "{b}");
        for d in b["decisions"].as_array().expect("decisions") {
            counts[d["agent_index"].as_u64().expect("i") as usize] += 1;
            p = probs(d);
        }
    }
    let n = 800.0;
    let max = p.iter().cloned().fold(0.0, f64::max);
    assert!(max < 0.97, "the test needs a policy that is not deterministic: {p:?}");
    for (i, c) in counts.iter().enumerate() {
        let expected = n * p[i];
        let sd = (n * p[i] * (1.0 - p[i])).sqrt();
        assert!(
            (*c as f64 - expected).abs() <= 4.5 * sd + 1.0,
            "agent {i}: {c} draws, expected {expected:.1} ± {sd:.1} (p = {p:?}, counts {counts:?})"
        );
    }
    // Not the argmax every time.
    let argmax = p.iter().enumerate().fold(0, |b, (i, x)| if *x > p[b] { i } else { b });
    assert!(counts[argmax] < 800, "{counts:?}");
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_policy_is_served_within_two_seconds_without_a_failed_request() {
    let srv = start(config(&[]), |o| o.policy_poll = Duration::from_millis(200)).await;
    let client = srv.client.clone();
    let url = format!("{}/v1/route", srv.url);
    let traffic = tokio::spawn(async move {
        let mut seen: Vec<(Instant, i64)> = Vec::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            let r = client
                .post(&url)
                .header("content-type", "application/json")
                .body(r#"{"texts": ["integrate x^2", "reset my password"]}"#)
                .send()
                .await
                .expect("request");
            assert_eq!(r.status().as_u16(), 200, "a request failed during the switch");
            let b: Value = r.json().await.expect("json");
            for d in b["decisions"].as_array().expect("decisions") {
                seen.push((Instant::now(), d["policy_version"].as_i64().expect("version")));
            }
        }
        seen
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    // A different policy (another seed), published by another process would do the same.
    let new_cfg = config(&["train.seed=7"]);
    let bytes = tokio::task::spawn_blocking(move || CandleLoader::new(None).fresh_checkpoint(&new_cfg))
        .await
        .expect("join")
        .expect("fresh checkpoint");
    let log = DecisionLog::open(&srv.db).await.expect("log");
    let published = log
        .publish_policy(&bytes, &PublishMeta { source: "test".into(), note: None, meta: Value::Null })
        .await
        .expect("publish");
    assert_eq!((published.version, published.created), (2, true));
    let t_pub = Instant::now();
    let seen = traffic.await.expect("traffic never failed");
    let first_new = seen.iter().find(|(_, v)| *v == 2).map(|(t, _)| t.duration_since(t_pub));
    let first_new = first_new.expect("version 2 was never served");
    assert!(first_new < Duration::from_secs(2), "switched after {first_new:?}");
    // Versions never go back once switched.
    let switch = seen.iter().position(|(_, v)| *v == 2).expect("switch");
    assert!(seen[switch..].iter().all(|(_, v)| *v == 2));
    let (_, h) = srv.get("/healthz").await;
    assert!(h.contains("\"policy_version\":2"), "{h}");
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_what_it_must_and_stays_healthy() {
    let dir = tempfile::tempdir().expect("tmp");
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "# keys\nsecret-one\nsecret-two\n").expect("write keys");
    let cfg = config(&[
        &format!("serve.api_keys_file={:?}", keys.display().to_string()),
        "serve.max_body_bytes=4096",
        "serve.max_text_bytes=100",
        "serve.max_batch_texts=4",
    ]);
    let srv = start(cfg, |_| {}).await;
    let k = Some("secret-two");
    let ok = r#"{"text": "hello"}"#;

    for (key, what) in [(None, "no key"), (Some("secret"), "a wrong key")] {
        let (s, e) = srv.post_with("/v1/route", ok, key).await;
        assert_eq!(s, 401, "{what}: {e}");
        assert!(e["error"].is_string(), "{e}");
    }
    let (s, e) = srv.post_with("/v1/route", ok, Some("secret-one")).await;
    assert_eq!(s, 200, "{e}");
    let (s, _) = srv.get("/metrics").await;
    assert_eq!(s, 401, "metrics need the key too");
    let cases: Vec<(String, u16)> = vec![
        ("{\"text\": ".into(), 400),
        ("not json".into(), 400),
        ("".into(), 400),
        ("{\"text\": \"x\"} trailing".into(), 400),
        (format!("{{\"text\": \"{}\"}}", "a".repeat(5000)), 413),
        (format!("{{\"text\": \"{}\"}}", "é".repeat(51)), 413),
        (json!({"texts": ["a", "b", "c", "d", "e"]}).to_string(), 413),
        (json!({"texts": []}).to_string(), 422),
        (json!({"text": "a", "texts": ["b"]}).to_string(), 422),
        (json!({}).to_string(), 422),
        (json!({"text": 5}).to_string(), 422),
        (json!({"text": "a", "agent": "math"}).to_string(), 422),
        (json!({"text": "a", "greedy": "yes"}).to_string(), 422),
        ("[]".into(), 422),
    ];
    for (body, want) in &cases {
        let (s, e) = srv.post_with("/v1/route", body, k).await;
        assert_eq!(s, *want, "{body:.80}: {e}");
        assert!(e["error"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    }
    // Exactly at the limits is fine.
    let (s, e) =
        srv.post_with("/v1/route", &json!({"texts": ["a".repeat(100), "b", "c", "d"]}).to_string(), k).await;
    assert_eq!(s, 200, "{e}");
    // Unknown paths and methods answer JSON too.
    let r =
        srv.client.get(format!("{}/v1/route", srv.url)).bearer_auth("secret-one").send().await.expect("req");
    assert_eq!(r.status().as_u16(), 405);
    assert!(r.json::<Value>().await.expect("json")["error"].is_string());
    let r = srv.client.get(format!("{}/nope", srv.url)).send().await.expect("req");
    assert_eq!(r.status().as_u16(), 404);
    assert!(r.json::<Value>().await.expect("json")["error"].is_string());

    // Still healthy and routing.
    let (s, _) = srv.get("/healthz").await;
    assert_eq!(s, 200);
    let (s, d) = srv.post_with("/v1/route", ok, k).await;
    assert_eq!(s, 200, "{d}");
    let r =
        srv.client.get(format!("{}/metrics", srv.url)).bearer_auth("secret-one").send().await.expect("req");
    let m = r.text().await.expect("text");
    assert!(m.contains("mappo_http_requests_total{endpoint=\"/v1/route\",status=\"401\"} 2"), "{m}");
    assert!(m.contains("mappo_http_requests_total{endpoint=\"/v1/route\",status=\"413\"} 3"), "{m}");
    srv.stop().await.expect("stop");
}

#[tokio::test]
async fn refuses_to_start_insecure_or_without_a_policy() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = format!("sqlite:{}", dir.path().join("x.db").display());
    // A non-loopback address without keys.
    let opts = ServeOptions::new(db.clone(), config(&["serve.addr=\"0.0.0.0:0\""]));
    let e = Server::start(opts).await.expect_err("insecure");
    assert!(matches!(e, ServeError::Insecure { .. }), "{e}");
    assert!(e.to_string().contains("--insecure"), "{e}");
    // A keys file without a key.
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "\n# none\n").expect("write");
    let cfg = config(&[&format!("serve.api_keys_file={:?}", keys.display().to_string())]);
    let e = Server::start(ServeOptions::new(db.clone(), cfg)).await.expect_err("no keys");
    assert!(e.to_string().contains("no API key"), "{e}");
    // Nothing published, nothing given.
    let e = Server::start(ServeOptions::new(db.clone(), config(&[]))).await.expect_err("no policy");
    assert!(matches!(e, ServeError::NoPolicy { .. }), "{e}");
    // An unreachable database is named.
    let e = Server::start(ServeOptions::new("postgres://mappo@127.0.0.1:9/nowhere", config(&[])))
        .await
        .expect_err("unreachable");
    assert!(e.to_string().contains("127.0.0.1:9"), "{e}");
    // A checkpoint that is not one: refused, and never published.
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"not a checkpoint").expect("write");
    let mut opts = ServeOptions::new(db.clone(), config(&[]));
    opts.checkpoint = Some(bad.clone());
    let e = Server::start(opts).await.expect_err("bad checkpoint");
    assert!(e.to_string().contains("bad.safetensors"), "{e}");
    let log = DecisionLog::open(&db).await.expect("log");
    assert_eq!(log.latest_policy_version().await.expect("query"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_gives_503_and_service_resumes() {
    let srv = start(config(&[]), |_| {}).await;
    let (s, _) = srv.post("/v1/route", r#"{"text": "hi"}"#).await;
    assert_eq!(s, 200);
    // Another connection takes the write lock: the service's writes time out (busy).
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&srv.db_path);
    let mut conn = {
        use sqlx::ConnectOptions;
        opts.connect().await.expect("connect")
    };
    sqlx::query("BEGIN EXCLUSIVE").execute(&mut conn).await.expect("lock");
    let (s, e) = srv.post("/v1/route", r#"{"text": "hi"}"#).await;
    assert_eq!(s, 503, "{e}");
    assert!(e["error"].as_str().is_some_and(|m| m.contains("unavailable")), "{e}");
    let (s, _) = srv.get("/healthz").await;
    assert_eq!(s, 503);
    sqlx::query("ROLLBACK").execute(&mut conn).await.expect("unlock");
    drop(conn);
    let (s, d) = srv.post("/v1/route", r#"{"text": "hi"}"#).await;
    assert_eq!(s, 200, "{d}");
    let (s, _) = srv.get("/healthz").await;
    assert_eq!(s, 200);
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_is_published_once_and_texts_are_logged_when_asked() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = config(&["serve.log_text=true"]);
    let bytes = CandleLoader::new(None).fresh_checkpoint(&cfg).expect("fresh");
    let ckpt = dir.path().join("policy.safetensors");
    std::fs::write(&ckpt, &bytes).expect("write");
    let db_path = dir.path().join("db.sqlite");
    let db = format!("sqlite:{}", db_path.display());
    for round in 0..2 {
        let mut opts = ServeOptions::new(db.clone(), cfg.clone());
        opts.checkpoint = Some(ckpt.clone());
        let server = Server::start(opts).await.expect("start");
        assert_eq!(server.policy_version(), 1, "round {round}: the same bytes are one version");
        let url = format!("http://{}/v1/route", server.local_addr());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run_until(async move {
            let _ = rx.await;
        }));
        let r: Value = reqwest::Client::new()
            .post(&url)
            .body(r#"{"text": "a private prompt"}"#)
            .send()
            .await
            .expect("req")
            .json()
            .await
            .expect("json");
        let id = Uuid::parse_str(r["decision_id"].as_str().expect("id")).expect("uuid");
        let _ = tx.send(());
        task.await.expect("join").expect("clean stop");
        let log = DecisionLog::open(&db).await.expect("log");
        let e = log.decision(id).await.expect("query").expect("logged");
        assert_eq!(e.decision.text.as_deref(), Some("a private prompt"));
    }
    let log = DecisionLog::open(&db).await.expect("log");
    assert_eq!(log.list_policies().await.expect("list").len(), 1);
}

/// Shadow mode: a candidate version scores every request beside the served one; what it would
/// have chosen is logged with the decision, never acted on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_version_is_logged_beside_every_decision_and_never_served() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = format!("sqlite:{}", dir.path().join("db.sqlite").display());
    let served_bytes = CandleLoader::new(None).fresh_checkpoint(&config(&[])).expect("fresh");
    let ckpt = dir.path().join("served.safetensors");
    std::fs::write(&ckpt, &served_bytes).expect("write");
    let log = DecisionLog::open(&db).await.expect("log");
    let meta = PublishMeta { source: "test".into(), note: None, meta: Value::Null };
    assert_eq!(log.publish_policy(&served_bytes, &meta).await.expect("publish").version, 1);
    let candidate = CandleLoader::new(None).fresh_checkpoint(&config(&["train.seed=7"])).expect("fresh");
    assert_eq!(log.publish_policy(&candidate, &meta).await.expect("publish").version, 2);

    // A shadow that is not published is refused at start, naming the key.
    let mut opts = ServeOptions::new(db.clone(), config(&["serve.shadow=9"]));
    opts.checkpoint = Some(ckpt.clone());
    let e = Server::start(opts).await.expect_err("no version 9");
    assert!(e.to_string().contains("serve.shadow = 9"), "{e}");

    // Version 1 (pinned) serves; version 2 shadows.
    let mut opts = ServeOptions::new(db.clone(), config(&["serve.shadow=2"]));
    opts.checkpoint = Some(ckpt);
    let server = Server::start(opts).await.expect("start");
    let url = format!("http://{}", server.local_addr());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run_until(async move {
        let _ = rx.await;
    }));
    let client = reqwest::Client::new();
    let texts: Vec<String> =
        (0..30).map(|i| format!("prompt {i}: please help with item {}", i * 7)).collect();
    let r: Value = client
        .post(format!("{url}/v1/route"))
        .body(json!({ "texts": texts }).to_string())
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    let ds = r["decisions"].as_array().expect("decisions").clone();
    let g: Value = client
        .post(format!("{url}/v1/route"))
        .body(r#"{"text": "my invoice is wrong", "greedy": true}"#)
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    let m = client.get(format!("{url}/metrics")).send().await.expect("req").text().await.expect("text");
    assert!(m.contains("mappo_shadow_decisions_total 31"), "{m}");
    let _ = tx.send(());
    task.await.expect("join").expect("clean stop");

    let mut disagreements = 0;
    for d in &ds {
        assert_eq!(d["policy_version"], 1, "the shadow never serves: {d}");
        assert!(d.get("shadow").is_none(), "the shadow is not in the answer: {d}");
        let id = Uuid::parse_str(d["decision_id"].as_str().expect("id")).expect("uuid");
        let e = log.decision(id).await.expect("query").expect("logged");
        let s = e.decision.shadow.expect("a shadow choice is logged");
        assert_eq!(s.version, 2);
        assert!((s.action as usize) < AGENTS.len());
        assert!(s.propensity >= MIN_PROB as f32 && s.propensity <= 1.0, "{s:?}");
        disagreements += usize::from(s.action != e.decision.action);
        let line = serde_json::to_value(mappo_log::ExportLine::new(&e, Default::default())).expect("json");
        assert_eq!(line["shadow"]["version"], 2, "{line}");
    }
    // Two differently seeded policies (init gain 2) do not choose alike on 30 prompts.
    assert!(disagreements > 0, "the shadow agreed on every decision: is it the served policy?");
    let gid = Uuid::parse_str(g["decision_id"].as_str().expect("id")).expect("uuid");
    let ge = log.decision(gid).await.expect("query").expect("logged");
    assert_eq!(
        ge.decision.shadow.map(|s| (s.version, s.propensity)),
        Some((2, 1.0)),
        "greedy: the shadow's argmax"
    );
}
