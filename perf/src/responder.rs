//! Baseline responders: the "ceiling" servers corepay's benchmarks are compared against.
//!
//! One glommio `LocalExecutor` (pinned to `core` if given, as corepay pins its shards) runs
//! the same protocols as corepay and does nothing else, so the gap between a responder
//! and corepay under the same load is what corepay's own work costs:
//!
//! - **HTTP/1.1** (`http`): requests are framed with httparse as corepay frames them
//!   (keep-alive, pipelining, `Content-Length` bodies, corepay's default limits), and every
//!   request is answered `201 Created` with a JSON body shaped like corepay's payment object
//!   (`"id":"pay_0_<n>"`, `n` a per-responder counter, so answers can be told apart),
//!   through corepay's own `http::wire::write_response`. Measures the network stack, the
//!   runtime and HTTP framing: a ceiling for corepay's HTTP API.
//! - **ISO 8583** (`iso`): frames with corepay's default header and bitmap (from
//!   `config::Iso8583::default()`), decoded and encoded with corepay's codec; every request
//!   is answered with MTI + 10, the fields corepay echoes (`flows::ECHOED`, never DE2),
//!   DE38 (an approval code) and DE39 = 00; network management (08xx) echoes DE70 and has
//!   no DE38, like corepay. A body that does not decode is answered with DE39 = 30 when its
//!   MTI can be read, else the connection is closed. Measures the runtime plus the codec.
//! - **Durable** (`durable`): the same, but before answering, each request appends a
//!   128-byte record to a preallocated, zero-filled O_DIRECT file, and a single flusher
//!   (group commit) writes everything appended since its last round as whole 4096-byte
//!   blocks at the current block-aligned offset (re-writing the partly filled last block
//!   next round, as a WAL does; wrapping to offset 0 when the file is full), calls
//!   fdatasync over io_uring, and only then lets the answers of those records be written.
//!   Records appended while a round is in flight wait for the next one, so batches grow
//!   with the load. Measures the cost of "one fdatasync on the critical path" with nothing
//!   else: a ceiling for corepay with its WAL.
//!
//! Answers on one connection are written in order; all the answers to the requests taken
//! from one read go out in one write (after one durability wait in durable mode). corepay
//! writes each HTTP answer as soon as it is ready; batching can only raise the ceiling.
//!
//! `run` blocks until SIGTERM or SIGINT and then returns `Ok(())`.

// `x % n == 0` rather than `is_multiple_of` (Rust 1.87): corepay's MSRV is 1.85.
#![allow(clippy::manual_is_multiple_of)]

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::task::{Poll, Waker};
use std::time::Duration;

use corepay::config;
use corepay::http::wire;
use corepay::iso8583::codec::{decode, decode_partial, encode, BitmapEncoding, Message};
use corepay::iso8583::flows::{response_mti, ECHOED};
use corepay::iso8583::{write_frame, FrameReader, Framing, FIELDS};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::io::{DmaFile, OpenOptions};
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};

/// Which protocol the responder speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Iso8583,
}

/// What a baseline responder does.
#[derive(Clone, Debug)]
pub struct ResponderOpts {
    /// HTTP listen address (None: no HTTP listener).
    pub http: Option<SocketAddr>,
    /// ISO 8583 listen address (None: no ISO listener).
    pub iso: Option<SocketAddr>,
    /// Some(dir): group-commit one 128-byte record per request with fdatasync before answering.
    pub durable: Option<PathBuf>,
    /// Core to pin the single executor to (None: unpinned).
    pub core: Option<usize>,
    /// Some((cert, key)) PEM files: both listeners speak TLS with corepay's own settings
    /// (`corepay::tls::server_config`), so the TLS cost is compared like for like.
    pub tls: Option<(String, String)>,
}

/// Runs the responder until SIGTERM or SIGINT. Err if a listener cannot be bound, the
/// durable file cannot be created, or the executor cannot be started.
pub fn run(opts: ResponderOpts) -> io::Result<()> {
    // Before the executor thread exists, so that it (and glommio's helper threads) inherit
    // the blocked mask and the signals reach only the signal thread.
    let stop = Arc::new(AtomicBool::new(false));
    install_signal_thread(stop.clone())?;
    let running = start(&opts, stop)?;
    eprintln!(
        "responder: http {} iso {} durable={} core={}",
        show_addr(running.http),
        show_addr(running.iso),
        opts.durable
            .as_ref()
            .map_or_else(|| "none".to_string(), |d| d.display().to_string()),
        opts.core
            .map_or_else(|| "unpinned".to_string(), |c| c.to_string()),
    );
    running.join()
}

fn show_addr(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "none".to_string(), |a| a.to_string())
}

/// Blocks SIGTERM and SIGINT in the calling thread (inherited by threads it spawns later)
/// and sets `stop` when one arrives.
fn install_signal_thread(stop: Arc<AtomicBool>) -> io::Result<()> {
    // SAFETY: sigset manipulation on a local, zero-initialised sigset_t.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        set
    };
    std::thread::Builder::new()
        .name("responder-signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is an initialised sigset_t; `sig` is a valid out pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                stop.store(true, Ordering::SeqCst);
                return;
            }
        })?;
    Ok(())
}

/// A started responder: the addresses it listens on and its executor thread.
struct Running {
    http: Option<SocketAddr>,
    iso: Option<SocketAddr>,
    executor: glommio::ExecutorJoinHandle<()>,
}

impl Running {
    /// Waits for the executor to end (after `stop` is set).
    fn join(self) -> io::Result<()> {
        self.executor
            .join()
            .map_err(|e| io::Error::other(format!("responder executor: {e}")))
    }
}

/// How often the executor looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Starts the executor, binds the listeners (and prepares the durable file), and returns
/// once it is serving; it stops within `STOP_POLL` of `stop` being set.
fn start(opts: &ResponderOpts, stop: Arc<AtomicBool>) -> io::Result<Running> {
    if let Some(dir) = &opts.durable {
        std::fs::create_dir_all(dir).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display()))
        })?;
    }
    let placement = match opts.core {
        Some(core) => Placement::Fixed(core),
        None => Placement::Unbound,
    };
    let (ready_tx, ready_rx) =
        mpsc::channel::<io::Result<(Option<SocketAddr>, Option<SocketAddr>)>>();
    let core = opts.core;
    let opts = opts.clone();
    let spin = Duration::from_micros(config::Server::default().spin_before_park_us);
    let executor = LocalExecutorBuilder::new(placement)
        .name("responder")
        .spin_before_park(spin)
        .spawn(move || async move {
            let addrs = match setup(&opts).await {
                Ok(addrs) => addrs,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(addrs));
            while !stop.load(Ordering::Relaxed) {
                glommio::timer::sleep(STOP_POLL).await;
            }
        })
        .map_err(|e| {
            let on = core.map_or_else(String::new, |c| format!(" on core {c}"));
            io::Error::other(format!("cannot start the responder executor{on}: {e}"))
        })?;
    match ready_rx.recv() {
        Ok(Ok((http, iso))) => Ok(Running {
            http,
            iso,
            executor,
        }),
        Ok(Err(e)) => {
            let _ = executor.join();
            Err(e)
        }
        Err(_) => {
            let e = executor.join().err();
            Err(io::Error::other(format!(
                "the responder executor did not start: {}",
                e.map_or_else(|| "it ended".to_string(), |e| e.to_string())
            )))
        }
    }
}

/// What every connection of the executor shares.
struct Shared {
    /// The per-responder answer counter (`pay_0_<n>`, DE38).
    next_id: Cell<u64>,
    /// The group-commit log, in durable mode.
    log: Option<Rc<Log>>,
    /// corepay's default HTTP limits.
    http: config::Http,
    /// corepay's default ISO 8583 header, bitmap encoding and frame limit.
    framing: Framing,
    bitmap: BitmapEncoding,
    max_frame: usize,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Shared {
    fn next_id(&self) -> u64 {
        let n = self.next_id.get() + 1;
        self.next_id.set(n);
        n
    }
}

/// Binds the listeners, prepares the durable file, and spawns the accept loops (and the
/// flusher). Returns the bound addresses.
async fn setup(opts: &ResponderOpts) -> io::Result<(Option<SocketAddr>, Option<SocketAddr>)> {
    let http = opts.http.map(|addr| bind(addr, "http")).transpose()?;
    let iso = opts.iso.map(|addr| bind(addr, "iso 8583")).transpose()?;
    let log = match &opts.durable {
        Some(dir) => {
            let log = Rc::new(Log::create(&dir.join(LOG_FILE), LOG_BYTES).await?);
            glommio::spawn_local(log.clone().run_flusher()).detach();
            Some(log)
        }
        None => None,
    };
    let iso_defaults = config::Iso8583::default();
    let framing = iso_defaults
        .framing()
        .map_err(|e| io::Error::other(e.to_string()))?;
    let bitmap = iso_defaults
        .bitmap_encoding()
        .map_err(|e| io::Error::other(e.to_string()))?;
    let tls = match &opts.tls {
        Some((cert, key)) => {
            let files = config::Tls {
                cert_file: cert.clone(),
                key_file: key.clone(),
                client_ca_file: String::new(),
            };
            let alpn = opts.http.is_some().then_some(corepay::tls::ALPN_HTTP1);
            let c = corepay::tls::server_config("responder --tls", &files, alpn)
                .map_err(|e| io::Error::other(e.to_string()))?;
            Some(Arc::new(c))
        }
        None => None,
    };
    let shared = Rc::new(Shared {
        next_id: Cell::new(0),
        log,
        http: config::Http::default(),
        framing,
        bitmap,
        max_frame: iso_defaults.max_frame_bytes,
        tls,
    });
    let mut addrs = (None, None);
    if let Some((listener, addr)) = http {
        accept_loop(listener, shared.clone(), Protocol::Http);
        addrs.0 = Some(addr);
    }
    if let Some((listener, addr)) = iso {
        accept_loop(listener, shared, Protocol::Iso8583);
        addrs.1 = Some(addr);
    }
    Ok(addrs)
}

/// Binds `addr`, refusing a port another socket listens on: glommio binds with
/// SO_REUSEPORT (as corepay's shards do), so without the check a second server on the same
/// port (a corepay left running, say) would silently share the benchmark's connections.
fn bind(addr: SocketAddr, what: &str) -> io::Result<(TcpListener, SocketAddr)> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("cannot bind {what} {addr}: {e}"));
    if addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr).map_err(named)?);
    }
    let listener = TcpListener::bind(addr).map_err(|e| named(e.into()))?;
    let local = listener.local_addr().map_err(|e| named(e.into()))?;
    Ok((listener, local))
}

fn accept_loop(listener: TcpListener, shared: Rc<Shared>, protocol: Protocol) {
    glommio::spawn_local(async move {
        loop {
            let stream = match listener.accept().await {
                Ok(stream) => stream,
                Err(_) => {
                    // Out of descriptors, or an aborted handshake: do not spin.
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let shared = shared.clone();
            glommio::spawn_local(async move {
                let Some(tls) = shared.tls.clone() else {
                    return serve(stream, shared, protocol).await;
                };
                let accept = futures_rustls::TlsAcceptor::from(tls).accept(stream);
                if let Ok(stream) = accept.await {
                    serve(stream, shared, protocol).await;
                }
            })
            .detach();
        }
    })
    .detach();
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    shared: Rc<Shared>,
    protocol: Protocol,
) {
    match protocol {
        Protocol::Http => http_connection(stream, shared).await,
        Protocol::Iso8583 => iso_connection(stream, shared).await,
    }
}

/// A connection's receive buffer: unconsumed bytes are `buf[start..end]`.
struct RecvBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max: usize,
}

/// First size of a receive buffer; it grows on demand up to its maximum.
const RECV_INITIAL: usize = 16 * 1024;

impl RecvBuf {
    fn new(max: usize) -> RecvBuf {
        RecvBuf {
            buf: vec![0; RECV_INITIAL.min(max)],
            start: 0,
            end: 0,
            max,
        }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        assert!(n <= self.end - self.start);
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads once; false on EOF or error. Makes room first: moves the pending bytes to the
    /// front, then grows (at least to `needed` pending bytes), never past `max`. The
    /// caller's parser refuses a request or frame longer than `max`, so pending bytes
    /// never fill a buffer of `max` bytes.
    async fn fill<S: AsyncRead + Unpin>(&mut self, stream: &mut S, needed: usize) -> bool {
        if self.end == self.buf.len() && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            assert!(self.buf.len() < self.max, "a request longer than the limit");
            let size = (self.buf.len() * 2).max(needed).min(self.max);
            self.buf.resize(size, 0);
        }
        matches!(stream.read(&mut self.buf[self.end..]).await, Ok(n) if n > 0 && {
            self.end += n;
            true
        })
    }
}

// ---------------------------------------------------------------------------------------
// HTTP

/// The body of every 201: corepay's payment object (serde_json, keys sorted) with the id
/// spliced in between these two halves.
const PAYMENT_HEAD: &[u8] = br#"{"amount":"10.00","amount_captured":"0.00","amount_refunded":"0.00","approval_code":"000001","card":{"bin":"424242","last4":"4242"},"created_at":1700000000,"currency":"EUR","decline_code":null,"id":"pay_0_"#;
const PAYMENT_TAIL: &[u8] = br#"","merchant_id":1,"object":"payment","reference":null,"response_code":"00","status":"authorized"}"#;
const BAD_REQUEST: &[u8] = br#"{"error":{"type":"invalid_request_error","code":"malformed_request","message":"bad request"}}"#;
/// Header slots for httparse, on the stack (corepay's default `max_headers`).
const HEADER_SLOTS: usize = 32;

async fn http_connection<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, shared: Rc<Shared>) {
    let limits = &shared.http;
    let mut recv = RecvBuf::new(limits.max_header_bytes + limits.max_body_bytes);
    let mut out = Vec::with_capacity(4096);
    let mut body = Vec::with_capacity(PAYMENT_HEAD.len() + PAYMENT_TAIL.len() + 20);
    let mut needed = 0;
    loop {
        if !recv.fill(&mut stream, needed).await {
            return;
        }
        let mut durable_at = None;
        let mut close = false;
        loop {
            match parse_http(recv.pending(), limits) {
                Parsed::Partial(need) => {
                    needed = need;
                    break;
                }
                Parsed::Request { len, keep_alive } => {
                    if let Some(log) = &shared.log {
                        durable_at = Some(log.append(Protocol::Http, &recv.pending()[..len]));
                    }
                    body.clear();
                    body.extend_from_slice(PAYMENT_HEAD);
                    push_decimal(&mut body, shared.next_id());
                    body.extend_from_slice(PAYMENT_TAIL);
                    wire::write_response(&mut out, 201, &[], "application/json", &body, keep_alive);
                    recv.consume(len);
                    if !keep_alive {
                        close = true;
                        break;
                    }
                }
                Parsed::Bad => {
                    wire::write_response(
                        &mut out,
                        400,
                        &[],
                        "application/json",
                        BAD_REQUEST,
                        false,
                    );
                    close = true;
                    break;
                }
            }
        }
        if !send(&mut stream, &shared, durable_at, &mut out).await {
            return;
        }
        if close {
            let _ = stream.close().await;
            return;
        }
    }
}

/// Waits until the record `durable_at` (if any) is durable, then writes `out` and clears it.
/// False: the connection must end (the log failed, or the write did).
async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    shared: &Shared,
    durable_at: Option<u64>,
    out: &mut Vec<u8>,
) -> bool {
    if let (Some(log), Some(seq)) = (&shared.log, durable_at) {
        if log.wait(seq).await.is_err() {
            return false;
        }
    }
    if out.is_empty() {
        return true;
    }
    // The flush sends what a TLS session still buffers (a no-op on TCP).
    let ok = stream.write_all(out).await.is_ok() && stream.flush().await.is_ok();
    out.clear();
    ok
}

/// What the front of a connection's pending bytes holds.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// An incomplete request: read more, until at least this many bytes are pending.
    Partial(usize),
    /// A complete request of `len` bytes (head and body).
    Request { len: usize, keep_alive: bool },
    /// Not a request we take: answer 400 and close.
    Bad,
}

/// Frames the first request of `pending` as corepay does (`http::wire`): httparse heads,
/// `Content-Length` bodies only, corepay's limits. Whatever corepay refuses (with 400, 411,
/// 413 or 431) is `Bad` here.
fn parse_http(pending: &[u8], limits: &config::Http) -> Parsed {
    let mut slots = [httparse::EMPTY_HEADER; HEADER_SLOTS];
    let mut request = httparse::Request::new(&mut slots[..limits.max_headers.min(HEADER_SLOTS)]);
    let head_len = match request.parse(pending) {
        Ok(httparse::Status::Complete(n)) if n <= limits.max_header_bytes => n,
        Ok(httparse::Status::Partial) if pending.len() < limits.max_header_bytes => {
            return Parsed::Partial(pending.len() + 1)
        }
        _ => return Parsed::Bad,
    };
    let mut content_length = None;
    let (mut close, mut keep_alive) = (false, false);
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            match (content_length, parse_length(header.value)) {
                (None, Some(n)) => content_length = Some(n),
                _ => return Parsed::Bad, // duplicate or not a number
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Bad; // corepay takes Content-Length bodies only
        } else if header.name.eq_ignore_ascii_case("connection") {
            for option in header.value.split(|&b| b == b',') {
                let option = option.trim_ascii();
                close |= option.eq_ignore_ascii_case(b"close");
                keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    let keep_alive = match request.version {
        Some(1) => !close,
        Some(0) => keep_alive && !close,
        _ => return Parsed::Bad,
    };
    let body_len = content_length.unwrap_or(0);
    if body_len > limits.max_body_bytes {
        return Parsed::Bad;
    }
    let len = head_len + body_len;
    if pending.len() < len {
        return Parsed::Partial(len);
    }
    Parsed::Request { len, keep_alive }
}

fn parse_length(value: &[u8]) -> Option<usize> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0, |n, &d| n * 10 + usize::from(d - b'0')))
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

// ---------------------------------------------------------------------------------------
// ISO 8583

async fn iso_connection<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, shared: Rc<Shared>) {
    let reader = FrameReader::new(shared.framing, shared.max_frame);
    let mut recv = RecvBuf::new(shared.framing.header_len() + reader.max_frame());
    let mut out = Vec::with_capacity(4096);
    let mut encoded = Vec::with_capacity(512);
    loop {
        if !recv.fill(&mut stream, 0).await {
            return;
        }
        let mut durable_at = None;
        let mut close = false;
        loop {
            let (header, len) = match reader.next_frame(recv.pending()) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => {
                    close = true; // the stream can no longer be split into frames
                    break;
                }
            };
            let frame = &recv.pending()[header..header + len];
            if len > 0 {
                // (A zero length is a keep-alive: no answer.)
                if !iso_answer(frame, &shared, &mut encoded, &mut out) {
                    close = true;
                    break;
                }
                if let Some(log) = &shared.log {
                    durable_at = Some(log.append(Protocol::Iso8583, frame));
                }
            }
            recv.consume(header + len);
        }
        if !send(&mut stream, &shared, durable_at, &mut out).await || close {
            return;
        }
    }
}

/// The fields a response keeps of its request: `flows::ECHOED` (DE70 too for 08xx).
const ECHO_MASK: u128 = {
    let mut mask = 0u128;
    let mut i = 0;
    while i < ECHOED.len() {
        mask |= 1 << ECHOED[i];
        i += 1;
    }
    mask
};

/// Appends the framed answer to `frame` to `out` (`encoded` is scratch space). False: the
/// MTI cannot be read, close the connection.
fn iso_answer(frame: &[u8], shared: &Shared, encoded: &mut Vec<u8>, out: &mut Vec<u8>) -> bool {
    let response = match decode(frame, shared.bitmap) {
        Ok(mut request) => {
            respond(&mut request, shared.next_id());
            request
        }
        Err(_) => {
            // corepay's format error: MTI + 10, the STAN if it can be read, DE39 = 30.
            let partial = decode_partial(frame, shared.bitmap);
            let Some(mti) = partial.mti.and_then(response_mti) else {
                return false;
            };
            let mut m = Message::new(mti);
            if let Some(stan) = partial.stan {
                m.set(11, &stan);
            }
            m.set(39, b"30");
            m
        }
    };
    encoded.clear();
    if encode(&response, shared.bitmap, encoded).is_err() {
        return false;
    }
    write_frame(shared.framing, encoded, out);
    true
}

/// Turns a decoded request into its approval, in place (no new message): drops every field
/// but the echoed ones, sets the response MTI, DE38 (from `n`) and DE39 = 00. A response
/// MTI sent to us is answered 30 under its own MTI, as corepay does.
fn respond(m: &mut Message, n: u64) {
    let mti = m.mti();
    let network = mti[..3] == *b"080";
    let keep = ECHO_MASK | if network { 1 << 70 } else { 0 };
    for field in FIELDS {
        if keep & (1 << field.number) == 0 {
            m.remove(field.number);
        }
    }
    let Some(response) = response_mti(mti) else {
        m.set(39, b"30");
        return;
    };
    m.set_mti(response);
    if !network {
        let mut code = [b'0'; 6];
        let mut v = n % 1_000_000;
        for digit in code.iter_mut().rev() {
            *digit = b'0' + (v % 10) as u8;
            v /= 10;
        }
        m.set(38, &code);
    }
    m.set(39, b"00");
}

// ---------------------------------------------------------------------------------------
// Durable mode: the group-commit log

const LOG_FILE: &str = "responder.log";
const LOG_BYTES: u64 = 64 << 20;
const BLOCK: usize = 4096;
const RECORD: usize = 128;
const _: () = assert!(BLOCK % RECORD == 0 && LOG_BYTES % BLOCK as u64 == 0);
const _: () = assert!(ZERO_CHUNK % BLOCK == 0);
/// Zero-fill granularity when creating the file.
const ZERO_CHUNK: usize = 1 << 20;

/// A preallocated O_DIRECT file written as a ring of 128-byte records, one flusher.
struct Log {
    file: DmaFile,
    /// The file's length, a multiple of BLOCK (`LOG_BYTES` but in tests).
    bytes: u64,
    state: RefCell<LogState>,
}

struct LogState {
    /// The records from file offset `base` on that are not yet behind a written, synced,
    /// full block: the partly filled last block (already durable, re-written next round)
    /// and everything appended since.
    tail: Vec<u8>,
    /// Block-aligned file offset of `tail[0]`.
    base: u64,
    /// Sequence number of the record at `tail[0]`.
    first_seq: u64,
    /// The last sequence number given out (0: none yet).
    appended: u64,
    /// Every record up to this one is durable.
    durable: u64,
    /// A write or fdatasync failed: nothing is acknowledged any more.
    failed: bool,
    /// Connections waiting for a record (its sequence number) to be durable.
    waiters: Vec<(u64, Waker)>,
    /// The flusher, when it waits for records.
    flusher: Option<Waker>,
}

impl Log {
    /// Creates (or re-creates) the file at `path`: preallocated and zero-filled, so later
    /// writes land on written extents and fdatasync has only data to flush (as corepay's
    /// `shard::disk` does for WAL segments).
    async fn create(path: &Path, bytes: u64) -> io::Result<Log> {
        assert!(bytes > 0 && bytes % BLOCK as u64 == 0);
        let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .dma_open(path)
            .await
            .map_err(|e| named(e.into()))?;
        if BLOCK as u64 % file.alignment() != 0 {
            return Err(named(io::Error::other(format!(
                "device alignment {} exceeds {BLOCK}",
                file.alignment()
            ))));
        }
        file.pre_allocate(bytes, false)
            .await
            .map_err(|e| named(e.into()))?;
        let chunk = ZERO_CHUNK.min(bytes as usize);
        let mut zeros = file.alloc_dma_buffer(chunk);
        zeros.as_bytes_mut().fill(0);
        let zeros = Rc::new(zeros);
        let mut pos = 0;
        while pos < bytes {
            let n = (bytes - pos).min(chunk as u64) as usize;
            let written = if n == chunk {
                file.write_rc_at(zeros.clone(), pos).await
            } else {
                let mut last = file.alloc_dma_buffer(n);
                last.as_bytes_mut().fill(0);
                file.write_at(last, pos).await
            }
            .map_err(|e| named(e.into()))?;
            if written != n {
                return Err(named(short_write(written, n, pos)));
            }
            pos += n as u64;
        }
        file.fdatasync().await.map_err(|e| named(e.into()))?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(Log {
            file,
            bytes,
            state: RefCell::new(LogState {
                tail: Vec::with_capacity(64 * 1024),
                base: 0,
                first_seq: 1,
                appended: 0,
                durable: 0,
                failed: false,
                waiters: Vec::new(),
                flusher: None,
            }),
        })
    }

    /// Appends a record (a sequence number, the protocol and the request's first bytes)
    /// and returns its sequence number, for `wait`.
    fn append(&self, protocol: Protocol, request: &[u8]) -> u64 {
        let mut s = self.state.borrow_mut();
        s.appended += 1;
        let seq = s.appended;
        let at = s.tail.len();
        s.tail.resize(at + RECORD, 0);
        let record = &mut s.tail[at..];
        record[..8].copy_from_slice(&seq.to_le_bytes());
        record[8] = protocol as u8;
        let n = request.len().min(RECORD - 10);
        record[9] = n as u8;
        record[10..10 + n].copy_from_slice(&request[..n]);
        if let Some(flusher) = s.flusher.take() {
            flusher.wake();
        }
        seq
    }

    /// Until record `seq` is durable. Err if the log failed first.
    async fn wait(&self, seq: u64) -> io::Result<()> {
        poll_fn(|cx| {
            let mut s = self.state.borrow_mut();
            if s.durable >= seq {
                Poll::Ready(Ok(()))
            } else if s.failed {
                Poll::Ready(Err(io::Error::other("the responder log failed")))
            } else {
                s.waiters.push((seq, cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }

    /// The one flusher: a round whenever records are not durable. On a failure the log
    /// is failed for good (waiters get an error: their requests are never answered).
    async fn run_flusher(self: Rc<Self>) {
        loop {
            poll_fn(|cx| {
                let mut s = self.state.borrow_mut();
                if s.appended > s.durable {
                    Poll::Ready(())
                } else {
                    s.flusher = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            if let Err(e) = self.flush().await {
                eprintln!("responder: durable log failed, no more answers: {e}");
                let mut s = self.state.borrow_mut();
                s.failed = true;
                for (_, waker) in s.waiters.drain(..) {
                    waker.wake();
                }
                return;
            }
        }
    }

    /// One group-commit round: writes the tail (whole blocks, zero-padded, up to the end
    /// of the file) at `base`, fdatasyncs, then marks its records durable and wakes their
    /// waiters. Full blocks leave the tail; a partly filled last block stays, to be
    /// re-written with the records that follow it.
    async fn flush(&self) -> io::Result<()> {
        let (buf, base, len, last) = {
            let s = self.state.borrow();
            let room = (self.bytes - s.base) as usize;
            let len = s.tail.len().min(room);
            let padded = len.next_multiple_of(BLOCK);
            let mut buf = self.file.alloc_dma_buffer(padded);
            let bytes = buf.as_bytes_mut();
            bytes[..len].copy_from_slice(&s.tail[..len]);
            bytes[len..].fill(0);
            (buf, s.base, len, s.first_seq + (len / RECORD) as u64 - 1)
        };
        let wanted = buf.len();
        let written = self.file.write_at(buf, base).await?;
        if written != wanted {
            return Err(short_write(written, wanted, base));
        }
        self.file.fdatasync().await?;

        let mut s = self.state.borrow_mut();
        assert!(last > s.durable && last <= s.appended);
        s.durable = last;
        let full = len / BLOCK * BLOCK;
        s.tail.drain(..full);
        s.first_seq += (full / RECORD) as u64;
        s.base += full as u64;
        if s.base == self.bytes {
            s.base = 0; // the file is full: wrap
        }
        s.waiters.retain(|(seq, waker)| {
            if *seq <= last {
                waker.wake_by_ref();
                false
            } else {
                true
            }
        });
        Ok(())
    }
}

fn short_write(written: usize, wanted: usize, pos: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::WriteZero,
        format!("short write: {written} of {wanted} bytes at {pos}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream as StdStream;

    /// A responder on free ports of 127.0.0.1, stopped and joined on drop.
    struct Harness {
        running: Option<Running>,
        stop: Arc<AtomicBool>,
    }

    impl Harness {
        fn start(durable: Option<PathBuf>) -> Harness {
            let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
            let opts = ResponderOpts {
                http: Some(any),
                iso: Some(any),
                durable,
                core: None,
                tls: None,
            };
            let stop = Arc::new(AtomicBool::new(false));
            let running = start(&opts, stop.clone()).expect("the responder starts");
            Harness {
                running: Some(running),
                stop,
            }
        }

        fn connect(&self, protocol: Protocol) -> StdStream {
            let running = self.running.as_ref().unwrap();
            let addr = match protocol {
                Protocol::Http => running.http,
                Protocol::Iso8583 => running.iso,
            };
            let stream = StdStream::connect(addr.unwrap()).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            stream
        }
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(running) = self.running.take() {
                running.join().unwrap();
            }
        }
    }

    /// A unique, empty directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let name = format!(
                "corepay-perf-{tag}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let dir = std::env::temp_dir().join(name);
            let _ = std::fs::remove_dir_all(&dir);
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// One parsed HTTP answer.
    #[derive(Debug)]
    struct Answer {
        status: u16,
        close: bool,
        body: String,
    }

    /// Reads until `count` whole answers have arrived.
    fn read_answers(stream: &mut StdStream, count: usize) -> Vec<Answer> {
        let mut buf = Vec::new();
        let mut answers = Vec::new();
        let mut chunk = [0u8; 4096];
        while answers.len() < count {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut response = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(head)) = response.parse(&buf) {
                let header = |name: &str| {
                    response
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| std::str::from_utf8(h.value).unwrap().to_string())
                };
                let len: usize = header("content-length").unwrap().parse().unwrap();
                if buf.len() >= head + len {
                    assert_eq!(header("content-type").as_deref(), Some("application/json"));
                    answers.push(Answer {
                        status: response.code.unwrap(),
                        close: header("connection").as_deref() == Some("close"),
                        body: String::from_utf8(buf[head..head + len].to_vec()).unwrap(),
                    });
                    buf.drain(..head + len);
                    continue;
                }
            }
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "closed after {} answers", answers.len());
            buf.extend_from_slice(&chunk[..n]);
        }
        assert!(buf.is_empty(), "unexpected bytes: {:?}", buf.escape_ascii());
        answers
    }

    fn payment_request(body: &str, extra: &str) -> String {
        format!(
            "POST /v1/payments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n{extra}\r\n{body}",
            body.len()
        )
    }

    fn payment_id(answer: &Answer) -> String {
        let at = answer.body.find("\"id\":\"").unwrap() + 6;
        let id = &answer.body[at..];
        id[..id.find('"').unwrap()].to_string()
    }

    fn assert_eof(stream: &mut StdStream) {
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "{:?}", rest.escape_ascii());
    }

    /// Checks HTTP: pipelined requests (with bodies, one split across writes), keep-alive,
    /// `Connection: close`, and a malformed request.
    fn check_http(h: &Harness) {
        let mut s = h.connect(Protocol::Http);
        let body = r#"{"amount":"10.00","currency":"EUR"}"#;
        let mut pipelined = String::new();
        for _ in 0..5 {
            pipelined.push_str(&payment_request(body, ""));
        }
        pipelined.push_str("GET /healthz HTTP/1.1\r\n\r\n");
        s.write_all(pipelined.as_bytes()).unwrap();
        let answers = read_answers(&mut s, 6);
        let mut ids = Vec::new();
        for a in &answers {
            assert_eq!(a.status, 201, "{a:?}");
            assert!(!a.close);
            assert!(a.body.contains(r#""status":"authorized""#), "{}", a.body);
            assert!(a.body.contains(r#""currency":"EUR""#), "{}", a.body);
            serde_json::from_str::<serde_json::Value>(&a.body).expect("the body is JSON");
            let id = payment_id(a);
            assert!(id.starts_with("pay_0_"), "{id}");
            ids.push(id);
        }
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 6, "the ids differ");

        // One request split in three writes, the body last.
        let one = payment_request(body, "");
        let (a, rest) = one.split_at(10);
        let (b, c) = rest.split_at(rest.len() - 5);
        for part in [a, b, c] {
            s.write_all(part.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(read_answers(&mut s, 1)[0].status, 201);

        // Connection: close is answered, then the connection ends (what follows is ignored).
        let mut last = payment_request(body, "Connection: close\r\n");
        last.push_str(&payment_request(body, ""));
        s.write_all(last.as_bytes()).unwrap();
        let answers = read_answers(&mut s, 1);
        assert_eq!((answers[0].status, answers[0].close), (201, true));
        assert_eof(&mut s);

        // Malformed: the valid request before it is answered, then 400 and close.
        let mut s = h.connect(Protocol::Http);
        let mut bad = payment_request(body, "");
        bad.push_str("NOT HTTP AT ALL\r\n\r\n");
        s.write_all(bad.as_bytes()).unwrap();
        let answers = read_answers(&mut s, 2);
        assert_eq!(answers[0].status, 201);
        assert_eq!((answers[1].status, answers[1].close), (400, true));
        assert_eof(&mut s);
    }

    fn authorization(stan: &[u8; 6]) -> Message {
        let mut m = Message::new(*b"0100");
        for (field, value) in [
            (2u8, &b"4242424242424242"[..]),
            (3, b"000000"),
            (4, b"000000001000"),
            (7, b"1121120000"),
            (11, stan),
            (12, b"120000"),
            (13, b"1121"),
            (14, b"3012"),
            (32, b"123456"),
            (37, b"RRN000000001"),
            (41, b"TERM0001"),
            (42, b"SHOP1          "),
            (49, b"978"),
        ] {
            m.set(field, value);
        }
        m
    }

    fn framed(m: &Message) -> Vec<u8> {
        let mut body = Vec::new();
        encode(m, BitmapEncoding::Binary, &mut body).unwrap();
        let mut out = Vec::new();
        write_frame(Framing::Binary2, &body, &mut out);
        out
    }

    fn read_iso(s: &mut StdStream) -> Message {
        let mut header = [0u8; 2];
        s.read_exact(&mut header).unwrap();
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(header))];
        s.read_exact(&mut body).unwrap();
        decode(&body, BitmapEncoding::Binary).expect("the answer decodes")
    }

    /// Checks ISO 8583: pipelined 0100s, a keep-alive, an 0800, a frame that does not
    /// decode, and one whose MTI cannot be read.
    fn check_iso(h: &Harness) {
        let mut s = h.connect(Protocol::Iso8583);
        let mut bytes = Vec::new();
        for i in 0..4u8 {
            bytes.extend_from_slice(&framed(&authorization(&[
                b'0',
                b'0',
                b'0',
                b'0',
                b'1',
                b'0' + i,
            ])));
        }
        bytes.extend_from_slice(&[0, 0]); // a keep-alive: no answer
        let mut sign_on = Message::new(*b"0800");
        sign_on.set(7, b"1121120000");
        sign_on.set(11, b"000009");
        sign_on.set(70, b"001");
        bytes.extend_from_slice(&framed(&sign_on));
        s.write_all(&bytes).unwrap();
        let request = authorization(b"000000");
        let mut codes = Vec::new();
        for i in 0..4u8 {
            let answer = read_iso(&mut s);
            assert_eq!(answer.mti(), *b"0110");
            assert_eq!(
                answer.get(11),
                Some(&[b'0', b'0', b'0', b'0', b'1', b'0' + i][..])
            );
            assert_eq!(answer.get(39), Some(&b"00"[..]));
            assert_eq!(answer.get(2), None, "the PAN is never echoed");
            assert_eq!(answer.get(14), None);
            for field in [3u8, 4, 7, 12, 13, 32, 37, 41, 42, 49] {
                assert_eq!(answer.get(field), request.get(field), "DE{field}");
            }
            let code = answer.get(38).expect("an approval code").to_vec();
            assert_eq!(code.len(), 6);
            codes.push(code);
        }
        codes.dedup();
        assert_eq!(codes.len(), 4);
        let answer = read_iso(&mut s);
        assert_eq!(answer.mti(), *b"0810");
        assert_eq!(
            answer.fields().collect::<Vec<_>>(),
            vec![
                (7u8, &b"1121120000"[..]),
                (11, b"000009"),
                (39, b"00"),
                (70, b"001")
            ]
        );

        // A body that does not decode (a field short) but whose MTI and STAN can be read.
        let mut broken = framed(&authorization(b"123456"));
        broken.pop();
        let len = (broken.len() - 2) as u16;
        broken[..2].copy_from_slice(&len.to_be_bytes());
        s.write_all(&broken).unwrap();
        let answer = read_iso(&mut s);
        assert_eq!(answer.mti(), *b"0110");
        assert_eq!(answer.get(11), Some(&b"123456"[..]));
        assert_eq!(answer.get(39), Some(&b"30"[..]));

        // No MTI: the connection is closed.
        s.write_all(b"\x00\x04ab12").unwrap();
        assert_eof(&mut s);
    }

    #[test]
    fn responder_http_and_iso8583() {
        let h = Harness::start(None);
        check_http(&h);
        check_iso(&h);
    }

    #[test]
    fn responder_durable_writes_records_before_answering() {
        let dir = TempDir::new("durable");
        let h = Harness::start(Some(dir.0.clone()));
        check_http(&h);
        check_iso(&h);
        // Many connections at once: their records share group commits.
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let mut s = h.connect(Protocol::Http);
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let mut two = payment_request("{}", "");
                        two.push_str(&payment_request("{}", ""));
                        s.write_all(two.as_bytes()).unwrap();
                        assert!(read_answers(&mut s, 2).iter().all(|a| a.status == 201));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(h);

        let file = std::fs::read(dir.0.join(LOG_FILE)).unwrap();
        assert_eq!(file.len() as u64, LOG_BYTES);
        let records: Vec<&[u8]> = file
            .chunks(RECORD)
            .take_while(|r| r[..8] != [0; 8])
            .collect();
        // check_http: 9 201s (and a 400, no record); check_iso: 6 answers; then 8 × 20 × 2.
        assert_eq!(records.len(), 9 + 6 + 8 * 20 * 2);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(u64::from_le_bytes(r[..8].try_into().unwrap()), i as u64 + 1);
        }
        assert_eq!(records[0][8], Protocol::Http as u8);
        assert!(records[0][10..].starts_with(b"POST /v1/payments HTTP/1.1\r\n"));
        let iso: Vec<_> = records
            .iter()
            .filter(|r| r[8] == Protocol::Iso8583 as u8)
            .collect();
        assert_eq!(iso.len(), 6);
        assert!(iso[0][10..].starts_with(b"0100"));
    }

    /// The log on its own, on a file of 3 blocks: records keep their place in the ring
    /// across many rounds and wraps, and `wait` returns only once a record is durable.
    #[test]
    fn responder_log_group_commit_wraps() {
        let dir = TempDir::new("log");
        std::fs::create_dir_all(&dir.0).unwrap();
        let path = dir.0.join(LOG_FILE);
        let bytes = 3 * BLOCK as u64;
        let per_file = bytes / RECORD as u64;
        let total = 5 * per_file + 7;
        let at = path.clone();
        LocalExecutorBuilder::new(Placement::Unbound)
            .spawn(move || async move {
                let log = Rc::new(Log::create(&at, bytes).await.unwrap());
                glommio::spawn_local(log.clone().run_flusher()).detach();
                let mut tasks = Vec::new();
                let mut seq = 0;
                while seq < total {
                    // Batches of 1..=37 records from several "connections".
                    let batch = (seq % 37 + 1).min(total - seq);
                    let mut last = 0;
                    for _ in 0..batch {
                        seq += 1;
                        last = log.append(Protocol::Http, &seq.to_le_bytes());
                        assert_eq!(last, seq);
                    }
                    let (log, path) = (log.clone(), at.clone());
                    tasks.push(glommio::spawn_local(async move {
                        log.wait(last).await.unwrap();
                        // On disk by now: this record, or one a later lap put in its slot.
                        let on_disk = read_seq(&path, (last - 1) % per_file);
                        assert!(
                            on_disk >= last && (on_disk - last) % per_file == 0,
                            "record {last}: slot holds {on_disk}"
                        );
                    }));
                    if seq % 3 == 0 {
                        glommio::timer::sleep(Duration::from_micros(100)).await;
                    }
                }
                for t in tasks {
                    t.await;
                }
                let s = log.state.borrow();
                assert_eq!((s.appended, s.durable), (total, total));
                assert!(s.tail.len() < BLOCK);
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), bytes);
        // Each of the last lap's records is in its slot, (seq - 1) mod per_file, except
        // those after the last record in its block: the final round zero-padded them.
        let last_slot = (total - 1) % per_file;
        let per_block = (BLOCK / RECORD) as u64;
        for seq in total - per_file + 1..=total {
            let slot = (seq - 1) % per_file;
            let padded = slot / per_block == last_slot / per_block && slot > last_slot;
            assert_eq!(
                read_seq(&path, slot),
                if padded { 0 } else { seq },
                "slot {slot}"
            );
        }
    }

    /// The sequence number in record `slot` of the log at `path`.
    fn read_seq(path: &Path, slot: u64) -> u64 {
        use std::os::unix::fs::FileExt;
        let mut record = [0u8; RECORD];
        let file = std::fs::File::open(path).unwrap();
        file.read_exact_at(&mut record, slot * RECORD as u64)
            .unwrap();
        let seq = u64::from_le_bytes(record[..8].try_into().unwrap());
        if seq != 0 {
            assert_eq!(&record[10..18], &seq.to_le_bytes(), "the payload follows");
        }
        seq
    }

    #[test]
    fn responder_http_framing() {
        let limits = config::Http::default();
        let get = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(
            parse_http(get, &limits),
            Parsed::Request {
                len: get.len(),
                keep_alive: true
            }
        );
        assert_eq!(parse_http(&get[..5], &limits), Parsed::Partial(6));
        let post = b"POST / HTTP/1.1\r\ncontent-length: 4\r\n\r\nabcdGET";
        assert_eq!(parse_http(&post[..40], &limits), Parsed::Partial(42));
        assert_eq!(
            parse_http(post, &limits),
            Parsed::Request {
                len: 42,
                keep_alive: true
            }
        );
        let old = b"GET / HTTP/1.0\r\n\r\n";
        assert_eq!(
            parse_http(old, &limits),
            Parsed::Request {
                len: old.len(),
                keep_alive: false
            }
        );
        let old_ka = b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n";
        assert!(matches!(
            parse_http(old_ka, &limits),
            Parsed::Request {
                keep_alive: true,
                ..
            }
        ));
        for bad in [
            &b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"[..],
            b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n",
            b"\x16\x03\x01\x02\x00",
        ] {
            assert_eq!(
                parse_http(bad, &limits),
                Parsed::Bad,
                "{:?}",
                bad.escape_ascii()
            );
        }
        let huge = vec![b'a'; limits.max_header_bytes];
        let mut head = b"GET / HTTP/1.1\r\nx: ".to_vec();
        head.extend_from_slice(&huge);
        assert_eq!(parse_http(&head, &limits), Parsed::Bad);
    }

    #[test]
    fn responder_iso8583_respond_in_place() {
        let mut m = authorization(b"000042");
        m.set(70, b"001"); // not echoed outside 08xx
        respond(&mut m, 1_234_567);
        assert_eq!(m.mti(), *b"0110");
        assert_eq!(m.get(38), Some(&b"234567"[..]));
        assert_eq!(m.get(70), None);
        assert_eq!(m.get(2), None);
        // A response sent to us: 30 under its own MTI.
        let mut m = authorization(b"000042");
        m.set_mti(*b"0110");
        respond(&mut m, 1);
        assert_eq!((m.mti(), m.get(39)), (*b"0110", Some(&b"30"[..])));
    }

    #[test]
    fn responder_stops_when_told() {
        let h = Harness::start(None);
        let started = std::time::Instant::now();
        drop(h);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn responder_bind_error_names_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let opts = ResponderOpts {
            http: Some(addr),
            iso: None,
            durable: None,
            core: None,
            tls: None,
        };
        let err = start(&opts, Arc::new(AtomicBool::new(true)))
            .err()
            .expect("the port is taken");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        drop(taken);

        // Taken by another responder, whose listener has SO_REUSEPORT: refused as well.
        let h = Harness::start(None);
        let opts = ResponderOpts {
            iso: h.running.as_ref().unwrap().iso,
            ..opts
        };
        let err = start(&opts, Arc::new(AtomicBool::new(true)))
            .err()
            .expect("the port is taken");
        assert!(err.to_string().contains("cannot bind iso 8583"), "{err}");
    }
}
