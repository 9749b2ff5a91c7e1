//! Every command in README.md's `sh` blocks runs as written (issue 21).
//!
//! [`COMMANDS`] lists each command of the README, in order, with how this test runs it; a
//! command that is not run says why. `readme_and_test_agree` fails when the README gains, loses
//! or changes a command without this list following. `the_readme_commands_run_as_written` then
//! runs them in order, as a user who just cloned the repository would, in a scratch directory
//! holding copies of `configs/` and `data/prompts.jsonl`, with `mappo` on `PATH` (the binary
//! cargo built for this test). The substitutions, all of them:
//!
//! - `cargo run --release -p mappo-cli --` is that same `mappo`;
//! - `<ckpt>` is the checkpoint the first `train` printed, `<decision_id>` the id `/v1/route`
//!   answered with;
//! - training runs are shortened with `--set train.total_updates=N`;
//! - `mappo serve` listens on a free port (`--addr 127.0.0.1:0`) and `127.0.0.1:8080` /
//!   `localhost:8080` in later commands are that address;
//! - `curl` requests are sent by this test's HTTP client (curl may not be installed);
//! - `data/routellm/mmlu_{train,val}.jsonl` (which `cargo xtask fetch-data routellm` downloads)
//!   are written from the repository's `data/outcomes.jsonl`, its agents `small` / `large`
//!   renamed to `mixtral-8x7b` / `gpt-4-1106`, with every other prompt that only the large
//!   model answers right left out (so that a 50% budget for the large model is within reach).
//!
//! Embeddings are cached in the scratch directory (`XDG_CACHE_HOME`); the model is the one
//! `cargo xtask fetch-model` installed (`cargo xtask test` does that first).

mod common;
use common::{http, json};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the test treats one README command.
#[derive(Debug, Clone, Copy)]
enum How {
    /// Run with `sh -c` in the scratch directory.
    Run,
    /// Run with these arguments appended (a shortened training run).
    RunWith(&'static str),
    /// Started in the background (a service or a `--follow` learner) with these arguments
    /// appended, and stopped with SIGTERM at the end, which must exit 0.
    Background(&'static str),
    /// A `curl` request, sent by the test's own HTTP client.
    Http,
    /// Not run, for this reason.
    NotRun(&'static str),
}

use How::*;

/// README.md's commands, in order, exactly as written there (continuation lines joined, comments
/// dropped), and how each is run.
const COMMANDS: &[(&str, How)] = &[
    ("cargo run --release -p mappo-cli -- train", RunWith("--set train.total_updates=50")),
    ("cargo xtask test", NotRun("it is the whole test suite, this test included")),
    ("cargo run --release -p mappo-cli -- eval --checkpoint <ckpt> --json", Run),
    (
        "cargo install --locked --path crates/mappo-cli",
        NotRun("a release build and install of the binary this test runs as `mappo` (CARGO_BIN_EXE_mappo)"),
    ),
    (
        "cargo xtask fetch-model",
        NotRun(
            "a download; `cargo xtask test` runs it before the tests, and the text commands below use its model",
        ),
    ),
    ("mappo train --config configs/prompts.toml --out runs/prompts", RunWith("--set train.total_updates=30")),
    ("mappo eval --checkpoint runs/prompts --corpus data/prompts.jsonl", Run),
    (
        "mappo route --checkpoint runs/prompts \"my parcel never arrived\" \"prove that sqrt(2) is irrational\"",
        Run,
    ),
    (
        "cargo xtask fetch-data routellm",
        NotRun(
            "a download; the test writes data/routellm/mmlu_{train,val}.jsonl from data/outcomes.jsonl instead",
        ),
    ),
    (
        "mappo train --config configs/routellm-mmlu.toml --out runs/mmlu",
        RunWith("--set train.total_updates=40"),
    ),
    (
        "mappo eval --checkpoint runs/mmlu --corpus data/routellm/mmlu_val.jsonl --baseline-train data/routellm/mmlu_train.jsonl --plot mmlu.png",
        Run,
    ),
    (
        "mappo calibrate --checkpoint runs/mmlu --corpus data/routellm/mmlu_train.jsonl --max-share gpt-4-1106=0.5",
        Run,
    ),
    ("mappo route --checkpoint runs/mmlu --cost-weight 0.1 \"What is 2+2?\"", Run),
    ("mappo serve --checkpoint runs/prompts --db sqlite:route.db", Background("--addr 127.0.0.1:0")),
    ("curl -s localhost:8080/v1/route -d '{\"text\": \"my parcel never arrived\"}'", Http),
    ("curl -s localhost:8080/v1/feedback -d '{\"decision_id\": \"<decision_id>\", \"reward\": 1}'", Http),
    ("mappo log stats --db sqlite:route.db", Run),
    ("mappo learn --db sqlite:route.db --follow --publish", Background("")),
    ("mappo simulate --url http://127.0.0.1:8080 --corpus data/prompts.jsonl --requests 1000", Run),
    ("mappo policy list --db sqlite:route.db", Run),
    ("mappo ope --checkpoint runs/prompts --db sqlite:route.db", Run),
    (
        "mappo train --config configs/pipeline.toml --out runs/pipeline",
        RunWith("--set train.total_updates=20"),
    ),
    ("mappo eval --checkpoint runs/pipeline", Run),
    (
        "mappo train --config configs/conversation-clinc150.toml --out runs/conversation",
        NotRun(
            "needs data/clinc150 (`cargo xtask fetch-data clinc150`); tests/text.rs trains and evaluates \
             conversations on data/prompts.jsonl",
        ),
    ),
    (
        "mappo eval --checkpoint runs/conversation --corpus data/clinc150/val.jsonl",
        NotRun("evaluates the run above, which is not run"),
    ),
    (
        "mappo train --config configs/cascade-gsm8k.toml --out runs/cascade",
        NotRun(
            "needs GSM8K with answers (`cargo xtask fetch-data routellm`); tests/llm_routing.rs trains and \
             evaluates a cascade on data/cascade.jsonl",
        ),
    ),
    (
        "cargo run --manifest-path examples/csv-bandit/Cargo.toml -- examples/csv-bandit/data.csv",
        NotRun(
            "tests/example.rs (package mappo-tests) builds this example workspace and runs this command, with \
             a temporary run directory as a second argument",
        ),
    ),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The end of a shell line's code: a `#` that starts a word outside quotes begins a comment.
fn strip_comment(line: &str) -> &str {
    let (mut single, mut double, mut prev_space) = (false, false, true);
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev_space => return &line[..i],
            _ => {}
        }
        prev_space = c.is_whitespace();
    }
    line
}

/// The commands of README.md's ```sh blocks: continuation lines joined, comments dropped.
fn readme_commands() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in text.lines() {
        let t = line.trim();
        if !in_sh {
            in_sh = t == "```sh";
            continue;
        }
        if t.starts_with("```") {
            assert!(pending.is_empty(), "a continued command ends its block: {pending}");
            in_sh = false;
            continue;
        }
        let code = strip_comment(line).trim();
        if let Some(head) = code.strip_suffix('\\') {
            pending.push_str(head.trim());
            pending.push(' ');
            continue;
        }
        pending.push_str(code);
        let cmd = std::mem::take(&mut pending).trim().to_string();
        if !cmd.is_empty() {
            out.push(cmd);
        }
    }
    out
}

#[test]
fn readme_and_test_agree() {
    let readme = readme_commands();
    let listed: Vec<&str> = COMMANDS.iter().map(|(c, _)| *c).collect();
    for c in &readme {
        assert!(
            listed.contains(&c.as_str()),
            "README.md has a command this test does not know: `{c}`. Add it to COMMANDS in \
             crates/mappo-cli/tests/readme.rs, with how it is run (or why it is not)."
        );
    }
    for c in &listed {
        assert!(readme.iter().any(|r| r == c), "COMMANDS lists `{c}`, which README.md no longer has");
    }
    assert_eq!(readme, listed, "README.md's commands and COMMANDS must be in the same order");
    for (c, how) in COMMANDS {
        if let NotRun(why) = how {
            assert!(why.len() > 20, "`{c}`: say why it is not run");
        }
    }
    // The example's command is run by tests/example.rs: it must still be.
    let example = std::fs::read_to_string(root().join("tests/example.rs")).expect("tests/example.rs");
    assert!(
        example.contains("examples/csv-bandit") && example.contains("data.csv"),
        "tests/example.rs runs the example"
    );
}

/// Splits a shell command into words (single and double quotes, no escapes or expansions).
fn words(cmd: &str) -> Vec<String> {
    let (mut out, mut cur, mut quote, mut any) = (Vec::new(), String::new(), None, false);
    for c in cmd.chars() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (Some(q), _) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            _ => {
                cur.push(c);
                any = true;
            }
        }
    }
    assert!(quote.is_none(), "unbalanced quotes: {cmd}");
    if any {
        out.push(cur);
    }
    out
}

/// What earlier commands produced, for the substitutions and checks of later ones.
#[derive(Default)]
struct Ctx {
    ckpt: Option<String>,
    decision_id: Option<String>,
    addr: Option<String>,
}

impl Ctx {
    fn substitute(&self, cmd: &str) -> String {
        let mut c = match cmd.strip_prefix("cargo run --release -p mappo-cli -- ") {
            Some(rest) => format!("mappo {rest}"),
            None => cmd.to_string(),
        };
        if c.contains("<ckpt>") {
            c = c.replace("<ckpt>", self.ckpt.as_deref().expect("<ckpt> before any train"));
        }
        if c.contains("<decision_id>") {
            c = c.replace(
                "<decision_id>",
                self.decision_id.as_deref().expect("a decision before <decision_id>"),
            );
        }
        if let Some(a) = &self.addr {
            c = c.replace("127.0.0.1:8080", a).replace("localhost:8080", a);
        }
        c
    }
}

/// The scratch "clone": copies of configs/ and the corpora, `mappo` on PATH.
struct Scratch {
    _tmp: tempfile::TempDir,
    work: PathBuf,
    path_var: String,
    cache: PathBuf,
    model_dir: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tmp");
        let work = tmp.path().join("mappo");
        let bin = tmp.path().join("bin");
        for d in [work.join("configs"), work.join("data/routellm"), bin.clone()] {
            std::fs::create_dir_all(&d).expect("mkdir");
        }
        for e in std::fs::read_dir(root().join("configs")).expect("configs/") {
            let p = e.expect("entry").path();
            std::fs::copy(&p, work.join("configs").join(p.file_name().expect("name")))
                .expect("copy a config");
        }
        std::fs::copy(root().join("data/prompts.jsonl"), work.join("data/prompts.jsonl"))
            .expect("copy prompts");
        write_routellm_fixture(&work.join("data/routellm"));
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_mappo"), bin.join("mappo")).expect("symlink mappo");
        let path_var = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        // The model as `mappo` would find it from here, before XDG_CACHE_HOME moves the cache.
        let model_dir = mappo_env::embed::default_model_dir();
        let cache = tmp.path().join("cache");
        Scratch { _tmp: tmp, work, path_var, cache, model_dir }
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.current_dir(&self.work)
            .env("PATH", &self.path_var)
            .env("XDG_CACHE_HOME", &self.cache)
            .env("MAPPO_MODEL_DIR", &self.model_dir)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG");
        c
    }

    fn sh(&self, cmd: &str) -> Output {
        self.command("sh").args(["-c", cmd]).stdin(Stdio::null()).output().expect("sh")
    }
}

/// `data/routellm/mmlu_{train,val}.jsonl` in the fetched files' format, from `data/outcomes.jsonl`.
fn write_routellm_fixture(dir: &Path) {
    let text = std::fs::read_to_string(root().join("data/outcomes.jsonl")).expect("data/outcomes.jsonl");
    let (mut train, mut val, mut hard) = (String::new(), String::new(), 0);
    for (i, line) in text.lines().enumerate() {
        let v = json(line);
        let o = &v["outcomes"];
        let (small, large) = (o["small"].as_f64().expect("small"), o["large"].as_f64().expect("large"));
        if small < large {
            hard += 1;
            if hard % 2 == 0 {
                continue;
            }
        }
        let row = serde_json::json!({
            "text": v["text"],
            "outcomes": {"mixtral-8x7b": small, "gpt-4-1106": large},
        });
        let out = if i % 5 == 0 { &mut val } else { &mut train };
        out.push_str(&row.to_string());
        out.push('\n');
    }
    std::fs::write(dir.join("mmlu_train.jsonl"), train).expect("write train");
    std::fs::write(dir.join("mmlu_val.jsonl"), val).expect("write val");
}

/// A command started in the background; its stderr is kept for the failure messages.
struct Background {
    cmd: String,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Background {
    fn log(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// SIGTERM, then the exit status must be 0.
    fn stop(mut self) {
        let ok = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill");
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            assert!(Instant::now() < deadline, "`{}` did not stop after SIGTERM:\n{}", self.cmd, self.log());
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(status.code(), Some(0), "`{}` after SIGTERM:\n{}", self.cmd, self.log());
    }
}

fn start(s: &Scratch, cmd: &str, ctx: &mut Ctx) -> Background {
    let mut child = s
        .command("sh")
        .args(["-c", &format!("exec {cmd}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    if cmd.starts_with("mappo serve") {
        // Wait until it listens; its address replaces 127.0.0.1:8080 from now on.
        let addr = loop {
            let Some(Ok(line)) = lines.next() else {
                panic!(
                    "`{cmd}` ended before listening:\n{}",
                    log.lock().map(|l| l.join("\n")).unwrap_or_default()
                )
            };
            let addr = line.split("listening on http://").nth(1).map(|a| a.trim().to_string());
            log.lock().expect("log").push(line);
            if let Some(a) = addr {
                break a;
            }
        };
        ctx.addr = Some(addr);
    }
    let keep = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Ok(mut l) = keep.lock() {
                l.push(line);
            }
        }
    });
    Background { cmd: cmd.to_string(), child, log }
}

/// A `curl -s URL -d BODY` command, sent by this test.
fn send(cmd: &str) -> (u16, String) {
    let w = words(cmd);
    assert_eq!(w.first().map(String::as_str), Some("curl"), "{cmd}");
    let url = w.iter().find(|a| a.contains("/v1/")).unwrap_or_else(|| panic!("no URL in `{cmd}`"));
    let url = url.strip_prefix("http://").unwrap_or(url);
    let (addr, path) = url.split_at(url.find('/').expect("a path"));
    let body = w.iter().position(|a| a == "-d").map(|i| w[i + 1].clone());
    let method = if body.is_some() { "POST" } else { "GET" };
    http(addr, method, path, body.as_deref().unwrap_or(""))
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// What each run command must have produced, beyond exiting 0.
fn check(readme_cmd: &str, s: &Scratch, out: &str, ctx: &mut Ctx) {
    let agents = ["code", "math", "writing", "support"];
    let w: Vec<String> = words(readme_cmd);
    let sub = w.iter().skip_while(|a| *a != "mappo" && *a != "--").nth(1).map(String::as_str).unwrap_or("");
    match sub {
        "train" => {
            let ckpt = out.lines().last().expect("train prints the checkpoint").trim().to_string();
            assert!(s.work.join(&ckpt).is_file(), "the last line of `train` is the checkpoint: {ckpt}");
            ctx.ckpt.get_or_insert(ckpt);
        }
        "eval" if readme_cmd.contains("--json") => {
            let v = json(out.trim());
            assert!(v["normalized_reward"].is_number() && v["n"].as_u64() > Some(0), "{v}");
        }
        "eval" if readme_cmd.contains("--plot") => {
            assert!(out.contains("APGR") && out.contains("ridge APGR"), "{out}");
            let png = std::fs::read(s.work.join("mmlu.png")).expect("the plot");
            assert!(png.starts_with(b"\x89PNG"), "a PNG");
        }
        "eval" if readme_cmd.contains("runs/pipeline") => {
            assert!(out.contains("normalized return") && out.contains("optimal return"), "{out}");
        }
        "eval" => assert!(out.contains("accuracy") && out.contains("confusion"), "{out}"),
        "route" => {
            // One tab-separated line per text: index, agent, every agent's probability, text.
            let routed: &[&str] =
                if readme_cmd.contains("runs/mmlu") { &["mixtral-8x7b", "gpt-4-1106"] } else { &agents };
            let texts = w.iter().filter(|a| a.contains(' ')).count();
            assert_eq!(out.lines().count(), texts, "{out}");
            for line in out.lines() {
                let f: Vec<&str> = line.split('\t').collect();
                assert!(f.len() == 4 && routed.contains(&f[1]), "{line}");
                assert_eq!(f[0].parse::<usize>().ok(), routed.iter().position(|a| *a == f[1]), "{line}");
            }
        }
        "calibrate" => {
            let w: f64 = out
                .lines()
                .find_map(|l| l.strip_prefix("cost_weight"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no cost_weight: {out}"));
            assert!((-0.1..=0.4).contains(&w), "within configs/routellm-mmlu.toml's range: {w}");
        }
        "log" => assert!(out.contains("decisions") && out.contains("rewards"), "{out}"),
        "simulate" => {
            let v = json(out.lines().last().unwrap_or_default());
            assert_eq!((v["requests"].as_u64(), v["errors"].as_u64()), (Some(1000), Some(0)), "{v}");
        }
        "policy" => assert!(out.lines().count() >= 2, "{out}"),
        "ope" => assert!(out.contains("DR") || out.contains("dr"), "{out}"),
        other => panic!("no check for `{other}` ({readme_cmd})"),
    }
}

/// Waits until the learner's promotion gate has decided at least once (published or refused).
fn wait_for_a_gate_decision(s: &Scratch, learner: &Background) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let o = s.sh("mappo policy list --db sqlite:route.db --json");
        let (out, err) = text(&o);
        assert!(o.status.success(), "{err}");
        let list = json(out.trim());
        let decided = list
            .as_array()
            .expect("versions")
            .iter()
            .any(|v| !v["gate"].is_null() || v["refused"].as_array().is_some_and(|r| !r.is_empty()));
        if decided {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`mappo learn --follow --publish` made no gate decision in 3 minutes:\n{}",
            learner.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn the_readme_commands_run_as_written() {
    let s = Scratch::new();
    let mut ctx = Ctx::default();
    let mut background: Vec<Background> = Vec::new();
    for (readme_cmd, how) in COMMANDS {
        let cmd = ctx.substitute(readme_cmd);
        match how {
            NotRun(_) => continue,
            Run | RunWith(_) => {
                let cmd = match how {
                    RunWith(extra) => format!("{cmd} {extra}"),
                    _ => cmd,
                };
                let t0 = Instant::now();
                let o = s.sh(&cmd);
                let (out, err) = text(&o);
                assert!(o.status.success(), "`{cmd}` failed ({:?}):\n{out}\n{err}", o.status.code());
                eprintln!("ran `{cmd}` in {:.1} s", t0.elapsed().as_secs_f64());
                check(readme_cmd, &s, &out, &mut ctx);
            }
            Background(extra) => {
                let cmd = if extra.is_empty() { cmd } else { format!("{cmd} {extra}") };
                background.push(start(&s, &cmd, &mut ctx));
            }
            Http => {
                let (status, body) = send(&cmd);
                assert_eq!(status, 200, "`{cmd}`: {body}");
                let v = json(&body);
                if readme_cmd.contains("/v1/route") {
                    let agent = v["agent"].as_str().expect("agent");
                    assert!(["code", "math", "writing", "support"].contains(&agent), "{v}");
                    ctx.decision_id = Some(v["decision_id"].as_str().expect("decision_id").to_string());
                } else {
                    assert_eq!(v["accepted"], serde_json::json!(true), "{v}");
                }
            }
        }
    }
    // The learner learned from the simulated feedback and put a candidate through the gate.
    let learner = background.iter().find(|b| b.cmd.starts_with("mappo learn")).expect("the learner");
    wait_for_a_gate_decision(&s, learner);
    // Stop the learner first, then the service: both exit 0.
    while let Some(b) = background.pop() {
        b.stop();
    }
}

#[test]
fn comments_and_quotes_are_read_like_a_shell() {
    assert_eq!(strip_comment("mappo x   # a comment"), "mappo x   ");
    assert_eq!(strip_comment("echo '# not a comment' # one"), "echo '# not a comment' ");
    assert_eq!(strip_comment("a#b"), "a#b");
    assert_eq!(words("curl -s x -d '{\"a\": 1}'"), ["curl", "-s", "x", "-d", "{\"a\": 1}"]);
    assert_eq!(words("route \"two words\" ''"), ["route", "two words", ""]);
}
