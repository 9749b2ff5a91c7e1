//! Episodes over HTTP: conversation turns and cascade stages routed as steps of one episode,
//! each step's observation built from the episode's earlier decisions in the decision log (the
//! same layout as training's), episode ends with and without a reward, and every refusal.

mod common;

use common::{config, start};
use mappo_log::{DecisionLog, ExportOptions};
use serde_json::{Value, json};

/// configs/prompts.toml as a 3-turn conversation policy.
fn conversation() -> mappo_config::Config {
    config(&[
        "env.kind=\"conversation\"",
        "env.reward=\"label\"",
        "env.turns=3",
        "train.rollout_len=3",
        "env.continuity_bonus=1.0",
        "env.reward_at=\"end\"",
        "serve.min_prob=0.0",
    ])
}

/// The probabilities the published policy gives the step after `earlier` of `text`, computed
/// here with the library (what training and `mappo route` use), not by the server.
fn offline(db_path: &std::path::Path, text: &str, earlier: &[u32], response: Option<&str>) -> Vec<f32> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let bytes = rt.block_on(async {
        let log = DecisionLog::open(&format!("sqlite:{}", db_path.display())).await.expect("open");
        log.policy(1).await.expect("read").expect("version 1").checkpoint
    });
    let file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(file.path(), bytes).expect("write");
    let dev = candle_core::Device::Cpu;
    let ckpt = mappo_train::Checkpoint::load(file.path(), &dev).expect("checkpoint");
    let policy = mappo_train::RoutingPolicy::from_checkpoint(&ckpt, &dev).expect("policy");
    let embedder = mappo_env::text::load_embedder(&ckpt.config.env, &dev).expect("embedder");
    let e = embedder.embed(&[text]).expect("embed").remove(0);
    let r = response.map(|r| embedder.embed(&[r]).expect("embed").remove(0));
    let row = policy.step_row(&e, 0.0, earlier, r.as_deref()).expect("row");
    policy.step_probabilities(row, &[earlier]).expect("probabilities").remove(0)
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("float") as f32).collect()
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conversation_turns_see_the_logged_earlier_turns_and_end_once() {
    let s = start(conversation(), |_| {}).await;
    let text = "My package never arrived and I want a refund.";
    let route = |body: Value| {
        let s = &s;
        async move { s.post("/v1/route", &body.to_string()).await }
    };
    // Three turns of one conversation: steps 0, 1, 2, each seeing the agent chosen before.
    let mut earlier = Vec::new();
    for t in 0..3u32 {
        let (st, d) = route(json!({"text": text, "episode_id": "chat-1"})).await;
        assert_eq!(st, 200, "{d}");
        assert_eq!(
            (d["episode_id"].as_str(), d["step"].as_u64(), d["stage"].as_str()),
            (Some("chat-1"), Some(t.into()), Some("route")),
            "{d}"
        );
        let served = floats(&d["probabilities"]);
        let path = s.db_path.clone();
        let e = earlier.clone();
        let mine =
            tokio::task::spawn_blocking(move || offline(&path, text, &e, None)).await.expect("offline");
        assert!(close(&served, &mine), "turn {t}: served {served:?}, library {mine:?}");
        earlier.push(d["agent_index"].as_u64().expect("index") as u32);
    }
    // The previous agent and the turns left are inputs: the same text as a first turn differs.
    let (_, first) = route(json!({"text": text, "episode_id": "chat-2"})).await;
    let (_, third) = s.post("/v1/route", &json!({"text": text, "episode_id": "chat-2"}).to_string()).await;
    assert_ne!(floats(&first["probabilities"]), floats(&third["probabilities"]));
    // A one-step request to the same policy is a fresh first turn, not logged as an episode.
    let (st, lone) = route(json!({"text": text})).await;
    assert_eq!(st, 200);
    assert!(lone.get("episode_id").is_none() && lone.get("step").is_none(), "{lone}");
    assert_eq!(floats(&lone["probabilities"]), floats(&first["probabilities"]));

    // Ends: with a reward; a second end, a step after the end, an unknown episode.
    let fb = |body: Value| {
        let s = &s;
        async move { s.post("/v1/feedback", &body.to_string()).await }
    };
    let (st, v) = fb(json!({"episode_id": "chat-1", "reward": 1.0, "end": true})).await;
    assert_eq!(
        (st, v["episode_id"].as_str(), v["accepted"].as_bool()),
        (200, Some("chat-1"), Some(true)),
        "{v}"
    );
    assert_eq!(fb(json!({"episode_id": "chat-1", "end": true})).await.0, 409);
    let (st, v) = route(json!({"text": text, "episode_id": "chat-1"})).await;
    assert_eq!(st, 409, "{v}");
    assert!(v["error"].as_str().is_some_and(|e| e.contains("ended")), "{v}");
    assert_eq!(fb(json!({"episode_id": "nobody", "end": true})).await.0, 404);
    assert_eq!(fb(json!({"episode_id": "chat-2", "end": true})).await.0, 200, "an end without a reward");
    // Refusals: wrong combinations and ids are 422, never a 5xx.
    for bad in [
        json!({"episode_id": "chat-3", "reward": 1.0}),
        json!({"episode_id": "chat-3", "decision_id": lone["decision_id"], "reward": 1.0, "end": true}),
        json!({"decision_id": lone["decision_id"], "reward": 1.0, "end": true}),
        json!({"decision_id": lone["decision_id"]}),
        json!({"episode_id": "", "end": true}),
        json!({"episode_id": "x", "reward": 9.0, "end": true}),
    ] {
        let (st, v) = fb(bad.clone()).await;
        assert_eq!(st, 422, "{bad} -> {v}");
    }
    let long = "x".repeat(129);
    for bad in [
        json!({"text": text, "episode_id": long}),
        json!({"text": text, "episode_id": "a\nb"}),
        json!({"texts": [text, text], "episode_id": "chat-4"}),
        json!({"text": text, "stage": "route"}),
        json!({"text": text, "previous_response": "hello"}),
    ] {
        let (st, v) = route(bad.clone()).await;
        assert_eq!(st, 422, "{bad} -> {v}");
    }
    let (st, v) = route(json!({"text": text, "episode_id": "chat-4", "stage": "checker"})).await;
    assert_eq!(st, 409, "another stage than the next: {v}");
    let (st, v) = route(json!({"text": text, "episode_id": "chat-4", "stage": "route"})).await;
    assert_eq!((st, v["step"].as_u64()), (200, Some(0)), "{v}");

    // Concurrent steps of one new episode: each step is taken once; no 5xx.
    let mut handles = Vec::new();
    for _ in 0..8 {
        let (client, url) = (s.client.clone(), s.url.clone());
        handles.push(tokio::spawn(async move {
            let r = client
                .post(format!("{url}/v1/route"))
                .header("content-type", "application/json")
                .body(json!({"text": "hello there", "episode_id": "race"}).to_string())
                .send()
                .await
                .expect("request");
            let st = r.status().as_u16();
            (st, r.json::<Value>().await.expect("json"))
        }));
    }
    let mut steps = Vec::new();
    for h in handles {
        let (st, v) = h.await.expect("task");
        assert!(st == 200 || st == 409, "{st} {v}");
        if st == 200 {
            steps.push(v["step"].as_u64().expect("step"));
        } else {
            assert!(v["error"].as_str().is_some_and(|e| e.contains("already decided")), "{v}");
        }
    }
    steps.sort_unstable();
    assert_eq!(steps, (0..steps.len() as u64).collect::<Vec<_>>(), "steps taken once each, in order");

    // The log: one row per step with its episode fields, the episode reward on the last row.
    let log = DecisionLog::open(&s.db).await.expect("open");
    let mut out = Vec::new();
    log.export_jsonl(&mut out, ExportOptions::default()).await.expect("export");
    let rows: Vec<Value> = String::from_utf8(out)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let chat1: Vec<&Value> = rows.iter().filter(|r| r["episode_id"] == "chat-1").collect();
    assert_eq!(chat1.iter().map(|r| r["step"].as_u64().expect("step")).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(chat1[2]["episode_reward"], 1.0);
    assert!(chat1[..2].iter().all(|r| r.get("episode_reward").is_none()));
    let stats = log.stats().await.expect("stats");
    assert_eq!((stats.episodes, stats.episodes_ended), (4, 2), "chat-1, chat-2, chat-4, race");
    s.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cascade_step_sees_the_first_answer_and_the_cascade_then_completes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let corpus = root.join("data/cascade.jsonl").display().to_string();
    let cfg = config(&[
        "env.kind=\"cascade\"",
        &format!("env.corpus={corpus:?}"),
        "env.reward=\"outcome\"",
        "env.agents=[{name=\"small\", cost=1.0}, {name=\"large\", cost=10.0}]",
        "env.cost_weight_range=[0.0, 0.6]",
        "serve.min_prob=0.2",
    ]);
    let s = start(cfg, |_| {}).await;
    let text = "Estimate the square root of 50 to two decimal places without a calculator.";
    let answer = "Here is the complete answer, checked step by step.";
    let mut escalation_seen = false;
    let mut strong_first_seen = false;
    for i in 0..40 {
        let id = format!("cascade-{i}");
        let (st, first) = s.post("/v1/route", &json!({"text": text, "episode_id": id}).to_string()).await;
        assert_eq!((st, first["stage"].as_str()), (200, Some("first")), "{first}");
        assert_eq!(floats(&first["probabilities"]).len(), 2);
        let next = json!({"text": text, "episode_id": id, "previous_response": answer});
        if first["agent"] == "large" {
            // The strongest agent answered: the cascade is complete.
            let (st, v) = s.post("/v1/route", &next.to_string()).await;
            assert_eq!(st, 409, "{v}");
            strong_first_seen = true;
            continue;
        }
        // The escalation step needs the first answer.
        let (st, v) = s.post("/v1/route", &json!({"text": text, "episode_id": id}).to_string()).await;
        assert_eq!(st, 422, "{v}");
        let (st, second) = s.post("/v1/route", &next.to_string()).await;
        assert_eq!(st, 200, "{second}");
        assert_eq!((second["stage"].as_str(), second["step"].as_u64()), (Some("escalation"), Some(1)));
        assert!(["accept", "escalate"].contains(&second["agent"].as_str().expect("agent")), "{second}");
        // The served step equals the library's (min_prob floors both options at 0.2 here; the
        // unfloored split is compared through the argmax).
        let path = s.db_path.clone();
        let mine = tokio::task::spawn_blocking(move || offline(&path, text, &[0], Some(answer)))
            .await
            .expect("offline");
        let served = floats(&second["probabilities"]);
        assert_eq!(served.len(), 2);
        assert_eq!(mine[0] > mine[1], served[0] > served[1], "served {served:?}, library {mine:?}");
        let (st, v) = s.post("/v1/route", &next.to_string()).await;
        assert_eq!(st, 409, "a third step: {v}");
        escalation_seen = true;
        if strong_first_seen {
            break;
        }
    }
    assert!(escalation_seen, "40 cascades and none started with the small agent");
    s.stop().await.expect("stop");
}
