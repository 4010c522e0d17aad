//! The on-disk format of the write-ahead log, version 1.
//!
//! ```text
//! Segment file  <first LSN, 20 decimal digits>.wal, e.g. 00000000000000000001.wal
//!               Preallocated and zero-filled at creation; a multiple of BLOCK (4096) bytes.
//!               Holds batches back to back, each starting at a BLOCK-aligned offset.
//!               The first batch of a segment has first_lsn == the LSN in its name.
//!               Bytes after the last batch are zero, or, in a recycled segment, the old
//!               segment's: batches whose first_lsn is below the name's LSN ("stale"), and
//!               the blocks between them.
//!
//! Spare         <20 decimal digits>.spare: a segment that every checkpoint and sink has
//!               passed, renamed instead of deleted (PostgreSQL recycles its WAL files the
//!               same way), or one made ahead of need. A new segment is a spare renamed:
//!               no 64 MiB zero-fill on the commit path, and writes land on extents that
//!               were written before (fdatasync has only data to flush). A stale batch can
//!               never continue the log: every LSN in it is below the new name's.
//!
//! Batch         One per write + fdatasync (group commit). Zero-padded to the next BLOCK
//!               boundary; the padding is not covered by any checksum. A batch, padding
//!               included, is never larger than BATCH_BYTES_MAX (1 MiB).
//!
//!   offset size  field            (all integers little-endian)
//!        0    4  magic            0x4C57_5043, the bytes "CPWL"
//!        4    2  format version   1
//!        6    2  flags            0 (reserved)
//!        8    4  record count     >= 1
//!       12    4  body length      bytes of records that follow the header
//!       16    8  first_lsn        LSN of record 0; record i has LSN first_lsn + i
//!       24    4  body crc32c      over the body
//!       28    4  header crc32c    over bytes 0..28
//!       32    …  body             `record count` records back to back
//!
//! Record
//!        0    4  payload length   <= RECORD_PAYLOAD_MAX (64 KiB)
//!        4    1  kind             opaque to the WAL
//!        5    1  record version   opaque to the WAL (the payload's schema version)
//!        6    2  reserved         0
//!        8    …  payload
//! ```
//!
//! A header of 32 zero bytes marks the end of the data in a segment. Anything else that
//! does not decode (bad magic, unknown version or flags, bad checksums, a body that runs
//! past the end of the file or does not parse into exactly `record count` records) is a
//! bad batch; `reader` decides whether it is a torn tail or corruption.
//!
//! The writer keeps at most one batch written but not yet synced, so a power loss can
//! only tear the last batch of the log: a valid batch after a bad one is corruption.

use std::fmt;

use crate::domain::Lsn;

/// Alignment and padding unit of every batch, and of every write (O_DIRECT).
pub const BLOCK: usize = 4096;
/// Size of a batch header.
pub const BATCH_HEADER_BYTES: usize = 32;
/// Size of a record header.
pub const RECORD_HEADER_BYTES: usize = 8;
/// The largest payload a record may carry.
pub const RECORD_PAYLOAD_MAX: usize = 64 * 1024;
/// The largest batch, header and padding included.
pub const BATCH_BYTES_MAX: usize = 1 << 20;
/// Upper bound on records in one batch (every record has at least its header).
pub const BATCH_RECORDS_MAX: usize = (BATCH_BYTES_MAX - BATCH_HEADER_BYTES) / RECORD_HEADER_BYTES;
/// The smallest segment: one batch holding a maximal record must fit.
pub const SEGMENT_BYTES_MIN: u64 = 32 * BLOCK as u64;

/// "CPWL" read as a little-endian u32.
pub const BATCH_MAGIC: u32 = 0x4C57_5043;
/// The only format version this code reads and writes.
pub const FORMAT_VERSION: u16 = 1;
/// Power-loss atomicity unit assumed for disks (and simulated by `sim`).
pub const SECTOR: usize = 512;

const _: () = assert!(BLOCK.is_power_of_two());
const _: () = assert!(BLOCK % SECTOR == 0);
const _: () = assert!(BATCH_BYTES_MAX % BLOCK == 0);
const _: () =
    assert!(BATCH_HEADER_BYTES + RECORD_HEADER_BYTES + RECORD_PAYLOAD_MAX <= BATCH_BYTES_MAX);
const _: () = assert!(
    padded(BATCH_HEADER_BYTES + RECORD_HEADER_BYTES + RECORD_PAYLOAD_MAX) as u64
        <= SEGMENT_BYTES_MIN
);
const _: () = assert!(SEGMENT_BYTES_MIN % BLOCK as u64 == 0);
const _: () = assert!(BATCH_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(BATCH_RECORDS_MAX <= u32::MAX as usize);
const _: () = assert!(u32::from_le_bytes(*b"CPWL") == BATCH_MAGIC);

/// `len` rounded up to a multiple of BLOCK.
pub const fn padded(len: usize) -> usize {
    len.div_ceil(BLOCK) * BLOCK
}

/// Whether every byte is zero (compares in chunks: fast even in debug builds).
pub fn is_zero(bytes: &[u8]) -> bool {
    const ZEROS: [u8; 256] = [0; 256];
    bytes
        .chunks(ZEROS.len())
        .all(|chunk| chunk == &ZEROS[..chunk.len()])
}

/// Bytes a record with a payload of `payload_len` bytes takes in a batch body.
pub const fn record_bytes(payload_len: usize) -> usize {
    RECORD_HEADER_BYTES + payload_len
}

/// The file name of the segment whose first record is `first_lsn`.
pub fn segment_name(first_lsn: Lsn) -> String {
    assert!(first_lsn.0 >= 1, "LSNs start at 1");
    format!("{:020}.wal", first_lsn.0)
}

/// Suffix of a spare segment's file name (`<20 digits>.spare`).
pub const SPARE_SUFFIX: &str = ".spare";
/// Spares kept for reuse; a retired segment beyond them is deleted.
pub const SPARES_KEPT: usize = 2;

/// The name a retired segment gets as a spare (its old first LSN keeps names unique; 0 is a
/// spare made ahead of need).
pub fn spare_name(old_first: u64) -> String {
    format!("{old_first:020}{SPARE_SUFFIX}")
}

/// The first LSN encoded in a segment file name, if `name` is one `segment_name` makes.
pub fn parse_segment_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let lsn = digits.parse::<u64>().ok()?;
    (lsn >= 1).then_some(Lsn(lsn))
}

/// Builds one batch in place at the end of a caller-owned buffer, so that a group commit
/// can hold several batches back to back and write them without copying.
///
/// The buffer must not be touched by anything else between `begin` and `finish`.
#[derive(Debug)]
pub struct BatchEncoder {
    start: usize,
    first_lsn: Lsn,
    count: u32,
    body_len: usize,
    body_crc: u32,
}

/// Where a finished batch lies in its buffer, and what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodedBatch {
    pub start: usize,
    /// Padded length: a multiple of BLOCK.
    pub len: usize,
    pub first_lsn: Lsn,
    pub count: u32,
}

impl EncodedBatch {
    pub fn last_lsn(&self) -> Lsn {
        Lsn(self.first_lsn.0 + u64::from(self.count) - 1)
    }
}

impl BatchEncoder {
    /// Starts a batch whose first record will have `first_lsn`. `buf.len()` must be
    /// BLOCK-aligned (it is the end of the previous batch, or zero).
    pub fn begin(buf: &mut Vec<u8>, first_lsn: Lsn) -> BatchEncoder {
        assert!(first_lsn.0 >= 1, "LSNs start at 1");
        assert!(buf.len() % BLOCK == 0, "a batch starts BLOCK-aligned");
        let start = buf.len();
        buf.resize(start + BATCH_HEADER_BYTES, 0);
        BatchEncoder {
            start,
            first_lsn,
            count: 0,
            body_len: 0,
            body_crc: 0,
        }
    }

    /// Header plus body so far, without padding.
    pub fn unpadded_len(&self) -> usize {
        BATCH_HEADER_BYTES + self.body_len
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// The LSN the next pushed record gets.
    pub fn next_lsn(&self) -> Lsn {
        Lsn(self.first_lsn.0 + u64::from(self.count))
    }

    /// Whether a record of `payload_len` bytes fits without the batch exceeding `limit`
    /// bytes once padded. `limit` is a BLOCK multiple no larger than BATCH_BYTES_MAX.
    pub fn fits(&self, payload_len: usize, limit: usize) -> bool {
        assert!(limit % BLOCK == 0 && limit <= BATCH_BYTES_MAX);
        payload_len <= RECORD_PAYLOAD_MAX
            && self.unpadded_len() + record_bytes(payload_len) <= limit
    }

    /// Appends one record; returns its LSN.
    pub fn push(&mut self, buf: &mut Vec<u8>, kind: u8, version: u8, payload: &[u8]) -> Lsn {
        assert!(payload.len() <= RECORD_PAYLOAD_MAX);
        assert!(self.fits(payload.len(), BATCH_BYTES_MAX));
        assert_eq!(
            buf.len(),
            self.start + self.unpadded_len(),
            "buffer changed under the encoder"
        );
        let mut header = [0u8; RECORD_HEADER_BYTES];
        header[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        header[4] = kind;
        header[5] = version;
        // header[6..8]: reserved, zero.
        buf.extend_from_slice(&header);
        buf.extend_from_slice(payload);
        self.body_crc = crc32c::crc32c_append(self.body_crc, &header);
        self.body_crc = crc32c::crc32c_append(self.body_crc, payload);
        let lsn = self.next_lsn();
        self.count += 1;
        self.body_len += record_bytes(payload.len());
        assert!(self.count as usize <= BATCH_RECORDS_MAX);
        lsn
    }

    /// Writes the header and pads the buffer to the next BLOCK boundary.
    pub fn finish(self, buf: &mut Vec<u8>) -> EncodedBatch {
        assert!(self.count >= 1, "an empty batch is never written");
        assert_eq!(
            buf.len(),
            self.start + self.unpadded_len(),
            "buffer changed under the encoder"
        );
        let header = encode_header(&BatchHeader {
            count: self.count,
            body_len: self.body_len as u32,
            first_lsn: self.first_lsn,
            body_crc: self.body_crc,
        });
        buf[self.start..self.start + BATCH_HEADER_BYTES].copy_from_slice(&header);
        let len = padded(self.unpadded_len());
        buf.resize(self.start + len, 0);
        debug_assert_eq!(
            crc32c::crc32c(&buf[self.start + BATCH_HEADER_BYTES..][..self.body_len]),
            self.body_crc
        );
        assert!(len <= BATCH_BYTES_MAX && len % BLOCK == 0);
        EncodedBatch {
            start: self.start,
            len,
            first_lsn: self.first_lsn,
            count: self.count,
        }
    }
}

/// Encodes a whole batch into a fresh buffer (tools and tests).
pub fn encode_batch(first_lsn: Lsn, records: &[(u8, u8, &[u8])]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut encoder = BatchEncoder::begin(&mut buf, first_lsn);
    for &(kind, version, payload) in records {
        encoder.push(&mut buf, kind, version, payload);
    }
    let batch = encoder.finish(&mut buf);
    assert_eq!(batch.len, buf.len());
    buf
}

/// The fixed fields of a batch header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub count: u32,
    pub body_len: u32,
    pub first_lsn: Lsn,
    pub body_crc: u32,
}

fn encode_header(header: &BatchHeader) -> [u8; BATCH_HEADER_BYTES] {
    let mut out = [0u8; BATCH_HEADER_BYTES];
    out[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
    out[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[6..8].copy_from_slice(&0u16.to_le_bytes());
    out[8..12].copy_from_slice(&header.count.to_le_bytes());
    out[12..16].copy_from_slice(&header.body_len.to_le_bytes());
    out[16..24].copy_from_slice(&header.first_lsn.0.to_le_bytes());
    out[24..28].copy_from_slice(&header.body_crc.to_le_bytes());
    let crc = crc32c::crc32c(&out[0..28]);
    out[28..32].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Why bytes at a batch offset are not a valid batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FormatError {
    /// Fewer bytes than a header remain in the file.
    ShortHeader {
        len: usize,
    },
    BadMagic {
        found: u32,
    },
    HeaderCrc {
        stored: u32,
        computed: u32,
    },
    UnsupportedVersion {
        version: u16,
    },
    UnsupportedFlags {
        flags: u16,
    },
    /// Count, body length or first LSN out of range.
    BadHeader {
        reason: &'static str,
    },
    /// The body runs past the end of the file.
    Truncated {
        body_len: usize,
        available: usize,
    },
    BodyCrc {
        stored: u32,
        computed: u32,
    },
    /// The body does not parse into exactly `count` records.
    BadRecord {
        index: u32,
        reason: &'static str,
    },
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::ShortHeader { len } => {
                write!(f, "only {len} bytes left for a batch header")
            }
            FormatError::BadMagic { found } => write!(f, "bad batch magic {found:#010x}"),
            FormatError::HeaderCrc { stored, computed } => {
                write!(
                    f,
                    "header crc mismatch (stored {stored:#010x}, computed {computed:#010x})"
                )
            }
            FormatError::UnsupportedVersion { version } => {
                write!(f, "unsupported format version {version}")
            }
            FormatError::UnsupportedFlags { flags } => {
                write!(f, "unsupported batch flags {flags:#06x}")
            }
            FormatError::BadHeader { reason } => write!(f, "bad batch header: {reason}"),
            FormatError::Truncated {
                body_len,
                available,
            } => {
                write!(f, "batch body of {body_len} bytes truncated to {available}")
            }
            FormatError::BodyCrc { stored, computed } => {
                write!(
                    f,
                    "body crc mismatch (stored {stored:#010x}, computed {computed:#010x})"
                )
            }
            FormatError::BadRecord { index, reason } => write!(f, "bad record {index}: {reason}"),
        }
    }
}

impl std::error::Error for FormatError {}

/// A batch that passed every check, borrowing its body.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    pub header: BatchHeader,
    body: &'a [u8],
}

/// One record of a decoded batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub lsn: Lsn,
    pub kind: u8,
    pub version: u8,
    pub payload: &'a [u8],
}

impl<'a> Batch<'a> {
    pub fn first_lsn(&self) -> Lsn {
        self.header.first_lsn
    }

    pub fn last_lsn(&self) -> Lsn {
        Lsn(self.header.first_lsn.0 + u64::from(self.header.count) - 1)
    }

    pub fn count(&self) -> u32 {
        self.header.count
    }

    /// Bytes from this batch's offset to the next batch's offset (header, body, padding).
    pub fn encoded_len(&self) -> usize {
        padded(BATCH_HEADER_BYTES + self.body.len())
    }

    pub fn records(&self) -> Records<'a> {
        Records {
            rest: self.body,
            lsn: self.header.first_lsn,
            left: self.header.count,
        }
    }
}

/// Iterator over the records of a `Batch` (already validated by `decode_batch`).
#[derive(Clone, Debug)]
pub struct Records<'a> {
    rest: &'a [u8],
    lsn: Lsn,
    left: u32,
}

impl<'a> Iterator for Records<'a> {
    type Item = Record<'a>;

    fn next(&mut self) -> Option<Record<'a>> {
        if self.left == 0 {
            assert!(self.rest.is_empty(), "decode_batch checked the body length");
            return None;
        }
        let (header, payload) =
            parse_record(self.rest).expect("decode_batch validated every record");
        let record = Record {
            lsn: self.lsn,
            kind: header[4],
            version: header[5],
            payload,
        };
        self.rest = &self.rest[record_bytes(payload.len())..];
        self.lsn = Lsn(self.lsn.0 + 1);
        self.left -= 1;
        Some(record)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

impl ExactSizeIterator for Records<'_> {}

/// Splits the record at the start of `body` into its header and payload.
fn parse_record(body: &[u8]) -> Result<(&[u8], &[u8]), &'static str> {
    if body.len() < RECORD_HEADER_BYTES {
        return Err("record header past the end of the body");
    }
    let (header, rest) = body.split_at(RECORD_HEADER_BYTES);
    let payload_len = u32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
    if payload_len > RECORD_PAYLOAD_MAX {
        return Err("payload longer than RECORD_PAYLOAD_MAX");
    }
    if header[6..8] != [0, 0] {
        return Err("reserved bytes are not zero");
    }
    if payload_len > rest.len() {
        return Err("payload past the end of the body");
    }
    Ok((header, &rest[..payload_len]))
}

/// Decodes the batch at the start of `bytes` (which runs to the end of the segment).
/// `Ok(None)`: the header is all zeros, the end of the data in this segment.
pub fn decode_batch(bytes: &[u8]) -> Result<Option<Batch<'_>>, FormatError> {
    if bytes.len() < BATCH_HEADER_BYTES {
        return Err(FormatError::ShortHeader { len: bytes.len() });
    }
    let header = &bytes[..BATCH_HEADER_BYTES];
    if is_zero(header) {
        return Ok(None);
    }
    let u32_at = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().unwrap());
    let u16_at = |i: usize| u16::from_le_bytes(header[i..i + 2].try_into().unwrap());
    let magic = u32_at(0);
    if magic != BATCH_MAGIC {
        return Err(FormatError::BadMagic { found: magic });
    }
    let stored = u32_at(28);
    let computed = crc32c::crc32c(&header[0..28]);
    if stored != computed {
        return Err(FormatError::HeaderCrc { stored, computed });
    }
    // The header is intact: what follows are writer bugs or foreign data, not tears.
    let version = u16_at(4);
    if version != FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion { version });
    }
    let flags = u16_at(6);
    if flags != 0 {
        return Err(FormatError::UnsupportedFlags { flags });
    }
    let header = BatchHeader {
        count: u32_at(8),
        body_len: u32_at(12),
        first_lsn: Lsn(u64::from_le_bytes(header[16..24].try_into().unwrap())),
        body_crc: u32_at(24),
    };
    let body_len = header.body_len as usize;
    if header.count == 0 {
        return Err(FormatError::BadHeader {
            reason: "record count is zero",
        });
    }
    if BATCH_HEADER_BYTES + body_len > BATCH_BYTES_MAX {
        return Err(FormatError::BadHeader {
            reason: "body longer than BATCH_BYTES_MAX",
        });
    }
    if (header.count as usize).saturating_mul(RECORD_HEADER_BYTES) > body_len {
        return Err(FormatError::BadHeader {
            reason: "more records than the body can hold",
        });
    }
    if header.first_lsn.0 == 0
        || header
            .first_lsn
            .0
            .checked_add(u64::from(header.count))
            .is_none()
    {
        return Err(FormatError::BadHeader {
            reason: "first LSN out of range",
        });
    }
    let available = bytes.len() - BATCH_HEADER_BYTES;
    if body_len > available {
        return Err(FormatError::Truncated {
            body_len,
            available,
        });
    }
    let body = &bytes[BATCH_HEADER_BYTES..][..body_len];
    let computed = crc32c::crc32c(body);
    if computed != header.body_crc {
        return Err(FormatError::BodyCrc {
            stored: header.body_crc,
            computed,
        });
    }
    let mut rest = body;
    for index in 0..header.count {
        let (_, payload) =
            parse_record(rest).map_err(|reason| FormatError::BadRecord { index, reason })?;
        rest = &rest[record_bytes(payload.len())..];
    }
    if !rest.is_empty() {
        return Err(FormatError::BadRecord {
            index: header.count,
            reason: "bytes after the last record",
        });
    }
    Ok(Some(Batch { header, body }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        encode_batch(
            Lsn(7),
            &[(1, 1, b"alpha"), (2, 3, b""), (9, 1, &[0xAB; 5000])],
        )
    }

    fn expect_err(bytes: &[u8]) -> FormatError {
        match decode_batch(bytes) {
            Err(e) => e,
            Ok(b) => panic!("expected an error, decoded {b:?}"),
        }
    }

    /// Rewrites the header crc so that a header edit is not caught by it.
    fn fix_header_crc(bytes: &mut [u8]) {
        let crc = crc32c::crc32c(&bytes[0..28]);
        bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        assert_eq!(bytes.len(), 2 * BLOCK);
        assert_eq!(&bytes[0..4], b"CPWL");
        let batch = decode_batch(&bytes).unwrap().unwrap();
        assert_eq!(batch.first_lsn(), Lsn(7));
        assert_eq!(batch.last_lsn(), Lsn(9));
        assert_eq!(batch.encoded_len(), bytes.len());
        let records: Vec<Record> = batch.records().collect();
        assert_eq!(records.len(), 3);
        assert_eq!(
            records[0],
            Record {
                lsn: Lsn(7),
                kind: 1,
                version: 1,
                payload: b"alpha"
            }
        );
        assert_eq!(
            records[1],
            Record {
                lsn: Lsn(8),
                kind: 2,
                version: 3,
                payload: b""
            }
        );
        assert_eq!(records[2].lsn, Lsn(9));
        assert_eq!(records[2].payload, &[0xAB; 5000][..]);
        // Padding is zero.
        let body_end = BATCH_HEADER_BYTES + 3 * RECORD_HEADER_BYTES + 5 + 5000;
        assert!(bytes[body_end..].iter().all(|&b| b == 0));
    }

    #[test]
    fn encoder_appends_batches_back_to_back() {
        let mut buf = Vec::new();
        let mut a = BatchEncoder::begin(&mut buf, Lsn(1));
        assert_eq!(a.push(&mut buf, 1, 1, b"x"), Lsn(1));
        let a = a.finish(&mut buf);
        let mut b = BatchEncoder::begin(&mut buf, Lsn(2));
        assert_eq!(b.push(&mut buf, 1, 1, b"y"), Lsn(2));
        assert_eq!(b.push(&mut buf, 1, 1, b"z"), Lsn(3));
        let b = b.finish(&mut buf);
        assert_eq!((a.start, a.len, b.start, b.len), (0, BLOCK, BLOCK, BLOCK));
        assert_eq!(b.last_lsn(), Lsn(3));
        let second = decode_batch(&buf[b.start..]).unwrap().unwrap();
        assert_eq!(
            second.records().map(|r| r.payload).collect::<Vec<_>>(),
            vec![b"y", b"z"]
        );
    }

    #[test]
    fn largest_record_fits_a_batch() {
        let payload = vec![7u8; RECORD_PAYLOAD_MAX];
        let bytes = encode_batch(Lsn(1), &[(1, 1, &payload)]);
        assert!(bytes.len() <= BATCH_BYTES_MAX);
        assert_eq!(
            decode_batch(&bytes)
                .unwrap()
                .unwrap()
                .records()
                .next()
                .unwrap()
                .payload
                .len(),
            RECORD_PAYLOAD_MAX
        );
        let mut buf = Vec::new();
        let encoder = BatchEncoder::begin(&mut buf, Lsn(1));
        assert!(encoder.fits(RECORD_PAYLOAD_MAX, BATCH_BYTES_MAX));
        assert!(!encoder.fits(RECORD_PAYLOAD_MAX + 1, BATCH_BYTES_MAX));
        assert!(!encoder.fits(BLOCK, BLOCK));
    }

    #[test]
    fn zero_header_is_end_of_log() {
        assert!(decode_batch(&[0u8; BLOCK]).unwrap().is_none());
        // A zero header ends the log even if garbage follows it (the reader looks further).
        let mut bytes = vec![0u8; BLOCK];
        bytes[100] = 1;
        assert!(decode_batch(&bytes).unwrap().is_none());
    }

    #[test]
    fn bad_magic() {
        let mut bytes = sample();
        bytes[0] ^= 0xFF;
        assert!(matches!(expect_err(&bytes), FormatError::BadMagic { .. }));
    }

    #[test]
    fn bad_header_crc() {
        let mut bytes = sample();
        bytes[16] ^= 1; // first_lsn
        assert!(matches!(expect_err(&bytes), FormatError::HeaderCrc { .. }));
        let mut bytes = sample();
        bytes[30] ^= 1; // the crc itself
        assert!(matches!(expect_err(&bytes), FormatError::HeaderCrc { .. }));
    }

    #[test]
    fn bad_body_crc() {
        let mut bytes = sample();
        bytes[BATCH_HEADER_BYTES + RECORD_HEADER_BYTES] ^= 0x20; // 'a' of "alpha"
        assert!(matches!(expect_err(&bytes), FormatError::BodyCrc { .. }));
        // The last body byte too.
        let mut bytes = sample();
        let body_end = BATCH_HEADER_BYTES + 3 * RECORD_HEADER_BYTES + 5 + 5000;
        bytes[body_end - 1] ^= 1;
        assert!(matches!(expect_err(&bytes), FormatError::BodyCrc { .. }));
        // Padding is outside the checksums.
        let mut bytes = sample();
        bytes[body_end] = 0xFF;
        assert!(decode_batch(&bytes).unwrap().is_some());
    }

    #[test]
    fn truncated_body_and_header() {
        let bytes = sample();
        assert!(matches!(
            expect_err(&bytes[..BLOCK]),
            FormatError::Truncated { .. }
        ));
        assert!(matches!(
            expect_err(&bytes[..BATCH_HEADER_BYTES + 3]),
            FormatError::Truncated { .. }
        ));
        assert!(matches!(
            expect_err(&bytes[..BATCH_HEADER_BYTES - 1]),
            FormatError::ShortHeader { .. }
        ));
        assert!(matches!(
            expect_err(&[]),
            FormatError::ShortHeader { len: 0 }
        ));
    }

    #[test]
    fn header_fields_out_of_range() {
        let edit = |at: usize, value: &[u8]| {
            let mut bytes = sample();
            bytes[at..at + value.len()].copy_from_slice(value);
            fix_header_crc(&mut bytes);
            expect_err(&bytes)
        };
        assert!(matches!(
            edit(4, &2u16.to_le_bytes()),
            FormatError::UnsupportedVersion { version: 2 }
        ));
        assert!(matches!(
            edit(6, &1u16.to_le_bytes()),
            FormatError::UnsupportedFlags { flags: 1 }
        ));
        assert!(matches!(
            edit(8, &0u32.to_le_bytes()),
            FormatError::BadHeader { .. }
        ));
        assert!(matches!(
            edit(8, &u32::MAX.to_le_bytes()),
            FormatError::BadHeader { .. }
        ));
        assert!(matches!(
            edit(12, &(BATCH_BYTES_MAX as u32).to_le_bytes()),
            FormatError::BadHeader { .. }
        ));
        assert!(matches!(
            edit(16, &0u64.to_le_bytes()),
            FormatError::BadHeader { .. }
        ));
        assert!(matches!(
            edit(16, &u64::MAX.to_le_bytes()),
            FormatError::BadHeader { .. }
        ));
    }

    #[test]
    fn record_framing_is_checked_under_a_valid_crc() {
        // A count that disagrees with the body, with both crcs valid: the body has 3 records.
        let mut bytes = sample();
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        fix_header_crc(&mut bytes);
        assert!(matches!(
            expect_err(&bytes),
            FormatError::BadRecord { index: 2, .. }
        ));
        let mut bytes = sample();
        bytes[8..12].copy_from_slice(&4u32.to_le_bytes());
        fix_header_crc(&mut bytes);
        assert!(matches!(
            expect_err(&bytes),
            FormatError::BadRecord { index: 3, .. }
        ));
        // Reserved bytes must be zero.
        let mut bytes = sample();
        bytes[BATCH_HEADER_BYTES + 6] = 1;
        let crc = crc32c::crc32c(
            &bytes[BATCH_HEADER_BYTES..BATCH_HEADER_BYTES + 3 * RECORD_HEADER_BYTES + 5005],
        );
        bytes[24..28].copy_from_slice(&crc.to_le_bytes());
        fix_header_crc(&mut bytes);
        assert!(matches!(
            expect_err(&bytes),
            FormatError::BadRecord { index: 0, .. }
        ));
    }

    #[test]
    fn segment_names() {
        assert_eq!(segment_name(Lsn(1)), "00000000000000000001.wal");
        assert_eq!(parse_segment_name("00000000000000000001.wal"), Some(Lsn(1)));
        assert_eq!(
            parse_segment_name(&segment_name(Lsn(u64::MAX))),
            Some(Lsn(u64::MAX))
        );
        assert_eq!(parse_segment_name("00000000000000000000.wal"), None);
        assert_eq!(parse_segment_name("1.wal"), None);
        assert_eq!(parse_segment_name("0000000000000000000a.wal"), None);
        assert_eq!(parse_segment_name("00000000000000000001.tmp"), None);
    }
}
