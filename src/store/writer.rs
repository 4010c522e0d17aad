//! The store writer: one thread per shard that feeds the store from the durable WAL.
//!
//! It replays each durable record through a ledger of its own (the same pure `Ledger` the
//! shard runs, with a window of payments filled from the store), and commits the rows the
//! records changed together with the LSN applied, in one transaction. Every
//! `checkpoint_interval` the commit is durable: that is the checkpoint. After a checkpoint,
//! WAL segments that end at or before it are deleted when nothing else needs them.
//!
//! The checkpoint protocol, as absences:
//! - the store is never ahead of the durable WAL (it reads only up to the durable LSN);
//! - no row is written without the LSN that produced it, in the same commit;
//! - no segment is deleted before a durable commit covers every record in it (sinks read
//!   the store's change log, not the WAL: a sink further behind than the change log keeps
//!   is re-seeded from the store, see `replication::runner`);
//! - a failed commit loses nothing: the changes stay in the writer's ledger, held in its
//!   window, and are written again by the next attempt.

use crate::domain::{AccountId, Lsn, ShardId};
use crate::ledger::command::decode_command;
use crate::ledger::effects::apply_with_effects;
use crate::ledger::state::command_now;
use crate::ledger::{Changes, Command, Ledger};
use crate::replication::source::DurableRecords;
use crate::store::reader::StoreProgress;
use crate::store::space::Space;
use crate::store::{Batch, Change, Store, StoreError};
use crate::wal::io::{prepare_spare, retire_segments_before, segment_firsts};
use crate::wal::tap::DurableTap;
use crate::wal::{recover_from, FsSource, Recovered};
use crate::{info, warn};
use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Records applied per store commit at most (bounds a commit's size and its memory).
pub const COMMIT_RECORDS_MAX: usize = 4096;
/// How often a writer looks for newly durable records: soon after it last found some, and
/// backing off to `POLL_IDLE` while there are none (an idle gateway stays idle).
const POLL: Duration = Duration::from_millis(1);
const POLL_IDLE: Duration = Duration::from_millis(20);
/// Wait between attempts after a failed commit (disk full, I/O error).
const RETRY: Duration = Duration::from_millis(200);
/// After a failure to make a spare WAL segment (disk full), how long until the next try.
const SPARE_RETRY: Duration = Duration::from_secs(60);
/// Change-log entries one commit deletes at most.
const CHANGES_PRUNE_MAX: usize = 100_000;
/// Idempotency records one `PruneIdempotency` deletes at most (the shard issues one a
/// second, so a backlog after a long stop is pruned over many).
const IDEM_PRUNE_MAX: usize = 100_000;
/// Smallest window of payments the writer keeps (an `ExpireHolds` names up to 256).
pub const WRITER_WINDOW_MIN: usize = 8192;

#[derive(Clone, Debug)]
pub struct WriterConfig {
    pub checkpoint_interval: Duration,
    /// How long durable records are gathered before one commit applies them all.
    pub commit_interval: Duration,
    /// Payments the writer's ledger holds between commits.
    pub window: usize,
    /// Retire WAL segments once a checkpoint covers them (kept as spares or deleted).
    pub recycle_wal: bool,
    /// Start each commit's write-back at once (`Store::start_writeback`).
    pub trickle_writeback: bool,
    /// The WAL's segment size: the size of the spare made ahead of need when there is none.
    pub wal_segment_bytes: u64,
    /// Each configured replication sink's stored LSN for this shard. When any sink is
    /// configured, every record's effects go to the store's change log.
    pub sinks: Vec<Arc<AtomicU64>>,
    /// The change log keeps its newest `max_retained_bytes`: a sink further behind must be
    /// re-seeded from the store.
    pub max_retained_bytes: u64,
}

/// Why recovery failed: the store itself could not be read (it may be rebuilt from the WAL),
/// or anything else (the WAL, or a write).
#[derive(Debug)]
pub enum RecoverError {
    Store(StoreError),
    Other(StoreError),
}

impl From<StoreError> for RecoverError {
    fn from(e: StoreError) -> RecoverError {
        RecoverError::Other(e)
    }
}

impl std::fmt::Display for RecoverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecoverError::Store(e) | RecoverError::Other(e) => e.fmt(f),
        }
    }
}

/// What recovery found and did.
#[derive(Clone, Debug)]
pub struct Recovery {
    pub wal: Recovered,
    /// The checkpoint the store opened at.
    pub checkpoint: Lsn,
}

pub struct StoreWriter {
    store: Arc<Store>,
    ledger: Ledger,
    wal_dir: PathBuf,
    config: WriterConfig,
    progress: Arc<StoreProgress>,
    /// Changes applied to `ledger` and not yet committed.
    unsaved: Changes,
    /// Records read from the WAL and not yet applied (kept across failed commits).
    backlog: VecDeque<(Lsn, Command)>,
    /// Effects of applied records not yet committed to the change log.
    unsaved_changes: Vec<(Lsn, Change)>,
    /// Bytes the change log holds (committed, plus `unsaved_changes` once committed).
    changes_bytes: u64,
    /// Free space: no commit is attempted while it is low.
    space: Option<Arc<Space>>,
    applied: Lsn,
    committed: Lsn,
    last_checkpoint: Instant,
    /// Accounts changed since the accounts table was last written (`commit`).
    deferred_accounts: BTreeSet<AccountId>,
    /// When a spare WAL segment may next be made (after a failure).
    next_spare_attempt: Instant,
    /// `start_writeback` failed last time (warned once until it works again).
    writeback_failing: bool,
    last_commit: Instant,
}

impl StoreWriter {
    /// Opens the shard's state: the store as of its checkpoint, then every WAL record after
    /// it, applied and committed durably. Returns the writer (positioned at the end of the
    /// log) and what the WAL writer needs to continue the log.
    pub fn recover(
        store: Arc<Store>,
        shard: ShardId,
        shards: u16,
        wal_dir: &Path,
        config: WriterConfig,
        progress: Arc<StoreProgress>,
    ) -> Result<(StoreWriter, Recovery), RecoverError> {
        let checkpoint = store.applied().map_err(RecoverError::Store)?;
        let changes_bytes = store.changes_bytes().map_err(RecoverError::Store)?;
        let window = config.window.max(WRITER_WINDOW_MIN);
        let mut ledger = store
            .load_ledger(shard, shards, window)
            .map_err(RecoverError::Store)?;
        ledger.track_changes();
        ledger.set_stored(checkpoint);
        check_wal_covers(wal_dir, checkpoint)?;
        let mut writer = StoreWriter {
            store,
            ledger,
            wal_dir: wal_dir.to_path_buf(),
            config,
            progress,
            unsaved: Changes::default(),
            backlog: VecDeque::new(),
            unsaved_changes: Vec::new(),
            changes_bytes,
            space: None,
            applied: checkpoint,
            committed: checkpoint,
            last_checkpoint: Instant::now(),
            deferred_accounts: BTreeSet::new(),
            next_spare_attempt: Instant::now(),
            writeback_failing: false,
            last_commit: Instant::now(),
        };
        let mut failure: Option<StoreError> = None;
        let mut pending: Vec<(Lsn, Command)> = Vec::new();
        let from = Lsn(checkpoint.0 + 1);
        let recovered = recover_from(&FsSource::new(wal_dir), from, |lsn, kind, version, p| {
            if failure.is_some() {
                return;
            }
            match decode_command(kind, version, p) {
                Ok(cmd) => pending.push((lsn, cmd)),
                Err(e) => {
                    failure = Some(StoreError(format!(
                        "record {} in {}: {e}",
                        lsn.0,
                        wal_dir.display()
                    )))
                }
            }
            if pending.len() >= COMMIT_RECORDS_MAX {
                writer.backlog.extend(pending.drain(..));
                if let Err(e) = writer.apply_backlog(false) {
                    failure = Some(e);
                }
            }
        })
        .map_err(|e| {
            StoreError(format!(
                "shard {}: {e}; inspect with `corepay wal verify {}`",
                shard.0,
                wal_dir.display()
            ))
        })?;
        if let Some(e) = failure {
            return Err(e.into());
        }
        writer.backlog.extend(pending);
        writer.apply_backlog(true)?;
        writer.checkpoint_now()?;
        Ok((
            writer,
            Recovery {
                wal: recovered,
                checkpoint,
            },
        ))
    }

    /// The writer's ledger: the shard's working ledger is a copy of it after recovery.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Sizes the writer's tables of what is provisioned (`Ledger::reserve`).
    pub fn reserve(&mut self, accounts: usize, merchants: usize) {
        self.ledger.reserve(accounts, merchants);
    }

    /// Runs the writer on its own thread until `stop` is set and everything durable is in
    /// the store, checkpointed. While free space is low it applies and commits nothing.
    /// Durable records come from `tap` (handed over in memory by the shard's WAL writer) and
    /// from the segments for what the tap dropped.
    pub fn spawn(
        mut self,
        durable: Arc<AtomicU64>,
        tap: Option<Arc<DurableTap>>,
        stop: Arc<AtomicBool>,
        space: Arc<Space>,
        name: String,
        cores: Vec<usize>,
    ) -> std::thread::JoinHandle<()> {
        self.space = Some(space);
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                crate::affinity::pin_thread(&cores, "a store writer");
                self.run(&durable, tap, &stop)
            })
            .expect("spawn the store writer")
    }

    fn run(mut self, durable: &AtomicU64, tap: Option<Arc<DurableTap>>, stop: &AtomicBool) {
        let mut tail = DurableRecords::at(&self.wal_dir, Lsn(self.applied.0 + 1), tap);
        let mut failing = false;
        let mut poll = POLL;
        loop {
            let durable_lsn = Lsn(durable.load(Ordering::Acquire));
            let stopping = stop.load(Ordering::Acquire);
            let room = COMMIT_RECORDS_MAX.saturating_sub(self.backlog.len());
            if room > 0 && self.unsaved_is_empty() {
                let mut bad = None;
                let backlog = &mut self.backlog;
                let read = tail.read(durable_lsn, room, |lsn, kind, v, p| {
                    match decode_command(kind, v, p) {
                        Ok(cmd) => backlog.push_back((lsn, cmd)),
                        Err(e) => bad = Some(format!("record {}: {e}", lsn.0)),
                    }
                });
                if let Err(e) = read {
                    bad = Some(format!("reading {}: {e}", self.wal_dir.display()));
                }
                self.progress
                    .wal_records_read
                    .store(tail.from_disk(), Ordering::Relaxed);
                if let Some(reason) = bad {
                    // The shard wrote these records itself: failing to read them back is a
                    // broken invariant, and a restart recovers from the last checkpoint.
                    panic!("store writer: {reason}");
                }
            }
            let checkpoint_due = self.last_checkpoint.elapsed() >= self.config.checkpoint_interval
                && self.applied > Lsn(self.progress.checkpoint.load(Ordering::Acquire));
            let space_low = self.space.as_ref().is_some_and(|s| s.low());
            let idle = self.backlog.is_empty() && self.unsaved_is_empty() && !checkpoint_due;
            if idle || space_low {
                if stopping && (space_low || self.applied >= durable_lsn) {
                    if !space_low {
                        if let Err(e) = self.checkpoint_now() {
                            warn!("store.final_checkpoint_failed": "store writer: final checkpoint failed: {e}");
                        }
                    }
                    return;
                }
                std::thread::sleep(if space_low { RETRY } else { poll });
                poll = (poll * 2).min(POLL_IDLE);
                continue;
            }
            // Gather records for one commit: each commit rewrites every page it touches.
            let commit_due = checkpoint_due
                || stopping
                || !self.unsaved_is_empty()
                || self.backlog.len() >= COMMIT_RECORDS_MAX
                || self.last_commit.elapsed() >= self.config.commit_interval;
            if !commit_due {
                std::thread::sleep(POLL);
                continue;
            }
            poll = POLL;
            match self.apply_backlog(checkpoint_due) {
                Ok(()) => {
                    if failing {
                        info!("store.writing_again": "store {}: writing again", self.store.path().display());
                        failing = false;
                    }
                }
                Err(e) => {
                    self.progress.failures.fetch_add(1, Ordering::Relaxed);
                    if !failing {
                        warn!("store.commit_failed":
                            "{e}; retrying every {} ms (new work is shed while memory is full \
                             of changes the store has not applied)",
                            RETRY.as_millis()
                        );
                        failing = true;
                    }
                    if stopping {
                        return;
                    }
                    std::thread::sleep(RETRY);
                }
            }
        }
    }

    fn unsaved_is_empty(&self) -> bool {
        self.applied == self.committed
    }

    /// Applies the backlog and commits it (durably when `durable`). On error, what was
    /// applied stays in the ledger and `unsaved`, what was not stays in the backlog, and the
    /// next call goes on from there.
    fn apply_backlog(&mut self, durable: bool) -> Result<(), StoreError> {
        let store = self.store.clone();
        let mut batch = store.begin()?;
        while let Some((lsn, cmd)) = self.backlog.front().cloned() {
            assert_eq!(
                lsn.0,
                self.applied.0 + 1,
                "records are applied in order, once"
            );
            if !self.prepare(&batch, &cmd)? {
                // A set of the window is full of uncommitted changes: commit, then retry.
                self.commit(batch, false)?;
                batch = store.begin()?;
                assert!(self.prepare(&batch, &cmd)?, "a committed window has room");
            }
            if self.config.sinks.is_empty() {
                self.ledger.apply(lsn, &cmd);
            } else {
                let (_, effects) = apply_with_effects(&mut self.ledger, lsn, &cmd);
                let time = command_now(&cmd);
                self.unsaved_changes.push((lsn, Change { time, effects }));
            }
            self.applied = lsn;
            self.backlog.pop_front();
            merge(&mut self.unsaved, self.ledger.take_changes());
            if let Command::PruneIdempotency { before } = cmd {
                // Store rows only; if this commit fails, the next prune (a second later)
                // deletes everything older than its own `before`.
                batch.prune_idem(before, IDEM_PRUNE_MAX)?;
            }
        }
        self.commit(batch, durable)
    }

    /// Loads the payments (and the earlier transfer) `cmd` touches; false when the window
    /// has no room for them.
    fn prepare(&mut self, batch: &Batch<'_>, cmd: &Command) -> Result<bool, StoreError> {
        if let Some(key) = Ledger::needs_transfer(cmd) {
            if !self.ledger.transfer_held(&key) {
                if let Some(view) = batch.transfer(&key)? {
                    if self.ledger.load_transfer(key, view).is_err() {
                        return Ok(false);
                    }
                }
            }
        }
        let needed: Vec<u64> = self.ledger.needs_payments(cmd).collect();
        for seq in needed {
            if self.ledger.payment_held(seq) {
                continue;
            }
            let payment = batch.payment(seq)?.ok_or_else(|| {
                StoreError(format!(
                    "store {}: payment {seq} exists but is not stored",
                    self.store.path().display()
                ))
            })?;
            if self.ledger.load_payment(seq, payment).is_err() {
                return Ok(false);
            }
        }
        Ok(self.ledger.has_room_for(cmd))
    }

    fn commit(&mut self, mut batch: Batch<'_>, durable: bool) -> Result<(), StoreError> {
        // Account rows wait for a checkpoint (or a reader that needs them, `export`/`seed`):
        // a record changes a random account, and a B-tree commit rewrites its whole leaf, so
        // writing them every commit cost a random page per record. Bounded by what is
        // provisioned; recovery replays the WAL after the checkpoint, which wrote them all.
        self.deferred_accounts
            .extend(self.unsaved.accounts.iter().copied());
        let write_accounts = durable || self.store.take_accounts_wanted();
        let none = BTreeSet::new();
        let accounts = if write_accounts {
            &self.deferred_accounts
        } else {
            &none
        };
        batch.write(&self.ledger, &self.unsaved, accounts)?;
        let mut bytes = self.changes_bytes;
        for (lsn, change) in &self.unsaved_changes {
            bytes += batch.put_change(*lsn, change)?;
        }
        if !self.config.sinks.is_empty() {
            // The change log keeps its newest bytes, stored by every sink or not.
            if bytes > self.config.max_retained_bytes {
                let excess = bytes - self.config.max_retained_bytes;
                bytes -= batch.prune_oldest_changes(excess, CHANGES_PRUNE_MAX)?;
            }
            batch.set_changes_bytes(bytes)?;
        }
        let started = Instant::now();
        if let Err(e) = batch.commit(&self.ledger, self.applied, durable, write_accounts) {
            if write_accounts && !durable {
                // A reader asked: ask again with the next commit.
                self.store.want_accounts();
            }
            return Err(e);
        }
        let micros = started.elapsed().as_micros() as u64;
        let p = &self.progress;
        let (count, total, max) = if durable {
            (
                &p.checkpoints,
                &p.checkpoint_micros,
                &p.checkpoint_micros_max,
            )
        } else {
            (&p.commits, &p.commit_micros, &p.commit_micros_max)
        };
        count.fetch_add(1, Ordering::Relaxed);
        total.fetch_add(micros, Ordering::Relaxed);
        max.fetch_max(micros, Ordering::Relaxed);
        if write_accounts {
            self.deferred_accounts.clear();
        }
        if !durable && self.config.trickle_writeback {
            // Only an optimisation: the checkpoint's fsync writes what this did not.
            match self.store.start_writeback() {
                Ok(()) => self.writeback_failing = false,
                Err(e) if !self.writeback_failing => {
                    warn!("store.writeback_failed": "{e} (the next checkpoint writes it all)");
                    self.writeback_failing = true;
                }
                Err(_) => {}
            }
        }
        self.unsaved = Changes::default();
        self.unsaved_changes.clear();
        self.changes_bytes = bytes;
        self.committed = self.applied;
        self.last_commit = Instant::now();
        self.ledger.set_stored(self.applied);
        self.progress
            .applied
            .store(self.applied.0, Ordering::Release);
        if durable {
            self.checkpointed();
        }
        Ok(())
    }

    /// Makes everything applied durable in the store now.
    fn checkpoint_now(&mut self) -> Result<(), StoreError> {
        let store = self.store.clone();
        let batch = store.begin()?;
        self.commit(batch, true)
    }

    fn checkpointed(&mut self) {
        self.last_checkpoint = Instant::now();
        self.progress
            .checkpoint
            .store(self.committed.0, Ordering::Release);
        if !self.config.recycle_wal {
            return;
        }
        match retire_segments_before(&self.wal_dir, self.committed) {
            Ok(retired) => {
                self.progress
                    .segments_deleted
                    .fetch_add(retired.deleted, Ordering::Relaxed);
                self.progress
                    .segments_recycled
                    .fetch_add(retired.recycled, Ordering::Relaxed);
            }
            Err(e) => warn!("wal.retire_failed":
                "wal {}: retiring checkpointed segments: {e}",
                self.wal_dir.display()
            ),
        }
        // The WAL's next segment should be a rename, even before one was retired. A failure
        // (disk full) is retried a minute later: the WAL then zero-fills, as it can.
        if Instant::now() >= self.next_spare_attempt {
            match prepare_spare(&self.wal_dir, self.config.wal_segment_bytes) {
                Ok(made) => {
                    // Counted, not logged: at 3,000/s it happens about twice a minute.
                    if made {
                        self.progress
                            .spares_prepared
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    self.next_spare_attempt = Instant::now() + SPARE_RETRY;
                    warn!("wal.spare_failed":
                        "wal {}: making a spare segment: {e} (retried in {} s)",
                        self.wal_dir.display(),
                        SPARE_RETRY.as_secs()
                    );
                }
            }
        }
    }
}

/// Adds `more` to `into` (keys are written once, as the ledger holds them at commit).
fn merge(into: &mut Changes, more: Changes) {
    into.accounts.extend(more.accounts);
    into.cards.extend(more.cards);
    into.merchants.extend(more.merchants);
    into.payments.extend(more.payments);
    into.idem_added.extend(more.idem_added);
    into.transfers.extend(more.transfers);
    into.outbox_added.extend(more.outbox_added);
    into.outbox_removed.extend(more.outbox_removed);
}

/// Refuses to start when the WAL's oldest segment begins after the store's checkpoint + 1:
/// the records in between are in neither.
fn check_wal_covers(dir: &Path, checkpoint: Lsn) -> Result<(), StoreError> {
    let firsts = segment_firsts(dir).map_err(|e| StoreError(format!("{}: {e}", dir.display())))?;
    match firsts.first() {
        Some(&first) if first.0 > checkpoint.0 + 1 => Err(StoreError(format!(
            "wal {}: the oldest segment begins at lsn {} but the store's checkpoint is lsn {}: \
             records {}..{} are in neither",
            dir.display(),
            first.0,
            checkpoint.0,
            checkpoint.0 + 1,
            first.0 - 1
        ))),
        _ => Ok(()),
    }
}
