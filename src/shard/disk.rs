//! The glommio-backed WAL segment files: `wal::SegmentDir` over `glommio::io::DmaFile`.
//!
//! Why O_DIRECT: WAL writes bypass the page cache, so a write is a real device write
//! issued through io_uring without blocking the shard's thread, memory is not spent
//! caching a log that is only read back at recovery, and fdatasync has no dirty pages to
//! find. A new segment is a recycled spare renamed (`wal::io::take_spare`), or else
//! preallocated *and* zero-filled, so that writes land on already-written extents:
//! fdatasync then has no metadata (extent conversion, file size) to journal, only data to
//! flush.

use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{DmaFile, OpenOptions};

use crate::wal::format::BLOCK;
use crate::wal::io::{sync_dir, take_spare};
use crate::wal::{SegmentDir, SegmentFile};

/// Zero-fill granularity when creating a segment.
const ZERO_CHUNK: usize = 1 << 20;
const _: () = assert!(ZERO_CHUNK % BLOCK == 0);

/// A shard's WAL directory.
#[derive(Clone, Debug)]
pub struct DmaSegmentDir {
    dir: PathBuf,
}

impl DmaSegmentDir {
    /// `dir` must exist.
    pub fn new(dir: impl Into<PathBuf>) -> DmaSegmentDir {
        DmaSegmentDir { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

/// One open segment file (O_DIRECT).
pub struct DmaSegment {
    file: DmaFile,
}

impl SegmentDir for DmaSegmentDir {
    type File = DmaSegment;

    async fn create(&self, name: &str, len: u64) -> io::Result<(DmaSegment, bool)> {
        assert!(
            len % BLOCK as u64 == 0 && len > 0,
            "segment length {len} is not a BLOCK multiple"
        );
        let path = self.dir.join(name);
        // A rename and a directory fsync: on the blocking thread, off the shard's core.
        let reused = {
            let (dir, name) = (self.dir.clone(), name.to_owned());
            glommio::executor()
                .spawn_blocking(move || take_spare(&dir, &name, len))
                .await?
        };
        if reused {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .dma_open(&path)
                .await?;
            return Ok((DmaSegment { file }, true));
        }
        // create_new: a segment is never overwritten.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .dma_open(&path)
            .await?;
        assert!(
            BLOCK as u64 % file.alignment() == 0,
            "device alignment {} exceeds BLOCK",
            file.alignment()
        );
        // A segment that cannot be filled (disk full) is removed again: a partial segment
        // left behind would be refused as corrupt at the next start.
        if let Err(e) = fill_with_zeros(&file, len).await {
            drop(file);
            let _ = std::fs::remove_file(&path);
            let _ = sync_dir(&self.dir);
            return Err(e);
        }
        // Make the new name durable. A blocking call on the executor thread, but rare.
        sync_dir(&self.dir)?;
        Ok((DmaSegment { file }, false))
    }

    async fn open(&self, name: &str) -> io::Result<DmaSegment> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(self.dir.join(name))
            .await?;
        Ok(DmaSegment { file })
    }
}

/// Preallocates `len` bytes, writes zeros over them and syncs.
async fn fill_with_zeros(file: &DmaFile, len: u64) -> io::Result<()> {
    file.pre_allocate(len, false).await?;

    let chunk = Rc::new(zeroed(file, ZERO_CHUNK.min(len as usize)));
    let mut pos = 0u64;
    while pos < len {
        let n = (len - pos).min(chunk.len() as u64) as usize;
        let written = if n == chunk.len() {
            file.write_rc_at(Rc::clone(&chunk), pos).await?
        } else {
            file.write_at(zeroed(file, n), pos).await?
        };
        if written != n {
            return Err(short_write(written, n, pos));
        }
        pos += n as u64;
    }
    assert_eq!(pos, len);
    fdatasync_off_core(file).await
}

/// fdatasync on the executor's blocking-thread pool, which `shard::server` places off the
/// shards' cores, instead of io_uring's IORING_OP_FSYNC. io_uring runs an fsync on an io-wq
/// worker that inherits the submitting thread's affinity, i.e. the shard's own pinned core,
/// where it queues behind the shard's work: measured on this 2-core machine at 1000 HTTP
/// authorizations/s (8 connections, perf/README), moving that worker to the other core took
/// p50 from 7.6 ms to 0.7 ms.
async fn fdatasync_off_core(file: &DmaFile) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    glommio::executor()
        .spawn_blocking(move || {
            // SAFETY: `fd` is open until this returns: the caller holds the file across the
            // await, and the WAL flusher never drops a sync in flight.
            if unsafe { libc::fdatasync(fd) } == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        })
        .await
}

impl SegmentFile for DmaSegment {
    async fn write_at(&self, data: &[u8], pos: u64) -> io::Result<()> {
        assert!(pos % BLOCK as u64 == 0, "unaligned write position {pos}");
        assert!(
            data.len() % BLOCK == 0 && !data.is_empty(),
            "unaligned write length {}",
            data.len()
        );
        let mut buf = self.file.alloc_dma_buffer(data.len());
        assert_eq!(buf.len(), data.len());
        buf.as_bytes_mut().copy_from_slice(data);
        let written = self.file.write_at(buf, pos).await?;
        if written != data.len() {
            return Err(short_write(written, data.len(), pos));
        }
        Ok(())
    }

    async fn sync(&self) -> io::Result<()> {
        fdatasync_off_core(&self.file).await
    }
}

fn zeroed(file: &DmaFile, len: usize) -> glommio::io::DmaBuffer {
    let mut buf = file.alloc_dma_buffer(len);
    buf.as_bytes_mut().fill(0);
    buf
}

/// O_DIRECT writes of aligned buffers are all or nothing in practice; a short one is
/// treated as a failure (and poisons the log) rather than retried.
fn short_write(written: usize, wanted: usize, pos: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::WriteZero,
        format!("short write: {written} of {wanted} bytes at {pos}"),
    )
}

/// Raises the priority of this executor's blocking thread, where the WAL's fdatasync runs:
/// every acknowledgement waits for it, and it shares its core with the store's threads (and,
/// on a benchmark machine, the load generator). Waiting its turn behind them was measured
/// adding ~2–5 ms to each sync, on a device whose flushes took 0.2–0.7 ms (BENCHMARKS.md).
/// It sleeps in the kernel almost all of the time, so a real-time class costs the others
/// nothing but the wait (`affinity::raise_thread_priority` says what is tried). Returns
/// what was done, for the start-up log.
pub async fn raise_sync_thread_priority() -> String {
    glommio::executor()
        .spawn_blocking(crate::affinity::raise_thread_priority)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Lsn;
    use crate::wal::{recover, verify, FsSource, SegmentSource, WalConfig, WalWriter};

    #[test]
    fn dma_segments_write_sync_and_recover() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let config = WalConfig {
            segment_bytes: 32 * BLOCK as u64,
            ..WalConfig::default()
        };
        let payload = |lsn: u64| vec![lsn as u8; 1000 + (lsn as usize * 37) % 3000];

        let written_dir = dir.clone();
        let written_config = config.clone();
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let recovered = recover(&FsSource::new(&written_dir), |_, _, _, _| {}).unwrap();
                assert_eq!(recovered.next_lsn, Lsn(1));
                let wal =
                    WalWriter::open(DmaSegmentDir::new(&written_dir), &recovered, written_config)
                        .await
                        .unwrap();
                let flusher = glommio::spawn_local({
                    let wal = wal.clone();
                    async move { wal.run_flusher().await }
                });
                for lsn in 1..=200u64 {
                    assert_eq!(wal.append(3, 1, &payload(lsn)).unwrap(), Lsn(lsn));
                    if lsn % 10 == 0 {
                        wal.wait_durable(Lsn(lsn)).await.unwrap();
                    }
                }
                wal.shutdown();
                flusher.await.unwrap();
                assert_eq!(wal.durable_lsn(), Lsn(200));
                assert!(wal.stats().segments_created > 1, "{:?}", wal.stats());
            })
            .unwrap()
            .join()
            .unwrap();

        let source = FsSource::new(&dir);
        let mut lsns = Vec::new();
        let recovered = recover(&source, |lsn, kind, version, bytes| {
            assert_eq!((kind, version), (3, 1));
            assert_eq!(bytes, payload(lsn.0));
            lsns.push(lsn.0);
        })
        .unwrap();
        assert_eq!(lsns, (1..=200).collect::<Vec<_>>());
        assert_eq!(
            (recovered.next_lsn, recovered.truncated_bytes),
            (Lsn(201), 0)
        );
        let report = verify(&source).unwrap();
        assert!(report.segments > 1);
        for name in source.list().unwrap() {
            assert_eq!(
                std::fs::metadata(dir.join(name)).unwrap().len(),
                config.segment_bytes
            );
        }

        // Checkpoint at 150: the segments before it are retired, two kept as spares.
        let retired = crate::wal::io::retire_segments_before(&dir, Lsn(150)).unwrap();
        assert!(retired.recycled == 2 && retired.deleted >= 1, "{retired:?}");

        // The log continues in the tail segment after a restart, then in recycled spares.
        let reopened_dir = dir.clone();
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let recovered = recover(&FsSource::new(&reopened_dir), |_, _, _, _| {}).unwrap();
                let wal = WalWriter::open(DmaSegmentDir::new(&reopened_dir), &recovered, config)
                    .await
                    .unwrap();
                let flusher = glommio::spawn_local({
                    let wal = wal.clone();
                    async move { wal.run_flusher().await }
                });
                for lsn in 201..=300u64 {
                    assert_eq!(wal.append(3, 1, &payload(lsn)).unwrap(), Lsn(lsn));
                    if lsn % 10 == 0 {
                        wal.wait_durable(Lsn(lsn)).await.unwrap();
                    }
                }
                wal.shutdown();
                flusher.await.unwrap();
                let stats = wal.stats();
                assert_eq!(stats.segments_reused, 2, "{stats:?}");
                assert_eq!(stats.segments_created, 2, "{stats:?}");
            })
            .unwrap()
            .join()
            .unwrap();
        let mut lsns = Vec::new();
        let recovered = recover(&FsSource::new(&dir), |lsn, _, _, bytes| {
            assert_eq!(bytes, payload(lsn.0));
            lsns.push(lsn.0);
        })
        .unwrap();
        assert_eq!(recovered.next_lsn, Lsn(301));
        assert_eq!(lsns.last(), Some(&300));
        assert!(lsns.windows(2).all(|w| w[1] == w[0] + 1), "continuous");
        assert!(
            lsns[0] > 1 && lsns[0] <= 150,
            "starts at a retained segment"
        );
        let report = verify(&FsSource::new(&dir)).unwrap();
        assert_eq!(
            (report.last_lsn, report.torn_tail_bytes),
            (Some(Lsn(300)), 0)
        );
    }
}
