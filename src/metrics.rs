//! Per-shard metrics and their Prometheus text exposition (format 0.0.4).
//!
//! Each shard records into its own thread-local fixed-bucket histograms (no sharing, no
//! locks, O(buckets) per request at worst); /metrics gathers every shard's snapshot over the
//! mesh and writes one series per shard, so that Prometheus can sum them across shards
//! (`sum by (le) (rate(corepay_http_request_duration_seconds_bucket[1m]))`), which the
//! per-shard percentiles of earlier versions never allowed. Times are in seconds, sizes in
//! bytes or records, counters end in `_total`.
//!
//! The text is written here, not by the `prometheus-client` crate: that crate's text encoder
//! writes OpenMetrics only (`# EOF`, a counter family `x` with samples `x_total`), which
//! `promtool check metrics` (Prometheus' own linter, run by the tests) reads as untyped
//! series and rejects. The format written here is small and fixed, and the tests lint it.

use std::cell::RefCell;

/// The HTTP endpoints measured separately.
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

/// `ENDPOINTS[ADMIN_ENDPOINT]`: the admin plane's requests (`http::api::is_admin_path`).
pub const ADMIN_ENDPOINT: usize = 5;

/// The ISO 8583 message types measured separately (by the request's MTI).
pub const MTIS: [&str; 7] = ["0100", "0200", "0220", "0400", "0420", "0800", "other"];

/// Upper bounds (µs) of the time histograms: request latency, WAL fdatasync, shard tick
/// lateness. Rendered as `le` bounds in seconds.
pub const TIME_BOUNDS_MICROS: &[u64] = &[
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Upper bounds of the WAL batch size histogram (records per group commit).
pub const BATCH_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1_024, 4_096];

/// Room for the longest bounds list, plus the unbounded bucket.
const MAX_BUCKETS: usize = 18;

/// A fixed-bucket histogram (counts per bound of `bounds`, the last bucket unbounded):
/// constant size, recorded without allocation, summable across shards, which an HDR
/// summary of percentiles is not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buckets {
    bounds: &'static [u64],
    counts: [u64; MAX_BUCKETS],
    sum: u64,
}

impl Default for Buckets {
    fn default() -> Buckets {
        Buckets::new(TIME_BOUNDS_MICROS)
    }
}

impl Buckets {
    pub const fn new(bounds: &'static [u64]) -> Buckets {
        assert!(bounds.len() < MAX_BUCKETS);
        Buckets {
            bounds,
            counts: [0; MAX_BUCKETS],
            sum: 0,
        }
    }

    pub fn record(&mut self, value: u64) {
        let k = self.bounds.partition_point(|&b| b < value);
        self.counts[k] += 1;
        self.sum = self.sum.saturating_add(value);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// (bound, cumulative count) per bound, then (None, total) for `+Inf`.
    pub fn cumulative(&self) -> impl Iterator<Item = (Option<u64>, u64)> + '_ {
        let bounds = self
            .bounds
            .iter()
            .map(|&b| Some(b))
            .chain(std::iter::once(None));
        bounds.zip(self.counts.iter().scan(0u64, |acc, &c| {
            *acc += c;
            Some(*acc)
        }))
    }
}

/// The public listeners, as metric labels (`LISTENERS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Http = 0,
    Iso8583 = 1,
}

pub const LISTENERS: [&str; 2] = ["http", "iso8583"];

/// What a shard records on its own thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct ShardSnapshot {
    /// Open connections per listener, and connections closed at once for being over
    /// `max_connections_per_shard`.
    pub connections: [u64; LISTENERS.len()],
    pub connections_refused: [u64; LISTENERS.len()],
    /// TLS handshakes that failed or timed out (plain text or garbage sent to a TLS port, an
    /// old protocol version, a client certificate not signed by `client_ca_file`).
    pub tls_handshakes_failed: [u64; LISTENERS.len()],
    pub http: [Buckets; ENDPOINTS.len()],
    pub iso: [Buckets; MTIS.len()],
    /// Responses by status class: [_, 1xx, 2xx, 3xx, 4xx, 5xx].
    pub statuses: [u64; 6],
    pub tick_lateness: Buckets,
}

thread_local! {
    static METRICS: RefCell<ShardSnapshot> = RefCell::new(ShardSnapshot::default());
}

/// Which endpoint a request path and method belong to.
pub fn classify(post: bool, path: &str) -> usize {
    let mut segs = path.trim_end_matches('/').split('/').skip(1);
    let segs: [Option<&str>; 5] = std::array::from_fn(|_| segs.next());
    match (post, segs) {
        (true, [Some("v1"), Some("payments"), None, ..]) => 0,
        (false, [Some("v1"), Some("payments"), Some(_), None, _]) => 1,
        (true, [Some("v1"), Some("payments"), Some(_), Some("capture"), None]) => 2,
        (true, [Some("v1"), Some("payments"), Some(_), Some("void"), None]) => 3,
        (true, [Some("v1"), Some("payments"), Some(_), Some("refunds"), None]) => 4,
        _ if crate::http::api::is_admin_path(path) => ADMIN_ENDPOINT,
        _ => 6,
    }
}

/// Which of `MTIS` an ISO 8583 request body (starting with its MTI) is.
pub fn classify_mti(body: &[u8]) -> usize {
    let mti = body.get(..4).unwrap_or_default();
    MTIS.iter()
        .position(|m| m.as_bytes() == mti)
        .unwrap_or(MTIS.len() - 1)
}

/// One HTTP request of `endpoint`, answered `status` after `micros`.
pub fn record(endpoint: usize, status: u16, micros: u64) {
    METRICS.with(|m| {
        let mut m = m.borrow_mut();
        m.http[endpoint].record(micros);
        let class = (status / 100).clamp(1, 5) as usize;
        m.statuses[class] += 1;
    });
}

/// One ISO 8583 request of MTI index `mti` (`classify_mti`), answered after `micros`.
pub fn record_iso(mti: usize, micros: u64) {
    METRICS.with(|m| m.borrow_mut().iso[mti].record(micros));
}

/// How much later than asked the shard's periodic timer fired: time its executor did not
/// run (a long task, a blocked thread, the thread not scheduled).
pub fn record_tick_lateness(micros: u64) {
    METRICS.with(|m| m.borrow_mut().tick_lateness.record(micros));
}

/// `open` connections are now open on this shard's `kind` listener.
pub fn set_connections(kind: Listener, open: usize) {
    METRICS.with(|m| m.borrow_mut().connections[kind as usize] = open as u64);
}

/// A connection over the limit was closed at once.
pub fn connection_refused(kind: Listener) {
    METRICS.with(|m| m.borrow_mut().connections_refused[kind as usize] += 1);
}

pub fn tls_handshake_failed(kind: Listener) {
    METRICS.with(|m| m.borrow_mut().tls_handshakes_failed[kind as usize] += 1);
}

/// This shard's figures so far.
pub fn snapshot() -> ShardSnapshot {
    METRICS.with(|m| *m.borrow())
}

/// The exposition being written: families with HELP and TYPE, then their samples.
struct Text {
    out: String,
}

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        use std::fmt::Write;
        debug_assert_eq!(kind == "counter", name.ends_with("_total"), "{name}");
        let _ = writeln!(
            self.out,
            "# HELP corepay_{name} {help}\n# TYPE corepay_{name} {kind}"
        );
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        use std::fmt::Write;
        let _ = writeln!(self.out, "corepay_{name}{{{labels}}} {value}");
    }

    /// One series per shard.
    fn per_shard<V: std::fmt::Display>(
        &mut self,
        stats: &[ShardStats],
        name: &str,
        kind: &str,
        help: &str,
        f: impl Fn(&ShardStats) -> V,
    ) {
        self.family(name, kind, help);
        for s in stats {
            self.sample(name, &format!("shard=\"{}\"", s.shard), f(s));
        }
    }

    /// A histogram's samples for one label set; recorded values are divided by `per` for
    /// the exposed unit (1e6: µs into seconds; a division, so that 100 µs prints 0.0001).
    fn histogram(&mut self, name: &str, labels: &str, b: &Buckets, per: f64) {
        let bucket = format!("{name}_bucket");
        for (bound, n) in b.cumulative() {
            let le = match bound {
                Some(v) => format!("{}", v as f64 / per),
                None => "+Inf".to_string(),
            };
            self.sample(&bucket, &format!("{labels},le=\"{le}\""), n);
        }
        self.sample(&format!("{name}_sum"), labels, b.sum() as f64 / per);
        self.sample(&format!("{name}_count"), labels, b.count());
    }

    /// A family with one series per shard and per `values` entry, labelled `label`.
    fn per_shard_and(
        &mut self,
        stats: &[ShardStats],
        (name, kind, help): (&str, &str, &str),
        label: &str,
        values: &[&str],
        f: impl Fn(&ShardStats, usize) -> u64,
    ) {
        self.family(name, kind, help);
        for s in stats {
            for (k, value) in values.iter().enumerate() {
                let labels = format!("shard=\"{}\",{label}=\"{value}\"", s.shard);
                self.sample(name, &labels, f(s, k));
            }
        }
    }

    fn shard_histogram(
        &mut self,
        stats: &[ShardStats],
        name: &str,
        help: &str,
        per: f64,
        f: impl Fn(&ShardStats) -> Buckets,
    ) {
        self.family(name, "histogram", help);
        for s in stats {
            self.histogram(name, &format!("shard=\"{}\"", s.shard), &f(s), per);
        }
    }
}

use crate::gateway::msg::ShardStats;

/// One integer series per shard: (name, help, value).
type Series = (&'static str, &'static str, fn(&ShardStats) -> u64);

/// Recorded microseconds per exposed second.
const MICROS: f64 = 1e6;

/// Renders every shard's figures as Prometheus text exposition (format 0.0.4).
pub fn render(
    stats: &[ShardStats],
    sinks: &[(
        &'static str,
        crate::domain::ShardId,
        std::sync::Arc<crate::replication::runner::SinkStatus>,
    )],
) -> String {
    let mut t = Text {
        out: String::with_capacity(32 * 1024),
    };
    let gauges: [Series; 17] = [
        (
            "admission_limit",
            "The adaptive concurrency limit new work is admitted under.",
            |s| u64::from(s.admission_limit),
        ),
        (
            "admission_in_flight",
            "Requests admitted and not yet answered.",
            |s| u64::from(s.admission_in_flight),
        ),
        (
            "data_free_bytes",
            "Free bytes on the data directory's filesystem (as the shard last saw them).",
            |s| s.data_free_bytes,
        ),
        (
            "data_space_low",
            "1 while new work is shed because the data directory has less than state.min_free_mb free.",
            |s| u64::from(s.data_space_low),
        ),
        ("accounts", "Accounts owned by the shard.", |s| s.accounts as u64),
        ("cards", "Cards homed on the shard.", |s| s.cards as u64),
        ("payments", "Payments owned by the shard.", |s| s.payments as u64),
        ("idempotency_records", "Idempotency records held in memory.", |s| {
            s.idempotency_records as u64
        }),
        ("idempotency_index_keys", "Idempotency keys indexed in memory.", |s| {
            s.idempotency_index as u64
        }),
        ("outbox_credits", "Cross-shard credits awaiting acknowledgement.", |s| {
            s.outbox as u64
        }),
        ("wal_last_lsn", "Last LSN appended to the WAL.", |s| s.wal_last_lsn),
        ("wal_durable_lsn", "Last LSN durable in the WAL.", |s| s.wal_durable_lsn),
        ("payments_in_memory", "Payments held in the shard's memory window.", |s| {
            s.payments_in_memory as u64
        }),
        (
            "payment_window_slots",
            "Size of the shard's payment window (state.cache_mb).",
            |s| s.payment_window as u64,
        ),
        ("store_applied_lsn", "Last LSN the store has applied.", |s| s.store_applied_lsn),
        (
            "store_checkpoint_lsn",
            "Last LSN durable in the store; recovery replays the WAL after it.",
            |s| s.store_checkpoint_lsn,
        ),
        ("store_lag_records", "Durable WAL records the store has not applied yet.", |s| {
            s.wal_durable_lsn.saturating_sub(s.store_applied_lsn)
        }),
    ];
    for (name, help, f) in gauges {
        t.per_shard(stats, name, "gauge", help, f);
    }
    let counters: [Series; 15] = [
        ("wal_batches_total", "Group-commit batches written to the WAL.", |s| s.wal_batches),
        ("wal_records_total", "Records written to the WAL.", |s| s.wal_records),
        ("wal_bytes_total", "Bytes written to the WAL, padding included.", |s| s.wal_bytes),
        (
            "wal_segments_deleted_total",
            "WAL segments deleted after a checkpoint covered them.",
            |s| s.wal_segments_deleted,
        ),
        (
            "wal_segments_recycled_total",
            "WAL segments kept as spares after a checkpoint covered them.",
            |s| s.wal_segments_recycled,
        ),
        (
            "wal_spares_prepared_total",
            "Spare WAL segments zero-filled ahead of need by the store writer.",
            |s| s.wal_spares_prepared,
        ),
        ("wal_segments_created_total", "WAL segments the writer began.", |s| {
            s.wal_segments_created
        }),
        (
            "wal_segments_reused_total",
            "WAL segments begun by renaming a spare (no zero-fill on the commit path).",
            |s| s.wal_segments_reused,
        ),
        (
            "store_wal_records_read_total",
            "Durable records the store writer read back from the WAL (the in-memory hand-off was full).",
            |s| s.store_wal_records_read,
        ),
        ("store_failures_total", "Store commits that failed (each is retried).", |s| {
            s.store_failures
        }),
        (
            "store_commits_total",
            "Store commits that were not checkpoints (each applies the durable records gathered for state.commit_interval_ms).",
            |s| s.store_commits,
        ),
        ("store_checkpoints_total", "Checkpoints: store commits made durable.", |s| {
            s.store_checkpoints
        }),
        ("store_cold_reads_total", "Payments read back from the store.", |s| s.cold_reads),
        (
            "store_shed_total",
            "Requests shed because the store could not answer in time or memory was full of unstored changes.",
            |s| s.store_shed,
        ),
        ("http_requests_total", "HTTP requests handled.", |s| s.requests),
    ];
    for (name, help, f) in counters {
        t.per_shard(stats, name, "counter", help, f);
    }
    t.per_shard_and(
        stats,
        (
            "shed_total",
            "counter",
            "Requests shed (HTTP 503, ISO 8583 91), by reason.",
        ),
        "reason",
        &crate::gateway::SHED_REASONS,
        |s, k| s.shed[k],
    );
    let seconds = |micros: u64| micros as f64 / MICROS;
    t.per_shard(
        stats,
        "queue_delay_seconds",
        "gauge",
        "Latest sample of how long a ready task waits for the shard's executor (admission's signal).",
        |s| seconds(s.queue_delay_micros),
    );
    t.per_shard(
        stats,
        "store_commit_seconds_total",
        "counter",
        "Time spent in store commits that were not checkpoints.",
        |s| seconds(s.store_commit_micros),
    );
    t.per_shard(
        stats,
        "store_commit_seconds_max",
        "gauge",
        "Slowest store commit that was not a checkpoint, since start.",
        |s| seconds(s.store_commit_micros_max),
    );
    t.per_shard(
        stats,
        "store_checkpoint_seconds_total",
        "counter",
        "Time spent in checkpoints, fsync included.",
        |s| seconds(s.store_checkpoint_micros),
    );
    t.per_shard(
        stats,
        "store_checkpoint_seconds_max",
        "gauge",
        "Slowest checkpoint, fsync included, since start.",
        |s| seconds(s.store_checkpoint_micros_max),
    );
    t.shard_histogram(
        stats,
        "wal_fsync_seconds",
        "WAL fdatasync latency.",
        MICROS,
        |s| s.wal_sync_buckets,
    );
    t.shard_histogram(
        stats,
        "wal_batch_records",
        "Records per WAL group commit.",
        1.0,
        |s| s.wal_batch_records,
    );
    t.shard_histogram(
        stats,
        "shard_tick_lateness_seconds",
        "How late the shard's periodic timer fired: time its executor did not run.",
        MICROS,
        |s| s.metrics.tick_lateness,
    );
    t.family(
        "http_request_duration_seconds",
        "histogram",
        "HTTP request latency, from the whole request read to the answer written, per endpoint.",
    );
    for s in stats {
        for (k, endpoint) in ENDPOINTS.iter().enumerate() {
            let labels = format!("shard=\"{}\",endpoint=\"{endpoint}\"", s.shard);
            t.histogram(
                "http_request_duration_seconds",
                &labels,
                &s.metrics.http[k],
                MICROS,
            );
        }
    }
    t.family(
        "iso8583_request_duration_seconds",
        "histogram",
        "ISO 8583 request latency, from the whole frame read to the answer queued, per request MTI.",
    );
    for s in stats {
        for (k, mti) in MTIS.iter().enumerate() {
            let labels = format!("shard=\"{}\",mti=\"{mti}\"", s.shard);
            t.histogram(
                "iso8583_request_duration_seconds",
                &labels,
                &s.metrics.iso[k],
                MICROS,
            );
        }
    }
    t.per_shard_and(
        stats,
        ("connections", "gauge", "Open connections, per listener."),
        "listener",
        &LISTENERS,
        |s, k| s.metrics.connections[k],
    );
    t.family(
        "mesh_calls_in_flight",
        "gauge",
        "Calls outstanding from the shard to each peer over the ring (at most mesh.max_in_flight_per_peer; the ring holds 4x that).",
    );
    for s in stats {
        for (peer, n) in s.mesh_in_flight.iter().enumerate() {
            if peer == usize::from(s.shard) {
                continue; // calls to oneself skip the ring
            }
            let labels = format!("shard=\"{}\",peer=\"{peer}\"", s.shard);
            t.sample("mesh_calls_in_flight", &labels, n);
        }
    }
    t.per_shard_and(
        stats,
        (
            "connections_refused_total",
            "counter",
            "Connections closed at once for being over max_connections_per_shard, per listener.",
        ),
        "listener",
        &LISTENERS,
        |s, k| s.metrics.connections_refused[k],
    );
    t.per_shard_and(
        stats,
        (
            "tls_handshakes_failed_total",
            "counter",
            "TLS handshakes that failed or timed out, per listener (the connection was dropped).",
        ),
        "listener",
        &LISTENERS,
        |s, k| s.metrics.tls_handshakes_failed[k],
    );
    t.per_shard_and(
        stats,
        (
            "http_responses_total",
            "counter",
            "HTTP responses by status class.",
        ),
        "class",
        &["1xx", "2xx", "3xx", "4xx", "5xx"],
        |s, k| s.metrics.statuses[k + 1],
    );
    replication(&mut t, stats, sinks);
    t.out
}

/// One series per (sink, shard): how far behind the sink is, whether it is cut off from the
/// change log (and being re-seeded), and what happened to it.
fn replication(
    t: &mut Text,
    stats: &[ShardStats],
    sinks: &[(
        &'static str,
        crate::domain::ShardId,
        std::sync::Arc<crate::replication::runner::SinkStatus>,
    )],
) {
    use std::sync::atomic::Ordering::SeqCst;
    type Read = dyn Fn(&crate::replication::runner::SinkStatus, u64) -> f64;
    let series: [(&str, &str, &str, &Read); 6] = [
        ("replication_stored_lsn", "gauge", "Last LSN the sink has stored.", &|s, _| {
            s.stored.load(SeqCst) as f64
        }),
        (
            "replication_lag_records",
            "gauge",
            "Durable WAL records the sink has not stored yet.",
            &|s, durable| durable.saturating_sub(s.stored.load(SeqCst)) as f64,
        ),
        (
            "replication_lag_seconds",
            "gauge",
            "Age of the oldest record read for the sink that it has not stored yet (0: none waiting).",
            &|s, _| s.lag_millis.load(SeqCst) as f64 / 1000.0,
        ),
        (
            "replication_consecutive_failures",
            "gauge",
            "Failures since the sink last stored a batch (0: healthy).",
            &|s, _| s.failures.load(SeqCst) as f64,
        ),
        (
            "replication_gap",
            "gauge",
            "1 while the sink needs records the change log no longer has (it is being re-seeded from the store).",
            &|s, _| f64::from(u8::from(s.gap.load(SeqCst))),
        ),
        (
            "replication_reseeds_total",
            "counter",
            "Times the sink was re-seeded from the store (a full copy, then the change log).",
            &|s, _| s.reseeds.load(SeqCst) as f64,
        ),
    ];
    if sinks.is_empty() {
        return;
    }
    for (name, kind, help, read) in series {
        t.family(name, kind, help);
        for (sink, shard, status) in sinks {
            let durable = stats
                .iter()
                .find(|s| s.shard == shard.0)
                .map_or(0, |s| s.wal_durable_lsn);
            let labels = format!("sink=\"{sink}\",shard=\"{shard}\"");
            t.sample(name, &labels, read(status, durable));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_count_each_value_under_the_first_bound_that_holds_it() {
        let mut b = Buckets::new(TIME_BOUNDS_MICROS);
        for micros in [0, 50, 51, 2_500, 2_501, 300_000, 90_000_000] {
            b.record(micros);
        }
        let cumulative: Vec<(Option<u64>, u64)> = b.cumulative().collect();
        assert_eq!(cumulative.len(), TIME_BOUNDS_MICROS.len() + 1);
        // le 50 µs: 0 and 50; le 100 µs: + 51; le 2.5 ms: + 2,500; le 5 ms: + 2,501;
        // le 500 ms: + 300 ms; +Inf: + 90 s.
        let at = |bound: u64| {
            cumulative
                .iter()
                .find(|(b, _)| *b == Some(bound))
                .unwrap()
                .1
        };
        assert_eq!(at(50), 2);
        assert_eq!(at(100), 3);
        assert_eq!(at(1_000), 3);
        assert_eq!(at(2_500), 4);
        assert_eq!(at(5_000), 5);
        assert_eq!(at(250_000), 5);
        assert_eq!(at(500_000), 6);
        assert_eq!(at(10_000_000), 6);
        assert_eq!(cumulative.last(), Some(&(None, 7)));
        assert_eq!(b.count(), 7);
        assert_eq!(b.sum(), 90_305_102);
    }

    #[test]
    fn endpoints_and_mtis_are_classified_by_shape() {
        let e = |post, path| ENDPOINTS[classify(post, path)];
        assert_eq!(e(true, "/v1/payments"), "payments_create");
        assert_eq!(e(true, "/v1/payments/"), "payments_create");
        assert_eq!(e(false, "/v1/payments/pay_1"), "payments_get");
        assert_eq!(e(true, "/v1/payments/pay_1/capture"), "payments_capture");
        assert_eq!(e(true, "/v1/payments/pay_1/void"), "payments_void");
        assert_eq!(e(true, "/v1/payments/pay_1/refunds"), "payments_refund");
        assert_eq!(e(true, "/v1/payments/pay_1/capture/x"), "other");
        assert_eq!(e(false, "/v1/payments"), "other");
        assert_eq!(e(true, "/v1/accounts"), "admin");
        assert_eq!(e(false, "/v1/accounts/7"), "admin");
        assert_eq!(e(false, "/v2/payments"), "other");
        assert_eq!(MTIS[classify_mti(b"0100\x72")], "0100");
        assert_eq!(MTIS[classify_mti(b"0420")], "0420");
        assert_eq!(MTIS[classify_mti(b"01")], "other");
        assert_eq!(MTIS[classify_mti(b"9999")], "other");
    }

    /// Every sample belongs to a family declared with HELP and TYPE, counters end in
    /// `_total`, and histogram buckets are cumulative and end in +Inf = count.
    #[test]
    fn exposition_declares_every_family_and_histograms_sum_across_shards() {
        let mut a = ShardStats::default();
        a.wal_sync_buckets.record(300);
        a.wal_sync_buckets.record(200_000);
        a.metrics.http[0].record(700);
        a.metrics.iso[0].record(900);
        let mut b = a.clone();
        b.shard = 1;
        b.wal_sync_buckets.record(3_000_000);
        let text = render(&[a, b], &[]);
        for line in [
            "corepay_wal_fsync_seconds_bucket{shard=\"0\",le=\"0.00025\"} 0",
            "corepay_wal_fsync_seconds_bucket{shard=\"0\",le=\"0.0005\"} 1",
            "corepay_wal_fsync_seconds_bucket{shard=\"0\",le=\"0.1\"} 1",
            "corepay_wal_fsync_seconds_bucket{shard=\"0\",le=\"0.25\"} 2",
            "corepay_wal_fsync_seconds_bucket{shard=\"0\",le=\"+Inf\"} 2",
            "corepay_wal_fsync_seconds_bucket{shard=\"1\",le=\"2.5\"} 2",
            "corepay_wal_fsync_seconds_bucket{shard=\"1\",le=\"5\"} 3",
            "corepay_wal_fsync_seconds_sum{shard=\"0\"} 0.2003",
            "corepay_wal_fsync_seconds_count{shard=\"1\"} 3",
            "corepay_http_request_duration_seconds_bucket{shard=\"1\",endpoint=\"payments_create\",le=\"0.001\"} 1",
            "corepay_iso8583_request_duration_seconds_count{shard=\"0\",mti=\"0100\"} 1",
            "corepay_shard_tick_lateness_seconds_count{shard=\"0\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        let mut declared = std::collections::HashMap::new();
        let mut helped = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.insert(rest.split(' ').next().unwrap().to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(helped.contains(name), "{name}: TYPE without HELP");
                assert_eq!(
                    kind == "counter",
                    name.ends_with("_total"),
                    "{name} is a {kind}"
                );
                assert!(!name.contains("micros"), "{name}: not in base units");
                declared.insert(name.to_string(), kind.to_string());
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .filter_map(|suffix| name.strip_suffix(suffix))
                    .find(|f| declared.get(*f).map(String::as_str) == Some("histogram"))
                    .unwrap_or(name);
                assert!(declared.contains_key(family), "{name}: no TYPE before it");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
        // Buckets are cumulative and +Inf is the count, per series.
        let mut buckets: std::collections::HashMap<String, Vec<f64>> = Default::default();
        let mut counts = std::collections::HashMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value.parse().unwrap();
            if let Some((name, rest)) = series.split_once("_bucket{") {
                let labels = rest.split(",le=").next().unwrap();
                buckets
                    .entry(format!("{name}{{{labels}}}"))
                    .or_default()
                    .push(value);
            } else if let Some((name, labels)) = series.split_once("_count{") {
                counts.insert(format!("{name}{{{labels}"), value);
            }
        }
        assert!(buckets.len() > 20);
        for (series, values) in &buckets {
            assert!(
                values.windows(2).all(|w| w[0] <= w[1]),
                "{series}: {values:?}"
            );
            assert_eq!(Some(values.last().unwrap()), counts.get(series), "{series}");
        }
    }
}
