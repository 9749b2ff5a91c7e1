//! Group commit: many concurrent callers, one transaction per batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::log::{EndWrite, RewardWrite};
use crate::types::{Decision, Timestamp};
use crate::{DecisionLog, LogError};

/// How a [`GroupCommitter`] batches.
#[derive(Debug, Clone, Copy)]
pub struct GroupCommitOptions {
    /// Most decisions plus rewards in one transaction.
    pub max_batch: usize,
    /// Requests that may wait for the committer before callers are slowed down (backpressure).
    pub queue: usize,
}

impl Default for GroupCommitOptions {
    fn default() -> Self {
        GroupCommitOptions { max_batch: 4096, queue: 4096 }
    }
}

enum Job {
    Decisions { decisions: Vec<Decision>, ack: oneshot::Sender<Result<(), LogError>> },
    Reward { write: RewardWrite, ack: oneshot::Sender<Result<(), LogError>> },
    End { write: EndWrite, ack: oneshot::Sender<Result<(), LogError>> },
}

impl Job {
    /// Whether its caller has stopped waiting (a request that timed out): nothing to write.
    fn abandoned(&self) -> bool {
        match self {
            Job::Decisions { ack, .. } | Job::Reward { ack, .. } | Job::End { ack, .. } => ack.is_closed(),
        }
    }

    fn rows(&self) -> usize {
        match self {
            Job::Decisions { decisions, .. } => decisions.len(),
            Job::Reward { .. } | Job::End { .. } => 1,
        }
    }
}

/// Counters of a [`GroupCommitter`] (for metrics).
#[derive(Debug, Default)]
pub struct CommitCounters {
    /// Transactions committed.
    pub batches: AtomicU64,
    /// Decisions committed.
    pub decisions: AtomicU64,
    /// Rewards committed.
    pub rewards: AtomicU64,
}

/// A task in front of a [`DecisionLog`] that gathers the writes of concurrent callers into one
/// transaction: while one transaction commits, the next callers queue; the committer then takes
/// them all at once. Each call returns only after the transaction holding its rows has
/// committed (or failed), so "returned `Ok`" still means "durable". A batch that fails is
/// retried request by request, so one bad request fails alone.
///
/// Cheap to clone; the task stops when every clone is dropped (after finishing what it has).
#[derive(Debug, Clone)]
pub struct GroupCommitter {
    tx: mpsc::Sender<Job>,
    counters: Arc<CommitCounters>,
}

impl GroupCommitter {
    /// Starts the committer task on the current tokio runtime.
    pub fn new(log: DecisionLog, opts: GroupCommitOptions) -> Self {
        let (tx, rx) = mpsc::channel(opts.queue.max(1));
        let counters = Arc::new(CommitCounters::default());
        tokio::spawn(run(log, rx, opts.max_batch.max(1), counters.clone()));
        GroupCommitter { tx, counters }
    }

    /// Logs decisions (validated first); returns once they are committed.
    pub async fn log_decisions(&self, decisions: &[Decision]) -> Result<(), LogError> {
        for d in decisions {
            d.validate()?;
        }
        if decisions.is_empty() {
            return Ok(());
        }
        let (ack, done) = oneshot::channel();
        self.send(Job::Decisions { decisions: decisions.to_vec(), ack }).await?;
        done.await.map_err(|_| LogError::CommitterClosed)?
    }

    /// Records a reward as [`DecisionLog::record_reward`] does; returns once committed.
    pub async fn record_reward(&self, id: Uuid, reward: f64) -> Result<(), LogError> {
        if !reward.is_finite() {
            return Err(LogError::InvalidReward(reward));
        }
        let (ack, done) = oneshot::channel();
        let write = RewardWrite { id, reward, time: Timestamp::now() };
        self.send(Job::Reward { write, ack }).await?;
        done.await.map_err(|_| LogError::CommitterClosed)?
    }

    /// Ends an episode as [`DecisionLog::end_episode`] does; returns once committed.
    pub async fn end_episode(&self, episode: &str, reward: Option<f64>) -> Result<(), LogError> {
        if let Some(r) = reward.filter(|r| !r.is_finite()) {
            return Err(LogError::InvalidEpisodeReward(r));
        }
        let (ack, done) = oneshot::channel();
        let write = EndWrite { episode: episode.to_string(), reward, time: Timestamp::now() };
        self.send(Job::End { write, ack }).await?;
        done.await.map_err(|_| LogError::CommitterClosed)?
    }

    /// Transactions, decisions and rewards committed so far.
    pub fn counters(&self) -> &CommitCounters {
        &self.counters
    }

    async fn send(&self, job: Job) -> Result<(), LogError> {
        self.tx.send(job).await.map_err(|_| LogError::CommitterClosed)
    }
}

async fn run(log: DecisionLog, mut rx: mpsc::Receiver<Job>, max_batch: usize, counters: Arc<CommitCounters>) {
    while let Some(first) = rx.recv().await {
        let mut rows = first.rows();
        let mut batch = vec![first];
        while rows < max_batch {
            match rx.try_recv() {
                Ok(job) => {
                    rows += job.rows();
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        // Writes whose callers gave up (a request answered 503 after its timeout, during a
        // database outage) are not made: nobody was told they were.
        batch.retain(|j| !j.abandoned());
        if !batch.is_empty() {
            commit(&log, batch, &counters).await;
        }
    }
}

/// Commits `batch` in one transaction; on failure (other than the database being unreachable)
/// retries each job alone so that only the faulty one fails.
async fn commit(log: &DecisionLog, batch: Vec<Job>, counters: &CommitCounters) {
    let (decisions, rewards, ends) = split(&batch);
    match log.write(&decisions, &rewards, &ends).await {
        Ok((outcomes, ended)) => {
            counters.batches.fetch_add(1, Ordering::Relaxed);
            counters.decisions.fetch_add(decisions.len() as u64, Ordering::Relaxed);
            counters
                .rewards
                .fetch_add(outcomes.iter().filter(|o| o.is_ok()).count() as u64, Ordering::Relaxed);
            let (mut outcomes, mut ended) = (outcomes.into_iter(), ended.into_iter());
            for job in batch {
                match job {
                    Job::Decisions { ack, .. } => {
                        let _ = ack.send(Ok(()));
                    }
                    Job::Reward { ack, .. } => {
                        let _ = ack.send(outcomes.next().unwrap_or(Ok(())));
                    }
                    Job::End { ack, .. } => {
                        let _ = ack.send(ended.next().unwrap_or(Ok(())));
                    }
                }
            }
        }
        Err(e) if batch.len() == 1 || e.is_unavailable() => {
            let msg = e.to_string();
            let mut first = Some(e);
            for job in batch {
                // LogError is not Clone: the first caller gets the error itself, the others
                // the same kind of error rebuilt from its message.
                let err = first.take().unwrap_or_else(|| copy_error(&msg, log));
                match job {
                    Job::Decisions { ack, .. } | Job::Reward { ack, .. } | Job::End { ack, .. } => {
                        let _ = ack.send(Err(err));
                    }
                }
            }
        }
        Err(_) => {
            for job in batch {
                Box::pin(commit(log, vec![job], counters)).await;
            }
        }
    }
}

fn split(batch: &[Job]) -> (Vec<&Decision>, Vec<RewardWrite>, Vec<EndWrite>) {
    let mut decisions = Vec::new();
    let mut rewards = Vec::new();
    let mut ends = Vec::new();
    for job in batch {
        match job {
            Job::Decisions { decisions: d, .. } => decisions.extend(d.iter()),
            Job::Reward { write, .. } => rewards.push(*write),
            Job::End { write, .. } => ends.push(write.clone()),
        }
    }
    (decisions, rewards, ends)
}

fn copy_error(msg: &str, log: &DecisionLog) -> LogError {
    LogError::Unavailable { db: log.db().to_string(), source: sqlx::Error::Protocol(msg.to_string()) }
}
