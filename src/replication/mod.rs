//! Asynchronous replication of every shard's WAL to PostgreSQL (`postgres`) and to a Redis
//! stream (`redis`), and the comparison of PostgreSQL with the gateway (`reconcile`).
//!
//! Owns: the only SQL and the only Redis commands in corepay. Each sink runs on threads of its
//! own, one per shard, reading each durable record's effects (`ledger::effects`) from the
//! shard's store change log (`crate::store`, written by the store writer), and storing each batch
//! together with its progress (the last LSN stored) in one transaction, so a crash or retry
//! stores every record exactly once. Never: runs on a shard's executor, delays an
//! acknowledgement, or stores a PAN, track data or a key.

pub mod postgres;
pub mod reconcile;
pub mod redis;
pub mod runner;
pub mod source;

use crate::domain::{Lsn, Millis, ShardId};
use crate::ledger::effects::Effects;
use std::fmt;

/// One WAL record's effects, ready for a sink.
#[derive(Clone, Debug)]
pub struct Record {
    pub shard: ShardId,
    pub lsn: Lsn,
    /// The time the command carried (None for internal bookkeeping without one).
    pub time: Option<Millis>,
    pub effects: Effects,
}

/// A downstream store. Each instance serves one shard's stream of records, on its own thread.
pub trait Sink: Send {
    /// A short name for logs and metrics ("postgres", "redis").
    fn name(&self) -> &'static str;
    /// Connects (or reconnects), creates or migrates what it needs, and returns the last LSN
    /// of `shard` it has stored (Lsn(0) when none).
    fn progress(&mut self, shard: ShardId) -> Result<Lsn, SinkError>;
    /// Stores `batch` (consecutive records of `shard`, in LSN order, all after `progress`)
    /// and the new progress (the last record's LSN) atomically: all or nothing.
    fn apply(&mut self, shard: ShardId, batch: &[Record]) -> Result<(), SinkError>;
    /// Replaces what the sink holds of `seed.shard` with `seed` (the shard's whole state as
    /// of `seed.at`) and stores progress `seed.at`, atomically: all or nothing. Called when
    /// the sink needs records the change log no longer has; replication then goes on from
    /// `seed.at + 1`. A sink whose progress already reached `seed.at` changes nothing.
    fn reseed(&mut self, seed: &mut Seed<'_>) -> Result<(), SinkError>;
}

/// One shard's whole state at one LSN, for `Sink::reseed`: what provisioning made, in full,
/// and the payments in pieces (there may be millions).
pub struct Seed<'a> {
    pub shard: ShardId,
    /// The LSN this state is as of (the store's applied LSN when it was read).
    pub at: Lsn,
    /// The first LSN the sink needed and the change log no longer had.
    pub missing_from: Lsn,
    /// When the copy was taken (wall clock).
    pub time: Millis,
    pub accounts: Vec<crate::ledger::AccountView>,
    pub cards: Vec<crate::ledger::CardFacts>,
    pub merchants: Vec<crate::ledger::effects::MerchantRow>,
    /// Per currency, what the shard's own journal entries for its treasury and for money in
    /// flight between shards sum to (`CurrencyTotals`: treasury, and sent - received).
    pub positions: Vec<(crate::domain::Currency, i64, i64)>,
    /// The next (up to) n payments, in order; empty when all were given.
    pub payments: &'a mut dyn FnMut(usize) -> Result<Vec<crate::ledger::PaymentView>, SinkError>,
}

impl fmt::Debug for Seed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Seed {{ shard {}, at {}, missing from {}, {} accounts }}",
            self.shard.0,
            self.at.0,
            self.missing_from.0,
            self.accounts.len()
        )
    }
}

/// Why a sink could not store a batch; the runner backs off and retries.
#[derive(Debug)]
pub struct SinkError(pub String);

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SinkError {}

/// (sink name, shard, status) of every runner, shared with the operator's /metrics.
pub type SinkStatuses =
    std::sync::Arc<Vec<(&'static str, ShardId, std::sync::Arc<runner::SinkStatus>)>>;

/// The running sinks: one runner thread per (sink, shard).
pub struct Replicators {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    abandon: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handles: Vec<std::thread::JoinHandle<()>>,
    /// (sink name, shard, status) of every runner.
    pub statuses: Vec<(&'static str, ShardId, std::sync::Arc<runner::SinkStatus>)>,
}

impl crate::config::Replication {
    /// True when PostgreSQL or Redis is configured (in the file or the environment).
    pub fn sinks_configured(&self) -> bool {
        self.postgres().is_some() || self.redis().is_some()
    }
}

/// The configured sinks' names, in the order `start` runs them.
pub fn sink_names(config: &crate::config::Replication) -> Vec<&'static str> {
    let mut names = Vec::new();
    if config.postgres().is_some() {
        names.push("postgres");
    }
    if config.redis().is_some() {
        names.push("redis");
    }
    names
}

/// One status per (configured sink, shard): `statuses[sink][shard]`. Made before recovery so
/// that each shard's store writer keeps its change log until every sink has stored it.
pub fn new_statuses(
    config: &crate::config::Replication,
    shards: u16,
) -> Vec<Vec<std::sync::Arc<runner::SinkStatus>>> {
    sink_names(config)
        .iter()
        .map(|_| (0..shards).map(|_| Default::default()).collect())
        .collect()
}

/// Starts a runner per configured sink and shard, each reading its shard's store change log.
/// `durables[k]` is the durable LSN shard k's executor publishes (for lag).
pub fn start(
    config: &crate::config::Replication,
    stores: &[std::sync::Arc<crate::store::Store>],
    progress: &[std::sync::Arc<crate::store::reader::StoreProgress>],
    durables: &[std::sync::Arc<std::sync::atomic::AtomicU64>],
    statuses: &[Vec<std::sync::Arc<runner::SinkStatus>>],
) -> Replicators {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    assert_eq!(stores.len(), durables.len());
    let shards = stores.len() as u16;
    let mut r = Replicators {
        stop: Arc::new(AtomicBool::new(false)),
        abandon: Arc::new(AtomicBool::new(false)),
        handles: Vec::new(),
        statuses: Vec::new(),
    };
    type Factory = Box<dyn Fn() -> Box<dyn Sink>>;
    let mut sinks: Vec<(&'static str, Factory)> = Vec::new();
    if let Some(url) = config.postgres() {
        let schema = config.postgres_schema.clone();
        sinks.push((
            "postgres",
            Box::new(move || Box::new(self::postgres::PostgresSink::with_schema(&url, &schema))),
        ));
    }
    if let Some(url) = config.redis() {
        let (stream, maxlen) = (config.redis_stream.clone(), config.redis_maxlen);
        sinks.push((
            "redis",
            Box::new(move || Box::new(self::redis::RedisSink::new(&url, &stream, maxlen))),
        ));
    }
    assert_eq!(sinks.len(), statuses.len(), "one status list per sink");
    for (i, (name, make)) in sinks.iter().enumerate() {
        for k in 0..shards {
            let status = statuses[i][k as usize].clone();
            let runner = runner::Runner {
                shard: ShardId(k),
                store: stores[k as usize].clone(),
                progress: progress[k as usize].clone(),
                durable: durables[k as usize].clone(),
                stop: r.stop.clone(),
                abandon: r.abandon.clone(),
                batch_records: config.batch_records,
                status: status.clone(),
                cores: config.cores.clone(),
            };
            r.handles.push(runner.spawn(make()));
            r.statuses.push((name, ShardId(k), status));
        }
        crate::info!("replication.started": "replicating every shard to {name}");
    }
    if !r.statuses.is_empty() {
        r.handles.push(spawn_monitor(
            r.statuses.clone(),
            durables.to_vec(),
            r.stop.clone(),
        ));
    }
    r
}

/// How often the monitor looks, and how long a batch may take before it says so.
const MONITOR_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
const APPLY_SLOW_MILLIS: u64 = 10_000;

/// Logs what the runners cannot say themselves: a batch stuck in a hung sink, and the backlog
/// behind each sink while it grows.
fn spawn_monitor(
    statuses: Vec<(&'static str, ShardId, std::sync::Arc<runner::SinkStatus>)>,
    durables: Vec<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    use std::sync::atomic::Ordering;
    std::thread::Builder::new()
        .name("corepay-replication-monitor".into())
        .spawn(move || {
            let mut last_lag = vec![0u64; statuses.len()];
            let mut waited = std::time::Duration::ZERO;
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(100));
                waited += std::time::Duration::from_millis(100);
                if waited < MONITOR_EVERY {
                    continue;
                }
                waited = std::time::Duration::ZERO;
                let now = crate::gateway::system_clock().0;
                for (i, (name, shard, status)) in statuses.iter().enumerate() {
                    let durable = durables[shard.index()].load(Ordering::SeqCst);
                    let lag = durable.saturating_sub(status.stored.load(Ordering::SeqCst));
                    let started = status.apply_started.load(Ordering::SeqCst);
                    if started != 0 && now.saturating_sub(started) > APPLY_SLOW_MILLIS {
                        crate::warn!("replication.batch_stuck": 
                            "{name} shard {shard}: a batch has been in flight for {} s (server hung?); \
                             {lag} records waiting; the gateway keeps serving",
                            (now - started) / 1000
                        );
                    } else if lag > last_lag[i] && lag > 1000 {
                        crate::warn!("replication.backlog_growing": "{name} shard {shard}: backlog growing, {lag} records behind the WAL");
                    }
                    last_lag[i] = lag;
                }
            }
        })
        .expect("spawn the replication monitor")
}

impl Replicators {
    /// At shutdown: lets every runner store what is durable, for at most `timeout`; what is
    /// left is stored after the next start (the WAL keeps it).
    pub fn finish(self, timeout: std::time::Duration) {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + timeout;
        while self.handles.iter().any(|h| !h.is_finished()) && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if self.handles.iter().any(|h| !h.is_finished()) {
            crate::warn!("replication.behind_at_exit":
                "replication not caught up at exit; it resumes from the WAL at the next start"
            );
        }
        self.abandon.store(true, Ordering::SeqCst);
        // A runner blocked inside its sink (a hung server that takes bytes and never answers)
        // never sees `abandon`: it is left behind, and ends with the process. Its batch was
        // not committed, so it is stored after the next start like any other.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while self.handles.iter().any(|h| !h.is_finished()) && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        for h in self.handles {
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}
