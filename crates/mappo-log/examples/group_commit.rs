//! Decisions per second with and without group commit, concurrent writers logging one decision
//! per call (what `mappo serve` does per request), each call committed before it returns.
//!
//! ```sh
//! cargo run --release -p mappo-log --example group_commit -- [DB_URL] [WRITERS] [DECISIONS]
//! ```
//! Default: a SQLite file in a temporary directory, 32 writers, 4,000 decisions per mode.

use std::time::Instant;

use mappo_log::{
    Decision, DecisionKind, DecisionLog, GroupCommitOptions, GroupCommitter, LogError, Timestamp,
};

fn decision(i: usize) -> Decision {
    let probabilities = vec![0.5, 0.3, 0.2];
    Decision {
        id: Decision::new_id(),
        time: Timestamp::now(),
        policy_version: 1,
        action: (i % 3) as u32,
        agent: format!("agent-{}", i % 3),
        propensity: probabilities[i % 3],
        probabilities,
        kind: DecisionKind::Sampled,
        embedding: (0..384).map(|j| (i + j) as f32 * 1e-3).collect(),
        model_hash: "bench".into(),
        text: None,
        replica: "bench".into(),
        cost_weight: None,
        shadow: None,
        episode: None,
    }
}

#[derive(Clone)]
enum Writer {
    Direct(DecisionLog),
    Group(GroupCommitter),
}

impl Writer {
    async fn log(&self, d: &Decision) -> Result<(), LogError> {
        match self {
            Writer::Direct(log) => log.log_decisions(std::slice::from_ref(d)).await,
            Writer::Group(gc) => gc.log_decisions(std::slice::from_ref(d)).await,
        }
    }
}

async fn measure(w: Writer, writers: usize, total: usize) -> Result<f64, LogError> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..writers {
        let w = w.clone();
        let n = total / writers + usize::from(t < total % writers);
        tasks.push(tokio::spawn(async move {
            for i in 0..n {
                w.log(&decision(t * 1_000_000 + i)).await?;
            }
            Ok::<_, LogError>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|_| LogError::CommitterClosed)??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dir = tempfile::tempdir()?;
    let url =
        args.get(1).cloned().unwrap_or_else(|| format!("sqlite:{}", dir.path().join("bench.db").display()));
    let writers: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(32);
    let total: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(4000);
    let log = DecisionLog::open(&url).await?;
    println!(
        "{} ({}), {writers} concurrent writers, 1 decision per call, {total} decisions per mode",
        log.db(),
        log.backend()
    );
    let direct = measure(Writer::Direct(log.clone()), writers, total).await?;
    println!("without group commit: {direct:>9.0} decisions/s");
    let gc = GroupCommitter::new(log.clone(), GroupCommitOptions::default());
    let group = measure(Writer::Group(gc.clone()), writers, total).await?;
    let batches = gc.counters().batches.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "with group commit:    {group:>9.0} decisions/s ({batches} transactions, {:.1} decisions each; {:.1}x)",
        total as f64 / batches.max(1) as f64,
        group / direct
    );
    Ok(())
}
