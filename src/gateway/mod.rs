//! One shard's gateway: the ledger, its WAL, the idempotency index it owns, and the
//! orchestration of operations that span shards.
//!
//! Owns: "log, apply, wait until durable, then answer", the cross-shard credit pump, and the
//! merchant/admin operations (`service`). Never: names the runtime (timers and rings come from
//! `crate::shard` through `Peers` and `tick`), parses wire formats, or knows SQL.

pub mod idem_index;
pub mod msg;
pub mod service;

use crate::admission::{Admission, AdmissionConfig, Priority, Refusal, Ticket};
use crate::domain::{Lsn, Millis, ShardId};
use crate::gateway::idem_index::{IdemIndex, Local};
use crate::gateway::msg::*;
use crate::ledger::*;
use crate::store::reader::{StoreReader, Stores};
use crate::wal::{SegmentDir, WalWriter};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::AtomicU64;

/// How a shard reaches the others. Implemented over rings in `crate::shard::mesh`.
pub trait Peers {
    /// Sends `req` to shard `to` (never this shard) and waits for the answer.
    /// `Reply::Unavailable` when the ring to `to` is full or the peer is gone.
    fn call(&self, to: ShardId, req: Request) -> impl Future<Output = Reply>;
    /// Sends without waiting for an answer; may drop the message when the ring is full
    /// (used for credits and acks, which are re-sent until acknowledged).
    fn post(&self, to: ShardId, req: Request);
    /// Runs `fut` as a detached task on this shard.
    fn spawn(&self, fut: std::pin::Pin<Box<dyn Future<Output = ()>>>);
    /// Resolves after `d` (this shard's timer).
    fn sleep(&self, d: std::time::Duration) -> impl Future<Output = ()>;
    /// Calls outstanding to each peer, by shard index (empty: not tracked).
    fn in_flight(&self) -> Vec<usize> {
        Vec::new()
    }
}

/// Why a request was answered 503 / 91 without being done: metrics count each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShedReason {
    /// The data directory is below `state.min_free_mb`.
    DiskLow = 0,
    /// The memory window has no slot the store has applied (it is behind or failing), or a
    /// cold payment left it again while others loaded.
    WindowFull = 1,
    /// A store read did not answer within `state.read_timeout_ms`, or failed.
    StoreRead = 2,
    /// The WAL refused the record (back-pressure, poisoned, stopping).
    WalFull = 3,
    /// Admission: the request waited in the shard's queue longer than allowed.
    QueueTime = 4,
    /// Admission: the shard had as much in flight as its adaptive limit (or hard cap).
    Concurrency = 5,
}

impl From<Refusal> for ShedReason {
    fn from(refusal: Refusal) -> ShedReason {
        match refusal {
            Refusal::QueueTime => ShedReason::QueueTime,
            Refusal::Concurrency => ShedReason::Concurrency,
        }
    }
}

/// `ShedReason` names, as metric labels.
pub const SHED_REASONS: [&str; 6] = [
    "disk_low",
    "window_full",
    "store_read",
    "wal_full",
    "queue_time",
    "concurrency",
];

/// Settings the gateway needs; the config module fills them.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub shard: ShardId,
    pub shards: u16,
    /// How long an uncaptured authorization holds funds.
    pub hold_ttl_millis: u64,
    pub idempotency_retention_millis: u64,
    pub idempotency_max_keys: usize,
    /// Un-acknowledged credits are re-sent after this long.
    pub credit_resend_millis: u64,
    /// Key of the card-number HMAC.
    pub pan_key: crate::secrets::PanKey,
    /// Admission control (`[admission]`).
    pub admission: AdmissionConfig,
    /// Only for the power-loss test that proves the test can catch it: answer before the
    /// record is durable. Never set in production; the config file cannot set it.
    #[doc(hidden)]
    pub ack_before_durable: bool,
}

impl GatewayConfig {
    pub fn for_tests(shard: ShardId, shards: u16) -> GatewayConfig {
        GatewayConfig {
            shard,
            shards,
            hold_ttl_millis: 7 * 86_400_000,
            idempotency_retention_millis: 86_400_000,
            idempotency_max_keys: 1_000_000,
            credit_resend_millis: 500,
            pan_key: crate::secrets::PanKey::from_hex(&"ab".repeat(32)).expect("valid hex"),
            admission: AdmissionConfig::DEFAULT,
            ack_before_durable: false,
        }
    }
}

/// Why an operation was not carried out (never a business decline).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceError {
    /// Overloaded, shutting down, or the log is unavailable: 91 / 503.
    Unavailable,
    /// The idempotency key is in use by a request still running: 409.
    IdempotencyInFlight,
    /// The idempotency key was used with another body: 422.
    IdempotencyMismatch,
}

pub struct Gateway<D: SegmentDir, P: Peers> {
    pub config: GatewayConfig,
    ledger: RefCell<Ledger>,
    wal: WalWriter<D>,
    peers: P,
    idem: RefCell<IdemIndex>,
    /// Requests waiting for a running idempotent operation to end (`IdemAwait`).
    idem_waiters: RefCell<HashMap<Hash16, Vec<futures::channel::oneshot::Sender<IdemBegin>>>>,
    /// Cross-shard refunds reserved on this shard's payments and not yet credited back.
    refund_reserved: RefCell<HashMap<u64, i64>>,
    /// Highest credit seq posted per destination (reset to the acked level to re-send).
    posted: RefCell<Vec<u64>>,
    last_resend: Cell<u64>,
    accepting: Cell<bool>,
    clock: fn() -> Millis,
    /// Requests shed (503 / 91), per `ShedReason`.
    pub shed: [Cell<u64>; SHED_REASONS.len()],
    pub requests: Cell<u64>,
    /// The shard's store: cold payments and due holds (`None`: every payment is in memory).
    store: Option<StoreReader>,
    /// Every shard's store and durable LSN (idempotency keys that left the index).
    stores: Option<Stores>,
    last_prune: Cell<u64>,
    /// The `before` of the last PruneIdempotency, and the time of the newest keyed change
    /// logged here: a prune is logged only when it can find something.
    pruned_before: Cell<u64>,
    last_keyed_at: Cell<u64>,
    /// Payments being read from the store, with the requests waiting for the same read.
    fetching: RefCell<HashMap<u64, Vec<futures::channel::oneshot::Sender<()>>>>,
    last_expiry_scan: Cell<u64>,
    /// Cold reads served, and requests shed because the store could not answer in time or
    /// the payment window had no room.
    pub cold_reads: Cell<u64>,
    pub store_shed: Cell<u64>,
    /// Admission control, and the origin of its microsecond clock.
    admission: Rc<RefCell<Admission>>,
    started: std::time::Instant,
}

/// A request's place in admission; dropped when the request is answered (or abandoned), it
/// gives the place back and reports how long the request took.
pub struct Admitted {
    admission: Rc<RefCell<Admission>>,
    started: std::time::Instant,
    ticket: Option<Ticket>,
}

impl Admitted {
    /// The queue-time rule when the request's work begins after it waited `waited_micros`
    /// for its turn: itself, or `None` when it waited too long and is to be shed (counted;
    /// the place is given back).
    pub fn timely(mut self, waited_micros: u64) -> Option<Admitted> {
        let ticket = self
            .ticket
            .take()
            .expect("an admitted request holds its ticket");
        let now = micros_since(self.started);
        let ticket = self
            .admission
            .borrow_mut()
            .timely(now, waited_micros, ticket)?;
        self.ticket = Some(ticket);
        Some(self)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            let now = micros_since(self.started);
            self.admission.borrow_mut().done(now, ticket);
        }
    }
}

fn micros_since(t: std::time::Instant) -> u64 {
    u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// How often a shard looks for authorizations whose hold is due.
const EXPIRY_SCAN_MILLIS: u64 = 1_000;

/// Wall-clock time in milliseconds: the production clock.
pub fn system_clock() -> Millis {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    Millis(d.as_millis() as u64)
}

impl<D: SegmentDir + 'static, P: Peers + 'static> Gateway<D, P> {
    pub fn new(
        config: GatewayConfig,
        ledger: Ledger,
        wal: WalWriter<D>,
        peers: P,
        idem: IdemIndex,
        clock: fn() -> Millis,
        stores: Option<Stores>,
    ) -> Rc<Self> {
        let store = stores.as_ref().map(|s| s.own.clone());
        assert_eq!(ledger.shard(), config.shard);
        assert_eq!(
            store.is_some(),
            ledger.payments_held().1.is_some(),
            "a payment window goes with a store, and only with one"
        );
        let shards = config.shards as usize;
        let config_admission = config.admission;
        Rc::new(Gateway {
            config,
            ledger: RefCell::new(ledger),
            wal,
            peers,
            idem: RefCell::new(idem),
            idem_waiters: RefCell::new(HashMap::new()),
            refund_reserved: RefCell::new(HashMap::new()),
            posted: RefCell::new(vec![0; shards]),
            last_resend: Cell::new(0),
            accepting: Cell::new(true),
            clock,
            shed: Default::default(),
            requests: Cell::new(0),
            store,
            stores,
            last_prune: Cell::new(0),
            pruned_before: Cell::new(0),
            last_keyed_at: Cell::new(0),
            fetching: RefCell::new(HashMap::new()),
            last_expiry_scan: Cell::new(0),
            cold_reads: Cell::new(0),
            store_shed: Cell::new(0),
            admission: Rc::new(RefCell::new(Admission::new(config_admission))),
            started: std::time::Instant::now(),
        })
    }

    pub fn shard(&self) -> ShardId {
        self.config.shard
    }

    pub fn now(&self) -> Millis {
        (self.clock)()
    }

    pub fn peers(&self) -> &P {
        &self.peers
    }

    pub fn wal(&self) -> &WalWriter<D> {
        &self.wal
    }

    /// Read access for tests and tools (never held across an await).
    pub fn with_ledger<R>(&self, f: impl FnOnce(&Ledger) -> R) -> R {
        f(&self.ledger.borrow())
    }

    /// Stop taking new work (SIGTERM): every later command answers `Unavailable`.
    pub fn stop_accepting(&self) {
        self.accepting.set(false);
    }

    // ---- admission ---------------------------------------------------------------------

    /// Admission for a request as it is read: its place (given back when dropped, once the
    /// request is answered), or the reason to answer it 503 / 91 now (counted).
    pub fn admit(&self, priority: Priority) -> Result<Admitted, ShedReason> {
        let now = micros_since(self.started);
        let ticket = self.admission.borrow_mut().admit(now, priority)?;
        Ok(Admitted {
            admission: self.admission.clone(),
            started: self.started,
            ticket: Some(ticket),
        })
    }

    /// A sample of the shard's queue delay: how late a timer task ran.
    pub fn observe_queue_delay(&self, delay_micros: u64) {
        let now = micros_since(self.started);
        self.admission.borrow_mut().observe_delay(now, delay_micros);
    }

    // ---- the durability rule -----------------------------------------------------------

    /// Logs `cmd`, applies it, and returns its outcome once the record is durable.
    pub async fn execute(&self, cmd: Command) -> Result<Outcome, ServiceError> {
        // Collecting nothing allocates nothing: most commands need no payment loaded.
        let needed: Vec<u64> = self.ledger.borrow().needs_payments(&cmd).collect();
        for seq in needed {
            self.ensure_held(seq).await?;
        }
        if let Some(key) = Ledger::needs_transfer(&cmd) {
            self.load_transfer(key).await?;
        }
        let (lsn, outcome) = self.log_and_apply(&cmd)?;
        if !self.config.ack_before_durable {
            self.wal
                .wait_durable(lsn)
                .await
                .map_err(|_| ServiceError::Unavailable)?;
        }
        self.pump();
        Ok(outcome)
    }

    /// Appends and applies without waiting: the caller waits (or, for internal bookkeeping
    /// such as acks, lets the next batch carry it).
    fn log_and_apply(&self, cmd: &Command) -> Result<(Lsn, Outcome), ServiceError> {
        if !self.accepting.get()
            && !matches!(
                cmd,
                Command::ApplyCredit { .. } | Command::AckCredits { .. }
            )
        {
            return Err(ServiceError::Unavailable);
        }
        let internal = matches!(
            cmd,
            Command::ApplyCredit { .. }
                | Command::AckCredits { .. }
                | Command::ExpireHolds { .. }
                | Command::PruneIdempotency { .. }
        );
        if !internal && self.stores.as_ref().is_some_and(|s| s.space.low()) {
            // The disk is nearly full (logged by the watcher): log nothing new.
            self.shed(ShedReason::DiskLow);
            self.store_shed.set(self.store_shed.get() + 1);
            return Err(ServiceError::Unavailable);
        }
        if let Some(store) = &self.store {
            let mut ledger = self.ledger.borrow_mut();
            ledger.set_stored(store.applied());
            if !ledger.has_room_for(cmd) {
                // A cold payment was evicted again while others loaded, or the window is full
                // of changes the store has not applied yet (it is behind, or failing).
                self.shed(ShedReason::WindowFull);
                self.store_shed.set(self.store_shed.get() + 1);
                return Err(ServiceError::Unavailable);
            }
        }
        let bytes = postcard::to_stdvec(cmd).expect("commands always encode");
        let lsn = match self
            .wal
            .append(RECORD_KIND_COMMAND, COMMAND_VERSION, &bytes)
        {
            Ok(lsn) => lsn,
            Err(_) => {
                self.shed(ShedReason::WalFull);
                return Err(ServiceError::Unavailable);
            }
        };
        let outcome = self.ledger.borrow_mut().apply(lsn, cmd);
        if let (Some(_), Some(now)) = (
            crate::ledger::state::command_idem(cmd),
            crate::ledger::state::command_now(cmd),
        ) {
            self.last_keyed_at.set(self.last_keyed_at.get().max(now.0));
        }
        Ok((lsn, outcome))
    }

    /// `fut`, or `None` when the store's read timeout passes first: a request is answered
    /// 503 / 91 rather than kept waiting on a slow store.
    async fn in_time<T>(&self, fut: impl Future<Output = T>) -> Option<T> {
        let limit = self
            .store
            .as_ref()
            .map_or(std::time::Duration::from_secs(5), |s| s.timeout());
        let fut = std::pin::pin!(fut);
        let timer = std::pin::pin!(self.peers.sleep(limit));
        match futures::future::select(fut, timer).await {
            futures::future::Either::Left((value, _)) => Some(value),
            futures::future::Either::Right(_) => None,
        }
    }

    /// Makes payment `seq` held in memory, reading it from the store when it is not: one read
    /// per payment however many requests want it. `Unavailable` when the store cannot answer
    /// in time or the window has no room.
    pub async fn ensure_held(&self, seq: u64) -> Result<(), ServiceError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        // Bounded: each round either finds the payment, or waits for one read to finish.
        for _ in 0..3 {
            {
                let ledger = self.ledger.borrow();
                if !ledger.payment_exists(seq) || ledger.payment_held(seq) {
                    return Ok(());
                }
            }
            let waiting = {
                let mut fetching = self.fetching.borrow_mut();
                match fetching.get_mut(&seq) {
                    Some(waiters) => {
                        let (tx, rx) = futures::channel::oneshot::channel();
                        waiters.push(tx);
                        Some(rx)
                    }
                    None => {
                        fetching.insert(seq, Vec::new());
                        None
                    }
                }
            };
            if let Some(rx) = waiting {
                let _ = rx.await;
                continue;
            }
            let read = self
                .in_time(store.payment(seq))
                .await
                .unwrap_or(Err(crate::store::reader::ReadError::TimedOut));
            // Loaded here, once, with no await since the read: while a read of `seq` is
            // pending nothing can change `seq` (changes need it held), so the copy is current.
            let loaded = match read {
                Ok(Some(payment)) => {
                    self.cold_reads.set(self.cold_reads.get() + 1);
                    let mut ledger = self.ledger.borrow_mut();
                    ledger.set_stored(store.applied());
                    ledger.load_payment(seq, payment).is_ok()
                }
                Ok(None) => panic!("payment {seq} exists but its store does not hold it"),
                Err(_) => false,
            };
            for waiter in self.fetching.borrow_mut().remove(&seq).unwrap_or_default() {
                let _ = waiter.send(());
            }
            if !loaded {
                self.shed(ShedReason::StoreRead);
                self.store_shed.set(self.store_shed.get() + 1);
                return Err(ServiceError::Unavailable);
            }
        }
        let held = self.ledger.borrow().payment_held(seq);
        if held {
            Ok(())
        } else {
            self.shed(ShedReason::WindowFull);
            self.store_shed.set(self.store_shed.get() + 1);
            Err(ServiceError::Unavailable)
        }
    }

    /// Loads an earlier transfer with the same id from the store, if it left memory (the id
    /// is also the transfer's idempotency key, so no other request with it runs meanwhile).
    async fn load_transfer(&self, key: Hash16) -> Result<(), ServiceError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        if self.ledger.borrow().transfer_held(&key) {
            return Ok(());
        }
        match self.in_time(store.transfer(key)).await {
            Some(Ok(None)) => Ok(()),
            Some(Ok(Some(view))) => {
                let mut ledger = self.ledger.borrow_mut();
                ledger.set_stored(store.applied());
                if ledger.transfer_held(&key) || ledger.load_transfer(key, view).is_ok() {
                    Ok(())
                } else {
                    drop(ledger);
                    self.shed(ShedReason::WindowFull);
                    Err(ServiceError::Unavailable)
                }
            }
            _ => {
                self.shed(ShedReason::StoreRead);
                self.store_shed.set(self.store_shed.get() + 1);
                Err(ServiceError::Unavailable)
            }
        }
    }

    /// Waits until everything applied so far is durable, so a read never shows a change that
    /// a crash could still take back.
    pub async fn read_barrier(&self) -> Result<(), ServiceError> {
        if self.config.ack_before_durable {
            return Ok(());
        }
        let lsn = self.wal.last_lsn();
        if lsn.0 == 0 {
            return Ok(()); // nothing was ever appended: nothing to wait for
        }
        self.wal
            .wait_durable(lsn)
            .await
            .map_err(|_| ServiceError::Unavailable)
    }

    // ---- requests from other shards (and from this one) --------------------------------

    /// Calls shard `to`, locally without a ring when `to` is this shard.
    pub async fn call(self: &Rc<Self>, to: ShardId, req: Request) -> Reply {
        if to != self.shard() {
            return self.peers.call(to, req).await;
        }
        // Same shard: the lookups every authorization makes are answered here, without the
        // general handler's boxed future (1.7% of an authorization's instructions,
        // `corepay-perf instructions`: HTTP 70,083 to 68,892, ISO 8583 104,667 to 103,133).
        match req {
            Request::CardLookup(hash) => self.card_lookup(&hash).await,
            Request::MerchantLookup(id) => Reply::Merchant(self.merchant_facts(&id)),
            req => Box::pin(self.handle(req)).await,
        }
    }

    /// A card by its PAN hash, once everything appended so far is durable (a card created
    /// by a request not yet acknowledged is not shown).
    async fn card_lookup(&self, hash: &CardHash) -> Reply {
        if self.read_barrier().await.is_err() {
            return Reply::Unavailable;
        }
        Reply::Card(self.ledger.borrow().card_by_hash(hash))
    }

    /// Handles a message that must be processed in arrival order, synchronously (credits and
    /// acks). Returns false when it is not such a message.
    pub fn handle_in_order(self: &Rc<Self>, req: &Request) -> bool {
        match req {
            Request::Credit { from, seq, credit } => {
                let (from, seq) = (*from, *seq);
                let last = self.ledger.borrow().last_applied_from(from);
                if seq <= last {
                    self.peers.post(
                        from,
                        Request::CreditAck {
                            from: self.shard(),
                            seq: last,
                        },
                    );
                    return true;
                }
                if seq != last + 1 {
                    return true; // a gap: an earlier credit was dropped; the sender re-sends
                }
                if let CreditPurpose::RefundReturn { payment_seq } = credit.purpose {
                    if !self.ledger.borrow().payment_held(payment_seq) {
                        // Credits apply in order and synchronously: load the payment now and
                        // let the sender's re-send find it held.
                        let this = self.clone();
                        self.peers.spawn(Box::pin(async move {
                            let _ = this.ensure_held(payment_seq).await;
                        }));
                        return true;
                    }
                }
                let cmd = Command::ApplyCredit {
                    from,
                    seq,
                    credit: credit.clone(),
                };
                let Ok((lsn, _)) = self.log_and_apply(&cmd) else {
                    return true;
                };
                if let CreditPurpose::RefundReturn { payment_seq } = credit.purpose {
                    let mut reserved = self.refund_reserved.borrow_mut();
                    let r = reserved.entry(payment_seq).or_insert(0);
                    *r = (*r - credit.amount).max(0);
                    if *r == 0 {
                        reserved.remove(&payment_seq);
                    }
                }
                let this = self.clone();
                self.peers.spawn(Box::pin(async move {
                    if this.wal.wait_durable(lsn).await.is_ok() {
                        this.peers.post(
                            from,
                            Request::CreditAck {
                                from: this.shard(),
                                seq,
                            },
                        );
                    }
                }));
                true
            }
            Request::CreditAck { from, seq } => {
                let _ = self.log_and_apply(&Command::AckCredits {
                    to: *from,
                    seq: *seq,
                });
                true
            }
            _ => false,
        }
    }

    /// Answers one request. Everything that changes state goes through `execute`.
    pub async fn handle(self: &Rc<Self>, req: Request) -> Reply {
        match req {
            Request::Execute(cmd) => match self.execute(cmd).await {
                Ok(o) => Reply::Outcome(o),
                Err(_) => Reply::Unavailable,
            },
            Request::ReadAccount(id) => {
                if self.read_barrier().await.is_err() {
                    return Reply::Unavailable;
                }
                Reply::Account(self.ledger.borrow().account(id))
            }
            Request::ReadPayment(seq) => {
                if self.read_barrier().await.is_err() || self.ensure_held(seq).await.is_err() {
                    return Reply::Unavailable;
                }
                Reply::Payment(self.ledger.borrow().payment(seq).map(|p| p.view.clone()))
            }
            Request::CardLookup(hash) => self.card_lookup(&hash).await,
            Request::MerchantAuth { id, key_hash } => {
                let facts = self.merchant_facts(&id).filter(|_| {
                    let ledger = self.ledger.borrow();
                    let stored = ledger.merchant(&id).map(|m| m.key_hash);
                    stored.is_some_and(|s| constant_time_eq(&s, &key_hash))
                });
                Reply::Merchant(facts)
            }
            Request::MerchantLookup(id) => Reply::Merchant(self.merchant_facts(&id)),
            Request::IdemBegin { key, body, now } => {
                Reply::Idem(self.idem_begin(key, body, now).await)
            }
            Request::IdemEnd { key, owner } => {
                // The holder answered after its record was durable: its durable LSN now
                // covers the record, so once its store has applied that LSN, so has the record.
                let holder = owner.map(|h| (h, self.durable_of(h)));
                self.idem.borrow_mut().end(key, holder);
                self.wake_idem(key, owner.map_or(IdemBegin::Proceed, IdemBegin::Replay));
                Reply::Ack
            }
            Request::IdemLookup(key) => Reply::Idem(self.idem_lookup(key).await),
            Request::IdemAwait(key) => {
                let state = self.idem_lookup(key).await;
                if state != IdemBegin::InFlight {
                    return Reply::Idem(state);
                }
                let (tx, rx) = futures::channel::oneshot::channel();
                self.idem_waiters
                    .borrow_mut()
                    .entry(key)
                    .or_default()
                    .push(tx);
                Reply::Idem(rx.await.unwrap_or(IdemBegin::Proceed))
            }
            Request::IdemFetch(key) => {
                if self.read_barrier().await.is_err() {
                    return Reply::Unavailable;
                }
                let held = self
                    .ledger
                    .borrow()
                    .idempotency(&key)
                    .map(|r| r.outcome.clone());
                let record = match (held, &self.store) {
                    (Some(outcome), _) => Some(outcome),
                    // Not held: the window keeps a record until its store has it.
                    (None, Some(store)) => match self.in_time(store.idem(key)).await {
                        Some(Ok(r)) => r.map(|r| r.outcome),
                        _ => return Reply::Unavailable,
                    },
                    (None, None) => None,
                };
                Reply::Outcome(record.unwrap_or(Outcome::Rejected(Reject::PaymentNotFound)))
            }
            Request::RefundPrepare {
                seq,
                merchant,
                amount,
                now,
                idem,
            } => Reply::Refund(self.refund_prepare(seq, merchant, amount, now, idem).await),
            Request::RefundRelease { seq, amount } => {
                let mut reserved = self.refund_reserved.borrow_mut();
                if let Some(r) = reserved.get_mut(&seq) {
                    *r -= amount;
                    assert!(*r >= 0);
                    if *r == 0 {
                        reserved.remove(&seq);
                    }
                }
                Reply::Ack
            }
            Request::Credit { .. } | Request::CreditAck { .. } => {
                let handled = self.handle_in_order(&req);
                assert!(handled);
                Reply::Ack
            }
            Request::Stats => Reply::Stats(Box::new(self.stats())),
            Request::Provision(p) => self.provision(p).await,
        }
    }

    // ---- idempotency keys owned here ---------------------------------------------------

    fn store_applied_of(&self, shard: ShardId) -> Lsn {
        self.stores
            .as_ref()
            .map_or(Lsn(0), |s| s.all[shard.index()].applied())
    }

    fn durable_of(&self, shard: ShardId) -> Lsn {
        self.stores.as_ref().map_or(Lsn(u64::MAX), |s| {
            Lsn(s.durables[shard.index()].load(std::sync::atomic::Ordering::Acquire))
        })
    }

    fn wake_idem(&self, key: Hash16, answer: IdemBegin) {
        let waiters = self.idem_waiters.borrow_mut().remove(&key);
        for waiter in waiters.unwrap_or_default() {
            let _ = waiter.send(answer);
        }
    }

    async fn idem_begin(&self, key: Hash16, body: Hash16, now: Millis) -> IdemBegin {
        let local = {
            let stored = |h: ShardId| self.store_applied_of(h);
            self.idem.borrow_mut().begin(key, body, now, &stored)
        };
        match local {
            Local::Known(answer) => answer,
            Local::Unknown => match self.find_idem_record(key, now).await {
                Ok(found) => {
                    let answer = self.idem.borrow_mut().resolve(key, body, found);
                    if answer != IdemBegin::Proceed {
                        self.wake_idem(key, answer);
                    }
                    answer
                }
                Err(()) => {
                    self.idem.borrow_mut().end(key, None);
                    self.wake_idem(key, IdemBegin::Proceed);
                    self.shed(ShedReason::StoreRead);
                    IdemBegin::Full // answered 503 / 91: the stores could not say in time
                }
            },
        }
    }

    async fn idem_lookup(&self, key: Hash16) -> IdemBegin {
        let now = self.now();
        let local = self.idem.borrow().lookup(&key, now);
        match local {
            Local::Known(answer) => answer,
            Local::Unknown => match self.find_idem_record(key, now).await {
                Ok(Some((holder, _, _))) => IdemBegin::Replay(holder),
                Ok(None) => IdemBegin::Proceed,
                Err(()) => {
                    self.shed(ShedReason::StoreRead);
                    IdemBegin::Full
                }
            },
        }
    }

    /// Asks every shard's store for `key`'s record: (holder, body, at) of one still within
    /// its retention.
    async fn find_idem_record(
        &self,
        key: Hash16,
        now: Millis,
    ) -> Result<Option<(ShardId, Hash16, Millis)>, ()> {
        let Some(stores) = &self.stores else {
            return Ok(None);
        };
        let reads = stores.all.iter().map(|s| s.idem(key));
        let Some(answers) = self.in_time(futures::future::join_all(reads)).await else {
            return Err(());
        };
        let retention = self.config.idempotency_retention_millis;
        let mut found = None;
        for (shard, answer) in answers.into_iter().enumerate() {
            match answer {
                Ok(Some(r)) if r.at.0 + retention > now.0 => {
                    found = Some((ShardId(shard as u16), r.body, r.at));
                }
                Ok(_) => {}
                Err(_) => return Err(()),
            }
        }
        Ok(found)
    }

    fn merchant_facts(&self, id: &MerchantId) -> Option<MerchantFacts> {
        let ledger = self.ledger.borrow();
        let m = ledger.merchant(id)?;
        Some(MerchantFacts {
            id: id.clone(),
            settlement: m.settlement,
            settlement_shard: crate::shard::routing::shard_of_account(
                m.settlement,
                self.config.shards,
            ),
            currency: m.currency,
            mcc: m.mcc,
            status: m.status,
        })
    }

    async fn refund_prepare(
        &self,
        seq: u64,
        merchant: MerchantId,
        amount: Option<i64>,
        now: Millis,
        idem: Option<IdemTag>,
    ) -> RefundPlan {
        if self.ensure_held(seq).await.is_err() {
            return RefundPlan::Unavailable;
        }
        let (settlement, settlement_shard, card_account, currency, remaining) = {
            let ledger = self.ledger.borrow();
            let Some(p) = ledger.payment(seq).filter(|p| p.view.merchant == merchant) else {
                return RefundPlan::Rejected(Reject::PaymentNotFound);
            };
            let reserved = self
                .refund_reserved
                .borrow()
                .get(&seq)
                .copied()
                .unwrap_or(0);
            let remaining = p.view.amount_captured - p.view.amount_refunded - reserved;
            (
                p.settlement,
                p.settlement_shard,
                p.account,
                p.view.currency,
                remaining,
            )
        };
        let amount = amount.unwrap_or(remaining);
        let reserved = self
            .refund_reserved
            .borrow()
            .get(&seq)
            .copied()
            .unwrap_or(0);
        if let Err(r) = self
            .ledger
            .borrow()
            .check_refund(seq, &merchant, amount, reserved)
        {
            return RefundPlan::Rejected(r);
        }
        if settlement_shard == self.shard() {
            return match self
                .execute(Command::RefundLocal {
                    payment: seq,
                    merchant,
                    amount,
                    now,
                    idem,
                })
                .await
            {
                Ok(o) => RefundPlan::Done(o),
                Err(_) => RefundPlan::Unavailable,
            };
        }
        let view = self
            .ledger
            .borrow()
            .project_refund(seq, amount, reserved)
            .expect("checked above");
        *self.refund_reserved.borrow_mut().entry(seq).or_insert(0) += amount;
        RefundPlan::Reserved {
            settlement,
            settlement_shard,
            card_account: card_account.expect("captured payments have an account"),
            amount,
            currency,
            view: Box::new(view),
        }
    }

    // ---- cross-shard credits -----------------------------------------------------------

    /// Posts every durable, not yet posted credit, in seq order per destination.
    fn pump(&self) {
        let durable = self.wal.durable_lsn();
        let ledger = self.ledger.borrow();
        let mut posted = self.posted.borrow_mut();
        for (to, seq, lsn, credit) in ledger.outbox() {
            if seq <= posted[to.index()] {
                continue;
            }
            if lsn > durable && !self.config.ack_before_durable {
                continue; // never let money leave before the debit is durable
            }
            posted[to.index()] = seq;
            self.peers.post(
                to,
                Request::Credit {
                    from: self.shard(),
                    seq,
                    credit: credit.clone(),
                },
            );
        }
    }

    /// Periodic work, called by the shard's timer: expire holds, prune idempotency records,
    /// re-send unacknowledged credits. Each change is an ordinary logged command.
    pub async fn tick(self: &Rc<Self>) {
        let now = self.now();
        if now.0.saturating_sub(self.last_expiry_scan.get()) >= EXPIRY_SCAN_MILLIS
            && self.accepting.get()
        {
            self.last_expiry_scan.set(now.0);
            self.expire_holds(now).await;
        }
        // The store prunes records past their retention when it applies this record.
        let retention = self.config.idempotency_retention_millis;
        let before = Millis(now.0.saturating_sub(retention));
        let prunable = self.last_keyed_at.get() > self.pruned_before.get();
        if self.store.is_some()
            && self.accepting.get()
            && prunable
            && before.0 > self.pruned_before.get()
            && now.0.saturating_sub(self.last_prune.get()) >= EXPIRY_SCAN_MILLIS
        {
            self.last_prune.set(now.0);
            if self
                .execute(Command::PruneIdempotency { before })
                .await
                .is_ok()
            {
                self.pruned_before.set(before.0);
            }
        }
        if now.0.saturating_sub(self.last_resend.get()) >= self.config.credit_resend_millis {
            self.last_resend.set(now.0);
            // Re-post from the oldest unacknowledged credit per destination.
            let mut posted = self.posted.borrow_mut();
            let ledger = self.ledger.borrow();
            let mut oldest: HashMap<ShardId, u64> = HashMap::new();
            for (to, seq, _, _) in ledger.outbox() {
                oldest.entry(to).or_insert(seq);
            }
            for (to, seq) in oldest {
                posted[to.index()] = seq - 1;
            }
        }
        self.pump();
    }

    /// Releases up to `EXPIRE_BATCH_MAX` holds that are due: found in the store's index by
    /// expiry (or, without a store, by scanning the payments in memory), loaded, then expired
    /// by one logged command.
    async fn expire_holds(&self, now: Millis) {
        let due = match &self.store {
            Some(store) => match self.in_time(store.holds_due(now, EXPIRE_BATCH_MAX)).await {
                Some(Ok(due)) => due,
                _ => return, // the next scan tries again
            },
            None => self
                .ledger
                .borrow()
                .holds_due_in_memory(now, EXPIRE_BATCH_MAX),
        };
        if due.is_empty() {
            return;
        }
        for &seq in &due {
            let _ = self.ensure_held(seq).await;
        }
        let held: Vec<u64> = {
            let ledger = self.ledger.borrow();
            due.into_iter()
                .filter(|&s| ledger.payment_held(s))
                .collect()
        };
        if !held.is_empty() {
            let _ = self
                .execute(Command::ExpireHolds {
                    now,
                    payments: held,
                })
                .await;
        }
    }

    /// True when no credit is waiting for an acknowledgement (for draining at shutdown).
    pub fn outbox_empty(&self) -> bool {
        self.ledger.borrow().outbox().next().is_none()
    }

    /// Requests shed per `ShedReason`: this gateway's counters, plus admission's own (a
    /// late request is refused through its ticket, which does not reach the gateway).
    fn shed_counts(&self) -> [u64; SHED_REASONS.len()] {
        let mut counts: [u64; SHED_REASONS.len()] = std::array::from_fn(|k| self.shed[k].get());
        let admission = self.admission.borrow();
        for refusal in [Refusal::QueueTime, Refusal::Concurrency] {
            counts[ShedReason::from(refusal) as usize] += admission.refused(refusal);
        }
        counts
    }

    fn shed(&self, reason: ShedReason) {
        let n = &self.shed[reason as usize];
        n.set(n.get() + 1);
    }

    pub fn stats(&self) -> ShardStats {
        let ledger = self.ledger.borrow();
        let (accounts, cards, merchants, payments) = ledger.counts();
        let wal = self.wal.stats();
        // A counter the store writer publishes (0 without a store).
        let progress = |counter: fn(&crate::store::reader::StoreProgress) -> &AtomicU64| {
            self.store.as_ref().map_or(0, |s| {
                counter(s.progress()).load(std::sync::atomic::Ordering::Relaxed)
            })
        };
        ShardStats {
            shard: self.shard().0,
            accounts,
            cards,
            merchants,
            payments,
            idempotency_records: ledger.idempotency_len(),
            idempotency_index: self.idem.borrow().len(),
            outbox: ledger.outbox_len(),
            totals: ledger
                .totals()
                .iter()
                .map(|(c, t)| (c.numeric(), t.accounts, t.treasury, t.sent, t.received))
                .collect(),
            wal_last_lsn: self.wal.last_lsn().0,
            wal_durable_lsn: self.wal.durable_lsn().0,
            wal_batches: wal.batches,
            wal_records: wal.records,
            wal_bytes: wal.bytes_written,
            wal_sync_buckets: wal.sync_micros,
            wal_batch_records: wal.batch_records,
            shed: self.shed_counts(),
            requests: self.requests.get(),
            dropped_posts: 0,
            payments_in_memory: ledger.payments_held().0,
            payment_window: ledger.payments_held().1.unwrap_or(0),
            store_applied_lsn: self.store.as_ref().map_or(0, |s| s.applied().0),
            store_checkpoint_lsn: progress(|p| &p.checkpoint),
            wal_segments_deleted: progress(|p| &p.segments_deleted),
            wal_segments_recycled: progress(|p| &p.segments_recycled),
            wal_spares_prepared: progress(|p| &p.spares_prepared),
            store_wal_records_read: progress(|p| &p.wal_records_read),
            wal_segments_created: wal.segments_created,
            wal_segments_reused: wal.segments_reused,
            store_failures: progress(|p| &p.failures),
            store_commits: progress(|p| &p.commits),
            store_commit_micros: progress(|p| &p.commit_micros),
            store_commit_micros_max: progress(|p| &p.commit_micros_max),
            store_checkpoints: progress(|p| &p.checkpoints),
            store_checkpoint_micros: progress(|p| &p.checkpoint_micros),
            store_checkpoint_micros_max: progress(|p| &p.checkpoint_micros_max),
            cold_reads: self.cold_reads.get(),
            store_shed: self.store_shed.get(),
            metrics: crate::metrics::snapshot(),
            mesh_in_flight: self.peers.in_flight(),
            data_free_bytes: self.stores.as_ref().map_or(0, |s| s.space.free_bytes()),
            data_space_low: self.stores.as_ref().is_some_and(|s| s.space.low()),
            admission_limit: self.admission.borrow().limit(),
            admission_in_flight: self.admission.borrow().in_flight(),
            queue_delay_micros: self.admission.borrow().queue_delay(),
        }
    }
}

/// Compares two secrets in time independent of where they differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
