//! Shared harness for black-box tests: starts the real `corepay` binary on a temporary data
//! directory and free loopback ports, and speaks HTTP/1.1 to it over real sockets.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ADMIN_KEY: &str = "test-admin-key-0123456789";

/// A loopback port nobody listens on right now.
///
/// Ports come from a block of this process's own, below the kernel's ephemeral range, so
/// that test binaries running side by side do not hand out the same port (the gateway
/// binds with SO_REUSEPORT, so a shared port would mix two servers' traffic).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    const BLOCK: u16 = 150;
    let base = 10_000 + (std::process::id() % 130) as u16 * BLOCK;
    for _ in 0..BLOCK {
        let port = base + NEXT.fetch_add(1, Ordering::SeqCst) % BLOCK;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Fresh-port attempts for a server's first start.
const FIRST_START_TRIES: usize = 3;

/// One running gateway process.
pub struct Server {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub http: SocketAddr,
    pub operator: SocketAddr,
    /// The ISO 8583 listener (`[iso8583] listen`).
    pub iso: SocketAddr,
    pub shards: u16,
    pub extra_config: String,
    _tmp: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts a gateway with `shards` unpinned shards on a fresh data directory.
    pub fn start(shards: u16) -> Server {
        Server::start_with(shards, "")
    }

    /// Starts with extra TOML appended to the generated configuration (e.g. "[http]\n...").
    /// Sections already generated: [server], [http] (listen), [iso8583] (listen), [operator],
    /// [secrets]; a caller's own [http] or [iso8583] table gets the listen line prepended.
    pub fn start_with(shards: u16, extra_config: &str) -> Server {
        Server::start_in(tempfile::tempdir().unwrap(), shards, extra_config)
    }

    /// `start_with` in a directory the caller prepared (its `data` folder is the data dir,
    /// e.g. a small filesystem mounted there).
    pub fn start_in(tmp: tempfile::TempDir, shards: u16, extra_config: &str) -> Server {
        let mut s = Server {
            child: None,
            dir: tmp.path().to_path_buf(),
            http: SocketAddr::from(([127, 0, 0, 1], free_port())),
            operator: SocketAddr::from(([127, 0, 0, 1], free_port())),
            iso: SocketAddr::from(([127, 0, 0, 1], free_port())),
            shards,
            extra_config: extra_config.to_string(),
            _tmp: Some(tmp),
        };
        // A port just given up by an earlier test can still refuse a second SO_REUSEPORT
        // bind while its connections linger in TIME_WAIT: on a first start only, try fresh
        // ports a few times before calling it a failure.
        for _ in 0..FIRST_START_TRIES - 1 {
            if s.try_spawn().is_ok() {
                return s;
            }
            for entry in std::fs::read_dir(s.dir.join("data"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = std::fs::remove_dir_all(entry.path());
                let _ = std::fs::remove_file(entry.path());
            }
            s.http = SocketAddr::from(([127, 0, 0, 1], free_port()));
            s.operator = SocketAddr::from(([127, 0, 0, 1], free_port()));
            s.iso = SocketAddr::from(([127, 0, 0, 1], free_port()));
        }
        s.spawn();
        s
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("corepay.toml")
    }

    pub fn write_config(&self) {
        let mut extra = self.extra_config.clone();
        let iso_listen = format!("[iso8583]\nlisten = \"{}\"", self.iso);
        if extra.contains("[iso8583]") {
            // The caller's [iso8583] table gets our listen address prepended.
            extra = extra.replace("[iso8583]", &iso_listen);
        } else {
            extra = format!("{iso_listen}\n\n{extra}");
        }
        // Store reads may take up to 2 s before a 503 (the default is 50 ms): these tests check
        // what is answered, and debug builds sharing two cores with parallel tests can take
        // longer than 50 ms to read the store. A caller's own read_timeout_ms wins.
        if !extra.contains("read_timeout_ms") {
            let line = "[state]\nread_timeout_ms = 2000";
            if extra.contains("[state]") {
                extra = extra.replace("[state]", line);
            } else {
                extra = format!("{extra}\n\n{line}\n");
            }
        }
        // Admission control sheds by time: a debug build sharing two cores with parallel tests
        // is overloaded by its standards, and these tests check what is answered. Only the
        // hard cap applies unless a caller sets its own [admission] (the overload tests do).
        if !extra.contains("[admission]") {
            extra = format!("{extra}\n\n[admission]\nadaptive = false\n");
        }
        let has_http = extra.contains("[http]");
        let mut text = format!(
            "[server]\nshards = {}\npin_cores = false\ndata_dir = \"{}\"\ndrain_timeout_ms = 2000\n\n\
             [operator]\nlisten = \"{}\"\n\n[secrets]\nadmin_key = \"{ADMIN_KEY}\"\n\n",
            self.shards,
            self.dir.join("data").display(),
            self.operator,
        );
        if has_http {
            // The caller's [http] table gets our listen address prepended.
            text.push_str(&extra.replace("[http]", &format!("[http]\nlisten = \"{}\"", self.http)));
        } else {
            text.push_str(&format!("[http]\nlisten = \"{}\"\n\n{extra}", self.http));
        }
        std::fs::write(self.config_path(), text).unwrap();
    }

    /// Starts the process and waits until /readyz answers 200.
    pub fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!("corepay exited during start-up; log:\n{log}");
        }
    }

    /// Like `spawn`, but a start-up that fails because a port is taken is an `Err` with the
    /// log, not a panic.
    fn try_spawn(&mut self) -> Result<(), String> {
        self.write_config();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_corepay"))
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .args(["serve", "--config"])
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start corepay");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                let log = self.log();
                if log.contains("Address already in use") {
                    return Err(log);
                }
                panic!("corepay exited during start-up with {status}; log:\n{log}");
            }
            if let Ok((200, _, _)) = raw_get(self.operator, "/readyz") {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "corepay did not become ready; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// kill -9, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "corepay did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn client(&self) -> Client {
        Client::connect(self.http)
    }

    /// The admin plane: the operator listener, with the admin key.
    pub fn admin(&self) -> Client {
        let mut c = Client::connect(self.operator);
        c.bearer = Some(ADMIN_KEY.to_string());
        c
    }

    /// Σ per currency (accounts + treasury + in flight) from GET /v1/ledger: must be "0.00".
    pub fn ledger(&self) -> Value {
        let (status, body) = self.admin().get("/v1/ledger");
        assert_eq!(status, 200, "{body}");
        body
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A keep-alive HTTP/1.1 client over one TCP connection.
pub struct Client {
    pub stream: BufReader<TcpStream>,
    pub bearer: Option<String>,
    pub addr: SocketAddr,
}

/// A parsed response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
    pub raw: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream: BufReader::new(stream),
            bearer: None,
            addr,
        }
    }

    pub fn with_key(addr: SocketAddr, key: &str) -> Client {
        let mut c = Client::connect(addr);
        c.bearer = Some(key.to_string());
        c
    }

    /// Sends a request with optional JSON body and extra headers; reads the response.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Resp {
        self.try_request(method, path, body, headers)
            .expect("a response")
    }

    pub fn post(&mut self, path: &str, body: &str) -> (u16, Value) {
        let r = self.request("POST", path, Some(body), &[]);
        (r.status, r.body)
    }

    pub fn get(&mut self, path: &str) -> (u16, Value) {
        let r = self.request("GET", path, None, &[]);
        (r.status, r.body)
    }

    /// Writes raw bytes (for malformed-input tests).
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.get_mut().write_all(bytes)
    }

    /// Reads one response; Err on EOF or a malformed response.
    pub fn read_response(&mut self) -> std::io::Result<Resp> {
        let mut line = String::new();
        if self.stream.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            self.stream.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap_or((h, ""));
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
            headers.push((k.to_string(), v.trim().to_string()));
        }
        let mut raw = vec![0; len];
        self.stream.read_exact(&mut raw)?;
        let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        Ok(Resp {
            status,
            headers,
            body,
            raw,
        })
    }
}

/// (status, headers, body text).
pub type RawResponse = (u16, Vec<(String, String)>, String);

/// One GET on a fresh connection.
pub fn raw_get(addr: SocketAddr, path: &str) -> std::io::Result<RawResponse> {
    let mut c = Client::connect_timeout(addr)?;
    c.send_raw(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())?;
    let r = c.read_response()?;
    Ok((
        r.status,
        r.headers,
        String::from_utf8_lossy(&r.raw).to_string(),
    ))
}

impl Client {
    fn connect_timeout(addr: SocketAddr) -> std::io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Client {
            stream: BufReader::new(stream),
            bearer: None,
            addr,
        })
    }
}

/// Creates an account through the admin API; panics unless 201.
pub fn create_account(s: &Server, id: u64, currency: &str, balance: &str) -> Value {
    let body = format!(
        r#"{{"id": {id}, "currency": "{currency}", "initial_balance": "{balance}", "floor": "0.00"}}"#
    );
    let (status, v) = s.admin().post("/v1/accounts", &body);
    assert_eq!(status, 201, "{v}");
    v
}

/// Creates a card (exp 12/2030 unless given) bound to `account`; panics unless 201.
pub fn create_card(s: &Server, number: &str, account: u64) -> Value {
    let body = format!(
        r#"{{"number": "{number}", "exp_month": 12, "exp_year": 2030, "account_id": {account}}}"#
    );
    let (status, v) = s.admin().post("/v1/cards", &body);
    assert_eq!(status, 201, "{v}");
    v
}

/// Creates a merchant settling into `settlement`; returns its API key.
pub fn create_merchant(s: &Server, id: &str, settlement: u64) -> String {
    let body = format!(r#"{{"id": "{id}", "settlement_account_id": {settlement}, "mcc": "5411"}}"#);
    let (status, v) = s.admin().post("/v1/merchants", &body);
    assert_eq!(status, 201, "{v}");
    v["api_key"].as_str().unwrap().to_string()
}

/// A Luhn-valid 16-digit test number from a 15-digit prefix.
pub fn card_number(prefix15: &str) -> String {
    corepay::secrets::with_luhn_digit(prefix15)
}

/// The shard that owns an account, by the gateway's own routing.
pub fn shard_of(account: u64, shards: u16) -> u16 {
    corepay::shard::routing::shard_of_account(corepay::domain::AccountId(account), shards).0
}

/// Asserts every currency sums to zero (accounts + treasury + in flight).
pub fn assert_conservation(s: &Server) {
    let ledger = s.ledger();
    for c in ledger["currencies"].as_array().unwrap() {
        let sum = c["sum"].as_str().unwrap();
        assert!(
            sum.trim_start_matches('-')
                .chars()
                .all(|ch| ch == '0' || ch == '.'),
            "not conserved: {c}"
        );
    }
}

pub fn data_dir(s: &Server) -> &Path {
    &s.dir
}

// ---- helpers for the lifecycle, idempotency, decline and malformed-request suites ---------

/// The first account id ≥ `from` that `shard` owns (of `shards`).
pub fn account_on_shard(shard: u16, shards: u16, from: u64) -> u64 {
    (from..).find(|&id| shard_of(id, shards) == shard).unwrap()
}

/// Creates an account from a full JSON body (amount_limit, daily_count_limit, floor...);
/// panics unless 201.
pub fn create_account_json(s: &Server, body: &str) -> Value {
    let (status, v) = s.admin().post("/v1/accounts", body);
    assert_eq!(status, 201, "{body}: {v}");
    v
}

/// GET /v1/accounts/{id} as admin; panics unless 200.
pub fn get_account(s: &Server, id: u64) -> Value {
    let (status, v) = s.admin().get(&format!("/v1/accounts/{id}"));
    assert_eq!(status, 200, "account {id}: {v}");
    v
}

/// (balance, held) of an account, as the API formats them.
pub fn balance_held(s: &Server, id: u64) -> (String, String) {
    let a = get_account(s, id);
    (
        a["balance"].as_str().unwrap().to_string(),
        a["held"].as_str().unwrap().to_string(),
    )
}

/// Polls an account (cross-shard credits are applied asynchronously) for up to 5 s until its
/// balance is `balance`; panics with the last view otherwise. Returns the account.
pub fn wait_balance(s: &Server, id: u64, balance: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let a = get_account(s, id);
        if a["balance"] == balance {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "account {id}: balance never became {balance}: {a}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls GET /v1/payments/{id} for up to 5 s until `done` holds; panics with the last view.
pub fn wait_payment(m: &mut Client, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, p) = m.get(&format!("/v1/payments/{id}"));
        assert_eq!(status, 200, "{id}: {p}");
        if done(&p) {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "payment {id} never reached the expected state: {p}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls GET /v1/ledger for up to 5 s until nothing is in flight between shards, then checks
/// conservation.
pub fn wait_settled(s: &Server) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ledger = s.ledger();
        let settled = ledger["currencies"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["in_flight"].as_str().unwrap().trim_start_matches('-') == "0.00");
        if settled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "credits stay in flight: {ledger}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_conservation(s);
}

/// The body of POST /v1/payments.
pub fn payment_json(
    amount: &str,
    currency: &str,
    number: &str,
    exp: (u8, u16),
    capture: bool,
    reference: &str,
) -> String {
    format!(
        r#"{{"amount":"{amount}","currency":"{currency}","card":{{"number":"{number}","exp_month":{},"exp_year":{}}},"capture":{capture},"reference":"{reference}"}}"#,
        exp.0, exp.1
    )
}

/// POST /v1/{what}/{id}/status as admin: (status, body).
pub fn set_status(s: &Server, what: &str, id: &str, status: &str) -> (u16, Value) {
    s.admin().post(
        &format!("/v1/{what}/{id}/status"),
        &format!(r#"{{"status":"{status}"}}"#),
    )
}

impl Client {
    /// POST with an Idempotency-Key.
    pub fn post_idem(&mut self, path: &str, body: &str, key: &str) -> Resp {
        self.request("POST", path, Some(body), &[("Idempotency-Key", key)])
    }
}

// ---- fallible client calls (crash tests: the server may die mid-request) -------------------

impl Client {
    /// Connects without panicking (a server that was just killed refuses the connection).
    pub fn try_connect(addr: SocketAddr, bearer: Option<&str>) -> std::io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream: BufReader::new(stream),
            bearer: bearer.map(str::to_string),
            addr,
        })
    }

    /// Like [`Client::request`], but a failed send or a missing response is an `Err`
    /// (the outcome of that request is unknown) instead of a panic.
    pub fn try_request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Resp> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: corepay\r\n");
        if let Some(key) = &self.bearer {
            req.push_str(&format!("Authorization: Bearer {key}\r\n"));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        let body = body.unwrap_or("");
        if method == "POST" {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.stream.get_mut().write_all(req.as_bytes())?;
        self.read_response()
    }
}

// ---- ISO 8583 over real sockets ------------------------------------------------------------

pub use corepay::iso8583::{
    decode, encode, write_frame, BitmapEncoding, FrameReader, Framing, Message,
};

/// A client connection to the ISO 8583 listener: length-header framing of one kind, bitmaps
/// of one encoding, and a receive buffer for whole frames.
pub struct IsoClient {
    pub stream: TcpStream,
    pub framing: Framing,
    pub bitmap: BitmapEncoding,
    buf: Vec<u8>,
}

impl IsoClient {
    /// Connects with a 30 s read timeout (a missing answer fails the test, never hangs it).
    pub fn connect(addr: SocketAddr, framing: Framing, bitmap: BitmapEncoding) -> IsoClient {
        let stream = TcpStream::connect(addr).expect("connect to the ISO 8583 listener");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        IsoClient {
            stream,
            framing,
            bitmap,
            buf: Vec::new(),
        }
    }

    /// The server's defaults: 2-byte binary header, binary bitmaps.
    pub fn default_profile(addr: SocketAddr) -> IsoClient {
        IsoClient::connect(addr, Framing::Binary2, BitmapEncoding::Binary)
    }

    /// Appends `m`, encoded and framed, to `out` (for pipelining many in one write).
    pub fn frame_message(&self, m: &Message, out: &mut Vec<u8>) {
        let mut body = Vec::new();
        encode(m, self.bitmap, &mut body).expect("a valid test message");
        write_frame(self.framing, &body, out);
    }

    /// Sends one message.
    pub fn send(&mut self, m: &Message) {
        let mut out = Vec::new();
        self.frame_message(m, &mut out);
        self.stream.write_all(&out).expect("send a message");
    }

    /// Sends `body` inside a correct length header.
    pub fn send_body(&mut self, body: &[u8]) -> std::io::Result<()> {
        let mut out = Vec::new();
        write_frame(self.framing, body, &mut out);
        self.stream.write_all(&out)
    }

    /// Sends bytes as they are (headers included).
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next frame's body; `Ok(None)` when the server closed the connection (EOF or
    /// reset) before a whole frame arrived; `Err` on a timeout or a frame error.
    pub fn read_frame(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let reader = FrameReader::new(self.framing, usize::MAX);
        loop {
            match reader.next_frame(&self.buf) {
                Err(e) => return Err(std::io::Error::other(e.to_string())),
                Ok(Some((header, len))) => {
                    let body = self.buf[header..header + len].to_vec();
                    self.buf.drain(..header + len);
                    return Ok(Some(body));
                }
                Ok(None) => {}
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The next response, decoded; panics on EOF, timeout or a body that does not decode.
    pub fn read(&mut self) -> Message {
        let body = self
            .read_frame()
            .expect("a response frame")
            .expect("a response, not a closed connection");
        decode(&body, self.bitmap)
            .unwrap_or_else(|e| panic!("response does not decode ({e}): {:02x?}", body))
    }

    /// Sends `m` and reads one response.
    pub fn call(&mut self, m: &Message) -> Message {
        self.send(m);
        self.read()
    }
}

/// A six-digit STAN.
pub fn stan(n: u32) -> [u8; 6] {
    let s = format!("{:06}", n % 1_000_000);
    s.as_bytes().try_into().unwrap()
}

/// An 0800 network management request: DE7, DE11 = `stan`, DE70 = `code` (001 sign-on,
/// 002 sign-off, 301 echo).
pub fn network_request(stan_n: u32, code: &[u8; 3]) -> Message {
    let mut m = Message::new(*b"0800");
    m.set(7, b"0101120000");
    m.set(11, &stan(stan_n));
    m.set(70, code);
    m
}

/// Asserts an 0810 with 39 = 00 answering `request` (11, 7 and 70 echoed).
pub fn assert_network_answer(request: &Message, response: &Message) {
    assert_eq!(&response.mti(), b"0810", "{response:?}");
    assert_eq!(response.get(39), Some(&b"00"[..]), "{response:?}");
    for f in [7, 11, 70] {
        assert_eq!(response.get(f), request.get(f), "DE{f}: {response:?}");
    }
}

/// A process's resident set size in KiB, from /proc/<pid>/status.
pub fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}

impl Server {
    /// The child's pid (for /proc); panics when it is not running.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// An ISO 8583 connection with the server's defaults (binary2, binary bitmaps).
    pub fn iso(&self) -> IsoClient {
        IsoClient::default_profile(self.iso)
    }
}

impl Server {
    /// Runs `corepay reconcile` with this server's config: (matched, its report).
    pub fn reconcile(&self) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_corepay"))
            .args(["reconcile", "--config"])
            .arg(self.config_path())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

/// A name no other test run uses: `<prefix>_<48 random bits in hex>` (schemas, streams).
pub fn unique(prefix: &str) -> String {
    let n: u64 = rand::random();
    format!("{prefix}_{:012x}", n & 0xffff_ffff_ffff)
}

/// Waits until `corepay reconcile` passes (replication caught up), or fails the test with its
/// report and the gateway's log after `within`.
pub fn wait_reconciled_within(s: &Server, what: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (ok, report) = s.reconcile();
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: PostgreSQL never matched the gateway:\n{report}\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
