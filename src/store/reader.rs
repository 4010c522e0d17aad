//! Cold reads: a bounded pool of threads that read the store for a shard's executor.
//!
//! The executor never touches the store itself: it queues a job on a bounded `crossbeam`
//! channel and awaits a oneshot answer. A full queue is answered at once (`Busy`), and a job
//! that waited past its deadline is answered `TimedOut` without being read: either way the
//! request is shed (503 / 91), never left waiting.

use crate::domain::{Lsn, Millis};
use crate::ledger::state::{IdemRecord, Payment};
use crate::ledger::{Hash16, TransferView};
use crate::store::{Store, StoreError};
use crossbeam::channel::{bounded, Receiver, Sender, TrySendError};
use futures::channel::oneshot;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Jobs that may wait for a reader thread.
pub const READ_QUEUE_MAX: usize = 1024;

/// Why a cold read gave no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The queue is full.
    Busy,
    /// The job waited longer than the read timeout.
    TimedOut,
    /// The store failed (logged by the reader).
    Failed(StoreError),
}

enum Query {
    Payment(u64),
    Idem(Hash16),
    Transfer(Hash16),
    HoldsDue { now: Millis, limit: usize },
}

enum Answer {
    Payment(Option<Payment>),
    Idem(Option<IdemRecord>),
    Transfer(Option<TransferView>),
    Holds(Vec<u64>),
}

struct Job {
    query: Query,
    deadline: Instant,
    reply: oneshot::Sender<Result<Answer, ReadError>>,
}

/// Progress the store writer publishes for everyone else.
#[derive(Default, Debug)]
pub struct StoreProgress {
    /// Highest LSN the store has applied; readers see it.
    pub applied: AtomicU64,
    /// Highest LSN durable in the store (the checkpoint).
    pub checkpoint: AtomicU64,
    /// WAL segments deleted after checkpoints.
    pub segments_deleted: AtomicU64,
    /// WAL segments kept as spares after checkpoints (the WAL reuses them).
    pub segments_recycled: AtomicU64,
    /// Spare WAL segments the writer zero-filled ahead of need (fewer than two were left).
    pub spares_prepared: AtomicU64,
    /// Durable records the writer read back from the WAL's segments (those the in-memory
    /// tap dropped because it was full).
    pub wal_records_read: AtomicU64,
    /// Failed store commits (each retried).
    pub failures: AtomicU64,
    /// Store commits that were not checkpoints: how many, their time in all and the slowest.
    pub commits: AtomicU64,
    pub commit_micros: AtomicU64,
    pub commit_micros_max: AtomicU64,
    /// Checkpoints (durable commits, fsync included): how many, their time, the slowest.
    pub checkpoints: AtomicU64,
    pub checkpoint_micros: AtomicU64,
    pub checkpoint_micros_max: AtomicU64,
}

/// A shard's handle on its store: cheap to clone, usable from the executor.
#[derive(Clone)]
pub struct StoreReader {
    jobs: Sender<Job>,
    progress: Arc<StoreProgress>,
    timeout: Duration,
}

impl StoreReader {
    /// The store's applied LSN: changes up to it may leave memory.
    pub fn applied(&self) -> Lsn {
        Lsn(self.progress.applied.load(Ordering::Acquire))
    }

    pub fn progress(&self) -> &StoreProgress {
        &self.progress
    }

    /// How long a read may take before its request is shed.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub async fn payment(&self, seq: u64) -> Result<Option<Payment>, ReadError> {
        match self.ask(Query::Payment(seq)).await? {
            Answer::Payment(p) => Ok(p),
            _ => unreachable!("answers match their query"),
        }
    }

    pub async fn idem(&self, key: Hash16) -> Result<Option<IdemRecord>, ReadError> {
        match self.ask(Query::Idem(key)).await? {
            Answer::Idem(r) => Ok(r),
            _ => unreachable!("answers match their query"),
        }
    }

    pub async fn transfer(&self, key: Hash16) -> Result<Option<TransferView>, ReadError> {
        match self.ask(Query::Transfer(key)).await? {
            Answer::Transfer(t) => Ok(t),
            _ => unreachable!("answers match their query"),
        }
    }

    pub async fn holds_due(&self, now: Millis, limit: usize) -> Result<Vec<u64>, ReadError> {
        match self.ask(Query::HoldsDue { now, limit }).await? {
            Answer::Holds(h) => Ok(h),
            _ => unreachable!("answers match their query"),
        }
    }

    async fn ask(&self, query: Query) -> Result<Answer, ReadError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            query,
            deadline: Instant::now() + self.timeout,
            reply,
        };
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(ReadError::Busy),
            Err(TrySendError::Disconnected(_)) => {
                return Err(ReadError::Failed(StoreError(
                    "store readers stopped".into(),
                )))
            }
        }
        answer
            .await
            .unwrap_or(Err(ReadError::Failed(StoreError("reader gone".into()))))
    }
}

/// What a shard's gateway reaches of the stores: its own, every shard's (idempotency keys
/// are looked up in all of them), and every shard's durable LSN.
#[derive(Clone)]
pub struct Stores {
    pub own: StoreReader,
    pub all: Vec<StoreReader>,
    pub durables: Vec<Arc<AtomicU64>>,
    /// Free space under the data directory.
    pub space: Arc<crate::store::space::Space>,
}

/// Starts `threads` readers on `store`. They stop when every `StoreReader` is dropped.
///
/// With `raise` (the readers have cores no shard owns), each asks for real-time priority: a
/// cold read is on a request's path, and it shares its core with the store writer's commits
/// and the replication sinks, which can wait.
pub fn spawn_readers(
    store: Arc<Store>,
    progress: Arc<StoreProgress>,
    threads: usize,
    timeout: Duration,
    name: &str,
    cores: &[usize],
    raise: bool,
) -> StoreReader {
    assert!(threads >= 1);
    let (jobs, queue) = bounded::<Job>(READ_QUEUE_MAX);
    for i in 0..threads {
        let (store, queue, cores) = (store.clone(), queue.clone(), cores.to_vec());
        let thread = format!("{name}-read-{i}");
        std::thread::Builder::new()
            .name(thread.clone())
            .spawn(move || {
                crate::affinity::pin_thread(&cores, "a store reader");
                if raise {
                    let how = crate::affinity::raise_thread_priority();
                    crate::info!("store.reader_priority": "{thread} runs at {how}");
                }
                serve(&store, &queue)
            })
            .expect("spawn a store reader");
    }
    StoreReader {
        jobs,
        progress,
        timeout,
    }
}

fn serve(store: &Store, queue: &Receiver<Job>) {
    while let Ok(job) = queue.recv() {
        if Instant::now() > job.deadline {
            let _ = job.reply.send(Err(ReadError::TimedOut));
            continue;
        }
        let answer = match job.query {
            Query::Payment(seq) => store.payment(seq).map(Answer::Payment),
            Query::Idem(key) => store.idem(&key).map(Answer::Idem),
            Query::Transfer(key) => store.transfer(&key).map(Answer::Transfer),
            Query::HoldsDue { now, limit } => store.holds_due(now, limit).map(Answer::Holds),
        };
        if let Err(e) = &answer {
            crate::warn!("store.read_failed": "{e}");
        }
        let _ = job.reply.send(answer.map_err(ReadError::Failed));
    }
}
