//! SVG plots, written by hand (a few dozen lines beat a plotting dependency): the latency
//! percentile spectrum of runs, latency against throughput from sweeps, and a soak's
//! latency, rate and RSS against payments processed.

use crate::report::{RunResult, SweepResult};
use crate::soak::SoakResult;
use std::fmt::Write;

const W: f64 = 860.0;
const H: f64 = 480.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    dash: Stroke,
    color: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stroke {
    Solid,
    Dashed,
    Dotted,
    DashDot,
}

impl Stroke {
    fn attr(self) -> &'static str {
        match self {
            Stroke::Solid => "",
            Stroke::Dashed => r#" stroke-dasharray="6,4""#,
            Stroke::Dotted => r#" stroke-dasharray="2,3""#,
            Stroke::DashDot => r#" stroke-dasharray="8,3,2,3""#,
        }
    }
}

struct Axes {
    title: String,
    x_label: String,
    y_label: String,
    x_ticks: Vec<(f64, String)>,
    x_max: f64,
    /// The y axis is log10 (values must be positive).
    y_log: bool,
    hline: Option<(f64, String)>,
}

fn chart(a: &Axes, series: &[Series]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    o.push_str(&chart_body(a, series));
    o.push_str("</svg>\n");
    o
}

/// Charts stacked vertically in one SVG, sharing the width (and, by the caller, the x axis).
fn stacked(panels: &[(Axes, Vec<Series>)]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{}" font-family="sans-serif" font-size="12">"#,
        H * panels.len() as f64
    );
    for (i, (a, series)) in panels.iter().enumerate() {
        let _ = writeln!(o, r#"<svg y="{}" width="{W}" height="{H}">"#, H * i as f64);
        o.push_str(&chart_body(a, series));
        o.push_str("</svg>\n");
    }
    o.push_str("</svg>\n");
    o
}

/// A chart's elements (background, axes, grid, series, legend) in a W x H box.
fn chart_body(a: &Axes, series: &[Series]) -> String {
    let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (mut y_min, mut y_max) = ys.fold((f64::MAX, 0.0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    if let Some((y, _)) = a.hline {
        y_max = y_max.max(y);
        y_min = y_min.min(y);
    }
    if y_max <= 0.0 {
        y_max = 1.0;
    }
    let (ty, y_lo, y_hi) = if a.y_log {
        let lo = y_min.max(1e-3).log10().floor();
        let hi = y_max.log10().ceil().max(lo + 1.0);
        (true, lo, hi)
    } else {
        (false, 0.0, y_max * 1.1)
    };
    let yv = |y: f64| if ty { y.max(1e-3).log10() } else { y };
    let px = |x: f64| LEFT + (W - LEFT - RIGHT) * (x / a.x_max.max(1e-9));
    let py = |y: f64| H - BOTTOM - (H - TOP - BOTTOM) * ((yv(y) - y_lo) / (y_hi - y_lo));
    let mut o = String::new();
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        esc(&a.title)
    );
    // Axes and grid.
    let (x0, x1, y0, y1) = (LEFT, W - RIGHT, TOP, H - BOTTOM);
    let _ = writeln!(
        o,
        r#"<path d="M{x0},{y0} V{y1} H{x1}" stroke="black" fill="none"/>"#
    );
    for (x, label) in &a.x_ticks {
        let _ = writeln!(
            o,
            r##"<line x1="{0}" x2="{0}" y1="{y0}" y2="{y1}" stroke="#ddd"/><text x="{0}" y="{1}" text-anchor="middle">{2}</text>"##,
            px(*x),
            y1 + 16.0,
            esc(label)
        );
    }
    let y_ticks: Vec<f64> = if ty {
        (y_lo as i32..=y_hi as i32).map(|e| 10f64.powi(e)).collect()
    } else {
        (0..=5).map(|i| y_hi * i as f64 / 5.0).collect()
    };
    for y in y_ticks {
        let _ = writeln!(
            o,
            r##"<line x1="{x0}" x2="{x1}" y1="{0}" y2="{0}" stroke="#ddd"/><text x="{1}" y="{2}" text-anchor="end">{3}</text>"##,
            py(y),
            x0 - 6.0,
            py(y) + 4.0,
            trim(y)
        );
    }
    let _ = writeln!(
        o,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (x0 + x1) / 2.0,
        H - 12.0,
        esc(&a.x_label)
    );
    let _ = writeln!(
        o,
        r#"<text transform="translate(18,{}) rotate(-90)" text-anchor="middle">{}</text>"#,
        (y0 + y1) / 2.0,
        esc(&a.y_label)
    );
    if let Some((y, label)) = &a.hline {
        let _ = writeln!(
            o,
            r##"<line x1="{x0}" x2="{x1}" y1="{0}" y2="{0}" stroke="#000" stroke-dasharray="2,4"/><text x="{x1}" y="{1}" text-anchor="end">{2}</text>"##,
            py(*y),
            py(*y) - 4.0,
            esc(label)
        );
    }
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[s.color % COLORS.len()];
        let path: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let dash = s.dash.attr();
        let _ = writeln!(
            o,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
            path.join(" ")
        );
        let ly = TOP + 10.0 + 18.0 * i as f64;
        let _ = writeln!(
            o,
            r#"<line x1="{0}" x2="{1}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/><text x="{2}" y="{3}">{4}</text>"#,
            x1 + 12.0,
            x1 + 36.0,
            x1 + 42.0,
            ly + 4.0,
            esc(&s.name)
        );
    }
    o
}

fn trim(v: f64) -> String {
    if v >= 100.0 || v == 0.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Latency by percentile; x is log10(1 / (1 - p)), as HdrHistogram's plotter draws it.
pub fn spectrum(runs: &[RunResult]) -> String {
    let x_of = |p: f64| (1.0 / (1.0 - (p / 100.0).min(0.999_999))).log10();
    let series: Vec<Series> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| Series {
            name: format!("{} @ {:.0}/s", r.label, r.target_rate),
            points: r
                .spectrum
                .iter()
                .map(|&(p, us)| (x_of(p), us / 1e3))
                .collect(),
            dash: Stroke::Solid,
            color: i,
        })
        .collect();
    let ticks = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"];
    chart(
        &Axes {
            title: "Latency by percentile (from scheduled send time)".into(),
            x_label: "percentile".into(),
            y_label: "latency (ms)".into(),
            x_ticks: ticks
                .iter()
                .enumerate()
                .map(|(i, t)| (i as f64, t.to_string()))
                .collect(),
            x_max: 6.0,
            y_log: false,
            hline: None,
        },
        &series,
    )
}

/// p50 (dashed) and p99 against achieved throughput, one colour per sweep.
pub fn sweeps(sweeps: &[SweepResult]) -> String {
    let mut series = Vec::new();
    let mut x_max: f64 = 1.0;
    for (i, s) in sweeps.iter().enumerate() {
        let pts = |f: &dyn Fn(&RunResult) -> f64| -> Vec<(f64, f64)> {
            s.steps
                .iter()
                .map(|r| (r.achieved_rate, f(r) / 1e3))
                .collect()
        };
        x_max = s
            .steps
            .iter()
            .map(|r| r.achieved_rate)
            .fold(x_max, f64::max);
        series.push(Series {
            name: format!("{} p99", s.label),
            points: pts(&|r| r.latency.p99),
            dash: Stroke::Solid,
            color: i,
        });
        series.push(Series {
            name: format!("{} p50", s.label),
            points: pts(&|r| r.latency.p50),
            dash: Stroke::Dashed,
            color: i,
        });
    }
    let step = nice_step(x_max / 6.0);
    let x_max = (x_max / step).ceil() * step;
    let x_ticks = (0..=(x_max / step) as usize)
        .map(|i| (i as f64 * step, format!("{}", i as f64 * step)))
        .collect();
    let bound = sweeps.first().map(|s| s.p99_bound_ms).unwrap_or(5.0);
    chart(
        &Axes {
            title: "Latency against throughput (step sweep)".into(),
            x_label: "achieved rate (requests/s)".into(),
            y_label: "latency (ms, log)".into(),
            x_ticks,
            x_max,
            y_log: true,
            hline: Some((bound, format!("p99 bound {bound} ms"))),
        },
        &series,
    )
}

fn nice_step(raw: f64) -> f64 {
    let mag = 10f64.powf(raw.max(1e-9).log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

/// Most points drawn per series: longer soaks are drawn from buckets of windows.
const SOAK_POINTS: usize = 1500;

/// How the windows of one bucket become one point.
#[derive(Clone, Copy)]
enum Combine {
    /// The worst (latency: a spike must stay visible).
    Max,
    Mean,
    /// The latest (RSS: a level).
    Last,
}

/// At most `max` points: consecutive points grouped, each group drawn at its last x.
fn downsample(points: &[(f64, f64)], max: usize, how: Combine) -> Vec<(f64, f64)> {
    assert!(max > 0);
    let per = points.len().div_ceil(max).max(1);
    points
        .chunks(per)
        .map(|c| {
            let x = c[c.len() - 1].0;
            let y = match how {
                Combine::Max => c.iter().map(|p| p.1).fold(f64::MIN, f64::max),
                Combine::Mean => c.iter().map(|p| p.1).sum::<f64>() / c.len() as f64,
                Combine::Last => c[c.len() - 1].1,
            };
            (x, y)
        })
        .collect()
}

/// `1500`, `250k`, `2.5M`: tick labels for counts.
fn count_label(v: f64) -> String {
    let (n, unit) = if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e4 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let text = format!("{n:.2}");
    format!("{}{unit}", text.trim_end_matches('0').trim_end_matches('.'))
}

/// A soak, or several side by side: latency (p50 dashed, p99 solid, max dotted, cold p99
/// dash-dotted; log scale), achieved rate, and the gateway's RSS, each against payments
/// processed. One colour per metric for one soak, per soak for several.
pub fn soak(soaks: &[SoakResult]) -> String {
    let many = soaks.len() > 1;
    let x_max = soaks
        .iter()
        .flat_map(|s| s.windows.iter().map(|w| w.processed as f64))
        .fold(1.0, f64::max);
    let step = nice_step(x_max / 6.0);
    let x_end = (x_max / step).ceil() * step;
    let x_ticks: Vec<(f64, String)> = (0..=(x_end / step) as usize)
        .map(|i| (i as f64 * step, count_label(i as f64 * step)))
        .collect();
    let axes = |title: &str, y_label: &str, y_log: bool| Axes {
        title: title.into(),
        x_label: "payments processed (requests answered)".into(),
        y_label: y_label.into(),
        x_ticks: x_ticks.clone(),
        x_max: x_end,
        y_log,
        hline: None,
    };
    let (mut latency, mut rate, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    for (i, s) in soaks.iter().enumerate() {
        let name = |what: &str| {
            if many {
                format!("{} {what}", s.short_label())
            } else {
                what.to_string()
            }
        };
        let color = |metric: usize| if many { i } else { metric };
        let answered: Vec<_> = s.windows.iter().filter(|w| w.answered > 0).collect();
        let pts = |f: &dyn Fn(&crate::window::Window) -> f64| -> Vec<(f64, f64)> {
            answered
                .iter()
                .map(|w| (w.processed as f64, f(w)))
                .collect()
        };
        for (m, (what, dash, f)) in [
            (
                "p50",
                Stroke::Dashed,
                (|w| w.p50_ms) as fn(&crate::window::Window) -> f64,
            ),
            ("p99", Stroke::Solid, |w| w.p99_ms),
            ("max", Stroke::Dotted, |w| w.max_ms),
        ]
        .into_iter()
        .enumerate()
        {
            latency.push(Series {
                name: name(what),
                points: downsample(&pts(&f), SOAK_POINTS, Combine::Max),
                dash,
                color: color(m),
            });
        }
        let cold: Vec<(f64, f64)> = s
            .windows
            .iter()
            .filter(|w| w.cold > 0)
            .map(|w| (w.processed as f64, w.cold_p99_ms))
            .collect();
        if !cold.is_empty() {
            latency.push(Series {
                name: name("cold p99"),
                points: downsample(&cold, SOAK_POINTS, Combine::Max),
                dash: Stroke::DashDot,
                color: if many { i } else { 3 },
            });
        }
        let during: Vec<(f64, f64)> = s
            .windows
            .iter()
            .filter(|w| w.start_s < s.schedule_end_s)
            .map(|w| (w.processed as f64, w.rate))
            .collect();
        rate.push(Series {
            name: name("achieved /s"),
            points: downsample(&during, SOAK_POINTS, Combine::Mean),
            dash: Stroke::Solid,
            color: color(0),
        });
        let mem: Vec<(f64, f64)> = s
            .windows
            .iter()
            .filter_map(|w| Some((w.processed as f64, w.rss_bytes? as f64 / (1 << 20) as f64)))
            .collect();
        if !mem.is_empty() {
            rss.push(Series {
                name: name("RSS"),
                points: downsample(&mem, SOAK_POINTS, Combine::Last),
                dash: Stroke::Solid,
                color: color(0),
            });
        }
    }
    let window_ms = soaks.first().map_or(1000, |s| s.window_ms);
    stacked(&[
        (
            axes(
                &format!("Latency per {window_ms} ms window (from scheduled send)"),
                "latency (ms, log)",
                true,
            ),
            latency,
        ),
        (axes("Achieved rate per window", "requests/s", false), rate),
        (
            axes("Gateway resident memory (VmRSS)", "RSS (MiB)", false),
            rss,
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsampling_keeps_spikes_levels_and_the_last_point() {
        let pts: Vec<(f64, f64)> = (0..10)
            .map(|i| (i as f64, if i == 3 { 50.0 } else { 1.0 }))
            .collect();
        let max = downsample(&pts, 4, Combine::Max);
        assert_eq!(max, [(2.0, 1.0), (5.0, 50.0), (8.0, 1.0), (9.0, 1.0)]);
        let mean = downsample(&pts, 4, Combine::Mean);
        assert!((mean[1].1 - 52.0 / 3.0).abs() < 1e-9);
        let last = downsample(&pts, 4, Combine::Last);
        assert_eq!(last[1], (5.0, 1.0));
        assert_eq!(downsample(&pts, 100, Combine::Max), pts);
        assert!(downsample(&[], 10, Combine::Max).is_empty());
    }

    #[test]
    fn count_labels_are_short() {
        assert_eq!(count_label(0.0), "0");
        assert_eq!(count_label(1500.0), "1500");
        assert_eq!(count_label(250_000.0), "250k");
        assert_eq!(count_label(2_500_000.0), "2.5M");
        assert_eq!(count_label(10_000_000.0), "10M");
    }
}
