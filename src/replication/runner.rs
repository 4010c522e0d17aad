//! One thread per (shard, sink): tail the shard's durable WAL, replay it through a replica
//! ledger to learn each record's effects, and hand batches to the sink, resuming exactly at
//! the sink's stored progress after any failure.
//!
//! A sink that fails is retried with exponential back-off and jitter (the breaker is open
//! while it waits); the gateway never waits for it. Lag is logged while it grows.

use crate::domain::{Lsn, ShardId};
use crate::ledger::command::decode_command;
use crate::ledger::effects::apply_with_effects;
use crate::ledger::state::command_now;
use crate::ledger::Ledger;
use crate::replication::source::WalTail;
use crate::replication::{Record, Sink};
use crate::{info, warn};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shortest and longest wait before retrying a failed sink.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often an idle runner looks for new durable records.
const POLL: Duration = Duration::from_millis(2);
/// How often lag is logged while it is above `LAG_LOG_RECORDS`.
const LAG_LOG_EVERY: Duration = Duration::from_secs(10);
const LAG_LOG_RECORDS: u64 = 10_000;

/// What a runner reports (read by the server's drain and by logs).
#[derive(Default)]
pub struct SinkStatus {
    /// Last LSN the sink has stored.
    pub stored: AtomicU64,
    /// Consecutive failures (0 = healthy).
    pub failures: AtomicU64,
    /// Wall-clock millis when the batch now being stored was handed to the sink (0 = none):
    /// a sink blocked in a hung server cannot report itself, so the monitor watches this.
    pub apply_started: AtomicU64,
}

pub struct Runner {
    pub shard: ShardId,
    pub shards: u16,
    pub wal_dir: PathBuf,
    /// The shard's durable LSN, published by its executor.
    pub durable: Arc<AtomicU64>,
    /// Set at shutdown: the runner exits once it has stored everything durable, or at once
    /// when `abandon` is also set.
    pub stop: Arc<AtomicBool>,
    pub abandon: Arc<AtomicBool>,
    pub batch_records: usize,
    pub status: Arc<SinkStatus>,
    /// CPUs this thread may run on (empty = any).
    pub cores: Vec<usize>,
}

impl Runner {
    /// Starts the runner's thread.
    pub fn spawn(self, mut sink: Box<dyn Sink>) -> std::thread::JoinHandle<()> {
        let name = format!("corepay-{}-{}", sink.name(), self.shard.0);
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                pin_to(&self.cores);
                self.run(sink.as_mut())
            })
            .expect("spawn a replication thread")
    }

    fn run(self, sink: &mut dyn Sink) {
        let mut replica = Replica::new(self.shard, self.shards, &self.wal_dir);
        let mut pending: Vec<Record> = Vec::new();
        let mut connected = false;
        let mut backoff = BACKOFF_MIN;
        let mut last_lag_log = Instant::now();
        let mut rng = self.shard.0 as u64 + 1;
        loop {
            if self.abandon.load(Ordering::SeqCst) {
                return;
            }
            let durable = Lsn(self.durable.load(Ordering::SeqCst));
            if self.stop.load(Ordering::SeqCst)
                && pending.is_empty()
                && replica.applied() >= durable
            {
                return;
            }
            if !connected {
                match sink.progress(self.shard) {
                    Ok(stored) => {
                        if self.status.failures.swap(0, Ordering::SeqCst) > 0 {
                            info!(
                                "{} shard {}: reachable again at lsn {}",
                                sink.name(),
                                self.shard,
                                stored.0
                            );
                        }
                        replica.resume_at(stored, &mut pending);
                        self.status.stored.store(stored.0, Ordering::SeqCst);
                        connected = true;
                        backoff = BACKOFF_MIN;
                    }
                    Err(e) => {
                        self.fail(sink.name(), &e.to_string(), &mut backoff, &mut rng);
                        continue;
                    }
                }
            }
            if pending.len() < self.batch_records {
                let room = self.batch_records - pending.len();
                if let Err(e) = replica.read(durable, room, &mut pending) {
                    warn!("{} shard {}: reading the WAL: {e}", sink.name(), self.shard);
                    std::thread::sleep(BACKOFF_MAX);
                    continue;
                }
            }
            if pending.is_empty() {
                std::thread::sleep(POLL);
                continue;
            }
            self.status
                .apply_started
                .store(crate::gateway::system_clock().0, Ordering::SeqCst);
            let applied = sink.apply(self.shard, &pending);
            self.status.apply_started.store(0, Ordering::SeqCst);
            match applied {
                Ok(()) => {
                    let last = pending.last().expect("non-empty").lsn;
                    self.status.stored.store(last.0, Ordering::SeqCst);
                    pending.clear();
                }
                Err(e) => {
                    connected = false;
                    self.fail(sink.name(), &e.to_string(), &mut backoff, &mut rng);
                }
            }
            let lag = durable
                .0
                .saturating_sub(self.status.stored.load(Ordering::SeqCst));
            if lag > LAG_LOG_RECORDS && last_lag_log.elapsed() > LAG_LOG_EVERY {
                last_lag_log = Instant::now();
                let oldest = pending.first().and_then(|r| r.time);
                let seconds = oldest.map_or(0.0, |t| {
                    crate::gateway::system_clock().0.saturating_sub(t.0) as f64 / 1000.0
                });
                info!(
                    "{} shard {}: {lag} records ({seconds:.1} s) behind the WAL",
                    sink.name(),
                    self.shard
                );
            }
        }
    }

    /// Counts a failure and sleeps the back-off (with jitter), doubling it up to the cap.
    fn fail(&self, sink: &str, error: &str, backoff: &mut Duration, rng: &mut u64) {
        let failures = self.status.failures.fetch_add(1, Ordering::SeqCst) + 1;
        if failures == 1 || failures.is_power_of_two() {
            let lag = self
                .durable
                .load(Ordering::SeqCst)
                .saturating_sub(self.status.stored.load(Ordering::SeqCst));
            warn!(
                "{sink} shard {}: unavailable ({error}); {failures} failures, {lag} records waiting; \
                 the gateway keeps serving",
                self.shard
            );
        }
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        let jitter = Duration::from_micros(*rng % (backoff.as_micros() as u64 / 2 + 1));
        let deadline = Instant::now() + *backoff + jitter;
        while Instant::now() < deadline && !self.abandon.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10).min(*backoff));
        }
        *backoff = (*backoff * 2).min(BACKOFF_MAX);
    }
}

/// A replica of one shard's ledger, fed from its WAL.
struct Replica {
    shard: ShardId,
    shards: u16,
    dir: PathBuf,
    ledger: Ledger,
    tail: WalTail,
}

impl Replica {
    fn new(shard: ShardId, shards: u16, dir: &std::path::Path) -> Replica {
        Replica {
            shard,
            shards,
            dir: dir.to_path_buf(),
            ledger: Ledger::new(shard, shards),
            tail: WalTail::new(dir),
        }
    }

    /// The last LSN applied to the replica.
    fn applied(&self) -> Lsn {
        Lsn(self.tail.next_lsn().0 - 1)
    }

    /// Makes `pending` hold exactly the records after `stored` that the replica has applied,
    /// replaying (without emitting) up to `stored` when the sink is ahead of the replica and
    /// starting over when it is behind what `pending` can cover.
    fn resume_at(&mut self, stored: Lsn, pending: &mut Vec<Record>) {
        let covered_from = pending.first().map_or(self.tail.next_lsn(), |r| r.lsn);
        if stored.0 + 1 < covered_from.0 {
            // The sink lost records we already passed (it was reset): replay from the start.
            *self = Replica::new(self.shard, self.shards, &self.dir);
            pending.clear();
        }
        pending.retain(|r| r.lsn > stored);
        while self.applied() < stored {
            let mut skipped = Vec::new();
            match self.read(stored, usize::MAX, &mut skipped) {
                Ok(0) | Err(_) => break, // the sink is ahead of what is readable: wait
                Ok(_) => {}
            }
            pending.extend(skipped.into_iter().filter(|r| r.lsn > stored));
        }
    }

    /// Applies up to `max` more durable records, appending their effects to `out`.
    fn read(&mut self, durable: Lsn, max: usize, out: &mut Vec<Record>) -> std::io::Result<usize> {
        let (ledger, shard) = (&mut self.ledger, self.shard);
        let mut bad: Option<String> = None;
        let n = self
            .tail
            .read(durable, max, |lsn, kind, version, payload| {
                if bad.is_some() {
                    return;
                }
                match decode_command(kind, version, payload) {
                    Ok(cmd) => {
                        let (_, effects) = apply_with_effects(ledger, lsn, &cmd);
                        out.push(Record {
                            shard,
                            lsn,
                            time: command_now(&cmd),
                            effects,
                        });
                    }
                    Err(e) => bad = Some(format!("lsn {}: {e}", lsn.0)),
                }
            })?;
        match bad {
            Some(e) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            None => Ok(n),
        }
    }
}

/// Restricts the calling thread to `cores` (nothing when empty).
fn pin_to(cores: &[usize]) {
    if cores.is_empty() {
        return;
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it for indices
    // below CPU_SETSIZE, which the check guarantees; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cores.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            warn!(
                "cannot pin a replication thread to cores {cores:?}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}
