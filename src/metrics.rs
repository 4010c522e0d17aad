//! Per-shard latency histograms and counters, and the Prometheus text rendering.
//!
//! Each shard records into its own thread-local histograms (no sharing, no locks); /metrics
//! gathers percentile summaries from every shard over the mesh.

use hdrhistogram::Histogram;
use std::cell::RefCell;

/// The endpoints measured separately.
pub const ENDPOINTS: [&str; 8] = [
    "payments_create",
    "payments_get",
    "payments_capture",
    "payments_void",
    "payments_refund",
    "admin",
    "other",
    "error",
];

/// Slowest latency recorded exactly (60 s); slower ones are clamped.
const LATENCY_MAX_MICROS: u64 = 60_000_000;

/// Upper bounds (µs) of the pause histograms (`Buckets`): WAL fdatasync, shard tick
/// lateness. Rendered as Prometheus `le` bounds in seconds.
pub const PAUSE_BOUNDS_MICROS: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000,
];

/// A fixed-bucket histogram of pauses (counts per `PAUSE_BOUNDS_MICROS` bucket, the last
/// one unbounded): constant size, recorded in O(buckets), summable across shards, which an
/// HDR summary is not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Buckets {
    counts: [u64; PAUSE_BOUNDS_MICROS.len() + 1],
    sum_micros: u64,
}

impl Buckets {
    pub fn record(&mut self, micros: u64) {
        let k = PAUSE_BOUNDS_MICROS.partition_point(|&b| b < micros);
        self.counts[k] += 1;
        self.sum_micros = self.sum_micros.saturating_add(micros);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Cumulative counts per bound (`le`), the unbounded one last.
    pub fn cumulative(&self) -> impl Iterator<Item = u64> + '_ {
        self.counts.iter().scan(0u64, |acc, &c| {
            *acc += c;
            Some(*acc)
        })
    }
}

pub struct ShardMetrics {
    latency: Vec<Histogram<u64>>,
    statuses: [u64; 6],
    tick_lateness: Buckets,
}

thread_local! {
    static METRICS: RefCell<ShardMetrics> = RefCell::new(ShardMetrics {
        latency: ENDPOINTS
            .iter()
            .map(|_| Histogram::new_with_bounds(1, LATENCY_MAX_MICROS, 3).expect("valid bounds"))
            .collect(),
        statuses: [0; 6],
        tick_lateness: Buckets::default(),
    });
}

/// How much later than asked the shard's periodic timer fired: time its executor did not
/// run (a long task, a blocked thread, the thread not scheduled).
pub fn record_tick_lateness(micros: u64) {
    METRICS.with(|m| m.borrow_mut().tick_lateness.record(micros));
}

pub fn tick_lateness() -> Buckets {
    METRICS.with(|m| m.borrow().tick_lateness)
}

/// Which endpoint a request path and method belong to.
pub fn classify(post: bool, path: &str) -> usize {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match (post, segs.as_slice()) {
        (true, ["v1", "payments"]) => 0,
        (false, ["v1", "payments", _]) => 1,
        (true, ["v1", "payments", _, "capture"]) => 2,
        (true, ["v1", "payments", _, "void"]) => 3,
        (true, ["v1", "payments", _, "refunds"]) => 4,
        (
            _,
            ["v1", "accounts" | "cards" | "merchants" | "transfers" | "ledger" | "provision", ..],
        ) => 5,
        _ => 6,
    }
}

pub fn record(endpoint: usize, status: u16, micros: u64) {
    METRICS.with(|m| {
        let mut m = m.borrow_mut();
        m.latency[endpoint].saturating_record(micros.clamp(1, LATENCY_MAX_MICROS));
        let class = (status / 100).clamp(1, 5) as usize;
        m.statuses[class] += 1;
    });
}

/// (endpoint, count, p50, p90, p99, p99.9, max) in microseconds.
pub type LatencySummary = (&'static str, u64, u64, u64, u64, u64, u64);

pub fn snapshot() -> (Vec<LatencySummary>, [u64; 6]) {
    METRICS.with(|m| {
        let m = m.borrow();
        let lat = ENDPOINTS
            .iter()
            .zip(&m.latency)
            .map(|(name, h)| {
                let q = |p: f64| h.value_at_quantile(p);
                (*name, h.len(), q(0.5), q(0.9), q(0.99), q(0.999), h.max())
            })
            .collect();
        (lat, m.statuses)
    })
}

/// Renders every shard's figures as Prometheus text exposition.
pub fn render(
    stats: &[crate::gateway::msg::ShardStats],
    sinks: &[(
        &'static str,
        crate::domain::ShardId,
        std::sync::Arc<crate::replication::runner::SinkStatus>,
    )],
) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(4096);
    let mut gauge =
        |name: &str, help: &str, f: &dyn Fn(&crate::gateway::msg::ShardStats) -> u64| {
            let _ = writeln!(
                out,
                "# HELP corepay_{name} {help}\n# TYPE corepay_{name} gauge"
            );
            for s in stats {
                let _ = writeln!(out, "corepay_{name}{{shard=\"{}\"}} {}", s.shard, f(s));
            }
        };
    gauge("accounts", "Accounts owned by the shard.", &|s| {
        s.accounts as u64
    });
    gauge("cards", "Cards homed on the shard.", &|s| s.cards as u64);
    gauge("payments", "Payments owned by the shard.", &|s| {
        s.payments as u64
    });
    gauge("idempotency_records", "Idempotency records held.", &|s| {
        s.idempotency_records as u64
    });
    gauge(
        "idempotency_index_keys",
        "Idempotency keys indexed.",
        &|s| s.idempotency_index as u64,
    );
    gauge(
        "outbox_credits",
        "Cross-shard credits awaiting acknowledgement.",
        &|s| s.outbox as u64,
    );
    gauge("wal_last_lsn", "Last LSN appended.", &|s| s.wal_last_lsn);
    gauge("wal_durable_lsn", "Last LSN durable.", &|s| {
        s.wal_durable_lsn
    });
    gauge("wal_batches_total", "Group-commit batches written.", &|s| {
        s.wal_batches
    });
    gauge("wal_records_total", "Records written.", &|s| s.wal_records);
    gauge("wal_bytes_total", "Bytes written to the WAL.", &|s| {
        s.wal_bytes
    });
    gauge("wal_sync_micros_total", "Time spent in fdatasync.", &|s| {
        s.wal_sync_micros_sum
    });
    gauge("wal_sync_micros_max", "Slowest fdatasync.", &|s| {
        s.wal_sync_micros_max
    });
    gauge("shed_total", "Requests shed (503 / 91).", &|s| s.shed);
    gauge(
        "payments_in_memory",
        "Payments held in the shard's memory window.",
        &|s| s.payments_in_memory as u64,
    );
    gauge(
        "payment_window_slots",
        "Size of the shard's payment window (state.cache_mb).",
        &|s| s.payment_window as u64,
    );
    gauge(
        "store_applied_lsn",
        "Last LSN the store has applied.",
        &|s| s.store_applied_lsn,
    );
    gauge(
        "store_checkpoint_lsn",
        "Last LSN durable in the store; recovery replays the WAL after it.",
        &|s| s.store_checkpoint_lsn,
    );
    gauge(
        "store_lag_records",
        "Durable WAL records the store has not applied yet.",
        &|s| s.wal_durable_lsn.saturating_sub(s.store_applied_lsn),
    );
    gauge(
        "wal_segments_deleted_total",
        "WAL segments deleted after a checkpoint covered them.",
        &|s| s.wal_segments_deleted,
    );
    gauge(
        "store_wal_records_read_total",
        "Durable records the store writer read back from the WAL's segments (the in-memory \
         hand-off was full).",
        &|s| s.store_wal_records_read,
    );
    gauge(
        "wal_segments_recycled_total",
        "WAL segments kept as spares after a checkpoint covered them.",
        &|s| s.wal_segments_recycled,
    );
    gauge(
        "wal_spares_prepared_total",
        "Spare WAL segments zero-filled ahead of need by the store writer (fewer than two left).",
        &|s| s.wal_spares_prepared,
    );
    gauge(
        "wal_segments_created_total",
        "WAL segments the writer began.",
        &|s| s.wal_segments_created,
    );
    gauge(
        "wal_segments_reused_total",
        "WAL segments begun by renaming a spare (no zero-fill on the commit path).",
        &|s| s.wal_segments_reused,
    );
    gauge(
        "store_failures_total",
        "Store commits that failed (each retried).",
        &|s| s.store_failures,
    );
    gauge(
        "store_commits_total",
        "Store commits that were not checkpoints (each applies the durable records gathered \
         for state.commit_interval_ms).",
        &|s| s.store_commits,
    );
    gauge(
        "store_commit_micros_total",
        "Time spent in store commits that were not checkpoints.",
        &|s| s.store_commit_micros,
    );
    gauge(
        "store_commit_micros_max",
        "Slowest store commit that was not a checkpoint.",
        &|s| s.store_commit_micros_max,
    );
    gauge(
        "store_checkpoints_total",
        "Checkpoints: store commits made durable (fsync).",
        &|s| s.store_checkpoints,
    );
    gauge(
        "store_checkpoint_micros_total",
        "Time spent in checkpoints, fsync included.",
        &|s| s.store_checkpoint_micros,
    );
    gauge(
        "store_checkpoint_micros_max",
        "Slowest checkpoint, fsync included.",
        &|s| s.store_checkpoint_micros_max,
    );
    gauge(
        "store_cold_reads_total",
        "Payments read back from the store.",
        &|s| s.cold_reads,
    );
    gauge(
        "store_shed_total",
        "Requests shed because the store could not answer in time or memory was full of unstored changes.",
        &|s| s.store_shed,
    );
    gauge("http_requests_total", "HTTP requests handled.", &|s| {
        s.requests
    });
    histogram(
        &mut out,
        stats,
        "wal_fsync_seconds",
        "WAL fdatasync latency.",
        &|s| s.wal_sync_buckets,
    );
    histogram(
        &mut out,
        stats,
        "shard_tick_lateness_seconds",
        "How late the shard's periodic timer fired: time its executor did not run.",
        &|s| s.tick_lateness,
    );
    replication(&mut out, stats, sinks);
    let _ = writeln!(
        out,
        "# HELP corepay_http_latency_micros HTTP latency percentiles per endpoint."
    );
    let _ = writeln!(out, "# TYPE corepay_http_latency_micros summary");
    for s in stats {
        for &(name, count, p50, p90, p99, p999, max) in &s.latency {
            if count == 0 {
                continue;
            }
            for (q, v) in [
                ("0.5", p50),
                ("0.9", p90),
                ("0.99", p99),
                ("0.999", p999),
                ("1", max),
            ] {
                let _ = writeln!(
                    out,
                    "corepay_http_latency_micros{{shard=\"{}\",endpoint=\"{name}\",quantile=\"{q}\"}} {v}",
                    s.shard
                );
            }
            let _ = writeln!(
                out,
                "corepay_http_latency_micros_count{{shard=\"{}\",endpoint=\"{name}\"}} {count}",
                s.shard
            );
        }
        for (class, n) in s.statuses.iter().enumerate().skip(1) {
            let _ = writeln!(
                out,
                "corepay_http_responses_total{{shard=\"{}\",class=\"{class}xx\"}} {n}",
                s.shard
            );
        }
    }
    out
}

/// A `Buckets` histogram per shard, in seconds.
fn histogram(
    out: &mut String,
    stats: &[crate::gateway::msg::ShardStats],
    name: &str,
    help: &str,
    f: &dyn Fn(&crate::gateway::msg::ShardStats) -> Buckets,
) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "# HELP corepay_{name} {help}\n# TYPE corepay_{name} histogram"
    );
    for s in stats {
        let b = f(s);
        let les = PAUSE_BOUNDS_MICROS
            .iter()
            .map(|&m| format!("{}", m as f64 / 1e6))
            .chain(std::iter::once("+Inf".to_string()));
        for (le, n) in les.zip(b.cumulative()) {
            let _ = writeln!(
                out,
                "corepay_{name}_bucket{{shard=\"{}\",le=\"{le}\"}} {n}",
                s.shard
            );
        }
        let _ = writeln!(
            out,
            "corepay_{name}_sum{{shard=\"{}\"}} {}\ncorepay_{name}_count{{shard=\"{}\"}} {}",
            s.shard,
            b.sum_micros as f64 / 1e6,
            s.shard,
            b.count()
        );
    }
}

/// One series per (sink, shard): how far behind the sink is, whether it is cut off from the
/// change log (and being re-seeded), and what happened to it.
fn replication(
    out: &mut String,
    stats: &[crate::gateway::msg::ShardStats],
    sinks: &[(
        &'static str,
        crate::domain::ShardId,
        std::sync::Arc<crate::replication::runner::SinkStatus>,
    )],
) {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::SeqCst;
    type Read = dyn Fn(&crate::replication::runner::SinkStatus, u64) -> u64;
    let series: [(&str, &str, &str, &Read); 5] = [
        ("replication_stored_lsn", "gauge", "Last LSN the sink has stored.", &|s, _| {
            s.stored.load(SeqCst)
        }),
        (
            "replication_lag_records",
            "gauge",
            "Durable WAL records the sink has not stored yet.",
            &|s, durable| durable.saturating_sub(s.stored.load(SeqCst)),
        ),
        (
            "replication_consecutive_failures",
            "gauge",
            "Failures since the sink last stored a batch (0: healthy).",
            &|s, _| s.failures.load(SeqCst),
        ),
        (
            "replication_gap",
            "gauge",
            "1 while the sink needs records the change log no longer has (it is being re-seeded from the store).",
            &|s, _| u64::from(s.gap.load(SeqCst)),
        ),
        (
            "replication_reseeds_total",
            "counter",
            "Times the sink was re-seeded from the store (a full copy, then the change log).",
            &|s, _| s.reseeds.load(SeqCst),
        ),
    ];
    if sinks.is_empty() {
        return;
    }
    for (name, kind, help, read) in series {
        let _ = writeln!(out, "# HELP corepay_{name} {help}");
        let _ = writeln!(out, "# TYPE corepay_{name} {kind}");
        for (sink, shard, status) in sinks {
            let durable = stats
                .iter()
                .find(|s| s.shard == shard.0)
                .map_or(0, |s| s.wal_durable_lsn);
            let _ = writeln!(
                out,
                "corepay_{name}{{sink=\"{sink}\",shard=\"{shard}\"}} {}",
                read(status, durable)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_count_each_pause_under_the_first_bound_that_holds_it() {
        let mut b = Buckets::default();
        for micros in [0, 100, 101, 2_500, 2_501, 300_000, 9_000_000] {
            b.record(micros);
        }
        let cumulative: Vec<u64> = b.cumulative().collect();
        assert_eq!(cumulative.len(), PAUSE_BOUNDS_MICROS.len() + 1);
        // le 100 µs: 0 and 100; le 250 µs: + 101; le 2.5 ms: + 2,500; le 5 ms: + 2,501;
        // le 500 ms: + 300 ms; +Inf: + 9 s.
        assert_eq!(&cumulative[..6], &[2, 3, 3, 3, 4, 5]);
        assert_eq!(cumulative[10], 5, "le 250 ms");
        assert_eq!(cumulative[11], 6, "le 500 ms");
        assert_eq!(cumulative[13], 6, "le 2.5 s");
        assert_eq!(cumulative[14], 7, "+Inf");
        assert_eq!(b.count(), 7);
        assert_eq!(b.sum_micros, 9_306_202);
    }

    #[test]
    fn pause_histograms_render_cumulative_buckets_in_seconds_per_shard() {
        let mut a = crate::gateway::msg::ShardStats::default();
        a.wal_sync_buckets.record(300);
        a.wal_sync_buckets.record(200_000);
        let mut b = a.clone();
        b.shard = 1;
        b.wal_sync_buckets.record(3_000_000);
        let text = render(&[a, b], &[]);
        assert!(text.contains("# TYPE corepay_wal_fsync_seconds histogram"));
        for line in [
            "corepay_wal_fsync_seconds_bucket{shard=\"0\",le=\"0.00025\"} 0",
            "corepay_wal_fsync_seconds_bucket{shard=\"0\",le=\"0.0005\"} 1",
            "corepay_wal_fsync_seconds_bucket{shard=\"0\",le=\"0.1\"} 1",
            "corepay_wal_fsync_seconds_bucket{shard=\"0\",le=\"0.25\"} 2",
            "corepay_wal_fsync_seconds_bucket{shard=\"0\",le=\"+Inf\"} 2",
            "corepay_wal_fsync_seconds_bucket{shard=\"1\",le=\"2.5\"} 2",
            "corepay_wal_fsync_seconds_bucket{shard=\"1\",le=\"+Inf\"} 3",
            "corepay_wal_fsync_seconds_sum{shard=\"0\"} 0.2003",
            "corepay_wal_fsync_seconds_count{shard=\"1\"} 3",
            "corepay_shard_tick_lateness_seconds_count{shard=\"0\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
