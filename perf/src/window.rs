//! Per-window aggregation for soaks: the answers of each fixed-width window of wall time
//! (by answer time, from the first measured scheduled send), each window with a fresh
//! histogram of latency from the scheduled send time (so stalls stay corrected for
//! coordinated omission), the cold operations' own histogram, and cumulative counts.
//!
//! Pure: times come in as nanoseconds since the measured start, so the engine feeds it
//! and the tests drive it without a clock. It never does I/O; the gateway's RSS and
//! metrics are sampled elsewhere (`soak`) and joined by window index.

use crate::engine::{histogram, Class, LATENCY_MAX_NS};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// One closed window.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Window {
    pub index: u64,
    /// Start, from the first measured scheduled send (s).
    pub start_s: f64,
    /// The window's width; shorter for the last one.
    pub duration_s: f64,
    /// Answers of every class so far, warm-up included (the soak's x axis).
    pub processed: u64,
    /// Payments created so far (HTTP authorizations and sales answered 2xx or 402).
    pub created: u64,
    /// Requests scheduled but not yet answered when the window closed.
    pub backlog: u64,
    /// Measured answers in this window, every class (a lost connection's requests too).
    pub answered: u64,
    pub ok: u64,
    pub declined: u64,
    pub shed: u64,
    pub errors: u64,
    /// `answered / duration_s`.
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Cold operations answered in this window, and their latency.
    pub cold: u64,
    pub cold_p50_ms: f64,
    pub cold_p99_ms: f64,
    pub cold_max_ms: f64,
    /// The latest the dispatcher handed a request to a connection in this window (ms).
    pub dispatch_lag_max_ms: f64,
    /// The gateway, sampled just after the window closed (None: not sampled or failed).
    pub rss_bytes: Option<u64>,
    pub payments_in_memory: Option<u64>,
    pub store_lag_records: Option<u64>,
    pub store_shed_total: Option<u64>,
    pub store_cold_reads_total: Option<u64>,
    /// Share of the machine's CPU time the hypervisor took (steal, /proc/stat) since the
    /// previous sample: on a shared VM, what a stall may owe nothing to the gateway.
    pub steal: Option<f64>,
    /// CPU used since the previous sample, in cores, per thread name: the gateway's threads
    /// as `gw:<name>`, the load generator's as `load:<name>` (from /proc/<pid>/task/*/stat).
    /// On a shared machine, what tells a slower gateway from a starved load generator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<std::collections::BTreeMap<String, f64>>,
}

/// Cumulative counts at the moment a window closes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    pub processed: u64,
    pub created: u64,
    pub backlog: u64,
}

/// Aggregates answers into consecutive windows of `width`.
pub struct WindowRecorder {
    width_ns: u64,
    /// The open window.
    index: u64,
    all: Histogram<u64>,
    cold: Histogram<u64>,
    /// [ok, declined, shed, error] in the open window.
    counts: [u64; 4],
    lag_max_ns: u64,
    closed: Vec<Window>,
}

impl WindowRecorder {
    pub fn new(width: Duration) -> WindowRecorder {
        let width_ns = width.as_nanos() as u64;
        assert!(width_ns >= 1_000_000, "a window is at least 1 ms");
        WindowRecorder {
            width_ns,
            index: 0,
            all: histogram(),
            cold: histogram(),
            counts: [0; 4],
            lag_max_ns: 0,
            closed: Vec::new(),
        }
    }

    /// The windows closed so far.
    pub fn closed(&self) -> &[Window] {
        &self.closed
    }

    /// When the open window ends (ns since the measured start).
    pub fn end_ns(&self) -> u64 {
        (self.index + 1) * self.width_ns
    }

    /// Closes every window that ended at or before `at_ns` (empty ones too), each with the
    /// totals `t` of this moment: call it before recording anything that happened at
    /// `at_ns`, so a window's totals hold exactly what happened before its end. Returns
    /// the index of the last window closed.
    pub fn roll(&mut self, at_ns: u64, t: Totals) -> Option<u64> {
        let mut last = None;
        while at_ns >= self.end_ns() {
            last = Some(self.index);
            self.close(self.width_ns, t);
        }
        last
    }

    /// One measured answer in the open window.
    pub fn record(&mut self, latency_ns: u64, class: Class, cold: bool) {
        let ns = latency_ns.clamp(1, LATENCY_MAX_NS);
        self.all.saturating_record(ns);
        if cold {
            self.cold.saturating_record(ns);
        }
        self.counts[slot(class)] += 1;
    }

    /// One measured request lost with its connection (an error without a latency).
    pub fn lost(&mut self) {
        self.counts[slot(Class::Error)] += 1;
    }

    pub fn dispatch_lag(&mut self, ns: u64) {
        self.lag_max_ns = self.lag_max_ns.max(ns);
    }

    /// Closes the windows up to `at_ns` and the partial one it falls in (unless it is
    /// empty and of no width); returns every window.
    pub fn finish(mut self, at_ns: u64, t: Totals) -> Vec<Window> {
        self.roll(at_ns, t);
        let partial = at_ns - self.index * self.width_ns;
        if partial > 0 || self.counts.iter().sum::<u64>() > 0 {
            self.close(partial.max(1), t);
        }
        self.closed
    }

    fn close(&mut self, duration_ns: u64, t: Totals) {
        let ms = |h: &Histogram<u64>, q: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1e6
            }
        };
        let answered: u64 = self.counts.iter().sum();
        let duration_s = duration_ns as f64 / 1e9;
        self.closed.push(Window {
            index: self.index,
            start_s: (self.index * self.width_ns) as f64 / 1e9,
            duration_s,
            processed: t.processed,
            created: t.created,
            backlog: t.backlog,
            answered,
            ok: self.counts[0],
            declined: self.counts[1],
            shed: self.counts[2],
            errors: self.counts[3],
            rate: answered as f64 / duration_s,
            p50_ms: ms(&self.all, 0.5),
            p99_ms: ms(&self.all, 0.99),
            max_ms: ms(&self.all, 1.0),
            cold: self.cold.len(),
            cold_p50_ms: ms(&self.cold, 0.5),
            cold_p99_ms: ms(&self.cold, 0.99),
            cold_max_ms: ms(&self.cold, 1.0),
            dispatch_lag_max_ms: self.lag_max_ns as f64 / 1e6,
            ..Window::default()
        });
        self.all.reset();
        self.cold.reset();
        self.counts = [0; 4];
        self.lag_max_ns = 0;
        self.index += 1;
    }
}

fn slot(class: Class) -> usize {
    match class {
        Class::Ok => 0,
        Class::Declined => 1,
        Class::Shed => 2,
        Class::Error => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn totals(processed: u64) -> Totals {
        Totals {
            processed,
            created: processed / 2,
            backlog: 3,
        }
    }

    #[test]
    fn answers_land_in_the_window_of_their_answer_time() {
        let mut w = WindowRecorder::new(Duration::from_millis(100));
        // Window 0: two answers, one cold.
        assert_eq!(w.roll(10 * MS, totals(0)), None);
        w.record(2 * MS, Class::Ok, false);
        w.record(8 * MS, Class::Declined, true);
        // Window 1: a stall; nothing answered until 350 ms, when a late answer closes
        // windows 1 and 2 (empty) and lands in window 3.
        assert_eq!(w.roll(350 * MS, totals(2)), Some(2));
        w.record(250 * MS, Class::Ok, false);
        w.lost();
        w.dispatch_lag(40 * MS);
        let ws = w.finish(420 * MS, totals(5));
        assert_eq!(ws.len(), 5, "{ws:?}");
        let idx: Vec<u64> = ws.iter().map(|x| x.index).collect();
        assert_eq!(idx, [0, 1, 2, 3, 4]);

        let w0 = &ws[0];
        assert_eq!((w0.answered, w0.ok, w0.declined, w0.cold), (2, 1, 1, 1));
        assert_eq!((w0.processed, w0.created, w0.backlog), (2, 1, 3));
        assert!((w0.rate - 20.0).abs() < 1e-9, "{}", w0.rate);
        assert!((w0.max_ms - 8.0).abs() < 0.01, "{}", w0.max_ms);
        assert!((w0.cold_max_ms - 8.0).abs() < 0.01);
        // A fresh histogram per window: the stalled answer is window 3's alone.
        for empty in &ws[1..3] {
            assert_eq!((empty.answered, empty.max_ms, empty.rate), (0, 0.0, 0.0));
            assert_eq!(empty.processed, 2, "nothing happened since window 0");
        }
        let w3 = &ws[3];
        assert_eq!((w3.answered, w3.ok, w3.errors, w3.cold), (2, 1, 1, 0));
        assert!((w3.max_ms - 250.0).abs() < 0.5, "{}", w3.max_ms);
        assert!((w3.p50_ms - 250.0).abs() < 0.5);
        assert!((w3.dispatch_lag_max_ms - 40.0).abs() < 1e-9);
        assert!((w3.start_s - 0.3).abs() < 1e-9);
        // The last window is partial (400..420 ms), empty, and carries the end totals.
        let w4 = &ws[4];
        assert!((w4.duration_s - 0.02).abs() < 1e-9, "{}", w4.duration_s);
        assert_eq!((w4.answered, w4.processed), (0, 5));
    }

    #[test]
    fn a_run_ending_on_a_boundary_has_no_empty_tail() {
        let mut w = WindowRecorder::new(Duration::from_millis(100));
        w.record(MS, Class::Ok, false);
        let ws = w.finish(200 * MS, totals(1));
        assert_eq!(ws.len(), 2);
        assert_eq!(ws.iter().map(|x| x.answered).sum::<u64>(), 1);
        assert!(ws.iter().all(|x| (x.duration_s - 0.1).abs() < 1e-9));
    }
}
