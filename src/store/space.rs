//! Free disk space under the data directory, watched on a thread of its own.
//!
//! When less than `state.min_free_mb` is free, new work is shed (503 / 91) before anything
//! is logged, and the store writer stops committing (it keeps its changes and retries): a
//! full disk never makes a write fail half way (redb refuses every write after one failed
//! I/O until it is reopened, and a WAL write that fails poisons the log). When space
//! returns, serving resumes by itself.

use crate::{info, warn};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often free space is measured.
pub const SPACE_POLL: Duration = Duration::from_millis(100);

/// Shared view of the data directory's free space.
#[derive(Debug, Default)]
pub struct Space {
    low: AtomicBool,
    free_bytes: AtomicU64,
}

impl Space {
    /// True while free space is below the configured minimum.
    pub fn low(&self) -> bool {
        self.low.load(Ordering::Acquire)
    }

    pub fn free_bytes(&self) -> u64 {
        self.free_bytes.load(Ordering::Relaxed)
    }
}

/// Bytes available to an unprivileged writer on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("path holds a NUL byte"))?;
    // SAFETY: statvfs writes into a zeroed struct we own; `c` outlives the call.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut s) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(s.f_bavail as u64 * s.f_frsize as u64)
    }
}

/// Measures once now, then every `SPACE_POLL` on a thread until the process ends.
pub fn watch(data_dir: &Path, min_free_bytes: u64) -> Arc<Space> {
    let space = Arc::new(Space::default());
    measure(&space, data_dir, min_free_bytes);
    let (s, dir) = (space.clone(), PathBuf::from(data_dir));
    std::thread::Builder::new()
        .name("corepay-space".into())
        .spawn(move || loop {
            std::thread::sleep(SPACE_POLL);
            measure(&s, &dir, min_free_bytes);
        })
        .expect("spawn the disk space watcher");
    space
}

fn measure(space: &Space, dir: &Path, min_free_bytes: u64) {
    let free = match free_bytes(dir) {
        Ok(free) => free,
        Err(e) => {
            warn!("space.measure_failed": "cannot measure free space under {}: {e}", dir.display());
            return;
        }
    };
    space.free_bytes.store(free, Ordering::Relaxed);
    let low = free < min_free_bytes;
    if space.low.swap(low, Ordering::AcqRel) != low {
        if low {
            warn!("space.low":
                "disk nearly full: {} MiB free under {}, below state.min_free_mb ({} MiB): \
                 new work is shed (503 / 91) until space returns",
                free >> 20,
                dir.display(),
                min_free_bytes >> 20
            );
        } else {
            info!("space.ok":
                "disk has room again: {} MiB free under {}; serving",
                free >> 20,
                dir.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_measured() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        assert!(free_bytes(&dir.path().join("absent")).is_err());
        let space = Space::default();
        measure(&space, dir.path(), u64::MAX);
        assert!(space.low(), "nothing has u64::MAX bytes free");
        measure(&space, dir.path(), 0);
        assert!(!space.low());
    }
}
