//! `corepay-perf overload`: what a gateway does with more than it can take.
//!
//! Finds the sustainable rate (a sweep, or `--sustainable R`), runs at half of it for the
//! reference latency, then at `--factor` (2) times it, open loop, and judges the overloaded
//! run as issue 10 asks: answered 2xx / 00 at ≥ 0.8× the sustainable rate, admitted p99 ≤ 2×
//! the half-load p99, shed answers' p99 < 1 ms, no connection errors, nothing unanswered, and
//! the closing check passes (corepay). Admitted and shed latencies are reported apart.

use crate::cli::Args;
use crate::report::{Percentiles, RunResult};
use crate::scenario::{Scenario, Target};
use crate::{measure, out_dir, prepare, sweep, to_json, write};
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Serialize)]
struct Criterion {
    what: String,
    value: f64,
    bound: f64,
    met: bool,
}

#[derive(Serialize)]
struct OverloadResult {
    kind: String,
    label: String,
    sustainable_rate: f64,
    factor: f64,
    half: RunResult,
    over: RunResult,
    criteria: Vec<Criterion>,
}

pub fn cmd_overload(a: &Args) -> Result<i32, String> {
    let s = Scenario::from_args(a)?;
    let given: Option<f64> = a.parsed("sustainable")?;
    let factor: f64 = a.parsed("factor")?.unwrap_or(2.0);
    let dir = out_dir(a)?;
    a.finish()?;
    if factor.is_nan() || factor <= 1.0 {
        return Err("--factor: more than 1".into());
    }
    let mut p = prepare(&s, true)?;
    let sustainable = match given {
        Some(r) => r,
        None => {
            eprintln!(
                "overload {}: sweeping for the sustainable rate (p99 <= {} ms)",
                s.label, s.sweep.p99_bound_ms
            );
            let sw = sweep(&s, &mut p, true)?;
            write(
                &dir.join(format!("{}-overload-sweep.json", s.label)),
                &to_json(&sw)?,
            )?;
            sw.sustainable_rate
        }
    };
    if sustainable <= 0.0 {
        return Err("no sustainable rate: nothing to overload".into());
    }
    let checked = s.target == Target::Corepay;
    let at = |rate: f64, seed: u64| {
        let mut st = s.clone();
        st.rate = rate;
        st.workload.seed = s.workload.seed + seed;
        st
    };
    eprintln!(
        "overload {}: half load, {:.0}/s",
        s.label,
        sustainable / 2.0
    );
    let (half, _) = measure(&at(sustainable / 2.0, 1000), &mut p, false)?;
    eprintln!(
        "overload {}: {factor}x, {:.0}/s",
        s.label,
        sustainable * factor
    );
    let (over, _) = measure(&at(sustainable * factor, 2000), &mut p, checked)?;
    let criteria = judge(sustainable, &half, &over);
    let result = OverloadResult {
        kind: "overload".into(),
        label: s.label.clone(),
        sustainable_rate: sustainable,
        factor,
        half,
        over,
        criteria,
    };
    let base = dir.join(format!("{}-overload", s.label));
    write(&base.with_extension("json"), &to_json(&result)?)?;
    let text = summary(&result);
    write(&base.with_extension("txt"), &text)?;
    print!("{text}");
    println!("  wrote {}.{{json,txt}}", base.display());
    Ok(if result.criteria.iter().all(|c| c.met) {
        0
    } else {
        1
    })
}

fn judge(sustainable: f64, half: &RunResult, over: &RunResult) -> Vec<Criterion> {
    let ms = |us: f64| us / 1e3;
    let ok_rate = if over.measured_s > 0.0 {
        over.ok as f64 / over.measured_s
    } else {
        0.0
    };
    let reference = admitted_or_all(half);
    let shed_p99 = if over.shed_latency.count > 0 {
        ms(over.shed_latency.p99)
    } else {
        0.0
    };
    let a = &over.accounting;
    let mut c = vec![
        Criterion {
            what: "2xx/00 answers per second, over the sustainable rate".into(),
            value: ok_rate / sustainable,
            bound: 0.8,
            met: ok_rate >= 0.8 * sustainable,
        },
        Criterion {
            what: "admitted p99 (ms), against 2x the half-load p99".into(),
            value: ms(admitted_or_all(over).p99),
            bound: 2.0 * ms(reference.p99),
            met: admitted_or_all(over).p99 <= 2.0 * reference.p99,
        },
        Criterion {
            what: "shed answers p99 (ms)".into(),
            value: shed_p99,
            bound: 1.0,
            met: shed_p99 < 1.0,
        },
        Criterion {
            what: "connection errors, failed connects and lost requests".into(),
            value: (over.error_count() + over.connect_failures + a.lost) as f64,
            bound: 0.0,
            met: over.error_count() + over.connect_failures + a.lost == 0,
        },
        Criterion {
            what: "requests unanswered or never sent".into(),
            value: (a.unanswered + a.unsent) as f64,
            bound: 0.0,
            met: a.unanswered + a.unsent == 0,
        },
    ];
    if let Some(check) = &over.check {
        c.push(Criterion {
            what: format!(
                "closing check problems{}",
                if check.passed() {
                    String::new()
                } else {
                    format!(": {}", check.problems.join("; "))
                }
            ),
            value: check.problems.len() as f64,
            bound: 0.0,
            met: check.passed(),
        });
    }
    c
}

/// The admitted latency, or (a run with no admitted answers recorded apart, such as a
/// result from before the split) the whole.
fn admitted_or_all(r: &RunResult) -> &Percentiles {
    if r.admitted_latency.count > 0 {
        &r.admitted_latency
    } else {
        &r.latency
    }
}

fn summary(r: &OverloadResult) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "overload {}: sustainable {:.0}/s, half load {:.0}/s, overload {:.0}/s ({}x)",
        r.label, r.sustainable_rate, r.half.target_rate, r.over.target_rate, r.factor
    );
    let _ = writeln!(o, "half load:");
    o.push_str(&r.half.summary());
    let _ = writeln!(o, "overload:");
    o.push_str(&r.over.summary());
    let _ = writeln!(o, "criteria:");
    for c in &r.criteria {
        let _ = writeln!(
            o,
            "  {:<4} {}: {:.3} (bound {:.3})",
            if c.met { "met" } else { "NOT" },
            c.what,
            c.value,
            c.bound
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Accounting;

    fn run(rate: f64, ok: u64, admitted_p99_ms: f64, shed: u64, shed_p99_ms: f64) -> RunResult {
        let stats = crate::engine::RunStats::new();
        let mut r = RunResult::new(&Scenario::default(), &stats, 0);
        r.target_rate = rate;
        r.measured_s = 10.0;
        r.ok = ok;
        r.shed = shed;
        r.errors.clear();
        r.connect_failures = 0;
        r.check = None;
        r.accounting = Accounting::default();
        r.admitted_latency = Percentiles {
            count: ok,
            p99: admitted_p99_ms * 1e3,
            ..Percentiles::default()
        };
        r.shed_latency = Percentiles {
            count: shed,
            p99: shed_p99_ms * 1e3,
            ..Percentiles::default()
        };
        r
    }

    #[test]
    fn overload_criteria_pass_only_when_each_holds() {
        let half = run(500.0, 5_000, 2.0, 0, 0.0);
        let good = run(2_000.0, 9_000, 3.9, 11_000, 0.4);
        assert!(judge(1_000.0, &half, &good).iter().all(|c| c.met));
        let too_few = run(2_000.0, 7_000, 3.9, 13_000, 0.4);
        let slow = run(2_000.0, 9_000, 4.1, 11_000, 0.4);
        let slow_shed = run(2_000.0, 9_000, 3.9, 11_000, 1.0);
        let mut unanswered = good.clone();
        unanswered.accounting.unanswered = 1;
        for (bad, which) in [(too_few, 0), (slow, 1), (slow_shed, 2), (unanswered, 4)] {
            let c = judge(1_000.0, &half, &bad);
            assert!(!c[which].met, "{}", c[which].what);
            assert_eq!(c.iter().filter(|c| !c.met).count(), 1);
        }
    }
}
