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
            warn!("affinity.pin_failed":
                "cannot pin {what} to cores {cores:?}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// The CPUs this process may run on (its affinity mask at the time of the call).
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set that sched_getaffinity fills;
    // CPU_ISSET reads inside it for indices below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Where helper threads (store writer and readers, replication sinks) run when their
/// `cores` key is empty: with pinned shards, on the allowed CPUs that no shard owns, so
/// that a store commit never takes a shard's core from under it; nothing (any CPU) when
/// shards are not pinned or own every CPU.
pub fn helper_cores(
    configured: &[usize],
    shard_cores: Option<&[usize]>,
    allowed: &[usize],
) -> Vec<usize> {
    if !configured.is_empty() {
        return configured.to_vec();
    }
    match shard_cores {
        Some(used) => allowed
            .iter()
            .copied()
            .filter(|c| !used.contains(c))
            .collect(),
        None => Vec::new(),
    }
}

/// Real-time priority of helper threads on the request path (SCHED_FIFO, the lowest).
const HELPER_RT_PRIORITY: i32 = 1;
/// Nice value tried when real-time priority is not allowed.
const HELPER_NICE: i32 = -10;

/// Raises the calling thread's priority, for helper threads that requests wait on and that
/// sleep in the kernel almost all the time (the WAL's sync thread, the store's readers):
/// SCHED_FIFO needs CAP_SYS_NICE or `RLIMIT_RTPRIO` >= 1 (systemd `LimitRTPRIO=1`); else a
/// negative nice value is tried; else it stays as it is. Returns what was done, for the log.
/// Only for threads with cores of their own (`cores_of_their_own`): on a shard's core it
/// would preempt the shard it serves.
pub fn raise_thread_priority() -> String {
    let param = libc::sched_param {
        sched_priority: HELPER_RT_PRIORITY,
    };
    // SAFETY: plain syscalls on the calling thread (pid 0) with a valid parameter.
    unsafe {
        if libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 {
            return format!("SCHED_FIFO priority {HELPER_RT_PRIORITY}");
        }
        let fifo = std::io::Error::last_os_error();
        let tid = libc::gettid() as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, HELPER_NICE) == 0 {
            return format!("nice {HELPER_NICE} (SCHED_FIFO refused: {fifo})");
        }
        format!(
            "normal priority (SCHED_FIFO refused: {fifo}; nice {HELPER_NICE} refused: {}): \
             give the process CAP_SYS_NICE or LimitRTPRIO=1",
            std::io::Error::last_os_error()
        )
    }
}

/// True when helper threads placed on `helpers` never share a core with a pinned shard:
/// they have cores of their own (what the WAL's sync thread needs for real-time priority).
pub fn cores_of_their_own(helpers: &[usize], shard_cores: Option<&[usize]>) -> bool {
    match shard_cores {
        Some(shards) => !helpers.is_empty() && helpers.iter().all(|c| !shards.contains(c)),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_have_cores_of_their_own_only_apart_from_pinned_shards() {
        assert!(cores_of_their_own(&[0], Some(&[1])));
        assert!(cores_of_their_own(&[0, 2], Some(&[1, 3])));
        assert!(!cores_of_their_own(&[0, 1], Some(&[1])), "shares core 1");
        assert!(
            !cores_of_their_own(&[], Some(&[0, 1])),
            "anywhere: beside shards"
        );
        assert!(!cores_of_their_own(&[0], None), "shards not pinned");
    }

    #[test]
    fn helpers_go_where_no_shard_runs() {
        let allowed = [0, 1, 2, 3];
        assert_eq!(
            helper_cores(&[3], Some(&[1]), &allowed),
            vec![3],
            "configured wins"
        );
        assert_eq!(helper_cores(&[], Some(&[1]), &allowed), vec![0, 2, 3]);
        assert_eq!(
            helper_cores(&[], Some(&[0, 1, 2, 3]), &allowed),
            Vec::<usize>::new()
        );
        assert_eq!(
            helper_cores(&[], None, &allowed),
            Vec::<usize>::new(),
            "unpinned shards"
        );
    }

    #[test]
    fn this_process_may_run_somewhere() {
        assert!(!allowed_cpus().is_empty());
    }
}
