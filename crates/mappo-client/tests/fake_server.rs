//! The clients against a stand-in server (a few lines of HTTP/1.1 on a local socket): what is
//! sent (path, body, API key), what is read back, and how errors are reported. The same clients
//! against the real service: mappo-serve's `tests/client.rs`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mappo_client::{Client, ClientError, LoadOptions, SimOptions, SimPrompt, run_levels, simulate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    authorization: Option<String>,
    body: serde_json::Value,
}

/// A server that routes every text to `code` (decision ids `d-0`, `d-1`, ...), accepts every
/// reward of a known id once (409 the second time), answers 404 elsewhere and records requests.
async fn stand_in() -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let rewarded = Arc::new(Mutex::new(Vec::<String>::new()));
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let (log, rewarded) = (log.clone(), rewarded.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then the body by content-length.
                let (head, body) = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().to_string())
                        })
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    break (head, buf[end + 4..end + 4 + len].to_vec());
                };
                let path = head.split_whitespace().nth(1).unwrap_or_default().to_string();
                let authorization = head.lines().find_map(|l| {
                    l.to_ascii_lowercase().starts_with("authorization:").then(|| l[14..].trim().to_string())
                });
                let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let (status, answer) = {
                    let mut seen = log.lock().expect("lock");
                    seen.push(Seen { path: path.clone(), authorization, body: body.clone() });
                    let routed = seen.iter().filter(|s| s.path == "/v1/route").count();
                    match path.as_str() {
                        "/v1/route" => (
                            "200 OK",
                            serde_json::json!({
                                "decision_id": format!("d-{}", routed - 1), "agent": "code", "agent_index": 0,
                                "probabilities": [0.75, 0.25], "propensity": 0.75, "policy_version": 3,
                                "greedy": body["greedy"],
                            }),
                        ),
                        "/v1/feedback" => {
                            let id = body["decision_id"].as_str().unwrap_or_default().to_string();
                            let mut done = rewarded.lock().expect("lock");
                            if done.contains(&id) {
                                (
                                    "409 Conflict",
                                    serde_json::json!({"error": format!("decision {id} already has a reward")}),
                                )
                            } else {
                                done.push(id.clone());
                                ("200 OK", serde_json::json!({"decision_id": id, "accepted": true}))
                            }
                        }
                        _ => ("404 Not Found", serde_json::json!({"error": "no such endpoint"})),
                    }
                };
                let answer = answer.to_string();
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_and_feedback_send_the_key_and_read_the_answers() {
    let (url, seen) = stand_in().await;
    let client =
        Client::new(format!("{url}/"), Some("k1".into()), Duration::from_secs(10), 2).expect("client");
    let d = client.route("fix my loop", true).await.expect("route");
    assert_eq!((d.decision_id.as_str(), d.agent.as_str(), d.agent_index), ("d-0", "code", 0));
    assert_eq!((d.propensity, d.policy_version), (0.75, 3));
    let ack = client.feedback("d-0", 1.0).await.expect("feedback");
    assert!(ack.accepted && ack.decision_id == "d-0");
    let e = client.feedback("d-0", 1.0).await.expect_err("twice");
    assert_eq!(e.status(), Some(409));
    assert!(
        matches!(&e, ClientError::Status { message, .. } if message == "decision d-0 already has a reward"),
        "{e}"
    );
    assert!(e.to_string().contains("/v1/feedback answered 409"), "{e}");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.authorization.as_deref() == Some("Bearer k1")), "{seen:?}");
    assert_eq!(seen[0].body, serde_json::json!({"text": "fix my loop", "greedy": true}));
    assert_eq!(seen[1].body, serde_json::json!({"decision_id": "d-0", "reward": 1.0}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_transport_error() {
    // A port nobody listens on: bind one, then close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let client =
        Client::new(format!("http://127.0.0.1:{port}"), None, Duration::from_secs(5), 1).expect("client");
    let e = client.route("x", false).await.expect_err("nobody listens");
    assert!(matches!(e, ClientError::Transport { .. }), "{e}");
    assert_eq!(e.status(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_users_reward_their_label_and_the_load_generator_counts_statuses() {
    let (url, seen) = stand_in().await;
    let corpus = vec![
        SimPrompt { text: "fix my loop".into(), label: "code".into() },
        SimPrompt { text: "2+2".into(), label: "math".into() },
    ];
    let mut opts = SimOptions::new(url.clone(), 6);
    opts.concurrency = 2;
    opts.seed = 7;
    let r = simulate(&corpus, &opts).await.expect("simulate");
    // Three passes over two prompts: the `code` one earns 1, the `math` one 0.
    assert_eq!((r.requests, r.errors, r.feedback_sent, r.feedback_errors), (6, 0, 6, 0));
    assert!((r.mean_reward - 0.5).abs() < 1e-12, "{r:?}");
    assert_eq!(r.reward_by_window.len(), 1);
    let rewards: Vec<f64> = {
        let seen = seen.lock().expect("lock");
        seen.iter().filter(|s| s.path == "/v1/feedback").filter_map(|s| s.body["reward"].as_f64()).collect()
    };
    assert_eq!(rewards.iter().filter(|&&x| x == 1.0).count(), 3, "{rewards:?}");

    let texts: Vec<String> = (0..10).map(|i| format!("text {i}")).collect();
    let reports = run_levels(&texts, &LoadOptions::new(url.clone(), 0), &[3, 1]).await.expect("load");
    assert_eq!(reports.iter().map(|r| r.concurrency).collect::<Vec<_>>(), [3, 1]);
    for r in &reports {
        assert_eq!((r.requests, r.failed), (10, 0), "{r:?}");
        assert_eq!(r.statuses.get(&200), Some(&10));
        assert!(r.p50_ms > 0.0 && r.p50_ms <= r.p99_ms, "{r:?}");
    }
    // A wrong path counts as failed, with its status.
    let r = mappo_client::run_load(&texts[..2], &LoadOptions::new(format!("{url}/nowhere"), 2))
        .await
        .expect("load");
    assert_eq!((r.failed, r.statuses.get(&404)), (2, Some(&2)));
}
