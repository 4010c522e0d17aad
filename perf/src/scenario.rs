//! A load scenario: what to send, how fast, for how long. Read from a TOML file in
//! perf/scenarios/ and then overridden by flags, so a run is always reproducible from its
//! JSON result (which records the scenario it ran).

use crate::cli::Args;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Http,
    Iso8583,
}

/// What the target is: corepay (provisioned, checked afterwards) or a baseline responder,
/// which answers without state (no provisioning, no closing check).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Corepay,
    Responder,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    /// A name for reports.
    pub label: String,
    pub protocol: Protocol,
    pub target: Target,
    /// Where the load goes (HTTP API or ISO 8583 listener).
    pub addr: SocketAddr,
    /// corepay's HTTP API, for provisioning and the closing check (ISO runs too).
    pub admin_addr: SocketAddr,
    /// corepay's operator listener (/metrics), for the approved-count cross-check; optional.
    pub metrics_addr: Option<SocketAddr>,
    /// The admin key; else the environment variable COREPAY_ADMIN_KEY.
    pub admin_key: Option<String>,
    pub connections: usize,
    /// Most requests in flight per connection (HTTP pipelining depth / ISO window).
    pub window: usize,
    /// Requests per second, spread evenly (open loop).
    pub rate: f64,
    /// Closed loop instead (wrk's model): every connection sends its next request as soon
    /// as a window slot frees, `rate` is ignored, and latency counts from the actual send.
    /// For the highest rate a server sustains with `connections × window` in flight; never
    /// for latency under a given load (that is the open loop's job).
    pub closed_loop: bool,
    pub duration_s: f64,
    /// Excluded from every figure (still sent and accounted for).
    pub warmup_s: f64,
    /// How long to wait for answers after the last scheduled send.
    pub drain_s: f64,
    /// Core to pin the load generator to (None: unpinned).
    pub core: Option<usize>,
    /// SCHED_FIFO priority of the load generator's thread (None: normal). On a machine
    /// shared with the gateway, the gateway's helper threads (its WAL sync thread runs at
    /// SCHED_FIFO 1) otherwise delay the sends and reads, and every latency carries that
    /// delay; priority 2 gives the harness what a machine of its own would.
    pub load_rt_priority: Option<i32>,
    /// PEM file of the CA that signed the target's certificate: the load speaks TLS
    /// (HTTPS, or ISO 8583 over TLS) and trusts only that CA. None: plain TCP.
    pub tls_ca_file: Option<String>,
    /// The name the target's certificate is checked against.
    pub tls_server_name: String,
    pub workload: Workload,
    pub mix: Mix,
    pub sweep: Sweep,
    pub soak: Soak,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workload {
    /// Card accounts (each with one card) provisioned through /v1/provision.
    pub accounts: u64,
    pub first_account_id: u64,
    pub merchants: usize,
    pub currency: String,
    pub balance: String,
    pub card_bin: String,
    /// Share of payments whose card account lives on another shard than the merchant's
    /// settlement account (0..1; only possible with more than one shard).
    pub cross_shard: f64,
    /// Share of requests sent by merchant 0 (0 = merchants chosen uniformly).
    pub hot_merchant: f64,
    /// Payment amounts are drawn uniformly from 1.00 up to this many minor units.
    pub max_amount_minor: u64,
    pub seed: u64,
    /// Cold operations act on payments approved at least this many approved payments
    /// earlier (choose it above what the gateway's memory window holds).
    pub cold_after: u64,
}

/// Relative weights of the operations.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mix {
    pub authorize: u32,
    pub sale: u32,
    pub capture: u32,
    pub void: u32,
    pub refund: u32,
    pub balance: u32,
    /// `GET /v1/payments/{id}` of a payment approved `workload.cold_after` payments ago.
    pub cold_read: u32,
    /// Refund (the whole captured amount) of a captured payment approved
    /// `workload.cold_after` payments ago, each once.
    pub cold_refund: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sweep {
    pub start_rate: f64,
    /// Each step multiplies the rate by this factor...
    pub factor: f64,
    /// ...until p99 exceeds this bound (ms), or the rate exceeds `max_rate`.
    pub p99_bound_ms: f64,
    pub max_rate: f64,
    /// Duration of each step (seconds; its warm-up is `warmup_s`).
    pub step_s: f64,
    /// After the first failing step, bisect between the last good and the first bad rate
    /// this many times.
    pub refine: u32,
}

/// `corepay-perf soak`: a fixed rate for many payments, reported window by window.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Soak {
    /// Requests to schedule after the warm-up (0: `duration_s` decides).
    pub payments: u64,
    /// Width of a reporting window (ms).
    pub window_ms: u64,
}

impl Default for Scenario {
    fn default() -> Scenario {
        Scenario {
            label: "corepay".into(),
            protocol: Protocol::Http,
            target: Target::Corepay,
            addr: "127.0.0.1:8080".parse().unwrap(),
            admin_addr: "127.0.0.1:9464".parse().unwrap(),
            metrics_addr: None,
            admin_key: None,
            connections: 8,
            window: 16,
            rate: 1000.0,
            duration_s: 10.0,
            closed_loop: false,
            warmup_s: 2.0,
            drain_s: 5.0,
            core: None,
            load_rt_priority: None,
            tls_ca_file: None,
            tls_server_name: "localhost".into(),
            workload: Workload::default(),
            mix: Mix::default(),
            sweep: Sweep::default(),
            soak: Soak::default(),
        }
    }
}

impl Default for Workload {
    fn default() -> Workload {
        Workload {
            accounts: 10_000,
            first_account_id: 1_000_000,
            merchants: 10,
            currency: "EUR".into(),
            balance: "1000000.00".into(),
            card_bin: "400000".into(),
            cross_shard: 0.0,
            hot_merchant: 0.0,
            max_amount_minor: 10_000,
            seed: 1,
            cold_after: 1_000_000,
        }
    }
}

impl Default for Mix {
    fn default() -> Mix {
        Mix {
            authorize: 1,
            sale: 0,
            capture: 0,
            void: 0,
            refund: 0,
            balance: 0,
            cold_read: 0,
            cold_refund: 0,
        }
    }
}

impl Default for Sweep {
    fn default() -> Sweep {
        Sweep {
            start_rate: 1000.0,
            factor: 1.5,
            p99_bound_ms: 5.0,
            max_rate: 1_000_000.0,
            step_s: 10.0,
            refine: 3,
        }
    }
}

impl Default for Soak {
    fn default() -> Soak {
        Soak {
            payments: 0,
            window_ms: 1000,
        }
    }
}

impl Scenario {
    /// `--scenario FILE` (if given), then the flags that override single keys.
    pub fn from_args(args: &Args) -> Result<Scenario, String> {
        let mut s = match args.get("scenario") {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| format!("scenario {path}: {e}"))?;
                toml::from_str::<Scenario>(&text).map_err(|e| {
                    format!(
                        "scenario {path}: {}",
                        e.message().lines().next().unwrap_or("")
                    )
                })?
            }
            None => Scenario::default(),
        };
        if let Some(v) = args.get("label") {
            s.label = v.into();
        }
        if let Some(v) = args.get("protocol") {
            s.protocol = match v {
                "http" => Protocol::Http,
                "iso8583" | "iso" => Protocol::Iso8583,
                _ => return Err(format!("--protocol: http or iso8583, not {v:?}")),
            };
        }
        if let Some(v) = args.get("target") {
            s.target = match v {
                "corepay" => Target::Corepay,
                "responder" => Target::Responder,
                _ => return Err(format!("--target: corepay or responder, not {v:?}")),
            };
        }
        macro_rules! set {
            ($($flag:literal => $field:expr),* $(,)?) => {
                $( if let Some(v) = args.parsed($flag)? { $field = v; } )*
            };
        }
        set! {
            "addr" => s.addr,
            "admin-addr" => s.admin_addr,
            "connections" => s.connections,
            "window" => s.window,
            "rate" => s.rate,
            "duration" => s.duration_s,
            "warmup" => s.warmup_s,
            "drain" => s.drain_s,
            "accounts" => s.workload.accounts,
            "first-account" => s.workload.first_account_id,
            "merchants" => s.workload.merchants,
            "cross-shard" => s.workload.cross_shard,
            "hot-merchant" => s.workload.hot_merchant,
            "seed" => s.workload.seed,
            "cold-after" => s.workload.cold_after,
            "start-rate" => s.sweep.start_rate,
            "factor" => s.sweep.factor,
            "p99-bound-ms" => s.sweep.p99_bound_ms,
            "max-rate" => s.sweep.max_rate,
            "step" => s.sweep.step_s,
            "refine" => s.sweep.refine,
        }
        if let Some(v) = args.parsed::<SocketAddr>("metrics-addr")? {
            s.metrics_addr = Some(v);
        }
        if let Some(v) = args.parsed::<usize>("core")? {
            s.core = Some(v);
        }
        if let Some(v) = args.parsed::<i32>("load-rt-priority")? {
            s.load_rt_priority = Some(v);
        }
        if args.has("closed-loop") {
            s.closed_loop = true;
        }
        if let Some(v) = args.get("tls") {
            s.tls_ca_file = Some(v.into());
        }
        if let Some(v) = args.get("tls-name") {
            s.tls_server_name = v.into();
        }
        if let Some(v) = args.get("admin-key") {
            s.admin_key = Some(v.into());
        }
        if let Some(v) = args.get("mix") {
            s.mix = Mix::parse(v)?;
        }
        s.validate()?;
        Ok(s)
    }

    pub fn validate(&self) -> Result<(), String> {
        let bad = |k: &str, why: &str| Err(format!("{k}: {why}"));
        if self.connections == 0 || self.connections > 10_000 {
            return bad("connections", "1 to 10000");
        }
        if self.window == 0 || self.window > 4096 {
            return bad("window", "1 to 4096");
        }
        if !(self.rate > 0.0 && self.rate.is_finite()) {
            return bad("rate", "a positive number of requests per second");
        }
        if self.duration_s.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
            || self.warmup_s < 0.0
            || self.drain_s < 0.0
        {
            return bad("duration_s", "positive (warmup_s and drain_s not negative)");
        }
        if !(0.0..=1.0).contains(&self.workload.cross_shard) {
            return bad("workload.cross_shard", "a share from 0 to 1");
        }
        if !(0.0..=1.0).contains(&self.workload.hot_merchant) {
            return bad("workload.hot_merchant", "a share from 0 to 1");
        }
        if self.workload.merchants == 0 || self.workload.accounts == 0 {
            return bad(
                "workload.merchants",
                "at least one merchant and one account",
            );
        }
        if self.workload.card_bin.len() != 6
            || !self.workload.card_bin.bytes().all(|b| b.is_ascii_digit())
        {
            return bad("workload.card_bin", "six digits");
        }
        if self.workload.max_amount_minor < 100 {
            return bad("workload.max_amount_minor", "at least 100");
        }
        if self.mix.total() == 0 {
            return bad("mix", "at least one operation with a weight");
        }
        if rustls::pki_types::ServerName::try_from(self.tls_server_name.as_str()).is_err() {
            return bad("tls_server_name", "a DNS name or an IP address");
        }
        if self.mix.balance > 0 && self.protocol == Protocol::Http {
            return bad(
                "mix.balance",
                "over HTTP an account is read on the admin plane (the operator listener), not by merchants; use ISO 8583 (0100, processing code 31)",
            );
        }
        if self.mix.cold_read + self.mix.cold_refund > 0 && self.protocol != Protocol::Http {
            return bad(
                "mix.cold_read",
                "cold operations are HTTP only (ISO 8583 names no payment by id)",
            );
        }
        if self.workload.cold_after == 0 {
            return bad("workload.cold_after", "at least 1");
        }
        if !(100..=3_600_000).contains(&self.soak.window_ms) {
            return bad("soak.window_ms", "100 to 3600000");
        }
        if self.sweep.factor.partial_cmp(&1.0) != Some(std::cmp::Ordering::Greater)
            || self.sweep.start_rate.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
        {
            return bad("sweep.factor", "greater than 1 (and start_rate positive)");
        }
        Ok(())
    }
}

impl Mix {
    pub fn total(&self) -> u32 {
        self.authorize
            + self.sale
            + self.capture
            + self.void
            + self.refund
            + self.balance
            + self.cold_read
            + self.cold_refund
    }

    /// `authorize=60,sale=20,capture=10,void=5,refund=5,cold_read=2` (missing names weigh 0).
    pub fn parse(text: &str) -> Result<Mix, String> {
        let mut m = Mix {
            authorize: 0,
            ..Mix::default()
        };
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("--mix: {part:?} is not name=weight"))?;
            let v: u32 = v.parse().map_err(|_| format!("--mix: bad weight {v:?}"))?;
            match k {
                "authorize" => m.authorize = v,
                "sale" => m.sale = v,
                "capture" => m.capture = v,
                "void" => m.void = v,
                "refund" => m.refund = v,
                "balance" => m.balance = v,
                "cold_read" => m.cold_read = v,
                "cold_refund" => m.cold_refund = v,
                _ => return Err(format!("--mix: unknown operation {k:?}")),
            }
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_scenario_parses_and_is_valid() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let s: Scenario =
                toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            s.validate()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                path.to_str().unwrap().contains(&s.label),
                "{}",
                path.display()
            );
            n += 1;
        }
        assert!(n >= 4);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_by_name() {
        let e = toml::from_str::<Scenario>("rate = 10.0\nconection = 3\n").unwrap_err();
        assert!(e.message().contains("conection"), "{e}");
        let s = Scenario {
            window: 0,
            ..Scenario::default()
        };
        assert_eq!(s.validate().unwrap_err(), "window: 1 to 4096");
        assert!(Mix::parse("authorize=1,refnd=2")
            .unwrap_err()
            .contains("refnd"));
        let m = Mix::parse("sale=3,balance=1").unwrap();
        assert_eq!((m.authorize, m.sale, m.balance, m.total()), (0, 3, 1, 4));
        let m = Mix::parse("sale=8,cold_read=1,cold_refund=1").unwrap();
        assert_eq!((m.cold_read, m.cold_refund, m.total()), (1, 1, 10));
        let e = toml::from_str::<Scenario>("[soak]\npayment = 3\n").unwrap_err();
        assert!(e.message().contains("payment"), "{e}");
        let s = Scenario {
            protocol: Protocol::Iso8583,
            mix: m,
            ..Scenario::default()
        };
        assert!(s.validate().unwrap_err().starts_with("mix.cold_read: "));
        let mut s = Scenario::default();
        s.soak.window_ms = 10;
        assert_eq!(s.validate().unwrap_err(), "soak.window_ms: 100 to 3600000");
    }
}
