//! The storage the WAL runs on, as traits: async segment files for the writer (implemented
//! with glommio in `crate::shard::disk`, in memory in `sim`), and synchronous access for
//! recovery and offline tools (`FsSource` here, `sim::SimDisk` in tests).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::format::{is_zero, parse_segment_name, BLOCK};

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
    /// Creates segment `name` of `len` bytes, preallocated and zero-filled, then syncs the
    /// directory. Fails if `name` exists: a segment is never overwritten.
    async fn create(&self, name: &str, len: u64) -> io::Result<Self::File>;
    /// Opens an existing segment for writing (to continue the tail segment after recovery).
    async fn open(&self, name: &str) -> io::Result<Self::File>;
}

/// Synchronous access used by recovery, verify and dump (run before executors start, or
/// offline).
pub trait SegmentSource {
    /// Segment file names (only `*.wal`), sorted by first LSN.
    fn list(&self) -> io::Result<Vec<String>>;
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    /// Overwrites bytes [offset, end of file) with zeros and syncs (torn-tail truncation).
    fn zero_from(&self, name: &str, offset: u64) -> io::Result<()>;
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
    fn zero_from(&self, name: &str, offset: u64) -> io::Result<()> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.dir.join(name))?;
        let len = file.metadata()?.len();
        if offset >= len {
            return Ok(());
        }
        let mut rest = Vec::with_capacity((len - offset) as usize);
        file.seek(SeekFrom::Start(offset))?;
        file.read_to_end(&mut rest)?;
        assert_eq!(
            rest.len() as u64,
            len - offset,
            "segment changed size while truncating"
        );
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

        src.zero_from("00000000000000000010.wal", BLOCK as u64 + 100)
            .unwrap();
        let bytes = src.read("00000000000000000010.wal").unwrap();
        assert_eq!(bytes.len(), 3 * BLOCK);
        assert!(bytes[..BLOCK + 100].iter().all(|&b| b == 1));
        assert!(bytes[BLOCK + 100..].iter().all(|&b| b == 0));
        src.zero_from("00000000000000000010.wal", 10 * BLOCK as u64)
            .unwrap();
        assert!(src.read("missing.wal").is_err());
    }
}
