//! One thread per (shard, sink): read each record's effects from the shard's store change log
//! (written by the store writer from the durable WAL, in order, without holes) and hand
//! batches to the sink, resuming exactly at the sink's stored progress after any failure.
//! No replica state: memory does not grow with history.
//!
//! A sink that fails is retried with exponential back-off and jitter (the breaker is open
//! while it waits); the gateway never waits for it. Lag is logged while it grows.

use crate::domain::{Lsn, ShardId};
use crate::replication::{Record, Seed, Sink, SinkError};
use crate::store::reader::StoreProgress;
use crate::store::Store;
use crate::{info, warn};
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
    /// Last LSN the sink has stored (shared with the store writer, which keeps the change log
    /// until every sink has stored it).
    pub stored: Arc<AtomicU64>,
    /// Set while the sink needs records the change log no longer has (until a re-seed
    /// from the store succeeds).
    pub gap: AtomicBool,
    /// Re-seeds from the store completed.
    pub reseeds: AtomicU64,
    /// Consecutive failures (0 = healthy).
    pub failures: AtomicU64,
    /// Wall-clock millis when the batch now being stored was handed to the sink (0 = none):
    /// a sink blocked in a hung server cannot report itself, so the monitor watches this.
    pub apply_started: AtomicU64,
    /// Age (ms) of the oldest record read for the sink and not yet stored by it (0: none
    /// waiting): how far behind in time, beside `stored`'s distance in records.
    pub lag_millis: AtomicU64,
}

pub struct Runner {
    pub shard: ShardId,
    /// The shard's store: its change log is what this runner replicates.
    pub store: Arc<Store>,
    /// The store's progress (applied LSN).
    pub progress: Arc<StoreProgress>,
    /// The shard's durable LSN, published by its executor (for lag).
    pub durable: Arc<AtomicU64>,
    /// Set at shutdown: the runner exits once it has stored everything the store applied,
    /// or at once when `abandon` is also set.
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
                crate::affinity::pin_thread(&self.cores, "a replication thread");
                self.run(sink.as_mut())
            })
            .expect("spawn a replication thread")
    }

    fn applied(&self) -> Lsn {
        Lsn(self.progress.applied.load(Ordering::Acquire))
    }

    fn run(self, sink: &mut dyn Sink) {
        let mut pending: Vec<Record> = Vec::new();
        // The next LSN to read from the change log.
        let mut next = Lsn(1);
        let mut connected = false;
        let mut backoff = BACKOFF_MIN;
        let mut last_lag_log = Instant::now();
        let mut rng = self.shard.0 as u64 + 1;
        loop {
            if self.abandon.load(Ordering::SeqCst) {
                return;
            }
            let durable = Lsn(self.durable.load(Ordering::SeqCst));
            if self.stop.load(Ordering::SeqCst) && pending.is_empty() && next > self.applied() {
                return;
            }
            if !connected {
                match sink.progress(self.shard) {
                    Ok(stored) => {
                        if self.status.failures.swap(0, Ordering::SeqCst) > 0 {
                            info!("replication.sink_reachable":
                                "{} shard {}: reachable again at lsn {}",
                                sink.name(),
                                self.shard,
                                stored.0
                            );
                        }
                        pending.clear();
                        next = Lsn(stored.0 + 1);
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
            if pending.len() < self.batch_records && next <= self.applied() {
                let room = self.batch_records - pending.len();
                match self.read(next, room, &mut pending) {
                    Ok(Some(after)) => next = after,
                    Ok(None) => {
                        match self.reseed(sink, next) {
                            Ok(at) => {
                                pending.clear();
                                next = Lsn(at.0 + 1);
                            }
                            Err(e) => {
                                connected = false;
                                self.fail(sink.name(), &e, &mut backoff, &mut rng);
                            }
                        }
                        continue;
                    }
                    Err(e) => {
                        warn!("replication.change_log_read_failed":
                            "{} shard {}: reading the change log: {e}",
                            sink.name(),
                            self.shard
                        );
                        std::thread::sleep(BACKOFF_MAX);
                        continue;
                    }
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
            let oldest = pending.first().and_then(|r| r.time);
            let age = oldest.map_or(0, |t| crate::gateway::system_clock().0.saturating_sub(t.0));
            self.status.lag_millis.store(age, Ordering::Relaxed);
            if lag > LAG_LOG_RECORDS && last_lag_log.elapsed() > LAG_LOG_EVERY {
                last_lag_log = Instant::now();
                let seconds = age as f64 / 1000.0;
                info!("replication.lag":
                    "{} shard {}: {lag} records ({seconds:.1} s) behind the WAL",
                    sink.name(),
                    self.shard
                );
            }
        }
    }

    /// Appends up to `max` records from `from` on; returns the LSN after the last one, or
    /// `None` when `from` is no longer (or never was) in the change log.
    fn read(&self, from: Lsn, max: usize, out: &mut Vec<Record>) -> Result<Option<Lsn>, String> {
        let changes = self.store.changes(from, max).map_err(|e| e.to_string())?;
        match changes.first() {
            Some((lsn, _)) if *lsn == from => {}
            _ => return Ok(None),
        }
        let mut after = from;
        for (lsn, change) in changes {
            assert_eq!(lsn, after, "the change log has no holes");
            out.push(Record {
                shard: self.shard,
                lsn,
                time: change.time,
                effects: change.effects,
            });
            after = Lsn(lsn.0 + 1);
        }
        Ok(Some(after))
    }

    /// The sink needs `from`, which the change log no longer has (it fell further behind than
    /// `replication.max_retained_bytes`, or was configured after those records were written):
    /// copies the shard's whole state from the store, as of the store's applied LSN, into the
    /// sink, and returns that LSN (replication goes on after it). Says so in the log, before
    /// and after, and in the status (`gap` while it runs, `reseeds` when done).
    fn reseed(&self, sink: &mut dyn Sink, from: Lsn) -> Result<Lsn, String> {
        let name = sink.name();
        self.status.gap.store(true, Ordering::SeqCst);
        let oldest = self.store.oldest_change().ok().flatten();
        let started = Instant::now();
        let mut reader = self.store.seed().map_err(|e| e.to_string())?;
        crate::warn!("replication.reseed_started":
            "{name} shard {}: needs records from lsn {} but the change log {}; re-seeding it \
             from the store: a full copy as of lsn {} ({} accounts), then the change log from \
             there. The gateway keeps serving",
            self.shard,
            from.0,
            oldest.map_or("is empty".to_string(), |o| format!("begins at lsn {}", o.0)),
            reader.at.0,
            reader.accounts.len()
        );
        let at = reader.at;
        assert!(
            at.0 + 1 >= from.0,
            "a gap is only found below what the store applied"
        );
        let positions = reader
            .totals
            .iter()
            .map(|(c, t)| (*c, t.treasury, t.sent - t.received))
            .collect();
        let accounts = std::mem::take(&mut reader.accounts);
        let cards = std::mem::take(&mut reader.cards);
        let merchants = std::mem::take(&mut reader.merchants);
        let mut payments_read = 0u64;
        let mut next_payments = |n: usize| {
            let chunk = reader.payments(n).map_err(|e| SinkError(e.to_string()))?;
            payments_read += chunk.len() as u64;
            Ok(chunk)
        };
        let mut seed = Seed {
            shard: self.shard,
            at,
            missing_from: from,
            time: crate::gateway::system_clock(),
            accounts,
            cards,
            merchants,
            positions,
            payments: &mut next_payments,
        };
        self.status
            .apply_started
            .store(crate::gateway::system_clock().0, Ordering::SeqCst);
        let result = sink.reseed(&mut seed);
        self.status.apply_started.store(0, Ordering::SeqCst);
        let accounts = seed.accounts.len();
        drop(seed);
        result.map_err(|e| format!("re-seeding: {e}"))?;
        self.status.stored.store(at.0, Ordering::SeqCst);
        self.status.gap.store(false, Ordering::SeqCst);
        self.status.reseeds.fetch_add(1, Ordering::SeqCst);
        info!("replication.reseeded":
            "{name} shard {}: re-seeded as of lsn {} ({accounts} accounts, {payments_read} \
             payments) in {:.1} s; records {}..={} were summed, not stored one by one; \
             replicating from lsn {}",
            self.shard,
            at.0,
            started.elapsed().as_secs_f64(),
            from.0,
            at.0,
            at.0 + 1
        );
        Ok(at)
    }

    /// Counts a failure and sleeps the back-off (with jitter), doubling it up to the cap.
    fn fail(&self, sink: &str, error: &str, backoff: &mut Duration, rng: &mut u64) {
        let failures = self.status.failures.fetch_add(1, Ordering::SeqCst) + 1;
        if failures == 1 || failures.is_power_of_two() {
            let lag = self
                .durable
                .load(Ordering::SeqCst)
                .saturating_sub(self.status.stored.load(Ordering::SeqCst));
            warn!("replication.sink_unavailable":
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
