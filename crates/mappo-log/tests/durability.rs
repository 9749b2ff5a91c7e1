//! Durability: a child process logs decisions and rewards through the group committer and
//! prints each id after its call returned; it is SIGKILLed mid-stream; every printed id must be
//! in the database on reopen. SQLite and PostgreSQL.
//!
//! A plain `main` (harness = false): the same executable is the child when
//! `MAPPO_LOG_CHILD_URL` is set.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mappo_log::{DecisionLog, GroupCommitOptions, GroupCommitter, OpenOptions};

const CHILD_URL: &str = "MAPPO_LOG_CHILD_URL";
const CHILD_SCHEMA: &str = "MAPPO_LOG_CHILD_SCHEMA";

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Ok(url) = std::env::var(CHILD_URL) {
        rt.block_on(child(url, std::env::var(CHILD_SCHEMA).ok()));
        return;
    }
    let mut failed = Vec::new();
    let mut ran = 0;
    for backend in ["sqlite", "postgres"] {
        let name = format!("durability::sigkill_loses_nothing::{backend}");
        let db = match backend {
            "sqlite" => Some(common::TestDb::sqlite()),
            _ => common::TestDb::postgres(&name),
        };
        let Some(db) = db else { continue };
        ran += 1;
        match rt.block_on(parent(&db)) {
            Ok(msg) => {
                println!("test {name} ... ok ({msg})");
                rt.block_on(db.finish());
            }
            Err(e) => {
                println!("test {name} ... FAILED: {e}");
                failed.push(name);
            }
        }
    }
    println!(
        "\ntest result: {}. {} passed; {} failed",
        if failed.is_empty() { "ok" } else { "FAILED" },
        ran - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
}

/// Logs decisions from 16 concurrent tasks forever, printing `D id` after each acknowledged
/// decision and `R id` after each acknowledged reward.
async fn child(url: String, schema: Option<String>) {
    let opts = OpenOptions { pg_schema: schema, ..OpenOptions::default() };
    let log = DecisionLog::open_with(&url, opts).await.expect("child: open");
    let gc = GroupCommitter::new(log, GroupCommitOptions::default());
    let mut tasks = Vec::new();
    for t in 0..16u32 {
        let gc = gc.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0u32.. {
                let d = common::decision(t * 1_000_000 + i);
                gc.log_decisions(std::slice::from_ref(&d)).await.expect("child: log");
                say(&format!("D {}", d.id));
                if i % 2 == 0 {
                    gc.record_reward(d.id, 1.0).await.expect("child: reward");
                    say(&format!("R {}", d.id));
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// One whole line, flushed, under the stdout lock (so lines never interleave).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn parent(db: &common::TestDb) -> Result<String, String> {
    // Create the schema first so the child only opens.
    db.open().await.close().await;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.env(CHILD_URL, &db.url).stdout(Stdio::piped()).stderr(Stdio::inherit());
    match &db.schema {
        Some(s) => cmd.env(CHILD_SCHEMA, s),
        None => cmd.env_remove(CHILD_SCHEMA),
    };
    let mut child = cmd.spawn().map_err(|e| format!("spawning the child: {e}"))?;
    let stdout = child.stdout.take().ok_or("no child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let start = Instant::now();
    let mut decided = HashSet::new();
    let mut rewarded = HashSet::new();
    let record = |line: &str, decided: &mut HashSet<uuid::Uuid>, rewarded: &mut HashSet<uuid::Uuid>| {
        let (tag, id) = line.split_once(' ')?;
        let id: uuid::Uuid = id.parse().ok()?;
        match tag {
            "D" => decided.insert(id),
            "R" => rewarded.insert(id),
            _ => return None,
        };
        Some(())
    };
    // Let it write for a while (at least 2,000 acknowledged decisions or 20 s), then SIGKILL
    // while it is writing.
    while decided.len() < 2000 && start.elapsed() < Duration::from_secs(20) {
        match lines.next() {
            Some(Ok(line)) => {
                record(&line, &mut decided, &mut rewarded);
            }
            _ => break,
        }
    }
    child.kill().map_err(|e| format!("SIGKILL: {e}"))?;
    // What it printed before dying is still in the pipe (a torn last line is ignored).
    for line in lines.map_while(Result::ok) {
        record(&line, &mut decided, &mut rewarded);
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if status.success() {
        return Err("the child exited by itself instead of being killed".into());
    }
    if decided.len() < 100 {
        return Err(format!("the child acknowledged only {} decisions", decided.len()));
    }
    let log = db.open().await;
    let mut missing_d = 0;
    let mut missing_r = 0;
    for id in &decided {
        match log.decision(*id).await.map_err(|e| e.to_string())? {
            None => missing_d += 1,
            Some(e) => {
                if rewarded.contains(id) && e.reward.is_none() {
                    missing_r += 1;
                }
            }
        }
    }
    if rewarded.iter().any(|id| !decided.contains(id)) {
        return Err("a reward was acknowledged before its decision".into());
    }
    let stats = log.stats().await.map_err(|e| e.to_string())?;
    log.close().await;
    if missing_d > 0 || missing_r > 0 {
        return Err(format!(
            "{missing_d} of {} acknowledged decisions and {missing_r} of {} acknowledged rewards \
             are missing after SIGKILL",
            decided.len(),
            rewarded.len()
        ));
    }
    Ok(format!(
        "{} acknowledged decisions and {} rewards all present; {} decisions in the database",
        decided.len(),
        rewarded.len(),
        stats.decisions
    ))
}
