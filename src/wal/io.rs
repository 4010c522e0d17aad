//! The storage the WAL runs on, as traits: async segment files for the writer (implemented
//! with glommio in `crate::shard::disk`, in memory in `sim`), and synchronous access for
//! recovery and offline tools (`FsSource` here, `sim::SimDisk` in tests).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::format::{
    is_zero, parse_segment_name, segment_name, spare_name, BLOCK, SPARES_KEPT, SPARE_SUFFIX,
};
use crate::domain::Lsn;

/// A segment file as the writer sees it.
#[allow(async_fn_in_trait)] // Single-threaded executors: the futures need not be Send.
pub trait SegmentFile {
    /// Writes `data` at `pos`; both pos and data.len() are multiples of BLOCK (4096).
    async fn write_at(&self, data: &[u8], pos: u64) -> io::Result<()>;
    /// Makes every completed write durable (fdatasync).
    async fn sync(&self) -> io::Result<()>;
}

/// The directory holding one WAL's segments, as the writer sees it.
#[allow(async_fn_in_trait)]
pub trait SegmentDir {
    type File: SegmentFile;
    /// Creates segment `name` of `len` bytes by renaming a spare of that size (`take_spare`),
    /// or else preallocated and zero-filled, then syncs the directory. Returns the file and
    /// whether it is a recycled spare. Fails if `name` exists: a segment is never
    /// overwritten.
    async fn create(&self, name: &str, len: u64) -> io::Result<(Self::File, bool)>;
    /// Opens an existing segment for writing (to continue the tail segment after recovery).
    async fn open(&self, name: &str) -> io::Result<Self::File>;
}

/// Synchronous access used by recovery, verify and dump (run before executors start, or
/// offline).
pub trait SegmentSource {
    /// Segment file names (only `*.wal`), sorted by first LSN.
    fn list(&self) -> io::Result<Vec<String>>;
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    /// Overwrites bytes [offset, offset + len) (clipped to the file) with zeros and syncs
    /// (torn-tail truncation).
    fn zero_range(&self, name: &str, offset: u64, len: u64) -> io::Result<()>;
}

/// `SegmentSource` over a directory with std::fs.
#[derive(Clone, Debug)]
pub struct FsSource {
    dir: PathBuf,
}

impl FsSource {
    pub fn new(dir: impl Into<PathBuf>) -> FsSource {
        FsSource { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl SegmentSource for FsSource {
    /// Every `*.wal` file; names that are not `<20 digits>.wal` sort last, and recovery
    /// reports them rather than skipping them.
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            if let Some(name) = entry.file_name().to_str() {
                if name.ends_with(".wal") {
                    names.push(name.to_owned());
                }
            }
        }
        names.sort_by_key(|name| {
            (
                parse_segment_name(name).map_or(u64::MAX, |lsn| lsn.0),
                name.clone(),
            )
        });
        Ok(names)
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        std::fs::read(self.dir.join(name))
    }

    /// Only blocks that are not already zero are written, so truncating the tail of a
    /// mostly empty 64 MiB segment writes little.
    fn zero_range(&self, name: &str, offset: u64, len: u64) -> io::Result<()> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.dir.join(name))?;
        let file_len = file.metadata()?.len();
        if offset >= file_len {
            return Ok(());
        }
        let len = len.min(file_len - offset);
        let mut rest = vec![0u8; len as usize];
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut rest)?;
        // Zero [offset, end of the last non-zero block): everything after it already is.
        if let Some(last) = rest.chunks(BLOCK).rposition(|block| !is_zero(block)) {
            let end = ((last + 1) * BLOCK).min(rest.len());
            let zeros = vec![0u8; end];
            file.write_all_at(&zeros, offset)?;
        }
        file.sync_data()?;
        drop(file);
        sync_dir(&self.dir)
    }
}

/// First LSNs of the segments in `dir` (names that are not `<20 digits>.wal` are not
/// segments), sorted; none when the directory does not exist.
pub fn segment_firsts(dir: &Path) -> io::Result<Vec<Lsn>> {
    let mut firsts: Vec<Lsn> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|name| parse_segment_name(&name))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    firsts.sort();
    Ok(firsts)
}

/// Names of the spares in `dir`, sorted.
pub fn spares(dir: &Path) -> io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(SPARE_SUFFIX))
        .collect();
    names.sort();
    Ok(names)
}

/// What `retire_segments_before` did with the segments a checkpoint covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retired {
    /// Renamed to spares.
    pub recycled: u64,
    pub deleted: u64,
}

/// Retires every segment whose records all lie at or before `checkpoint` (never the newest
/// segment): renamed to a spare while fewer than `SPARES_KEPT` exist, else deleted. Then
/// syncs the directory. A crash in between leaves each file either a segment (retired
/// again next time: recovery skips segments before the checkpoint) or a spare.
pub fn retire_segments_before(dir: &Path, checkpoint: Lsn) -> io::Result<Retired> {
    let firsts = segment_firsts(dir)?;
    let mut spare_count = spares(dir)?.len();
    let mut retired = Retired::default();
    for pair in firsts.windows(2) {
        let (first, next) = (pair[0], pair[1]);
        if next.0 > checkpoint.0 + 1 {
            break; // this segment holds a record after the checkpoint
        }
        let path = dir.join(segment_name(first));
        if spare_count < SPARES_KEPT {
            std::fs::rename(&path, dir.join(spare_name(first.0)))?;
            spare_count += 1;
            retired.recycled += 1;
        } else {
            std::fs::remove_file(&path)?;
            retired.deleted += 1;
        }
    }
    if retired != Retired::default() {
        sync_dir(dir)?;
    }
    Ok(retired)
}

/// Renames a spare of `len` bytes to segment `name` and syncs the directory; false when
/// there is none. Spares of another size (a changed `wal.segment_bytes`) are deleted.
pub fn take_spare(dir: &Path, name: &str, len: u64) -> io::Result<bool> {
    let target = dir.join(name);
    if target.exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{}: a segment is never overwritten", target.display()),
        ));
    }
    for spare in spares(dir)? {
        let path = dir.join(&spare);
        if std::fs::metadata(&path)?.len() != len {
            std::fs::remove_file(&path)?;
            continue;
        }
        std::fs::rename(&path, &target)?;
        sync_dir(dir)?;
        return Ok(true);
    }
    Ok(false)
}

/// Bytes written (and synced) per step by `prepare_spare`.
const PREPARE_STEP: usize = 1 << 20;

/// Makes a zero-filled spare of `len` bytes when `dir` has fewer than `SPARES_KEPT`, so that
/// the WAL's next two segments are renames even before any segment was retired: with one
/// spare, a WAL that rotated twice between checkpoints zero-filled its second segment on the
/// spot, 64 MiB in the middle of serving (BENCHMARKS.md, 2026-12-03). Written in 1 MiB steps,
/// each synced, so that it never queues a 64 MiB burst ahead of the WAL's fdatasync; under a
/// temporary name renamed at the end (a leftover from a crash is removed first). Returns
/// whether one was made.
pub fn prepare_spare(dir: &Path, len: u64) -> io::Result<bool> {
    if spares(dir)?.len() >= SPARES_KEPT {
        return Ok(false);
    }
    // Spares made here are named 0, 1, ... (no segment had that first LSN): a free one.
    let name = (0u64..)
        .map(spare_name)
        .find(|n| !dir.join(n).exists())
        .expect("a free spare name");
    let tmp = dir.join("spare.tmp");
    let _ = std::fs::remove_file(&tmp);
    let made = (|| {
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        let zeros = vec![0u8; PREPARE_STEP];
        let mut at = 0u64;
        while at < len {
            let n = (len - at).min(PREPARE_STEP as u64) as usize;
            file.write_all_at(&zeros[..n], at)?;
            file.sync_data()?;
            at += n as u64;
        }
        file.sync_all()?;
        std::fs::rename(&tmp, dir.join(&name))?;
        sync_dir(dir)
    })();
    if let Err(e) = made {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(true)
}

/// fsyncs a directory, making file creations and removals in it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fs_source_lists_reads_and_zeroes() {
        let dir = tempfile::tempdir().unwrap();
        let src = FsSource::new(dir.path());
        std::fs::write(
            dir.path().join("00000000000000000010.wal"),
            [1u8; 3 * BLOCK],
        )
        .unwrap();
        std::fs::write(dir.path().join("00000000000000000002.wal"), [2u8; BLOCK]).unwrap();
        std::fs::write(dir.path().join("stray.wal"), b"").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"").unwrap();
        std::fs::create_dir(dir.path().join("sub.wal")).unwrap();
        assert_eq!(
            src.list().unwrap(),
            [
                "00000000000000000002.wal",
                "00000000000000000010.wal",
                "stray.wal"
            ]
        );

        src.zero_range("00000000000000000010.wal", BLOCK as u64 + 100, BLOCK as u64)
            .unwrap();
        let bytes = src.read("00000000000000000010.wal").unwrap();
        assert_eq!(bytes.len(), 3 * BLOCK);
        assert!(bytes[..BLOCK + 100].iter().all(|&b| b == 1));
        assert!(bytes[BLOCK + 100..2 * BLOCK + 100].iter().all(|&b| b == 0));
        assert!(bytes[2 * BLOCK + 100..].iter().all(|&b| b == 1));
        src.zero_range("00000000000000000010.wal", BLOCK as u64, u64::MAX)
            .unwrap();
        assert!(src.read("00000000000000000010.wal").unwrap()[BLOCK..]
            .iter()
            .all(|&b| b == 0));
        src.zero_range("00000000000000000010.wal", 10 * BLOCK as u64, 1)
            .unwrap();
        assert!(src.read("missing.wal").is_err());
    }

    #[test]
    fn retired_segments_become_spares_and_spares_become_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let seg = |first: u64| dir.join(segment_name(Lsn(first)));
        for (first, fill) in [(1, 1u8), (11, 2), (21, 3), (31, 4)] {
            std::fs::write(seg(first), [fill; 2 * BLOCK]).unwrap();
        }
        // Checkpoint 25: segments 1 and 11 end before it; 21 holds records after it.
        let retired = retire_segments_before(dir, Lsn(25)).unwrap();
        assert_eq!(
            retired,
            Retired {
                recycled: 2,
                deleted: 0
            }
        );
        assert_eq!(segment_firsts(dir).unwrap(), [Lsn(21), Lsn(31)]);
        assert_eq!(spares(dir).unwrap(), [spare_name(1), spare_name(11)]);
        let retired = retire_segments_before(dir, Lsn(40)).unwrap();
        assert_eq!(
            retired,
            Retired {
                recycled: 0,
                deleted: 1
            },
            "two spares are kept"
        );
        assert_eq!(segment_firsts(dir).unwrap(), [Lsn(31)]);

        // A spare becomes the next segment, old bytes and all; never over a segment.
        assert!(take_spare(dir, &segment_name(Lsn(31)), 2 * BLOCK as u64).is_err());
        assert!(take_spare(dir, &segment_name(Lsn(41)), 2 * BLOCK as u64).unwrap());
        assert_eq!(std::fs::read(seg(41)).unwrap(), [1u8; 2 * BLOCK]);
        // One of another size is deleted, not used.
        assert!(!take_spare(dir, &segment_name(Lsn(51)), 3 * BLOCK as u64).unwrap());
        assert!(spares(dir).unwrap().is_empty());

        // Made ahead of need until there are SPARES_KEPT, each under a name of its own.
        std::fs::write(dir.join("spare.tmp"), b"left by a crash").unwrap();
        assert!(prepare_spare(dir, 3 * BLOCK as u64).unwrap());
        assert!(prepare_spare(dir, 3 * BLOCK as u64).unwrap());
        assert!(!prepare_spare(dir, 3 * BLOCK as u64).unwrap());
        assert_eq!(spares(dir).unwrap().len(), SPARES_KEPT);
        assert!(!dir.join("spare.tmp").exists());
        assert!(take_spare(dir, &segment_name(Lsn(51)), 3 * BLOCK as u64).unwrap());
        assert!(take_spare(dir, &segment_name(Lsn(61)), 3 * BLOCK as u64).unwrap());
        assert_eq!(std::fs::read(seg(51)).unwrap(), [0u8; 3 * BLOCK]);
        assert_eq!(std::fs::read(seg(61)).unwrap(), [0u8; 3 * BLOCK]);
        assert_eq!(
            segment_firsts(dir).unwrap(),
            [Lsn(31), Lsn(41), Lsn(51), Lsn(61)]
        );
    }
}
