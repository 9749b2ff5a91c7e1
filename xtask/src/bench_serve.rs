//! `cargo xtask bench-serve`: routing throughput and latency of `mappo serve`, side by side in
//! one run with the Python service a user would write instead (`xtask/bench/ref_router_server.py`:
//! FastAPI + uvicorn, sentence-transformers, the same MLP from the checkpoint's safetensors,
//! SQLite inserts), both loaded by the same client (`mappo_client::run_levels`, in this process):
//! the corpus's texts sent one per request at concurrency 32 (throughput) and 4 (p50/p99 latency).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::workspace_root;

/// The Python packages of the reference server, pinned (the versions of docs/results/speed.md)
/// so that the figure means the same thing next time.
const PY_PACKAGES: &[&str] = &[
    "torch==2.15.0",
    "sentence-transformers==6.2.0",
    "fastapi==0.165.0",
    "uvicorn==0.54.0",
    "safetensors==0.8.0",
];

#[derive(clap::Args)]
pub struct Args {
    /// JSON-lines corpus whose `text` fields are sent [default: data/clinc150/val.jsonl].
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Texts taken from the corpus (its first N).
    #[arg(long, default_value_t = 3000)]
    texts: usize,
    /// Concurrencies to load each server with (the first for throughput, the second for latency).
    #[arg(long, value_delimiter = ',', default_value = "32,4")]
    concurrency: Vec<usize>,
    /// Python interpreter with the reference server's packages [default: a venv made under
    /// target/bench-serve/venv with pip].
    #[arg(long)]
    python: Option<PathBuf>,
    /// Measure mappo serve only.
    #[arg(long)]
    no_python: bool,
    #[command(flatten)]
    serve: ServeArgs,
    /// Print one JSON object at the end.
    #[arg(long)]
    json: bool,
}

/// How `mappo serve` is started (`cargo xtask soak` shares them).
#[derive(clap::Args)]
pub(crate) struct ServeArgs {
    /// Checkpoint to serve [default: a short `mappo train` of configs/clinc150.toml if
    /// data/clinc150 exists, else of configs/prompts.toml, written under target/<subcommand>].
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// The embedding model directory [default: as `mappo` finds it; `cargo xtask fetch-model`].
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Extra `--set KEY=VALUE` for `mappo serve` (repeatable).
    #[arg(long = "set")]
    pub(crate) set: Vec<String>,
}

/// What starting `mappo serve` needs, ready.
pub(crate) struct Ready {
    /// The release binary.
    pub(crate) mappo: PathBuf,
    pub(crate) model_dir: PathBuf,
    pub(crate) checkpoint: PathBuf,
}

impl ServeArgs {
    /// Builds `mappo`, finds the model (`--model-dir`, else where `mappo` finds it) and the
    /// checkpoint (`--checkpoint`, else a short training run under `work`).
    pub(crate) fn ready(&self, root: &Path, work: &Path) -> Result<Ready> {
        let mappo = build_mappo(root)?;
        let model_dir = self.model_dir.clone().unwrap_or_else(mappo_embed::default_model_dir);
        if !model_dir.join("model.safetensors").is_file() {
            bail!(
                "no model in {}: run `cargo xtask fetch-model` first (or pass --model-dir)",
                model_dir.display()
            );
        }
        let checkpoint = match &self.checkpoint {
            Some(c) => c.clone(),
            None => short_training(root, &mappo, work)?,
        };
        eprintln!("checkpoint {}", checkpoint.display());
        Ok(Ready { mappo, model_dir, checkpoint })
    }

    /// `mappo serve --quiet` of the checkpoint on 127.0.0.1:`port`, logging to `db` (a `--db`
    /// URL), with the `--set`s.
    pub(crate) fn command(&self, r: &Ready, db: &str, port: u16) -> Command {
        let mut cmd = Command::new(&r.mappo);
        cmd.args(["serve", "--quiet", "--checkpoint"]).arg(&r.checkpoint).args(["--db", db]);
        cmd.args(["--addr", &format!("127.0.0.1:{port}")]).env(mappo_embed::MODEL_DIR_ENV, &r.model_dir);
        for s in &self.set {
            cmd.args(["--set", s]);
        }
        cmd
    }
}

/// One server under one concurrency.
#[derive(Debug, Clone, serde::Serialize)]
struct Point {
    concurrency: usize,
    requests: usize,
    failed: usize,
    texts_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

pub fn run(a: Args) -> Result<()> {
    let root = workspace_root();
    let (work, corpus) = work_and_corpus(&root, "bench-serve", a.corpus.as_deref(), "val.jsonl")?;
    let texts = take_texts(&corpus, a.texts)?;
    let n = texts.len();
    eprintln!("bench-serve: {n} texts from {}", corpus.display());

    let ready = a.serve.ready(&root, &work)?;
    let (model_dir, checkpoint) = (&ready.model_dir, &ready.checkpoint);

    // mappo serve
    let db = work.join("mappo.db");
    remove_db(&db);
    let port = free_port()?;
    let cmd = a.serve.command(&ready, &format!("sqlite:{}", db.display()), port);
    let server = Server::start(cmd, port, "mappo serve")?;
    let mappo_points = load(&texts, port, &a.concurrency);
    drop(server);
    let mappo_points = mappo_points?;
    print_points("mappo serve", &mappo_points);

    // The Python reference server
    let python_points = if a.no_python {
        None
    } else {
        let py = match &a.python {
            Some(p) => p.clone(),
            None => python_venv(&work)?,
        };
        let script = root.join("xtask/bench/ref_router_server.py");
        let db = work.join("python.db");
        remove_db(&db);
        let port = free_port()?;
        let mut cmd = Command::new(&py);
        cmd.arg(&script).arg(model_dir).arg(checkpoint).arg(&db).arg(port.to_string());
        let server = Server::start(cmd, port, "the Python reference server")?;
        let points = load(&texts, port, &a.concurrency);
        drop(server);
        let points = points?;
        print_points("Python (FastAPI + sentence-transformers)", &points);
        Some(points)
    };

    let mut ratios = serde_json::Map::new();
    if let Some(py) = &python_points {
        if let (Some(m), Some(p)) = (mappo_points.first(), py.first()) {
            let r = m.texts_per_s / p.texts_per_s;
            eprintln!("throughput at concurrency {}: mappo / Python = {r:.2}x", m.concurrency);
            ratios.insert("throughput".into(), r.into());
        }
        if let (Some(m), Some(p)) = (mappo_points.get(1), py.get(1)) {
            let r = m.p99_ms / p.p99_ms;
            eprintln!("p99 at concurrency {}: mappo / Python = {r:.2}", m.concurrency);
            ratios.insert("p99".into(), r.into());
        }
    }
    let report = serde_json::json!({
        "texts": n,
        "corpus": corpus.display().to_string(),
        "checkpoint": checkpoint.display().to_string(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "mappo": mappo_points,
        "python": python_points,
        "ratios": ratios,
    });
    std::fs::write(work.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    if a.json {
        println!("{report}");
    }
    Ok(())
}

/// The working directory `target/<name>` (made) and the corpus: `given`, else
/// `data/clinc150/<clinc150_file>`; an error when it is not there.
pub(crate) fn work_and_corpus(
    root: &Path,
    name: &str,
    given: Option<&Path>,
    clinc150_file: &str,
) -> Result<(PathBuf, PathBuf)> {
    let work = root.join("target").join(name);
    std::fs::create_dir_all(&work)?;
    let corpus = given.map_or_else(|| root.join("data/clinc150").join(clinc150_file), Path::to_path_buf);
    if !corpus.is_file() {
        bail!(
            "{} not found: run `cargo xtask fetch-data clinc150` first (or pass --corpus FILE)",
            corpus.display()
        );
    }
    Ok((work, corpus))
}

/// The release binary `mappo`, built (`cargo build --release -p mappo-cli`).
fn build_mappo(root: &Path) -> Result<PathBuf> {
    eprintln!("building the release binary (mappo)");
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args(["build", "--release", "-p", "mappo-cli"])
        .status()?;
    if !st.success() {
        bail!("cargo build failed");
    }
    Ok(root.join("target/release/mappo"))
}

/// The first `n` texts of `corpus` (JSON lines with a `text`).
fn take_texts(corpus: &Path, n: usize) -> Result<Vec<String>> {
    Ok(take_rows(corpus, n)?.into_iter().map(|(text, _)| text).collect())
}

/// The first `n` lines of `corpus` (JSON lines with a `text`), each with its `label` if any.
pub(crate) fn take_rows(corpus: &Path, n: usize) -> Result<Vec<(String, Option<String>)>> {
    let f = std::fs::File::open(corpus).with_context(|| format!("cannot open {}", corpus.display()))?;
    let mut rows = Vec::new();
    for line in BufReader::new(f).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("{}: not JSON", corpus.display()))?;
        let t = v["text"].as_str().with_context(|| format!("{}: a line without text", corpus.display()))?;
        rows.push((t.to_string(), v["label"].as_str().map(str::to_string)));
        if rows.len() == n {
            break;
        }
    }
    if rows.is_empty() {
        bail!("{} has no texts", corpus.display());
    }
    Ok(rows)
}

/// A checkpoint to route with: a short training run (the routing cost does not depend on how
/// well the policy is trained, only on its shape).
fn short_training(root: &Path, mappo: &Path, work: &Path) -> Result<PathBuf> {
    let clinc = root.join("data/clinc150/train.jsonl").is_file();
    let cfg = root.join(if clinc { "configs/clinc150.toml" } else { "configs/prompts.toml" });
    let out = work.join(if clinc { "clinc150-run" } else { "prompts-run" });
    let ckpt = out.join("checkpoints/update-0000002.safetensors");
    if ckpt.is_file() {
        return Ok(ckpt);
    }
    eprintln!("a short training run of {} (the corpus is embedded once)", cfg.display());
    let st = Command::new(mappo)
        .stdout(Stdio::null())
        .args(["train", "--quiet", "--force", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&out)
        .args([
            "--set",
            "train.total_updates=2",
            "--set",
            "train.save_interval=2",
            "--set",
            "train.eval_interval=0",
        ])
        .status()?;
    if !st.success() || !ckpt.is_file() {
        bail!("mappo train for the benchmark's checkpoint failed");
    }
    Ok(ckpt)
}

/// A venv with the reference server's packages (made once, under `work`).
fn python_venv(work: &Path) -> Result<PathBuf> {
    let venv = work.join("venv");
    let py = venv.join("bin/python");
    let ok = |py: &Path| {
        Command::new(py)
            .args(["-c", "import torch, sentence_transformers, fastapi, uvicorn, safetensors"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if py.is_file() && ok(&py) {
        return Ok(py);
    }
    eprintln!("bench-serve: making a Python venv in {} ({})", venv.display(), PY_PACKAGES.join(", "));
    let st = Command::new("python3").args(["-m", "venv"]).arg(&venv).status()?;
    if !st.success() {
        bail!("python3 -m venv failed (is python3-venv installed? or pass --python / --no-python)");
    }
    let st = Command::new(&py).args(["-m", "pip", "install", "-q"]).args(PY_PACKAGES).status()?;
    if !st.success() || !ok(&py) {
        bail!("pip install {} failed (pass --python PY or --no-python)", PY_PACKAGES.join(" "));
    }
    Ok(py)
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) fn remove_db(db: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}

/// A server process, stopped (SIGTERM, then killed) when dropped.
pub(crate) struct Server(Child);

impl Server {
    /// Starts `cmd` and waits until `GET /healthz` on `port` answers 200.
    pub(crate) fn start(mut cmd: Command, port: u16, what: &str) -> Result<Self> {
        eprintln!("starting {what} on port {port}");
        let child = cmd.stdout(Stdio::null()).spawn().with_context(|| format!("cannot start {what}"))?;
        let mut s = Server(child);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(300) {
            if let Some(status) = s.0.try_wait()? {
                bail!("{what} exited ({status}) before answering");
            }
            if healthz(port) {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("{what} did not answer /healthz within 300 s")
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn healthz(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut r = String::new();
    s.read_to_string(&mut r).is_ok() && r.starts_with("HTTP/1.1 200")
}

/// Loads the server on `port` at each concurrency (after a warm-up).
fn load(texts: &[String], port: u16, concurrency: &[usize]) -> Result<Vec<Point>> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("the async runtime")?;
    let opts = mappo_client::LoadOptions::new(format!("http://127.0.0.1:{port}"), 1);
    let reports =
        rt.block_on(mappo_client::run_levels(texts, &opts, concurrency)).context("the load generator")?;
    Ok(reports
        .into_iter()
        .map(|r| Point {
            concurrency: r.concurrency,
            requests: r.requests,
            failed: r.failed,
            texts_per_s: r.texts_per_s,
            p50_ms: r.p50_ms,
            p99_ms: r.p99_ms,
        })
        .collect())
}

fn print_points(what: &str, points: &[Point]) {
    for p in points {
        eprintln!(
            "{what:<42} concurrency {:>3}: {:>7.1} texts/s, p50 {:>6.1} ms, p99 {:>6.1} ms, failed {}/{}",
            p.concurrency, p.texts_per_s, p.p50_ms, p.p99_ms, p.failed, p.requests
        );
    }
}
