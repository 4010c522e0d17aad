//! Results: the JSON written for every run and sweep, the .hgrm percentile distribution
//! (HdrHistogram's text format, readable by its plotter), the plain-text summary, and
//! `compare`.

use crate::engine::RunStats;
use crate::scenario::Scenario;
use crate::workload::OPS;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Percentiles in microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub p9999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            p9999: us(h.value_at_quantile(0.9999)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OpResult {
    pub ok: u64,
    pub declined: u64,
    pub shed: u64,
    pub errors: u64,
    pub latency: Percentiles,
}

/// Every scheduled request, warm-up included, ends in exactly one of these.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Accounting {
    pub scheduled: u64,
    pub answered: u64,
    pub unsent: u64,
    pub unanswered: u64,
    pub lost: u64,
    pub approved: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    pub host: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
}

impl Machine {
    pub fn this() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Machine {
            host: read("/proc/sys/kernel/hostname").trim().to_string(),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: read("/proc/cpuinfo")
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .unwrap_or("")
                .trim()
                .to_string(),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        }
    }
}

/// The closing correctness check (corepay targets only).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Check {
    pub approved_checked: u64,
    pub approved_missing: u64,
    /// Σ per currency (accounts + treasury + in flight), as corepay prints it.
    pub currency_sums: BTreeMap<String, String>,
    pub conserved: bool,
    /// Payments stored by the gateway during the run vs. creations the harness saw answered.
    pub gateway_payments_delta: Option<u64>,
    pub harness_payments_created: u64,
    /// The gateway's 2xx counter during the run vs. 2xx answers the harness saw.
    pub gateway_2xx_delta: Option<u64>,
    pub harness_2xx: u64,
    pub problems: Vec<String>,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    pub kind: String,
    pub label: String,
    pub started_unix: u64,
    pub machine: Machine,
    pub scenario: Scenario,
    pub target_rate: f64,
    pub achieved_rate: f64,
    pub measured_s: f64,
    pub scheduled: u64,
    pub ok: u64,
    pub declined: u64,
    pub shed: u64,
    pub errors: BTreeMap<String, u64>,
    pub declines: BTreeMap<String, u64>,
    pub accounting: Accounting,
    pub latency: Percentiles,
    /// Latency of answers the gateway did the work for (approved or declined), and of those
    /// it shed (503 / 91), apart.
    #[serde(default)]
    pub admitted_latency: Percentiles,
    #[serde(default)]
    pub shed_latency: Percentiles,
    pub per_op: BTreeMap<String, OpResult>,
    pub dispatch_lag: Percentiles,
    /// (percentile, µs) pairs of the whole distribution, for plots.
    pub spectrum: Vec<(f64, f64)>,
    pub check: Option<Check>,
    pub connects: u64,
    pub connect_failures: u64,
}

impl RunResult {
    pub fn new(s: &Scenario, stats: &RunStats, started_unix: u64) -> RunResult {
        let per_op = OPS
            .iter()
            .enumerate()
            .filter(|(i, _)| !stats.per_op[*i].is_empty() || stats.per_op_counts[*i][3] > 0)
            .map(|(i, name)| {
                let c = stats.per_op_counts[i];
                (
                    name.to_string(),
                    OpResult {
                        ok: c[0],
                        declined: c[1],
                        shed: c[2],
                        errors: c[3],
                        latency: Percentiles::of(&stats.per_op[i]),
                    },
                )
            })
            .collect();
        RunResult {
            kind: "run".into(),
            label: s.label.clone(),
            started_unix,
            machine: Machine::this(),
            scenario: s.clone(),
            target_rate: s.rate,
            achieved_rate: stats.achieved_rate,
            measured_s: stats.measured_s,
            scheduled: stats.scheduled,
            ok: stats.ok,
            declined: stats.declined,
            shed: stats.shed,
            errors: stats.errors.clone(),
            declines: stats.declines.clone(),
            accounting: Accounting {
                scheduled: stats.scheduled_all,
                answered: stats.answered_all,
                unsent: stats.unsent_all,
                unanswered: stats.unanswered_all,
                lost: stats.lost_all,
                approved: stats.ok_all,
            },
            latency: Percentiles::of(&stats.latency),
            admitted_latency: Percentiles::of(&stats.admitted),
            shed_latency: Percentiles::of(&stats.shed_latency),
            per_op,
            dispatch_lag: Percentiles::of(&stats.dispatch_lag),
            spectrum: spectrum(&stats.latency),
            check: None,
            connects: stats.connects,
            connect_failures: stats.connect_failures,
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Sustainable at `bound_ms`: p99 within the bound, nothing lost or unanswered, no
    /// errors or shedding, and the achieved rate within 5% of the target.
    pub fn sustainable(&self, bound_ms: f64) -> bool {
        self.latency.count > 0
            && self.latency.p99 <= bound_ms * 1000.0
            && self.error_count() == 0
            && self.shed == 0
            && self.accounting.unanswered == 0
            && self.accounting.unsent == 0
            && self.achieved_rate >= 0.95 * self.target_rate
    }

    pub fn summary(&self) -> String {
        let mut o = String::new();
        let l = &self.latency;
        let _ = writeln!(
            o,
            "{}  {:?} {:?} -> {}  {} conns x window {}",
            self.label,
            self.scenario.protocol,
            self.scenario.target,
            self.scenario.addr,
            self.scenario.connections,
            self.scenario.window
        );
        if self.scenario.closed_loop {
            let _ = writeln!(
                o,
                "  closed loop ({} in flight): achieved {:.0}/s over {:.1} s (warm-up {:.1} s excluded)",
                self.scenario.connections * self.scenario.window,
                self.achieved_rate,
                self.measured_s,
                self.scenario.warmup_s
            );
        } else {
            let _ = writeln!(
                o,
                "  rate: target {:.0}/s, achieved {:.0}/s over {:.1} s (warm-up {:.1} s excluded)",
                self.target_rate, self.achieved_rate, self.measured_s, self.scenario.warmup_s
            );
        }
        let from = if self.scenario.closed_loop {
            "send"
        } else {
            "scheduled send"
        };
        let _ = writeln!(
            o,
            "  latency from {from} (ms): p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  p99.99 {:.3}  max {:.3}",
            l.p50 / 1e3, l.p90 / 1e3, l.p99 / 1e3, l.p999 / 1e3, l.p9999 / 1e3, l.max / 1e3
        );
        for (what, p) in [
            ("admitted", &self.admitted_latency),
            ("shed", &self.shed_latency),
        ] {
            if p.count > 0 {
                let _ = writeln!(
                    o,
                    "  {what:<8} {:>9} answers (ms): p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
                    p.count,
                    p.p50 / 1e3,
                    p.p90 / 1e3,
                    p.p99 / 1e3,
                    p.p999 / 1e3,
                    p.max / 1e3
                );
            }
        }
        let _ = writeln!(
            o,
            "  answers: {} ok, {} declined, {} shed, {} errors (of {} measured)",
            self.ok,
            self.declined,
            self.shed,
            self.error_count(),
            self.scheduled
        );
        for (k, v) in &self.errors {
            let _ = writeln!(o, "    error {k}: {v}");
        }
        for (k, v) in &self.declines {
            let _ = writeln!(o, "    decline {k}: {v}");
        }
        for (name, r) in &self.per_op {
            let _ = writeln!(
                o,
                "  {name:<11} ok {:>8} declined {:>6} shed {:>6} errors {:>6}  p50 {:.3} p99 {:.3} ms",
                r.ok,
                r.declined,
                r.shed,
                r.errors,
                r.latency.p50 / 1e3,
                r.latency.p99 / 1e3
            );
        }
        let a = &self.accounting;
        let _ = writeln!(
            o,
            "  accounting (warm-up included): scheduled {} = answered {} + unsent {} + unanswered {} + lost {}",
            a.scheduled, a.answered, a.unsent, a.unanswered, a.lost
        );
        let _ = writeln!(
            o,
            "  harness dispatch lag (ms): p99 {:.3} max {:.3}; connects {} (failed {})",
            self.dispatch_lag.p99 / 1e3,
            self.dispatch_lag.max / 1e3,
            self.connects,
            self.connect_failures
        );
        if let Some(c) = &self.check {
            let _ = writeln!(
                o,
                "  check: {} approved payments read back ({} missing); sums {:?}; {}",
                c.approved_checked,
                c.approved_missing,
                c.currency_sums,
                if c.passed() {
                    "PASSED".to_string()
                } else {
                    format!("FAILED: {}", c.problems.join("; "))
                }
            );
        }
        o
    }
}

/// (percentile, µs) at HdrHistogram's usual spectrum points.
fn spectrum(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    h.iter_quantiles(2)
        .map(|v| {
            (
                v.quantile_iterated_to() * 100.0,
                v.value_iterated_to() as f64 / 1000.0,
            )
        })
        .collect()
}

/// The .hgrm text (values in milliseconds), as HdrHistogram's `outputPercentileDistribution`.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let ms = |ns: u64| ns as f64 / 1e6;
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        if q < 1.0 {
            let _ = writeln!(
                o,
                "{:>12.3} {:>14.12} {:>10} {:>14.2}",
                ms(v.value_iterated_to()),
                q,
                total,
                1.0 / (1.0 - q)
            );
        } else {
            let _ = writeln!(
                o,
                "{:>12.3} {:>14.12} {:>10}",
                ms(v.value_iterated_to()),
                q,
                total
            );
        }
    }
    let _ = writeln!(
        o,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        h.mean() / 1e6,
        h.stdev() / 1e6
    );
    let _ = writeln!(
        o,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        ms(h.max()),
        h.len()
    );
    let _ = writeln!(
        o,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        h.distinct_values()
    );
    o
}

/// A step sweep: the rates tried and the highest sustainable one.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SweepResult {
    pub kind: String,
    pub label: String,
    pub p99_bound_ms: f64,
    pub sustainable_rate: f64,
    pub steps: Vec<RunResult>,
}

impl SweepResult {
    pub fn summary(&self) -> String {
        let mut o = format!(
            "{}: highest sustainable rate {:.0}/s (p99 <= {} ms, no errors, no shedding)\n",
            self.label, self.sustainable_rate, self.p99_bound_ms
        );
        let _ = writeln!(
            o,
            "  {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6} {:>6}  ok?",
            "target/s", "done/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "errors", "shed"
        );
        for r in &self.steps {
            let _ = writeln!(
                o,
                "  {:>9.0} {:>9.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>6} {:>6}  {}",
                r.target_rate,
                r.achieved_rate,
                r.latency.p50 / 1e3,
                r.latency.p99 / 1e3,
                r.latency.p999 / 1e3,
                r.latency.max / 1e3,
                r.error_count(),
                r.shed,
                if r.sustainable(self.p99_bound_ms) {
                    "yes"
                } else {
                    "no"
                }
            );
        }
        o
    }
}

/// Any kind of result file.
pub enum AnyResult {
    Run(Box<RunResult>),
    Sweep(SweepResult),
    Soak(Box<crate::soak::SoakResult>),
}

pub fn load(path: &str) -> Result<AnyResult, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))?;
    match v["kind"].as_str() {
        Some("run") => Ok(AnyResult::Run(Box::new(
            serde_json::from_value(v).map_err(|e| format!("{path}: {e}"))?,
        ))),
        Some("sweep") => Ok(AnyResult::Sweep(
            serde_json::from_value(v).map_err(|e| format!("{path}: {e}"))?,
        )),
        Some("soak") => Ok(AnyResult::Soak(Box::new(
            serde_json::from_value(v).map_err(|e| format!("{path}: {e}"))?,
        ))),
        _ => Err(format!("{path}: not a corepay-perf result")),
    }
}

/// `compare A.json B.json`: each figure side by side with B/A.
pub fn compare(a: &AnyResult, b: &AnyResult) -> Result<String, String> {
    if let (AnyResult::Soak(a), AnyResult::Soak(b)) = (a, b) {
        let both = [(**a).clone(), (**b).clone()];
        let mut o = crate::soak::side_by_side(&both);
        let (x, y) = (a.run.latency.max, b.run.latency.max);
        let ratio = if x > 0.0 {
            format!("{:.3}", y / x)
        } else {
            "-".into()
        };
        let _ = writeln!(o, "{:<30} {ratio:>22}", "B/A max latency");
        return Ok(o);
    }
    let rows: Vec<(&str, f64, f64)> = match (a, b) {
        (AnyResult::Run(a), AnyResult::Run(b)) => {
            let mut rows = vec![
                ("target rate /s", a.target_rate, b.target_rate),
                ("achieved rate /s", a.achieved_rate, b.achieved_rate),
            ];
            rows.extend(latency_rows(&a.latency, &b.latency));
            rows.push(("errors", a.error_count() as f64, b.error_count() as f64));
            rows.push(("shed", a.shed as f64, b.shed as f64));
            rows
        }
        (AnyResult::Sweep(a), AnyResult::Sweep(b)) => {
            vec![(
                "sustainable rate /s",
                a.sustainable_rate,
                b.sustainable_rate,
            )]
        }
        _ => return Err("compare two runs, two sweeps or two soaks".into()),
    };
    let (la, lb) = (label(a), label(b));
    let mut o = format!("{:<22} {:>14} {:>14} {:>8}\n", "", la, lb, "B/A");
    for (name, x, y) in rows {
        let ratio = if x != 0.0 {
            format!("{:.2}", y / x)
        } else {
            "-".into()
        };
        let _ = writeln!(o, "{name:<22} {x:>14.3} {y:>14.3} {ratio:>8}");
    }
    Ok(o)
}

fn label(r: &AnyResult) -> String {
    let l = match r {
        AnyResult::Run(r) => &r.label,
        AnyResult::Sweep(s) => &s.label,
        AnyResult::Soak(s) => &s.label,
    };
    l.chars().take(14).collect()
}

fn latency_rows(a: &Percentiles, b: &Percentiles) -> Vec<(&'static str, f64, f64)> {
    vec![
        ("p50 ms", a.p50 / 1e3, b.p50 / 1e3),
        ("p90 ms", a.p90 / 1e3, b.p90 / 1e3),
        ("p99 ms", a.p99 / 1e3, b.p99 / 1e3),
        ("p99.9 ms", a.p999 / 1e3, b.p999 / 1e3),
        ("p99.99 ms", a.p9999 / 1e3, b.p9999 / 1e3),
        ("max ms", a.max / 1e3, b.max / 1e3),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hgrm_has_the_hdrhistogram_layout() {
        let mut h = crate::engine::histogram();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap(); // 1 µs .. 1 ms
        }
        let text = hgrm(&h);
        assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
        assert!(
            text.contains("#[Max     =        1.000, Total count    =         1000]"),
            "{text}"
        );
        let p = Percentiles::of(&h);
        assert!((p.p50 - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99 - 990.0).abs() < 1.0, "{p:?}");
    }
}
