//! The ISO 8583 listener on every shard (SO_REUSEPORT, like HTTP) and its connections.
//!
//! One connection: a reader takes whole frames from a receive buffer
//! (`FrameReader::next_frame`) and hands each body to its own task; each task's answer is
//! queued as it completes and one writer sends the queue, so answers leave out of order
//! but never interleaved. A slot is held from the moment a frame is taken until its answer
//! is written (or dropped): at `max_in_flight` slots the reader stops taking frames and
//! stops reading the socket until one is released (back-pressure).
//!
//! How a connection ends: a broken frame (impossible length, a header that is not a
//! length), a read or write error, an answer of `None` from the handler, a write that
//! stalls for the idle timeout, or nothing received for the idle timeout while nothing is
//! in flight: at once, dropping queued answers. The peer's EOF, or the listener stopping
//! (a drain), once every request in flight has been answered. Tasks in flight when a
//! connection ends still run to completion (their effects are durable); their answers are
//! dropped.
//!
//! Memory per connection is bounded: a receive buffer of at most one header plus
//! `max_frame` bytes, and at most `max_in_flight` request bodies and answers.
//!
//! Never: decodes or judges a message (the flows do), panics on peer bytes, or lets one
//! connection's bytes affect another.

use crate::config;
use crate::gateway::Admitted;
use crate::gateway::Peers;
use crate::iso8583::flows::{IsoApi, Peer};
use crate::iso8583::{write_frame, FrameReader, Framing};
use crate::shard::net::{accept_loop, handshake, ListenerState};
use crate::wal::SegmentDir;
use crate::{info, metrics, tls};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpListener;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;
use zeroize::Zeroize;

/// What answers one frame body: the flows (`IsoApi`), or a stand-in in tests.
pub trait FrameHandler: 'static {
    /// The encoded response body, or `None` to close the connection.
    fn handle(&self, frame: &[u8], peer: &Peer) -> impl Future<Output = Option<Vec<u8>>>;

    /// Who a new connection is, from its client certificate's subject (mutual TLS).
    fn peer(&self, subject: Option<String>) -> Peer {
        Peer {
            subject,
            institutions: None,
        }
    }

    /// Admission for a frame as it is read: `Ok` to handle it (the place, if any, is held
    /// until it is answered), or `Err` with the answer to send at once instead (`None`:
    /// close). Everything is admitted by default.
    fn admit(&self, frame: &[u8]) -> Result<Option<Admitted>, Option<Vec<u8>>> {
        let _ = frame;
        Ok(None)
    }

    /// The answer to a frame shed after admission (it waited too long for its turn).
    fn refuse(&self, frame: &[u8]) -> Option<Vec<u8>> {
        let _ = frame;
        None
    }
}

impl<D: SegmentDir + 'static, P: Peers + 'static> FrameHandler for IsoApi<D, P> {
    fn handle(&self, frame: &[u8], peer: &Peer) -> impl Future<Output = Option<Vec<u8>>> {
        IsoApi::handle(self, frame, peer)
    }

    fn peer(&self, subject: Option<String>) -> Peer {
        IsoApi::peer(self, subject)
    }

    fn admit(&self, frame: &[u8]) -> Result<Option<Admitted>, Option<Vec<u8>>> {
        IsoApi::admit(self, frame)
    }

    fn refuse(&self, frame: &[u8]) -> Option<Vec<u8>> {
        IsoApi::refuse(self, frame)
    }
}

/// A listener's limits, from `[iso8583]`.
#[derive(Debug, Clone, Copy)]
pub struct IsoLimits {
    pub framing: Framing,
    pub max_frame: usize,
    pub max_in_flight: usize,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl IsoLimits {
    pub fn from_config(cfg: &config::Iso8583) -> Result<IsoLimits, config::ConfigError> {
        let framing = cfg.framing()?;
        Ok(IsoLimits {
            framing,
            max_frame: cfg.max_frame_bytes.min(framing.max_body()),
            max_in_flight: cfg.max_in_flight_per_connection,
            idle_timeout: Duration::from_millis(cfg.idle_timeout_ms),
            max_connections: cfg.max_connections_per_shard,
        })
    }
}

/// The receive buffer starts this small and grows, up to one header plus `max_frame`, only
/// when a frame longer than it arrives.
const INITIAL_BUFFER: usize = 2048;
/// The writer keeps at most this much of its batch buffer between batches.
const KEPT_WRITE_BUFFER: usize = 16 * 1024;

/// One shard's ISO 8583 listener.
pub struct IsoServer {
    state: Rc<ListenerState>,
    task: glommio::task::JoinHandle<()>,
    local_addr: SocketAddr,
}

impl IsoServer {
    /// Binds `listen` (SO_REUSEPORT: every shard binds the same address) and accepts.
    /// With `tls`, every connection begins with a TLS handshake (mutual when its settings
    /// name a client CA).
    pub fn bind<H: FrameHandler>(
        listen: &str,
        limits: IsoLimits,
        handler: Rc<H>,
        tls: Option<Arc<tls::Reloadable>>,
    ) -> std::io::Result<IsoServer> {
        assert!(limits.max_in_flight > 0 && limits.max_connections > 0);
        assert!(limits.max_frame <= limits.framing.max_body());
        let listener = TcpListener::bind(listen)?;
        let local_addr = listener.local_addr()?;
        let state = ListenerState::new();
        let task = accept_loop(
            listener,
            crate::metrics::Listener::Iso8583,
            state.clone(),
            limits.max_connections,
            move |stream, st| {
                let (handler, tls) = (handler.clone(), tls.clone());
                async move {
                    let peer = stream.peer_addr().ok();
                    let Some(tls) = tls else {
                        let who = Rc::new(handler.peer(None));
                        return connection(stream, handler, who, limits, st).await;
                    };
                    let kind = metrics::Listener::Iso8583;
                    match handshake(&tls, stream, limits.idle_timeout, kind).await {
                        Ok(stream) => {
                            let who = Rc::new(handler.peer(identify(&stream, peer)));
                            connection(stream, handler, who, limits, st).await
                        }
                        Err(Some(why)) => {
                            info!("iso8583.tls_refused": "{peer:?}: TLS handshake failed: {why}")
                        }
                        Err(None) => {} // timed out: counted
                    }
                }
            },
        );
        Ok(IsoServer {
            state,
            task,
            local_addr,
        })
    }

    /// Stops accepting. Open connections take no new frame; each closes once its requests
    /// in flight are answered.
    pub fn stop(&self) {
        self.state.stopped.set(true);
        self.task.cancel();
    }

    /// Requests taken and not yet answered (or dropped), on every connection of this shard.
    pub fn active_requests(&self) -> usize {
        self.state.active.get()
    }

    /// Open connections on this shard.
    pub fn connections(&self) -> usize {
        self.state.connections.get()
    }

    /// The bound address (the configured one, with the port resolved if it was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

/// Runs `f` for at most `limit`; None when the time ran out.
async fn within<T>(limit: Duration, f: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(f.await) }, async {
        glommio::timer::sleep(limit).await;
        None
    })
    .await
}

/// What one connection's reader, writer and request tasks share.
struct Conn {
    max_in_flight: usize,
    /// Slots held: frames taken whose answers are not yet written or dropped.
    in_flight: Cell<usize>,
    /// Answers completed and not yet written, in completion order. At most `in_flight`.
    replies: RefCell<VecDeque<Reply>>,
    /// Set once the connection has ended: answers completing later are dropped.
    closed: Cell<bool>,
    /// The connection's task, waiting for an answer to write or a slot to free.
    waker: RefCell<Option<Waker>>,
}

/// One request's claim on its connection and listener, from frame to written answer.
/// Dropping it (answer written, or dropped because the connection ended) frees the slot.
struct Slot {
    conn: Rc<Conn>,
    listener: Rc<ListenerState>,
}

/// An answer waiting for the writer; `body: None` closes the connection.
struct Reply {
    body: Option<Vec<u8>>,
    _slot: Slot,
}

impl Conn {
    fn wake(&self) {
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    fn park(&self, waker: &Waker) {
        let mut w = self.waker.borrow_mut();
        match &*w {
            Some(old) if old.will_wake(waker) => {}
            _ => *w = Some(waker.clone()),
        }
    }

    /// Queues a finished request's answer, or drops it when the connection has ended.
    fn reply(&self, body: Option<Vec<u8>>, slot: Slot) {
        if self.closed.get() {
            return; // `slot` drops here, freeing its place.
        }
        let mut q = self.replies.borrow_mut();
        q.push_back(Reply { body, _slot: slot });
        debug_assert!(q.len() <= self.in_flight.get());
        drop(q);
        self.wake();
    }

    /// Ends the connection: later answers are dropped, queued ones are dropped now (which
    /// also breaks the Conn → Reply → Slot → Conn cycle).
    fn close(&self) {
        self.closed.set(true);
        let queued = std::mem::take(&mut *self.replies.borrow_mut());
        drop(queued);
        self.waker.borrow_mut().take();
    }
}

impl Slot {
    fn take(conn: &Rc<Conn>, listener: &Rc<ListenerState>) -> Slot {
        assert!(conn.in_flight.get() < conn.max_in_flight);
        conn.in_flight.set(conn.in_flight.get() + 1);
        listener.active.set(listener.active.get() + 1);
        Slot {
            conn: conn.clone(),
            listener: listener.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let was = self.conn.in_flight.get();
        assert!(was > 0, "slot released twice");
        self.conn.in_flight.set(was - 1);
        self.listener.active.set(self.listener.active.get() - 1);
        // The reader may be waiting for a free slot, or for none to be held.
        self.conn.wake();
    }
}

/// Closes the connection's shared state however the connection future ends.
struct CloseOnDrop(Rc<Conn>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Who connected over TLS, logged: the protocol version and, under mutual TLS, the client
/// certificate's subject (returned: the acquirer's identity) and SHA-256 fingerprint.
fn identify<S>(
    stream: &futures_rustls::server::TlsStream<S>,
    peer: Option<SocketAddr>,
) -> Option<String> {
    use sha2::Digest;
    let session = stream.get_ref().1;
    let version = session.protocol_version();
    let Some(cert) = session.peer_certificates().and_then(|c| c.first()) else {
        info!("iso8583.tls_client": "{peer:?}: {version:?}, no client certificate");
        return None;
    };
    let fingerprint = hex::encode(sha2::Sha256::digest(cert.as_ref()));
    let subject = tls::subject(cert.as_ref());
    info!("iso8583.tls_client":
        "{peer:?}: {version:?}, client certificate subject {:?} sha256 {fingerprint}",
        subject.as_deref().unwrap_or("(unreadable)")
    );
    subject
}

async fn connection<H: FrameHandler, S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    handler: Rc<H>,
    who: Rc<Peer>,
    limits: IsoLimits,
    listener: Rc<ListenerState>,
) {
    let (mut rd, mut wr) = futures_lite::io::split(stream);
    let conn = Rc::new(Conn {
        max_in_flight: limits.max_in_flight,
        in_flight: Cell::new(0),
        replies: RefCell::new(VecDeque::new()),
        closed: Cell::new(false),
        waker: RefCell::new(None),
    });
    let _close = CloseOnDrop(conn.clone());
    // Reader and writer run in this one task (one waker); whichever ends first ends the
    // connection, and dropping both halves closes the socket.
    futures_lite::future::or(
        read_loop(&mut rd, &handler, &who, limits, &conn, &listener),
        write_loop(&mut wr, &conn, limits),
    )
    .await;
}

/// Takes frames and dispatches them until the connection must end; returns then.
async fn read_loop<H: FrameHandler, R: futures_lite::AsyncRead + Unpin>(
    rd: &mut R,
    handler: &Rc<H>,
    who: &Rc<Peer>,
    limits: IsoLimits,
    conn: &Rc<Conn>,
    listener: &Rc<ListenerState>,
) {
    let frames = FrameReader::new(limits.framing, limits.max_frame);
    let capacity = limits.framing.header_len() + frames.max_frame();
    // Wiped when the connection ends, and each frame's bytes as soon as they are copied out:
    // no card number is left in freed memory.
    let mut buf = zeroize::Zeroizing::new(vec![0u8; INITIAL_BUFFER.min(capacity)]);
    let (mut start, mut end) = (0usize, 0usize);
    loop {
        // Every whole frame already received.
        loop {
            debug_assert!(start <= end && end <= buf.len());
            let (header, len) = match frames.next_frame(&buf[start..end]) {
                Err(_) => return, // the stream cannot be split any more: close
                Ok(None) => break,
                Ok(Some(frame)) => frame,
            };
            if len == 0 {
                start += header; // keep-alive
                continue;
            }
            if listener.stopped.get() {
                // Draining: take nothing new, answer what is in flight, close.
                wait_until(conn, |c| c.in_flight.get() == 0).await;
                return;
            }
            if conn.in_flight.get() >= conn.max_in_flight {
                // Back-pressure: at the limit, neither take frames nor read the socket.
                // Then look again: the listener may have stopped meanwhile.
                wait_until(conn, |c| c.in_flight.get() < c.max_in_flight).await;
                continue;
            }
            let slot = Slot::take(conn, listener);
            let frame = &buf[start + header..start + header + len];
            // Admission as the frame is read, before it queues anywhere: a shed answer waits
            // for nothing.
            let place = match handler.admit(frame) {
                Ok(place) => place,
                Err(answer) => {
                    crate::metrics::record_iso(crate::metrics::classify_mti(frame), 0);
                    buf[start + header..start + header + len].zeroize();
                    start += header + len;
                    conn.reply(answer, slot);
                    continue;
                }
            };
            let body = zeroize::Zeroizing::new(frame.to_vec());
            buf[start + header..start + header + len].zeroize();
            start += header + len;
            let (handler, task_conn, who) = (handler.clone(), conn.clone(), who.clone());
            let read_at = std::time::Instant::now();
            glommio::spawn_local(async move {
                let started = std::time::Instant::now();
                let waited = u64::try_from(started.saturating_duration_since(read_at).as_micros())
                    .unwrap_or(u64::MAX);
                let answer = match place.map(|p| p.timely(waited)) {
                    // Its turn came too late (queue time): shed now.
                    Some(None) => handler.refuse(&body),
                    place => {
                        let answer = handler.handle(&body, &who).await;
                        drop(place);
                        answer
                    }
                };
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                crate::metrics::record_iso(crate::metrics::classify_mti(&body), micros);
                drop(body);
                task_conn.reply(answer, slot);
            })
            .detach();
        }
        if start == end {
            (start, end) = (0, 0);
        }
        if end == buf.len() {
            if start > 0 {
                buf.copy_within(start..end, 0);
                buf[end - start..end].zeroize(); // the moved bytes' old copies
                (start, end) = (0, end - start);
            } else {
                // A full buffer holds a whole frame or a refused header, unless it is still
                // smaller than the largest frame.
                assert!(buf.len() < capacity, "frame reader kept a full buffer");
                // A new buffer rather than a resize: the old one is wiped when dropped.
                let mut bigger = vec![0u8; (buf.len() * 2).min(capacity)];
                bigger[..end].copy_from_slice(&buf[..end]);
                buf = zeroize::Zeroizing::new(bigger);
            }
        }
        // Receive more; the idle clock runs only while nothing is in flight.
        let n = loop {
            match within(limits.idle_timeout, rd.read(&mut buf[end..])).await {
                Some(Ok(n)) => break n,
                Some(Err(_)) => return,
                None if conn.in_flight.get() == 0 => return, // idle
                None => continue,
            }
        };
        if n == 0 {
            // EOF: the peer sends no more; answer what is in flight, then close.
            wait_until(conn, |c| c.in_flight.get() == 0).await;
            return;
        }
        end += n;
    }
}

/// Writes answers as they complete, batching those ready together, until an answer says
/// close or a write fails or stalls for the idle timeout.
async fn write_loop<W: futures_lite::AsyncWrite + Unpin>(
    wr: &mut W,
    conn: &Rc<Conn>,
    limits: IsoLimits,
) {
    let mut batch: VecDeque<Reply> = VecDeque::new();
    let mut out: Vec<u8> = Vec::new();
    loop {
        std::future::poll_fn(|cx| {
            let mut q = conn.replies.borrow_mut();
            if q.is_empty() {
                drop(q);
                conn.park(cx.waker());
                return Poll::Pending;
            }
            std::mem::swap(&mut *q, &mut batch);
            Poll::Ready(())
        })
        .await;
        let mut close = false;
        for reply in &batch {
            match &reply.body {
                Some(body) if body.len() <= limits.framing.max_body() => {
                    write_frame(limits.framing, body, &mut out)
                }
                // An answer the header cannot carry is a flow bug; the peer would wait for
                // it forever, so end the connection instead of panicking the shard.
                Some(_) | None => {
                    close = true;
                    break;
                }
            }
        }
        if !out.is_empty() {
            // The flush sends what a TLS session still buffers (nothing over plain TCP).
            let written = async {
                wr.write_all(&out).await?;
                wr.flush().await
            };
            match within(limits.idle_timeout, written).await {
                Some(Ok(())) => {}
                Some(Err(_)) | None => return,
            }
            out.clear();
            out.shrink_to(KEPT_WRITE_BUFFER);
        }
        if close {
            return;
        }
        batch.clear(); // frees the slots of the answers just written
    }
}

/// Waits until `ready(conn)` holds; re-checked each time a slot is freed.
async fn wait_until(conn: &Conn, ready: impl Fn(&Conn) -> bool) {
    std::future::poll_fn(|cx| {
        if ready(conn) {
            return Poll::Ready(());
        }
        conn.park(cx.waker());
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream as StdStream;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Echoes each body after `pause`; `slow…` bodies wait until a `fast…` one has been
    /// answered or the listener has stopped, `wait…` ones until the listener has stopped;
    /// `close` answers None.
    /// Counts requests started and running at once.
    struct Echo {
        pause: Duration,
        running: Cell<usize>,
        fast_done: Cell<bool>,
        released: Cell<bool>,
        max_running: Arc<AtomicUsize>,
        started: Arc<AtomicUsize>,
    }

    impl FrameHandler for Echo {
        async fn handle(&self, frame: &[u8], _: &Peer) -> Option<Vec<u8>> {
            self.started.fetch_add(1, Ordering::SeqCst);
            self.running.set(self.running.get() + 1);
            self.max_running
                .fetch_max(self.running.get(), Ordering::SeqCst);
            glommio::timer::sleep(self.pause).await;
            while (frame.starts_with(b"slow") && !self.fast_done.get() && !self.released.get())
                || (frame.starts_with(b"wait") && !self.released.get())
            {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            if frame.starts_with(b"fast") {
                self.fast_done.set(true);
            }
            self.running.set(self.running.get() - 1);
            (frame != b"close").then(|| frame.to_vec())
        }
    }

    /// What a client closure can see and do.
    struct Ctl<'a> {
        addr: SocketAddr,
        started: &'a AtomicUsize,
        /// Stops the listener (and releases `wait…` requests); returns once it has.
        stop: &'a dyn Fn(),
    }

    impl Ctl<'_> {
        /// Waits (without a time limit of its own) until `n` requests have started.
        fn until_started(&self, n: usize) {
            while self.started.load(Ordering::SeqCst) < n {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    fn limits(max_in_flight: usize) -> IsoLimits {
        IsoLimits {
            framing: Framing::Binary2,
            max_frame: 8192,
            max_in_flight,
            idle_timeout: Duration::from_secs(30),
            max_connections: 100,
        }
    }

    /// Serves `Echo` on a glommio executor while `client` runs on this thread; afterwards
    /// checks that no slot or connection is left behind. Returns the most requests ever
    /// running at once.
    fn serve(limits: IsoLimits, pause: Duration, client: impl FnOnce(&Ctl)) -> usize {
        let max_running = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (mr, sd, st, sp, dn) = (
            max_running.clone(),
            started.clone(),
            stop.clone(),
            stopped.clone(),
            done.clone(),
        );
        let ex = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let handler = Rc::new(Echo {
                    pause,
                    running: Cell::new(0),
                    fast_done: Cell::new(false),
                    released: Cell::new(false),
                    max_running: mr,
                    started: sd,
                });
                let server = IsoServer::bind("127.0.0.1:0", limits, handler.clone(), None).unwrap();
                addr_tx.send(server.local_addr()).unwrap();
                while !dn.load(Ordering::SeqCst) {
                    if st.load(Ordering::SeqCst) && !sp.load(Ordering::SeqCst) {
                        server.stop();
                        handler.released.set(true);
                        sp.store(true, Ordering::SeqCst);
                    }
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
                // Every connection the client left ends, and every slot is freed.
                handler.released.set(true);
                handler.fast_done.set(true);
                for _ in 0..10_000 {
                    if server.active_requests() == 0 && server.connections() == 0 {
                        break;
                    }
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
                assert_eq!(server.active_requests(), 0, "slots left held");
                assert_eq!(server.connections(), 0, "connections left open");
            })
            .unwrap();
        let addr = addr_rx.recv().unwrap();
        let stop_fn = || {
            stop.store(true, Ordering::SeqCst);
            while !stopped.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        client(&Ctl {
            addr,
            started: &started,
            stop: &stop_fn,
        });
        done.store(true, Ordering::SeqCst);
        ex.join().unwrap();
        max_running.load(Ordering::SeqCst)
    }

    fn connect(addr: SocketAddr) -> StdStream {
        let s = StdStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    fn send(s: &mut StdStream, bodies: &[&[u8]]) {
        let mut out = Vec::new();
        for b in bodies {
            write_frame(Framing::Binary2, b, &mut out);
        }
        s.write_all(&out).unwrap();
    }

    /// The next frame's body, or None at EOF (or a reset).
    fn recv(s: &mut StdStream) -> Option<Vec<u8>> {
        let mut header = [0u8; 2];
        s.read_exact(&mut header).ok()?;
        let mut body = vec![0; usize::from(u16::from_be_bytes(header))];
        s.read_exact(&mut body).unwrap();
        Some(body)
    }

    #[test]
    fn iso_net_answers_as_requests_complete() {
        serve(limits(8), Duration::ZERO, |c| {
            let mut s = connect(c.addr);
            send(&mut s, &[b"slow-1", b"fast-2"]);
            assert_eq!(recv(&mut s).unwrap(), b"fast-2");
            assert_eq!(recv(&mut s).unwrap(), b"slow-1");
        });
    }

    #[test]
    fn iso_net_bounds_requests_in_flight_without_losing_any() {
        let bodies: Vec<Vec<u8>> = (0..50)
            .map(|i| format!("req-{i:03}").into_bytes())
            .collect();
        let max = serve(limits(4), Duration::from_millis(2), |c| {
            let mut s = connect(c.addr);
            let refs: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
            send(&mut s, &refs);
            let mut got: Vec<Vec<u8>> = (0..50).map(|_| recv(&mut s).unwrap()).collect();
            got.sort();
            assert_eq!(got, bodies);
        });
        assert!((1..=4).contains(&max), "{max} requests ran at once");
    }

    #[test]
    fn iso_net_at_the_limit_takes_no_frame_until_a_slot_frees() {
        serve(limits(2), Duration::ZERO, |c| {
            let mut s = connect(c.addr);
            send(&mut s, &[b"slow-1", b"slow-2", b"fast-3"]);
            c.until_started(2);
            // fast-3 cannot start while both slots are held; the slow ones wait for it.
            // Only when the listener stops are they released (and fast-3 never taken).
            (c.stop)();
            let mut got = vec![recv(&mut s).unwrap(), recv(&mut s).unwrap()];
            got.sort();
            assert_eq!(got, [b"slow-1".to_vec(), b"slow-2".to_vec()]);
            assert_eq!(recv(&mut s), None);
            assert_eq!(c.started.load(Ordering::SeqCst), 2);
        });
    }

    #[test]
    fn iso_net_skips_keep_alives_and_reassembles_split_frames() {
        serve(limits(8), Duration::ZERO, |c| {
            let mut s = connect(c.addr);
            s.write_all(b"\x00\x00\x00\x00").unwrap();
            let mut out = Vec::new();
            write_frame(Framing::Binary2, &[b'x'; 5000], &mut out); // past the first buffer
            for chunk in out.chunks(700) {
                s.write_all(chunk).unwrap();
                s.flush().unwrap();
            }
            assert_eq!(recv(&mut s).unwrap(), vec![b'x'; 5000]);
            send(&mut s, &[b"after"]);
            assert_eq!(recv(&mut s).unwrap(), b"after");
        });
    }

    #[test]
    fn iso_net_closes_only_the_offending_connection() {
        serve(limits(8), Duration::ZERO, |c| {
            let mut other = connect(c.addr);
            // Longer than max_frame: closed as soon as the header arrives.
            let mut s = connect(c.addr);
            s.write_all(&[0xFF, 0xFF]).unwrap();
            assert_eq!(recv(&mut s), None);
            // The handler answers None: closed.
            let mut s = connect(c.addr);
            send(&mut s, &[b"close"]);
            assert_eq!(recv(&mut s), None);
            // EOF with a request in flight: it is answered first.
            let mut s = connect(c.addr);
            send(&mut s, &[b"last"]);
            s.shutdown(std::net::Shutdown::Write).unwrap();
            assert_eq!(recv(&mut s).unwrap(), b"last");
            assert_eq!(recv(&mut s), None);
            // A peer that goes away with requests in flight: their answers are dropped.
            let mut s = connect(c.addr);
            let before = c.started.load(Ordering::SeqCst);
            send(&mut s, &[b"slow-a", b"slow-b"]);
            c.until_started(before + 2);
            drop(s);
            send(&mut other, &[b"fast", b"still-here"]);
            let mut got = vec![recv(&mut other).unwrap(), recv(&mut other).unwrap()];
            got.sort();
            assert_eq!(got, [b"fast".to_vec(), b"still-here".to_vec()]);
        });
    }

    #[test]
    fn iso_net_ascii_header_that_is_not_a_length_closes() {
        let mut l = limits(8);
        l.framing = Framing::Ascii4;
        serve(l, Duration::ZERO, |c| {
            let mut s = connect(c.addr);
            s.write_all(b"0005hello").unwrap();
            let mut answer = [0u8; 9];
            s.read_exact(&mut answer).unwrap();
            assert_eq!(&answer, b"0005hello");
            s.write_all(b"12a4").unwrap();
            assert_eq!(s.read(&mut answer).unwrap_or(0), 0);
        });
    }

    #[test]
    fn iso_net_idle_connection_is_closed() {
        let mut l = limits(8);
        l.idle_timeout = Duration::from_millis(500);
        serve(l, Duration::ZERO, |c| {
            let mut s = connect(c.addr);
            send(&mut s, &[b"ping"]);
            assert_eq!(recv(&mut s).unwrap(), b"ping");
            assert_eq!(recv(&mut s), None);
        });
    }

    #[test]
    fn iso_net_stop_answers_what_is_in_flight_then_closes() {
        serve(limits(8), Duration::ZERO, |c| {
            let mut s = connect(c.addr);
            send(&mut s, &[b"wait-1"]);
            c.until_started(1);
            (c.stop)();
            // A frame after the stop is not taken; the one in flight is answered.
            send(&mut s, &[b"after"]);
            assert_eq!(recv(&mut s).unwrap(), b"wait-1");
            assert_eq!(recv(&mut s), None);
            assert_eq!(c.started.load(Ordering::SeqCst), 1);
        });
    }
}
