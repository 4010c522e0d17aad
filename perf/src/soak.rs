//! `corepay-perf soak`: one fixed open-loop rate for millions of payments (or a duration),
//! reported window by window, to show that nothing drifts as state outgrows memory:
//! latency (p50/p99/max from the scheduled send, a fresh histogram per window), achieved
//! rate, payments processed, the gateway's RSS (`/proc/<pid>/status`) and its store gauges
//! (`/metrics`), and separately the latency of *cold* operations: reads and refunds of
//! payments approved so long ago that they left the gateway's memory.
//!
//! The load is the engine's, unchanged: every scheduled request is accounted for exactly
//! once. A sampler thread reads RSS and /metrics once per window, off the load executor, so
//! a slow /metrics never delays a send. With `--start-gateway` the soak starts corepay
//! (and then the durable responder baseline) itself, as the suite does, and reports both
//! side by side. It writes `<label>-soak.json` (every window), `.txt` (the summary) and
//! `.svg` (latency, rate and RSS against payments processed).

use crate::admin::{get_text, metric_total};
use crate::cli::Args;
use crate::engine::{self, EngineOpts, WindowOpts};
use crate::report::{Percentiles, RunResult};
use crate::scenario::{Scenario, Target};
use crate::suite::{Kind, Launch, Server, ADMIN_KEY};
use crate::window::Window;
use crate::workload::{Generator, OpKind};
use crate::{check, out_dir, plot, prepare, to_json, write};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// "RSS at 1 M payments": the mark RSS is read at, against the end.
pub const RSS_MARK: u64 = 1_000_000;
/// RSS "at" a point is the peak of the samples in this many seconds up to it: a single
/// sample can fall on a moment when the allocator has just returned memory (dips of 50-80
/// MiB for a second were seen in the 10 M soak), and the peak is what a memory bound must
/// hold.
const RSS_SPAN_S: f64 = 60.0;
/// The trend of maxima is taken over buckets of this many seconds.
const TREND_BUCKET_S: f64 = 10.0;
/// First and last minute of the schedule for the rate trend (half the run if shorter).
const RATE_SPAN_S: f64 = 60.0;

/// One soak against one target.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SoakResult {
    pub kind: String,
    pub label: String,
    pub window_ms: u64,
    pub cold_after: u64,
    /// Where RSS was read (None: no `--gateway-pid`, RSS not recorded).
    pub gateway_pid: Option<u32>,
    /// When the last request was scheduled (s after the measured start); later windows
    /// only drain.
    pub schedule_end_s: f64,
    /// The whole soak's figures, as `run` reports them (scenario, accounting, per
    /// operation, closing check).
    pub run: RunResult,
    /// Cold reads and refunds together (each also under `run.per_op`).
    pub cold: Percentiles,
    /// Cold operations drawn before any payment was old enough (sent as authorizations).
    pub cold_fallbacks: u64,
    pub trends: Trends,
    pub windows: Vec<Window>,
}

/// The figures that say whether anything drifted.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Trends {
    /// Max latency in each 10 s of windows (ms), in order.
    pub max_ms_per_10s: Vec<f64>,
    /// The largest latency of the soak (ms) and its window.
    pub max_ms: f64,
    pub max_window: u64,
    /// Achieved rate over the first and the last `rate_span_s` of the schedule.
    pub rate_span_s: f64,
    pub first_rate: f64,
    pub last_rate: f64,
    /// `last_rate / first_rate` (None when nothing was answered at first).
    pub last_to_first_rate: Option<f64>,
    /// The gateway's RSS in the first sampled window; its peak over the `RSS_SPAN_S` up to
    /// the first window with at least `rss_mark` payments processed, and over the last
    /// `RSS_SPAN_S` of the soak.
    pub rss_mark: u64,
    pub rss_first: Option<RssPoint>,
    pub rss_at_mark: Option<RssPoint>,
    pub rss_end: Option<RssPoint>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RssPoint {
    pub window: u64,
    pub processed: u64,
    pub bytes: u64,
}

pub fn cmd_soak(a: &Args) -> Result<i32, String> {
    let mut s = Scenario::from_args(a)?;
    if let Some(n) = a.parsed("payments")? {
        s.soak.payments = n;
    }
    if let Some(ms) = a.parsed("window-ms")? {
        s.soak.window_ms = ms;
    }
    let pid: Option<u32> = a.parsed("gateway-pid")?;
    // The baseline holds no state, so its latency does not depend on history: a shorter
    // baseline soak at the same rate measures the same ceiling (and a lower maximum).
    let baseline_payments: Option<u64> = a.parsed("baseline-payments")?;
    let check = !a.has("no-check");
    let log = !a.has("quiet");
    let dir = out_dir(a)?;
    let start = if a.has("start-gateway") {
        let me = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut state = Vec::new();
        if let Some(v) = a.parsed::<u64>("cache-mb")? {
            state.push(("cache_mb".to_string(), v.to_string()));
        }
        if let Some(v) = a.parsed::<u64>("window-payments")? {
            state.push(("window_payments".to_string(), v.to_string()));
        }
        let baseline = match a.get("baseline").unwrap_or("durable-responder") {
            "durable-responder" => Some(Kind::DurableResponder),
            "responder" => Some(Kind::Responder),
            "none" => None,
            b => {
                return Err(format!(
                    "--baseline: durable-responder, responder or none, not {b:?}"
                ))
            }
        };
        Some((
            Launch {
                corepay: crate::suite::corepay_binary(a, &me),
                me,
                server_core: a.parsed("server-core")?.unwrap_or(1),
                port_base: a.parsed("port-base")?.unwrap_or(29_000),
                state,
                extra_toml: String::new(),
                pin: true,
            },
            baseline,
            a.parsed::<usize>("load-core")?,
        ))
    } else {
        None
    };
    a.finish()?;
    if s.soak.payments > 0 {
        s.duration_s = s.soak.payments as f64 / s.rate;
    }
    s.validate()?;
    let Some((launch, baseline, load_core)) = start else {
        if pid.is_none() && log {
            eprintln!("soak: no --gateway-pid: the gateway's RSS is not recorded");
        }
        let r = soak(&s, pid, check, log)?;
        return finish(&dir, &[r]);
    };
    if pid.is_some() {
        return Err("--gateway-pid and --start-gateway: choose one".into());
    }
    if !launch.corepay.exists() {
        return Err(format!(
            "{} not found: build it (cargo build --release -p corepay) or pass --corepay",
            launch.corepay.display()
        ));
    }
    let work = dir.join("work");
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let mut results = Vec::new();
    for kind in std::iter::once(Kind::Corepay).chain(baseline) {
        let server = Server::start(&launch, kind, &work)?;
        let mut st = s.clone();
        st.label = format!("{}-{}", s.label, kind.slug());
        st.addr = server.http;
        // The admin plane is on the operator listener (corepay's metrics address).
        st.admin_addr = server.metrics.unwrap_or(server.http);
        st.metrics_addr = server.metrics;
        st.admin_key = Some(ADMIN_KEY.into());
        st.target = if kind == Kind::Corepay {
            Target::Corepay
        } else {
            Target::Responder
        };
        st.core = Some(load_core.or(st.core).unwrap_or(0));
        if let (true, Some(n)) = (kind != Kind::Corepay, baseline_payments) {
            st.soak.payments = n;
            st.duration_s = n as f64 / st.rate;
        }
        if log {
            eprintln!(
                "soak: {} started (pid {}, data in {})",
                kind.name(),
                server.pid(),
                work.join(kind.slug()).display()
            );
        }
        let r = soak(&st, Some(server.pid()), check && kind == Kind::Corepay, log);
        server.stop()?;
        results.push(r?);
    }
    finish(&dir, &results)
}

/// Writes each soak's JSON, summary and plot (and both side by side when there are two);
/// exit status 1 when a closing check failed.
fn finish(dir: &std::path::Path, results: &[SoakResult]) -> Result<i32, String> {
    let mut failed = false;
    for r in results {
        let base = dir.join(format!("{}-soak", r.label));
        let text = r.summary();
        write(&base.with_extension("json"), &to_json(r)?)?;
        write(&base.with_extension("txt"), &text)?;
        write(
            &base.with_extension("svg"),
            &plot::soak(std::slice::from_ref(r)),
        )?;
        print!("{text}");
        println!("  wrote {}.{{json,txt,svg}}", base.display());
        failed |= r.run.check.as_ref().is_some_and(|c| !c.passed());
    }
    if results.len() > 1 {
        let base = dir.join(format!("{}-soak-both", results[0].scenario_label()));
        let text = side_by_side(results);
        write(&base.with_extension("txt"), &text)?;
        write(&base.with_extension("svg"), &plot::soak(results))?;
        print!("\n{text}");
        println!("  wrote {}.{{txt,svg}}", base.display());
    }
    Ok(failed as i32)
}

/// Provisions, runs the soak with its sampler, and runs the closing check (counters and
/// sums only: reading back millions of payments is not what a soak measures).
pub fn soak(s: &Scenario, pid: Option<u32>, check: bool, log: bool) -> Result<SoakResult, String> {
    let mut p = prepare(s, true)?;
    let corepay = s.target == Target::Corepay;
    let metrics = s.metrics_addr.filter(|_| corepay);
    if corepay && metrics.is_none() && log {
        eprintln!("soak: no metrics_addr: the gateway's store gauges are not sampled");
    }
    let before = match (&mut p.admin, check) {
        (Some(admin), true) => Some(check::before(admin, s.metrics_addr)?),
        _ => None,
    };
    if log {
        eprintln!(
            "soak {}: {:.0}/s for {} requests ({:.0} s) after {:.1} s of warm-up, windows of {} ms",
            s.label,
            s.rate,
            (s.rate * s.duration_s).round(),
            s.duration_s,
            s.warmup_s,
            s.soak.window_ms
        );
    }
    let started = crate::now_unix();
    let (tx, rx) = mpsc::channel();
    let sampler = std::thread::Builder::new()
        .name("soak-sampler".into())
        .spawn(move || sample(pid, metrics, rx, log))
        .map_err(|e| format!("cannot start the sampler: {e}"))?;
    let opts = EngineOpts {
        keep_approved_ids: false,
        windows: Some(WindowOpts {
            width: Duration::from_millis(s.soak.window_ms),
            tick: tx,
        }),
    };
    let stats = engine::run_with(s, Generator::new(s, p.world.clone()), opts);
    // The engine dropped its sender: the sampler ends after the last window.
    let samples = sampler
        .join()
        .map_err(|_| "the sampler thread panicked".to_string())?;
    let mut stats = stats?;
    assert_eq!(
        stats.accounted_all(),
        stats.scheduled_all,
        "every scheduled request ends exactly once"
    );
    let measured = stats.ok + stats.declined + stats.shed + stats.errors.values().sum::<u64>();
    assert_eq!(
        stats.windows.iter().map(|w| w.answered).sum::<u64>(),
        measured,
        "every measured answer lands in exactly one window"
    );
    let mut windows = std::mem::take(&mut stats.windows);
    for (i, w) in windows.iter().enumerate() {
        assert_eq!(w.index, i as u64, "windows are consecutive");
    }
    for smp in samples {
        let w = &mut windows[smp.window as usize];
        w.rss_bytes = smp.rss_bytes;
        w.payments_in_memory = smp.payments_in_memory;
        w.store_lag_records = smp.store_lag_records;
        w.store_shed_total = smp.store_shed_total;
        w.store_cold_reads_total = smp.store_cold_reads_total;
        w.steal = smp.steal;
        w.cpu = smp.cpu;
    }
    let mut run = RunResult::new(s, &stats, started);
    if let (Some(admin), Some(before)) = (&mut p.admin, before) {
        run.check = Some(check::after(
            admin,
            s,
            s.metrics_addr,
            &p.world,
            &stats,
            &before,
        )?);
    }
    let mut cold = stats.per_op[OpKind::ColdRead as usize].clone();
    cold.add(&stats.per_op[OpKind::ColdRefund as usize])
        .map_err(|e| format!("cold histograms: {e}"))?;
    let trends = trends(&windows, stats.schedule_end_s, RSS_MARK);
    Ok(SoakResult {
        kind: "soak".into(),
        label: s.label.clone(),
        window_ms: s.soak.window_ms,
        cold_after: s.workload.cold_after,
        gateway_pid: pid,
        schedule_end_s: stats.schedule_end_s,
        run,
        cold: Percentiles::of(&cold),
        cold_fallbacks: stats.cold_fallbacks,
        trends,
        windows,
    })
}

/// What the sampler read just after one window closed.
#[derive(Debug, Default)]
struct Sample {
    window: u64,
    rss_bytes: Option<u64>,
    payments_in_memory: Option<u64>,
    store_lag_records: Option<u64>,
    store_shed_total: Option<u64>,
    store_cold_reads_total: Option<u64>,
    steal: Option<f64>,
    cpu: Option<BTreeMap<String, f64>>,
}

/// The sampler thread: for each closed window (the latest, when several wait), reads the
/// gateway's RSS and /metrics; logs a line per 10 s of windows. Ends when the engine
/// drops its sender.
fn sample(
    pid: Option<u32>,
    metrics: Option<SocketAddr>,
    rx: Receiver<Window>,
    log: bool,
) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut progress = Progress::default();
    let mut metric_errors = 0u64;
    let mut cpu = cpu_times();
    let threads = |at: Instant| {
        let mut all = BTreeMap::new();
        for (who, p) in [("gw", pid), ("load", Some(std::process::id()))] {
            for (name, ticks) in p.and_then(thread_ticks).unwrap_or_default() {
                all.insert(format!("{who}:{name}"), ticks);
            }
        }
        (at, all)
    };
    let mut last_threads = threads(Instant::now());
    while let Ok(mut w) = rx.recv() {
        // A slow /metrics must not make samples pile up: sample for the latest window.
        while let Ok(next) = rx.try_recv() {
            progress.add(&w, log);
            w = next;
        }
        let now = cpu_times();
        let steal = match (cpu, now) {
            (Some((s0, t0)), Some((s1, t1))) if t1 > t0 => {
                Some(s1.saturating_sub(s0) as f64 / (t1 - t0) as f64)
            }
            _ => None,
        };
        cpu = now;
        let now_threads = threads(Instant::now());
        let cores = cpu_shares(&last_threads, &now_threads);
        last_threads = now_threads;
        let mut smp = Sample {
            window: w.index,
            rss_bytes: pid.and_then(rss_bytes),
            steal,
            cpu: Some(cores),
            ..Sample::default()
        };
        if let Some(addr) = metrics {
            match get_text(addr, "/metrics") {
                Ok(text) => {
                    smp.payments_in_memory = metric_total(&text, "corepay_payments_in_memory");
                    smp.store_lag_records = metric_total(&text, "corepay_store_lag_records");
                    smp.store_shed_total = metric_total(&text, "corepay_store_shed_total");
                    smp.store_cold_reads_total =
                        metric_total(&text, "corepay_store_cold_reads_total");
                }
                Err(e) => {
                    metric_errors += 1;
                    if metric_errors == 1 && log {
                        eprintln!("soak: /metrics not sampled: {e}");
                    }
                }
            }
        }
        // A window of a new 10 s line flushes the previous line first: its sample belongs to
        // the new one.
        progress.add(&w, log);
        progress.sampled(&smp);
        out.push(smp);
    }
    progress.flush(log);
    out
}

/// The live log: one line per 10 s of windows, with the latest sample.
#[derive(Default)]
struct Progress {
    bucket: Option<u64>,
    answered: u64,
    seconds: f64,
    max_ms: f64,
    p99_ms: f64,
    cold_p99_ms: f64,
    last: Option<Window>,
    rss_bytes: Option<u64>,
    payments_in_memory: Option<u64>,
    store_lag_records: Option<u64>,
    /// Highest steal share sampled in this line's windows.
    steal_max: Option<f64>,
}

impl Progress {
    fn sampled(&mut self, smp: &Sample) {
        if let Some(st) = smp.steal {
            self.steal_max = Some(self.steal_max.map_or(st, |m: f64| m.max(st)));
        }
        self.rss_bytes = smp.rss_bytes.or(self.rss_bytes);
        self.payments_in_memory = smp.payments_in_memory.or(self.payments_in_memory);
        self.store_lag_records = smp.store_lag_records.or(self.store_lag_records);
    }

    fn add(&mut self, w: &Window, log: bool) {
        let bucket = (w.start_s / TREND_BUCKET_S + 1e-9).floor() as u64;
        if self.bucket != Some(bucket) {
            self.flush(log);
            self.bucket = Some(bucket);
        }
        self.answered += w.answered;
        self.seconds += w.duration_s;
        self.max_ms = self.max_ms.max(w.max_ms);
        self.p99_ms = self.p99_ms.max(w.p99_ms);
        self.cold_p99_ms = self.cold_p99_ms.max(w.cold_p99_ms);
        self.last = Some(w.clone());
    }

    fn flush(&mut self, log: bool) {
        if let (Some(w), true) = (self.last.take(), log) {
            let mut line = format!(
                "  {:>7.0} s  {:>10} processed  {:>7.0}/s  p99 {:>8.3} ms  max {:>8.3} ms",
                w.start_s + w.duration_s,
                w.processed,
                self.answered as f64 / self.seconds.max(1e-9),
                self.p99_ms,
                self.max_ms
            );
            if self.cold_p99_ms > 0.0 {
                let _ = write!(line, "  cold p99 {:.3} ms", self.cold_p99_ms);
            }
            if let Some(rss) = self.rss_bytes {
                let _ = write!(line, "  RSS {:.1} MiB", mib(rss));
            }
            if let Some(m) = self.payments_in_memory {
                let _ = write!(line, "  in memory {m}");
            }
            if let Some(lag) = self.store_lag_records {
                let _ = write!(line, "  store lag {lag}");
            }
            if let Some(st) = self.steal_max {
                let _ = write!(line, "  steal max {:.0}%", st * 100.0);
            }
            eprintln!("{line}");
        }
        *self = Progress {
            rss_bytes: self.rss_bytes,
            payments_in_memory: self.payments_in_memory,
            store_lag_records: self.store_lag_records,
            ..Progress::default()
        };
    }
}

/// `60`, `1.5`: seconds without a needless fraction.
fn seconds(s: f64) -> String {
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s:.1}")
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// CPU ticks (user + system) per thread name of process `pid`, summed over threads of the
/// same name.
fn thread_ticks(pid: u32) -> Option<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        if let Some((name, ticks)) = parse_thread_stat(&stat) {
            *out.entry(name).or_default() += ticks;
        }
    }
    Some(out)
}

/// (thread name, utime + stime in clock ticks) from a /proc/<pid>/task/<tid>/stat line
/// (fields 14 and 15; the name may hold spaces and parentheses, hence the last ')').
pub fn parse_thread_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = stat.get(close + 2..)?.split(' ').collect();
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

/// Cores used per thread name between two `(when, ticks)` readings.
fn cpu_shares(
    before: &(Instant, BTreeMap<String, u64>),
    after: &(Instant, BTreeMap<String, u64>),
) -> BTreeMap<String, f64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let seconds = after.0.saturating_duration_since(before.0).as_secs_f64();
    if seconds <= 0.0 {
        return BTreeMap::new();
    }
    after
        .1
        .iter()
        .map(|(name, &t)| {
            let used = t.saturating_sub(before.1.get(name).copied().unwrap_or(t));
            (name.clone(), used as f64 / hz / seconds)
        })
        .collect()
}

/// (steal, total) CPU time of the whole machine, in clock ticks, from /proc/stat.
fn cpu_times() -> Option<(u64, u64)> {
    parse_cpu_steal(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// (steal, total of user..steal) from the aggregate `cpu` line of a /proc/stat text.
pub fn parse_cpu_steal(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line[4..]
        .split_whitespace()
        .take(8)
        .map(|w| w.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    (ticks.len() == 8).then(|| (ticks[7], ticks.iter().sum()))
}

/// The resident set of process `pid`, from /proc (None if it is gone).
fn rss_bytes(pid: u32) -> Option<u64> {
    parse_vm_rss(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// `VmRSS:    123456 kB` of a /proc/<pid>/status text, in bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    let unit = match words.next() {
        Some("kB") | None => 1024,
        Some("mB") | Some("MB") => 1 << 20,
        Some("B") => 1,
        Some(_) => return None,
    };
    Some(n * unit)
}

/// The trend figures of a soak's windows: the max latency of every 10 s, the achieved rate
/// of the last minute of the schedule against the first, and RSS at `rss_mark` payments
/// against the end.
pub fn trends(windows: &[Window], schedule_end_s: f64, rss_mark: u64) -> Trends {
    let mut t = Trends {
        rss_mark,
        ..Trends::default()
    };
    let mut bucket = None;
    for w in windows {
        let b = (w.start_s / TREND_BUCKET_S + 1e-9).floor() as u64;
        if bucket != Some(b) {
            bucket = Some(b);
            t.max_ms_per_10s.push(0.0);
        }
        let last = t.max_ms_per_10s.last_mut().expect("pushed above");
        *last = last.max(w.max_ms);
        if w.max_ms > t.max_ms {
            t.max_ms = w.max_ms;
            t.max_window = w.index;
        }
    }
    t.rate_span_s = RATE_SPAN_S.min(schedule_end_s / 2.0);
    let rate = |from: f64, to: f64| {
        let (n, secs) = windows
            .iter()
            .filter(|w| w.start_s >= from - 1e-9 && w.start_s < to - 1e-9)
            .fold((0u64, 0.0f64), |(n, s), w| {
                (n + w.answered, s + w.duration_s)
            });
        if secs > 0.0 {
            n as f64 / secs
        } else {
            0.0
        }
    };
    t.first_rate = rate(0.0, t.rate_span_s);
    t.last_rate = rate(schedule_end_s - t.rate_span_s, schedule_end_s);
    t.last_to_first_rate = (t.first_rate > 0.0).then(|| t.last_rate / t.first_rate);
    let point = |w: &Window| {
        w.rss_bytes.map(|bytes| RssPoint {
            window: w.index,
            processed: w.processed,
            bytes,
        })
    };
    // The peak of the samples in the RSS_SPAN_S up to window `at`.
    let peak = |at: usize| {
        let end = windows[at].start_s;
        let bytes = windows[..=at]
            .iter()
            .rev()
            .take_while(|w| w.start_s > end - RSS_SPAN_S + 1e-9)
            .filter_map(|w| w.rss_bytes)
            .max()?;
        point(&windows[at]).map(|p| RssPoint { bytes, ..p })
    };
    t.rss_first = windows.iter().find_map(point);
    t.rss_at_mark = windows
        .iter()
        .position(|w| w.processed >= rss_mark && w.rss_bytes.is_some())
        .and_then(peak);
    t.rss_end = windows
        .iter()
        .rposition(|w| w.rss_bytes.is_some())
        .and_then(peak);
    t
}

impl SoakResult {
    /// The scenario's own label (without the target suffix `--start-gateway` adds).
    fn scenario_label(&self) -> String {
        for kind in Kind::ALL {
            if let Some(l) = self.label.strip_suffix(&format!("-{}", kind.slug())) {
                return l.to_string();
            }
        }
        self.label.clone()
    }

    /// The target suffix `--start-gateway` adds, else the label (for legends).
    pub fn short_label(&self) -> String {
        let base = self.scenario_label();
        match self.label.strip_prefix(&format!("{base}-")) {
            Some(target) => target.to_string(),
            None => self.label.clone(),
        }
    }

    pub fn summary(&self) -> String {
        let mut o = format!("soak: {}", self.run.summary());
        let t = &self.trends;
        let last = self.windows.last();
        let _ = write!(
            o,
            "  windows: {} of {} ms; schedule ended at {:.1} s; {} payments processed",
            self.windows.len(),
            self.window_ms,
            self.schedule_end_s,
            last.map_or(0, |w| w.processed),
        );
        if self.run.scenario.protocol == crate::scenario::Protocol::Http {
            let _ = write!(o, ", {} created", last.map_or(0, |w| w.created));
        }
        o.push('\n');
        if self.cold.count > 0 || self.cold_fallbacks > 0 {
            let _ = writeln!(
                o,
                "  cold (approved >= {} payments earlier): {} answered  p50 {:.3}  p99 {:.3}  max {:.3} ms; \
                 {} drawn before any payment was old enough (sent as authorizations)",
                self.cold_after,
                self.cold.count,
                self.cold.p50 / 1e3,
                self.cold.p99 / 1e3,
                self.cold.max / 1e3,
                self.cold_fallbacks
            );
        }
        let _ = writeln!(
            o,
            "  max latency {:.3} ms (window {}); rate last {} s {:.0}/s vs first {} s {:.0}/s: ratio {}",
            t.max_ms,
            t.max_window,
            seconds(t.rate_span_s),
            t.last_rate,
            seconds(t.rate_span_s),
            t.first_rate,
            t.last_to_first_rate
                .map_or("-".to_string(), |r| format!("{r:.3}"))
        );
        let rss = |p: &Option<RssPoint>| match p {
            Some(p) => format!("{:.1} MiB (after {} payments)", mib(p.bytes), p.processed),
            None => "-".into(),
        };
        if t.rss_end.is_some() {
            let _ = writeln!(
                o,
                "  gateway RSS: first {}; at {} payments {}; at the end {} (peaks of the minute up to each)",
                rss(&t.rss_first),
                t.rss_mark,
                match t.rss_at_mark {
                    Some(_) => rss(&t.rss_at_mark),
                    None => "not reached".into(),
                },
                rss(&t.rss_end)
            );
        } else {
            let _ = writeln!(o, "  gateway RSS: not recorded (no --gateway-pid)");
        }
        let last_gauge = |f: &dyn Fn(&Window) -> Option<u64>| self.windows.iter().rev().find_map(f);
        if let Some(m) = last_gauge(&|w| w.payments_in_memory) {
            let lag_max = self
                .windows
                .iter()
                .filter_map(|w| w.store_lag_records)
                .max();
            let _ = writeln!(
                o,
                "  gateway store: {m} payments in memory at the end; store lag max {} records; \
                 store shed {}; cold reads from the store {}",
                lag_max.unwrap_or(0),
                last_gauge(&|w| w.store_shed_total).unwrap_or(0),
                last_gauge(&|w| w.store_cold_reads_total).unwrap_or(0),
            );
        }
        if self.run.check.is_some() {
            let _ = writeln!(
                o,
                "  (soak check: gateway counters and sums only; approved payments are not read back)"
            );
        }
        let _ = writeln!(o, "  max latency per {TREND_BUCKET_S:.0} s (ms):");
        for (row, chunk) in t.max_ms_per_10s.chunks(10).enumerate() {
            let _ = write!(o, "  {:>7.0} s", row as f64 * 10.0 * TREND_BUCKET_S);
            for v in chunk {
                let _ = write!(o, " {v:>8.3}");
            }
            o.push('\n');
        }
        o
    }
}

/// Figures of soaks against several targets, one column each (the maxima side by side).
pub fn side_by_side(soaks: &[SoakResult]) -> String {
    let rows = rows(soaks);
    let mut o = format!("{:<30}", "");
    for s in soaks {
        let _ = write!(o, " {:>22}", s.label.chars().take(22).collect::<String>());
    }
    o.push('\n');
    for (name, values) in rows {
        let _ = write!(o, "{name:<30}");
        for v in values {
            match v {
                Some(v) => {
                    let _ = write!(o, " {v:>22.3}");
                }
                None => {
                    let _ = write!(o, " {:>22}", "-");
                }
            }
        }
        o.push('\n');
    }
    o
}

/// The comparable figures of soaks (`side_by_side`, `compare`).
pub fn rows(soaks: &[SoakResult]) -> Vec<(&'static str, Vec<Option<f64>>)> {
    let col = |f: &dyn Fn(&SoakResult) -> Option<f64>| soaks.iter().map(f).collect::<Vec<_>>();
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    vec![
        ("target rate /s", col(&|s| Some(s.run.target_rate))),
        ("achieved rate /s", col(&|s| Some(s.run.achieved_rate))),
        ("p50 ms", col(&|s| Some(s.run.latency.p50 / 1e3))),
        ("p99 ms", col(&|s| Some(s.run.latency.p99 / 1e3))),
        ("p99.9 ms", col(&|s| Some(s.run.latency.p999 / 1e3))),
        ("max ms", col(&|s| Some(s.run.latency.max / 1e3))),
        (
            "median of 10 s maxima ms",
            col(&|s| median(&s.trends.max_ms_per_10s)),
        ),
        (
            "last/first minute rate",
            col(&|s| s.trends.last_to_first_rate),
        ),
        (
            "cold p99 ms",
            col(&|s| (s.cold.count > 0).then_some(s.cold.p99 / 1e3)),
        ),
        (
            "cold max ms",
            col(&|s| (s.cold.count > 0).then_some(s.cold.max / 1e3)),
        ),
        (
            "RSS at 1 M payments MiB",
            col(&|s| s.trends.rss_at_mark.map(|p| mib(p.bytes))),
        ),
        (
            "RSS at the end MiB",
            col(&|s| s.trends.rss_end.map(|p| mib(p.bytes))),
        ),
        ("errors", col(&|s| Some(s.run.error_count() as f64))),
        ("shed", col(&|s| Some(s.run.shed as f64))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_stat_lines_give_name_and_cpu_ticks() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime ...
        let line = "4243 (corepay-shard-0) S 1 4242 4242 0 -1 4194368 120 0 3 0 1500 250 0 0 \
                    20 0 9 0 100 0 0";
        assert_eq!(
            parse_thread_stat(line),
            Some(("corepay-shard-0".into(), 1750))
        );
        let odd = "7 (a (b) c) R 1 1 1 0 -1 0 0 0 0 0 11 22 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_thread_stat(odd), Some(("a (b) c".into(), 33)));
        assert_eq!(parse_thread_stat("7 (short) R 1 2"), None);
        let t0 = Instant::now();
        let before = (t0, BTreeMap::from([("x".to_string(), 100u64)]));
        let after = (
            t0 + Duration::from_secs(2),
            BTreeMap::from([("x".to_string(), 100 + 2 * 50), ("new".to_string(), 7)]),
        );
        let shares = cpu_shares(&before, &after);
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        assert!((shares["x"] - 50.0 / hz).abs() < 1e-9, "{shares:?}");
        assert_eq!(
            shares["new"], 0.0,
            "a thread first seen now has no interval yet"
        );
    }

    const STATUS: &str = "Name:\tcorepay\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4242\n\
        VmPeak:\t 1234567 kB\nVmSize:\t 1200000 kB\nVmHWM:\t  210000 kB\nVmRSS:\t  204800 kB\n\
        RssAnon:\t  150000 kB\nThreads:\t7\n";

    #[test]
    fn rss_is_read_from_proc_status_in_bytes() {
        assert_eq!(parse_vm_rss(STATUS), Some(204_800 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\nVmRSS:\t0 kB\n"), Some(0));
        // Kernel threads have no VmRSS line; a garbled number is not a figure.
        assert_eq!(parse_vm_rss("Name:\tkthreadd\nState:\tS\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t12x kB\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t12 parsecs\n"), None);
        let stat = "cpu  100 5 50 700 20 0 5 120 0 0\ncpu0 50 0 25 350 10 0 2 60 0 0\n";
        assert_eq!(parse_cpu_steal(stat), Some((120, 1000)));
        assert_eq!(parse_cpu_steal("cpu  1 2 3\n"), None, "too few fields");
        assert_eq!(
            parse_cpu_steal("cpu0 1 2 3 4 5 6 7 8\n"),
            None,
            "no aggregate line"
        );
        assert!(cpu_times().is_some_and(|(st, total)| st <= total && total > 0));
        // Our own process has one.
        let me = rss_bytes(std::process::id()).expect("our own RSS");
        assert!(me > 1 << 20, "{me}");
    }

    fn window(index: u64, answered: u64, max_ms: f64, processed: u64, rss: Option<u64>) -> Window {
        Window {
            index,
            start_s: index as f64,
            duration_s: 1.0,
            processed,
            answered,
            rate: answered as f64,
            max_ms,
            rss_bytes: rss,
            ..Window::default()
        }
    }

    #[test]
    fn trends_take_maxima_per_10_s_rates_per_minute_and_rss_at_the_mark() {
        // 150 s at 1000/s, falling to 900/s for the last minute; a 40 ms spike at 25 s;
        // RSS measured from window 2 on, growing 1 MiB a window; 1000 processed per window.
        let ws: Vec<Window> = (0..150u64)
            .map(|i| {
                let answered = if i >= 90 { 900 } else { 1000 };
                let max = if i == 25 {
                    40.0
                } else {
                    1.0 + i as f64 / 1000.0
                };
                let rss = (i >= 2).then_some((100 + i) << 20);
                window(i, answered, max, (i + 1) * 1000, rss)
            })
            .collect();
        let t = trends(&ws, 150.0, 50_000);
        assert_eq!(t.max_ms_per_10s.len(), 15);
        assert_eq!(t.max_ms_per_10s[2], 40.0);
        assert!((t.max_ms_per_10s[0] - 1.009).abs() < 1e-9);
        assert!((t.max_ms_per_10s[14] - 1.149).abs() < 1e-9);
        assert_eq!((t.max_ms, t.max_window), (40.0, 25));
        assert_eq!(t.rate_span_s, 60.0);
        assert!((t.first_rate - 1000.0).abs() < 1e-9);
        assert!((t.last_rate - 900.0).abs() < 1e-9);
        assert!((t.last_to_first_rate.unwrap() - 0.9).abs() < 1e-9);
        let first = t.rss_first.unwrap();
        assert_eq!((first.window, first.bytes), (2, 102 << 20));
        let mark = t.rss_at_mark.unwrap();
        assert_eq!(
            (mark.window, mark.processed, mark.bytes),
            (49, 50_000, 149 << 20)
        );
        let end = t.rss_end.unwrap();
        assert_eq!((end.window, end.bytes), (149, 249 << 20));
        // A sample that dips (the allocator returned memory that second) does not stand
        // for the minute: the peak of the minute up to the mark does.
        let mut dipped = ws.clone();
        dipped[49].rss_bytes = Some(20 << 20);
        dipped[149].rss_bytes = Some(20 << 20);
        let t = trends(&dipped, 150.0, 50_000);
        let mark = t.rss_at_mark.unwrap();
        assert_eq!((mark.window, mark.bytes), (49, 148 << 20));
        let end = t.rss_end.unwrap();
        assert_eq!((end.window, end.bytes), (149, 248 << 20));
        // Only the last minute (windows 90..=149) counts.
        dipped[89].rss_bytes = Some(999 << 20);
        assert_eq!(
            trends(&dipped, 150.0, 50_000).rss_end.unwrap().bytes,
            248 << 20
        );
        dipped[90].rss_bytes = Some(999 << 20);
        assert_eq!(
            trends(&dipped, 150.0, 50_000).rss_end.unwrap().bytes,
            999 << 20
        );
    }

    #[test]
    fn short_soaks_compare_halves_and_drain_windows_do_not_count_as_rate() {
        // 20 s scheduled, then 2 drain windows with a few late answers.
        let mut ws: Vec<Window> = (0..22u64)
            .map(|i| window(i, if i < 10 { 100 } else { 50 }, 2.0, i * 100, None))
            .collect();
        ws[20].answered = 3;
        ws[21].answered = 0;
        ws[21].duration_s = 0.25;
        let t = trends(&ws, 20.0, RSS_MARK);
        assert_eq!(t.rate_span_s, 10.0);
        assert!((t.first_rate - 100.0).abs() < 1e-9);
        assert!((t.last_rate - 50.0).abs() < 1e-9);
        assert_eq!(t.max_ms_per_10s, [2.0, 2.0, 2.0]);
        assert_eq!((t.rss_first, t.rss_at_mark, t.rss_end), (None, None, None));
        // Nothing answered at first: no ratio.
        let idle: Vec<Window> = (0..4).map(|i| window(i, 0, 0.0, 0, None)).collect();
        assert_eq!(trends(&idle, 4.0, RSS_MARK).last_to_first_rate, None);
    }
}
