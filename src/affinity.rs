//! Pinning helper threads (store writers and readers, replication sinks) to CPUs, so that
//! they stay off the cores the shards' executors own.

use crate::warn;

/// Restricts the calling thread to `cores` (nothing when empty); `what` names it in the log
/// line when the kernel refuses.
pub fn pin_thread(cores: &[usize], what: &str) {
    if cores.is_empty() {
        return;
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it for indices
    // below CPU_SETSIZE, which the check guarantees; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cores.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            warn!(
                "cannot pin {what} to cores {cores:?}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}
