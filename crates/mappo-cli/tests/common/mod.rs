//! Helpers shared by the CLI tests: run the binary, read its output.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// Runs `mappo` with `args` and waits for it.
pub fn mappo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mappo")).args(args).output().expect("run mappo")
}

/// Its stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Its stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The last line of stdout as a path (`train` prints the final checkpoint there).
pub fn last_line(o: &Output) -> PathBuf {
    PathBuf::from(stdout(o).lines().last().expect("stdout has a line").trim())
}

/// `mappo train --out DIR --set ...` (stderr gets the info log: it is not a terminal).
pub fn train(dir: &Path, sets: &[&str]) -> Output {
    let mut args = vec!["train", "--out", dir.to_str().expect("utf-8 path")];
    for s in sets {
        args.push("--set");
        args.push(s);
    }
    mappo(&args)
}

/// Trains the small cascade of data/cascade.jsonl (`small` at cost 1, `large` at 10, λ drawn
/// from [0, 0.6]) into `dir/run`, returning its final checkpoint: it learns to accept `small`'s
/// answer when it sounds sure and to escalate when it does not.
pub fn train_cascade(dir: &Path, corpus: &Path) -> PathBuf {
    let sets = cascade_sets(dir, corpus);
    let refs: Vec<&str> = sets.iter().map(String::as_str).collect();
    let o = train(&dir.join("run"), &refs);
    assert!(o.status.success(), "{}", stderr(&o));
    last_line(&o)
}

/// The `--set`s of [`train_cascade`] (its embedding cache in `dir/cache`).
pub fn cascade_sets(dir: &Path, corpus: &Path) -> Vec<String> {
    vec![
        "env.kind=cascade".to_string(),
        format!("env.corpus={:?}", corpus.to_str().expect("utf-8")),
        "env.reward=outcome".into(),
        "env.reward_noise=0".into(),
        "env.agents=[{name=\"small\", cost=1.0}, {name=\"large\", cost=10.0}]".into(),
        "env.cost_weight_range=[0.0, 0.6]".into(),
        format!("env.cache_dir={:?}", dir.join("cache").to_str().expect("utf-8")),
        "model.projection_dim=32".into(),
        "model.critic=\"centralized\"".into(),
        "ppo.gamma=1.0".into(),
        "ppo.lr_actor=0.003".into(),
        "train.rollout_len=2".into(),
        "train.total_updates=150".into(),
        "train.batch_size=64".into(),
        "train.save_interval=150".into(),
        "train.eval_interval=0".into(),
    ]
}

/// A fresh PostgreSQL database for one test, dropped when this goes out of scope. Its server
/// is the one `MAPPO_TEST_DATABASE_URL` names (`cargo xtask test` starts a throwaway cluster and
/// sets it).
pub struct PgDb {
    /// The URL of the fresh database.
    pub url: String,
    admin: String,
    name: String,
}

impl PgDb {
    /// `None` after saying plainly that the test is skipped when the variable is unset; with
    /// `CI=true` that is a failure instead.
    pub fn create(test: &str) -> Option<Self> {
        const VAR: &str = "MAPPO_TEST_DATABASE_URL";
        let admin = match std::env::var(VAR) {
            Ok(u) if !u.is_empty() => u,
            _ => {
                let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
                assert!(
                    !ci,
                    "{VAR} is not set and CI=true: the PostgreSQL tests must run (cargo xtask test)"
                );
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED {test} (PostgreSQL): {VAR} is not set; `cargo xtask test` starts a throwaway \
                     cluster and sets it (DEVELOPERS.md)"
                );
                return None;
            }
        };
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "mappo_cli_{}_{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        pg_exec(&admin, &format!("DROP DATABASE IF EXISTS {name}"));
        pg_exec(&admin, &format!("CREATE DATABASE {name}"));
        // Same server and credentials, another database: replace the path of the URL.
        let (base, query) = admin.split_once('?').map_or((admin.as_str(), None), |(b, q)| (b, Some(q)));
        let slash = base.rfind('/').expect("a postgres URL with a database path");
        let mut url = format!("{}/{name}", &base[..slash]);
        if let Some(q) = query {
            url = format!("{url}?{q}");
        }
        Some(PgDb { url, admin, name })
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        pg_exec(&self.admin, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

fn pg_exec(url: &str, sql: &str) {
    use sqlx::Connection;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut c = sqlx::PgConnection::connect(url).await.expect("connect to the test PostgreSQL");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    });
}

/// Starts `mappo serve --db DB --addr 127.0.0.1:0 ARGS...`; returns once it listens.
pub fn start_with(db: &str, args: &[&str]) -> (Child, String) {
    start_with_env(db, args, &[])
}

/// [`start_with`] with extra environment variables for the server.
pub fn start_with_env(db: &str, args: &[&str], envs: &[(&str, &str)]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mappo"))
        .args(["serve", "--db", db, "--addr", "127.0.0.1:0"])
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mappo serve");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    let addr = loop {
        let line = match lines.next() {
            Some(Ok(l)) => l,
            _ => panic!("serve ended before listening:\n{}", seen.join("\n")),
        };
        if let Some(a) = line.split("listening on http://").nth(1) {
            break a.trim().to_string();
        }
        seen.push(line);
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

/// One HTTP/1.1 request; returns the status and the body.
pub fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let (status, _, body) = http_with(addr, method, path, &[], body);
    (status, body)
}

/// One HTTP/1.1 request with extra headers; returns the status, the response headers (names in
/// lower case) and the body (not de-chunked: for answers with a Content-Length).
pub fn http_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, BTreeMap<String, String>, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         {extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let status = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status line");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response.as_str(), ""));
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// A body parsed as JSON (the body in the panic when it is not).
pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// `mappo log export --db DB`, one JSON value per line.
pub fn export(db: &str) -> Vec<serde_json::Value> {
    let o = Command::new(env!("CARGO_BIN_EXE_mappo"))
        .args(["log", "export", "--db", db])
        .output()
        .expect("export");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).lines().map(json).collect()
}

/// `mappo simulate --url http://ADDR --corpus data/prompts.jsonl --requests N --concurrency 4
/// --seed S`: its JSON summary (the last stdout line).
pub fn simulate(addr: &str, requests: usize, seed: u64) -> serde_json::Value {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/prompts.jsonl");
    let (requests, seed) = (requests.to_string(), seed.to_string());
    let o = mappo(&[
        "simulate",
        "--url",
        &format!("http://{addr}"),
        "--corpus",
        corpus.to_str().expect("utf-8 path"),
        "--requests",
        &requests,
        "--concurrency",
        "4",
        "--seed",
        &seed,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    serde_json::from_str(out.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// A Python venv with `package==version` installed, kept under the target directory across runs
/// (`<package>-venv-<version>`); returns its directory. Python (with the venv module) and the
/// package registry are required: their absence fails the test with the reason. The tests of one
/// binary run side by side: call it once per binary (behind a `OnceLock`), or two tests race on
/// one venv.
pub fn python_venv(package: &str, version: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{package}-venv-{version}"));
    let ready = dir.join(".mappo-ready");
    if ready.is_file() && dir.join("bin/python").is_file() {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let o =
        Command::new("python3").args(["-m", "venv"]).arg(&dir).output().unwrap_or_else(|e| {
            panic!("this test needs python3 (with the venv module) to run {package}: {e}")
        });
    assert!(
        o.status.success(),
        "`python3 -m venv {}` failed (install python3-venv): {}",
        dir.display(),
        stderr(&o)
    );
    let o = Command::new(dir.join("bin/python"))
        .args(["-m", "pip", "install", "--quiet", &format!("{package}=={version}")])
        .output()
        .expect("run pip");
    assert!(
        o.status.success(),
        "`pip install {package}=={version}` failed (the test needs the Python package registry): {}{}",
        stdout(&o),
        stderr(&o)
    );
    std::fs::write(&ready, version).expect("mark the venv ready");
    dir
}

/// Reads one HTTP/1.1 request from `reader` (what a fake server gets): the request line, the
/// headers (names in lower case) and the body (by its `Content-Length`).
pub fn read_request(
    reader: &mut impl BufRead,
) -> std::io::Result<(String, BTreeMap<String, String>, Vec<u8>)> {
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let Some((k, v)) = line.trim_end().split_once(':') else { break };
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let length = headers.get("content-length").and_then(|n| n.parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    Ok((request_line.trim_end().to_string(), headers, body))
}
