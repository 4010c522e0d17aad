//! Reading one shard's WAL while the gateway appends to it: whole batches, in LSN order, and
//! never past the durable LSN the shard publishes (a record that is written but not yet
//! synced could still vanish in a power loss; a replica must never be ahead of the log).

use crate::domain::Lsn;
use crate::wal::format::{decode_batch, segment_name, BATCH_BYTES_MAX, BATCH_HEADER_BYTES, BLOCK};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::wal::io::segment_firsts;
use crate::wal::tap::DurableTap;

/// A cursor over one shard's WAL directory.
pub struct WalTail {
    dir: PathBuf,
    segment: Option<File>,
    /// The first LSN of the open segment (its name).
    segment_first: Lsn,
    offset: u64,
    next_lsn: Lsn,
    window: Vec<u8>,
}

impl WalTail {
    /// A cursor at the first record of the log.
    pub fn new(dir: &Path) -> WalTail {
        WalTail {
            dir: dir.to_path_buf(),
            segment: None,
            segment_first: Lsn(1),
            offset: 0,
            next_lsn: Lsn(1),
            window: Vec::new(),
        }
    }

    /// A cursor at record `lsn` (which may not be written yet).
    pub fn at(dir: &Path, lsn: Lsn) -> WalTail {
        assert!(lsn.0 >= 1);
        WalTail {
            next_lsn: lsn,
            ..WalTail::new(dir)
        }
    }

    /// The LSN of the next record this cursor will return.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    /// Calls `f` for each record after the cursor, whole batches at a time, until `durable`
    /// or until about `max` records were returned. Returns how many were returned.
    pub fn read(
        &mut self,
        durable: Lsn,
        max: usize,
        mut f: impl FnMut(Lsn, u8, u8, &[u8]),
    ) -> io::Result<usize> {
        let mut returned = 0;
        while self.next_lsn <= durable && returned < max {
            if self.segment.is_none() && !self.open_segment()? {
                return Ok(returned);
            }
            let file = self.segment.as_ref().expect("opened above");
            let n = read_batch(file, &mut self.window, self.offset)?;
            match decode_batch(&self.window[..n]) {
                Ok(Some(batch)) if batch.first_lsn() >= self.segment_first => {
                    if batch.first_lsn() != self.next_lsn {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "{}: batch at offset {} starts at lsn {}, expected {}",
                                self.dir.display(),
                                self.offset,
                                batch.first_lsn().0,
                                self.next_lsn.0
                            ),
                        ));
                    }
                    for r in batch.records() {
                        f(r.lsn, r.kind, r.version, r.payload);
                        returned += 1;
                    }
                    self.next_lsn = Lsn(batch.last_lsn().0 + 1);
                    self.offset += batch.encoded_len() as u64;
                }
                // The end of this segment's data (a zero header, the old batches of a
                // recycled segment, or bytes that do not decode): the log goes on in the next
                // segment. Without one, durable records are not readable yet (a write racing
                // our read): retry later.
                _ => {
                    if !self.next_segment_exists() {
                        return Ok(returned);
                    }
                    self.segment = None;
                }
            }
        }
        Ok(returned)
    }

    fn next_segment_exists(&self) -> bool {
        self.dir.join(segment_name(self.next_lsn)).exists()
    }

    /// Opens the segment holding `next_lsn`; false when there is none yet.
    fn open_segment(&mut self) -> io::Result<bool> {
        let firsts = segment_firsts(&self.dir)?;
        let Some(&first) = firsts.iter().rev().find(|&&l| l <= self.next_lsn) else {
            return Ok(false);
        };
        let file = File::open(self.dir.join(segment_name(first)))?;
        if first == self.next_lsn {
            self.offset = 0;
        } else {
            // Resuming inside a segment: walk its batches to the one holding next_lsn.
            self.offset = 0;
            loop {
                let n = read_batch(&file, &mut self.window, self.offset)?;
                match decode_batch(&self.window[..n]) {
                    // Old data of a recycled segment: next_lsn is not written yet.
                    Ok(Some(b)) if b.first_lsn() < first => return Ok(false),
                    Ok(Some(b)) if b.last_lsn() < self.next_lsn => {
                        self.offset += b.encoded_len() as u64
                    }
                    Ok(Some(b)) if b.first_lsn() == self.next_lsn => break,
                    Ok(Some(b)) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "cannot resume at lsn {} inside batch {}",
                                self.next_lsn.0,
                                b.first_lsn().0
                            ),
                        ))
                    }
                    _ => return Ok(false),
                }
            }
        }
        self.segment = Some(file);
        self.segment_first = first;
        Ok(true)
    }
}

/// A shard's durable records in LSN order, from its `DurableTap` while that continues the log,
/// else from the segments (`WalTail`): the records the tap dropped because it was full, or all
/// of them when there is no tap.
pub struct DurableRecords {
    tail: WalTail,
    tap: Option<Arc<DurableTap>>,
    /// A batch taken from the tap that lies after a gap (read the gap from disk first).
    held: Option<Box<[u8]>>,
    next_lsn: Lsn,
    /// Records returned from disk.
    from_disk: u64,
}

impl DurableRecords {
    /// A reader at record `lsn` of the log in `dir`.
    pub fn at(dir: &Path, lsn: Lsn, tap: Option<Arc<DurableTap>>) -> DurableRecords {
        DurableRecords {
            tail: WalTail::at(dir, lsn),
            tap,
            held: None,
            next_lsn: lsn,
            from_disk: 0,
        }
    }

    /// Records returned that were read from the segments rather than the tap.
    pub fn from_disk(&self) -> u64 {
        self.from_disk
    }

    /// Calls `f` for each record after the cursor, whole batches at a time, until `durable`
    /// (load it before calling: every batch up to it is in the tap or was dropped from it)
    /// or until about `max` records were returned. Returns how many were returned.
    pub fn read(
        &mut self,
        durable: Lsn,
        max: usize,
        mut f: impl FnMut(Lsn, u8, u8, &[u8]),
    ) -> io::Result<usize> {
        let mut returned = 0;
        while returned < max {
            if self.held.is_none() {
                self.held = self.tap.as_ref().and_then(|tap| tap.take());
            }
            // Without a batch from the tap, read what it dropped from disk, up to `durable`;
            // with one after a gap, up to just before it.
            let disk_until = match &self.held {
                None => durable,
                Some(bytes) => {
                    let batch = match decode_batch(bytes) {
                        Ok(Some(batch)) => batch,
                        other => panic!("the tap holds a batch the WAL encoded: {other:?}"),
                    };
                    if batch.last_lsn() < self.next_lsn {
                        self.held = None; // read from disk already
                        continue;
                    }
                    if batch.first_lsn() == self.next_lsn {
                        for r in batch.records() {
                            f(r.lsn, r.kind, r.version, r.payload);
                            returned += 1;
                        }
                        self.next_lsn = Lsn(batch.last_lsn().0 + 1);
                        self.held = None;
                        continue;
                    }
                    assert!(
                        batch.first_lsn() > self.next_lsn,
                        "batches are the unit of both the tap and the segments"
                    );
                    Lsn(batch.first_lsn().0 - 1)
                }
            };
            if self.next_lsn > disk_until {
                break;
            }
            if self.tail.next_lsn() != self.next_lsn {
                self.tail = WalTail::at(&self.tail.dir, self.next_lsn);
            }
            let n = self
                .tail
                .read(disk_until, max - returned, |lsn, kind, version, payload| {
                    f(lsn, kind, version, payload)
                })?;
            self.from_disk += n as u64;
            returned += n;
            self.next_lsn = self.tail.next_lsn();
            if n == 0 {
                break; // durable, but not readable yet: try again later
            }
        }
        Ok(returned)
    }
}

/// Reads the batch at `offset`: its first block, then as much more as its header says the
/// batch takes (at most `BATCH_BYTES_MAX`), so that a small batch costs one small read.
/// Returns the bytes read (fewer at the end of the file).
fn read_batch(file: &File, buf: &mut Vec<u8>, offset: u64) -> io::Result<usize> {
    buf.resize(BATCH_BYTES_MAX, 0);
    let first = read_into(file, &mut buf[..BLOCK], offset)?;
    if first < BATCH_HEADER_BYTES {
        return Ok(first);
    }
    let body = u32::from_le_bytes(buf[12..16].try_into().expect("4 bytes")) as usize;
    let want = (BATCH_HEADER_BYTES + body)
        .div_ceil(BLOCK)
        .saturating_mul(BLOCK)
        .clamp(BLOCK, BATCH_BYTES_MAX);
    if want == BLOCK || first < BLOCK {
        return Ok(first);
    }
    let more = read_into(file, &mut buf[BLOCK..want], offset + BLOCK as u64)?;
    Ok(BLOCK + more)
}

/// Fills `buf` from `offset` as far as the file goes; returns the bytes read.
fn read_into(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::format::encode_batch;

    fn write_segment(dir: &Path, first: u64, batches: &[(u64, usize)], len: usize) {
        let mut bytes = Vec::new();
        for &(lsn, count) in batches {
            let payloads: Vec<Vec<u8>> = (0..count)
                .map(|i| vec![(lsn as usize + i) as u8; 10 + i])
                .collect();
            let records: Vec<(u8, u8, &[u8])> =
                payloads.iter().map(|p| (1u8, 1u8, p.as_slice())).collect();
            bytes.extend(encode_batch(Lsn(lsn), &records));
        }
        bytes.resize(len, 0);
        std::fs::write(dir.join(segment_name(Lsn(first))), bytes).unwrap();
    }

    #[test]
    fn reads_across_segments_and_stops_at_the_durable_lsn() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, &[(1, 3), (4, 2)], 1 << 16);
        write_segment(dir.path(), 6, &[(6, 4)], 1 << 16);
        let mut tail = WalTail::new(dir.path());
        let mut seen = Vec::new();
        let n = tail
            .read(Lsn(3), 100, |lsn, _, _, p| seen.push((lsn.0, p.len())))
            .unwrap();
        assert_eq!(n, 3, "stops before the batch that is not durable");
        assert_eq!(tail.read(Lsn(3), 100, |_, _, _, _| {}).unwrap(), 0);
        let n = tail
            .read(Lsn(9), 100, |lsn, _, _, p| seen.push((lsn.0, p.len())))
            .unwrap();
        assert_eq!(n, 6);
        assert_eq!(
            seen.iter().map(|s| s.0).collect::<Vec<_>>(),
            (1..=9).collect::<Vec<_>>()
        );
        assert_eq!(seen[4], (5, 11), "payloads come through intact");
        assert_eq!(tail.next_lsn(), Lsn(10));
        // More arrives later in the same segment.
        write_segment(dir.path(), 6, &[(6, 4), (10, 1)], 1 << 16);
        assert_eq!(tail.read(Lsn(10), 100, |_, _, _, _| {}).unwrap(), 1);
    }

    #[test]
    fn an_empty_or_missing_log_returns_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut tail = WalTail::new(&dir.path().join("absent"));
        assert_eq!(tail.read(Lsn(5), 100, |_, _, _, _| {}).unwrap(), 0);
        let mut tail = WalTail::new(dir.path());
        assert_eq!(tail.read(Lsn(5), 100, |_, _, _, _| {}).unwrap(), 0);
    }

    /// Writes batches of one record each at consecutive blocks from `block`.
    fn put_batches(dir: &Path, first: u64, block: usize, lsns: &[u64]) {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(segment_name(Lsn(first))))
            .unwrap();
        file.set_len(1 << 16).unwrap();
        for (i, &lsn) in lsns.iter().enumerate() {
            let batch = encode_batch(Lsn(lsn), &[(1, 1, &[lsn as u8; 10])]);
            assert_eq!(batch.len(), BLOCK);
            file.write_all_at(&batch, ((block + i) * BLOCK) as u64)
                .unwrap();
        }
    }

    #[test]
    fn a_recycled_segment_ends_where_its_old_batches_begin() {
        let dir = tempfile::tempdir().unwrap();
        // Segment 11 was segment 1 (records 1..=4), segment 13 was segment 5 (5..=9).
        put_batches(dir.path(), 11, 0, &[1, 2, 3, 4]);
        put_batches(dir.path(), 11, 0, &[11, 12]);
        put_batches(dir.path(), 13, 0, &[5, 6, 7, 8, 9]);
        put_batches(dir.path(), 13, 0, &[13, 14]);
        let mut tail = WalTail::at(dir.path(), Lsn(11));
        let mut seen = Vec::new();
        let n = tail
            .read(Lsn(15), 100, |lsn, _, _, _| seen.push(lsn.0))
            .unwrap();
        assert_eq!((n, seen), (4, vec![11, 12, 13, 14]));
        assert_eq!(tail.read(Lsn(15), 100, |_, _, _, _| {}).unwrap(), 0);
        // Resuming inside a recycled segment.
        let mut tail = WalTail::at(dir.path(), Lsn(14));
        let mut seen = Vec::new();
        tail.read(Lsn(14), 100, |lsn, _, _, _| seen.push(lsn.0))
            .unwrap();
        assert_eq!(seen, [14]);
        let mut tail = WalTail::at(dir.path(), Lsn(15));
        assert_eq!(tail.read(Lsn(15), 100, |_, _, _, _| {}).unwrap(), 0);
        // The next record arrives over the old data.
        put_batches(dir.path(), 13, 2, &[15]);
        assert_eq!(tail.read(Lsn(15), 100, |_, _, _, _| {}).unwrap(), 1);
    }

    #[test]
    fn durable_records_come_from_the_tap_and_what_it_dropped_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        put_batches(dir.path(), 1, 0, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let batch = |lsn: u64| encode_batch(Lsn(lsn), &[(1, 1, &[lsn as u8; 10])]);
        let tap = Arc::new(DurableTap::new(1 << 20, 2));
        let mut records = DurableRecords::at(dir.path(), Lsn(1), Some(tap.clone()));
        let read = |records: &mut DurableRecords, durable: u64| {
            let mut seen = Vec::new();
            records
                .read(Lsn(durable), 100, |lsn, _, _, p| {
                    assert_eq!(p, [lsn.0 as u8; 10]);
                    seen.push(lsn.0)
                })
                .unwrap();
            seen
        };
        assert!(tap.offer(&batch(1)) && tap.offer(&batch(2)));
        assert!(!tap.offer(&batch(3)), "full");
        assert_eq!(read(&mut records, 3), [1, 2, 3]);
        assert_eq!(records.from_disk(), 1, "only the dropped one from disk");
        assert!(tap.offer(&batch(4)) && tap.offer(&batch(5)));
        assert_eq!(read(&mut records, 5), [4, 5]);
        assert_eq!(records.from_disk(), 1);
        // 6 and 7 dropped, 8 handed over: the gap is read from disk first.
        assert!(tap.offer(&batch(8)));
        assert_eq!(read(&mut records, 8), [6, 7, 8]);
        assert_eq!(records.from_disk(), 3);
        assert!(read(&mut records, 8).is_empty());
        // Without a tap, everything from disk.
        let mut records = DurableRecords::at(dir.path(), Lsn(3), None);
        assert_eq!(read(&mut records, 8), [3, 4, 5, 6, 7, 8]);
        assert_eq!(records.from_disk(), 6);
    }
}
