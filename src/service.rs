//! The gateway as a service: its lifecycle (recovering, serving, draining), each shard's
//! heartbeat, what `/readyz` and `/healthz` answer, and systemd's notify protocol through
//! the `sd-notify` crate: `READY=1` once every shard has recovered and listens, `STATUS=`
//! lines with the phase, `WATCHDOG=1` only while every shard keeps making progress,
//! `STOPPING=1` when the drain begins. Not run by systemd (no `NOTIFY_SOCKET`), the
//! notifications do nothing and the rest works the same.
//!
//! Knows nothing of executors: a shard proves it is alive by calling `beat` from its own
//! periodic tick, so a shard whose executor is wedged (a task that never yields, a thread
//! blocked in a syscall) stops beating and the watchdog stops pinging.

use crate::{info, warn};
use sd_notify::NotifyState;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A shard that has not beaten for this long is not progressing (`/healthz` 503, no
/// watchdog ping). Shards beat every 20 ms; the slowest legitimate pause measured in the
/// soaks (a WAL fdatasync on a noisy VM) was about 0.3 s.
pub const STALL_AFTER: Duration = Duration::from_secs(2);

/// Where the process is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Recovering,
    Serving,
    Draining,
}

/// Shared by every shard and the service threads (atomics only, no locks).
pub struct Lifecycle {
    shards: usize,
    started: Instant,
    listening: AtomicUsize,
    draining: AtomicBool,
    /// Per shard: when it last beat (ms since `started`, plus one; 0 = never).
    beats: Vec<AtomicU64>,
}

impl Lifecycle {
    pub fn new(shards: usize) -> Arc<Lifecycle> {
        Arc::new(Lifecycle {
            shards,
            started: Instant::now(),
            listening: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            beats: (0..shards).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    fn ms_at(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_millis() as u64 + 1
    }

    /// Shard `k` is alive now: called from its executor's periodic tick.
    pub fn beat(&self, shard: usize) {
        self.beat_at(shard, Instant::now());
    }

    fn beat_at(&self, shard: usize, at: Instant) {
        self.beats[shard].store(self.ms_at(at), Ordering::Relaxed);
    }

    /// Shard `k` has recovered and listens. The last one makes the service ready (`READY=1`).
    pub fn listening(&self, shard: usize, status: &str) {
        self.beat(shard);
        if self.listening.fetch_add(1, Ordering::SeqCst) + 1 == self.shards {
            notify(&[NotifyState::Ready, NotifyState::Status(status)]);
        }
    }

    /// SIGTERM: the drain begins (`STOPPING=1`; `/readyz` answers 503 from now on).
    pub fn draining(&self) {
        if !self.draining.swap(true, Ordering::SeqCst) {
            notify(&[
                NotifyState::Stopping,
                NotifyState::Status("draining: refusing new work, finishing in-flight requests"),
            ]);
        }
    }

    pub fn phase(&self) -> Phase {
        if self.draining.load(Ordering::SeqCst) {
            Phase::Draining
        } else if self.listening.load(Ordering::SeqCst) < self.shards {
            Phase::Recovering
        } else {
            Phase::Serving
        }
    }

    /// `Ok` when every shard has beaten within `STALL_AFTER`; else the first that has not.
    pub fn health(&self) -> Result<(), String> {
        self.health_at(Instant::now())
    }

    fn health_at(&self, now: Instant) -> Result<(), String> {
        let now_ms = self.ms_at(now);
        for (k, beat) in self.beats.iter().enumerate() {
            let last = beat.load(Ordering::Relaxed);
            if last == 0 {
                return Err(format!("shard {k} has not started"));
            }
            let quiet = now_ms.saturating_sub(last);
            if quiet > STALL_AFTER.as_millis() as u64 {
                return Err(format!("shard {k} has made no progress for {quiet} ms"));
            }
        }
        Ok(())
    }
}

/// Environment variable of the one fault hook: `<shard>:<ms>` makes that shard's executor
/// block for good `<ms>` after it starts serving (a task that never yields), so that tests
/// can see the watchdog stop and `/healthz` name the shard. Unset in production.
pub const WEDGE_FAILPOINT: &str = "COREPAY_FAILPOINT_WEDGE_SHARD";

/// When shard `shard` is to wedge itself (`WEDGE_FAILPOINT`), if ever.
pub fn wedge_at(shard: u16) -> Option<Instant> {
    let value = std::env::var(WEDGE_FAILPOINT).ok()?;
    let (k, ms) = value.split_once(':')?;
    if k.parse::<u16>().ok()? != shard {
        return None;
    }
    let ms: u64 = ms.parse().ok()?;
    warn!("service.failpoint": "{WEDGE_FAILPOINT}: shard {shard} will stop making progress in {ms} ms");
    Some(Instant::now() + Duration::from_millis(ms))
}

/// Sends `states` to the service manager; nothing when not run by systemd. A failure is
/// logged, never fatal: the gateway serves whatever its supervisor does.
pub fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        warn!("service.notify_failed": "systemd notify failed: {e}");
    }
}

/// A `STATUS=` line (recovery progress, phase changes).
pub fn status(line: &str) {
    notify(&[NotifyState::Status(line)]);
}

/// With `WatchdogSec=` set (systemd passes `WATCHDOG_USEC`), a thread that pings at a
/// quarter of the period while every shard is healthy and stays silent while one is not,
/// so that systemd restarts a wedged gateway. Returns None without a watchdog.
pub fn spawn_watchdog(
    life: Arc<Lifecycle>,
    stop: Arc<AtomicBool>,
) -> Option<std::thread::JoinHandle<()>> {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return None;
    }
    let period = Duration::from_micros(usec);
    let every = (period / 4).max(Duration::from_millis(50));
    info!("service.watchdog":
        "systemd watchdog: {} ms; pinging every {} ms while every shard progresses",
        period.as_millis(),
        every.as_millis()
    );
    let spawned = std::thread::Builder::new()
        .name("corepay-watchdog".into())
        .spawn(move || {
            let mut stalled = false;
            while !stop.load(Ordering::SeqCst) {
                // Unparked at shutdown, so that joining this thread never waits a period.
                std::thread::park_timeout(every);
                if life.phase() != Phase::Serving {
                    // Recovery is bounded by TimeoutStartSec, the drain by TimeoutStopSec.
                    continue;
                }
                match life.health() {
                    Ok(()) => {
                        if stalled {
                            info!("service.shards_progress_again": "every shard progresses again: watchdog pings resume");
                            stalled = false;
                        }
                        notify(&[NotifyState::Watchdog]);
                    }
                    Err(why) => {
                        if !stalled {
                            warn!("service.shard_not_progressing": "{why}: watchdog pings stop (systemd restarts the service if it lasts)");
                            stalled = true;
                        }
                    }
                }
            }
        });
    match spawned {
        Ok(handle) => Some(handle),
        Err(e) => {
            warn!("service.watchdog_failed": "cannot start the watchdog thread: {e}; systemd will restart the service");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_follow_listening_shards_then_the_drain() {
        let life = Lifecycle::new(2);
        assert_eq!(life.phase(), Phase::Recovering);
        life.listening(0, "serving");
        assert_eq!(life.phase(), Phase::Recovering, "one shard of two");
        life.listening(1, "serving");
        assert_eq!(life.phase(), Phase::Serving);
        life.draining();
        assert_eq!(life.phase(), Phase::Draining);
    }

    #[test]
    fn a_shard_that_stops_beating_makes_the_service_unhealthy_until_it_beats_again() {
        let life = Lifecycle::new(2);
        let t0 = life.started;
        assert!(life
            .health_at(t0)
            .unwrap_err()
            .contains("shard 0 has not started"));
        life.beat_at(0, t0);
        life.beat_at(1, t0);
        assert_eq!(life.health_at(t0 + STALL_AFTER), Ok(()));
        // Shard 0 keeps beating, shard 1 is wedged.
        let later = t0 + STALL_AFTER + Duration::from_millis(500);
        life.beat_at(0, later);
        let err = life.health_at(later).unwrap_err();
        assert!(
            err.contains("shard 1 has made no progress for 2500 ms"),
            "{err}"
        );
        life.beat_at(1, later);
        assert_eq!(life.health_at(later), Ok(()));
    }
}
