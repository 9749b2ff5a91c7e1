//! `cargo xtask soak`: a long run of `mappo serve` under steady load, to see whether anything
//! grows that should not. Each request is a `POST /v1/route` of one corpus text (the corpus
//! cycled) followed by a `POST /v1/feedback` of its decision (reward 1 when the agent is the
//! text's label, else 0), `--concurrency` workers at a time, against a fresh SQLite file and a
//! throwaway PostgreSQL cluster (`postgres.rs`) in turn. Per window of `--window` completed
//! requests it records the server's resident memory (`VmRSS` of `/proc/PID/status`), the p50/p99
//! latency of that window's route requests (the route call alone; the feedback's p99 beside it)
//! and the database's size, with the server's CPU time per request and the machine's load
//! average beside (a shared machine's noise shows there). Acceptance, per database: the RSS at
//! the end is within 10% of the RSS after the third window (30,000 requests by default), and the
//! last window's p99 within 1.5x of the second window's. Not part of `cargo xtask test`; figures
//! in docs/results/soak.md.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::bench_serve::{ServeArgs, Server, free_port, remove_db, take_rows, work_and_corpus};
use crate::{postgres, workspace_root};

/// Largest accepted RSS at the end / RSS after the third window.
const RSS_LIMIT: f64 = 1.10;
/// Largest accepted p99 of the last window / p99 of the second window.
const P99_LIMIT: f64 = 1.5;
const MIB: f64 = 1024.0 * 1024.0;

#[derive(clap::Args)]
pub struct Args {
    /// Requests (route + feedback each) per database.
    #[arg(long, default_value_t = 300_000)]
    requests: usize,
    /// Completed requests per reported window.
    #[arg(long, default_value_t = 10_000)]
    window: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Decision logs to soak, in turn.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "sqlite,postgres")]
    db: Vec<Backend>,
    /// JSON-lines corpus whose texts (and labels, for the rewards) are sent, cycled
    /// [default: data/clinc150/train.jsonl].
    #[arg(long)]
    corpus: Option<PathBuf>,
    #[command(flatten)]
    serve: ServeArgs,
    /// Print one JSON object at the end (the tables go to stderr).
    #[arg(long)]
    json: bool,
    /// Exit non-zero when a criterion fails.
    #[arg(long)]
    strict: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }
}

/// One window of completed requests.
#[derive(Debug, Clone, serde::Serialize)]
struct Window {
    /// Requests completed at its end (cumulative).
    requests: usize,
    /// Seconds since the load started, at its end.
    seconds: f64,
    /// Requests of this window per second.
    requests_per_s: f64,
    /// The server's resident memory at its end (`VmRSS`), and the peak so far (`VmHWM`).
    rss_mib: f64,
    rss_peak_mib: f64,
    /// The server's CPU time (user + system) per request of this window, milliseconds: what a
    /// request costs, whatever else the machine runs.
    cpu_ms_per_request: f64,
    /// The machine's 1-minute load average at its end (`/proc/loadavg`): how busy it was.
    load1: f64,
    /// Latency of this window's successful route requests.
    p50_ms: f64,
    p99_ms: f64,
    /// Latency of this window's successful feedback requests.
    feedback_p99_ms: f64,
    route_errors: usize,
    feedback_errors: usize,
    /// SQLite: the file + `-wal` + `-shm`; PostgreSQL: `pg_database_size`.
    db_mib: f64,
    /// SQLite: the `-wal` file; PostgreSQL: the cluster's `pg_wal` directory.
    wal_mib: f64,
}

impl Window {
    /// The column names of [`Window::row`].
    const HEADER: &str = " requests    req/s  RSS MiB   p50 ms   p99 ms feedback p99   DB MiB  WAL MiB  errors  CPU ms/req  load";

    /// The window as a table row.
    fn row(&self) -> String {
        format!(
            "{:>9} {:>8.0} {:>8.1} {:>8.1} {:>8.1} {:>12.1} {:>8.1} {:>8.1} {:>7} {:>11.2} {:>5.1}",
            self.requests,
            self.requests_per_s,
            self.rss_mib,
            self.p50_ms,
            self.p99_ms,
            self.feedback_p99_ms,
            self.db_mib,
            self.wal_mib,
            self.route_errors + self.feedback_errors,
            self.cpu_ms_per_request,
            self.load1
        )
    }
}

/// One acceptance figure.
#[derive(Debug, Clone, serde::Serialize)]
struct Criterion {
    what: String,
    baseline: f64,
    last: f64,
    ratio: f64,
    limit: f64,
    pass: bool,
}

/// One database's soak.
#[derive(Debug, Clone, serde::Serialize)]
struct Soak {
    db: &'static str,
    windows: Vec<Window>,
    /// `None` where there are too few windows to judge.
    rss: Option<Criterion>,
    p99: Option<Criterion>,
}

/// How the database's size is read.
enum Sizer {
    Sqlite(PathBuf),
    Postgres { psql: PathBuf, url: String },
}

impl Sizer {
    /// (database size, WAL size) in bytes.
    fn sizes(&self) -> Result<(u64, u64)> {
        match self {
            Sizer::Sqlite(db) => {
                let len = |suffix: &str| {
                    std::fs::metadata(format!("{}{suffix}", db.display())).map_or(0, |m| m.len())
                };
                Ok((len("") + len("-wal") + len("-shm"), len("-wal")))
            }
            Sizer::Postgres { psql, url } => {
                let out = Command::new(psql)
                    .args([url.as_str(), "-X", "-A", "-t", "-c"])
                    .arg(
                        "SELECT pg_database_size(current_database()), \
                         (SELECT coalesce(sum(size), 0) FROM pg_ls_waldir())",
                    )
                    .output()
                    .with_context(|| format!("running {}", psql.display()))?;
                if !out.status.success() {
                    bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
                }
                let text = String::from_utf8_lossy(&out.stdout);
                let mut parts = text.trim().split('|').map(|s| s.trim().parse::<u64>());
                match (parts.next(), parts.next()) {
                    (Some(Ok(db)), Some(Ok(wal))) => Ok((db, wal)),
                    _ => bail!("psql answered {text:?}"),
                }
            }
        }
    }
}

pub fn run(a: Args) -> Result<()> {
    if a.requests == 0 || a.window == 0 || a.concurrency == 0 {
        bail!("--requests, --window and --concurrency must be positive");
    }
    let root = workspace_root();
    let (work, corpus) = work_and_corpus(&root, "soak", a.corpus.as_deref(), "train.jsonl")?;
    let rows = Arc::new(take_rows(&corpus, usize::MAX)?);
    eprintln!("soak: {} texts from {}, cycled", rows.len(), corpus.display());
    let ready = a.serve.ready(&root, &work)?;
    // The source the binary was just built from (the tree may change during the soak).
    let git = |args: &[&str]| {
        Command::new("git").current_dir(&root).args(args).output().ok().filter(|o| o.status.success())
    };
    let commit =
        git(&["rev-parse", "--short", "HEAD"]).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let dirty = git(&["status", "--porcelain", "--", "crates", "Cargo.toml", "Cargo.lock"])
        .map(|o| !o.stdout.is_empty());

    let mut soaks = Vec::new();
    for &backend in &a.db {
        // The cluster outlives the server (dropped after it).
        let mut _cluster = None;
        let (url, sizer) = match backend {
            Backend::Sqlite => {
                let db = work.join("soak.db");
                remove_db(&db);
                (format!("sqlite:{}", db.display()), Sizer::Sqlite(db))
            }
            Backend::Postgres => {
                let bindir = postgres::find_bindir().context(
                    "no PostgreSQL server binaries (initdb, pg_ctl) found: install Debian's \
                     `postgresql` package, set MAPPO_PG_BINDIR, or pass --db sqlite",
                )?;
                let cluster = postgres::Cluster::start(&bindir, &work.join("pg"))?;
                let psql = Some(bindir.join("psql")).filter(|p| p.is_file()).unwrap_or("psql".into());
                let url = cluster.url.clone();
                eprintln!("soak: throwaway PostgreSQL cluster ({}) at {url}", bindir.display());
                _cluster = Some(cluster);
                (url.clone(), Sizer::Postgres { psql, url })
            }
        };
        let port = free_port()?;
        let cmd = a.serve.command(&ready, &url, port);
        let what = format!("mappo serve ({})", backend.name());
        let server = Server::start(cmd, port, &what)?;
        eprintln!(
            "soak: {}: {} requests at concurrency {}, a line per {} completed",
            backend.name(),
            a.requests,
            a.concurrency,
            a.window
        );
        eprintln!("{}", Window::HEADER);
        let windows =
            load(&a, &rows, port, server.pid(), &sizer).with_context(|| format!("soaking {what}"))?;
        drop(server);
        let soak = judge(backend.name(), windows);
        print_soak(&soak, a.json);
        soaks.push(soak);
    }

    let report = serde_json::json!({
        "commit": commit,
        "uncommitted_changes_in_crates": dirty,
        "requests": a.requests,
        "window": a.window,
        "concurrency": a.concurrency,
        "corpus": corpus.display().to_string(),
        "checkpoint": ready.checkpoint.display().to_string(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "set": a.serve.set,
        "soaks": soaks,
    });
    std::fs::write(work.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    if a.json {
        println!("{report}");
    }
    let failed: Vec<&str> = soaks
        .iter()
        .filter(|s| [&s.rss, &s.p99].into_iter().flatten().any(|c| !c.pass))
        .map(|s| s.db)
        .collect();
    if a.strict && !failed.is_empty() {
        bail!("soak criteria failed for {}", failed.join(", "));
    }
    Ok(())
}

/// One finished request: the route's and the feedback's latency in ms (`None`: failed).
struct Done {
    route_ms: Option<f64>,
    feedback_ms: Option<f64>,
}

/// Sends `a.requests` route + feedback pairs to the server on `port`; one [`Window`] per
/// `a.window` completed pairs (the last may be shorter), measured as each window closes.
fn load(
    a: &Args,
    rows: &Arc<Vec<(String, Option<String>)>>,
    port: u16,
    pid: u32,
    sizer: &Sizer,
) -> Result<Vec<Window>> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("the async runtime")?;
    let client = mappo_client::Client::new(
        format!("http://127.0.0.1:{port}"),
        None,
        Duration::from_secs(30),
        a.concurrency * 2,
    )?;
    let next = Arc::new(AtomicUsize::new(0));
    // Completions reach this thread in completion order; the workers never wait on it.
    let (tx, rx) = std::sync::mpsc::channel::<Done>();
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..a.concurrency {
        let (client, rows, next, tx, n) =
            (client.clone(), rows.clone(), next.clone(), tx.clone(), a.requests);
        workers.push(rt.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let (text, label) = &rows[i % rows.len()];
                let t = Instant::now();
                let done = match client.route(text, false).await {
                    Ok(d) => {
                        let route_ms = t.elapsed().as_secs_f64() * 1000.0;
                        let reward = match label {
                            Some(l) => f64::from(u8::from(*l == d.agent)),
                            None => (i % 2) as f64,
                        };
                        let t = Instant::now();
                        let ok = client.feedback(&d.decision_id, reward).await.is_ok();
                        let feedback_ms = ok.then(|| t.elapsed().as_secs_f64() * 1000.0);
                        Done { route_ms: Some(route_ms), feedback_ms }
                    }
                    Err(_) => Done { route_ms: None, feedback_ms: None },
                };
                if tx.send(done).is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);

    let mut windows = Vec::new();
    let (mut route, mut feedback, mut route_errors, mut feedback_errors) = (Vec::new(), Vec::new(), 0, 0);
    let (mut completed, mut window_start, mut window_cpu_s) = (0usize, Instant::now(), cpu_seconds(pid)?);
    for d in rx {
        completed += 1;
        match d.route_ms {
            Some(ms) => route.push(ms),
            None => route_errors += 1,
        }
        match (d.route_ms, d.feedback_ms) {
            (_, Some(ms)) => feedback.push(ms),
            (Some(_), None) => feedback_errors += 1,
            (None, None) => {}
        }
        if completed % a.window != 0 && completed != a.requests {
            continue;
        }
        let in_window = route.len() + route_errors;
        let (rss, rss_peak) = rss_bytes(pid)?;
        let cpu_s = cpu_seconds(pid)?;
        let (db, wal) = sizer.sizes()?;
        route.sort_by(f64::total_cmp);
        feedback.sort_by(f64::total_cmp);
        let w = Window {
            requests: completed,
            seconds: t0.elapsed().as_secs_f64(),
            requests_per_s: in_window as f64 / window_start.elapsed().as_secs_f64().max(1e-9),
            rss_mib: rss as f64 / MIB,
            rss_peak_mib: rss_peak as f64 / MIB,
            cpu_ms_per_request: (cpu_s - window_cpu_s) * 1000.0 / in_window.max(1) as f64,
            load1: load_average()?,
            p50_ms: mappo_client::quantile(&route, 0.5),
            p99_ms: mappo_client::quantile(&route, 0.99),
            feedback_p99_ms: mappo_client::quantile(&feedback, 0.99),
            route_errors,
            feedback_errors,
            db_mib: db as f64 / MIB,
            wal_mib: wal as f64 / MIB,
        };
        eprintln!("{}", w.row());
        windows.push(w);
        (route_errors, feedback_errors, window_start, window_cpu_s) = (0, 0, Instant::now(), cpu_s);
        route.clear();
        feedback.clear();
    }
    for w in workers {
        rt.block_on(w).context("a load worker")?;
    }
    Ok(windows)
}

/// `VmRSS` and `VmHWM` of process `pid`, in bytes.
fn rss_bytes(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (has the server exited?)"))?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        let kb: u64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse()?;
        Ok(kb * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// User + system CPU seconds of process `pid` so far (`/proc/PID/stat`, in clock ticks of
/// 1/100 s, Linux's `USER_HZ`).
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat (has the server exited?)"))?;
    // After the command name in parentheses: state, then utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: Vec<u64> = after.split_whitespace().skip(11).take(2).filter_map(|t| t.parse().ok()).collect();
    if ticks.len() != 2 {
        bail!("/proc/{pid}/stat: no utime and stime in {stat:?}");
    }
    Ok((ticks[0] + ticks[1]) as f64 / 100.0)
}

/// The 1-minute load average (`/proc/loadavg`).
fn load_average() -> Result<f64> {
    let s = std::fs::read_to_string("/proc/loadavg").context("reading /proc/loadavg")?;
    s.split_whitespace().next().and_then(|v| v.parse().ok()).with_context(|| format!("/proc/loadavg: {s:?}"))
}

/// The acceptance figures of one database's windows.
fn judge(db: &'static str, windows: Vec<Window>) -> Soak {
    let rss = compare(&windows, 2, |w| w.rss_mib, "RSS", RSS_LIMIT);
    let p99 = compare(&windows, 1, |w| w.p99_ms, "p99 of the window", P99_LIMIT);
    Soak { db, windows, rss, p99 }
}

/// `field` of the last window over `field` of window `base` (0-based) against `limit`; `None`
/// when no window follows `base`.
fn compare(
    windows: &[Window],
    base: usize,
    field: fn(&Window) -> f64,
    what: &str,
    limit: f64,
) -> Option<Criterion> {
    let (b, l) = (windows.get(base)?, windows.last()?);
    if windows.len() <= base + 1 {
        return None;
    }
    let (baseline, last) = (field(b), field(l));
    let ratio = if baseline > 0.0 { last / baseline } else { f64::INFINITY };
    Some(Criterion {
        what: format!("{what}, {} / {} requests", l.requests, b.requests),
        baseline,
        last,
        ratio,
        limit,
        pass: ratio <= limit,
    })
}

/// The table and the acceptance lines (on stderr when stdout carries the JSON).
fn print_soak(s: &Soak, json: bool) {
    let mut out = format!("\n{}\n{}\n", s.db, Window::HEADER);
    for w in &s.windows {
        out += &w.row();
        out.push('\n');
    }
    for (c, unit, what) in [(&s.rss, "MiB", "RSS"), (&s.p99, "ms", "p99")] {
        out += &match c {
            Some(c) => format!(
                "{} {}: {}: {:.1} / {:.1} {unit} = {:.3} (limit {:.2})\n",
                if c.pass { "PASS" } else { "FAIL" },
                s.db,
                c.what,
                c.last,
                c.baseline,
                c.ratio,
                c.limit
            ),
            None => format!("n/a  {}: {what}: too few windows to judge\n", s.db),
        };
    }
    if json {
        eprint!("{out}");
    } else {
        print!("{out}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(requests: usize, rss_mib: f64, p99_ms: f64) -> Window {
        Window {
            requests,
            seconds: 0.0,
            requests_per_s: 0.0,
            rss_mib,
            rss_peak_mib: rss_mib,
            cpu_ms_per_request: 0.0,
            load1: 0.0,
            p50_ms: 0.0,
            p99_ms,
            feedback_p99_ms: 0.0,
            route_errors: 0,
            feedback_errors: 0,
            db_mib: 0.0,
            wal_mib: 0.0,
        }
    }

    #[test]
    fn criteria_compare_the_last_window_with_the_third_and_the_second() {
        let ws = vec![window(10, 300.0, 90.0), window(20, 100.0, 40.0), window(30, 200.0, 50.0)];
        let s = judge("x", [ws.clone(), vec![window(40, 219.0, 61.0)]].concat());
        let (rss, p99) = (s.rss.unwrap(), s.p99.unwrap());
        assert_eq!((rss.baseline, rss.last, rss.pass), (200.0, 219.0, true));
        assert_eq!((p99.baseline, p99.last, p99.pass), (40.0, 61.0, false));
        assert_eq!(p99.what, "p99 of the window, 40 / 20 requests");
        // Three windows: no later window to compare the third with.
        let s = judge("x", ws);
        assert!(s.rss.is_none() && s.p99.is_some());
        assert!(judge("x", vec![window(10, 1.0, 1.0)]).p99.is_none());
    }

    #[test]
    fn rss_and_cpu_of_this_process() {
        let (rss, peak) = rss_bytes(std::process::id()).unwrap();
        assert!(rss > 0 && peak >= rss);
        let t0 = cpu_seconds(std::process::id()).unwrap();
        let mut x = 0u64;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(cpu_seconds(std::process::id()).unwrap() > t0);
        assert!(load_average().unwrap() >= 0.0);
    }
}
