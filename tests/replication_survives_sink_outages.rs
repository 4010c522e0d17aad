//! PostgreSQL outages in the middle of load: stopped (fast shutdown), hung (SIGSTOP of the
//! whole instance, with Redis hung too), refusing connections from the gateway's start, and a
//! kill -9 of the gateway during catch-up. In every case the gateway keeps answering every
//! request (latencies are printed per phase; only failures and > 5 s answers fail the test),
//! the backlog (durable WAL beyond PostgreSQL's progress) grows while the sink is away, and
//! once it is back replication catches up and `corepay reconcile` passes. While the sinks
//! hang, SIGTERM still stops the gateway within seconds and it starts again at once.
//!
//! Each test runs a PRIVATE PostgreSQL (initdb into a temp dir, run as the `postgres` OS user
//! in its own process group, on a free port) so that stopping or freezing it cannot disturb
//! tests using the shared instance on 5432. The server binaries come from
//! /usr/lib/postgresql/*/bin (scripts/services.sh installs them); without them this fails.
//! The tests run one at a time (`one_at_a_time`); together they take about 30 s.
mod common;
use common::*;
use std::collections::{BTreeMap, HashSet};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longer than this for one request is a hang, not noise.
const HANG: Duration = Duration::from_secs(5);
/// How long PostgreSQL stays away.
const OUTAGE: Duration = Duration::from_secs(3);
/// Bound on catching up after the sink returns (the runner's back-off is at most 7.5 s).
const CATCH_UP: Duration = Duration::from_secs(30);

// ---- a private PostgreSQL ------------------------------------------------------------------

/// One PostgreSQL instance of this test's own, in a temp dir; stopped and removed on drop.
struct Pg {
    bin: PathBuf,
    root: tempfile::TempDir,
    port: u16,
    uid: u32,
    gid: u32,
    /// The postmaster (its backends are process groups of their own: see `freeze`).
    child: Option<Child>,
}

fn postgres_bin_dir() -> PathBuf {
    let base = Path::new("/usr/lib/postgresql");
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir(base)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("postgres").exists() && bin.join("initdb").exists()).then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin (initdb, postgres): \
             run scripts/services.sh, which installs them"
        )
    })
}

fn postgres_user() -> (u32, u32) {
    // SAFETY: getpwnam with a NUL-terminated name; the fields are read at once.
    unsafe {
        let pw = libc::getpwnam(c"postgres".as_ptr());
        assert!(
            !pw.is_null(),
            "no `postgres` OS user to run a private PostgreSQL as: run scripts/services.sh"
        );
        ((*pw).pw_uid, (*pw).pw_gid)
    }
}

impl Pg {
    /// initdb (trust auth, superuser `postgres`) into a fresh temp dir; not started.
    fn init() -> Pg {
        let bin = postgres_bin_dir();
        let (uid, gid) = postgres_user();
        let root = tempfile::Builder::new()
            .prefix("corepay-pg-")
            .tempdir()
            .unwrap();
        std::os::unix::fs::chown(root.path(), Some(uid), Some(gid)).unwrap();
        let out = Command::new(bin.join("initdb"))
            .arg("-D")
            .arg(root.path().join("data"))
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
            ])
            .current_dir(root.path())
            .uid(uid)
            .gid(gid)
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Pg {
            bin,
            root,
            port: free_port(),
            uid,
            gid,
            child: None,
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("postgres.log")).unwrap_or_default()
    }

    /// Starts the postmaster in its own process group and waits until it accepts connections.
    fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join("postgres.log"))
            .unwrap();
        let child = Command::new(self.bin.join("postgres"))
            .arg("-D")
            .arg(self.root.path().join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.root.path().display()
            ))
            .args(["-c", "fsync=on", "-c", "shared_buffers=16MB"])
            .current_dir(self.root.path())
            .uid(self.uid)
            .gid(self.gid)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!("postgres exited at start with {status}:\n{}", self.log());
            }
            let mut config: postgres::Config = self.url().parse().unwrap();
            config.connect_timeout(Duration::from_secs(1));
            if config.connect(postgres::NoTls).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not accept connections:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("postgres running").id() as i32
    }

    /// `pg_ctl -m fast stop`: SIGINT to the postmaster, and wait for it to be gone.
    fn stop_fast(&mut self) {
        let pid = self.pid();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                kill_instance(pid);
                let _ = child.wait();
                panic!("postgres did not stop on SIGINT:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`) to every process of the instance. Each backend
    /// is a process group of its own (PostgreSQL calls setsid() in every child), so signalling
    /// the postmaster's group is not enough: the postmaster and each of its children are
    /// signalled, the postmaster first when stopping (it forks no more) and last when
    /// continuing.
    fn freeze(&self, stop: bool) {
        let pm = self.pid();
        let children = children_of(pm);
        let signal = |pid: i32, sig: i32| {
            // SAFETY: the postmaster we started and processes it forked.
            let rc = unsafe { libc::kill(pid, sig) };
            assert!(
                rc == 0 || pid != pm,
                "kill({pid}): {}",
                std::io::Error::last_os_error()
            );
        };
        if stop {
            signal(pm, libc::SIGSTOP);
            for c in children_of(pm).into_iter().chain(children) {
                signal(c, libc::SIGSTOP);
            }
        } else {
            for c in children {
                signal(c, libc::SIGCONT);
            }
            signal(pm, libc::SIGCONT);
        }
    }

    fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url(), postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to the private postgres: {e}"))
    }

    /// Whether the postmaster answers an SSLRequest within `timeout` (a frozen instance still
    /// accepts TCP connections in the kernel, but never answers).
    fn answers_within(&self, timeout: Duration) -> bool {
        use std::io::{Read, Write};
        let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        c.set_read_timeout(Some(timeout)).unwrap();
        let _ = c.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
        let mut answer = [0u8; 1];
        matches!(c.read(&mut answer), Ok(1))
    }

    /// Whether a connection attempt fails (the instance is down or refusing).
    fn refuses(&self) -> bool {
        let mut config: postgres::Config = self.url().parse().unwrap();
        config.connect_timeout(Duration::from_secs(1));
        config.connect(postgres::NoTls).is_err()
    }

    /// shard → last LSN stored in `schema` (empty before the tables exist).
    fn progress(&self, schema: &str) -> BTreeMap<u16, u64> {
        let mut c = self.client();
        let exists: bool = c
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[&format!("{schema}.progress")],
            )
            .unwrap()
            .get(0);
        if !exists {
            return BTreeMap::new();
        }
        c.query(&format!("SELECT shard, lsn FROM {schema}.progress"), &[])
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, i16>(0) as u16, r.get::<_, i64>(1) as u64))
            .collect()
    }
}

/// SIGKILL to a postmaster and every process it forked (each in a group of its own).
fn kill_instance(pm: i32) {
    // SAFETY: the postmaster we started and processes it forked.
    unsafe {
        libc::kill(pm, libc::SIGKILL);
        for c in children_of(pm) {
            libc::kill(c, libc::SIGKILL);
        }
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pm = child.id() as i32;
            // SAFETY: the postmaster we started and processes it forked.
            unsafe {
                for c in children_of(pm) {
                    libc::kill(c, libc::SIGCONT);
                }
                libc::kill(pm, libc::SIGCONT);
                libc::kill(pm, libc::SIGINT);
            }
            let deadline = Instant::now() + Duration::from_secs(15);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(child.try_wait(), Ok(None)) {
                kill_instance(pm);
            }
            let _ = child.wait();
        }
        // The TempDir field removes the directory.
    }
}

/// The processes whose parent is `pid` (from /proc).
fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let after = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
        let ppid = after
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

// ---- a private Redis -----------------------------------------------------------------------

struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    fn start() -> Redis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (scripts/services.sh installs it)");
        let r = Redis { port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.conn_opt().is_none() {
            assert!(Instant::now() < deadline, "private redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn conn_opt(&self) -> Option<redis::Connection> {
        let mut c = redis::Client::open(self.url())
            .ok()?
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        redis::cmd("PING").query::<String>(&mut c).ok()?;
        Some(c)
    }

    fn freeze(&self, stop: bool) {
        let sig = if stop { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: the process group we created.
        unsafe { libc::kill(-(self.child.id() as i32), sig) };
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // SAFETY: the process group we created.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGCONT);
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

// ---- the gateway side ----------------------------------------------------------------------

fn replication_config(pg: &Pg, schema: &str, extra: &str) -> String {
    format!(
        "[replication]\npostgres_url = \"{}\"\npostgres_schema = \"{schema}\"\n{extra}",
        pg.url()
    )
}

fn tail(text: &str, chars: usize) -> &str {
    let start = text.len().saturating_sub(chars);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    &text[start..]
}

/// Waits (bounded) until reconcile passes; returns how long it took.
fn wait_reconciled(s: &Server, pg: &Pg) -> Duration {
    let start = Instant::now();
    loop {
        let (ok, report) = s.reconcile();
        if ok {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < CATCH_UP,
            "PostgreSQL never caught up with the gateway:\n{}\n--- gateway log (tail):\n{}\n\
             --- postgres log (tail):\n{}",
            tail(&report, 3000),
            tail(&s.log(), 6000),
            tail(&pg.log(), 3000)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Every shard's durable LSN, from GET /v1/ledger.
fn durable(s: &Server) -> Vec<u64> {
    s.ledger()["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["wal_durable_lsn"].as_u64().unwrap())
        .collect()
}

fn total(progress: &BTreeMap<u16, u64>) -> u64 {
    progress.values().sum()
}

/// Lines of the gateway's log saying the PostgreSQL sink is unavailable.
fn unavailable_lines(s: &Server) -> Vec<String> {
    s.log()
        .lines()
        .filter(|l| l.contains("postgres shard") && l.contains(": unavailable ("))
        .map(str::to_string)
        .collect()
}

// ---- load ----------------------------------------------------------------------------------

const PHASES: [&str; 3] = ["before", "outage", "after"];

/// Steady light load: `threads` clients each authorizing, capturing and refunding, every
/// request timed and tagged with the phase it was sent in.
struct Load {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicUsize>,
    samples: Arc<Mutex<Vec<(usize, Duration)>>>,
    failures: Arc<Mutex<Vec<String>>>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Load {
    /// A test that fails mid-load leaves no client threads behind.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Accounts, cards and a merchant per load thread; returns (api key, card numbers) each.
fn provision_shops(s: &Server, threads: u64) -> Vec<(String, Vec<String>)> {
    (0..threads)
        .map(|t| {
            let settlement = 10 + t;
            create_account(s, settlement, "EUR", "0.00");
            let pans = (0..3u64)
                .map(|i| {
                    let id = 1000 + t * 10 + i;
                    let pan = card_number(&format!("40000077{t:02}{i:05}"));
                    create_account(s, id, "EUR", "1000000.00");
                    create_card(s, &pan, id);
                    pan
                })
                .collect();
            (create_merchant(s, &format!("SHOP{t}"), settlement), pans)
        })
        .collect()
}

impl Load {
    fn start(s: &Server, shops: Vec<(String, Vec<String>)>, phase: usize) -> Load {
        let mut load = Load {
            stop: Arc::new(AtomicBool::new(false)),
            phase: Arc::new(AtomicUsize::new(phase)),
            samples: Arc::new(Mutex::new(Vec::new())),
            failures: Arc::new(Mutex::new(Vec::new())),
            handles: Vec::new(),
        };
        for (t, (key, pans)) in shops.into_iter().enumerate() {
            let (stop, phase) = (load.stop.clone(), load.phase.clone());
            let (samples, failures) = (load.samples.clone(), load.failures.clone());
            let addr = s.http;
            load.handles.push(std::thread::spawn(move || {
                let mut client = Client::with_key(addr, &key);
                let mut n = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let pan = &pans[n % pans.len()];
                    n += 1;
                    let mut call = |path: &str, body: &str, want: u16| -> Option<serde_json::Value> {
                        let p = phase.load(Ordering::SeqCst);
                        let t0 = Instant::now();
                        let r = client.try_request("POST", path, Some(body), &[]);
                        let took = t0.elapsed();
                        samples.lock().unwrap().push((p, took));
                        match r {
                            Ok(r) if r.status == want => Some(r.body),
                            Ok(r) => {
                                failures.lock().unwrap().push(format!(
                                    "thread {t} {path} ({}): {} {}",
                                    PHASES[p], r.status, r.body
                                ));
                                None
                            }
                            Err(e) => {
                                failures.lock().unwrap().push(format!(
                                    "thread {t} {path} ({}): {e}",
                                    PHASES[p]
                                ));
                                std::thread::sleep(Duration::from_millis(50));
                                if let Ok(c) = Client::try_connect(addr, Some(&key)) {
                                    client = c;
                                }
                                None
                            }
                        }
                    };
                    let body = format!(
                        r#"{{"amount":"10.00","currency":"EUR","card":{{"number":"{pan}","exp_month":12,"exp_year":2030}},"capture":false,"reference":"load-{t}-{n}"}}"#
                    );
                    let Some(p) = call("/v1/payments", &body, 201) else {
                        continue;
                    };
                    if p["status"] != "authorized" {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("thread {t}: not authorized: {p}"));
                        continue;
                    }
                    let id = p["id"].as_str().unwrap().to_string();
                    if call(
                        &format!("/v1/payments/{id}/capture"),
                        r#"{"amount":"5.00"}"#,
                        200,
                    )
                    .is_none()
                    {
                        continue;
                    }
                    call(
                        &format!("/v1/payments/{id}/refunds"),
                        r#"{"amount":"1.00"}"#,
                        200,
                    );
                    std::thread::sleep(Duration::from_millis(3));
                }
            }));
        }
        load
    }

    fn set_phase(&self, phase: usize) {
        self.phase.store(phase, Ordering::SeqCst);
    }

    /// Stops the clients; asserts nothing failed and nothing hung; prints latency per phase.
    fn finish(mut self, test: &str) {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.handles.drain(..) {
            h.join().expect("a load thread panicked");
        }
        let failures = self.failures.lock().unwrap();
        assert!(
            failures.is_empty(),
            "{test}: {} requests failed during a sink outage, e.g.:\n{}",
            failures.len(),
            failures
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        let samples = self.samples.lock().unwrap();
        let mut line = format!("{test}: request latency (median / p99 / max, n):");
        for (p, name) in PHASES.iter().enumerate() {
            let mut d: Vec<Duration> = samples
                .iter()
                .filter(|(q, _)| *q == p)
                .map(|(_, d)| *d)
                .collect();
            if d.is_empty() {
                continue;
            }
            d.sort();
            let at = |q: f64| d[((d.len() - 1) as f64 * q) as usize];
            line.push_str(&format!(
                "  {name} {:.2?} / {:.2?} / {:.2?}, {}",
                at(0.5),
                at(0.99),
                d[d.len() - 1],
                d.len()
            ));
            assert!(
                d[d.len() - 1] < HANG,
                "{test}: a request took {:?} in phase {name}: the sink outage reached the gateway",
                d[d.len() - 1]
            );
        }
        println!("{line}");
    }
}

/// The tests share a 2-core machine with each other's gateways and PostgreSQL instances:
/// run one at a time, so that the latencies printed compare an outage with the same machine
/// without one (they are also not disturbed by another test's provisioning and catch-up).
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn total_durable(s: &Server) -> u64 {
    durable(s).iter().sum()
}

/// Checks the backlog grew while PostgreSQL was away: its progress could not move, and the
/// durable WAL went from `before` to `during` (`stored` = PostgreSQL's progress before).
fn assert_backlog_grew(test: &str, stored: &BTreeMap<u16, u64>, before: u64, during: u64) {
    println!(
        "{test}: backlog at the end of the outage ≥ {} records (PostgreSQL's progress {}, \
         the durable WAL {before} → {during})",
        during.saturating_sub(total(stored)),
        total(stored)
    );
    assert!(
        during > before + 50,
        "{test}: the backlog did not grow: the durable WAL went {before} → {during}"
    );
}

// ---- the tests -----------------------------------------------------------------------------

/// PostgreSQL shut down (fast) mid-load, connections refused for a while, then started again
/// on the same data directory and port.
#[test]
fn postgres_stopped_mid_load() {
    let _serial = one_at_a_time();
    let mut pg = Pg::init();
    pg.start();
    let s = Server::start_with(2, &replication_config(&pg, "corepay", ""));
    let load = Load::start(&s, provision_shops(&s, 2), 0);
    std::thread::sleep(Duration::from_millis(1500));
    let stored = pg.progress("corepay");
    let before = total_durable(&s);
    load.set_phase(1);
    pg.stop_fast();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", pg.port)).is_err(),
        "postgres still listening after its stop"
    );
    std::thread::sleep(OUTAGE);
    let during = total_durable(&s);
    let lines = unavailable_lines(&s);
    assert!(
        !lines.is_empty(),
        "the log never said PostgreSQL was unavailable:\n{}",
        tail(&s.log(), 4000)
    );
    println!("stopped: gateway logged: {}", lines.last().unwrap());
    assert!(!s.reconcile().0, "reconcile passed with PostgreSQL down");
    pg.start();
    let back = Instant::now();
    load.set_phase(2);
    std::thread::sleep(Duration::from_secs(1));
    load.finish("stopped");
    assert_backlog_grew("stopped", &stored, before, during);
    wait_reconciled(&s, &pg);
    println!(
        "stopped: reconciled {:.1?} after PostgreSQL returned",
        back.elapsed()
    );
    assert!(
        s.log().contains("reachable again"),
        "no reconnection logged:\n{}",
        tail(&s.log(), 4000)
    );
}

/// The whole PostgreSQL instance (postmaster and every backend) frozen with SIGSTOP mid-load,
/// and the Redis the events go to as well: connections stay open, nothing answers. While
/// both hang the gateway also gets SIGTERM (it must still exit promptly: the sink threads
/// stuck in a read are abandoned) and starts again (readiness does not wait for a sink).
/// Then SIGCONT: both catch up.
#[test]
fn postgres_and_redis_hung_mid_load() {
    let _serial = one_at_a_time();
    let mut pg = Pg::init();
    pg.start();
    let redis = Redis::start();
    let stream = "corepay:outage";
    let extra = format!(
        "redis_url = \"{}\"\nredis_stream = \"{stream}\"\n",
        redis.url()
    );
    let mut s = Server::start_with(2, &replication_config(&pg, "corepay", &extra));
    let shops = provision_shops(&s, 2);
    let load = Load::start(&s, shops.clone(), 0);
    std::thread::sleep(Duration::from_millis(1500));
    let stored = pg.progress("corepay");
    let before = total_durable(&s);
    load.set_phase(1);
    pg.freeze(true);
    redis.freeze(true);
    assert!(
        !pg.answers_within(Duration::from_millis(500)),
        "postgres still answers after SIGSTOP"
    );
    std::thread::sleep(OUTAGE);
    let during = total_durable(&s);
    load.finish("hung");
    assert_backlog_grew("hung", &stored, before, during);

    let t0 = Instant::now();
    let status = s.terminate();
    assert!(
        status.success(),
        "SIGTERM: {status}\n{}",
        tail(&s.log(), 4000)
    );
    let stopped = t0.elapsed();
    assert!(
        stopped < Duration::from_secs(10),
        "SIGTERM took {stopped:?} with the sinks hung"
    );
    let t0 = Instant::now();
    s.spawn();
    println!(
        "hung: SIGTERM exited in {stopped:.2?}, restarted and ready in {:.2?}, sinks still hung",
        t0.elapsed()
    );

    pg.freeze(false);
    redis.freeze(false);
    assert!(
        pg.answers_within(Duration::from_secs(5)),
        "postgres after SIGCONT"
    );
    let back = Instant::now();
    let load = Load::start(&s, shops, 2);
    std::thread::sleep(Duration::from_secs(1));
    load.finish("hung (after SIGCONT)");
    wait_reconciled(&s, &pg);
    println!("hung: reconciled {:.1?} after SIGCONT", back.elapsed());

    // Redis caught up too (its progress keys reach the WAL's end as PostgreSQL stored it) and
    // holds each event once.
    let end = pg.progress("corepay");
    let mut conn = redis.conn_opt().expect("private redis answers");
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let at: Vec<Option<u64>> = end
            .keys()
            .map(|k| {
                redis::cmd("GET")
                    .arg(format!("{stream}:progress:{k}"))
                    .query(&mut conn)
                    .unwrap()
            })
            .collect();
        // At least where PostgreSQL was: background records (hold expiry) may have been
        // stored since.
        if end
            .values()
            .zip(&at)
            .all(|(want, got)| got.is_some_and(|g| g >= *want))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "redis never caught up: {at:?}, WAL ends at {end:?}\n{}",
            tail(&s.log(), 4000)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    let mut ids = HashSet::new();
    for e in &reply.ids {
        let id: String = e.get("event_id").expect("every event has an event_id");
        assert!(ids.insert(id.clone()), "event {id} published twice");
    }
    assert!(ids.len() > 100, "only {} events", ids.len());
    println!("hung: redis holds {} events, each once", ids.len());
}

/// PostgreSQL refusing connections when the gateway starts: it starts, is ready and serves;
/// replication catches up once PostgreSQL comes up.
#[test]
fn postgres_refusing_from_the_start() {
    let _serial = one_at_a_time();
    let mut pg = Pg::init(); // not started: its port refuses connections
    let t0 = Instant::now();
    let s = Server::start_with(2, &replication_config(&pg, "corepay", ""));
    println!(
        "refused: gateway ready {:.2?} after start, PostgreSQL down",
        t0.elapsed()
    );
    let load = Load::start(&s, provision_shops(&s, 2), 1);
    std::thread::sleep(OUTAGE);
    let during = total_durable(&s);
    let lines = unavailable_lines(&s);
    assert!(
        !lines.is_empty(),
        "the log never said PostgreSQL was unavailable:\n{}",
        tail(&s.log(), 4000)
    );
    println!("refused: gateway logged: {}", lines.last().unwrap());
    assert!(
        pg.refuses(),
        "the private postgres answered while it should refuse"
    );
    pg.start();
    let back = Instant::now();
    load.set_phase(2);
    std::thread::sleep(Duration::from_secs(1));
    load.finish("refused");
    assert_backlog_grew("refused", &BTreeMap::new(), 0, during);
    wait_reconciled(&s, &pg);
    println!(
        "refused: reconciled {:.1?} after PostgreSQL came up",
        back.elapsed()
    );
}

/// A backlog of ~10,000 records built while PostgreSQL is down; kill -9 of the gateway right
/// after catch-up has started; after the restart, reconcile passes and what PostgreSQL holds
/// equals, row for row, a fresh replication of the same WAL into a new schema.
#[test]
fn gateway_killed_during_catch_up() {
    let _serial = one_at_a_time();
    let mut pg = Pg::init();
    pg.start();
    let mut s = Server::start_with(
        2,
        &replication_config(&pg, "corepay", "batch_records = 100\n"),
    );
    let load = Load::start(&s, provision_shops(&s, 1), 0);
    std::thread::sleep(Duration::from_secs(1));
    pg.stop_fast();
    load.set_phase(1);
    std::thread::sleep(Duration::from_secs(1));
    load.finish("kill9");
    let (status, v) = s.admin().post(
        "/v1/provision",
        r#"{"first_account_id":100000,"count":5000,"currency":"EUR","balance":"50.00","card_bin":"411111","exp_month":12,"exp_year":2031}"#,
    );
    assert_eq!(status, 200, "{v}");
    let end = durable(&s);
    pg.start();
    let before = pg.progress("corepay");
    println!(
        "kill9: backlog {} records",
        end.iter().sum::<u64>() - total(&before)
    );

    // Kill as soon as a catch-up batch has committed.
    let deadline = Instant::now() + CATCH_UP;
    let at_kill = loop {
        if total(&pg.progress("corepay")) > total(&before) {
            s.kill9();
            break pg.progress("corepay");
        }
        assert!(
            Instant::now() < deadline,
            "catch-up never started:\n{}",
            tail(&s.log(), 4000)
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let behind: Vec<u64> = end
        .iter()
        .enumerate()
        .map(|(k, e)| e.saturating_sub(at_kill.get(&(k as u16)).copied().unwrap_or(0)))
        .collect();
    println!("kill9: killed with PostgreSQL behind by {behind:?} records per shard");
    assert!(
        behind.iter().any(|&b| b > 0),
        "catch-up finished before the kill: the test did not kill mid-catch-up"
    );
    s.spawn();
    let t0 = Instant::now();
    wait_reconciled(&s, &pg);
    println!("kill9: reconciled {:.1?} after the restart", t0.elapsed());
    let after = pg.progress("corepay");
    for (k, e) in end.iter().enumerate() {
        assert!(
            after[&(k as u16)] >= *e,
            "shard {k}: progress {after:?} < WAL {end:?}"
        );
    }

    // A fresh replication of the same WAL into another schema stores exactly the same rows.
    let status = s.terminate();
    assert!(
        status.success(),
        "SIGTERM: {status}\n{}",
        tail(&s.log(), 4000)
    );
    s.extra_config = replication_config(&pg, "fresh", "");
    s.spawn();
    wait_reconciled(&s, &pg);
    let mut c = pg.client();
    for (table, cols) in [
        ("accounts", "*"),
        ("cards", "*"),
        ("merchants", "*"),
        ("payments", "*"),
        ("refunds", "*"),
        ("journal", "*"),
        ("progress", "shard, lsn"),
    ] {
        let count = |schema: &str, c: &mut postgres::Client| -> i64 {
            c.query_one(&format!("SELECT count(*) FROM {schema}.{table}"), &[])
                .unwrap()
                .get(0)
        };
        let (a, b) = (count("corepay", &mut c), count("fresh", &mut c));
        let differ: i64 = c
            .query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM (SELECT {cols} FROM corepay.{table} \
                     EXCEPT ALL SELECT {cols} FROM fresh.{table}) x) + \
                     (SELECT count(*) FROM (SELECT {cols} FROM fresh.{table} \
                     EXCEPT ALL SELECT {cols} FROM corepay.{table}) y)"
                ),
                &[],
            )
            .unwrap()
            .get(0);
        assert!(
            a == b && differ == 0,
            "{table}: {a} rows after the kill, {b} in a fresh replication, {differ} differ"
        );
        if table == "journal" {
            println!("kill9: journal has {a} rows, the same as a fresh replication");
        }
    }
}
