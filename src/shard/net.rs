//! Listeners and connections: the HTTP API on every shard (SO_REUSEPORT), the operator
//! endpoint on shard 0, time limits, and connection limits.

use crate::admission::Priority;
use crate::config;
use crate::gateway::{Gateway, Peers};
use crate::http::api::{Api, Plane, Response, Session};
use crate::http::wire::{self, Limits, Method, Request, RequestReader, WireError};
use crate::metrics;
use crate::service::Phase;
use crate::tls;
use crate::wal::SegmentDir;
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs `f` for at most `limit`; None when the time ran out.
async fn within<T>(limit: Duration, f: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(f.await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await
}

/// What a listener and its connections share on one shard.
pub(crate) struct ListenerState {
    pub(crate) stopped: Cell<bool>,
    pub(crate) connections: Cell<usize>,
    /// Requests taken and not yet answered, on all connections.
    pub(crate) active: Cell<usize>,
}

impl ListenerState {
    pub(crate) fn new() -> Rc<ListenerState> {
        Rc::new(ListenerState {
            stopped: Cell::new(false),
            connections: Cell::new(0),
            active: Cell::new(0),
        })
    }
}

/// Accepts on `listener` until stopped, running `serve` for each connection as its own task;
/// past `max_connections` open ones, a new connection is closed at once.
pub(crate) fn accept_loop<F, Fut>(
    listener: TcpListener,
    kind: metrics::Listener,
    state: Rc<ListenerState>,
    max_connections: usize,
    serve: F,
) -> glommio::task::JoinHandle<()>
where
    F: Fn(TcpStream, Rc<ListenerState>) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    glommio::spawn_local(async move {
        loop {
            let stream = match listener.accept().await {
                Ok(s) => s,
                Err(_) => {
                    // Out of descriptors, or an aborted handshake: do not spin.
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            if state.stopped.get() {
                break;
            }
            if state.connections.get() >= max_connections {
                drop(stream); // over the limit: close at once
                metrics::connection_refused(kind);
                continue;
            }
            let _ = stream.set_nodelay(true);
            state.connections.set(state.connections.get() + 1);
            metrics::set_connections(kind, state.connections.get());
            let (conn, st) = (serve(stream, state.clone()), state.clone());
            glommio::spawn_local(async move {
                conn.await;
                st.connections.set(st.connections.get() - 1);
                metrics::set_connections(kind, st.connections.get());
            })
            .detach();
        }
    })
    .detach()
}

/// The TLS handshake of an accepted connection, within `limit`, in the connection's own task
/// (the shard's other connections are served between its steps). A failure (plain text,
/// garbage, an old version, an unknown client certificate: `Err(Some(why))`) or a timeout
/// (`Err(None)`) is counted for `kind`; the caller drops the connection.
pub(crate) async fn handshake(
    tls: &tls::Reloadable,
    stream: TcpStream,
    limit: Duration,
    kind: metrics::Listener,
) -> Result<futures_rustls::server::TlsStream<TcpStream>, Option<String>> {
    let accept = futures_rustls::TlsAcceptor::from(tls.current()).accept(stream);
    let result = match within(limit, accept).await {
        Some(Ok(stream)) => return Ok(stream),
        Some(Err(e)) => Err(Some(e.to_string())),
        None => Err(None),
    };
    metrics::tls_handshake_failed(kind);
    result
}

/// `[http]`'s request limits, request timeout and idle timeout (both HTTP listeners').
fn http_limits(cfg: &config::Http) -> (Limits, Duration, Duration) {
    let limits = Limits {
        max_header_bytes: cfg.max_header_bytes,
        max_headers: cfg.max_headers,
        max_body_bytes: cfg.max_body_bytes,
    };
    (
        limits,
        Duration::from_millis(cfg.request_timeout_ms),
        Duration::from_millis(cfg.idle_timeout_ms),
    )
}

pub struct HttpServer {
    state: Rc<ListenerState>,
    task: glommio::task::JoinHandle<()>,
}

impl HttpServer {
    /// Binds `cfg.listen`; with `tls`, every connection begins with a TLS handshake.
    pub fn bind<D: SegmentDir + 'static, P: Peers + 'static>(
        cfg: &config::Http,
        api: Rc<Api<D, P>>,
        tls: Option<Arc<tls::Reloadable>>,
    ) -> std::io::Result<HttpServer> {
        let listener = TcpListener::bind(cfg.listen.as_str())?;
        let state = ListenerState::new();
        let (limits, request_timeout, idle_timeout) = http_limits(cfg);
        let max_connections = cfg.max_connections_per_shard;
        let task = accept_loop(
            listener,
            metrics::Listener::Http,
            state.clone(),
            max_connections,
            move |stream, st| {
                let api = api.clone();
                let tls = tls.clone();
                async move {
                    let Some(tls) = tls else {
                        return connection(
                            stream,
                            &*api,
                            limits,
                            request_timeout,
                            idle_timeout,
                            &st,
                        )
                        .await;
                    };
                    let kind = metrics::Listener::Http;
                    if let Ok(stream) = handshake(&tls, stream, request_timeout, kind).await {
                        connection(stream, &*api, limits, request_timeout, idle_timeout, &st).await
                    }
                }
            },
        );
        Ok(HttpServer { state, task })
    }

    /// Stops accepting; open connections finish their current request.
    pub fn stop(&self) {
        self.state.stopped.set(true);
        self.task.cancel();
    }

    pub fn active_requests(&self) -> usize {
        self.state.active.get()
    }
}

/// What answers the requests of a listener's connections.
pub(crate) trait Handler {
    /// The answer to `request` (counted under `endpoint`), or `None` when admission shed it
    /// (answered 503 at once).
    fn answer(
        &self,
        request: &Request,
        endpoint: usize,
        session: &mut Session,
        state: &ListenerState,
    ) -> impl Future<Output = Option<Response>>;

    /// Whether requests to `endpoint` (`metrics::classify`) are counted in /metrics.
    fn counts(&self, endpoint: usize) -> bool;
}

/// The merchant listener: admission first, then the API (merchant plane).
impl<D: SegmentDir + 'static, P: Peers + 'static> Handler for Api<D, P> {
    async fn answer(
        &self,
        request: &Request,
        endpoint: usize,
        session: &mut Session,
        state: &ListenerState,
    ) -> Option<Response> {
        let place = self.gateway.admit(http_priority(endpoint)).ok()?;
        state.active.set(state.active.get() + 1);
        let response = self.handle_in(request, session).await;
        drop(place);
        state.active.set(state.active.get() - 1);
        Some(response)
    }

    fn counts(&self, _: usize) -> bool {
        true
    }
}

async fn connection<H, S>(
    stream: S,
    handler: &H,
    limits: Limits,
    request_timeout: Duration,
    idle_timeout: Duration,
    state: &ListenerState,
) where
    H: Handler,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut reader = RequestReader::new(stream, limits);
    let mut out = Vec::with_capacity(1024);
    let mut session = Session::default();
    loop {
        // A request already buffered (pipelined) is taken without reading. Otherwise, when
        // idle, one read waits for the next request (usually all of it arrives in that
        // read); only a request that is still incomplete then runs against request_timeout.
        let mut next = reader.try_next().transpose();
        if next.is_none() && !reader.has_buffered() {
            match within(idle_timeout, reader.read_more()).await {
                Some(Ok(())) => next = reader.try_next().transpose(),
                // Closed, failed, or idle too long: nothing was asked, nothing to answer.
                _ => return,
            }
        }
        let next = match next {
            Some(taken) => Some(taken),
            None => within(request_timeout, reader.next()).await,
        };
        let request = match next {
            None => {
                let r = Response::error(
                    408,
                    "invalid_request_error",
                    "request_timeout",
                    "The request took too long to arrive.",
                    None,
                );
                write_api_response(&mut out, &r, false);
                let _ = write_out(reader.get_mut(), &out).await;
                return;
            }
            Some(Err(WireError::Closed)) | Some(Err(WireError::Io(_))) => return,
            Some(Err(e)) => {
                let r = Response::error(
                    e.status(),
                    "invalid_request_error",
                    "malformed_request",
                    &e.to_string(),
                    None,
                );
                write_api_response(&mut out, &r, false);
                metrics::record(7, e.status(), 1);
                let _ = write_out(reader.get_mut(), &out).await;
                return;
            }
            Some(Ok(r)) => r,
        };
        let started = Instant::now();
        let endpoint = metrics::classify(request.method == Method::Post, &request.path);
        let response = handler
            .answer(&request, endpoint, &mut session, state)
            .await;
        let keep_alive = request.keep_alive && !state.stopped.get();
        let status = match &response {
            Some(r) => {
                write_api_response(&mut out, r, keep_alive);
                r.status
            }
            None => {
                // Shed: answered at once, from bytes prepared in advance.
                wire::write_response(
                    &mut out,
                    503,
                    &[("retry-after", "1")],
                    "application/json",
                    OVERLOADED,
                    keep_alive,
                );
                503
            }
        };
        if handler.counts(endpoint) {
            metrics::record(endpoint, status, started.elapsed().as_micros() as u64);
        }
        // Answer at once, even when the next pipelined request has begun to arrive: holding
        // the answer until that request completes would make a client's latency depend on its
        // next request.
        if write_out(reader.get_mut(), &out).await.is_err() {
            return;
        }
        out.clear();
        if !keep_alive {
            let _ = reader.get_mut().close().await;
            return;
        }
    }
}

/// Writes `out` and flushes it: over TLS, what the session still buffers goes out now (over
/// plain TCP the flush does nothing).
async fn write_out<S: AsyncWrite + Unpin>(stream: &mut S, out: &[u8]) -> std::io::Result<()> {
    stream.write_all(out).await?;
    stream.flush().await
}

/// The body of a request shed by admission control (a Stripe-style error object).
const OVERLOADED: &[u8] = br#"{"error":{"type":"api_error","code":"overloaded","decline_code":null,"message":"The gateway is at capacity; retry after the Retry-After delay.","param":null}}"#;

/// What an HTTP request is to admission: captures, voids and refunds finish admitted work.
fn http_priority(endpoint: usize) -> Priority {
    match endpoint {
        2..=4 => Priority::FollowUp,
        _ => Priority::New,
    }
}

fn write_api_response(out: &mut Vec<u8>, r: &Response, keep_alive: bool) {
    let retry;
    let mut headers: Vec<(&str, &str)> = Vec::with_capacity(3);
    if r.replayed {
        headers.push(("idempotent-replayed", "true"));
    }
    if let Some(secs) = r.retry_after {
        retry = secs.to_string();
        headers.push(("retry-after", &retry));
    }
    if let Some(allow) = r.allow {
        headers.push(("allow", allow));
    }
    wire::write_response(out, r.status, &headers, r.content_type, &r.body, keep_alive);
}

/// Runs a reconciliation on a thread of its own: (status, report). 200 when PostgreSQL
/// matches, 409 with one difference per line, 503 when it could not run.
async fn run_reconcile(reconcile: crate::shard::server::Reconcile) -> (u16, String) {
    let (tx, rx) = futures::channel::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(reconcile());
    });
    match rx.await {
        Ok(Ok(diffs)) if diffs.is_empty() => {
            (200, "reconcile: PostgreSQL matches the gateway\n".into())
        }
        Ok(Ok(diffs)) => (409, diffs.join("\n") + "\n"),
        Ok(Err(e)) => (503, format!("{e}\n")),
        Err(_) => (503, "reconcile did not finish\n".into()),
    }
}

/// The operator listener's requests: its own endpoints (`/metrics`, `/healthz`, `/readyz`,
/// `/reconcile` with the admin key) and the admin plane of the API. Never shed by admission:
/// an operator must be able to look and act while the merchant listener is overloaded.
struct OperatorPlane<D: SegmentDir, P: Peers> {
    api: Api<D, P>,
    life: std::sync::Arc<crate::service::Lifecycle>,
    reconcile: crate::shard::server::Reconcile,
    sinks: crate::replication::SinkStatuses,
}

impl<D: SegmentDir + 'static, P: Peers + 'static> Handler for OperatorPlane<D, P> {
    async fn answer(
        &self,
        request: &Request,
        _: usize,
        session: &mut Session,
        _: &ListenerState,
    ) -> Option<Response> {
        const TEXT: &str = "text/plain";
        let text = |status, body: &str| Response::text(status, TEXT, body.to_string());
        Some(match request.path.as_str() {
            "/healthz" => match self.life.health() {
                Ok(()) => text(200, "ok: every shard is making progress\n"),
                Err(why) => text(503, &format!("{why}\n")),
            },
            "/readyz" => match self.life.phase() {
                Phase::Serving => text(200, "ready\n"),
                Phase::Recovering => text(503, "starting\n"),
                Phase::Draining => text(503, "draining\n"),
            },
            "/metrics" => match self.api.gateway.all_stats().await {
                Ok(stats) => Response::text(
                    200,
                    "text/plain; version=0.0.4",
                    crate::metrics::render(&stats, &self.sinks),
                ),
                Err(_) => text(503, "unavailable\n"),
            },
            "/reconcile" => {
                let key = request
                    .authorization
                    .as_deref()
                    .and_then(|a| a.strip_prefix("Bearer "));
                if !key.is_some_and(|k| self.api.is_admin_key(k)) {
                    text(401, "the admin key is required\n")
                } else {
                    let (status, body) = run_reconcile(self.reconcile.clone()).await;
                    text(status, &body)
                }
            }
            _ => self.api.handle_in(request, session).await,
        })
    }

    /// Only the admin plane's requests; not /metrics, /healthz, /readyz, /reconcile.
    fn counts(&self, endpoint: usize) -> bool {
        endpoint == metrics::ADMIN_ENDPOINT
    }
}

/// The operator listener on shard 0 (`operator.listen`, internal by default).
pub struct OperatorServer {
    task: glommio::task::JoinHandle<()>,
}

impl Drop for OperatorServer {
    fn drop(&mut self) {
        self.task.cancel();
    }
}

impl OperatorServer {
    #[allow(clippy::too_many_arguments)]
    pub fn bind<D: SegmentDir + 'static, P: Peers + 'static>(
        listen: &str,
        http: &config::Http,
        gateway: Rc<Gateway<D, P>>,
        life: std::sync::Arc<crate::service::Lifecycle>,
        admin_key: &str,
        reconcile: crate::shard::server::Reconcile,
        sinks: crate::replication::SinkStatuses,
    ) -> std::io::Result<OperatorServer> {
        let listener = TcpListener::bind(listen)?;
        let plane = Rc::new(OperatorPlane {
            api: Api::new(gateway, admin_key, Plane::Admin),
            life,
            reconcile,
            sinks,
        });
        let (limits, request_timeout, idle_timeout) = http_limits(http);
        let state = ListenerState::new();
        let task = glommio::spawn_local(async move {
            while let Ok(stream) = listener.accept().await {
                let (plane, state) = (plane.clone(), state.clone());
                glommio::spawn_local(async move {
                    let _ = stream.set_nodelay(true);
                    connection(
                        stream,
                        &*plane,
                        limits,
                        request_timeout,
                        idle_timeout,
                        &state,
                    )
                    .await
                })
                .detach();
            }
        })
        .detach();
        Ok(OperatorServer { task })
    }
}
