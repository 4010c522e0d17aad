//! An in-memory disk with power loss and fault injection, for deterministic tests of the
//! real writer and recovery code (TigerBeetle's `testing/storage.zig` in miniature).
//!
//! Every file keeps its current content and its durable ("synced") content. A crash
//! replaces the current content with the durable content, except that some 512-byte
//! sectors written since the last sync may survive, chosen by a seeded RNG: torn writes.
//! Every I/O future yields once before it takes effect, so a test that polls the writer
//! step by step can crash it between a write and its fdatasync.
//!
//! It also checks the writer: writes must be BLOCK-aligned, and must never overwrite a
//! block it synced since the file was created (a WAL appends; it never rewrites
//! acknowledged data). A recycled file's old blocks may be overwritten.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::rc::Rc;

use super::format::{is_zero, parse_segment_name, spare_name, BLOCK, SECTOR, SPARE_SUFFIX};
use super::io::{SegmentDir, SegmentFile, SegmentSource};

/// An in-memory disk; clones share the same files.
#[derive(Clone, Default)]
pub struct SimDisk {
    inner: Rc<RefCell<SimState>>,
}

#[derive(Default)]
struct SimState {
    files: BTreeMap<String, SimFile>,
    /// Bumped by every crash: file handles from before it fail, like a dead process's.
    epoch: u64,
    fail_next_sync: bool,
    fail_next_write: bool,
    /// Set by `power_cut` until `power_on`: nothing the dead process still does lands.
    off: bool,
    /// Extra scheduler turns each sync takes (a slow disk, in a deterministic unit).
    sync_turns: u32,
    writes: u64,
    syncs: u64,
}

#[derive(Default)]
struct SimFile {
    current: Vec<u8>,
    synced: Vec<u8>,
    /// Indices of sectors written since the last sync.
    dirty: BTreeSet<usize>,
    /// Indices of blocks synced since the file was created or recycled.
    fresh: BTreeSet<usize>,
}

/// A segment file on a `SimDisk`.
pub struct SimSegment {
    disk: SimDisk,
    name: String,
    epoch: u64,
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// Every later sync takes `turns` more turns of the executor before it completes: the
    /// tasks ready meanwhile run first, as they would while a real disk flushes.
    pub fn set_sync_turns(&self, turns: u32) {
        self.inner.borrow_mut().sync_turns = turns;
    }

    /// The next `SegmentFile::sync` fails (once).
    pub fn fail_next_sync(&self) {
        self.inner.borrow_mut().fail_next_sync = true;
    }

    /// The next `SegmentFile::write_at` fails (once) without writing anything.
    pub fn fail_next_write(&self) {
        self.inner.borrow_mut().fail_next_write = true;
    }

    /// Power loss: every write not covered by a later sync is dropped, except that some
    /// sectors of it may survive, chosen deterministically by `rng_seed`.
    pub fn crash(&self, rng_seed: u64) {
        let mut rng = SplitMix64(rng_seed);
        let mut state = self.inner.borrow_mut();
        for file in state.files.values_mut() {
            let dirty: Vec<usize> = std::mem::take(&mut file.dirty).into_iter().collect();
            // A few shapes of partial persistence: any subset, a prefix, all, none.
            let prefix = match rng.below(4) {
                0 => None,
                1 => Some(rng.below(dirty.len() as u64 + 1) as usize),
                2 => Some(dirty.len()),
                _ => Some(0),
            };
            for (i, &sector) in dirty.iter().enumerate() {
                let survives = match prefix {
                    None => rng.below(2) == 0,
                    Some(n) => i < n,
                };
                if survives {
                    let range = sector * SECTOR..(sector + 1) * SECTOR;
                    if file.synced.len() < range.end {
                        file.synced.resize(range.end, 0);
                    }
                    file.synced[range.clone()].copy_from_slice(&file.current[range]);
                }
            }
            file.current = file.synced.clone();
        }
        state.reset_after_crash();
    }

    /// `crash`, and the machine stays off: everything the process that was running still
    /// tries (its tasks may run on in a test's executor) fails, until `power_on`.
    pub fn power_cut(&self, rng_seed: u64) {
        self.crash(rng_seed);
        self.inner.borrow_mut().off = true;
    }

    /// After `power_cut`: the disk serves a new process.
    pub fn power_on(&self) {
        self.inner.borrow_mut().off = false;
    }

    /// Power loss in which nothing unsynced survives.
    pub fn crash_dropping_all_unsynced(&self) {
        let mut state = self.inner.borrow_mut();
        for file in state.files.values_mut() {
            file.dirty.clear();
            file.current = file.synced.clone();
        }
        state.reset_after_crash();
    }

    /// Flips bits of durable data in place (bit rot); for corruption tests.
    pub fn corrupt(&self, name: &str, offset: u64, xor: u8) {
        let mut state = self.inner.borrow_mut();
        let file = state
            .files
            .get_mut(name)
            .expect("corrupting a file that does not exist");
        let at = offset as usize;
        assert!(file.dirty.is_empty(), "corrupt durable data only");
        file.current[at] ^= xor;
        file.synced[at] ^= xor;
    }

    /// Overwrites durable bytes, bypassing the writer's checks; for building test logs.
    pub fn put(&self, name: &str, offset: u64, bytes: &[u8]) {
        let mut state = self.inner.borrow_mut();
        let file = state.files.entry(name.to_owned()).or_default();
        let end = offset as usize + bytes.len();
        for data in [&mut file.current, &mut file.synced] {
            if data.len() < end {
                data.resize(end, 0);
            }
            data[offset as usize..end].copy_from_slice(bytes);
        }
    }

    pub fn remove(&self, name: &str) {
        self.inner
            .borrow_mut()
            .files
            .remove(name)
            .expect("removing a file that does not exist");
    }

    /// Renames a durable segment to a spare (what `wal::io::retire_segments_before` does on
    /// a real disk); the next `create` of that length reuses it, old bytes and all.
    pub fn recycle(&self, name: &str) {
        let mut state = self.inner.borrow_mut();
        let mut file = state
            .files
            .remove(name)
            .expect("recycling a file that does not exist");
        assert!(file.dirty.is_empty(), "recycle a synced segment only");
        file.fresh.clear();
        let first = parse_segment_name(name).expect("a segment name").0;
        state.files.insert(spare_name(first), file);
    }

    pub fn file_names(&self) -> Vec<String> {
        self.inner.borrow().files.keys().cloned().collect()
    }

    /// (writes, syncs) completed so far.
    pub fn io_counts(&self) -> (u64, u64) {
        let state = self.inner.borrow();
        (state.writes, state.syncs)
    }
}

impl SimState {
    fn powered(&self) -> io::Result<()> {
        if self.off {
            return Err(io::Error::other("sim: the power is off"));
        }
        Ok(())
    }

    fn reset_after_crash(&mut self) {
        self.epoch += 1;
        self.fail_next_sync = false;
        self.fail_next_write = false;
        for file in self.files.values() {
            assert!(file.dirty.is_empty());
            assert_eq!(file.current, file.synced);
        }
    }

    fn file(&mut self, name: &str, epoch: u64) -> io::Result<&mut SimFile> {
        self.powered()?;
        if epoch != self.epoch {
            return Err(io::Error::other("sim: file handle from before a crash"));
        }
        self.files
            .get_mut(name)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
}

impl SegmentFile for SimSegment {
    async fn write_at(&self, data: &[u8], pos: u64) -> io::Result<()> {
        futures_lite::future::yield_now().await;
        let mut state = self.disk.inner.borrow_mut();
        assert!(pos % BLOCK as u64 == 0, "unaligned write position {pos}");
        assert!(
            data.len() % BLOCK == 0 && !data.is_empty(),
            "unaligned write length {}",
            data.len()
        );
        if std::mem::take(&mut state.fail_next_write) {
            return Err(io::Error::other("sim: injected write failure"));
        }
        let file = state.file(&self.name, self.epoch)?;
        let (start, end) = (pos as usize, pos as usize + data.len());
        for block in start / BLOCK..end / BLOCK {
            let durable = file
                .synced
                .get(block * BLOCK..(block + 1) * BLOCK)
                .unwrap_or(&[]);
            assert!(
                !file.fresh.contains(&block) || is_zero(durable),
                "write over durable data in {} at {pos}: a WAL never rewrites what it acknowledged",
                self.name
            );
        }
        if file.current.len() < end {
            file.current.resize(end, 0);
        }
        file.current[start..end].copy_from_slice(data);
        file.dirty.extend(start / SECTOR..end / SECTOR);
        state.writes += 1;
        Ok(())
    }

    async fn sync(&self) -> io::Result<()> {
        futures_lite::future::yield_now().await;
        let turns = self.disk.inner.borrow().sync_turns;
        for _ in 0..turns {
            futures_lite::future::yield_now().await;
        }
        let mut state = self.disk.inner.borrow_mut();
        if std::mem::take(&mut state.fail_next_sync) {
            // Like Linux after a failed fsync: the dirty data may or may not reach the disk.
            return Err(io::Error::other("sim: injected sync failure"));
        }
        let file = state.file(&self.name, self.epoch)?;
        if file.synced.len() < file.current.len() {
            file.synced.resize(file.current.len(), 0);
        }
        for sector in std::mem::take(&mut file.dirty) {
            let range = sector * SECTOR..(sector + 1) * SECTOR;
            file.synced[range.clone()].copy_from_slice(&file.current[range]);
            file.fresh.insert(sector * SECTOR / BLOCK);
        }
        debug_assert_eq!(file.current, file.synced);
        state.syncs += 1;
        Ok(())
    }
}

impl SegmentDir for SimDisk {
    type File = SimSegment;

    async fn create(&self, name: &str, len: u64) -> io::Result<(SimSegment, bool)> {
        futures_lite::future::yield_now().await;
        assert!(len % BLOCK as u64 == 0 && len > 0);
        let mut state = self.inner.borrow_mut();
        state.powered()?;
        if state.files.contains_key(name) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        // A spare of this length renamed, or created zero-filled; either way synced and the
        // directory synced: durable at once.
        let spare = state
            .files
            .iter()
            .find(|(n, f)| n.ends_with(SPARE_SUFFIX) && f.current.len() as u64 == len)
            .map(|(n, _)| n.clone());
        let reused = spare.is_some();
        let file = match spare {
            Some(spare) => state.files.remove(&spare).expect("found above"),
            None => {
                let zeros = vec![0u8; len as usize];
                SimFile {
                    current: zeros.clone(),
                    synced: zeros,
                    dirty: BTreeSet::new(),
                    fresh: BTreeSet::new(),
                }
            }
        };
        state.files.insert(name.to_owned(), file);
        let segment = SimSegment {
            disk: self.clone(),
            name: name.to_owned(),
            epoch: state.epoch,
        };
        Ok((segment, reused))
    }

    async fn open(&self, name: &str) -> io::Result<SimSegment> {
        futures_lite::future::yield_now().await;
        let mut state = self.inner.borrow_mut();
        let epoch = state.epoch;
        state.file(name, epoch)?;
        Ok(SimSegment {
            disk: self.clone(),
            name: name.to_owned(),
            epoch,
        })
    }
}

impl SegmentSource for SimDisk {
    fn list(&self) -> io::Result<Vec<String>> {
        let state = self.inner.borrow();
        let mut names: Vec<String> = state
            .files
            .keys()
            .filter(|n| n.ends_with(".wal"))
            .cloned()
            .collect();
        names.sort_by_key(|name| {
            (
                parse_segment_name(name).map_or(u64::MAX, |lsn| lsn.0),
                name.clone(),
            )
        });
        Ok(names)
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        let state = self.inner.borrow();
        let file = state
            .files
            .get(name)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(file.current.clone())
    }

    fn zero_range(&self, name: &str, offset: u64, len: u64) -> io::Result<()> {
        let mut state = self.inner.borrow_mut();
        let file = state
            .files
            .get_mut(name)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let at = offset as usize;
        let end = offset.saturating_add(len).min(file.current.len() as u64) as usize;
        for data in [&mut file.current, &mut file.synced] {
            if at < end {
                data[at..end].fill(0);
            }
        }
        // Sectors wholly inside the range are now zero in both copies, hence clean.
        file.dirty
            .retain(|&sector| sector * SECTOR < at || (sector + 1) * SECTOR > end);
        Ok(())
    }
}

/// A small deterministic PRNG (SplitMix64), so the simulator needs no dependency.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-enough in `0..n`; `n` must be non-zero.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        self.next_u64() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;

    #[test]
    fn crash_keeps_synced_and_drops_unsynced() {
        let disk = SimDisk::new();
        let (file, _) = block_on(disk.create("a.wal", 4 * BLOCK as u64)).unwrap();
        block_on(file.write_at(&[1u8; BLOCK], 0)).unwrap();
        block_on(file.sync()).unwrap();
        block_on(file.write_at(&[2u8; BLOCK], BLOCK as u64)).unwrap();
        disk.crash_dropping_all_unsynced();
        let bytes = disk.read("a.wal").unwrap();
        assert!(bytes[..BLOCK].iter().all(|&b| b == 1));
        assert!(bytes[BLOCK..].iter().all(|&b| b == 0));
        // The old handle belongs to a dead process.
        assert!(block_on(file.sync()).is_err());
    }

    #[test]
    fn crash_is_deterministic_and_tears_at_sector_granularity() {
        let run = |seed: u64| {
            let disk = SimDisk::new();
            let (file, _) = block_on(disk.create("a.wal", 64 * BLOCK as u64)).unwrap();
            block_on(file.write_at(&[7u8; 64 * BLOCK], 0)).unwrap();
            disk.crash(seed);
            disk.read("a.wal").unwrap()
        };
        let mut shapes = BTreeSet::new();
        for seed in 0..64 {
            let bytes = run(seed);
            assert_eq!(bytes, run(seed));
            for sector in bytes.chunks(SECTOR) {
                assert!(sector.iter().all(|&b| b == 0) || sector.iter().all(|&b| b == 7));
            }
            shapes.insert(bytes.iter().filter(|&&b| b == 7).count() / SECTOR);
        }
        // Some crashes keep nothing, some everything, most something in between.
        assert!(
            shapes.contains(&0) && shapes.contains(&512) && shapes.len() > 10,
            "{shapes:?}"
        );
    }

    #[test]
    fn failures_are_injected_once() {
        let disk = SimDisk::new();
        let (file, _) = block_on(disk.create("a.wal", BLOCK as u64)).unwrap();
        disk.fail_next_write();
        assert!(block_on(file.write_at(&[1u8; BLOCK], 0)).is_err());
        block_on(file.write_at(&[1u8; BLOCK], 0)).unwrap();
        disk.fail_next_sync();
        assert!(block_on(file.sync()).is_err());
        block_on(file.sync()).unwrap();
        assert_eq!(disk.io_counts(), (1, 1));
        assert!(block_on(disk.create("a.wal", BLOCK as u64)).is_err());
        assert!(block_on(disk.open("b.wal")).is_err());
    }

    #[test]
    #[should_panic(expected = "never rewrites")]
    fn rewriting_durable_data_is_caught() {
        let disk = SimDisk::new();
        let (file, _) = block_on(disk.create("a.wal", BLOCK as u64)).unwrap();
        block_on(file.write_at(&[1u8; BLOCK], 0)).unwrap();
        block_on(file.sync()).unwrap();
        let _ = block_on(file.write_at(&[2u8; BLOCK], 0));
    }

    #[test]
    fn a_recycled_file_keeps_its_old_bytes_until_overwritten() {
        let disk = SimDisk::new();
        let name = "00000000000000000001.wal";
        let (file, reused) = block_on(disk.create(name, 2 * BLOCK as u64)).unwrap();
        assert!(!reused);
        block_on(file.write_at(&[1u8; 2 * BLOCK], 0)).unwrap();
        block_on(file.sync()).unwrap();
        disk.recycle(name);
        assert_eq!(disk.file_names(), [spare_name(1)]);
        assert!(disk.list().unwrap().is_empty(), "a spare is not a segment");
        let (file, reused) =
            block_on(disk.create("00000000000000000009.wal", 2 * BLOCK as u64)).unwrap();
        assert!(reused);
        // Old blocks may be overwritten; what this incarnation synced may not.
        block_on(file.write_at(&[2u8; BLOCK], 0)).unwrap();
        block_on(file.sync()).unwrap();
        let bytes = disk.read("00000000000000000009.wal").unwrap();
        assert!(bytes[..BLOCK].iter().all(|&b| b == 2));
        assert!(bytes[BLOCK..].iter().all(|&b| b == 1));
        let rewrite = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            block_on(file.write_at(&[3u8; BLOCK], 0))
        }));
        assert!(rewrite.is_err(), "rewriting a synced block is caught");
    }
}
