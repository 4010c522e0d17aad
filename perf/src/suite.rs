//! `corepay-perf suite`: every target and baseline, one after the other on the same
//! machine in one run, and the table BENCHMARKS.md publishes.
//!
//! Targets (each over HTTP and ISO 8583, authorize only): the do-nothing responder (the
//! ceiling), the responder with a group-committed fdatasync per batch (the durable
//! ceiling), corepay with `wal.sync = "none"`, and corepay itself. For each: a step sweep
//! to the highest rate with p99 within the bound; then every target at half of corepay's
//! sustainable rate. Then pgbench tpcb-like on the local PostgreSQL, and instructions per
//! request under callgrind. Servers run on one core, the load generator on another.

use crate::cli::Args;
use crate::report::{RunResult, SweepResult};
use crate::scenario::{Protocol, Scenario, Target};
use crate::{measure, plot, prepare, sweep, to_json, write};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ADMIN_KEY: &str = "ak_corepay_perf_suite_0001";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Responder,
    DurableResponder,
    CorepayNoSync,
    Corepay,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Responder,
        Kind::DurableResponder,
        Kind::CorepayNoSync,
        Kind::Corepay,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Kind::Responder => "do-nothing responder",
            Kind::DurableResponder => "responder + group-committed fdatasync",
            Kind::CorepayNoSync => "corepay, wal.sync = none",
            Kind::Corepay => "corepay",
        }
    }
    pub fn slug(self) -> &'static str {
        match self {
            Kind::Responder => "responder",
            Kind::DurableResponder => "durable-responder",
            Kind::CorepayNoSync => "corepay-nosync",
            Kind::Corepay => "corepay",
        }
    }
}

struct Opts {
    out: PathBuf,
    corepay: PathBuf,
    me: PathBuf,
    server_core: usize,
    load_core: usize,
    port_base: u16,
    step_s: f64,
    half_s: f64,
    warmup_s: f64,
    start_rate: f64,
    connections: usize,
    window: usize,
    accounts: u64,
    pg: String,
    callgrind_requests: u64,
    closed_s: f64,
    only: Option<String>,
}

impl Opts {
    fn launch(&self) -> Launch {
        Launch {
            corepay: self.corepay.clone(),
            me: self.me.clone(),
            server_core: self.server_core,
            port_base: self.port_base,
            state: Vec::new(),
            extra_toml: String::new(),
            pin: true,
        }
    }
}

/// How servers under test are started (the suite's and the soak's).
pub struct Launch {
    /// The corepay binary, and this one (for the responders).
    pub corepay: PathBuf,
    pub me: PathBuf,
    /// The one core each server runs on.
    pub server_core: usize,
    /// Ports are taken from here up, four per start.
    pub port_base: u16,
    /// Extra `[state]` keys of corepay's config (key, TOML value).
    pub state: Vec<(String, String)>,
    /// More of corepay's config, appended as it is (whole tables).
    pub extra_toml: String,
    /// Pin corepay's shard to `server_core` (and so its helper threads off it, the WAL's
    /// sync thread at real-time priority).
    pub pin: bool,
}

/// One row of the table.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub target: Kind,
    pub protocol: Protocol,
    pub sustainable_rate: f64,
    pub half: Option<RunResult>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClosedRow {
    pub target: Kind,
    pub protocol: Protocol,
    pub run: RunResult,
}

/// In flight in the closed loop: HTTP as wrk runs it (64 connections, one request each);
/// ISO 8583 as an acquirer's host link does (8 connections, 32 0100s pipelined on each).
pub fn closed_shape(protocol: Protocol) -> (usize, usize) {
    match protocol {
        Protocol::Http => (64, 1),
        Protocol::Iso8583 => (8, 32),
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Pgbench {
    pub settings: String,
    pub tps: f64,
    pub half_rate: f64,
    pub half_p50_ms: f64,
    pub half_p99_ms: f64,
    pub half_p999_ms: f64,
    pub command: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Instructions {
    pub target: String,
    pub protocol: String,
    pub requests: u64,
    /// With the load, and over the same time without it (subtracted).
    pub instructions: u64,
    pub idle_instructions: u64,
    pub per_request: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SuiteResult {
    pub kind: String,
    pub machine: crate::report::Machine,
    pub started_unix: u64,
    pub command: String,
    pub server_core: usize,
    pub load_core: usize,
    pub rows: Vec<Row>,
    /// Closed loop: the most each target answers with a fixed number in flight.
    #[serde(default)]
    pub closed: Vec<ClosedRow>,
    pub pgbench: Option<Pgbench>,
    pub instructions: Vec<Instructions>,
    pub notes: Vec<String>,
}

impl Opts {
    /// Checks that the corepay binary exists and empties `<out>/work` for the servers.
    fn fresh_work_dir(&self) -> Result<PathBuf, String> {
        if !self.corepay.exists() {
            return Err(format!(
                "{} not found: build it (cargo build --release) or pass --corepay",
                self.corepay.display()
            ));
        }
        let work = self.out.join("work");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
        Ok(work)
    }

    fn from_args(a: &Args) -> Result<Opts, String> {
        let me = std::env::current_exe().map_err(|e| e.to_string())?;
        Ok(Opts {
            out: PathBuf::from(a.get("out").unwrap_or("perf/results/suite")),
            corepay: corepay_binary(a, &me),
            me,
            server_core: a.parsed("server-core")?.unwrap_or(1),
            load_core: a.parsed("load-core")?.unwrap_or(0),
            port_base: a.parsed("port-base")?.unwrap_or(28_000),
            step_s: a.parsed("step")?.unwrap_or(5.0),
            half_s: a.parsed("half-duration")?.unwrap_or(20.0),
            warmup_s: a.parsed("warmup")?.unwrap_or(1.0),
            start_rate: a.parsed("start-rate")?.unwrap_or(2000.0),
            connections: a.parsed("connections")?.unwrap_or(8),
            window: a.parsed("window")?.unwrap_or(16),
            accounts: a.parsed("accounts")?.unwrap_or(100_000),
            pg: a
                .get("pg")
                .unwrap_or("host=127.0.0.1 user=postgres dbname=test")
                .to_string(),
            callgrind_requests: a.parsed("callgrind-requests")?.unwrap_or(2000),
            closed_s: a.parsed("closed-duration")?.unwrap_or(10.0),
            only: a.get("only").map(str::to_string),
        })
    }
}

/// `--corepay PATH`, else the `corepay` beside this binary (both built by `cargo build`).
pub fn corepay_binary(a: &Args, me: &Path) -> PathBuf {
    a.get("corepay")
        .map(PathBuf::from)
        .unwrap_or_else(|| me.with_file_name("corepay"))
}

pub fn cmd_suite(a: &Args) -> Result<i32, String> {
    let o = Opts::from_args(a)?;
    a.finish()?;
    let work = o.fresh_work_dir()?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut result = SuiteResult {
        kind: "suite".into(),
        machine: crate::report::Machine::this(),
        started_unix: crate::now_unix(),
        command,
        server_core: o.server_core,
        load_core: o.load_core,
        rows: Vec::new(),
        closed: Vec::new(),
        pgbench: None,
        instructions: Vec::new(),
        notes: Vec::new(),
    };
    let wants = |part: &str| {
        o.only
            .as_deref()
            .is_none_or(|only| only.split(',').any(|p| p == part))
    };

    if wants("sweeps") {
        // 1. Sweeps: the highest sustainable rate of every target.
        let mut sweeps: Vec<(Kind, Protocol, SweepResult)> = Vec::new();
        for kind in Kind::ALL {
            let server = Server::start(&o.launch(), kind, &work)?;
            for protocol in [Protocol::Http, Protocol::Iso8583] {
                let s = scenario(&o, &server, kind, protocol);
                let mut p = prepare(&s, true)?;
                eprintln!("suite: sweep {}", s.label);
                let r = sweep(&s, &mut p, true)?;
                write(
                    &o.out.join(format!("{}-sweep.json", s.label)),
                    &to_json(&r)?,
                )?;
                sweeps.push((kind, protocol, r));
            }
            server.stop()?;
        }
        // 2. Every target at half of corepay's sustainable rate, per protocol.
        for kind in Kind::ALL {
            let server = Server::start(&o.launch(), kind, &work)?;
            for protocol in [Protocol::Http, Protocol::Iso8583] {
                let corepay_rate = sweeps
                    .iter()
                    .find(|(k, p, _)| *k == Kind::Corepay && *p == protocol)
                    .map_or(0.0, |x| x.2.sustainable_rate);
                let mut s = scenario(&o, &server, kind, protocol);
                s.rate = (corepay_rate / 2.0).max(100.0);
                s.duration_s = o.half_s;
                let mut p = prepare(&s, true)?;
                eprintln!("suite: {} at {:.0}/s", s.label, s.rate);
                let (r, hist) = measure(
                    &s,
                    &mut p,
                    kind != Kind::Responder && kind != Kind::DurableResponder,
                )?;
                print!("{}", r.summary());
                let base = o.out.join(format!("{}-half", s.label));
                write(&base.with_extension("json"), &to_json(&r)?)?;
                write(&base.with_extension("hgrm"), &crate::report::hgrm(&hist))?;
                if let Some(c) = &r.check {
                    if !c.passed() {
                        result.notes.push(format!(
                            "{}: closing check FAILED: {}",
                            s.label,
                            c.problems.join("; ")
                        ));
                    }
                }
                let sustainable = sweeps
                    .iter()
                    .find(|(k, p, _)| *k == kind && *p == protocol)
                    .map_or(0.0, |x| x.2.sustainable_rate);
                result.rows.push(Row {
                    target: kind,
                    protocol,
                    sustainable_rate: sustainable,
                    half: Some(r),
                });
            }
            server.stop()?;
        }
        for protocol in [Protocol::Http, Protocol::Iso8583] {
            let tag = tag(protocol);
            let ss: Vec<SweepResult> = sweeps
                .iter()
                .filter(|x| x.1 == protocol)
                .map(|x| x.2.clone())
                .collect();
            write(&o.out.join(format!("sweeps-{tag}.svg")), &plot::sweeps(&ss))?;
            let halves: Vec<RunResult> = result
                .rows
                .iter()
                .filter(|r| r.protocol == protocol)
                .filter_map(|r| r.half.clone())
                .collect();
            write(
                &o.out.join(format!("half-rate-{tag}.svg")),
                &plot::spectrum(&halves),
            )?;
        }
    }
    if wants("closed") {
        // 3. Closed loop, each target on a fresh server.
        for kind in Kind::ALL {
            let server = Server::start(&o.launch(), kind, &work)?;
            for protocol in [Protocol::Http, Protocol::Iso8583] {
                let mut s = scenario(&o, &server, kind, protocol);
                s.label = format!("{}-closed", s.label);
                s.closed_loop = true;
                (s.connections, s.window) = closed_shape(protocol);
                s.duration_s = o.closed_s;
                s.warmup_s = 2.0;
                let mut p = prepare(&s, true)?;
                eprintln!("suite: {} (closed loop)", s.label);
                let corepay = kind != Kind::Responder && kind != Kind::DurableResponder;
                let (r, hist) = measure(&s, &mut p, corepay)?;
                print!("{}", r.summary());
                let base = o.out.join(&s.label);
                write(&base.with_extension("json"), &to_json(&r)?)?;
                write(&base.with_extension("hgrm"), &crate::report::hgrm(&hist))?;
                if let Some(c) = r.check.as_ref().filter(|c| !c.passed()) {
                    result.notes.push(format!(
                        "{}: closing check FAILED: {}",
                        s.label,
                        c.problems.join("; ")
                    ));
                }
                result.closed.push(ClosedRow {
                    target: kind,
                    protocol,
                    run: r,
                });
            }
            server.stop()?;
        }
    }

    if wants("pgbench") {
        result.pgbench = Some(pgbench(&o)?);
    }
    if wants("instructions") {
        // corepay with wal.sync = "none": see `instructions`.
        for (kind, protocol) in [
            (Kind::CorepayNoSync, Protocol::Http),
            (Kind::CorepayNoSync, Protocol::Iso8583),
            (Kind::Responder, Protocol::Http),
            (Kind::Responder, Protocol::Iso8583),
        ] {
            result
                .instructions
                .push(instructions(&o, kind, protocol, &work)?);
        }
    }
    let table = table(&result);
    write(&o.out.join("suite.json"), &to_json(&result)?)?;
    write(&o.out.join("suite.md"), &table)?;
    print!("\n{table}");
    eprintln!(
        "suite: wrote {}/suite.{{json,md}} and the SVG plots",
        o.out.display()
    );
    Ok(0)
}

/// The committed instruction counts `corepay-perf instructions` guards.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InstructionBaseline {
    /// Why this baseline, and from which commit: it changes on purpose, in its own commit.
    pub reason: String,
    /// Instructions per authorization, per protocol ("http", "iso8583").
    pub per_request: std::collections::BTreeMap<String, f64>,
}

/// `corepay-perf instructions`: corepay's user-space instructions per authorization under
/// callgrind, HTTP and ISO 8583, against a committed baseline; exit 1 when either grew by
/// more than `--max-regression` (0.10). With `--write-baseline REASON` it writes the figures
/// as the new baseline instead (commit that on its own, saying why). It also checks that two
/// shards with 30% cross-shard authorizations cost at most 1.25× one shard's instructions
/// per authorization (issue 10; a ratio in one run, so it needs no baseline).
///
/// Measured in process (`corepay-perf drive`, `inproc.rs`): the request path without socket,
/// kernel or other threads, which callgrind counts the same way every run. The gateway
/// itself under valgrind was not repeatable: its parked executor wakes late there.
pub fn cmd_instructions(a: &Args) -> Result<i32, String> {
    let baseline_path = PathBuf::from(
        a.get("baseline")
            .unwrap_or("perf/instructions-baseline.json"),
    );
    let max_regression: f64 = a.parsed("max-regression")?.unwrap_or(0.10);
    let write_reason = a.get("write-baseline").map(str::to_string);
    let out = PathBuf::from(a.get("out").unwrap_or("target/perf-instructions"));
    a.finish()?;
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut measured = std::collections::BTreeMap::new();
    for protocol in ["http", "iso8583"] {
        let per = in_process_instructions(&me, protocol, &[], &out)?;
        println!("instructions {protocol}: {per:.0} per authorization (in process)");
        measured.insert(protocol.to_string(), per);
    }
    // The ring hop is paid only where it must be: two shards with 30% cross-shard
    // authorizations against one shard, both with 8 connections at once (group commit alike).
    let mut hops_ok = true;
    for protocol in ["http", "iso8583"] {
        let one = in_process_instructions(&me, protocol, &ONE_SHARD, &out)?;
        let two = in_process_instructions(&me, protocol, &TWO_SHARDS, &out)?;
        let ratio = two / one;
        let ok = ratio <= CROSS_SHARD_MAX;
        hops_ok &= ok;
        println!(
            "instructions {protocol}, two shards with {CROSS_PCT}% cross-shard: {two:.0} per authorization against {one:.0} on one shard, ratio {ratio:.3} (at most {CROSS_SHARD_MAX}): {}",
            if ok { "within bounds" } else { "ABOVE THE BOUND" }
        );
    }
    if let Some(reason) = write_reason {
        let b = InstructionBaseline {
            reason,
            per_request: measured,
        };
        write(&baseline_path, &(to_json(&b)? + "\n"))?;
        println!(
            "instructions: wrote the new baseline {}",
            baseline_path.display()
        );
        return Ok(0);
    }
    let text = std::fs::read_to_string(&baseline_path)
        .map_err(|e| format!("--baseline {}: {e}", baseline_path.display()))?;
    let base: InstructionBaseline = serde_json::from_str(&text)
        .map_err(|e| format!("--baseline {}: {e}", baseline_path.display()))?;
    let verdicts = judge_instructions(&base, &measured, max_regression);
    let mut failed = !hops_ok;
    for v in &verdicts {
        println!("{}", v.0);
        failed |= !v.1;
    }
    Ok(if failed { 1 } else { 0 })
}

/// Two shards' instructions per authorization over one shard's, at most (issue 10).
const CROSS_SHARD_MAX: f64 = 1.25;
const CROSS_PCT: &str = "30";
const ONE_SHARD: [&str; 2] = ["--connections", "8"];
const TWO_SHARDS: [&str; 6] = [
    "--connections",
    "8",
    "--shards",
    "2",
    "--cross-pct",
    CROSS_PCT,
];

/// Request counts of the two in-process runs: their difference is what is counted.
const DRIVE_FEW: u64 = 200;
const DRIVE_MANY: u64 = 1200;

/// Instructions per authorization: callgrind's total for `DRIVE_MANY` requests less its
/// total for `DRIVE_FEW`, over the difference (start-up and provisioning cancel out).
fn in_process_instructions(
    me: &Path,
    protocol: &str,
    more: &[&str],
    out: &Path,
) -> Result<f64, String> {
    let mut totals = Vec::new();
    for n in [DRIVE_FEW, DRIVE_MANY] {
        let file = out.join(format!(
            "callgrind-{protocol}{}-{n}.out",
            more.concat().replace("--", "-")
        ));
        let output = Command::new("valgrind")
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", file.display()))
            .arg(me)
            .args([
                "drive",
                "--protocol",
                protocol,
                "--requests",
                &n.to_string(),
            ])
            .args(more)
            .output()
            .map_err(|e| format!("valgrind (is it installed?): {e}"))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            return Err(format!(
                "callgrind of `drive --protocol {protocol} --requests {n} {}` failed: {}\n{stderr}",
                more.join(" "),
                output.status
            ));
        }
        let total = stderr
            .lines()
            .find_map(|l| l.split("Collected : ").nth(1))
            .and_then(|t| t.trim().parse::<u64>().ok())
            .ok_or_else(|| format!("no \"Collected\" line from callgrind:\n{stderr}"))?;
        totals.push(total);
    }
    let (few, many) = (totals[0], totals[1]);
    if many <= few {
        return Err(format!(
            "{protocol}: {many} instructions for {DRIVE_MANY} requests, {few} for {DRIVE_FEW}"
        ));
    }
    Ok((many - few) as f64 / (DRIVE_MANY - DRIVE_FEW) as f64)
}

/// One line per protocol, and whether it is within the allowed regression.
fn judge_instructions(
    base: &InstructionBaseline,
    measured: &std::collections::BTreeMap<String, f64>,
    max_regression: f64,
) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for (protocol, was) in &base.per_request {
        let Some(now) = measured.get(protocol) else {
            out.push((format!("instructions {protocol}: not measured"), false));
            continue;
        };
        let ratio = now / was;
        let ok = ratio <= 1.0 + max_regression;
        let note = if !ok {
            format!(
                "REGRESSION above {:.0}%: find it (callgrind_annotate), or update the baseline on purpose in its own commit",
                max_regression * 100.0
            )
        } else if ratio < 1.0 - max_regression {
            "faster than the baseline: update it on purpose to lock the gain in".to_string()
        } else {
            "within bounds".to_string()
        };
        out.push((
            format!(
                "instructions {protocol}: {now:.0} per authorization, baseline {was:.0}, ratio {ratio:.3}: {note}"
            ),
            ok,
        ));
    }
    out
}

fn tag(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "http",
        Protocol::Iso8583 => "iso8583",
    }
}

fn scenario(o: &Opts, server: &Server, kind: Kind, protocol: Protocol) -> Scenario {
    let mut s = Scenario {
        label: format!("{}-{}", kind.slug(), tag(protocol)),
        protocol,
        target: match kind {
            Kind::Responder | Kind::DurableResponder => Target::Responder,
            _ => Target::Corepay,
        },
        ..Scenario::default()
    };
    s.addr = match protocol {
        Protocol::Http => server.http,
        Protocol::Iso8583 => server.iso,
    };
    // The admin plane is on the operator listener (corepay's metrics address).
    s.admin_addr = server.metrics.unwrap_or(server.http);
    s.metrics_addr = server.metrics;
    s.admin_key = Some(ADMIN_KEY.into());
    s.connections = o.connections;
    s.window = o.window;
    s.warmup_s = o.warmup_s;
    s.drain_s = 3.0;
    s.core = Some(o.load_core);
    s.workload.accounts = o.accounts;
    s.sweep.start_rate = o.start_rate;
    s.sweep.step_s = o.step_s;
    s.sweep.factor = 1.5;
    s.sweep.refine = 3;
    s.sweep.p99_bound_ms = 5.0;
    s
}

/// A server under test: a child process, stopped (SIGTERM, then waited for) on `stop`.
pub struct Server {
    child: Child,
    pub http: SocketAddr,
    pub iso: SocketAddr,
    pub metrics: Option<SocketAddr>,
}

impl Server {
    /// Starts `kind` with its data in `work/<slug>` (emptied first); waits until ready.
    pub fn start(o: &Launch, kind: Kind, work: &Path) -> Result<Server, String> {
        Server::start_with(o, kind, work, None)
    }

    /// `wrapper`: a command to run the server under (callgrind).
    fn start_with(
        o: &Launch,
        kind: Kind,
        work: &Path,
        wrapper: Option<&[String]>,
    ) -> Result<Server, String> {
        // Fresh ports for every start: a previous server's closed connections may hold
        // its ports in TIME_WAIT.
        static STARTS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
        let base = o.port_base + 4 * STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = |k: u16| SocketAddr::from(([127, 0, 0, 1], base + k));
        let (http, iso, metrics) = (port(0), port(1), port(2));
        let dir = work.join(kind.slug());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut args: Vec<String> = match kind {
            Kind::Responder | Kind::DurableResponder => {
                let mut a = vec![
                    o.me.display().to_string(),
                    "responder".into(),
                    "--http".into(),
                    http.to_string(),
                    "--iso".into(),
                    iso.to_string(),
                    "--core".into(),
                    o.server_core.to_string(),
                ];
                if kind == Kind::DurableResponder {
                    a.push("--durable".into());
                    a.push(dir.join("log").display().to_string());
                }
                a
            }
            Kind::Corepay | Kind::CorepayNoSync => {
                let sync = if kind == Kind::Corepay {
                    "fdatasync"
                } else {
                    "none"
                };
                let mut config = format!(
                    "[server]\nshards = 1\npin_cores = {}\ncores = [{}]\ndata_dir = \"{}\"\n\n\
                     [http]\nlisten = \"{http}\"\n\n[operator]\nlisten = \"{metrics}\"\n\n\
                     [iso8583]\nlisten = \"{iso}\"\n\n[wal]\nsync = \"{sync}\"\n\n\
                     [secrets]\nadmin_key = \"{ADMIN_KEY}\"\n",
                    o.pin,
                    o.server_core,
                    dir.join("data").display(),
                );
                if !o.state.is_empty() {
                    config.push_str("\n[state]\n");
                    for (k, v) in &o.state {
                        config.push_str(&format!("{k} = {v}\n"));
                    }
                }
                config.push_str(&o.extra_toml);
                let path = dir.join("corepay.toml");
                write(&path, &config)?;
                vec![
                    o.corepay.display().to_string(),
                    "serve".into(),
                    "--config".into(),
                    path.display().to_string(),
                ]
            }
        };
        if let Some(w) = wrapper {
            let mut full = w.to_vec();
            full.append(&mut args);
            args = full;
        }
        let log = std::fs::File::create(dir.join("server.log")).map_err(|e| e.to_string())?;
        let child = Command::new(&args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", args[0]))?;
        let is_corepay = matches!(kind, Kind::Corepay | Kind::CorepayNoSync);
        let mut server = Server {
            child,
            http,
            iso,
            metrics: is_corepay.then_some(metrics),
        };
        let slow = wrapper.is_some();
        let deadline = Instant::now() + Duration::from_secs(if slow { 300 } else { 30 });
        loop {
            let up = if is_corepay {
                crate::admin::get_text(metrics, "/readyz").is_ok()
            } else {
                std::net::TcpStream::connect(http).is_ok()
                    && std::net::TcpStream::connect(iso).is_ok()
            };
            if up {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                return Err(format!(
                    "{} exited ({status}) during start-up:\n{log}",
                    kind.name()
                ));
            }
            if Instant::now() > deadline {
                let _ = server.child.kill();
                return Err(format!("{} did not become ready", kind.name()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stop(mut self) -> Result<(), String> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err("a server did not stop within 60 s of SIGTERM".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn run_cmd(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!(
            "{program} {}: {}\n{text}",
            args.join(" "),
            out.status
        ));
    }
    Ok(text)
}

/// pgbench tpcb-like against the local PostgreSQL (fsync and synchronous_commit as the
/// server has them, which the result records): its maximum TPS with 8 clients, then a
/// rate-limited run at half that, whose per-transaction log (latency + schedule lag, so
/// also corrected for coordinated omission) gives the percentiles.
fn pgbench(o: &Opts) -> Result<Pgbench, String> {
    let conn: Vec<String> = o.pg.split_whitespace().map(str::to_string).collect();
    let get = |k: &str| {
        conn.iter()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .unwrap_or("")
            .to_string()
    };
    let (host, user, db) = (get("host"), get("user"), get("dbname"));
    let psql = |sql: &str| run_cmd("psql", &["-h", &host, "-U", &user, "-d", &db, "-Atc", sql]);
    let settings = psql("select 'fsync=' || current_setting('fsync') || ', synchronous_commit=' || current_setting('synchronous_commit') || ', wal_sync_method=' || current_setting('wal_sync_method') || ', ' || version()")?
        .trim()
        .to_string();
    if !settings.starts_with("fsync=on, synchronous_commit=on") {
        return Err(format!(
            "pgbench baseline needs fsync and synchronous_commit on: {settings}"
        ));
    }
    let base = ["-h", host.as_str(), "-U", user.as_str()];
    eprintln!("suite: pgbench -i -s 10 ({settings})");
    let mut init = base.to_vec();
    init.extend(["-i", "-s", "10", "-q", db.as_str()]);
    run_cmd("pgbench", &init)?;
    let mut max = base.to_vec();
    let dur = format!("{:.0}", o.half_s);
    max.extend([
        "-b",
        "tpcb-like",
        "-c",
        "8",
        "-j",
        "2",
        "-T",
        dur.as_str(),
        "-n",
        db.as_str(),
    ]);
    let text = run_cmd("pgbench", &max)?;
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps ="))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| format!("no tps in pgbench output:\n{text}"))?;
    eprintln!("suite: pgbench tpcb-like: {tps:.0} TPS");
    let half = (tps / 2.0).max(1.0);
    let logdir = o.out.join("work").join("pgbench");
    std::fs::create_dir_all(&logdir).map_err(|e| e.to_string())?;
    let prefix = logdir.join("txn").display().to_string();
    let rate = format!("{half:.0}");
    let mut limited = base.to_vec();
    limited.extend([
        "-b",
        "tpcb-like",
        "-c",
        "8",
        "-j",
        "2",
        "-T",
        dur.as_str(),
        "-R",
        rate.as_str(),
        "-n",
        "-l",
        "--log-prefix",
        prefix.as_str(),
        db.as_str(),
    ]);
    run_cmd("pgbench", &limited)?;
    let mut h = crate::engine::histogram();
    for entry in std::fs::read_dir(&logdir).map_err(|e| e.to_string())? {
        let text = std::fs::read_to_string(entry.map_err(|e| e.to_string())?.path())
            .map_err(|e| e.to_string())?;
        // client_id transaction_no time script_no time_epoch time_us schedule_lag
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 7 {
                let latency: u64 = f[2].parse().unwrap_or(0);
                let lag: u64 = f[6].parse().unwrap_or(0);
                h.saturating_record(((latency + lag) * 1000).max(1));
            }
        }
    }
    let p = crate::report::Percentiles::of(&h);
    Ok(Pgbench {
        settings,
        tps,
        half_rate: half,
        half_p50_ms: p.p50 / 1e3,
        half_p99_ms: p.p99 / 1e3,
        half_p999_ms: p.p999 / 1e3,
        command: format!(
            "pgbench -b tpcb-like -c 8 -j 2 -T {dur} -n (then -R {rate} -l) on {db}, scale 10"
        ),
    })
}

/// User-space instructions per request, counted by callgrind (repeatable on a noisy
/// machine): counters are zeroed after provisioning and a warm-up, then dumped after
/// exactly `callgrind_requests` authorizations. corepay runs with `wal.sync = "none"`:
/// under valgrind each hand-off to the thread that runs fdatasync takes a scheduling
/// quantum (about 10 requests a second got through), and the fdatasync is kernel time,
/// which callgrind does not count anyway; the WAL's encoding and batching still run.
fn instructions(
    o: &Opts,
    kind: Kind,
    protocol: Protocol,
    work: &Path,
) -> Result<Instructions, String> {
    let out_file = work.join(format!("callgrind-{}-{}.out", kind.slug(), tag(protocol)));
    let wrapper: Vec<String> = vec![
        "valgrind".into(),
        "--tool=callgrind".into(),
        format!("--callgrind-out-file={}", out_file.display()),
    ];
    // Under callgrind the shard runs tens of times slower than natively: admission would
    // shed by its time targets. Only its hard cap applies; its bookkeeping still runs.
    // Unpinned: valgrind runs one thread at a time under one lock, so pinning means nothing,
    // and the WAL's sync thread at real-time priority (pinned shards) would spin for that
    // lock and starve the rest.
    // Store reads get valgrind's slowness too (their 50 ms default would shed).
    let mut launch = Launch {
        extra_toml: "\n[admission]\nadaptive = false\n".into(),
        pin: false,
        ..o.launch()
    };
    launch
        .state
        .push(("read_timeout_ms".to_string(), "30000".to_string()));
    let server = Server::start_with(&launch, kind, work, Some(&wrapper))?;
    let mut s = scenario(o, &server, kind, protocol);
    s.label = format!("callgrind-{}", s.label);
    s.connections = 1;
    s.window = 4;
    s.rate = 200.0;
    s.warmup_s = 0.0;
    s.drain_s = 30.0;
    s.workload.accounts = 1000;
    let mut p = prepare(&s, true)?;
    // Warm-up: the first requests fault pages in and grow tables.
    s.duration_s = 1.0;
    measure(&s, &mut p, false)?;
    let pid = server.pid().to_string();
    run_cmd("callgrind_control", &["-z", &pid])?;
    s.duration_s = o.callgrind_requests as f64 / s.rate;
    let (r, _) = measure(&s, &mut p, false)?;
    run_cmd("callgrind_control", &["-d", &pid])?;
    // The same time with no requests: what the idle server costs (timers, the reactor).
    let measured_for = Duration::from_secs_f64(r.measured_s.max(s.duration_s));
    run_cmd("callgrind_control", &["-z", &pid])?;
    std::thread::sleep(measured_for);
    run_cmd("callgrind_control", &["-d", &pid])?;
    if r.ok != o.callgrind_requests {
        return Err(format!(
            "callgrind run: {} of {} requests approved",
            r.ok, o.callgrind_requests
        ));
    }
    server.stop()?;
    // Each -d writes <out>.<n>; its "summary:" / "totals:" line is the count.
    let total_of = |n: u32| -> Result<u64, String> {
        let path = PathBuf::from(format!("{}.{n}", out_file.display()));
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        text.lines()
            .find_map(|l| {
                l.strip_prefix("summary:")
                    .or_else(|| l.strip_prefix("totals:"))
            })
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| format!("no totals in {}", path.display()))
    };
    let (total, idle) = (total_of(1)?, total_of(2)?);
    let per = total.saturating_sub(idle) as f64 / o.callgrind_requests as f64;
    eprintln!(
        "suite: {} {}: {per:.0} instructions per request ({total} with load, {idle} idle)",
        kind.name(),
        tag(protocol)
    );
    Ok(Instructions {
        target: kind.name().into(),
        protocol: tag(protocol).into(),
        requests: o.callgrind_requests,
        instructions: total,
        idle_instructions: idle,
        per_request: per,
    })
}

/// The markdown table and the target ratios.
/// Approved answers per second: in a closed loop a shed answer frees its slot at once, so
/// answers of every kind would count the shedding, not the work.
fn approved(r: &RunResult) -> f64 {
    r.ok as f64 / r.measured_s.max(1e-9)
}

pub fn table(r: &SuiteResult) -> String {
    let mut o = String::new();
    let m = &r.machine;
    let _ = writeln!(
        o,
        "Machine: {} ({} CPUs, {}, Linux {}). Servers pinned to core {}, load generator to core {}.\n\
         Command: `{}`\n",
        m.host, m.cpus, m.cpu_model, m.kernel, r.server_core, r.load_core, r.command
    );
    for protocol in [Protocol::Http, Protocol::Iso8583] {
        let rows: Vec<&Row> = r.rows.iter().filter(|x| x.protocol == protocol).collect();
        if rows.is_empty() {
            continue;
        }
        let half_rate = rows
            .first()
            .and_then(|x| x.half.as_ref())
            .map_or(0.0, |h| h.target_rate);
        let _ = writeln!(
            o,
            "### {} authorize — sustainable rate under p99 ≤ 5 ms; latency at {half_rate:.0}/s (half of corepay's)\n",
            match protocol {
                Protocol::Http => "HTTP `POST /v1/payments`",
                Protocol::Iso8583 => "ISO 8583 0100",
            }
        );
        let _ = writeln!(
            o,
            "| target | sustainable rate /s | p50 ms | p99 ms | p99.9 ms | check |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---|");
        for row in &rows {
            let (p50, p99, p999, check) = match &row.half {
                Some(h) => (
                    h.latency.p50 / 1e3,
                    h.latency.p99 / 1e3,
                    h.latency.p999 / 1e3,
                    match &h.check {
                        Some(c) if c.passed() => "passed",
                        Some(_) => "FAILED",
                        None => "-",
                    },
                ),
                None => (0.0, 0.0, 0.0, "-"),
            };
            let _ = writeln!(
                o,
                "| {} | {:.0} | {p50:.3} | {p99:.3} | {p999:.3} | {check} |",
                row.target.name(),
                row.sustainable_rate
            );
        }
        let find = |k: Kind| rows.iter().find(|x| x.target == k);
        if let (Some(c), Some(n), Some(d)) = (
            find(Kind::Corepay),
            find(Kind::Responder),
            find(Kind::DurableResponder),
        ) {
            let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
            let p99 = |x: &Row| x.half.as_ref().map_or(0.0, |h| h.latency.p99);
            let _ = write!(
                o,
                "\nRatios: corepay / do-nothing rate {:.2} (target ≥ 0.60); corepay / durable ceiling rate {:.2} (target ≥ 0.90); \
                 corepay p99 / durable ceiling p99 at {half_rate:.0}/s {:.2} (target ≤ 1.5)",
                ratio(c.sustainable_rate, n.sustainable_rate),
                ratio(c.sustainable_rate, d.sustainable_rate),
                ratio(p99(c), p99(d)),
            );
            if let Some(pg) = &r.pgbench {
                let _ = write!(
                    o,
                    "; corepay rate / pgbench TPS {:.1} (target ≥ 10)",
                    ratio(c.sustainable_rate, pg.tps)
                );
            }
            o.push('\n');
        }
        o.push('\n');
    }
    for protocol in [Protocol::Http, Protocol::Iso8583] {
        let rows: Vec<&ClosedRow> = r.closed.iter().filter(|x| x.protocol == protocol).collect();
        if rows.is_empty() {
            continue;
        }
        let (conns, window) = closed_shape(protocol);
        let _ = writeln!(
            o,
            "### {} authorize, closed loop ({conns} connections × {window} in flight)\n",
            match protocol {
                Protocol::Http => "HTTP `POST /v1/payments`",
                Protocol::Iso8583 => "ISO 8583 0100, pipelined",
            }
        );
        let _ = writeln!(
            o,
            "| target | approved /s | shed /s | admitted p50 ms | p99 ms | max ms | check |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---|");
        for row in &rows {
            let l = &row.run.admitted_latency;
            let check = match &row.run.check {
                Some(c) if c.passed() => "passed",
                Some(_) => "FAILED",
                None => "-",
            };
            let _ = writeln!(
                o,
                "| {} | {:.0} | {:.0} | {:.3} | {:.3} | {:.3} | {check} |",
                row.target.name(),
                approved(&row.run),
                row.run.shed as f64 / row.run.measured_s.max(1e-9),
                l.p50 / 1e3,
                l.p99 / 1e3,
                l.max / 1e3
            );
        }
        let find = |k: Kind| rows.iter().find(|x| x.target == k);
        if let (Some(c), Some(d)) = (find(Kind::Corepay), find(Kind::DurableResponder)) {
            let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
            let _ = writeln!(
                o,
                "\nRatios: corepay / durable ceiling approved {:.2} (target ≥ 0.90); admitted p99 {:.2} (target ≤ 2)",
                ratio(approved(&c.run), approved(&d.run)),
                ratio(c.run.admitted_latency.p99, d.run.admitted_latency.p99)
            );
        }
        o.push('\n');
    }
    if let Some(pg) = &r.pgbench {
        let _ = writeln!(
            o,
            "### PostgreSQL doing the debit/credit itself: pgbench tpcb-like\n\n\
             {:.0} TPS with 8 clients; at {:.0}/s: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms (latency + schedule lag).\n\
             Settings: {}. Command: {}\n",
            pg.tps, pg.half_rate, pg.half_p50_ms, pg.half_p99_ms, pg.half_p999_ms, pg.settings, pg.command
        );
    }
    if !r.instructions.is_empty() {
        let _ = writeln!(
            o,
            "### Server CPU instructions per request (callgrind, user space; idle time subtracted)\n"
        );
        let _ = writeln!(
            o,
            "| target | protocol | requests | with load | idle, same time | instructions/request |"
        );
        let _ = writeln!(o, "|---|---|---:|---:|---:|---:|");
        for i in &r.instructions {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {:.0} |",
                i.target,
                i.protocol,
                i.requests,
                i.instructions,
                i.idle_instructions,
                i.per_request
            );
        }
        o.push('\n');
    }
    for n in &r.notes {
        let _ = writeln!(o, "Note: {n}");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn counts(http: f64, iso: f64) -> BTreeMap<String, f64> {
        [("http".to_string(), http), ("iso8583".to_string(), iso)]
            .into_iter()
            .collect()
    }

    #[test]
    fn the_instruction_guard_fails_a_regression_above_the_bound_only() {
        let base = InstructionBaseline {
            reason: "test".into(),
            per_request: counts(100_000.0, 100_000.0),
        };
        let ok = |v: Vec<(String, bool)>| v.iter().map(|x| x.1).collect::<Vec<_>>();
        let judged = |m: BTreeMap<String, f64>| ok(judge_instructions(&base, &m, 0.10));
        assert_eq!(judged(counts(109_000.0, 95_000.0)), [true, true]);
        assert_eq!(judged(counts(111_000.0, 100_000.0)), [false, true]);
        assert_eq!(judged(counts(100_000.0, 130_000.0)), [true, false]);
        let missing: BTreeMap<String, f64> = [("http".to_string(), 1.0)].into_iter().collect();
        assert_eq!(judged(missing), [true, false]);
    }
}
