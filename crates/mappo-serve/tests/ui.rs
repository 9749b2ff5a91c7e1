//! `GET /ui`, the dashboard: every panel is there, its numbers are the log's (`stats()`), its
//! charts are well-formed SVG, bad query parameters are 422 and, with API keys, the page needs
//! one (Bearer or HTTP Basic with the key as password).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{config, start};
use mappo_log::{DecisionLog, GateRecord, PublishMeta, Stats, Timestamp};
use mappo_serve::{CandleLoader, ModelLoader};
use serde_json::{Value, json};

/// The headless Chromium of the browser check: `MAPPO_CHROMIUM` (`cargo xtask test` sets it,
/// installing Debian's `chromium` when it can) or `chromium` on the PATH. Without one the check
/// is skipped, said on stderr — and under `CI=true` that is a failure.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MAPPO_CHROMIUM").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .flat_map(|d| [d.join("chromium"), d.join("chromium-browser")])
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(!ci, "no chromium and CI=true: the dashboard's browser check must run (cargo xtask test)");
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED the dashboard's browser check: no chromium (Debian's `chromium`, or MAPPO_CHROMIUM)"
        );
    }
    found
}

/// Opens `/ui` in headless Chromium: the rendered DOM carries the log's numbers (as `stats`
/// and the policy list say), every panel and chart, and the console stays clean. Also takes a
/// screenshot (to `MAPPO_UI_SCREENSHOT` when set: docs/images/dashboard.png is made so).
async fn browser_check(url: &str, stats: &Stats, versions: usize) {
    let Some(chromium) = chromium() else { return };
    let page = format!("{url}/ui?minutes=30&bucket=10");
    let profile = tempfile::tempdir().expect("tmp");
    let shot = std::env::var("MAPPO_UI_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| profile.path().join("dashboard.png"));
    let run = |extra: Vec<String>| {
        let (chromium, page, profile) = (chromium.clone(), page.clone(), profile.path().to_path_buf());
        tokio::task::spawn_blocking(move || {
            Command::new(&chromium)
                .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
                .args(["--no-first-run", "--enable-logging=stderr", "--v=0", "--hide-scrollbars"])
                .arg(format!("--user-data-dir={}", profile.display()))
                .args(extra)
                .arg(&page)
                .output()
                .unwrap_or_else(|e| panic!("running {}: {e}", chromium.display()))
        })
    };
    let out = run(vec!["--dump-dom".into()]).await.expect("join");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success() && dom.contains("<html"), "chromium failed: {log}");
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    for id in ["decisions", "reward", "versions", "ope", "cost", "recent"] {
        assert!(dom.contains(&format!("<section id=\"{id}\"")), "panel #{id} missing in the DOM");
    }
    assert_eq!(int(&dom, "decisions", "data-decisions"), stats.decisions);
    assert_eq!(int(&dom, "decisions", "data-greedy"), stats.greedy);
    assert_eq!(int(&dom, "reward", "data-rewarded"), stats.rewards);
    let mean: f64 = attr(&dom, "reward", "data-reward-mean").parse().expect("mean");
    assert!((mean - stats.reward_mean.expect("mean")).abs() < 1e-9);
    let want: Vec<(String, i64, i64)> =
        stats.agents.iter().map(|a| (a.agent.clone(), a.decisions, a.rewarded)).collect();
    assert_eq!(agent_rows(&dom, "decisions"), want);
    assert_eq!(int(&dom, "versions", "data-versions"), versions as i64);
    assert_eq!(dom.matches("<svg").count(), 4, "every chart is in the DOM");
    let out = run(vec![format!("--screenshot={}", shot.display()), "--window-size=1280,2600".into()])
        .await
        .expect("join");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "a real screenshot: {} bytes", png.len());
    eprintln!("browser check: DOM numbers match, no console message; screenshot {}", shot.display());
}

/// The value of attribute `name` in the start tag of the element with `id`.
fn attr(html: &str, id: &str, name: &str) -> String {
    let start = html.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id}"));
    let tag_start = html[..start].rfind('<').expect("tag start");
    let tag_end = start + html[start..].find('>').expect("tag end");
    let tag = &html[tag_start..tag_end];
    let key = format!(" {name}=\"");
    let at = tag.find(&key).unwrap_or_else(|| panic!("#{id} has no {name}: {tag}"));
    let rest = &tag[at + key.len()..];
    rest[..rest.find('"').expect("closing quote")].to_string()
}

fn int(html: &str, id: &str, name: &str) -> i64 {
    let v = attr(html, id, name);
    v.parse().unwrap_or_else(|_| panic!("#{id} {name} = {v:?}"))
}

/// The `<tr data-agent=...>` rows of the element with `id`: (agent, data-decisions, data-rewarded).
fn agent_rows(html: &str, id: &str) -> Vec<(String, i64, i64)> {
    let start = html.find(&format!("id=\"{id}\"")).expect("section");
    let end = start + html[start..].find("</section>").expect("section end");
    let mut out = Vec::new();
    for row in html[start..end].split("<tr data-agent=\"").skip(1) {
        let agent = row[..row.find('"').expect("quote")].to_string();
        let field = |name: &str| -> i64 {
            let key = format!("{name}=\"");
            let at = row.find(&key).expect("field") + key.len();
            row[at..at + row[at..].find('"').expect("quote")].parse().expect("int")
        };
        out.push((agent, field("data-decisions"), field("data-rewarded")));
    }
    out
}

/// Checks that each `<svg ...>...</svg>` is well-formed: balanced, properly nested tags.
fn check_svgs(html: &str) -> usize {
    let mut n = 0;
    let mut rest = html;
    while let Some(at) = rest.find("<svg") {
        let end = at + rest[at..].find("</svg>").expect("every <svg has its </svg>") + "</svg>".len();
        check_xml(&rest[at..end]);
        rest = &rest[end..];
        n += 1;
    }
    assert_eq!(html.matches("<svg").count(), html.matches("</svg>").count());
    n
}

/// A small tag-balance checker: start and end tags nest, attribute values are quoted, no stray
/// `<` or unescaped `&`.
fn check_xml(doc: &str) {
    let mut stack: Vec<&str> = Vec::new();
    let mut i = 0;
    let b = doc.as_bytes();
    while i < b.len() {
        match b[i] {
            b'<' => {
                let close = i + doc[i..].find('>').expect("unclosed tag");
                let tag = &doc[i + 1..close];
                assert!(!tag.contains('<'), "a '<' inside a tag: {tag}");
                assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes: {tag}");
                if let Some(name) = tag.strip_prefix('/') {
                    assert_eq!(stack.pop(), Some(name.trim()), "mismatched </{name}>");
                } else if !tag.ends_with('/') && !tag.starts_with('?') && !tag.starts_with('!') {
                    let name = tag.split(|c: char| c.is_whitespace()).next().expect("name");
                    // HTML's void elements have no end tag.
                    if !["meta", "input", "br", "hr", "img", "link"].contains(&name) {
                        stack.push(name);
                    }
                }
                i = close + 1;
            }
            b'&' => {
                let semi = doc[i..].find(';').expect("an entity ends with ';'");
                let entity = &doc[i + 1..i + semi];
                assert!(
                    entity.chars().all(|c| c.is_ascii_alphanumeric() || c == '#') && !entity.is_empty(),
                    "bare '&': {entity}"
                );
                i += semi + 1;
            }
            _ => i += 1,
        }
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_what_the_log_holds() {
    let srv = start(config(&["serve.log_text=true", "serve.shadow=1"]), |_| {}).await;
    let log = DecisionLog::open(&srv.db).await.expect("open the same log");

    // An empty log renders too.
    let (s, page) = srv.get("/ui").await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(int(&page, "decisions", "data-decisions"), 0);

    // 200 decisions: 20 requests of 10 texts, every fourth request greedy; a reward for every
    // third decision.
    let mut ids = Vec::new();
    for r in 0..20 {
        let texts: Vec<String> = (0..10)
            .map(|i| format!("request {r} prompt {i}: <b>help</b> with item {} & more", i * 7))
            .collect();
        let body = json!({"texts": texts, "greedy": r % 4 == 0}).to_string();
        let (s, v) = srv.post("/v1/route", &body).await;
        assert_eq!(s, 200, "{v}");
        for d in v["decisions"].as_array().expect("decisions") {
            ids.push(d["decision_id"].as_str().expect("id").to_string());
        }
    }
    assert_eq!(ids.len(), 200);
    for (i, id) in ids.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
        let reward = if i % 2 == 0 { 1.0 } else { -0.5 };
        let (s, v) =
            srv.post("/v1/feedback", &json!({"decision_id": id, "reward": reward}).to_string()).await;
        assert_eq!(s, 200, "{v}");
    }
    // A refused candidate, as `mappo learn --publish` records it.
    let estimate = |v: f64| json!({"value": v, "ci": [v - 0.1, v + 0.1], "se": 0.05});
    log.record_gate_decision(&GateRecord {
        id: 0,
        time: Timestamp::now(),
        published: false,
        candidate_version: None,
        current_version: Some(1),
        candidate_sha256: None,
        estimator: "dr".into(),
        margin: 0.02,
        n: 150,
        candidate_value: 0.31,
        candidate_ci: [0.21, 0.41],
        current_value: Some(0.45),
        current_ci: Some([0.4, 0.5]),
        reason: "candidate's lower bound 0.21 < current 0.45 - margin 0.02".into(),
        meta: json!({"candidate": {"dr": estimate(0.31), "snips": estimate(0.3), "ess": 80.5},
                     "current": {"dr": estimate(0.45), "snips": estimate(0.44)}}),
    })
    .await
    .expect("gate decision");
    // A second version, published as `mappo learn --publish` would: the server switches to it.
    let bytes =
        tokio::task::spawn_blocking(|| CandleLoader::new(None).fresh_checkpoint(&config(&["train.seed=7"])))
            .await
            .expect("join")
            .expect("a fresh checkpoint");
    let meta = PublishMeta { source: "test".into(), note: Some("the second".into()), meta: Value::Null };
    assert_eq!(log.publish_policy(&bytes, &meta).await.expect("publish").version, 2);
    let switched = std::time::Instant::now();
    while srv.get("/metrics").await.1.lines().all(|l| l != "mappo_policy_version 2") {
        assert!(switched.elapsed() < std::time::Duration::from_secs(10), "version 2 never served");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let t0 = std::time::Instant::now();
    let (s, page) = srv.get("/ui?minutes=30&bucket=10").await;
    eprintln!("GET /ui: {} bytes in {:?}", page.len(), t0.elapsed());
    // MAPPO_UI_DUMP=FILE keeps the page (to look at it, or for a screenshot).
    if let Ok(path) = std::env::var("MAPPO_UI_DUMP") {
        std::fs::write(&path, &page).expect("write the page");
    }
    assert_eq!(s, 200, "{page}");
    for id in ["decisions", "reward", "versions", "ope", "cost", "recent"] {
        assert!(page.contains(&format!("<section id=\"{id}\"")), "panel #{id} missing");
    }
    let stats = log.stats().await.expect("stats");
    assert_eq!(int(&page, "decisions", "data-decisions"), stats.decisions);
    assert_eq!(int(&page, "decisions", "data-sampled"), stats.sampled);
    assert_eq!(int(&page, "decisions", "data-greedy"), stats.greedy);
    assert_eq!(int(&page, "decisions", "data-forced"), stats.forced);
    assert_eq!((stats.decisions, stats.greedy), (200, 50));
    assert_eq!(int(&page, "reward", "data-rewarded"), stats.rewards);
    let mean: f64 = attr(&page, "reward", "data-reward-mean").parse().expect("mean");
    assert!((mean - stats.reward_mean.expect("mean")).abs() < 1e-9, "{mean} vs {:?}", stats.reward_mean);
    let (lo, hi): (f64, f64) = (
        attr(&page, "reward", "data-reward-low").parse().expect("low"),
        attr(&page, "reward", "data-reward-high").parse().expect("high"),
    );
    assert!(lo < mean && mean < hi, "{lo} {mean} {hi}");
    let share: f64 = attr(&page, "reward", "data-rewarded-share").parse().expect("share");
    assert!((share - stats.join_rate).abs() < 1e-12);
    let rows = agent_rows(&page, "decisions");
    let want: Vec<(String, i64, i64)> =
        stats.agents.iter().map(|a| (a.agent.clone(), a.decisions, a.rewarded)).collect();
    assert_eq!(rows, want);

    // Versions, the shadow, the gate's estimates.
    let policies = log.list_policies().await.expect("policies");
    assert_eq!(int(&page, "versions", "data-versions"), policies.len() as i64);
    assert!(page.contains(&format!("<tr data-version=\"{}\"", policies[0].version)));
    assert_eq!(policies.len(), 2);
    assert_eq!(int(&page, "versions", "data-serving"), 2);
    assert_eq!(int(&page, "versions", "data-shadow-version"), 1);
    assert_eq!(int(&page, "versions", "data-shadowed"), 200);
    assert!(page.contains("data-gate-id=\"1\" data-published=\"false\""), "the refusal is listed");
    assert!(page.contains("candidate&#39;s lower bound 0.21"), "with its reason, escaped");
    assert_eq!(attr(&page, "ope", "data-estimator"), "dr");
    assert_eq!(attr(&page, "ope", "data-candidate-low"), "0.21");
    assert_eq!(attr(&page, "ope", "data-current-value"), "0.45");
    assert!(page.contains("data-policy=\"candidate\" data-estimate=\"snips\" data-value=\"0.3\""));
    assert!(page.contains("data-policy=\"candidate\" data-estimate=\"ess\" data-value=\"80.5\""));

    // Not cost-aware: no λ, and the page says so.
    assert_eq!(int(&page, "cost", "data-cost-weighted"), 0);
    assert!(page.contains("not cost-aware"));

    // The newest 50, with the logged text escaped.
    assert_eq!(int(&page, "recent", "data-rows"), 50);
    assert!(page.contains(&format!("data-decision-id=\"{}\"", ids[199])));
    assert!(page.contains("&lt;b&gt;help&lt;/b&gt; with item"), "texts are escaped");
    assert!(!page.contains("<b>help</b>"));

    // Charts: decisions, reward, versions, OPE (no λ chart).
    assert_eq!(check_svgs(&page), 4);
    check_xml(&page[page.find("<html").expect("html")..]);
    assert!(!page.contains("chart-error"), "every chart drew");

    // The page as a browser renders it: the same numbers in the DOM, no console error.
    browser_check(&srv.url, &stats, policies.len()).await;

    // The refresh is a meta tag.
    let (s, page) = srv.get("/ui?refresh=15").await;
    assert_eq!(s, 200);
    assert!(page.contains("<meta http-equiv=\"refresh\" content=\"15\">"));

    // Nonsense is 422 with a JSON error.
    for bad in
        ["minutes=abc", "bucket=0", "refresh=-1", "minutes=43200&bucket=1", "foo=1", "minutes=1&minutes=2"]
    {
        let r = srv.client.get(format!("{}/ui?{bad}", srv.url)).send().await.expect("req");
        assert_eq!(r.status().as_u16(), 422, "{bad}");
        let v: Value = r.json().await.expect("json");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
    srv.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_api_keys_the_dashboard_needs_one() {
    use base64::Engine;
    let dir = tempfile::tempdir().expect("tmp");
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "dash-key\n").expect("write keys");
    let srv =
        start(config(&[&format!("serve.api_keys_file={:?}", keys.display().to_string())]), |_| {}).await;
    let url = format!("{}/ui", srv.url);

    let r = srv.client.get(&url).send().await.expect("req");
    assert_eq!(r.status().as_u16(), 401);
    let r = srv.client.get(&url).bearer_auth("wrong").send().await.expect("req");
    assert_eq!(r.status().as_u16(), 401);
    let r = srv.client.get(&url).bearer_auth("dash-key").send().await.expect("req");
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.text().await.expect("body").contains("<section id=\"decisions\""));
    // What a browser sends after the login prompt: Basic with the key as password.
    let basic = base64::engine::general_purpose::STANDARD.encode("me:dash-key");
    let r = srv.client.get(&url).header("authorization", format!("Basic {basic}")).send().await.expect("req");
    assert_eq!(r.status().as_u16(), 200);
    srv.stop().await.expect("stop");
}
