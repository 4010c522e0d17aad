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

pub struct ShardMetrics {
    latency: Vec<Histogram<u64>>,
    statuses: [u64; 6],
}

thread_local! {
    static METRICS: RefCell<ShardMetrics> = RefCell::new(ShardMetrics {
        latency: ENDPOINTS
            .iter()
            .map(|_| Histogram::new_with_bounds(1, LATENCY_MAX_MICROS, 3).expect("valid bounds"))
            .collect(),
        statuses: [0; 6],
    });
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
