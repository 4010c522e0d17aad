//! corepay-perf: the open-loop load harness, its baselines and its reports. See
//! perf/README.md for the method and how to read the output.
//!
//! ```text
//! corepay-perf run      [--scenario F] [flags] [--out DIR]   fixed rate for a duration
//! corepay-perf sweep    [--scenario F] [flags] [--out DIR]   raise the rate until p99 > bound
//! corepay-perf soak     [--scenario F] [flags] [--out DIR]   a fixed rate for millions of
//!                       payments, window by window (--gateway-pid P | --start-gateway)
//! corepay-perf overload [--scenario F] [--sustainable R] [--factor 2] [flags] [--out DIR]
//!                       half load, then overload: admitted and shed latency apart, judged
//! corepay-perf compare  A.json B.json                        figures side by side, B/A
//! corepay-perf plot     spectrum|sweep|soak OUT.svg R.json... SVG plots
//! corepay-perf responder --http ADDR --iso ADDR [--durable DIR] [--core N]
//! corepay-perf suite    [--out DIR] [flags]                  every baseline, one table
//! corepay-perf instructions [--baseline F] [--max-regression 0.10] [--write-baseline WHY]
//!                       corepay's instructions per authorization against a committed baseline
//! ```

/// The gateway's allocator: `drive` (the instruction-count guard) runs corepay's request path
/// in this process, and must allocate as the gateway does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod admin;
mod check;
mod cli;
mod engine;
mod inproc;
mod overload;
mod plot;
mod report;
mod responder;
mod scenario;
mod soak;
mod suite;
mod tls;
mod window;
mod workload;

use cli::Args;
use report::{AnyResult, RunResult, SweepResult};
use scenario::{Scenario, Target};
use std::path::{Path, PathBuf};
use workload::{Generator, World};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprintln!(
            "usage: corepay-perf run|sweep|soak|overload|compare|plot|responder|suite|instructions|drive|handshakes ... (see perf/README.md)"
        );
        std::process::exit(2);
    };
    let result = Args::parse(rest.iter().cloned()).and_then(|a| match command.as_str() {
        "run" => cmd_run(&a),
        "sweep" => cmd_sweep(&a),
        "soak" => soak::cmd_soak(&a),
        "overload" => overload::cmd_overload(&a),
        "compare" => cmd_compare(&a),
        "plot" => cmd_plot(&a),
        "responder" => cmd_responder(&a),
        "suite" => suite::cmd_suite(&a),
        "instructions" => suite::cmd_instructions(&a),
        "drive" => inproc::cmd_drive(&a),
        "handshakes" => tls::cmd_handshakes(&a),
        _ => Err(format!("unknown command {command:?}")),
    });
    match result {
        Ok(0) => {}
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("corepay-perf: {e}");
            std::process::exit(2);
        }
    }
}

pub fn out_dir(a: &Args) -> Result<PathBuf, String> {
    let dir = PathBuf::from(a.get("out").unwrap_or("perf/results"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("--out {}: {e}", dir.display()))?;
    Ok(dir)
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A prepared target: its world, and (for corepay) an admin connection.
pub struct Prepared {
    pub world: World,
    pub admin: Option<admin::Admin>,
}

pub fn prepare(s: &Scenario, provision: bool) -> Result<Prepared, String> {
    if s.target == Target::Responder {
        return Ok(Prepared {
            world: World::for_responder(s),
            admin: None,
        });
    }
    let mut admin = admin::Admin::new(s.admin_addr, &workload::admin_key(s)?);
    let world = if provision {
        workload::provision(s, &mut admin, true)?
    } else {
        return Err(
            "--no-provision is not supported against corepay: merchant keys are issued per run"
                .into(),
        );
    };
    Ok(Prepared {
        world,
        admin: Some(admin),
    })
}

/// One fixed-rate run, with the closing check when `check` and the target is corepay.
pub fn measure(
    s: &Scenario,
    p: &mut Prepared,
    check: bool,
) -> Result<(RunResult, hdrhistogram::Histogram<u64>), String> {
    let started = now_unix();
    let before = match (&mut p.admin, check) {
        (Some(admin), true) => Some(check::before(admin, s.metrics_addr)?),
        _ => None,
    };
    let stats = engine::run(s, Generator::new(s, p.world.clone()))?;
    let mut result = RunResult::new(s, &stats, started);
    if let (Some(admin), Some(before)) = (&mut p.admin, before) {
        result.check = Some(check::after(
            admin,
            s,
            s.metrics_addr,
            &p.world,
            &stats,
            &before,
        )?);
    }
    assert_eq!(
        stats.accounted_all(),
        stats.scheduled_all,
        "every scheduled request ends exactly once"
    );
    Ok((result, stats.latency))
}

fn cmd_run(a: &Args) -> Result<i32, String> {
    let s = Scenario::from_args(a)?;
    let check = !a.has("no-check");
    let dir = out_dir(a)?;
    a.finish()?;
    let mut p = prepare(&s, true)?;
    let (result, hist) = measure(&s, &mut p, check)?;
    let base = dir.join(&s.label);
    write(&base.with_extension("json"), &to_json(&result)?)?;
    write(&base.with_extension("hgrm"), &report::hgrm(&hist))?;
    write(
        &base.with_extension("svg"),
        &plot::spectrum(std::slice::from_ref(&result)),
    )?;
    print!("{}", result.summary());
    println!("  wrote {}.{{json,hgrm,svg}}", base.display());
    Ok(match &result.check {
        Some(c) if !c.passed() => 1,
        _ => 0,
    })
}

pub fn to_json<T: serde::Serialize>(v: &T) -> Result<String, String> {
    serde_json::to_string_pretty(v).map_err(|e| e.to_string())
}

/// Raises the rate by `factor` until a step is not sustainable, then bisects.
pub fn sweep(s: &Scenario, p: &mut Prepared, log: bool) -> Result<SweepResult, String> {
    let bound = s.sweep.p99_bound_ms;
    let mut steps: Vec<RunResult> = Vec::new();
    let step = |rate: f64, steps: &mut Vec<RunResult>, p: &mut Prepared| -> Result<bool, String> {
        let mut st = s.clone();
        st.rate = rate;
        st.duration_s = s.sweep.step_s;
        st.workload.seed = s.workload.seed + steps.len() as u64;
        let (r, _) = measure(&st, p, false)?;
        let ok = r.sustainable(bound);
        if log {
            eprintln!(
                "  {:>9.0}/s: achieved {:>9.0}/s  p50 {:.3} ms  p99 {:.3} ms  errors {} shed {}  {}",
                rate,
                r.achieved_rate,
                r.latency.p50 / 1e3,
                r.latency.p99 / 1e3,
                r.error_count(),
                r.shed,
                if ok { "sustainable" } else { "NOT sustainable" }
            );
        }
        steps.push(r);
        Ok(ok)
    };
    let mut good = 0.0;
    let mut rate = s.sweep.start_rate;
    let mut bad = None;
    while rate <= s.sweep.max_rate {
        if step(rate, &mut steps, p)? {
            good = rate;
            rate *= s.sweep.factor;
        } else {
            bad = Some(rate);
            break;
        }
    }
    if let Some(mut hi) = bad {
        let mut lo = good;
        for _ in 0..s.sweep.refine {
            let mid = if lo > 0.0 {
                (lo + hi) / 2.0
            } else {
                hi / s.sweep.factor
            };
            if step(mid, &mut steps, p)? {
                lo = mid;
                good = mid;
            } else {
                hi = mid;
            }
        }
    }
    steps.sort_by(|a, b| a.target_rate.total_cmp(&b.target_rate));
    Ok(SweepResult {
        kind: "sweep".into(),
        label: s.label.clone(),
        p99_bound_ms: bound,
        sustainable_rate: good,
        steps,
    })
}

fn cmd_sweep(a: &Args) -> Result<i32, String> {
    let s = Scenario::from_args(a)?;
    let check = !a.has("no-check");
    let dir = out_dir(a)?;
    a.finish()?;
    let mut p = prepare(&s, true)?;
    eprintln!(
        "sweep {}: from {:.0}/s x{} until p99 > {} ms",
        s.label, s.sweep.start_rate, s.sweep.factor, s.sweep.p99_bound_ms
    );
    let result = sweep(&s, &mut p, true)?;
    let base = dir.join(format!("{}-sweep", s.label));
    write(&base.with_extension("json"), &to_json(&result)?)?;
    write(
        &base.with_extension("svg"),
        &plot::sweeps(std::slice::from_ref(&result)),
    )?;
    print!("{}", result.summary());
    println!("  wrote {}.{{json,svg}}", base.display());
    if check && s.target == Target::Corepay {
        // A short run at a gentle rate, checked end to end.
        let mut st = s.clone();
        st.rate = (result.sustainable_rate / 2.0).max(100.0);
        st.duration_s = 2.0;
        st.warmup_s = 0.0;
        let (r, _) = measure(&st, &mut p, true)?;
        let c = r.check.expect("checked");
        println!(
            "  closing check: {}",
            if c.passed() {
                "PASSED".into()
            } else {
                c.problems.join("; ")
            }
        );
        if !c.passed() {
            return Ok(1);
        }
    }
    Ok(0)
}

fn cmd_compare(a: &Args) -> Result<i32, String> {
    a.finish()?;
    let [x, y] = a.positional.as_slice() else {
        return Err("usage: corepay-perf compare A.json B.json".into());
    };
    print!("{}", report::compare(&report::load(x)?, &report::load(y)?)?);
    Ok(0)
}

fn cmd_plot(a: &Args) -> Result<i32, String> {
    a.finish()?;
    let [what, out, files @ ..] = a.positional.as_slice() else {
        return Err("usage: corepay-perf plot spectrum|sweep|soak OUT.svg RESULT.json...".into());
    };
    let loaded = files
        .iter()
        .map(|f| report::load(f))
        .collect::<Result<Vec<_>, _>>()?;
    let svg = match what.as_str() {
        "spectrum" => {
            let runs: Vec<RunResult> = loaded
                .into_iter()
                .filter_map(|r| match r {
                    AnyResult::Run(r) => Some(*r),
                    _ => None,
                })
                .collect();
            plot::spectrum(&runs)
        }
        "sweep" => {
            let sweeps: Vec<SweepResult> = loaded
                .into_iter()
                .filter_map(|r| match r {
                    AnyResult::Sweep(s) => Some(s),
                    _ => None,
                })
                .collect();
            plot::sweeps(&sweeps)
        }
        "soak" => {
            let soaks: Vec<soak::SoakResult> = loaded
                .into_iter()
                .filter_map(|r| match r {
                    AnyResult::Soak(s) => Some(*s),
                    _ => None,
                })
                .collect();
            plot::soak(&soaks)
        }
        _ => return Err(format!("plot {what:?}: spectrum, sweep or soak")),
    };
    write(Path::new(out), &svg)?;
    Ok(0)
}

fn cmd_responder(a: &Args) -> Result<i32, String> {
    let opts = responder::ResponderOpts {
        http: a.parsed("http")?,
        iso: a.parsed("iso")?,
        durable: a.get("durable").map(PathBuf::from),
        core: a.parsed("core")?,
        tls: match (a.get("tls-cert"), a.get("tls-key")) {
            (Some(c), Some(k)) => Some((c.to_string(), k.to_string())),
            (None, None) => None,
            _ => return Err("responder: --tls-cert and --tls-key go together".into()),
        },
    };
    a.finish()?;
    if opts.http.is_none() && opts.iso.is_none() {
        return Err("responder: give --http ADDR and/or --iso ADDR".into());
    }
    responder::run(opts).map_err(|e| format!("responder: {e}"))?;
    Ok(0)
}
