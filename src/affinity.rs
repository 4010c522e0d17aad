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
