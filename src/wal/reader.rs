//! Reading the log back: recovery (replay, then truncate a torn tail), verify and dump.
//!
//! All three walk the segments with the same rules:
//! - segments are contiguous: each one's name is the LSN the previous one ended at;
//! - batches are contiguous: each one's first LSN is the previous one's last + 1;
//! - the data of a segment ends at the end of the file, a zero header, a stale batch (one
//!   whose first LSN is below the segment's name: a recycled segment's old data) or a bad
//!   batch; after that end, no batch with a first LSN >= the next expected LSN may decode
//!   (at any BLOCK-aligned offset);
//! - in the newest segment, a bad batch or non-zero bytes after a zero header within
//!   `BATCH_BYTES_MAX` of the end are a torn tail, never acknowledged (the writer syncs each
//!   batch before writing the next), and recovery zeroes that range. An older segment may
//!   end at anything (a recycled segment's old bytes follow its data): a damaged last batch
//!   there shows as the next segment not continuing the log.
//!
//! Anything else is corruption: `WalError::Corrupt` names the segment and offset, and
//! nothing is changed on disk.

use super::error::WalError;
use super::format::{
    decode_batch, is_zero, parse_segment_name, Record, BATCH_BYTES_MAX, BATCH_MAGIC, BLOCK,
};
use super::io::SegmentSource;
use crate::domain::Lsn;

/// Where the log ended, as `WalWriter::open` needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// LSN of the next record to append.
    pub next_lsn: Lsn,
    /// The newest segment and the BLOCK-aligned offset where its data ends.
    pub tail: Option<(String, u64)>,
    /// Records replayed.
    pub records: u64,
    /// Bytes of torn tail zeroed.
    pub truncated_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub segments: usize,
    pub batches: u64,
    pub records: u64,
    pub first_lsn: Option<Lsn>,
    pub last_lsn: Option<Lsn>,
    /// Bytes of torn tail that recovery would zero.
    pub torn_tail_bytes: u64,
}

/// Replays every durable record in LSN order through `apply(lsn, kind, version, payload)`.
///
/// A torn or partial batch at the very tail of the newest segment is truncated (zeroed)
/// and reported in `truncated_bytes`: it was never acknowledged. A bad batch followed by
/// any valid batch, an LSN gap, or a bad batch in a non-final segment is corruption:
/// returns `WalError::Corrupt` and changes nothing. On any error `apply` may already have
/// seen a prefix of the log; the caller must discard what it built.
pub fn recover<S: SegmentSource>(
    src: &S,
    apply: impl FnMut(Lsn, u8, u8, &[u8]),
) -> Result<Recovered, WalError> {
    recover_from(src, Lsn(1), apply)
}

/// `recover`, replaying only records at or after `from` (a checkpoint's LSN + 1), and
/// reading no segment that ends before it: recovery time is bounded by what follows the
/// checkpoint, not by history. `Recovered::records` counts the records replayed.
pub fn recover_from<S: SegmentSource>(
    src: &S,
    from: Lsn,
    mut apply: impl FnMut(Lsn, u8, u8, &[u8]),
) -> Result<Recovered, WalError> {
    let mut replayed = 0;
    let walk = walk_from(src, from, |_, _, record| {
        if record.lsn >= from {
            replayed += 1;
            apply(record.lsn, record.kind, record.version, record.payload)
        }
    })?;
    if walk.next_lsn < from {
        return Err(WalError::Corrupt {
            segment: walk
                .tail
                .clone()
                .map(|t| t.0)
                .unwrap_or_else(|| "*.wal".into()),
            offset: 0,
            reason: format!(
                "the log ends at lsn {} but the store has applied up to lsn {}: \
                 acknowledged records are missing from the WAL",
                walk.next_lsn.0 - 1,
                from.0 - 1
            ),
        });
    }
    if let Some(torn) = &walk.torn {
        let io = |op: &'static str, source| WalError::Io {
            op,
            path: torn.segment.clone(),
            source,
        };
        src.zero_range(&torn.segment, torn.offset, torn.len)
            .map_err(|e| io("zero torn tail", e))?;
        // Check it on the way back, too.
        let data = src.read(&torn.segment).map_err(|e| io("read segment", e))?;
        let end = (torn.offset + torn.len).min(data.len() as u64) as usize;
        assert!(
            is_zero(&data[torn.offset as usize..end]),
            "zero_range left data behind"
        );
    }
    let tail = walk.tail.clone();
    if let Some((_, offset)) = &tail {
        assert!(offset % BLOCK as u64 == 0);
    }
    assert_eq!(
        walk.report.last_lsn.map_or(walk.next_lsn.0 - 1, |l| l.0),
        walk.next_lsn.0 - 1
    );
    Ok(Recovered {
        next_lsn: walk.next_lsn,
        tail,
        records: replayed,
        truncated_bytes: walk.report.torn_tail_bytes,
    })
}

/// Read-only check (never modifies files): same rules as `recover`.
pub fn verify<S: SegmentSource>(src: &S) -> Result<VerifyReport, WalError> {
    walk(src, |_, _, _| {}).map(|walk| walk.report)
}

/// Read-only walk calling `f(segment, offset_of_batch, lsn, kind, version, payload)` for
/// each record.
pub fn dump_records<S: SegmentSource>(
    src: &S,
    mut f: impl FnMut(&str, u64, Lsn, u8, u8, &[u8]),
) -> Result<VerifyReport, WalError> {
    walk(src, |segment, offset, r| {
        f(segment, offset, r.lsn, r.kind, r.version, r.payload)
    })
    .map(|walk| walk.report)
}

struct Walk {
    report: VerifyReport,
    next_lsn: Lsn,
    tail: Option<(String, u64)>,
    torn: Option<Torn>,
}

/// A torn tail: non-zero bytes in [offset, offset + len) of the newest segment.
struct Torn {
    segment: String,
    offset: u64,
    len: u64,
}

/// How a segment's data ended.
struct SegmentEnd {
    segment: String,
    offset: usize,
    bad: bool,
    what: String,
}

/// Where a segment's data ends.
enum End {
    File,
    /// A zero header.
    Zero,
    /// A batch from before the segment was recycled.
    Stale,
    Bad(super::format::FormatError),
}

fn walk<S: SegmentSource>(
    src: &S,
    on_record: impl FnMut(&str, u64, Record<'_>),
) -> Result<Walk, WalError> {
    walk_from(src, Lsn(1), on_record)
}

/// `walk`, skipping the segments that end before `from` (the next segment begins at or
/// before it).
fn walk_from<S: SegmentSource>(
    src: &S,
    from: Lsn,
    mut on_record: impl FnMut(&str, u64, Record<'_>),
) -> Result<Walk, WalError> {
    let mut names = src.list().map_err(|source| WalError::Io {
        op: "list segments",
        path: "*.wal".into(),
        source,
    })?;
    let firsts: Vec<Option<Lsn>> = names.iter().map(|n| parse_segment_name(n)).collect();
    let skip = (0..names.len().saturating_sub(1))
        .take_while(|&i| firsts[i + 1].is_some_and(|next| next <= from))
        .count();
    names.drain(..skip);
    let mut report = VerifyReport {
        segments: names.len(),
        ..VerifyReport::default()
    };
    // The LSN the log continues at; set by the first segment's name.
    let mut expected: Option<u64> = None;
    let mut tail = None;
    let mut torn = None;
    // How the previous segment ended, for the message when the next does not continue it.
    let mut previous_end: Option<SegmentEnd> = None;
    for (index, name) in names.iter().enumerate() {
        let newest = index + 1 == names.len();
        let corrupt = |offset: usize, reason: String| WalError::Corrupt {
            segment: name.clone(),
            offset: offset as u64,
            reason,
        };
        let Some(first) = parse_segment_name(name) else {
            return Err(corrupt(
                0,
                "not a segment name (<first LSN, 20 digits>.wal)".into(),
            ));
        };
        let expected = expected.get_or_insert(first.0);
        if first.0 != *expected {
            let reason = format!(
                "segment {name} starts at LSN {}, but the log continues at LSN {expected}",
                first.0
            );
            // A damaged last batch of the previous segment is reported where it lies.
            return Err(match previous_end.take() {
                Some(end) if end.bad => WalError::Corrupt {
                    segment: end.segment,
                    offset: end.offset as u64,
                    reason: format!("{}, and {reason}", end.what),
                },
                _ => corrupt(0, reason),
            });
        }
        let data = src.read(name).map_err(|source| WalError::Io {
            op: "read segment",
            path: name.clone(),
            source,
        })?;
        if data.len() % BLOCK != 0 {
            return Err(corrupt(
                data.len(),
                format!("segment length {} is not a multiple of {BLOCK}", data.len()),
            ));
        }

        // Decode batches up to the end of the data.
        let mut offset = 0;
        let mut end = End::File;
        while offset < data.len() {
            assert!(offset % BLOCK == 0);
            let batch = match decode_batch(&data[offset..]) {
                Ok(Some(batch)) => batch,
                Ok(None) => {
                    end = End::Zero;
                    break;
                }
                Err(e) => {
                    end = End::Bad(e);
                    break;
                }
            };
            if batch.first_lsn() < first {
                end = End::Stale;
                break;
            }
            if batch.first_lsn().0 != *expected {
                let first = batch.first_lsn().0;
                return Err(corrupt(
                    offset,
                    format!("batch starts at LSN {first}, but the log continues at LSN {expected}"),
                ));
            }
            for record in batch.records() {
                assert_eq!(record.lsn.0, *expected);
                on_record(name, offset as u64, record);
                *expected += 1;
            }
            report.batches += 1;
            report.records += u64::from(batch.count());
            report.first_lsn.get_or_insert(batch.first_lsn());
            report.last_lsn = Some(batch.last_lsn());
            offset += batch.encoded_len();
            assert!(offset <= data.len());
        }

        // Past the end of the data: no valid batch that could continue the log.
        let what = match &end {
            End::Bad(e) => format!("bad batch ({e})"),
            End::Stale => "end of data (a recycled segment's old batches follow)".to_owned(),
            End::File | End::Zero => "end of data".to_owned(),
        };
        if let Some((at, lsn)) = find_valid_batch(&data, offset + BLOCK, *expected) {
            return Err(corrupt(
                offset,
                format!(
                    "{what}, but a valid batch for LSN {} follows at offset {at}",
                    lsn.0
                ),
            ));
        }
        previous_end = Some(SegmentEnd {
            segment: name.clone(),
            offset,
            bad: matches!(end, End::Bad(_)),
            what,
        });
        if !newest {
            continue;
        }
        // The newest segment: what follows a bad batch or a zero header, up to the largest
        // batch, may be a torn write. Old bytes after a stale batch are not.
        let suspect = match end {
            End::Bad(_) | End::Zero => {
                let range = &data[offset..data.len().min(offset + BATCH_BYTES_MAX)];
                range
                    .chunks(BLOCK)
                    .rposition(|b| !is_zero(b))
                    .map(|last| (last + 1) * BLOCK)
            }
            End::File | End::Stale => None,
        };
        if let Some(len) = suspect {
            report.torn_tail_bytes = len as u64;
            torn = Some(Torn {
                segment: name.clone(),
                offset: offset as u64,
                len: len as u64,
            });
        }
        tail = Some((name.clone(), offset as u64));
    }
    let next_lsn = Lsn(expected.unwrap_or(1));
    Ok(Walk {
        report,
        next_lsn,
        tail,
        torn,
    })
}

/// The first BLOCK-aligned offset at or after `from` holding a valid batch that could
/// continue the log (first LSN >= `expected`).
fn find_valid_batch(data: &[u8], from: usize, expected: u64) -> Option<(usize, Lsn)> {
    let magic = BATCH_MAGIC.to_le_bytes();
    (from..data.len()).step_by(BLOCK).find_map(|at| {
        if data[at..at + 4] != magic {
            return None;
        }
        match decode_batch(&data[at..]) {
            Ok(Some(batch)) if batch.first_lsn().0 >= expected => Some((at, batch.first_lsn())),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::format::{encode_batch, segment_name};
    use crate::wal::sim::SimDisk;

    const SEG: usize = 16 * BLOCK;

    /// Builds a segment from batches of `(first_lsn, record count)`, each record's
    /// payload being its LSN as text.
    fn segment(disk: &SimDisk, first_lsn: u64, batches: &[(u64, u64)]) -> Vec<u64> {
        let name = segment_name(Lsn(first_lsn));
        disk.put(&name, 0, &[0u8; SEG]);
        let mut offsets = Vec::new();
        let mut offset = 0;
        for &(first, count) in batches {
            let payloads: Vec<String> = (first..first + count).map(|lsn| lsn.to_string()).collect();
            let records: Vec<(u8, u8, &[u8])> =
                payloads.iter().map(|p| (1, 1, p.as_bytes())).collect();
            let bytes = encode_batch(Lsn(first), &records);
            disk.put(&name, offset, &bytes);
            offsets.push(offset);
            offset += bytes.len() as u64;
        }
        offsets
    }

    fn replay(disk: &SimDisk) -> Result<(Recovered, Vec<u64>), WalError> {
        let mut lsns = Vec::new();
        let recovered = recover(disk, |lsn, kind, version, payload| {
            assert_eq!((kind, version), (1, 1));
            assert_eq!(payload, lsn.0.to_string().as_bytes());
            lsns.push(lsn.0);
        })?;
        Ok((recovered, lsns))
    }

    fn expect_corrupt(result: Result<VerifyReport, WalError>, segment: u64, offset: u64) -> String {
        match result {
            Err(WalError::Corrupt {
                segment: s,
                offset: o,
                reason,
            }) => {
                assert_eq!(
                    (s.as_str(), o),
                    (segment_name(Lsn(segment)).as_str(), offset),
                    "{reason}"
                );
                reason
            }
            other => panic!("expected Corrupt at {segment}/{offset}, got {other:?}"),
        }
    }

    #[test]
    fn empty_log() {
        let disk = SimDisk::new();
        let (recovered, lsns) = replay(&disk).unwrap();
        assert_eq!(
            recovered,
            Recovered {
                next_lsn: Lsn(1),
                tail: None,
                records: 0,
                truncated_bytes: 0
            }
        );
        assert!(lsns.is_empty());
        assert_eq!(verify(&disk).unwrap(), VerifyReport::default());
    }

    #[test]
    fn clean_log_over_segments() {
        let disk = SimDisk::new();
        segment(&disk, 1, &[(1, 3), (4, 1)]);
        let offsets = segment(&disk, 5, &[(5, 2), (7, 5)]);
        let (recovered, lsns) = replay(&disk).unwrap();
        assert_eq!(lsns, (1..=11).collect::<Vec<_>>());
        assert_eq!(recovered.next_lsn, Lsn(12));
        assert_eq!(
            recovered.tail,
            Some((segment_name(Lsn(5)), 2 * BLOCK as u64))
        );
        assert_eq!(recovered.truncated_bytes, 0);
        let report = verify(&disk).unwrap();
        assert_eq!(
            (report.segments, report.batches, report.records),
            (2, 4, 11)
        );
        assert_eq!(
            (report.first_lsn, report.last_lsn),
            (Some(Lsn(1)), Some(Lsn(11)))
        );
        let mut seen = Vec::new();
        dump_records(&disk, |segment, offset, lsn, _, _, _| {
            seen.push((segment.to_owned(), offset, lsn.0))
        })
        .unwrap();
        assert_eq!(seen.len(), 11);
        assert_eq!(seen[6], (segment_name(Lsn(5)), offsets[1], 7));
    }

    #[test]
    fn log_may_start_after_lsn_1() {
        // Older segments were deleted after a snapshot.
        let disk = SimDisk::new();
        segment(&disk, 100, &[(100, 2)]);
        let (recovered, lsns) = replay(&disk).unwrap();
        assert_eq!((recovered.next_lsn, lsns), (Lsn(102), vec![100, 101]));
    }

    #[test]
    fn torn_tail_is_zeroed() {
        let disk = SimDisk::new();
        let offsets = segment(&disk, 1, &[(1, 2), (3, 2), (5, 2)]);
        let name = segment_name(Lsn(1));
        disk.corrupt(&name, offsets[2] + 40, 0xFF); // body of the last batch
        disk.put(&name, offsets[2] + 5 * BLOCK as u64 + 7, &[9]); // a stray surviving sector
        let report = verify(&disk).unwrap();
        assert_eq!(report.torn_tail_bytes, 6 * BLOCK as u64);
        assert_eq!(report.records, 4);
        assert_eq!(verify(&disk).unwrap(), report, "verify changes nothing");
        let (recovered, lsns) = replay(&disk).unwrap();
        assert_eq!(lsns, vec![1, 2, 3, 4]);
        assert_eq!(recovered.next_lsn, Lsn(5));
        assert_eq!(recovered.tail, Some((name.clone(), offsets[2])));
        assert_eq!(recovered.truncated_bytes, 6 * BLOCK as u64);
        assert!(disk.read(&name).unwrap()[offsets[2] as usize..]
            .iter()
            .all(|&b| b == 0));
        // Now clean.
        assert_eq!(verify(&disk).unwrap().torn_tail_bytes, 0);
    }

    #[test]
    fn torn_header_and_garbage_after_a_zero_header_are_tails() {
        for (at, value) in [(0u64, 0x43u8), (3, 1), (29, 1)] {
            let disk = SimDisk::new();
            let offsets = segment(&disk, 1, &[(1, 2), (3, 2)]);
            let name = segment_name(Lsn(1));
            disk.corrupt(&name, offsets[1] + at, value);
            let (recovered, lsns) = replay(&disk).unwrap();
            assert_eq!((lsns, recovered.next_lsn), (vec![1, 2], Lsn(3)));
            assert!(recovered.truncated_bytes > 0);
        }
        // Zero header, then the rest of a torn batch.
        let disk = SimDisk::new();
        let offsets = segment(&disk, 1, &[(1, 2)]);
        disk.put(
            &segment_name(Lsn(1)),
            offsets[0] + BLOCK as u64 + 512,
            &[1; 512],
        );
        let (recovered, _) = replay(&disk).unwrap();
        assert_eq!(recovered.truncated_bytes, BLOCK as u64);
    }

    #[test]
    fn bad_batch_followed_by_valid_batch_is_corrupt() {
        let disk = SimDisk::new();
        let offsets = segment(&disk, 1, &[(1, 2), (3, 2), (5, 2)]);
        disk.corrupt(&segment_name(Lsn(1)), offsets[1] + 40, 0x01);
        let before = disk.read(&segment_name(Lsn(1))).unwrap();
        let reason = expect_corrupt(verify(&disk), 1, offsets[1]);
        assert!(
            reason.contains("body crc") && reason.contains(&format!("offset {}", offsets[2])),
            "{reason}"
        );
        assert!(matches!(replay(&disk), Err(WalError::Corrupt { .. })));
        assert_eq!(
            disk.read(&segment_name(Lsn(1))).unwrap(),
            before,
            "recover changed nothing"
        );
    }

    #[test]
    fn zeroed_block_followed_by_valid_batch_is_corrupt() {
        let disk = SimDisk::new();
        let offsets = segment(&disk, 1, &[(1, 2), (3, 2)]);
        disk.put(&segment_name(Lsn(1)), offsets[0], &[0u8; BLOCK]);
        expect_corrupt(verify(&disk), 1, 0);
    }

    #[test]
    fn bad_batch_in_an_older_segment_is_corrupt() {
        let disk = SimDisk::new();
        let offsets = segment(&disk, 1, &[(1, 2), (3, 2)]);
        segment(&disk, 5, &[(5, 1)]);
        disk.corrupt(&segment_name(Lsn(1)), offsets[1] + 2, 0x01);
        let reason = expect_corrupt(verify(&disk), 1, offsets[1]);
        assert!(
            reason.contains("bad batch") && reason.contains("continues at LSN 3"),
            "{reason}"
        );
        assert!(matches!(replay(&disk), Err(WalError::Corrupt { .. })));
        // Bytes after the end of data in an older segment are a recycled segment's old
        // ones (nothing reads them), unless they hold a batch that continues the log.
        let disk = SimDisk::new();
        segment(&disk, 1, &[(1, 2)]);
        segment(&disk, 3, &[(3, 1)]);
        disk.put(&segment_name(Lsn(1)), 3 * BLOCK as u64, &[1]);
        assert_eq!(verify(&disk).unwrap().records, 3);
        disk.put(
            &segment_name(Lsn(1)),
            4 * BLOCK as u64,
            &encode_batch(Lsn(3), &[(1, 1, b"3")]),
        );
        expect_corrupt(verify(&disk), 1, BLOCK as u64);
    }

    /// A recycled segment: `old` batches written at `old_first`, then renamed to
    /// `new_first`'s name and `new` batches written over its start.
    fn recycled(
        disk: &SimDisk,
        old_first: u64,
        old: &[(u64, u64)],
        new_first: u64,
        new: &[(u64, u64)],
    ) -> Vec<u64> {
        segment(disk, old_first, old);
        let old_name = segment_name(Lsn(old_first));
        let bytes = disk.read(&old_name).unwrap();
        disk.remove(&old_name);
        disk.put(&segment_name(Lsn(new_first)), 0, &bytes);
        let mut offsets = Vec::new();
        let mut offset = 0;
        for &(first, count) in new {
            let payloads: Vec<String> = (first..first + count).map(|l| l.to_string()).collect();
            let records: Vec<(u8, u8, &[u8])> =
                payloads.iter().map(|p| (1u8, 1u8, p.as_bytes())).collect();
            let batch = encode_batch(Lsn(first), &records);
            disk.put(&segment_name(Lsn(new_first)), offset, &batch);
            offsets.push(offset);
            offset += batch.len() as u64;
        }
        offsets
    }

    #[test]
    fn a_recycled_segment_ends_where_its_old_batches_begin() {
        // Old batches of 1 block each (records 1..=8); the new data covers the first three
        // blocks, so the fourth holds an old batch: a clean end, nothing to zero.
        let disk = SimDisk::new();
        segment(&disk, 20, &[(20, 1)]);
        let offsets = recycled(
            &disk,
            1,
            &[(1, 2), (3, 2), (5, 2), (7, 2)],
            21,
            &[(21, 1), (22, 2), (24, 1)],
        );
        let before = disk.read(&segment_name(Lsn(21))).unwrap();
        let (recovered, lsns) = replay(&disk).unwrap();
        assert_eq!(lsns, (20..=24).collect::<Vec<_>>());
        assert_eq!(
            recovered.tail,
            Some((segment_name(Lsn(21)), offsets[2] + BLOCK as u64))
        );
        assert_eq!(recovered.truncated_bytes, 0);
        assert_eq!(
            disk.read(&segment_name(Lsn(21))).unwrap(),
            before,
            "old bytes kept"
        );

        // Ending inside an old batch's body (a multi-block old batch under one new block):
        // zeroed like a torn tail, but only up to the largest batch.
        let disk = SimDisk::new();
        let big: String = "x".repeat(3 * BLOCK);
        segment(&disk, 1, &[]);
        disk.put(
            &segment_name(Lsn(1)),
            0,
            &encode_batch(Lsn(1), &[(1, 1, big.as_bytes())]),
        );
        let bytes = disk.read(&segment_name(Lsn(1))).unwrap();
        disk.remove(&segment_name(Lsn(1)));
        disk.put(&segment_name(Lsn(9)), 0, &bytes);
        disk.put(
            &segment_name(Lsn(9)),
            0,
            &encode_batch(Lsn(9), &[(1, 1, b"9")]),
        );
        let (recovered, lsns) = replay(&disk).unwrap();
        assert_eq!((lsns, recovered.next_lsn), (vec![9], Lsn(10)));
        assert_eq!(recovered.truncated_bytes, 3 * BLOCK as u64);
        assert_eq!(replay(&disk).unwrap().0.truncated_bytes, 0, "zeroed once");

        // A torn new batch over old data is a torn tail; old batches after it are not
        // corruption, a new one is.
        let disk = SimDisk::new();
        let offsets = recycled(
            &disk,
            1,
            &[(1, 2), (3, 2), (5, 2), (7, 2)],
            21,
            &[(21, 1), (22, 2)],
        );
        disk.corrupt(&segment_name(Lsn(21)), offsets[1] + 40, 0x01);
        let (recovered, lsns) = replay(&disk).unwrap();
        assert_eq!((lsns, recovered.next_lsn), (vec![21], Lsn(22)));
        assert!(recovered.truncated_bytes > 0);
        let disk = SimDisk::new();
        let offsets = recycled(
            &disk,
            1,
            &[(1, 2), (3, 2), (5, 2), (7, 2)],
            21,
            &[(21, 1), (22, 2), (24, 1)],
        );
        disk.corrupt(&segment_name(Lsn(21)), offsets[1] + 40, 0x01);
        expect_corrupt(verify(&disk), 21, offsets[1]);

        // An older recycled segment: old bytes after its data, the log goes on in the next.
        let disk = SimDisk::new();
        recycled(&disk, 1, &[(1, 2), (3, 2), (5, 2)], 11, &[(11, 3)]);
        segment(&disk, 14, &[(14, 1)]);
        let (recovered, lsns) = replay(&disk).unwrap();
        assert_eq!((lsns, recovered.next_lsn), (vec![11, 12, 13, 14], Lsn(15)));
        assert_eq!(recovered.truncated_bytes, 0);
    }

    #[test]
    fn lsn_gaps_are_corrupt() {
        // Between batches.
        let disk = SimDisk::new();
        let offsets = segment(&disk, 1, &[(1, 2), (4, 2)]);
        let reason = expect_corrupt(verify(&disk), 1, offsets[1]);
        assert!(
            reason.contains("LSN 4") && reason.contains("LSN 3"),
            "{reason}"
        );
        // Between segments (a segment is missing).
        let disk = SimDisk::new();
        segment(&disk, 1, &[(1, 2)]);
        segment(&disk, 5, &[(5, 2)]);
        expect_corrupt(verify(&disk), 5, 0);
        // A segment whose first batch disagrees with its name.
        let disk = SimDisk::new();
        segment(&disk, 1, &[(2, 2)]);
        expect_corrupt(verify(&disk), 1, 0);
    }

    #[test]
    fn foreign_file_names_are_reported() {
        let disk = SimDisk::new();
        segment(&disk, 1, &[(1, 2)]);
        disk.put("junk.wal", 0, &[0u8; BLOCK]);
        match verify(&disk) {
            Err(WalError::Corrupt { segment, .. }) => assert_eq!(segment, "junk.wal"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn empty_newest_segment_is_the_tail() {
        let disk = SimDisk::new();
        segment(&disk, 1, &[(1, 2)]);
        segment(&disk, 3, &[]);
        let (recovered, lsns) = replay(&disk).unwrap();
        assert_eq!(lsns, vec![1, 2]);
        assert_eq!(recovered.tail, Some((segment_name(Lsn(3)), 0)));
        assert_eq!(recovered.next_lsn, Lsn(3));
    }
}
