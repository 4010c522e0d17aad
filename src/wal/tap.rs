//! Durable batches handed in memory to one reader on another thread (the store writer), so
//! that it need not read back from disk what the shard has just written: the segments are
//! written O_DIRECT, never in the page cache, so every read-back was a device read competing
//! with the log's own writes (2.8–8 KB read per record, BENCHMARKS.md).
//!
//! Bounded by bytes and by batches. The writer offers each batch once it is durable and never
//! waits: a batch that does not fit is dropped and counted, and the reader, finding the LSN gap,
//! reads those records from the segments instead. So the tap can only make reading cheaper,
//! never lose or reorder a record.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam::queue::ArrayQueue;

/// A bounded single-producer, single-consumer hand-off of durable batches (encoded bytes, as
/// in a segment: `format::decode_batch` reads them).
pub struct DurableTap {
    queue: ArrayQueue<Box<[u8]>>,
    bytes: AtomicUsize,
    max_bytes: usize,
    offered: AtomicU64,
    dropped: AtomicU64,
}

impl DurableTap {
    /// Holds at most `max_batches` batches and `max_bytes` bytes.
    pub fn new(max_bytes: usize, max_batches: usize) -> DurableTap {
        assert!(max_batches > 0 && max_bytes > 0);
        DurableTap {
            queue: ArrayQueue::new(max_batches),
            bytes: AtomicUsize::new(0),
            max_bytes,
            offered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Offers a durable batch. Never blocks; false (and counted) when it does not fit.
    pub fn offer(&self, batch: &[u8]) -> bool {
        self.offered.fetch_add(1, Ordering::Relaxed);
        // One producer: nobody else adds bytes between this check and the add below.
        let fits = self.bytes.load(Ordering::Acquire) + batch.len() <= self.max_bytes;
        if fits {
            self.bytes.fetch_add(batch.len(), Ordering::AcqRel);
            if self.queue.push(batch.into()).is_ok() {
                return true;
            }
            self.bytes.fetch_sub(batch.len(), Ordering::AcqRel);
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// The oldest batch offered and not yet taken.
    pub fn take(&self) -> Option<Box<[u8]>> {
        let batch = self.queue.pop()?;
        let before = self.bytes.fetch_sub(batch.len(), Ordering::AcqRel);
        assert!(before >= batch.len(), "tap byte count out of step");
        Some(batch)
    }

    /// (offered, dropped) so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.offered.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_bytes_and_batches_in_order() {
        let tap = DurableTap::new(10, 3);
        assert!(tap.offer(&[1; 4]));
        assert!(tap.offer(&[2; 4]));
        assert!(!tap.offer(&[3; 4]), "12 bytes do not fit 10");
        assert!(tap.offer(&[4; 2]));
        assert!(!tap.offer(&[5; 0]), "a fourth batch does not fit 3");
        assert_eq!(tap.counts(), (5, 2));
        assert_eq!(&*tap.take().unwrap(), &[1; 4]);
        assert!(tap.offer(&[6; 4]), "room again");
        let rest: Vec<u8> = std::iter::from_fn(|| tap.take()).map(|b| b[0]).collect();
        assert_eq!(rest, [2, 4, 6]);
        assert!(tap.take().is_none());
    }
}
