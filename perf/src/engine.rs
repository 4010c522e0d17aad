//! The open-loop load engine: one glommio executor (optionally pinned), several
//! connections, each with a window of requests in flight.
//!
//! Request k is *scheduled* at `t0 + k / rate`, whatever the server is doing, and its
//! latency counts from that scheduled time to its answer. A server that stalls therefore
//! shows every request it delayed, including those the harness could not even send
//! because every window was full (coordinated omission corrected, as wrk2 does). Requests
//! scheduled during the warm-up are sent and accounted for, but not measured.
//!
//! Each connection has a writer task (takes requests from the shared queue while its
//! window has room, encodes them, writes them in one call) and a reader task (matches
//! answers: in order for HTTP, by STAN for ISO 8583). A lost connection's requests in
//! flight are counted as `connection_lost`, and the connection is re-opened.
//!
//! Closed loop (`Scenario::closed_loop`, wrk's model) is the exception: the queue is kept
//! full, each connection sends as soon as a window slot frees, and latency counts from the
//! send. It measures the most a server answers with a fixed number in flight, nothing else.
//!
//! For soaks (`run_with` and `EngineOpts::windows`), every answer is also aggregated into
//! windows of wall time (`window`), and each closed window is sent to a sampler thread,
//! which reads the gateway's RSS and metrics off this executor.

use crate::scenario::{Protocol, Scenario};
use crate::window::{Totals, Window, WindowRecorder};
use crate::workload::{amount_text, Generator, Op, OpKind, Original, EXP_MONTH, EXP_YEAR, OPS};
use corepay::iso8583::codec::{decode, encode, BitmapEncoding, Message};
use corepay::iso8583::framing::{write_frame, FrameReader, Framing, DEFAULT_MAX_FRAME};
use event_listener::Event;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

/// Slowest latency recorded exactly: 60 s, in nanoseconds.
pub const LATENCY_MAX_NS: u64 = 60_000_000_000;
/// Time allowed to open each connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before re-opening a lost connection.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// The acquirer id every ISO 8583 message carries.
const ACQUIRER: &[u8] = b"4711";

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3).expect("valid bounds")
}

/// How one answer (or its absence) is classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Ok,
    Declined,
    Shed,
    Error,
}

/// Everything a run observed. Counters named `*_all` include the warm-up.
pub struct RunStats {
    /// Latency of measured requests from their scheduled send time (ns), all operations.
    pub latency: Histogram<u64>,
    pub per_op: Vec<Histogram<u64>>,
    /// The same latency split by outcome: admitted (approved or declined: the gateway did the
    /// work) and shed (503 / 429 / DE39 91: answered at once). Under overload the two tell
    /// different stories; mixed, neither shows.
    pub admitted: Histogram<u64>,
    pub shed_latency: Histogram<u64>,
    /// How late the dispatcher handed each request to a connection (ns): if this grows,
    /// the harness, not the server, is the limit.
    pub dispatch_lag: Histogram<u64>,
    pub scheduled_all: u64,
    pub scheduled: u64,
    pub ok: u64,
    pub declined: u64,
    pub shed: u64,
    pub errors: BTreeMap<String, u64>,
    pub declines: BTreeMap<String, u64>,
    /// Per operation: [ok, declined, shed, error] over measured requests.
    pub per_op_counts: Vec<[u64; 4]>,
    /// Answers of every class, warm-up included.
    pub answered_all: u64,
    pub ok_all: u64,
    /// Never sent / sent but never answered when the run ended (warm-up included).
    pub unsent_all: u64,
    pub unanswered_all: u64,
    /// Lost with their connection (warm-up included).
    pub lost_all: u64,
    pub connects: u64,
    pub connect_failures: u64,
    /// Payment creations answered 2xx or 402 (HTTP; each stores one payment).
    pub payments_created_all: u64,
    /// HTTP 2xx answers (for the cross-check against the gateway's own counter).
    pub http_2xx_all: u64,
    /// Id and merchant of every approved HTTP payment creation, for the closing check.
    pub approved_ids: Vec<(String, usize)>,
    /// Measured window: first measured schedule to last measured schedule.
    pub measured_s: f64,
    /// Measured answers per second of wall time over the measured window.
    pub achieved_rate: f64,
    /// With `EngineOpts::windows`: every window, and when the schedule ended (s after the
    /// measured start; later windows only drain).
    pub windows: Vec<Window>,
    pub schedule_end_s: f64,
    /// Cold operations drawn when no payment was old enough (sent as authorizations;
    /// warm-up included).
    pub cold_fallbacks: u64,
}

/// What a run keeps besides its totals.
pub struct EngineOpts {
    /// Keep the id of every approved HTTP payment (for the closing check's read-back).
    /// Off for soaks: millions of ids would be the harness's own memory leak.
    pub keep_approved_ids: bool,
    pub windows: Option<WindowOpts>,
}

/// Per-window aggregation: each closed window goes to `tick` (when several close at once,
/// the last of them).
pub struct WindowOpts {
    pub width: Duration,
    pub tick: Sender<Window>,
}

impl Default for EngineOpts {
    fn default() -> EngineOpts {
        EngineOpts {
            keep_approved_ids: true,
            windows: None,
        }
    }
}

impl RunStats {
    pub(crate) fn new() -> RunStats {
        RunStats {
            latency: histogram(),
            per_op: OPS.iter().map(|_| histogram()).collect(),
            admitted: histogram(),
            shed_latency: histogram(),
            dispatch_lag: histogram(),
            scheduled_all: 0,
            scheduled: 0,
            ok: 0,
            declined: 0,
            shed: 0,
            errors: BTreeMap::new(),
            declines: BTreeMap::new(),
            per_op_counts: vec![[0; 4]; OPS.len()],
            answered_all: 0,
            ok_all: 0,
            unsent_all: 0,
            unanswered_all: 0,
            lost_all: 0,
            connects: 0,
            connect_failures: 0,
            payments_created_all: 0,
            http_2xx_all: 0,
            approved_ids: Vec::new(),
            measured_s: 0.0,
            achieved_rate: 0.0,
            windows: Vec::new(),
            schedule_end_s: 0.0,
            cold_fallbacks: 0,
        }
    }

    /// Every scheduled request ends in exactly one of these.
    pub fn accounted_all(&self) -> u64 {
        self.answered_all + self.unsent_all + self.unanswered_all + self.lost_all
    }
}

struct Pending {
    scheduled: Instant,
    measured: bool,
    op: Op,
}

struct InFlight {
    p: Pending,
    /// ISO: this message's STAN and DE7 (to name it as an original later).
    stan: [u8; 6],
    transmitted: [u8; 10],
}

struct Shared {
    queue: VecDeque<Pending>,
    /// Closed loop: latency counts from the send, and the dispatcher refills the queue.
    closed_loop: bool,
    refill: Rc<Event>,
    gen: Generator,
    stats: RunStats,
    dispatch_done: bool,
    /// Set when the run is over: connections stop and stay closed.
    stopped: bool,
    stan: u32,
    clock: IsoClock,
    /// Last measured answer.
    last_measured_answer: Option<Instant>,
    in_flight: u64,
    keep_approved_ids: bool,
    /// Soaks: the windows (set once the measured start is known).
    windows: Option<Windows>,
}

struct Windows {
    /// The first measured scheduled send: window 0 starts here.
    start: Instant,
    rec: WindowRecorder,
    tick: Sender<Window>,
}

impl Shared {
    fn finished(&self) -> bool {
        self.stopped || (self.dispatch_done && self.queue.is_empty())
    }

    fn next_stan(&mut self) -> [u8; 6] {
        self.stan = self.stan % 999_999 + 1;
        let mut out = [0u8; 6];
        out.copy_from_slice(format!("{:06}", self.stan).as_bytes());
        out
    }

    /// The measured span, the achieved rate over it, and the generator's fallbacks.
    fn close_measurement(&mut self, start: Instant, end: Instant) {
        let s = &mut self.stats;
        s.measured_s = end.saturating_duration_since(start).as_secs_f64();
        let answers = s.ok + s.declined + s.shed + s.errors.values().sum::<u64>();
        s.achieved_rate = answers as f64 / s.measured_s.max(1e-9);
        s.cold_fallbacks = self.gen.cold_fallbacks();
    }

    /// Closes the windows that ended by `now` (soaks only); call before counting anything
    /// that happened at `now`.
    fn roll(&mut self, now: Instant) {
        let Some(w) = self.windows.as_mut() else {
            return;
        };
        let at = now.saturating_duration_since(w.start).as_nanos() as u64;
        if at < w.rec.end_ns() {
            return;
        }
        let totals = Totals {
            processed: self.stats.answered_all,
            created: self.stats.payments_created_all,
            backlog: self.queue.len() as u64 + self.in_flight,
        };
        if w.rec.roll(at, totals).is_some() {
            if let Some(last) = w.rec.closed().last() {
                // The sampler may have stopped (it failed); the windows are still complete.
                let _ = w.tick.send(last.clone());
            }
        }
    }

    fn record(&mut self, p: &Pending, class: Class, detail: Option<String>, now: Instant) {
        self.roll(now);
        let s = &mut self.stats;
        s.answered_all += 1;
        if class == Class::Ok {
            s.ok_all += 1;
        }
        if !p.measured {
            return;
        }
        self.last_measured_answer = Some(now);
        let ns = now.saturating_duration_since(p.scheduled).as_nanos() as u64;
        let ns = ns.clamp(1, LATENCY_MAX_NS);
        if let Some(w) = self.windows.as_mut() {
            w.rec.record(ns, class, p.op.kind.is_cold());
        }
        s.latency.saturating_record(ns);
        let op = p.op.kind as usize;
        s.per_op[op].saturating_record(ns);
        let slot = match class {
            Class::Ok => {
                s.ok += 1;
                s.admitted.saturating_record(ns);
                0
            }
            Class::Declined => {
                s.declined += 1;
                s.admitted.saturating_record(ns);
                *s.declines.entry(detail.unwrap_or_default()).or_default() += 1;
                1
            }
            Class::Shed => {
                s.shed += 1;
                s.shed_latency.saturating_record(ns);
                2
            }
            Class::Error => {
                *s.errors.entry(detail.unwrap_or_default()).or_default() += 1;
                3
            }
        };
        s.per_op_counts[op][slot] += 1;
    }
}

/// DE7 / DE12 / DE13 from the wall clock (UTC), recomputed once per second.
struct IsoClock {
    second: u64,
    de7: [u8; 10],
}

impl IsoClock {
    fn now(&mut self) -> [u8; 10] {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if secs != self.second {
            self.second = secs;
            let (_, month, day) = civil_from_days((secs / 86_400) as i64);
            let t = secs % 86_400;
            let text = format!(
                "{month:02}{day:02}{:02}{:02}{:02}",
                t / 3600,
                t / 60 % 60,
                t % 60
            );
            self.de7.copy_from_slice(text.as_bytes());
        }
        self.de7
    }
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + (m <= 2) as i64, m, d)
}

struct Conn {
    http: VecDeque<InFlight>,
    iso: HashMap<[u8; 6], InFlight>,
    /// Wakes this connection's writer when its window has room again.
    slot: Event,
    terminal: [u8; 8],
}

impl Conn {
    fn count(&self) -> usize {
        self.http.len() + self.iso.len()
    }
}

/// Runs `s` against its target on a new executor thread; blocks until the run ends.
pub fn run(s: &Scenario, gen: Generator) -> Result<RunStats, String> {
    run_with(s, gen, EngineOpts::default())
}

/// `run`, keeping what `opts` asks for.
pub fn run_with(s: &Scenario, gen: Generator, opts: EngineOpts) -> Result<RunStats, String> {
    let placement = match s.core {
        Some(c) => glommio::Placement::Fixed(c),
        None => glommio::Placement::Unbound,
    };
    let s = s.clone();
    let handle = glommio::LocalExecutorBuilder::new(placement)
        .name("corepay-perf")
        .spawn(move || async move {
            if let Some(p) = s.load_rt_priority {
                set_rt_priority(p)?;
            }
            drive(s, gen, opts).await
        })
        .map_err(|e| format!("cannot start the load executor: {e}"))?;
    handle
        .join()
        .map_err(|e| format!("load executor failed: {e}"))?
}

/// SCHED_FIFO at `priority` for the calling thread only (the load executor), never for a
/// gateway the harness starts.
fn set_rt_priority(priority: i32) -> Result<(), String> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: a plain syscall on the calling thread (pid 0) with a valid parameter.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        return Err(format!(
            "--load-rt-priority {priority}: SCHED_FIFO refused: {} (needs root or CAP_SYS_NICE)",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

async fn drive(s: Scenario, gen: Generator, opts: EngineOpts) -> Result<RunStats, String> {
    let refill = Rc::new(Event::new());
    let shared = Rc::new(RefCell::new(Shared {
        queue: VecDeque::new(),
        closed_loop: s.closed_loop,
        refill: refill.clone(),
        gen,
        stats: RunStats::new(),
        dispatch_done: false,
        stopped: false,
        stan: (std::process::id() % 500_000) + 1,
        clock: IsoClock {
            second: 0,
            de7: [b'0'; 10],
        },
        last_measured_answer: None,
        in_flight: 0,
        keep_approved_ids: opts.keep_approved_ids,
        windows: None,
    }));
    let work = Rc::new(Event::new());
    let connected = Rc::new(RefCell::new(0usize));
    let run_tag = std::process::id() % 10_000;
    for c in 0..s.connections {
        let mut terminal = [b' '; 8];
        terminal.copy_from_slice(format!("P{run_tag:04}{c:03}").as_bytes());
        let conn = Rc::new(RefCell::new(Conn {
            http: VecDeque::new(),
            iso: HashMap::new(),
            slot: Event::new(),
            terminal,
        }));
        glommio::spawn_local(connection(
            s.clone(),
            shared.clone(),
            conn,
            work.clone(),
            connected.clone(),
        ))
        .detach();
    }
    // Wait for the connections (or give up on those that cannot connect).
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    while *connected.borrow() < s.connections && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    if *connected.borrow() == 0 {
        shared.borrow_mut().stopped = true;
        return Err(format!("no connection to {} could be opened", s.addr));
    }

    if s.closed_loop {
        if opts.windows.is_some() {
            shared.borrow_mut().stopped = true;
            return Err("closed_loop: a soak is open loop (it measures latency at a rate)".into());
        }
        return closed_loop(&s, &shared, &work, &refill).await;
    }
    let interval_ns = 1e9 / s.rate;
    let total = (s.rate * s.duration_s).round().max(1.0) as u64;
    let warm = (s.rate * s.warmup_s).round() as u64;
    let total = total + warm;
    let t0 = Instant::now() + Duration::from_millis(10);
    let at = |k: u64| t0 + Duration::from_nanos((k as f64 * interval_ns) as u64);
    if let Some(w) = opts.windows {
        shared.borrow_mut().windows = Some(Windows {
            start: at(warm),
            rec: WindowRecorder::new(w.width),
            tick: w.tick,
        });
    }
    // When the open window ends (the dispatcher wakes for it, so windows close on time
    // even when nothing is answered).
    let window_end = |sh: &Shared| {
        sh.windows
            .as_ref()
            .map(|w| w.start + Duration::from_nanos(w.rec.end_ns()))
    };
    let mut k = 0u64;
    while k < total {
        let now = Instant::now();
        shared.borrow_mut().roll(now);
        let due = if now < t0 {
            0
        } else {
            ((now - t0).as_nanos() as f64 / interval_ns).floor() as u64 + 1
        }
        .min(total);
        if due > k {
            let mut sh = shared.borrow_mut();
            for i in k..due {
                let scheduled = at(i);
                let op = sh.gen.next_op();
                let measured = i >= warm;
                sh.stats.scheduled_all += 1;
                if measured {
                    sh.stats.scheduled += 1;
                    let lag = now.saturating_duration_since(scheduled).as_nanos() as u64;
                    sh.stats.dispatch_lag.saturating_record(lag.max(1));
                    if let Some(w) = sh.windows.as_mut() {
                        w.rec.dispatch_lag(lag);
                    }
                }
                sh.queue.push_back(Pending {
                    scheduled,
                    measured,
                    op,
                });
            }
            drop(sh);
            work.notify((due - k) as usize);
            k = due;
        } else {
            let next = match window_end(&shared.borrow()) {
                Some(end) => at(k).min(end),
                None => at(k),
            };
            glommio::timer::sleep(next.saturating_duration_since(now)).await;
        }
    }
    shared.borrow_mut().dispatch_done = true;
    work.notify(usize::MAX);
    let end_of_schedule = at(total);
    let drain_deadline = end_of_schedule + Duration::from_secs_f64(s.drain_s);
    loop {
        let done = {
            let sh = shared.borrow();
            sh.queue.is_empty() && sh.in_flight == 0
        };
        if done || Instant::now() >= drain_deadline {
            break;
        }
        shared.borrow_mut().roll(Instant::now());
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    let mut sh = shared.borrow_mut();
    let end = Instant::now();
    sh.roll(end);
    sh.stopped = true;
    let backlog_at_end = sh.queue.len() as u64 + sh.in_flight;
    let unsent = sh.queue.len() as u64;
    sh.queue.clear();
    sh.stats.unsent_all += unsent;
    sh.stats.unanswered_all += sh.in_flight;
    let measured_start = at(warm);
    let measured_end = at(total).max(sh.last_measured_answer.unwrap_or(measured_start));
    sh.close_measurement(measured_start, measured_end);
    if let Some(w) = sh.windows.take() {
        // What is still unsent or unanswered ends here: the last window's backlog.
        let totals = Totals {
            processed: sh.stats.answered_all,
            created: sh.stats.payments_created_all,
            backlog: backlog_at_end,
        };
        let at = end.saturating_duration_since(w.start).as_nanos() as u64;
        let windows = w.rec.finish(at, totals);
        if let Some(last) = windows.last() {
            let _ = w.tick.send(last.clone());
        }
        sh.stats.schedule_end_s = end_of_schedule
            .saturating_duration_since(w.start)
            .as_secs_f64();
        sh.stats.windows = windows;
        // `w.tick` drops here: the sampler ends after the last window.
    }
    let stats = std::mem::replace(&mut sh.stats, RunStats::new());
    drop(sh);
    work.notify(usize::MAX);
    Ok(stats)
}

/// The closed loop: keeps `connections × window` requests queued for `warmup_s +
/// duration_s`, then drains for at most `drain_s`. The writers stamp each request when they
/// take it (its send), so no latency here includes time spent waiting to be sent.
async fn closed_loop(
    s: &Scenario,
    shared: &Rc<RefCell<Shared>>,
    work: &Event,
    refill: &Event,
) -> Result<RunStats, String> {
    let capacity = s.connections * s.window;
    let start = Instant::now();
    let measured_start = start + Duration::from_secs_f64(s.warmup_s);
    let end = measured_start + Duration::from_secs_f64(s.duration_s);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let listener = refill.listen();
        let added = {
            let mut sh = shared.borrow_mut();
            let mut added = 0;
            while sh.queue.len() < capacity {
                let op = sh.gen.next_op();
                let measured = now >= measured_start;
                sh.stats.scheduled_all += 1;
                if measured {
                    sh.stats.scheduled += 1;
                }
                sh.queue.push_back(Pending {
                    scheduled: now,
                    measured,
                    op,
                });
                added += 1;
            }
            added
        };
        if added > 0 {
            work.notify(added);
        }
        // Until a writer has taken half the queue, or the run's end.
        futures_lite::future::or(listener, async {
            glommio::timer::sleep(end.saturating_duration_since(Instant::now())).await;
        })
        .await;
    }
    // Nothing more is sent: what is queued was never sent.
    let drain_deadline = end + Duration::from_secs_f64(s.drain_s);
    {
        let mut sh = shared.borrow_mut();
        let unsent = sh.queue.len() as u64;
        let measured_unsent = sh.queue.iter().filter(|p| p.measured).count() as u64;
        sh.queue.clear();
        sh.stats.unsent_all += unsent;
        sh.stats.scheduled -= measured_unsent;
        sh.dispatch_done = true;
    }
    work.notify(usize::MAX);
    while shared.borrow().in_flight > 0 && Instant::now() < drain_deadline {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    let mut sh = shared.borrow_mut();
    sh.stopped = true;
    sh.stats.unanswered_all += sh.in_flight;
    let measured_end = end.max(sh.last_measured_answer.unwrap_or(end));
    sh.close_measurement(measured_start, measured_end);
    let stats = std::mem::replace(&mut sh.stats, RunStats::new());
    drop(sh);
    work.notify(usize::MAX);
    Ok(stats)
}

/// One connection for the whole run: (re)connects, runs a writer and a reader, and
/// accounts for the requests a failure takes with it.
async fn connection(
    s: Scenario,
    shared: Rc<RefCell<Shared>>,
    conn: Rc<RefCell<Conn>>,
    work: Rc<Event>,
    connected: Rc<RefCell<usize>>,
) {
    let mut first = true;
    let tls = match &s.tls_ca_file {
        Some(ca) => match crate::tls::client_config(ca, s.protocol) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("corepay-perf: {e}");
                shared.borrow_mut().stats.connect_failures += 1;
                return;
            }
        },
        None => None,
    };
    while !shared.borrow().stopped {
        let stream = futures_lite::future::or(
            async { glommio::net::TcpStream::connect(s.addr).await.ok() },
            async {
                glommio::timer::sleep(CONNECT_TIMEOUT).await;
                None
            },
        )
        .await;
        let Some(stream) = stream else {
            shared.borrow_mut().stats.connect_failures += 1;
            glommio::timer::sleep(RECONNECT_PAUSE).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let result = match &tls {
            None => {
                count_connect(&shared, &connected, &mut first);
                exchange(&s, &shared, &conn, &work, stream).await
            }
            Some(config) => {
                let connector = futures_rustls::TlsConnector::from(config.clone());
                let name = crate::tls::server_name(&s.tls_server_name);
                let handshake = futures_lite::future::or(
                    async { connector.connect(name, stream).await.ok() },
                    async {
                        glommio::timer::sleep(CONNECT_TIMEOUT).await;
                        None
                    },
                );
                match handshake.await {
                    Some(stream) => {
                        count_connect(&shared, &connected, &mut first);
                        exchange(&s, &shared, &conn, &work, stream).await
                    }
                    None => {
                        shared.borrow_mut().stats.connect_failures += 1;
                        glommio::timer::sleep(RECONNECT_PAUSE).await;
                        continue;
                    }
                }
            }
        };
        // Whatever was in flight on this connection is lost with it.
        let lost: Vec<InFlight> = {
            let mut c = conn.borrow_mut();
            let mut lost: Vec<InFlight> = c.http.drain(..).collect();
            lost.extend(c.iso.drain().map(|(_, f)| f));
            lost
        };
        let finished = {
            let mut sh = shared.borrow_mut();
            let now = Instant::now();
            sh.roll(now);
            for f in &lost {
                sh.in_flight -= 1;
                if sh.stopped {
                    sh.stats.unanswered_all += 1;
                    continue;
                }
                sh.stats.lost_all += 1;
                if f.p.measured {
                    sh.last_measured_answer = Some(now);
                    if let Some(w) = sh.windows.as_mut() {
                        w.rec.lost();
                    }
                    *sh.stats.errors.entry("connection_lost".into()).or_default() += 1;
                    sh.stats.per_op_counts[f.p.op.kind as usize][3] += 1;
                }
            }
            sh.finished()
        };
        if result.is_ok() || finished {
            return;
        }
        glommio::timer::sleep(RECONNECT_PAUSE).await;
    }
}

fn count_connect(shared: &Rc<RefCell<Shared>>, connected: &Rc<RefCell<usize>>, first: &mut bool) {
    shared.borrow_mut().stats.connects += 1;
    if *first {
        *connected.borrow_mut() += 1;
        *first = false;
    }
}

/// Runs a writer and a reader on one connected stream (plain or TLS) until either ends.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &Scenario,
    shared: &Rc<RefCell<Shared>>,
    conn: &Rc<RefCell<Conn>>,
    work: &Event,
    stream: S,
) -> std::io::Result<()> {
    let (rd, wr) = futures_lite::io::split(stream);
    let reader = reader(s, shared, conn, rd);
    let writer = async {
        let r = writer(s, shared, conn, work, wr).await;
        if r.is_ok() {
            // Everything is sent: only the reader decides when this connection ends.
            futures_lite::future::pending::<()>().await;
        }
        r
    };
    futures_lite::future::or(reader, writer).await
}

async fn writer<W: AsyncWrite + Unpin>(
    s: &Scenario,
    shared: &Rc<RefCell<Shared>>,
    conn: &Rc<RefCell<Conn>>,
    work: &Event,
    mut wr: W,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut scratch = Vec::with_capacity(512);
    loop {
        let listener;
        {
            let mut sh = shared.borrow_mut();
            let mut c = conn.borrow_mut();
            while c.count() < s.window {
                let Some(mut p) = sh.queue.pop_front() else {
                    break;
                };
                if sh.closed_loop {
                    p.scheduled = Instant::now();
                    if sh.queue.len() < s.connections * s.window / 2 {
                        sh.refill.notify(1);
                    }
                }
                let f = encode_request(s, &mut sh, &c, p, &mut buf, &mut scratch);
                sh.in_flight += 1;
                match s.protocol {
                    Protocol::Http => c.http.push_back(f),
                    Protocol::Iso8583 => {
                        c.iso.insert(f.stan, f);
                    }
                }
            }
            if !buf.is_empty() {
                listener = None;
            } else if sh.stopped || sh.finished() {
                return Ok(());
            } else if c.count() >= s.window {
                listener = Some(c.slot.listen());
            } else {
                listener = Some(work.listen());
            }
        }
        match listener {
            None => {
                wr.write_all(&buf).await?;
                // Over TLS, what the session still buffers goes out now (a no-op on TCP).
                wr.flush().await?;
                buf.clear();
            }
            Some(l) => {
                // Re-check after registering, so a notification in between is not missed.
                let ready = {
                    let sh = shared.borrow();
                    let c = conn.borrow();
                    sh.finished() || (!sh.queue.is_empty() && c.count() < s.window)
                };
                if !ready {
                    l.await;
                }
            }
        }
    }
}

async fn reader<R: AsyncRead + Unpin>(
    s: &Scenario,
    shared: &Rc<RefCell<Shared>>,
    conn: &Rc<RefCell<Conn>>,
    mut rd: R,
) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(128 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let frames = FrameReader::new(Framing::Binary2, DEFAULT_MAX_FRAME);
    loop {
        let mut start = 0;
        loop {
            let used = match s.protocol {
                Protocol::Http => http_answer(shared, conn, &buf[start..])?,
                Protocol::Iso8583 => iso_answer(shared, conn, &frames, &buf[start..])?,
            };
            if used == 0 {
                break;
            }
            start += used;
        }
        buf.drain(..start);
        {
            let sh = shared.borrow();
            if sh.stopped || (sh.finished() && conn.borrow().count() == 0) {
                return Ok(());
            }
        }
        let n = rd.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn protocol_error(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

/// Handles one complete HTTP answer at the front of `buf`; returns the bytes it used
/// (0: incomplete).
fn http_answer(
    shared: &Rc<RefCell<Shared>>,
    conn: &Rc<RefCell<Conn>>,
    buf: &[u8],
) -> std::io::Result<usize> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(0),
        Err(e) => return Err(protocol_error(format!("bad HTTP answer: {e}"))),
    };
    let len = crate::admin::content_length(resp.headers);
    if buf.len() < head + len {
        return Ok(0);
    }
    let status = resp.code.unwrap_or(0);
    let body = &buf[head..head + len];
    let now = Instant::now();
    let f = conn
        .borrow_mut()
        .http
        .pop_front()
        .ok_or_else(|| protocol_error(format!("an HTTP {status} answer nobody asked for")))?;
    conn.borrow().slot.notify(1);
    let mut sh = shared.borrow_mut();
    sh.in_flight -= 1;
    let kind = f.p.op.kind;
    let creates = matches!(kind, OpKind::Authorize | OpKind::Sale);
    if (200..300).contains(&status) {
        sh.stats.http_2xx_all += 1;
    }
    if creates && (status == 201 || status == 200 || status == 402) {
        sh.stats.payments_created_all += 1;
    }
    let (class, detail) = match status {
        200..=299 => {
            let id = match (&f.p.op.original, kind) {
                (Some(Original::Http(id)), _) => Some(id.clone()),
                (_, OpKind::Authorize | OpKind::Sale) => json_str(body, "id").map(str::to_string),
                _ => None,
            };
            if let Some(id) = id {
                if creates && sh.keep_approved_ids {
                    sh.stats.approved_ids.push((id.clone(), f.p.op.merchant));
                }
                sh.gen.approved(kind, f.p.op.merchant, Original::Http(id));
            }
            (Class::Ok, None)
        }
        402 => (
            Class::Declined,
            Some(
                json_str(body, "decline_code")
                    .unwrap_or("unknown")
                    .to_string(),
            ),
        ),
        429 | 503 => (Class::Shed, None),
        _ => (
            Class::Error,
            Some(format!(
                "http_{status}_{}",
                json_str(body, "code").unwrap_or("no_code")
            )),
        ),
    };
    sh.record(&f.p, class, detail, now);
    Ok(head + len)
}

/// The string value of `"key":"..."` in a flat scan of a JSON body (the harness reads
/// only ids and codes, and must stay cheap at tens of thousands of answers a second).
fn json_str<'a>(body: &'a [u8], key: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(body).ok()?;
    let pat = format!("\"{key}\":");
    let at = text.find(&pat)? + pat.len();
    let rest = text[at..].trim_start().strip_prefix('"')?;
    rest.split('"').next()
}

fn iso_answer(
    shared: &Rc<RefCell<Shared>>,
    conn: &Rc<RefCell<Conn>>,
    frames: &FrameReader,
    buf: &[u8],
) -> std::io::Result<usize> {
    let (header, len) = match frames.next_frame(buf) {
        Ok(Some(f)) => f,
        Ok(None) => return Ok(0),
        Err(e) => return Err(protocol_error(format!("bad ISO 8583 frame: {e}"))),
    };
    if len == 0 {
        return Ok(header); // keep-alive
    }
    let now = Instant::now();
    let m = decode(&buf[header..header + len], BitmapEncoding::Binary)
        .map_err(|e| protocol_error(format!("ISO 8583 answer does not decode: {e}")))?;
    let stan: [u8; 6] = m
        .get(11)
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| protocol_error("ISO 8583 answer without DE11".into()))?;
    let f = conn
        .borrow_mut()
        .iso
        .remove(&stan)
        .ok_or_else(|| protocol_error(format!("answer to unknown STAN {stan:?}")))?;
    conn.borrow().slot.notify(1);
    let rc: [u8; 2] = m.get(39).and_then(|v| v.try_into().ok()).unwrap_or(*b"??");
    let mut sh = shared.borrow_mut();
    sh.in_flight -= 1;
    let op = &f.p.op;
    let (class, detail) = match &rc {
        b"00" => {
            let terminal = conn.borrow().terminal;
            let original = match (op.kind, &op.original) {
                (OpKind::Authorize | OpKind::Sale, _) => Some(Original::Iso {
                    mti: if op.kind == OpKind::Authorize {
                        *b"0100"
                    } else {
                        *b"0200"
                    },
                    terminal,
                    stan: f.stan,
                    transmitted: f.transmitted,
                    card: op.card,
                    amount: op.amount,
                }),
                (OpKind::Capture, Some(o)) => Some(o.clone()),
                _ => None,
            };
            if let Some(o) = original {
                sh.gen.approved(op.kind, op.merchant, o);
            }
            (Class::Ok, None)
        }
        b"91" => (Class::Shed, None),
        b"30" | b"12" | b"25" | b"58" | b"94" | b"96" | b"??" => (
            Class::Error,
            Some(format!("iso_{}", String::from_utf8_lossy(&rc))),
        ),
        _ => (
            Class::Declined,
            Some(format!("iso_{}", String::from_utf8_lossy(&rc))),
        ),
    };
    sh.record(&f.p, class, detail, now);
    Ok(header + len)
}

/// Appends the wire form of `p` to `out`.
fn encode_request(
    s: &Scenario,
    sh: &mut Shared,
    c: &Conn,
    p: Pending,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> InFlight {
    match s.protocol {
        Protocol::Http => {
            encode_http(sh, &p.op, out);
            InFlight {
                p,
                stan: [b'0'; 6],
                transmitted: [b'0'; 10],
            }
        }
        Protocol::Iso8583 => {
            let stan = sh.next_stan();
            let transmitted = sh.clock.now();
            let m = iso_message(sh, c, &p.op, stan, transmitted);
            scratch.clear();
            encode(&m, BitmapEncoding::Binary, scratch).expect("the harness builds valid messages");
            write_frame(Framing::Binary2, scratch, out);
            InFlight {
                p,
                stan,
                transmitted,
            }
        }
    }
}

fn encode_http(sh: &Shared, op: &Op, out: &mut Vec<u8>) {
    use std::io::Write;
    let world = sh.gen.world();
    let key = &world.merchants[op.merchant].1;
    let (method, path, body) = match (op.kind, &op.original) {
        (OpKind::Authorize | OpKind::Sale, _) => (
            "POST",
            "/v1/payments".to_string(),
            format!(
                r#"{{"amount":"{}","currency":"{}","card":{{"number":"{}","exp_month":{EXP_MONTH},"exp_year":{EXP_YEAR}}},"capture":{}}}"#,
                amount_text(op.amount, world.exponent),
                world.currency,
                world.card_number(op.card),
                op.kind == OpKind::Sale
            ),
        ),
        (OpKind::Capture, Some(Original::Http(id))) => {
            ("POST", format!("/v1/payments/{id}/capture"), String::new())
        }
        (OpKind::Void, Some(Original::Http(id))) => {
            ("POST", format!("/v1/payments/{id}/void"), String::new())
        }
        (OpKind::Refund, Some(Original::Http(id))) => {
            ("POST", format!("/v1/payments/{id}/refunds"), String::new())
        }
        (OpKind::Balance, _) => ("GET", format!("/v1/accounts/{}", op.card), String::new()),
        (OpKind::ColdRead, Some(Original::Http(id))) => {
            ("GET", format!("/v1/payments/{id}"), String::new())
        }
        (OpKind::ColdRefund, Some(Original::Http(id))) => {
            ("POST", format!("/v1/payments/{id}/refunds"), String::new())
        }
        (kind, original) => unreachable!("{kind:?} without its original: {original:?}"),
    };
    // Balance inquiries read an account, which takes the admin key.
    let key = if op.kind == OpKind::Balance {
        sh.gen.world().admin_key.as_str()
    } else {
        key.as_str()
    };
    let _ = write!(
        out,
        "{method} {path} HTTP/1.1\r\nHost: corepay\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
}

fn iso_message(sh: &Shared, c: &Conn, op: &Op, stan: [u8; 6], transmitted: [u8; 10]) -> Message {
    let world = sh.gen.world();
    let (mti, processing): (&[u8; 4], &[u8]) = match op.kind {
        OpKind::Authorize => (b"0100", b"000000"),
        OpKind::Balance => (b"0100", b"310000"),
        OpKind::Sale => (b"0200", b"000000"),
        OpKind::Refund => (b"0200", b"200000"),
        OpKind::Capture => (b"0220", b"000000"),
        OpKind::Void => (b"0400", b"000000"),
        OpKind::ColdRead | OpKind::ColdRefund => {
            unreachable!("cold operations are HTTP only (Scenario::validate)")
        }
    };
    let mut m = Message::new(*mti);
    m.set(3, processing);
    let mut terminal = c.terminal;
    if let (
        OpKind::Capture | OpKind::Void,
        Some(Original::Iso {
            mti,
            terminal: t,
            stan: os,
            transmitted: ot,
            ..
        }),
    ) = (op.kind, &op.original)
    {
        // DE90 names the original at the original's terminal.
        terminal = *t;
        let mut de90 = Vec::with_capacity(42);
        de90.extend_from_slice(mti);
        de90.extend_from_slice(os);
        de90.extend_from_slice(ot);
        de90.extend_from_slice(
            format!("{:0>11}", std::str::from_utf8(ACQUIRER).unwrap()).as_bytes(),
        );
        de90.extend_from_slice(b"00000000000");
        m.set(90, &de90);
    } else {
        m.set(2, world.card_number(op.card).as_bytes());
        m.set(
            14,
            format!("{:02}{EXP_MONTH:02}", EXP_YEAR % 100).as_bytes(),
        );
    }
    if op.kind != OpKind::Balance {
        m.set(4, format!("{:012}", op.amount).as_bytes());
    }
    m.set(7, &transmitted);
    m.set(11, &stan);
    m.set(12, &transmitted[4..10]);
    m.set(13, &transmitted[0..4]);
    m.set(32, ACQUIRER);
    m.set(41, &terminal);
    m.set(
        42,
        format!("{:<15}", world.merchants[op.merchant].0).as_bytes(),
    );
    m.set(49, format!("{:03}", world.currency_numeric).as_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_are_right() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_778), (2026, 11, 21));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn json_strings_are_found_by_key() {
        let body = br#"{"id":"pay_1_42","object":"payment","decline_code": "insufficient_funds"}"#;
        assert_eq!(json_str(body, "id"), Some("pay_1_42"));
        assert_eq!(json_str(body, "decline_code"), Some("insufficient_funds"));
        assert_eq!(json_str(body, "code"), None);
    }
}
