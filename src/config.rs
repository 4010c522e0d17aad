//! Configuration: the embedded default, the TOML file that overrides it, and validation that
//! names the key and the reason in one line.
//!
//! `configs/corepay.toml` documents every key; `Config::default()` is the embedded default
//! (`corepay serve` with no file). Never: reads secrets into logs or `Debug` output.

use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: Server,
    pub http: Http,
    pub operator: Operator,
    pub iso8583: Iso8583,
    pub wal: Wal,
    pub payments: Payments,
    pub idempotency: Idempotency,
    pub state: State,
    pub mesh: Mesh,
    pub admission: Admission,
    pub replication: Replication,
    pub secrets: Secrets,
}

/// Admission control per shard (`crate::admission`): what does not fit, or has waited too
/// long, is answered at once with 503 + Retry-After / DE39 91.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admission {
    /// false: only `max_in_flight_per_shard` applies (for benchmarks with and without).
    pub adaptive: bool,
    /// Queue delay (how late a ready task runs) the shard aims to stay under.
    pub queue_delay_target_us: u64,
    /// How long the delay may stay above target before the queue counts as standing; also
    /// the most a request may have waited before the shard looked at it.
    pub interval_ms: u64,
    /// Admission to answer above which the concurrency limit shrinks (a slow disk).
    pub latency_target_ms: u64,
    /// The concurrency limit at start, and the least it shrinks to.
    pub initial_limit: u32,
    pub min_limit: u32,
    /// Requests in flight per shard, follow-ups (captures, refunds, reversals) included.
    pub max_in_flight_per_shard: u32,
}

impl Default for Admission {
    fn default() -> Self {
        let d = crate::admission::AdmissionConfig::DEFAULT;
        Admission {
            adaptive: d.adaptive,
            queue_delay_target_us: d.target_micros,
            interval_ms: d.interval_micros / 1000,
            latency_target_ms: d.latency_target_micros / 1000,
            initial_limit: d.initial_limit,
            min_limit: d.min_limit,
            max_in_flight_per_shard: d.max_in_flight,
        }
    }
}

impl Admission {
    pub fn settings(&self) -> crate::admission::AdmissionConfig {
        crate::admission::AdmissionConfig {
            adaptive: self.adaptive,
            target_micros: self.queue_delay_target_us,
            interval_micros: self.interval_ms * 1000,
            latency_target_micros: self.latency_target_ms * 1000,
            decrease_every_micros: crate::admission::AdmissionConfig::DEFAULT
                .decrease_every_micros
                .min(self.queue_delay_target_us * 5),
            initial_limit: self.initial_limit,
            min_limit: self.min_limit,
            max_in_flight: self.max_in_flight_per_shard,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(50..=1_000_000).contains(&self.queue_delay_target_us) {
            return Err(bad(
                "admission.queue_delay_target_us",
                "must be 50..=1000000",
            ));
        }
        if !(1..=60_000).contains(&self.interval_ms)
            || self.interval_ms * 1000 < self.queue_delay_target_us
        {
            return Err(bad(
                "admission.interval_ms",
                "must be 1..=60000 and at least queue_delay_target_us",
            ));
        }
        if !(1..=60_000).contains(&self.latency_target_ms) {
            return Err(bad("admission.latency_target_ms", "must be 1..=60000"));
        }
        if !(1..=1 << 20).contains(&self.max_in_flight_per_shard) {
            return Err(bad(
                "admission.max_in_flight_per_shard",
                "must be 1..=1048576",
            ));
        }
        if self.initial_limit > self.max_in_flight_per_shard || self.initial_limit == 0 {
            return Err(bad(
                "admission.initial_limit",
                "must be 1..=max_in_flight_per_shard",
            ));
        }
        if self.min_limit == 0 || self.min_limit > self.initial_limit {
            return Err(bad("admission.min_limit", "must be 1..=initial_limit"));
        }
        Ok(())
    }
}

/// Asynchronous sinks; both optional (empty = off).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Replication {
    /// e.g. "postgres://corepay@127.0.0.1:5432/corepay"; else COREPAY_POSTGRES_URL.
    pub postgres_url: String,
    /// Schema holding corepay's tables.
    pub postgres_schema: String,
    /// e.g. "redis://127.0.0.1:6379/"; else COREPAY_REDIS_URL.
    pub redis_url: String,
    pub redis_stream: String,
    /// The stream is trimmed to about this many events (XADD MAXLEN ~).
    pub redis_maxlen: usize,
    /// Records per batch (one transaction each).
    pub batch_records: usize,
    /// CPUs the sink threads may run on; keep them off the shards' cores. Empty = with pinned
    /// shards, the CPUs no shard owns; any CPU when shards own them all or are not pinned.
    pub cores: Vec<usize>,
    /// Bytes of each shard's change log (every record's effects, in the store) kept for the
    /// sinks: a sink further behind is re-seeded from the store. (The WAL itself is kept only
    /// until the store's checkpoint covers it.)
    pub max_retained_bytes: u64,
}

impl Default for Replication {
    fn default() -> Self {
        Replication {
            postgres_url: String::new(),
            postgres_schema: "corepay".into(),
            redis_url: String::new(),
            redis_stream: "corepay:events".into(),
            redis_maxlen: 1_000_000,
            batch_records: 1000,
            cores: vec![],
            max_retained_bytes: 1 << 30,
        }
    }
}

impl fmt::Debug for Replication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // URLs may carry passwords.
        f.debug_struct("Replication")
            .field("postgres", &!self.postgres_url.is_empty())
            .field("postgres_schema", &self.postgres_schema)
            .field("redis", &!self.redis_url.is_empty())
            .field("redis_stream", &self.redis_stream)
            .finish()
    }
}

impl Replication {
    /// The PostgreSQL URL: the config's, else COREPAY_POSTGRES_URL; None when off.
    pub fn postgres(&self) -> Option<String> {
        let url = if self.postgres_url.is_empty() {
            std::env::var("COREPAY_POSTGRES_URL").unwrap_or_default()
        } else {
            self.postgres_url.clone()
        };
        (!url.is_empty()).then_some(url)
    }

    /// The Redis URL: the config's, else COREPAY_REDIS_URL; None when off.
    pub fn redis(&self) -> Option<String> {
        let url = if self.redis_url.is_empty() {
            std::env::var("COREPAY_REDIS_URL").unwrap_or_default()
        } else {
            self.redis_url.clone()
        };
        (!url.is_empty()).then_some(url)
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Shards (executors); 0 = one per available core.
    pub shards: u16,
    /// Pin each shard to a core.
    pub pin_cores: bool,
    /// Cores to pin to, in shard order; empty = 0, 1, 2, ...
    pub cores: Vec<usize>,
    pub data_dir: PathBuf,
    /// How long SIGTERM waits for in-flight requests and credits before exiting.
    pub drain_timeout_ms: u64,
    /// An idle shard polls this long before sleeping: lower wake-up latency for a core of
    /// its own, wasted CPU on a shared one. 0 = sleep at once.
    pub spin_before_park_us: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    pub listen: String,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: usize,
    /// Time allowed to receive a whole request once its first byte arrived.
    pub request_timeout_ms: u64,
    /// Idle keep-alive connections are closed after this long.
    pub idle_timeout_ms: u64,
    pub max_connections_per_shard: usize,
    /// `[http.tls]`: HTTPS on the merchant listener (absent: plain HTTP).
    pub tls: Option<Tls>,
}

/// `[http.tls]` / `[iso8583.tls]`: the listener speaks TLS 1.2 and 1.3 only (rustls).
/// Read at start and again on SIGHUP (src/tls.rs).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// PEM: the server's certificate chain, leaf first.
    pub cert_file: String,
    /// PEM: its private key (PKCS#8, SEC1 or PKCS#1).
    pub key_file: String,
    /// PEM: CAs that sign clients' certificates. Set: mutual TLS, and a client without a
    /// certificate signed by one of them is refused during the handshake.
    pub client_ca_file: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Operator {
    pub listen: String,
}

/// The ISO 8583 acquirer listener (DESIGN.md §6), on every shard.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Iso8583 {
    pub listen: String,
    /// Length header: "binary2" (2-byte big-endian, default) or "ascii4" (4 ASCII digits).
    pub header: String,
    /// Bitmap encoding: "binary" (8 bytes each, default) or "hex" (16 hex characters each).
    pub bitmap: String,
    /// Largest message body accepted; a longer length header closes the connection.
    pub max_frame_bytes: usize,
    /// Requests one connection may have in flight; past it, the connection is not read.
    pub max_in_flight_per_connection: usize,
    /// A connection that receives nothing for this long, with nothing in flight, is closed;
    /// a response that cannot be written for this long closes it too.
    pub idle_timeout_ms: u64,
    pub max_connections_per_shard: usize,
    /// `[iso8583.tls]`: TLS, or mutual TLS with `client_ca_file` (absent: plain TCP).
    pub tls: Option<Tls>,
    /// `[[iso8583.acquirers]]`: which institution ids (DE32) each client certificate may
    /// send. Empty: any.
    pub acquirers: Vec<AcquirerBinding>,
}

/// One acquirer's identity under mutual TLS and the institution ids bound to it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcquirerBinding {
    /// The client certificate's subject, as the `iso8583.tls_client` log line prints it
    /// (RFC 4514, e.g. "CN=acquirer 0001, O=Bank").
    pub subject: String,
    /// DE32 values (1 to 11 digits; leading zeros do not count).
    pub institution_ids: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Wal {
    /// "fdatasync" (default) or "none" (benchmarks only: acknowledged data can be lost).
    pub sync: String,
    pub segment_bytes: u64,
    pub max_pending_bytes: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Payments {
    /// Uncaptured authorizations release their hold after this long.
    pub hold_ttl_secs: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Idempotency {
    pub retention_secs: u64,
    pub max_keys_per_shard: usize,
}

/// The per-shard store and the memory in front of it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct State {
    /// Memory per shard for payments and the store's page cache together, in MiB.
    pub cache_mb: usize,
    /// How often the store's state is made durable (a checkpoint); restart replays at most
    /// about this much WAL.
    pub checkpoint_interval_ms: u64,
    /// How long the store writer gathers durable records before it applies and commits them
    /// (not durably) in one transaction. Each commit rewrites the pages it touches, so fewer
    /// commits mean far fewer bytes written (and a checkpoint with less to flush, which would
    /// otherwise delay the WAL's fdatasync); the store lags the WAL by about this much. A
    /// checkpoint commits too, so the shorter of the two intervals applies.
    pub commit_interval_ms: u64,
    /// Start writing each commit's pages to disk at once (sync_file_range), so that the
    /// checkpoint's fsync has little left to flush and the WAL's fdatasync does not queue
    /// behind a burst of the store's writes.
    pub trickle_writeback: bool,
    /// Threads per shard that read cold payments from the store.
    pub read_threads: usize,
    /// A cold read that waited longer than this is answered 503 / 91.
    pub read_timeout_ms: u64,
    /// Below this much free space under data_dir, new work is shed (503 / 91) and the store
    /// stops writing until space returns.
    pub min_free_mb: u64,
    /// Payments the shard's window holds; 0 = derived from cache_mb (for tuning and tests).
    pub window_payments: usize,
    /// Accounts (and cards) per shard that tables are sized for at start (0: what is
    /// recovered): provisioning past it grows a table at once (a pause on that shard).
    /// Reserved memory becomes resident as rows land in it.
    pub accounts_per_shard: usize,
    /// Merchants per shard that the merchant table is sized for at start (0: as recovered).
    pub merchants_per_shard: usize,
    /// CPUs the store writer and reader threads run on; keep them off the shards' cores.
    /// Empty = with pinned shards, the CPUs no shard owns; any CPU when shards own them all or
    /// are not pinned.
    pub cores: Vec<usize>,
}

impl Default for State {
    fn default() -> Self {
        State {
            cache_mb: 128,
            checkpoint_interval_ms: 10_000,
            commit_interval_ms: 100,
            trickle_writeback: true,
            read_threads: 2,
            read_timeout_ms: 50,
            min_free_mb: 256,
            window_payments: 0,
            accounts_per_shard: 0,
            merchants_per_shard: 0,
            cores: vec![],
        }
    }
}

/// Bytes one payment takes in a window, for sizing windows from `state.cache_mb` (a
/// `Payment` and its strings, measured with the allocator's rounding, plus slot overhead).
pub const PAYMENT_SLOT_BYTES: usize = 512;

impl State {
    /// (payments in the shard's window, payments in the store writer's window, page cache
    /// bytes): half the budget for the store's page cache, three quarters of the rest for the
    /// shard's window.
    pub fn budget(&self) -> (usize, usize, usize) {
        let total = self.cache_mb << 20;
        let pages = total / 2;
        let windows = (total - pages) / PAYMENT_SLOT_BYTES;
        let shard = match self.window_payments {
            0 => windows * 3 / 4,
            n => n,
        };
        (shard, windows / 4, pages)
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mesh {
    /// Slots in each ring between two shards.
    pub ring_capacity: usize,
    /// Requests one shard may have outstanding at another; past it, new work is shed (503).
    pub max_in_flight_per_peer: usize,
}

#[derive(Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Secrets {
    /// Admin bearer key; else COREPAY_ADMIN_KEY; else generated into data_dir/admin.key.
    pub admin_key: String,
    /// File holding the PAN HMAC key (64 hex); else COREPAY_PAN_KEY; else data_dir/pan.key.
    pub pan_key_file: String,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field(
                "admin_key",
                &if self.admin_key.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("pan_key_file", &self.pan_key_file)
            .finish()
    }
}

impl Default for Server {
    fn default() -> Self {
        Server {
            shards: 0,
            pin_cores: true,
            cores: vec![],
            data_dir: PathBuf::from("./data"),
            drain_timeout_ms: 5000,
            spin_before_park_us: 0,
        }
    }
}

impl Default for Http {
    fn default() -> Self {
        Http {
            listen: "127.0.0.1:8080".into(),
            max_header_bytes: 8192,
            max_headers: 32,
            max_body_bytes: 64 * 1024,
            request_timeout_ms: 5000,
            idle_timeout_ms: 60_000,
            max_connections_per_shard: 10_000,
            tls: None,
        }
    }
}

impl Default for Operator {
    fn default() -> Self {
        Operator {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

impl Default for Iso8583 {
    fn default() -> Self {
        Iso8583 {
            listen: "127.0.0.1:8583".into(),
            header: "binary2".into(),
            bitmap: "binary".into(),
            max_frame_bytes: crate::iso8583::DEFAULT_MAX_FRAME,
            max_in_flight_per_connection: 256,
            idle_timeout_ms: 300_000,
            max_connections_per_shard: 1000,
            tls: None,
            acquirers: Vec::new(),
        }
    }
}

/// Whether two listen addresses would accept on the same port of the same interface.
fn overlaps(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// The smallest `iso8583.max_frame_bytes`: below it not even a network management message
/// with its echoed fields fits.
pub const ISO_MIN_FRAME_BYTES: usize = 64;
/// The largest `iso8583.max_in_flight_per_connection`: each slot may hold a response.
pub const ISO_MAX_IN_FLIGHT: usize = 4096;

impl Iso8583 {
    /// The length header, or an error naming `iso8583.header`.
    pub fn framing(&self) -> Result<crate::iso8583::Framing, ConfigError> {
        match self.header.as_str() {
            "binary2" => Ok(crate::iso8583::Framing::Binary2),
            "ascii4" => Ok(crate::iso8583::Framing::Ascii4),
            other => Err(bad(
                "iso8583.header",
                format!("unknown header {other:?}; expected \"binary2\" or \"ascii4\""),
            )),
        }
    }

    /// The bitmap encoding, or an error naming `iso8583.bitmap`.
    pub fn bitmap_encoding(&self) -> Result<crate::iso8583::BitmapEncoding, ConfigError> {
        match self.bitmap.as_str() {
            "binary" => Ok(crate::iso8583::BitmapEncoding::Binary),
            "hex" => Ok(crate::iso8583::BitmapEncoding::HexAscii),
            other => Err(bad(
                "iso8583.bitmap",
                format!("unknown encoding {other:?}; expected \"binary\" or \"hex\""),
            )),
        }
    }

    fn validate(&self, http: &SocketAddr, operator: &SocketAddr) -> Result<(), ConfigError> {
        let listen = self
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| bad("iso8583.listen", e))?;
        // Every listener sets SO_REUSEPORT, so an overlap would bind silently and split
        // one port's connections between two protocols.
        if overlaps(&listen, http) {
            return Err(bad("iso8583.listen", "must differ from http.listen"));
        }
        if overlaps(&listen, operator) {
            return Err(bad("iso8583.listen", "must differ from operator.listen"));
        }
        let framing = self.framing()?;
        self.bitmap_encoding()?;
        let max = framing.max_body();
        if !(ISO_MIN_FRAME_BYTES..=max).contains(&self.max_frame_bytes) {
            return Err(bad(
                "iso8583.max_frame_bytes",
                format!(
                    "must be {ISO_MIN_FRAME_BYTES}..={max} (the most header = {:?} can express)",
                    self.header
                ),
            ));
        }
        if !(1..=ISO_MAX_IN_FLIGHT).contains(&self.max_in_flight_per_connection) {
            return Err(bad(
                "iso8583.max_in_flight_per_connection",
                format!("must be 1..={ISO_MAX_IN_FLIGHT}"),
            ));
        }
        if self.idle_timeout_ms == 0 {
            return Err(bad("iso8583.idle_timeout_ms", "must be > 0"));
        }
        if self.max_connections_per_shard == 0 {
            return Err(bad("iso8583.max_connections_per_shard", "must be > 0"));
        }
        self.validate_acquirers()
    }

    fn validate_acquirers(&self) -> Result<(), ConfigError> {
        if self.acquirers.is_empty() {
            return Ok(());
        }
        let mutual = self
            .tls
            .as_ref()
            .is_some_and(|t| !t.client_ca_file.is_empty());
        if !mutual {
            return Err(bad(
                "iso8583.acquirers",
                "needs [iso8583.tls] with client_ca_file: identities come from client certificates",
            ));
        }
        for (i, a) in self.acquirers.iter().enumerate() {
            if a.subject.trim().is_empty() {
                return Err(bad(
                    &format!("iso8583.acquirers[{i}].subject"),
                    "must not be empty",
                ));
            }
            if self.acquirers[..i].iter().any(|b| b.subject == a.subject) {
                return Err(bad(
                    &format!("iso8583.acquirers[{i}].subject"),
                    format!("{:?} is bound twice", a.subject),
                ));
            }
            if a.institution_ids.is_empty() {
                return Err(bad(
                    &format!("iso8583.acquirers[{i}].institution_ids"),
                    "must name at least one DE32 value",
                ));
            }
            for id in &a.institution_ids {
                if id.is_empty() || id.len() > 11 || !id.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad(
                        &format!("iso8583.acquirers[{i}].institution_ids"),
                        format!("{id:?} is not 1 to 11 digits (DE32, n..11)"),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Default for Wal {
    fn default() -> Self {
        Wal {
            sync: "fdatasync".into(),
            segment_bytes: 64 << 20,
            max_pending_bytes: 8 << 20,
        }
    }
}

impl Default for Payments {
    fn default() -> Self {
        Payments {
            hold_ttl_secs: 7 * 86_400,
        }
    }
}

impl Default for Idempotency {
    fn default() -> Self {
        Idempotency {
            retention_secs: 86_400,
            max_keys_per_shard: 262_144,
        }
    }
}

impl Default for Mesh {
    fn default() -> Self {
        Mesh {
            ring_capacity: 4096,
            max_in_flight_per_peer: 1024,
        }
    }
}

/// A configuration problem, printed as one line naming the key.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

fn bad(key: &str, why: impl fmt::Display) -> ConfigError {
    ConfigError(format!("{key}: {why}"))
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| bad(&path.display().to_string(), e))?;
        Config::parse(&text).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start].lines().count().max(1));
            let msg = e.message().replace('\n', " ");
            match line {
                Some(l) => ConfigError(format!("line {l}: {msg}")),
                None => ConfigError(msg),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server.shards as usize > crate::domain::SHARDS_MAX {
            return Err(bad(
                "server.shards",
                format!("at most {}", crate::domain::SHARDS_MAX),
            ));
        }
        let http = self
            .http
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| bad("http.listen", e))?;
        let operator = self
            .operator
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| bad("operator.listen", e))?;
        if self.http.listen == self.operator.listen {
            return Err(bad("operator.listen", "must differ from http.listen"));
        }
        self.iso8583.validate(&http, &operator)?;
        if !(1024..=1 << 20).contains(&self.http.max_header_bytes) {
            return Err(bad("http.max_header_bytes", "must be 1024..=1048576"));
        }
        if !(4..=256).contains(&self.http.max_headers) {
            return Err(bad("http.max_headers", "must be 4..=256"));
        }
        if !(256..=16 << 20).contains(&self.http.max_body_bytes) {
            return Err(bad("http.max_body_bytes", "must be 256..=16777216"));
        }
        if self.http.request_timeout_ms == 0 || self.http.idle_timeout_ms == 0 {
            return Err(bad("http.request_timeout_ms", "timeouts must be > 0"));
        }
        if self.server.spin_before_park_us > 1_000_000 {
            return Err(bad("server.spin_before_park_us", "at most 1000000 (1 s)"));
        }
        if self.http.max_connections_per_shard == 0 {
            return Err(bad("http.max_connections_per_shard", "must be > 0"));
        }
        self.sync_mode()?;
        let block = crate::wal::BLOCK as u64;
        if self.wal.segment_bytes % block != 0 || self.wal.segment_bytes < 16 * block.max(1 << 16) {
            return Err(bad(
                "wal.segment_bytes",
                "must be a multiple of 4096 and at least 1 MiB",
            ));
        }
        if self.wal.max_pending_bytes < crate::wal::RECORD_PAYLOAD_MAX * 2 {
            return Err(bad(
                "wal.max_pending_bytes",
                "must hold at least two maximal records (128 KiB)",
            ));
        }
        if self.payments.hold_ttl_secs == 0 {
            return Err(bad("payments.hold_ttl_secs", "must be > 0"));
        }
        if self.idempotency.retention_secs < 86_400 {
            return Err(bad(
                "idempotency.retention_secs",
                "must be at least 86400 (24 h)",
            ));
        }
        if self.idempotency.max_keys_per_shard == 0 {
            return Err(bad("idempotency.max_keys_per_shard", "must be > 0"));
        }
        let st = &self.state;
        if !(1..=65_536).contains(&st.cache_mb) {
            return Err(bad("state.cache_mb", "must be 1..=65536"));
        }
        if !(10..=600_000).contains(&st.checkpoint_interval_ms) {
            return Err(bad("state.checkpoint_interval_ms", "must be 10..=600000"));
        }
        if !(1..=600_000).contains(&st.commit_interval_ms) {
            return Err(bad("state.commit_interval_ms", "must be 1..=600000"));
        }
        if !(1..=64).contains(&st.read_threads) {
            return Err(bad("state.read_threads", "must be 1..=64"));
        }
        if st.window_payments != 0 && !(64..=1 << 30).contains(&st.window_payments) {
            return Err(bad("state.window_payments", "must be 0 or 64..=1073741824"));
        }
        if st.accounts_per_shard > 1 << 32 || st.merchants_per_shard > 1 << 32 {
            return Err(bad(
                "state.accounts_per_shard",
                "must be at most 4294967296",
            ));
        }
        if st.min_free_mb > 1 << 30 {
            return Err(bad("state.min_free_mb", "must be at most 1073741824"));
        }
        if !(1..=60_000).contains(&st.read_timeout_ms) {
            return Err(bad("state.read_timeout_ms", "must be 1..=60000"));
        }
        self.admission.validate()?;
        let r = &self.replication;
        if r.max_retained_bytes < 1 << 16 {
            return Err(bad(
                "replication.max_retained_bytes",
                "must be at least 65536",
            ));
        }
        if r.batch_records == 0 || r.batch_records > 100_000 {
            return Err(bad("replication.batch_records", "must be 1..=100000"));
        }
        if r.redis_maxlen < 1000 {
            return Err(bad("replication.redis_maxlen", "must be at least 1000"));
        }
        let ident = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if !ident(&r.postgres_schema) {
            return Err(bad(
                "replication.postgres_schema",
                "lower-case letters, digits and _ (at most 63)",
            ));
        }
        if self.server.pin_cores && !r.cores.is_empty() {
            let shard_cores: Vec<usize> = if self.server.cores.is_empty() {
                (0..self.shard_count() as usize).collect()
            } else {
                self.server.cores.clone()
            };
            if let Some(c) = r.cores.iter().find(|c| shard_cores.contains(c)) {
                return Err(bad(
                    "replication.cores",
                    format!("core {c} runs a shard; sinks must stay off shard cores"),
                ));
            }
        }
        if self.server.pin_cores && !self.state.cores.is_empty() {
            let shard_cores: Vec<usize> = if self.server.cores.is_empty() {
                (0..self.shard_count() as usize).collect()
            } else {
                self.server.cores.clone()
            };
            if let Some(c) = self.state.cores.iter().find(|c| shard_cores.contains(c)) {
                return Err(bad(
                    "state.cores",
                    format!("core {c} runs a shard; store threads must stay off shard cores"),
                ));
            }
        }
        if r.redis_stream.is_empty() {
            return Err(bad("replication.redis_stream", "must not be empty"));
        }
        if !r.postgres_url.is_empty() && !r.postgres_url.starts_with("postgres") {
            return Err(bad(
                "replication.postgres_url",
                "must start with postgres:// or postgresql://",
            ));
        }
        if !r.redis_url.is_empty() && !r.redis_url.starts_with("redis") {
            return Err(bad("replication.redis_url", "must start with redis://"));
        }
        if self.mesh.max_in_flight_per_peer == 0 {
            return Err(bad("mesh.max_in_flight_per_peer", "must be > 0"));
        }
        // Calls and their replies, plus credits and acks, must always fit in a ring, so that a
        // send never waits for a peer that is itself waiting: no deadlock between shards.
        if self.mesh.ring_capacity < 4 * self.mesh.max_in_flight_per_peer {
            return Err(bad(
                "mesh.ring_capacity",
                "must be at least 4 × mesh.max_in_flight_per_peer",
            ));
        }
        if !self.secrets.admin_key.is_empty() && self.secrets.admin_key.len() < 16 {
            return Err(bad("secrets.admin_key", "must be at least 16 characters"));
        }
        Ok(())
    }

    pub fn sync_mode(&self) -> Result<crate::wal::SyncMode, ConfigError> {
        match self.wal.sync.as_str() {
            "fdatasync" => Ok(crate::wal::SyncMode::Fdatasync),
            "none" => Ok(crate::wal::SyncMode::None),
            other => Err(bad(
                "wal.sync",
                format!("unknown mode {other:?}; expected \"fdatasync\" or \"none\""),
            )),
        }
    }

    /// The number of shards to run: the configured count, or one per available core.
    /// The core shard `k` is pinned to (with `server.pin_cores`).
    pub fn shard_core(&self, k: usize) -> usize {
        self.server.cores.get(k).copied().unwrap_or(k)
    }

    /// The cores the shards own: None when they are not pinned.
    pub fn shard_cores(&self) -> Option<Vec<usize>> {
        self.server.pin_cores.then(|| {
            (0..self.shard_count() as usize)
                .map(|k| self.shard_core(k))
                .collect()
        })
    }

    pub fn shard_count(&self) -> u16 {
        if self.server.shards > 0 {
            return self.server.shards;
        }
        std::thread::available_parallelism()
            .map(|n| n.get().min(crate::domain::SHARDS_MAX) as u16)
            .unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_file_parses_and_matches_the_embedded_default() {
        let text = include_str!("../configs/corepay.toml");
        let c = Config::parse(text).expect("configs/corepay.toml is valid");
        let d = Config::default();
        assert_eq!(c.http.listen, d.http.listen);
        assert_eq!(c.wal.segment_bytes, d.wal.segment_bytes);
        assert_eq!(c.mesh.ring_capacity, d.mesh.ring_capacity);
        assert_eq!(c.idempotency.retention_secs, d.idempotency.retention_secs);
        assert_eq!(c.iso8583.listen, d.iso8583.listen);
        assert_eq!(c.iso8583.header, d.iso8583.header);
        assert_eq!(c.iso8583.bitmap, d.iso8583.bitmap);
        assert_eq!(c.iso8583.max_frame_bytes, d.iso8583.max_frame_bytes);
        assert_eq!(
            c.iso8583.max_in_flight_per_connection,
            d.iso8583.max_in_flight_per_connection
        );
        assert_eq!(c.iso8583.idle_timeout_ms, d.iso8583.idle_timeout_ms);
        assert_eq!(c.admission.settings(), d.admission.settings());
        assert_eq!(
            d.admission.settings(),
            crate::admission::AdmissionConfig::DEFAULT
        );
        assert_eq!(
            c.iso8583.max_connections_per_shard,
            d.iso8583.max_connections_per_shard
        );
        d.validate().unwrap();
        assert_eq!(
            d.iso8583.framing().unwrap(),
            crate::iso8583::Framing::Binary2
        );
        assert_eq!(
            d.iso8583.bitmap_encoding().unwrap(),
            crate::iso8583::BitmapEncoding::Binary
        );
    }

    #[test]
    fn bad_config_names_the_key_in_one_line() {
        for (text, key) in [
            ("[wal]\nsync = \"sometimes\"", "wal.sync"),
            (
                "[server]\nshards = 2\n[replication]\ncores = [1]",
                "replication.cores",
            ),
            ("[server]\nshards = 2\n[state]\ncores = [0]", "state.cores"),
            (
                "[replication]\npostgres_url = \"mysql://x\"",
                "replication.postgres_url",
            ),
            (
                "[replication]\nbatch_records = 0",
                "replication.batch_records",
            ),
            ("[http]\nlisten = \"nowhere\"", "http.listen"),
            ("[wal]\nsegment_bytes = 1000", "wal.segment_bytes"),
            (
                "[idempotency]\nretention_secs = 60",
                "idempotency.retention_secs",
            ),
            (
                "[mesh]\nring_capacity = 8\nmax_in_flight_per_peer = 8",
                "mesh.ring_capacity",
            ),
            ("[http]\nlisten = \"127.0.0.1:9464\"", "operator.listen"),
            ("[iso8583]\nlisten = \"nowhere\"", "iso8583.listen"),
            ("[iso8583]\nlisten = \"127.0.0.1:8080\"", "iso8583.listen"),
            ("[iso8583]\nlisten = \"127.0.0.1:9464\"", "iso8583.listen"),
            ("[iso8583]\nlisten = \"0.0.0.0:8080\"", "iso8583.listen"),
            ("[iso8583]\nheader = \"ascii2\"", "iso8583.header"),
            ("[iso8583]\nbitmap = \"HEX\"", "iso8583.bitmap"),
            (
                "[iso8583]\nheader = \"ascii4\"\nmax_frame_bytes = 10000",
                "iso8583.max_frame_bytes",
            ),
            (
                "[iso8583]\nmax_frame_bytes = 65536",
                "iso8583.max_frame_bytes",
            ),
            ("[iso8583]\nmax_frame_bytes = 10", "iso8583.max_frame_bytes"),
            (
                "[iso8583]\nmax_in_flight_per_connection = 0",
                "iso8583.max_in_flight_per_connection",
            ),
            ("[iso8583]\nidle_timeout_ms = 0", "iso8583.idle_timeout_ms"),
            (
                "[iso8583]\nmax_connections_per_shard = 0",
                "iso8583.max_connections_per_shard",
            ),
            (
                "[admission]\nqueue_delay_target_us = 0",
                "admission.queue_delay_target_us",
            ),
            ("[admission]\ninterval_ms = 0", "admission.interval_ms"),
            (
                "[admission]\nmin_limit = 300\ninitial_limit = 200",
                "admission.min_limit",
            ),
            (
                "[admission]\nmax_in_flight_per_shard = 10",
                "admission.initial_limit",
            ),
        ] {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let err = Config::parse("[wal]\nsnyc = \"none\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("snyc") && err.contains("sync"), "{err}");
        let err = Config::parse("[server]\nshards = \"two\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        let err = Config::parse("[iso8583]\nmax_frames = 1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_frames"), "{err}");
    }

    #[test]
    fn iso8583_section_overrides() {
        let c = Config::parse(
            "[iso8583]\nlisten = \"0.0.0.0:9583\"\nheader = \"ascii4\"\nbitmap = \"hex\"\n\
             max_frame_bytes = 9999\nmax_in_flight_per_connection = 4\n",
        )
        .unwrap();
        assert_eq!(
            c.iso8583.framing().unwrap(),
            crate::iso8583::Framing::Ascii4
        );
        assert_eq!(
            c.iso8583.bitmap_encoding().unwrap(),
            crate::iso8583::BitmapEncoding::HexAscii
        );
        assert_eq!(c.iso8583.max_frame_bytes, 9999);
        assert_eq!(c.iso8583.max_in_flight_per_connection, 4);
        assert_eq!(c.iso8583.idle_timeout_ms, 300_000);
    }
}
