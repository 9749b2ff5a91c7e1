//! `GET /ui`, the dashboard: every panel is there, its numbers are the log's (`stats()`), its
//! charts are well-formed SVG, bad query parameters are 422 and, with API keys, the page needs
//! one (Bearer or HTTP Basic with the key as password).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
    let run = |extra: Vec<String>| run_chromium(&chromium, profile.path(), &page, extra);
    let out = run(vec!["--dump-dom".into()]).await;
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
    let out = run(vec![format!("--screenshot={}", shot.display()), "--window-size=1280,2600".into()]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "a real screenshot: {} bytes", png.len());
    eprintln!("browser check: DOM numbers match, no console message; screenshot {}", shot.display());
}

/// Runs headless Chromium on `page` with the `extra` arguments (`--dump-dom`, `--screenshot=`).
async fn run_chromium(chromium: &Path, profile: &Path, page: &str, extra: Vec<String>) -> Output {
    let (chromium, page, profile) = (chromium.to_path_buf(), page.to_string(), profile.to_path_buf());
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
    .await
    .expect("join")
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

    // Not cost-aware: no λ, no costs, and the page says so.
    assert_eq!(int(&page, "cost", "data-cost-weighted"), 0);
    assert!(page.contains("not cost-aware"));
    assert_eq!(attr(&page, "cost", "data-agent-costs"), "none");
    assert_eq!(attr(&page, "cost", "data-cost-per-request"), "");
    assert!(page.contains("gives no agent a cost"));

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

/// The attributes of a start tag's inside (`tr data-a="1" data-b="x"`), by name.
fn tag_attrs(tag: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = tag;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].rsplit(char::is_whitespace).next().expect("a name").to_string();
        let value = &rest[eq + 2..];
        let close = value.find('"').expect("closing quote");
        out.insert(name, value[..close].to_string());
        rest = &value[close + 1..];
    }
    out
}

/// The attributes of every `<tr>` with attribute `marker` in the section with `id`.
fn rows_with(html: &str, id: &str, marker: &str) -> Vec<BTreeMap<String, String>> {
    let start = html.find(&format!("<section id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id}"));
    let end = start + html[start..].find("</section>").expect("section end");
    html[start..end]
        .split("<tr ")
        .skip(1)
        .map(|r| tag_attrs(&r[..r.find('>').expect("tag end")]))
        .filter(|a| a.contains_key(marker))
        .collect()
}

fn float(html: &str, id: &str, name: &str) -> f64 {
    let v = attr(html, id, name);
    v.parse().unwrap_or_else(|_| panic!("#{id} {name} = {v:?}"))
}

/// `a` and `b` agree to `tol`, relative to their size (at least 1).
fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * a.abs().max(b.abs()).max(1.0)
}

/// `env.agents=[...]` for `--set`: each agent's name and cost.
fn agents_set(agents: &[(String, f64)]) -> String {
    let list: Vec<String> = agents.iter().map(|(a, c)| format!("{{name={a:?}, cost={c:?}}}")).collect();
    format!("env.agents=[{}]", list.join(", "))
}

/// Routes `body` (`/v1/route` with `texts`): each decision's id and agent.
async fn route(srv: &common::Running, body: Value) -> Vec<(String, String)> {
    let (s, v) = srv.post("/v1/route", &body.to_string()).await;
    assert_eq!(s, 200, "{v}");
    v["decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .map(|d| {
            (
                d["decision_id"].as_str().expect("id").to_string(),
                d["agent"].as_str().expect("agent").to_string(),
            )
        })
        .collect()
}

/// Waits until the server serves `version`.
async fn wait_for_version(srv: &common::Running, version: i64) {
    let want = format!("mappo_policy_version {version}");
    let t = std::time::Instant::now();
    while srv.get("/metrics").await.1.lines().all(|l| l != want) {
        assert!(t.elapsed() < std::time::Duration::from_secs(10), "version {version} never served");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A cost-aware router's page. Version 1 serves four agents with costs at λ = 0.2, half its
/// decisions rewarded; version 2 renames the agent version 1 chose most and is served at λ 0.1
/// and 0.5, every decision rewarded, from the next 10-second bucket on. The rewards are made as
/// the project asks of a cost-aware router, `quality − λ·cost / max cost`, from known qualities.
/// The page's cost per request — over the range and per bucket — is the log's per-agent counts
/// (`stats()`, and each decision's time and agent) priced with version 2's config; the renamed
/// agent's decisions are named as of unknown cost and left out; the implied quality gives back
/// the qualities the rewards were made from. The same numbers are in Chromium's DOM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cost_panel_prices_the_log_with_the_served_costs() {
    let v1: Vec<(String, f64)> = [("code", 1.0), ("math", 2.5), ("writing", 0.5), ("support", 4.0)]
        .map(|(a, c)| (a.to_string(), c))
        .into();
    let srv = start(config(&[&agents_set(&v1), "serve.cost_weight=0.2"]), |_| {}).await;
    let log = DecisionLog::open(&srv.db).await.expect("open the same log");
    let topics =
        ["fix this python stack trace", "solve 3x + 7 = 22", "write a short poem", "refund my order"];
    let text = |r: usize, i: usize| format!("{} (request {r}, item {i})", topics[(r + i) % topics.len()]);
    // Decision id → the quality its reward was made from.
    let mut quality: BTreeMap<String, f64> = BTreeMap::new();
    let mut k = 0usize;
    let mut reward =
        async |srv: &common::Running, id: &str, agent: &str, lambda: f64, costs: &[(String, f64)]| {
            let q = if k.is_multiple_of(3) { 0.0 } else { 1.0 };
            k += 1;
            let cost = costs.iter().find(|(a, _)| a == agent).expect("a served agent").1;
            let max = costs.iter().map(|c| c.1).fold(0.0, f64::max);
            // λ as the service logs it (f32).
            let r = q - f64::from(lambda as f32) * cost / max;
            let (s, v) = srv.post("/v1/feedback", &json!({"decision_id": id, "reward": r}).to_string()).await;
            assert_eq!(s, 200, "{v}");
            q
        };

    // Version 1: 80 decisions at the default λ = 0.2, every other one rewarded.
    for r in 0..8 {
        let texts: Vec<String> = (0..10).map(|i| text(r, i)).collect();
        for (i, (id, agent)) in
            route(&srv, json!({"texts": texts, "greedy": r % 4 == 0})).await.into_iter().enumerate()
        {
            if i % 2 == 0 {
                let q = reward(&srv, &id, &agent, 0.2, &v1).await;
                quality.insert(id, q);
            }
        }
    }
    // Version 2 renames the agent chosen most (its cost stays): version 1's decisions of it
    // are of an agent the served policy does not have.
    let stats = log.stats().await.expect("stats");
    let most = stats.agents.iter().max_by_key(|a| a.decisions).expect("an agent").agent.clone();
    let gone_decisions = stats.agents.iter().find(|a| a.agent == most).expect("counted").decisions;
    let v2: Vec<(String, f64)> =
        v1.iter().map(|(a, c)| (if *a == most { format!("{a}-v2") } else { a.clone() }, *c)).collect();
    let cfg2 = config(&[&agents_set(&v2), "train.seed=7"]);
    let bytes = tokio::task::spawn_blocking(move || CandleLoader::new(None).fresh_checkpoint(&cfg2))
        .await
        .expect("join")
        .expect("a fresh checkpoint");
    let meta = PublishMeta { source: "test".into(), note: Some("renamed".into()), meta: Value::Null };
    assert_eq!(log.publish_policy(&bytes, &meta).await.expect("publish").version, 2);
    wait_for_version(&srv, 2).await;
    // From the next 10-second bucket on (each bucket, agent and kind then holds one version's
    // decisions: λ one value, or every decision rewarded).
    let into = 10_000_000 - Timestamp::now().0.rem_euclid(10_000_000);
    tokio::time::sleep(std::time::Duration::from_micros(into as u64 + 50_000)).await;
    // Version 2: 60 decisions at λ 0.1 and 0.5, every one rewarded.
    for r in 0..6 {
        let lambda = [0.1, 0.5][r % 2];
        let texts: Vec<String> = (0..10).map(|i| text(r + 8, i)).collect();
        for (id, agent) in route(&srv, json!({"texts": texts, "cost_weight": lambda})).await {
            let q = reward(&srv, &id, &agent, lambda, &v2).await;
            quality.insert(id, q);
        }
    }

    let path = "/ui?minutes=30&bucket=10";
    let (s, page) = srv.get(path).await;
    assert_eq!(s, 200, "{page}");
    if let Ok(file) = std::env::var("MAPPO_UI_COST_DUMP") {
        std::fs::write(&file, &page).expect("write the page");
    }
    let stats = log.stats().await.expect("stats");
    assert_eq!((stats.decisions, stats.rewards), (140, 100));

    // The whole range, from stats(): the per-agent counts priced with version 2's costs.
    let cost_of = |a: &str| v2.iter().find(|(n, _)| n == a).map(|c| c.1);
    let (mut requests, mut cost_sum, mut unknown) = (0i64, 0.0f64, BTreeMap::new());
    for a in &stats.agents {
        match cost_of(&a.agent) {
            Some(c) => {
                requests += a.decisions;
                cost_sum += a.decisions as f64 * c;
            }
            None => {
                unknown.insert(a.agent.clone(), a.decisions);
            }
        }
    }
    assert_eq!(unknown, BTreeMap::from([(most.clone(), gone_decisions)]));
    assert_eq!(attr(&page, "cost", "data-agent-costs"), "known");
    assert_eq!(int(&page, "cost", "data-costs-version"), 2);
    assert_eq!(int(&page, "cost", "data-requests"), requests);
    assert_eq!(int(&page, "cost", "data-unpriced"), gone_decisions);
    let per_request = float(&page, "cost", "data-cost-per-request");
    assert!(
        close(per_request, cost_sum / requests as f64, 1e-12),
        "{per_request} vs {}",
        cost_sum / requests as f64
    );
    assert_eq!(attr(&page, "cost-unknown", "data-agents"), most);
    assert_eq!(int(&page, "cost-unknown", "data-unpriced"), gone_decisions);
    assert!(page.contains("Their cost is unknown"));
    assert_eq!(int(&page, "cost", "data-cost-weighted"), 140, "every decision logged λ");

    // Per bucket and the quality, from each logged decision.
    let events = log
        .joined_events(&mappo_log::EventQuery { limit: 10_000, ..Default::default() })
        .await
        .expect("events");
    assert_eq!(events.len(), 140);
    let max = v2.iter().map(|c| c.1).fold(0.0, f64::max);
    #[derive(Default)]
    struct Bucket {
        requests: i64,
        cost: f64,
        unpriced: i64,
        rewarded: i64,
        quality_log: f64,
        quality_made: f64,
    }
    let mut buckets: BTreeMap<i64, Bucket> = BTreeMap::new();
    for e in &events {
        let d = &e.decision;
        let b = buckets.entry(d.time.0.div_euclid(10_000_000) * 10_000_000).or_default();
        let Some(c) = cost_of(&d.agent) else {
            b.unpriced += 1;
            continue;
        };
        b.requests += 1;
        b.cost += c;
        if let Some(r) = &e.reward {
            let lambda = f64::from(d.cost_weight.expect("λ logged"));
            b.rewarded += 1;
            b.quality_log += r.reward + lambda * c / max;
            b.quality_made += quality[&d.id.to_string()];
        }
    }
    let rows = rows_with(&page, "cost", "data-bucket-us");
    assert_eq!(rows.len(), buckets.len(), "one row per bucket with decisions: {rows:?}");
    assert!(buckets.len() >= 2, "the two versions are in different buckets");
    for row in &rows {
        let at: i64 = row["data-bucket-us"].parse().expect("bucket");
        let b = &buckets[&at];
        let get = |k: &str| -> Option<f64> { row[k].parse().ok() };
        assert_eq!(row["data-requests"], b.requests.to_string(), "{row:?}");
        assert_eq!(row["data-unpriced"], b.unpriced.to_string(), "{row:?}");
        match get("data-cost-per-request") {
            Some(v) => assert!(close(v, b.cost / b.requests as f64, 1e-12), "{row:?}"),
            None => assert_eq!(b.requests, 0, "{row:?}"),
        }
        match get("data-quality-mean") {
            Some(v) => {
                assert!(close(v, b.quality_log / b.rewarded as f64, 1e-12), "{row:?}");
                assert!(close(v, b.quality_made / b.rewarded as f64, 1e-6), "{row:?}");
            }
            None => assert_eq!(b.rewarded, 0, "{row:?}"),
        }
    }
    let rewarded: i64 = buckets.values().map(|b| b.rewarded).sum();
    let made: f64 = buckets.values().map(|b| b.quality_made).sum::<f64>() / rewarded as f64;
    assert_eq!(attr(&page, "cost", "data-reward-net-of-cost"), "true");
    assert_eq!(int(&page, "cost", "data-quality-n"), rewarded);
    assert_eq!(int(&page, "cost", "data-quality-estimated"), 0, "λ known for every rewarded decision");
    assert_eq!(int(&page, "cost", "data-quality-no-lambda"), 0);
    let q = float(&page, "cost", "data-quality-mean");
    assert!(close(q, made, 1e-6), "the implied quality {q} is the qualities' mean {made}");
    // The agents' table: version 2's agents with their costs, then the unknown one.
    let agents = rows_with(&page, "cost", "data-cost-agent");
    let listed: Vec<(String, String)> =
        agents.iter().map(|a| (a["data-cost-agent"].clone(), a["data-cost"].clone())).collect();
    let mut want: Vec<(String, String)> = v2.iter().map(|(a, c)| (a.clone(), c.to_string())).collect();
    want.push((most.clone(), String::new()));
    assert_eq!(listed, want);

    // Charts: decisions, reward, versions, cost per request, quality, λ; all well-formed.
    assert_eq!(check_svgs(&page), 6);
    check_xml(&page[page.find("<html").expect("html")..]);
    assert!(!page.contains("chart-error"), "every chart drew");

    // The same numbers in the DOM Chromium renders.
    if let Some(chromium) = chromium() {
        let profile = tempfile::tempdir().expect("tmp");
        let url = format!("{}{path}", srv.url);
        let out = run_chromium(&chromium, profile.path(), &url, vec!["--dump-dom".into()]).await;
        let dom = String::from_utf8_lossy(&out.stdout).into_owned();
        let console = String::from_utf8_lossy(&out.stderr).lines().filter(|l| l.contains("CONSOLE")).count();
        assert!(out.status.success() && dom.contains("<html") && console == 0, "chromium");
        for name in ["data-cost-per-request", "data-requests", "data-unpriced", "data-quality-mean"] {
            assert_eq!(attr(&dom, "cost", name), attr(&page, "cost", name), "{name} in the DOM");
        }
        assert_eq!(rows_with(&dom, "cost", "data-bucket-us"), rows);
        assert_eq!(attr(&dom, "cost-unknown", "data-agents"), most);
        assert_eq!(dom.matches("<svg").count(), 6);
        // MAPPO_UI_COST_SCREENSHOT=FILE: the page's header and cost panel, the last minute in
        // 2-second buckets (docs/images/dashboard-cost.png is made so).
        if let Ok(shot) = std::env::var("MAPPO_UI_COST_SCREENSHOT") {
            let (s, full) = srv.get("/ui?minutes=1&bucket=2").await;
            assert_eq!(s, 200);
            let main = full.find("<main>").expect("main") + "<main>".len();
            let cost = full.find("<section id=\"cost\"").expect("cost");
            let end = cost + full[cost..].find("</section>").expect("end") + "</section>".len();
            let file = profile.path().join("cost.html");
            std::fs::write(&file, format!("{}{}</main></body></html>", &full[..main], &full[cost..end]))
                .expect("write");
            let extra = vec![format!("--screenshot={shot}"), "--window-size=1280,1400".into()];
            let url = format!("file://{}", file.display());
            assert!(run_chromium(&chromium, profile.path(), &url, extra).await.status.success());
        }
        eprintln!("cost panel in Chromium: the DOM's numbers match");
    }
    srv.stop().await.expect("stop");
}

/// A cascade's cost per request: its first steps are the requests, each escalation adds the
/// strong agent's cost, and `accept`/`escalate` are not agents of unknown cost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cascade_is_priced_per_request() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let corpus = root.join("data/cascade.jsonl").display().to_string();
    let cfg = config(&[
        "env.kind=\"cascade\"",
        &format!("env.corpus={corpus:?}"),
        "env.reward=\"outcome\"",
        "env.agents=[{name=\"small\", cost=1.0}, {name=\"large\", cost=10.0}]",
        "env.cost_weight_range=[0.0, 0.6]",
        "serve.min_prob=0.2",
    ]);
    let srv = start(cfg, |_| {}).await;
    let log = DecisionLog::open(&srv.db).await.expect("open the same log");
    let mut second_steps = 0;
    for i in 0..24 {
        let (text, id) = (format!("Summarise chapter {i} of the report."), format!("cascade-{i}"));
        let (s, first) = srv.post("/v1/route", &json!({"text": text, "episode_id": id}).to_string()).await;
        assert_eq!(s, 200, "{first}");
        let (s, v) = srv
            .post("/v1/feedback", &json!({"decision_id": first["decision_id"], "reward": 0.5}).to_string())
            .await;
        assert_eq!(s, 200, "{v}");
        if first["agent"] != "large" {
            let next = json!({"text": text, "episode_id": id, "previous_response": "A short answer."});
            let (s, v) = srv.post("/v1/route", &next.to_string()).await;
            assert_eq!(s, 200, "{v}");
            second_steps += 1;
        }
    }
    assert!(second_steps > 0);
    let (s, page) = srv.get("/ui?minutes=30&bucket=10").await;
    assert_eq!(s, 200, "{page}");
    let stats = log.stats().await.expect("stats");
    let n = |a: &str| stats.agents.iter().find(|s| s.agent == a).map_or(0, |s| s.decisions);
    assert_eq!(n("accept") + n("escalate"), second_steps, "the second step logs accept or escalate");
    assert_eq!(int(&page, "cost", "data-requests"), n("small") + n("large"));
    assert_eq!(int(&page, "cost", "data-requests"), 24);
    assert_eq!(int(&page, "cost", "data-escalations"), n("escalate"));
    assert_eq!(int(&page, "cost", "data-unpriced"), 0);
    assert!(!page.contains("id=\"cost-unknown\""));
    let want = (n("small") as f64 + 10.0 * (n("large") + n("escalate")) as f64) / 24.0;
    assert!(close(float(&page, "cost", "data-cost-per-request"), want, 1e-12));
    assert_eq!(attr(&page, "cost", "data-reward-net-of-cost"), "false");
    assert_eq!(attr(&page, "cost", "data-quality-mean"), "");
    assert_eq!(float(&page, "cost", "data-reward-mean"), 0.5);
    assert!(page.contains("no quality is"));
    for step in ["accept", "escalate"] {
        assert_eq!(page.contains(&format!("data-cascade-step=\"{step}\"")), n(step) > 0, "{step}");
    }
    assert!(!page.contains("chart-error"));
    srv.stop().await.expect("stop");
}
