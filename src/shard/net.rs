//! Listeners and connections: the HTTP API on every shard (SO_REUSEPORT), the operator
//! endpoint on shard 0, time limits, and connection limits.

use crate::admission::Priority;
use crate::config;
use crate::gateway::{Gateway, Peers};
use crate::http::api::{Api, Response, Session};
use crate::http::wire::{self, Limits, Method, RequestReader, WireError};
use crate::metrics;
use crate::service::Phase;
use crate::wal::SegmentDir;
use futures_lite::AsyncWriteExt;
use glommio::net::{TcpListener, TcpStream};
use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
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

pub struct HttpServer {
    state: Rc<ListenerState>,
    task: glommio::task::JoinHandle<()>,
}

impl HttpServer {
    pub fn bind<D: SegmentDir + 'static, P: Peers + 'static>(
        cfg: &config::Http,
        api: Rc<Api<D, P>>,
    ) -> std::io::Result<HttpServer> {
        let listener = TcpListener::bind(cfg.listen.as_str())?;
        let state = ListenerState::new();
        let limits = Limits {
            max_header_bytes: cfg.max_header_bytes,
            max_headers: cfg.max_headers,
            max_body_bytes: cfg.max_body_bytes,
        };
        let request_timeout = Duration::from_millis(cfg.request_timeout_ms);
        let idle_timeout = Duration::from_millis(cfg.idle_timeout_ms);
        let max_connections = cfg.max_connections_per_shard;
        let task = accept_loop(
            listener,
            metrics::Listener::Http,
            state.clone(),
            max_connections,
            move |stream, st| {
                let api = api.clone();
                async move { connection(stream, &api, limits, request_timeout, idle_timeout, &st).await }
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

async fn connection<D: SegmentDir + 'static, P: Peers + 'static>(
    stream: TcpStream,
    api: &Api<D, P>,
    limits: Limits,
    request_timeout: Duration,
    idle_timeout: Duration,
    state: &ListenerState,
) {
    let _ = stream.set_nodelay(true);
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
                let _ = reader.get_mut().write_all(&out).await;
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
                let _ = reader.get_mut().write_all(&out).await;
                return;
            }
            Some(Ok(r)) => r,
        };
        let started = Instant::now();
        let endpoint = metrics::classify(request.method == Method::Post, &request.path);
        let response = match api.gateway.admit(http_priority(endpoint)) {
            Ok(place) => {
                state.active.set(state.active.get() + 1);
                let response = api.handle_in(&request, &mut session).await;
                drop(place);
                state.active.set(state.active.get() - 1);
                Some(response)
            }
            Err(_) => None,
        };
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
        metrics::record(endpoint, status, started.elapsed().as_micros() as u64);
        // Answer at once, even when the next pipelined request has begun to arrive: holding
        // the answer until that request completes would make a client's latency depend on its
        // next request.
        if reader.get_mut().write_all(&out).await.is_err() {
            return;
        }
        out.clear();
        if !keep_alive {
            let _ = reader.get_mut().close().await;
            return;
        }
    }
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
    wire::write_response(
        out,
        r.status,
        &headers,
        "application/json",
        &r.body,
        keep_alive,
    );
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

/// `/metrics`, `/healthz`, `/readyz`, `/reconcile` (admin key) on shard 0.
pub struct OperatorServer {
    task: glommio::task::JoinHandle<()>,
}

impl Drop for OperatorServer {
    fn drop(&mut self) {
        self.task.cancel();
    }
}

impl OperatorServer {
    pub fn bind<D: SegmentDir + 'static, P: Peers + 'static>(
        listen: &str,
        gateway: Rc<Gateway<D, P>>,
        life: std::sync::Arc<crate::service::Lifecycle>,
        admin_key: &str,
        reconcile: crate::shard::server::Reconcile,
        sinks: crate::replication::SinkStatuses,
    ) -> std::io::Result<OperatorServer> {
        let listener = TcpListener::bind(listen)?;
        let admin = Rc::new(crate::secrets::hash_api_key(admin_key));
        let task = glommio::spawn_local(async move {
            while let Ok(stream) = listener.accept().await {
                let (gateway, life) = (gateway.clone(), life.clone());
                let (admin, reconcile, sinks) = (admin.clone(), reconcile.clone(), sinks.clone());
                glommio::spawn_local(async move {
                    let mut reader = RequestReader::new(stream, Limits::default());
                    let Some(Ok(req)) = within(Duration::from_secs(5), reader.next()).await else {
                        return;
                    };
                    let (status, body) = match req.path.as_str() {
                        "/healthz" => match life.health() {
                            Ok(()) => (200, "ok: every shard is making progress\n".to_string()),
                            Err(why) => (503, format!("{why}\n")),
                        },
                        "/readyz" => match life.phase() {
                            Phase::Serving => (200, "ready\n".to_string()),
                            Phase::Recovering => (503, "starting\n".to_string()),
                            Phase::Draining => (503, "draining\n".to_string()),
                        },
                        "/metrics" => match gateway.all_stats().await {
                            Ok(stats) => (200, crate::metrics::render(&stats, &sinks)),
                            Err(_) => (503, "unavailable\n".to_string()),
                        },
                        "/reconcile" => {
                            let key = req
                                .authorization
                                .as_deref()
                                .and_then(|a| a.strip_prefix("Bearer "))
                                .map(crate::secrets::hash_api_key);
                            if key.as_ref() != Some(&*admin) {
                                (401, "the admin key is required\n".to_string())
                            } else {
                                run_reconcile(reconcile).await
                            }
                        }
                        _ => (404, "not found\n".to_string()),
                    };
                    let mut out = Vec::new();
                    let ct = if req.path == "/metrics" {
                        "text/plain; version=0.0.4"
                    } else {
                        "text/plain"
                    };
                    wire::write_response(&mut out, status, &[], ct, body.as_bytes(), false);
                    let _ = reader.get_mut().write_all(&out).await;
                    let _ = reader.get_mut().close().await;
                })
                .detach();
            }
        })
        .detach();
        Ok(OperatorServer { task })
    }
}
