//! The group-commit writer.
//!
//! `append` encodes a record straight into the open batch of an in-memory buffer and
//! returns its LSN without awaiting. One flusher task (`run_flusher`) takes everything
//! pending, writes it batch by batch (one write + one fdatasync per batch) and publishes
//! the new durable LSN to `wait_durable`. While a write+fdatasync is in flight, new
//! appends accumulate and go together in the next batch: that is the group commit.
//!
//! Invariants (asserted):
//! - LSNs are assigned densely and in order; `durable_lsn <= last_lsn`.
//! - Batches are written in LSN order at BLOCK-aligned, strictly increasing offsets and
//!   are never rewritten.
//! - At most one batch is written but not yet synced, so a power loss can tear only the
//!   last batch of the log (what lets recovery tell a torn tail from corruption).
//! - After a failed write or fdatasync nothing is acknowledged again (poison): the page
//!   cache may have dropped the data, so a later successful fdatasync proves nothing.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use event_listener::Event;

use super::error::WalError;
use super::format::{
    padded, parse_segment_name, record_bytes, segment_name, BatchEncoder, EncodedBatch,
    BATCH_BYTES_MAX, BATCH_HEADER_BYTES, BLOCK, RECORD_HEADER_BYTES, RECORD_PAYLOAD_MAX,
    SEGMENT_BYTES_MIN,
};
use super::io::{SegmentDir, SegmentFile};
use super::reader::Recovered;
use super::tap::DurableTap;
use crate::domain::Lsn;

/// What "durable" means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// Every batch is followed by fdatasync before its records are reported durable. A
    /// record whose `wait_durable` returned survives power loss (given a disk that honours
    /// flushes).
    Fdatasync,
    /// Benchmarks only: no fdatasync. `wait_durable` returns once the write completed, so
    /// acknowledged records can be lost on power loss (not on a process crash: O_DIRECT
    /// writes have left the process).
    None,
}

#[derive(Clone, Debug)]
pub struct WalConfig {
    /// Size of every new segment; a multiple of BLOCK, at least `SEGMENT_BYTES_MIN`.
    pub segment_bytes: u64,
    pub sync: SyncMode,
    /// Bound on the unflushed buffer (padded bytes); `append` answers `Backpressure`
    /// beyond it. At least one maximal record (about 68 KiB).
    pub max_pending_bytes: usize,
}

impl Default for WalConfig {
    fn default() -> WalConfig {
        WalConfig {
            segment_bytes: 64 << 20,
            sync: SyncMode::Fdatasync,
            max_pending_bytes: 8 << 20,
        }
    }
}

/// Padded size of a batch holding one maximal record.
const RECORD_BATCH_MAX: usize =
    padded(BATCH_HEADER_BYTES + RECORD_HEADER_BYTES + RECORD_PAYLOAD_MAX);
const _: () = assert!(RECORD_BATCH_MAX <= BATCH_BYTES_MAX);
const _: () = assert!(RECORD_BATCH_MAX as u64 <= SEGMENT_BYTES_MIN);

impl WalConfig {
    /// Checks the relations between the fields; `WalWriter::open` panics on a config that
    /// fails this, so configuration loading should call it first.
    pub fn validate(&self) -> Result<(), String> {
        if self.segment_bytes % BLOCK as u64 != 0 {
            return Err(format!(
                "wal segment_bytes {} is not a multiple of {BLOCK}",
                self.segment_bytes
            ));
        }
        if self.segment_bytes < SEGMENT_BYTES_MIN {
            return Err(format!(
                "wal segment_bytes {} is below the minimum {SEGMENT_BYTES_MIN}",
                self.segment_bytes
            ));
        }
        if self.max_pending_bytes < RECORD_BATCH_MAX {
            return Err(format!(
                "wal max_pending_bytes {} is below one maximal record ({RECORD_BATCH_MAX})",
                self.max_pending_bytes
            ));
        }
        Ok(())
    }

    /// The largest batch the writer builds: it must fit an empty segment.
    fn batch_limit(&self) -> usize {
        BATCH_BYTES_MAX.min(self.segment_bytes as usize)
    }
}

/// Counters since `open`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalStats {
    pub batches: u64,
    /// Records written (and synced, with `SyncMode::Fdatasync`).
    pub records: u64,
    pub bytes_written: u64,
    pub syncs: u64,
    pub segments_created: u64,
    /// Of `segments_created`, those that were recycled spares (no zero-fill).
    pub segments_reused: u64,
    /// Padded size of the last batch written.
    pub last_batch_bytes: u64,
    /// fdatasync latency (µs).
    pub sync_micros: crate::metrics::Buckets,
    /// Records per batch.
    pub batch_records: crate::metrics::Buckets,
}

impl Default for WalStats {
    fn default() -> WalStats {
        WalStats {
            batches: 0,
            records: 0,
            bytes_written: 0,
            syncs: 0,
            segments_created: 0,
            segments_reused: 0,
            last_batch_bytes: 0,
            sync_micros: crate::metrics::Buckets::new(crate::metrics::TIME_BOUNDS_MICROS),
            batch_records: crate::metrics::Buckets::new(crate::metrics::BATCH_BOUNDS),
        }
    }
}

/// The write-ahead log of one shard. Cheap to clone; all clones are the same log.
pub struct WalWriter<D: SegmentDir> {
    inner: Rc<Inner<D>>,
}

impl<D: SegmentDir> Clone for WalWriter<D> {
    fn clone(&self) -> Self {
        WalWriter {
            inner: Rc::clone(&self.inner),
        }
    }
}

struct Inner<D: SegmentDir> {
    dir: D,
    config: WalConfig,
    state: RefCell<State<D::File>>,
    /// Wakes the flusher: a record was appended, or shutdown.
    work: Event,
    /// Wakes `wait_durable`: the durable LSN advanced, or the log was poisoned.
    durable: Event,
}

struct State<F> {
    /// LSN of the next append; `next_lsn - 1` is the last appended.
    next_lsn: u64,
    /// Last LSN known durable; 0 when none.
    durable_lsn: u64,
    poisoned: bool,
    shutdown: bool,
    flusher_running: bool,
    pending: Pending,
    /// The buffers of the last flush, cleared, for the next one.
    spare: Option<Taken>,
    /// The segment being written.
    segment: Option<Segment<F>>,
    /// Where durable batches are also handed, in memory (`tap`).
    tap: Option<Arc<DurableTap>>,
    stats: WalStats,
}

struct Segment<F> {
    name: String,
    /// Shared with the flusher for the duration of one I/O.
    file: Rc<F>,
    /// Where the next batch goes; BLOCK-aligned.
    offset: u64,
}

/// Records appended but not yet taken by the flusher: sealed batches back to back in
/// `buf`, then the open batch.
#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    sealed: Vec<EncodedBatch>,
    open: Option<BatchEncoder>,
}

/// What the flusher took out of `Pending`.
#[derive(Default)]
struct Taken {
    buf: Vec<u8>,
    batches: Vec<EncodedBatch>,
}

enum Work {
    Write(Taken),
    Done,
}

impl<D: SegmentDir> WalWriter<D> {
    /// Continues the log after `recovered` (from `recover`): next LSN, tail segment and
    /// write offset. Panics if `config` fails `WalConfig::validate`.
    pub async fn open(dir: D, recovered: &Recovered, config: WalConfig) -> Result<Self, WalError> {
        if let Err(reason) = config.validate() {
            panic!("invalid WalConfig: {reason}");
        }
        let next_lsn = recovered.next_lsn.0;
        assert!(next_lsn >= 1, "LSNs start at 1");
        let segment = match &recovered.tail {
            None => None,
            Some((name, offset)) => {
                assert!(
                    offset % BLOCK as u64 == 0,
                    "tail offset {offset} is not BLOCK-aligned"
                );
                let first = parse_segment_name(name).expect("recovery returns segment names");
                assert!(
                    first.0 <= next_lsn,
                    "tail segment {name} starts after the next LSN {next_lsn}"
                );
                let file = dir.open(name).await.map_err(|source| WalError::Io {
                    op: "open segment",
                    path: name.clone(),
                    source,
                })?;
                Some(Segment {
                    name: name.clone(),
                    file: Rc::new(file),
                    offset: *offset,
                })
            }
        };
        let state = State {
            next_lsn,
            durable_lsn: next_lsn - 1,
            poisoned: false,
            shutdown: false,
            flusher_running: false,
            pending: Pending::default(),
            spare: None,
            segment,
            tap: None,
            stats: WalStats::default(),
        };
        let inner = Inner {
            dir,
            config,
            state: RefCell::new(state),
            work: Event::new(),
            durable: Event::new(),
        };
        Ok(WalWriter {
            inner: Rc::new(inner),
        })
    }

    /// Buffers one record for the next batch and returns its LSN. Never awaits.
    ///
    /// Errors: `RecordTooLarge` (payload over `RECORD_PAYLOAD_MAX`); `Poisoned` after a
    /// failed write/sync, or after `shutdown`; `Backpressure` when the unflushed buffer
    /// would exceed `max_pending_bytes`. On error nothing was appended.
    pub fn append(&self, kind: u8, version: u8, payload: &[u8]) -> Result<Lsn, WalError> {
        if payload.len() > RECORD_PAYLOAD_MAX {
            return Err(WalError::RecordTooLarge { len: payload.len() });
        }
        let inner = &*self.inner;
        let limit = inner.config.batch_limit();
        let mut state = inner.state.borrow_mut();
        if state.poisoned || state.shutdown {
            return Err(WalError::Poisoned);
        }
        let padded_after = state.pending.padded_len_after(payload.len(), limit);
        if padded_after > inner.config.max_pending_bytes {
            return Err(WalError::Backpressure);
        }
        let lsn = Lsn(state.next_lsn);
        assert!(state.durable_lsn < lsn.0);
        state.pending.push(lsn, kind, version, payload, limit);
        state.next_lsn += 1;
        assert_eq!(padded(state.pending.buf.len()), padded_after);
        drop(state);
        inner.work.notify(1);
        Ok(lsn)
    }

    /// Resolves once `lsn` is durable; `Err(Poisoned)` if the log was poisoned before that.
    /// `lsn` must have been appended (or recovered).
    pub async fn wait_durable(&self, lsn: Lsn) -> Result<(), WalError> {
        loop {
            if let Some(outcome) = self.durable_outcome(lsn) {
                return outcome;
            }
            let listener = self.inner.durable.listen();
            if let Some(outcome) = self.durable_outcome(lsn) {
                return outcome;
            }
            listener.await;
        }
    }

    /// Resolves once the durable LSN has moved past `seen` (or the log is poisoned), with
    /// the new durable LSN: for publishing it to readers outside the shard (replication).
    pub async fn wait_durable_past(&self, seen: Lsn) -> Result<Lsn, WalError> {
        loop {
            let check = || {
                let state = self.inner.state.borrow();
                if state.durable_lsn > seen.0 {
                    Some(Ok(Lsn(state.durable_lsn)))
                } else if state.poisoned {
                    Some(Err(WalError::Poisoned))
                } else {
                    None
                }
            };
            if let Some(outcome) = check() {
                return outcome;
            }
            let listener = self.inner.durable.listen();
            if let Some(outcome) = check() {
                return outcome;
            }
            listener.await;
        }
    }

    fn durable_outcome(&self, lsn: Lsn) -> Option<Result<(), WalError>> {
        let state = self.inner.state.borrow();
        assert!(
            lsn.0 >= 1 && lsn.0 < state.next_lsn,
            "waiting for LSN {} that was never appended",
            lsn.0
        );
        if lsn.0 <= state.durable_lsn {
            Some(Ok(()))
        } else if state.poisoned {
            Some(Err(WalError::Poisoned))
        } else {
            None
        }
    }

    /// The group-commit loop; the shard spawns it once.
    ///
    /// From now on, every batch is also offered to `tap` once it is durable.
    pub fn set_tap(&self, tap: Arc<DurableTap>) {
        self.inner.state.borrow_mut().tap = Some(tap);
    }

    /// Takes everything appended so far and writes it as one batch (several if it exceeds
    /// the batch limit), each followed by fdatasync; appends made meanwhile wait for the
    /// next round. Rotates to a new segment, named by the first LSN of the batch that did
    /// not fit, when a batch does not fit the current one. On a write, sync or create
    /// error: poisons the log (every current and future waiter gets `Err(Poisoned)`) and
    /// returns the error. Returns `Ok(())` after `shutdown()` once everything appended
    /// before it is durable.
    pub async fn run_flusher(&self) -> Result<(), WalError> {
        {
            let mut state = self.inner.state.borrow_mut();
            assert!(!state.flusher_running, "run_flusher is spawned once");
            if state.poisoned {
                return Err(WalError::Poisoned);
            }
            state.flusher_running = true;
        }
        // If this future is dropped while it holds taken records, they would never become
        // durable (and a batch may be half written): the guard poisons the log then.
        let mut guard = FlusherGuard {
            writer: self,
            busy: false,
        };
        loop {
            let taken = match self.next_work().await {
                Work::Write(taken) => taken,
                Work::Done => return Ok(()),
            };
            assert!(!taken.batches.is_empty());
            guard.busy = true;
            for batch in &taken.batches {
                if let Err(e) = self.write_batch(&taken.buf, batch).await {
                    self.poison();
                    return Err(e);
                }
            }
            guard.busy = false;
            let mut spare = taken;
            spare.buf.clear();
            spare.batches.clear();
            self.inner.state.borrow_mut().spare = Some(spare);
        }
    }

    async fn next_work(&self) -> Work {
        loop {
            if let Some(work) = self.take_work() {
                return work;
            }
            let listener = self.inner.work.listen();
            if let Some(work) = self.take_work() {
                return work;
            }
            listener.await;
        }
    }

    fn take_work(&self) -> Option<Work> {
        let mut state = self.inner.state.borrow_mut();
        assert!(
            !state.poisoned,
            "only the flusher poisons, and then it stops"
        );
        if !state.pending.is_empty() {
            let spare = state.spare.take().unwrap_or_default();
            let taken = state.pending.take(spare);
            assert_eq!(taken.batches[0].first_lsn.0, state.durable_lsn + 1);
            assert_eq!(
                taken.batches.last().unwrap().last_lsn().0 + 1,
                state.next_lsn
            );
            return Some(Work::Write(taken));
        }
        if state.shutdown {
            assert_eq!(
                state.durable_lsn + 1,
                state.next_lsn,
                "shutdown with records not durable"
            );
            return Some(Work::Done);
        }
        None
    }

    /// Writes and syncs one batch, rotating first if it does not fit, then publishes it.
    async fn write_batch(&self, buf: &[u8], batch: &EncodedBatch) -> Result<(), WalError> {
        let inner = &*self.inner;
        let config = &inner.config;
        assert!(batch.start % BLOCK == 0 && batch.len % BLOCK == 0 && batch.len > 0);
        assert!(batch.len <= config.batch_limit());
        let bytes = &buf[batch.start..batch.start + batch.len];

        let current = inner.state.borrow().segment.as_ref().and_then(|s| {
            let fits = s.offset + batch.len as u64 <= config.segment_bytes;
            fits.then(|| (Rc::clone(&s.file), s.name.clone(), s.offset))
        });
        let (file, name, offset) = match current {
            Some(current) => current,
            None => {
                // The previous segment is complete and synced (every batch is synced
                // before the next is written), so the new one can be created now.
                let name = segment_name(batch.first_lsn);
                let (file, reused) = inner
                    .dir
                    .create(&name, config.segment_bytes)
                    .await
                    .map_err(|source| WalError::Io {
                        op: "create segment",
                        path: name.clone(),
                        source,
                    })?;
                let file = Rc::new(file);
                let mut state = inner.state.borrow_mut();
                state.segment = Some(Segment {
                    name: name.clone(),
                    file: Rc::clone(&file),
                    offset: 0,
                });
                state.stats.segments_created += 1;
                state.stats.segments_reused += u64::from(reused);
                (file, name, 0)
            }
        };
        assert!(offset % BLOCK as u64 == 0);
        assert!(offset + batch.len as u64 <= config.segment_bytes);
        assert!(parse_segment_name(&name).unwrap() <= batch.first_lsn);

        file.write_at(bytes, offset)
            .await
            .map_err(|source| WalError::Io {
                op: "write",
                path: name.clone(),
                source,
            })?;
        let mut sync_micros = None;
        if config.sync == SyncMode::Fdatasync {
            let started = Instant::now();
            file.sync().await.map_err(|source| WalError::Io {
                op: "fdatasync",
                path: name.clone(),
                source,
            })?;
            sync_micros = Some(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        }

        let mut state = inner.state.borrow_mut();
        assert!(!state.poisoned);
        let segment = state
            .segment
            .as_mut()
            .expect("only the flusher changes the segment");
        assert!(
            segment.name == name && segment.offset == offset,
            "one flusher at a time"
        );
        segment.offset += batch.len as u64;
        assert_eq!(
            state.durable_lsn + 1,
            batch.first_lsn.0,
            "batches become durable in LSN order"
        );
        state.durable_lsn = batch.last_lsn().0;
        assert!(state.durable_lsn < state.next_lsn);
        if let Some(tap) = &state.tap {
            // The batch without its padding: the header says how long its body is.
            let body = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
            tap.offer(&bytes[..BATCH_HEADER_BYTES + body]);
        }
        let stats = &mut state.stats;
        stats.batches += 1;
        stats.records += u64::from(batch.count);
        stats.bytes_written += batch.len as u64;
        stats.last_batch_bytes = batch.len as u64;
        stats.batch_records.record(u64::from(batch.count));
        if let Some(micros) = sync_micros {
            stats.syncs += 1;
            stats.sync_micros.record(micros);
        }
        drop(state);
        inner.durable.notify(usize::MAX);
        Ok(())
    }

    fn poison(&self) {
        self.inner.state.borrow_mut().poisoned = true;
        self.inner.durable.notify(usize::MAX);
    }

    /// Stops accepting appends (they fail with `Poisoned`); `run_flusher` returns once
    /// everything appended before is durable.
    pub fn shutdown(&self) {
        self.inner.state.borrow_mut().shutdown = true;
        self.inner.work.notify(usize::MAX);
    }

    /// The last appended LSN; `Lsn(0)` if the log is empty.
    pub fn last_lsn(&self) -> Lsn {
        Lsn(self.inner.state.borrow().next_lsn - 1)
    }

    /// The last durable LSN; `Lsn(0)` if none.
    pub fn durable_lsn(&self) -> Lsn {
        let state = self.inner.state.borrow();
        assert!(state.durable_lsn < state.next_lsn);
        Lsn(state.durable_lsn)
    }

    pub fn is_poisoned(&self) -> bool {
        self.inner.state.borrow().poisoned
    }

    pub fn stats(&self) -> WalStats {
        self.inner.state.borrow().stats
    }
}

struct FlusherGuard<'a, D: SegmentDir> {
    writer: &'a WalWriter<D>,
    /// Records are taken out of `Pending` and not yet durable.
    busy: bool,
}

impl<D: SegmentDir> Drop for FlusherGuard<'_, D> {
    fn drop(&mut self) {
        self.writer.inner.state.borrow_mut().flusher_running = false;
        if self.busy {
            self.writer.poison();
        }
    }
}

impl Pending {
    fn is_empty(&self) -> bool {
        let empty = self.sealed.is_empty() && self.open.is_none();
        assert_eq!(empty, self.buf.is_empty());
        empty
    }

    /// Padded size of the buffer if a record of `payload_len` bytes were appended.
    fn padded_len_after(&self, payload_len: usize, limit: usize) -> usize {
        let new_batch = padded(BATCH_HEADER_BYTES + record_bytes(payload_len));
        match &self.open {
            Some(open) if open.fits(payload_len, limit) => {
                padded(self.buf.len() + record_bytes(payload_len))
            }
            Some(_) => padded(self.buf.len()) + new_batch,
            None => self.buf.len() + new_batch,
        }
    }

    fn push(&mut self, lsn: Lsn, kind: u8, version: u8, payload: &[u8], limit: usize) {
        if self
            .open
            .as_ref()
            .is_some_and(|open| !open.fits(payload.len(), limit))
        {
            let full = self.open.take().unwrap();
            self.sealed.push(full.finish(&mut self.buf));
        }
        let buf = &mut self.buf;
        let open = self
            .open
            .get_or_insert_with(|| BatchEncoder::begin(buf, lsn));
        assert!(open.fits(payload.len(), limit));
        assert_eq!(open.push(buf, kind, version, payload), lsn);
    }

    /// Seals the open batch and hands everything over, leaving `spare`'s empty buffers.
    fn take(&mut self, spare: Taken) -> Taken {
        assert!(spare.buf.is_empty() && spare.batches.is_empty());
        if let Some(open) = self.open.take() {
            self.sealed.push(open.finish(&mut self.buf));
        }
        let taken = Taken {
            buf: std::mem::replace(&mut self.buf, spare.buf),
            batches: std::mem::replace(&mut self.sealed, spare.batches),
        };
        assert_eq!(
            taken.buf.len(),
            taken.batches.iter().map(|b| b.len).sum::<usize>()
        );
        for pair in taken.batches.windows(2) {
            assert_eq!(pair[0].start + pair[0].len, pair[1].start);
            assert_eq!(pair[0].last_lsn().0 + 1, pair[1].first_lsn.0);
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use futures_lite::future::block_on;

    use super::*;
    use crate::wal::format::segment_name;
    use crate::wal::reader::{dump_records, recover, verify};
    use crate::wal::sim::{SimDisk, SplitMix64};

    type Boxed<T> = Pin<Box<dyn Future<Output = T>>>;

    fn small_config() -> WalConfig {
        WalConfig {
            segment_bytes: SEGMENT_BYTES_MIN,
            sync: SyncMode::Fdatasync,
            max_pending_bytes: 4 * BATCH_BYTES_MAX,
        }
    }

    fn payload(lsn: u64, len: usize) -> Vec<u8> {
        let mut bytes = lsn.to_le_bytes().to_vec();
        bytes.resize(8 + len, (lsn * 31) as u8);
        bytes
    }

    fn open(disk: &SimDisk, config: WalConfig) -> (WalWriter<SimDisk>, Recovered) {
        let recovered = recover(disk, |_, _, _, _| {}).unwrap();
        let wal = block_on(WalWriter::open(disk.clone(), &recovered, config)).unwrap();
        (wal, recovered)
    }

    /// Runs the flusher until everything appended so far is durable.
    fn flush(wal: &WalWriter<SimDisk>) {
        let target = wal.last_lsn();
        let flusher = wal.run_flusher();
        let waiter = async {
            wal.wait_durable(target).await.unwrap();
            wal.durable_lsn()
        };
        // The flusher never returns without shutdown: race it against the waiter.
        match block_on(futures_lite::future::or(
            async { Err(flusher.await) },
            async { Ok(waiter.await) },
        )) {
            Ok(durable) => assert_eq!(durable, target),
            Err(result) => panic!("the flusher stopped: {result:?}"),
        }
    }

    fn replay_all(disk: &SimDisk) -> (Recovered, Vec<(u64, Vec<u8>)>) {
        let mut records = Vec::new();
        let recovered = recover(disk, |lsn, _, _, bytes| {
            records.push((lsn.0, bytes.to_vec()))
        })
        .unwrap();
        let lsns: Vec<u64> = records.iter().map(|r| r.0).collect();
        let first = recovered.next_lsn.0 - lsns.len() as u64;
        assert_eq!(
            lsns,
            (first..recovered.next_lsn.0).collect::<Vec<_>>(),
            "LSNs are continuous"
        );
        (recovered, records)
    }

    fn poll_once<T>(fut: &mut Boxed<T>) -> Poll<T> {
        fut.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn round_trip_across_segment_rotation() {
        let disk = SimDisk::new();
        let (wal, _) = open(&disk, small_config());
        let mut expected = Vec::new();
        for round in 0..40u64 {
            for i in 0..(round % 7 + 1) {
                let lsn = expected.len() as u64 + 1;
                let bytes = payload(lsn, (round * 997 + i * 131) as usize % 9000);
                assert_eq!(wal.append((lsn % 5) as u8, 2, &bytes).unwrap(), Lsn(lsn));
                expected.push((lsn, bytes));
            }
            flush(&wal);
        }
        let stats = wal.stats();
        assert!(stats.segments_created >= 3, "{stats:?}");
        assert_eq!(stats.batches, 40);
        assert_eq!(stats.syncs, 40);
        assert_eq!(stats.records, expected.len() as u64);
        assert_eq!(disk.file_names().len() as u64, stats.segments_created);
        assert_eq!(disk.file_names()[0], segment_name(Lsn(1)));

        let mut kinds = Vec::new();
        let recovered = recover(&disk, |lsn, kind, version, _| {
            assert_eq!(version, 2);
            kinds.push((lsn.0, kind));
        })
        .unwrap();
        assert!(kinds.iter().all(|&(lsn, kind)| kind == (lsn % 5) as u8));
        let (_, records) = replay_all(&disk);
        assert_eq!(records, expected);
        assert_eq!(recovered.next_lsn, Lsn(expected.len() as u64 + 1));
        assert_eq!(recovered.truncated_bytes, 0);
        assert_eq!(
            recovered.tail.as_ref().unwrap().0,
            *disk.file_names().last().unwrap()
        );
    }

    #[test]
    fn group_commit_batches_what_accumulated() {
        let disk = SimDisk::new();
        let (wal, _) = open(&disk, WalConfig::default());
        for lsn in 1..=100 {
            assert_eq!(wal.append(1, 1, &payload(lsn, 50)).unwrap(), Lsn(lsn));
        }
        assert_eq!(wal.last_lsn(), Lsn(100));
        assert_eq!(wal.durable_lsn(), Lsn(0));
        wal.shutdown();
        block_on(wal.run_flusher()).unwrap();
        let stats = wal.stats();
        assert_eq!((stats.batches, stats.syncs, stats.records), (1, 1, 100));
        assert_eq!(
            stats.last_batch_bytes,
            padded(BATCH_HEADER_BYTES + 100 * record_bytes(58)) as u64
        );
        assert_eq!(disk.io_counts(), (1, 1));
        assert_eq!(wal.durable_lsn(), Lsn(100));
        block_on(wal.wait_durable(Lsn(57))).unwrap();
        assert!(matches!(wal.append(1, 1, b"late"), Err(WalError::Poisoned)));
        assert_eq!(replay_all(&disk).1.len(), 100);
    }

    #[test]
    fn appends_during_a_flush_go_in_the_next_batch() {
        let disk = SimDisk::new();
        let (wal, _) = open(&disk, WalConfig::default());
        wal.append(1, 1, b"first").unwrap();
        let mut flusher: Boxed<_> = Box::pin({
            let wal = wal.clone();
            async move { wal.run_flusher().await }
        });
        // Step until the first batch's write is issued, then append while it is in flight.
        while disk.io_counts().0 == 0 {
            assert!(poll_once(&mut flusher).is_pending());
        }
        for i in 0..10 {
            wal.append(1, 1, &[i]).unwrap();
        }
        assert_eq!(
            wal.durable_lsn(),
            Lsn(0),
            "the first batch is not synced yet"
        );
        wal.shutdown();
        while poll_once(&mut flusher).is_pending() {}
        let stats = wal.stats();
        assert_eq!((stats.batches, stats.syncs, stats.records), (2, 2, 11));
        assert_eq!(wal.durable_lsn(), Lsn(11));
    }

    #[test]
    fn large_backlog_is_split_into_synced_batches() {
        let disk = SimDisk::new();
        let config = WalConfig {
            segment_bytes: 64 << 20,
            ..WalConfig::default()
        };
        let (wal, _) = open(&disk, config);
        let big = vec![0x5A; RECORD_PAYLOAD_MAX];
        for _ in 0..40 {
            wal.append(1, 1, &big).unwrap();
        }
        wal.shutdown();
        block_on(wal.run_flusher()).unwrap();
        let stats = wal.stats();
        // 15 maximal records fit 1 MiB.
        assert_eq!((stats.batches, stats.syncs), (3, 3), "{stats:?}");
        assert!(stats.bytes_written <= 3 * BATCH_BYTES_MAX as u64);
        let report = verify(&disk).unwrap();
        assert_eq!((report.batches, report.records), (3, 40));
    }

    #[test]
    fn limits_are_enforced() {
        let disk = SimDisk::new();
        let config = WalConfig {
            max_pending_bytes: 128 * 1024,
            ..WalConfig::default()
        };
        let (wal, _) = open(&disk, config);
        let too_big = vec![0; RECORD_PAYLOAD_MAX + 1];
        let result = wal.append(1, 1, &too_big);
        assert!(matches!(result, Err(WalError::RecordTooLarge { len }) if len == too_big.len()));
        let mut appended = 0;
        loop {
            match wal.append(1, 1, &[0; 1000]) {
                Ok(_) => appended += 1,
                Err(WalError::Backpressure) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(
            appended,
            (128 * 1024 - BATCH_HEADER_BYTES) / record_bytes(1000)
        );
        assert_eq!(wal.last_lsn(), Lsn(appended as u64));
        flush(&wal);
        // Room again once flushed.
        wal.append(1, 1, &[0; RECORD_PAYLOAD_MAX]).unwrap();
        assert!(WalConfig {
            segment_bytes: 4096,
            ..WalConfig::default()
        }
        .validate()
        .is_err());
        assert!(WalConfig {
            segment_bytes: SEGMENT_BYTES_MIN + 1,
            ..WalConfig::default()
        }
        .validate()
        .is_err());
        assert!(WalConfig {
            max_pending_bytes: 4096,
            ..WalConfig::default()
        }
        .validate()
        .is_err());
        assert!(WalConfig::default().validate().is_ok());
    }

    #[test]
    fn torn_tail_is_truncated_and_the_log_continues() {
        let disk = SimDisk::new();
        let (wal, _) = open(&disk, small_config());
        for lsn in 1..=10 {
            wal.append(1, 1, &payload(lsn, 100)).unwrap();
        }
        flush(&wal);
        let tail = recover(&disk, |_, _, _, _| {}).unwrap().tail.unwrap();
        assert_eq!(tail.1, BLOCK as u64);
        // The first two sectors of the next batch reached the disk, the rest did not.
        let records: Vec<Vec<u8>> = (11..=15).map(|lsn| payload(lsn, 3000)).collect();
        let refs: Vec<(u8, u8, &[u8])> = records.iter().map(|r| (1, 1, r.as_slice())).collect();
        let torn = crate::wal::format::encode_batch(Lsn(11), &refs);
        disk.put(&tail.0, tail.1, &torn[..1024]);
        drop(wal);

        let (recovered, records) = replay_all(&disk);
        assert_eq!(records.len(), 10);
        assert_eq!(recovered.next_lsn, Lsn(11));
        assert_eq!(recovered.truncated_bytes, BLOCK as u64);
        assert_eq!(recovered.tail, Some(tail.clone()));

        let wal = block_on(WalWriter::open(disk.clone(), &recovered, small_config())).unwrap();
        for lsn in 11..=60 {
            assert_eq!(wal.append(1, 1, &payload(lsn, 4000)).unwrap(), Lsn(lsn));
            if lsn % 10 == 0 {
                flush(&wal);
            }
        }
        let (recovered, records) = replay_all(&disk);
        assert_eq!(records.len(), 60);
        assert_eq!(records[10], (11, payload(11, 4000)));
        assert_eq!(records[59], (60, payload(60, 4000)));
        assert_eq!(recovered.truncated_bytes, 0);
        assert!(wal.stats().segments_created >= 1);
    }

    #[test]
    fn corrupt_middle_batch_is_named() {
        let disk = SimDisk::new();
        let (wal, _) = open(&disk, small_config());
        for lsn in 1..=30 {
            wal.append(1, 1, &payload(lsn, 1500)).unwrap();
            if lsn % 3 == 0 {
                flush(&wal);
            }
        }
        let mut batches = Vec::new();
        dump_records(&disk, |segment, offset, _, _, _, _| {
            batches.push((segment.to_owned(), offset))
        })
        .unwrap();
        batches.dedup();
        assert_eq!(batches.len(), 10);
        let (segment, offset) = batches[4].clone();
        assert_eq!(
            batches[5].0, segment,
            "the next batch is in the same segment"
        );
        disk.corrupt(&segment, offset + 100, 0x10);
        for result in [
            verify(&disk).map(|_| ()),
            recover(&disk, |_, _, _, _| {}).map(|_| ()),
        ] {
            match result {
                Err(WalError::Corrupt {
                    segment: s,
                    offset: o,
                    ..
                }) => assert_eq!((s, o), (segment.clone(), offset)),
                other => panic!("expected Corrupt, got {other:?}"),
            }
        }
        let message = verify(&disk).unwrap_err().to_string();
        assert!(
            message.contains(&segment) && message.contains(&offset.to_string()),
            "{message}"
        );
    }

    #[test]
    fn failed_sync_poisons() {
        let disk = SimDisk::new();
        let (wal, _) = open(&disk, WalConfig::default());
        wal.append(1, 1, b"one").unwrap();
        flush(&wal);
        let lsn = wal.append(1, 1, b"two").unwrap();
        let mut waiter: Boxed<_> = Box::pin({
            let wal = wal.clone();
            async move { wal.wait_durable(lsn).await }
        });
        assert!(poll_once(&mut waiter).is_pending());
        disk.fail_next_sync();
        match block_on(wal.run_flusher()) {
            Err(WalError::Io {
                op: "fdatasync",
                path,
                ..
            }) => assert_eq!(path, segment_name(Lsn(1))),
            other => panic!("expected a sync error, got {other:?}"),
        }
        assert!(wal.is_poisoned());
        assert!(matches!(
            poll_once(&mut waiter),
            Poll::Ready(Err(WalError::Poisoned))
        ));
        assert!(matches!(
            block_on(wal.wait_durable(lsn)),
            Err(WalError::Poisoned)
        ));
        block_on(wal.wait_durable(Lsn(1))).expect("durable before the failure stays durable");
        assert!(matches!(
            wal.append(1, 1, b"three"),
            Err(WalError::Poisoned)
        ));
        assert!(matches!(
            block_on(wal.run_flusher()),
            Err(WalError::Poisoned)
        ));
        assert_eq!(wal.durable_lsn(), Lsn(1));
    }

    #[test]
    fn failed_write_and_dropped_flusher_poison() {
        let disk = SimDisk::new();
        let (wal, _) = open(&disk, WalConfig::default());
        wal.append(1, 1, b"one").unwrap();
        disk.fail_next_write();
        assert!(matches!(
            block_on(wal.run_flusher()),
            Err(WalError::Io { op: "write", .. })
        ));
        assert!(wal.is_poisoned());

        let (wal, _) = open(&SimDisk::new(), WalConfig::default());
        wal.append(1, 1, b"one").unwrap();
        let mut flusher: Boxed<_> = Box::pin({
            let wal = wal.clone();
            async move { wal.run_flusher().await }
        });
        assert!(poll_once(&mut flusher).is_pending());
        drop(flusher);
        assert!(wal.is_poisoned(), "dropped with a batch in flight");
        // Dropping an idle flusher is harmless.
        let (wal, _) = open(&SimDisk::new(), WalConfig::default());
        wal.append(1, 1, b"one").unwrap();
        flush(&wal);
        assert!(!wal.is_poisoned());
        wal.append(1, 1, b"two").unwrap();
        flush(&wal);
        assert_eq!(wal.durable_lsn(), Lsn(2));
    }

    /// Random workloads against the real writer, crashed at random points (including
    /// between a write and its fdatasync, and after injected failures), then recovered:
    /// every record acknowledged before the crash is there, with its payload, and LSNs
    /// are continuous. Several crash/recover cycles per seed. Odd seeds also retire
    /// segments wholly acknowledged (as checkpoints do), keeping up to two as spares that
    /// the writer then reuses: old batches under new ones.
    fn poll_waiters(waiters: &mut Vec<(u64, Boxed<Result<(), WalError>>)>, acknowledged: &mut u64) {
        waiters.retain_mut(|(lsn, waiter)| match poll_once(waiter) {
            Poll::Ready(Ok(())) => {
                *acknowledged = (*acknowledged).max(*lsn);
                false
            }
            Poll::Ready(Err(WalError::Poisoned)) => false,
            Poll::Ready(Err(e)) => panic!("{e}"),
            Poll::Pending => true,
        });
    }

    #[test]
    fn power_loss_never_loses_acknowledged_records() {
        let mut torn_tails = 0;
        let mut rotations = 0;
        let mut acknowledgements = 0;
        let (mut retired, mut reused) = (0, 0);
        for seed in 0..300u64 {
            let disk = SimDisk::new();
            let mut rng = SplitMix64(seed);
            let config = WalConfig {
                max_pending_bytes: 256 * 1024,
                ..small_config()
            };
            // Payload of every record in the log, by LSN - 1, acknowledged or not.
            let mut log: Vec<Vec<u8>> = Vec::new();
            // The highest LSN whose wait_durable returned Ok before the last crash.
            let mut acknowledged = 0u64;
            for cycle in 0..4u64 {
                let (recovered, records) = replay_all(&disk);
                assert!(
                    recovered.next_lsn.0 > acknowledged,
                    "seed {seed}: lost acknowledged records"
                );
                for (lsn, bytes) in &records {
                    assert_eq!(
                        bytes,
                        &log[*lsn as usize - 1],
                        "seed {seed}: wrong payload at LSN {lsn}"
                    );
                }
                log.truncate(recovered.next_lsn.0 as usize - 1);
                torn_tails += u64::from(recovered.truncated_bytes > 0);
                assert_eq!(verify(&disk).unwrap().torn_tail_bytes, 0);

                let wal =
                    block_on(WalWriter::open(disk.clone(), &recovered, config.clone())).unwrap();
                let mut flusher: Option<Boxed<Result<(), WalError>>> = Some(Box::pin({
                    let wal = wal.clone();
                    async move { wal.run_flusher().await }
                }));
                // (LSN, wait_durable future) of every record appended in this cycle.
                let mut waiters: Vec<(u64, Boxed<Result<(), WalError>>)> = Vec::new();
                for _ in 0..rng.below(120) {
                    match rng.below(10) {
                        0..=3 => {
                            for _ in 0..=rng.below(6) {
                                let len = match rng.below(20) {
                                    0 => rng.below(RECORD_PAYLOAD_MAX as u64 - 8),
                                    _ => rng.below(3000),
                                } as usize;
                                let bytes = payload(log.len() as u64 + 1 + cycle * 1_000_000, len);
                                match wal.append(rng.below(4) as u8, 1, &bytes) {
                                    Ok(lsn) => {
                                        log.push(bytes);
                                        assert_eq!(lsn.0, log.len() as u64);
                                        let wal = wal.clone();
                                        waiters.push((
                                            lsn.0,
                                            Box::pin(async move { wal.wait_durable(lsn).await }),
                                        ));
                                    }
                                    Err(WalError::Backpressure | WalError::Poisoned) => {}
                                    Err(e) => panic!("{e}"),
                                }
                            }
                        }
                        4..=7 => {
                            if let Some(f) = flusher.as_mut() {
                                if poll_once(f).is_ready() {
                                    flusher = None;
                                }
                            }
                        }
                        8 => poll_waiters(&mut waiters, &mut acknowledged),
                        _ if seed % 2 == 1 && rng.below(2) == 0 => {
                            retired += retire(&disk, acknowledged)
                        }
                        _ => match rng.below(20) {
                            0 => disk.fail_next_sync(),
                            1 => disk.fail_next_write(),
                            _ => {}
                        },
                    }
                }
                poll_waiters(&mut waiters, &mut acknowledged);
                let durable = wal.durable_lsn().0;
                assert!(durable <= wal.last_lsn().0);
                assert!(acknowledged <= durable);
                acknowledgements += acknowledged;
                rotations += wal.stats().segments_created;
                reused += wal.stats().segments_reused;
                drop((flusher, waiters, wal));
                if rng.below(4) == 0 {
                    disk.crash_dropping_all_unsynced();
                } else {
                    disk.crash(rng.next_u64());
                }
            }
        }
        // The workload reaches the interesting cases.
        assert!(torn_tails > 20, "torn tails: {torn_tails}");
        assert!(
            acknowledgements > 10_000,
            "acknowledgements: {acknowledgements}"
        );
        assert!(rotations > 100, "rotations: {rotations}");
        assert!(
            retired > 100 && reused > 50,
            "retired {retired}, reused {reused}"
        );
    }

    /// What `wal::io::retire_segments_before` does, on the simulated disk: every segment
    /// whose records all lie at or before `checkpoint` (never the newest) becomes a spare
    /// while fewer than two exist, else is removed. Returns how many were retired.
    fn retire(disk: &SimDisk, checkpoint: u64) -> u64 {
        let segments = crate::wal::io::SegmentSource::list(disk).unwrap();
        let mut spares = disk
            .file_names()
            .iter()
            .filter(|n| n.ends_with(crate::wal::format::SPARE_SUFFIX))
            .count();
        let mut retired = 0;
        for pair in segments.windows(2) {
            let next = parse_segment_name(&pair[1]).unwrap();
            if next.0 > checkpoint + 1 {
                break;
            }
            if spares < crate::wal::format::SPARES_KEPT {
                disk.recycle(&pair[0]);
                spares += 1;
            } else {
                disk.remove(&pair[0]);
            }
            retired += 1;
        }
        retired
    }
}
