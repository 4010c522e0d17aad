//! What an operator scrapes and alerts on (issue 11): a live gateway's /metrics passes
//! `promtool check metrics` (Prometheus' own linter), the alert rules pass `promtool check
//! rules`, and every metric the Grafana dashboard and the rules query is one that /metrics
//! exposes. promtool comes from `COREPAY_PROMTOOL` (scripts/test.sh sets it) or
//! scripts/promtool-env.sh; without it the test fails, it is never skipped.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const REDIS_URL: &str = "redis://127.0.0.1:6379/";

fn promtool() -> PathBuf {
    if let Ok(p) = std::env::var("COREPAY_PROMTOOL") {
        if !p.is_empty() {
            return PathBuf::from(p);
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/promtool-env.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .expect("run promtool-env.sh");
    assert!(
        out.status.success(),
        "no promtool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Runs promtool with `args`, `stdin` on its standard input; (success, stdout + stderr).
fn run_promtool(args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new(promtool())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Every `corepay_…` identifier in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("corepay_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let before = start.checked_sub(1).map(|b| bytes[b]);
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_') {
            names.insert(text[start..end].to_string());
        }
        i = end;
    }
    names
}

#[test]
fn metrics_pass_promtool_and_every_dashboard_and_alert_metric_is_exposed() {
    let schema = unique("corepay_test");
    let stream = unique("corepay:ops");
    let config = format!(
        "[replication]\npostgres_url = \"{PG_URL}\"\npostgres_schema = \"{schema}\"\n\
         redis_url = \"{REDIS_URL}\"\nredis_stream = \"{stream}\"\n"
    );
    let s = Server::start_with(2, &config);
    create_account(&s, 1, "EUR", "100.00");
    create_account(&s, 2, "EUR", "0.00");
    // Two merchant-side connections held open while /metrics is read.
    let mut held = [s.client(), s.client()];
    for c in &mut held {
        assert_eq!(c.get("/v1/payments/pay_0_1").0, 401);
    }
    // Admin requests (on the operator listener) are in the latency histograms too.
    for _ in 0..2 {
        assert_eq!(s.admin().get("/v1/accounts/1").0, 200);
    }
    let (status, _, body) = raw_get(s.operator, "/metrics").unwrap();
    assert_eq!(status, 200);
    let open: f64 = body
        .lines()
        .filter(|l| l.starts_with("corepay_connections{") && l.contains("listener=\"http\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(open >= 2.0, "{open} open HTTP connections counted");
    let posted: f64 = body
        .lines()
        .filter(|l| l.starts_with("corepay_http_request_duration_seconds_count{"))
        .filter(|l| l.contains("endpoint=\"admin\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(
        posted >= 4.0,
        "{posted} admin requests in the latency histograms"
    );
    // Two shards: each reports its calls outstanding to the other (none now).
    for line in [
        "corepay_mesh_calls_in_flight{shard=\"0\",peer=\"1\"} 0",
        "corepay_mesh_calls_in_flight{shard=\"1\",peer=\"0\"} 0",
    ] {
        assert!(body.lines().any(|l| l == line), "missing {line:?}");
    }

    let (ok, lint) = run_promtool(&["check", "metrics"], &body);
    assert!(
        ok && lint.trim().is_empty(),
        "promtool check metrics:\n{lint}\n{body}"
    );

    let exposed: BTreeSet<String> = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in [
        "configs/corepay-dashboard.json",
        "configs/corepay-alerts.yml",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let queried = metric_names(&text);
        assert!(queried.len() >= 8, "{file} queries only {queried:?}");
        let missing: Vec<&String> = queried.iter().filter(|m| !exposed.contains(*m)).collect();
        assert!(
            missing.is_empty(),
            "{file} queries {missing:?}, which /metrics does not expose"
        );
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("configs/corepay-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() >= 8));

    let rules = root.join("configs/corepay-alerts.yml");
    let (ok, out) = run_promtool(&["check", "rules", rules.to_str().unwrap()], "");
    assert!(ok, "promtool check rules:\n{out}");
}

#[test]
fn metric_names_are_found_in_queries() {
    let names = metric_names(
        "rate(corepay_shed_total[1m]) / x_corepay_no + corepay_wal_fsync_seconds_bucket{le=\"1\"}",
    );
    let expected: BTreeSet<String> = ["corepay_shed_total", "corepay_wal_fsync_seconds_bucket"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(names, expected);
}
