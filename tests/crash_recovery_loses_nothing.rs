//! Crash recovery under load (DESIGN.md §3, §4, §9): several clients run a random mix of
//! authorizations, sales, partial captures, voids and partial refunds, each with an
//! Idempotency-Key; the gateway is killed with SIGKILL (or stopped with SIGTERM) at a random
//! moment and restarted on the same data directory. Then:
//!
//! 1. every payment whose answer a client saw is present, exactly as answered, or — when a
//!    later request on it got no answer — exactly as that request would leave it;
//! 2. every unanswered request is retried with the same key and body: it is either replayed
//!    (and then the state already showed it) or executed now (and then it did not), never
//!    twice; after that every operation is known, so holds and balances of every card and
//!    settlement account must equal what the payments say, to the cent;
//! 3. acknowledged requests replay the very answer the client saw;
//! 4. per currency all balances plus money in flight sum to zero.
//!
//! The seed is printed; set COREPAY_CRASH_SEED to replay a run's choices.
// The shared harness's `raw_get` trips clippy::type_complexity (not ours to change).
#[allow(clippy::type_complexity)]
mod common;
use common::*;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CARDS: usize = 20;
const CARD_BALANCE: i64 = 100_000_000; // 1 000 000.00
const SETTLEMENT_BALANCE: i64 = 100_000_000;
const MERCHANTS: usize = 3;
const EXP: (u8, u16) = (12, 2030);

// ---- money ---------------------------------------------------------------------------------

fn fmt(cents: i64) -> String {
    assert!(cents >= 0);
    format!("{}.{:02}", cents / 100, cents % 100)
}

fn cents(v: &Value) -> i64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not an amount: {v}"));
    let (whole, frac) = s.split_once('.').unwrap_or((s, "0"));
    let sign = if whole.starts_with('-') { -1 } else { 1 };
    let whole: i64 = whole.trim_start_matches('-').parse().unwrap();
    let frac: i64 = format!("{frac:0<2}")[..2].parse().unwrap();
    sign * (whole * 100 + frac)
}

// ---- the fixture ---------------------------------------------------------------------------

/// What the clients need to know about the provisioned world.
struct World {
    shards: u16,
    card_numbers: Vec<String>,
    card_accounts: Vec<u64>,
    merchant_keys: Vec<String>,
    settlement_accounts: Vec<u64>,
}

fn provision(s: &Server) -> World {
    let shards = s.shards;
    let mut w = World {
        shards,
        card_numbers: Vec::new(),
        card_accounts: Vec::new(),
        merchant_keys: Vec::new(),
        settlement_accounts: Vec::new(),
    };
    for i in 0..CARDS {
        let account = 10_001 + i as u64;
        create_account(s, account, "EUR", &fmt(CARD_BALANCE));
        let number = card_number(&format!("4000{:011}", 7_000 + i));
        create_card(s, &number, account);
        w.card_numbers.push(number);
        w.card_accounts.push(account);
    }
    let card_shards: BTreeSet<u16> = w
        .card_accounts
        .iter()
        .map(|&a| shard_of(a, shards))
        .collect();
    assert_eq!(card_shards.len(), shards as usize, "cards on every shard");
    for m in 0..MERCHANTS {
        // Settlement accounts on different shards: captures and refunds cross shards.
        let settlement = account_on_shard(m as u16 % shards, shards, 90_001 + 100 * m as u64);
        create_account(s, settlement, "EUR", &fmt(SETTLEMENT_BALANCE));
        w.merchant_keys
            .push(create_merchant(s, &format!("CRASH{m}"), settlement));
        w.settlement_accounts.push(settlement);
    }
    w
}

// ---- operations ----------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Create {
        card: usize,
        amount: i64,
        capture: bool,
        /// Presents the wrong expiry: a decline (54), stored and answered with 402.
        bad_expiry: bool,
    },
    Capture(Option<i64>),
    Void,
    Refund(Option<i64>),
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Create { capture: false, .. } => "authorize",
            Op::Create { capture: true, .. } => "sale",
            Op::Capture(_) => "capture",
            Op::Void => "void",
            Op::Refund(_) => "refund",
        }
    }
}

/// One request exactly as sent, so that it can be sent again with the same key and body.
#[derive(Clone, Debug)]
struct Req {
    merchant: usize,
    /// None for a create (the id is in the answer).
    payment: Option<String>,
    op: Op,
    key: String,
    path: String,
    body: String,
}

fn build(w: &World, merchant: usize, payment: Option<&str>, op: Op, key: String) -> Req {
    let amount_body = |a: &Option<i64>| match a {
        Some(a) => format!(r#"{{"amount":"{}"}}"#, fmt(*a)),
        None => String::new(),
    };
    let (path, body) = match (&op, payment) {
        (
            Op::Create {
                card,
                amount,
                capture,
                bad_expiry,
            },
            None,
        ) => {
            let year = if *bad_expiry { EXP.1 + 1 } else { EXP.1 };
            let body = format!(
                r#"{{"amount":"{}","currency":"EUR","card":{{"number":"{}","exp_month":{},"exp_year":{year}}},"capture":{capture},"reference":"{key}"}}"#,
                fmt(*amount),
                w.card_numbers[*card],
                EXP.0
            );
            ("/v1/payments".to_string(), body)
        }
        (Op::Capture(a), Some(id)) => (format!("/v1/payments/{id}/capture"), amount_body(a)),
        (Op::Void, Some(id)) => (format!("/v1/payments/{id}/void"), String::new()),
        (Op::Refund(a), Some(id)) => (format!("/v1/payments/{id}/refunds"), amount_body(a)),
        _ => unreachable!("creates have no id, the others have one"),
    };
    Req {
        merchant,
        payment: payment.map(str::to_string),
        op,
        key,
        path,
        body,
    }
}

/// The payment object in an answer the client may count on: 200/201, or a 402 decline that
/// carries the (declined) payment.
fn payment_of(status: u16, body: &Value) -> Option<Value> {
    match status {
        200 | 201 if body["object"] == "payment" => Some(body.clone()),
        402 if body["payment"]["object"] == "payment" => Some(body["payment"].clone()),
        _ => None,
    }
}

/// The state a payment reaches when `op` is applied to `before` (the model of the API).
fn predict(before: &Value, op: &Op) -> (String, i64, i64) {
    let amount = cents(&before["amount"]);
    let captured = cents(&before["amount_captured"]);
    let refunded = cents(&before["amount_refunded"]);
    match op {
        Op::Capture(a) => {
            let a = a.unwrap_or(amount);
            let status = if a == amount {
                "captured"
            } else {
                "partially_captured"
            };
            (status.into(), a, 0)
        }
        Op::Void => ("voided".into(), 0, 0),
        Op::Refund(a) => {
            let r = refunded + a.unwrap_or(captured - refunded);
            let status = if r == captured {
                "refunded"
            } else {
                "partially_refunded"
            };
            (status.into(), captured, r)
        }
        Op::Create { .. } => unreachable!("a create has no state before it"),
    }
}

fn progress(p: &Value) -> (String, i64, i64) {
    (
        p["status"].as_str().unwrap().to_string(),
        cents(&p["amount_captured"]),
        cents(&p["amount_refunded"]),
    )
}

fn is_open(p: &Value) -> bool {
    matches!(
        p["status"].as_str().unwrap(),
        "authorized" | "captured" | "partially_captured" | "partially_refunded"
    )
}

/// A payment the model knows, with the last answer seen for it.
#[derive(Clone, Debug)]
struct Known {
    merchant: usize,
    card: usize,
    view: Value,
}

/// The next operation on an open payment.
fn next_op(rng: &mut SmallRng, p: &Value) -> Op {
    let amount = cents(&p["amount"]);
    let captured = cents(&p["amount_captured"]);
    let refunded = cents(&p["amount_refunded"]);
    match p["status"].as_str().unwrap() {
        "authorized" => match rng.gen_range(0..10) {
            0..=2 => Op::Void,
            3..=5 => Op::Capture(None),
            _ => Op::Capture(Some(rng.gen_range(1..=amount))),
        },
        _ => {
            let remaining = captured - refunded;
            if rng.gen_bool(0.3) {
                Op::Refund(None)
            } else {
                Op::Refund(Some(rng.gen_range(1..=remaining)))
            }
        }
    }
}

// ---- the clients ---------------------------------------------------------------------------

/// What became of one request during the load.
#[derive(Clone, Debug)]
enum Seen {
    /// The client saw this answer (status, payment object).
    Acked(u16, Value),
    /// Sent, but no usable answer: may or may not have happened.
    Unknown(Why),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Why {
    /// The connection broke before the answer arrived.
    Lost,
    /// 503: shed or shutting down.
    Shed,
    /// Any other answer (reported as a failure).
    Unexpected,
}

#[derive(Clone, Debug)]
struct Event {
    thread: usize,
    n: usize,
    req: Req,
    seen: Seen,
}

struct Shared {
    events: Mutex<Vec<Event>>,
    /// Answers no client should get (4xx other than a decline, or a malformed body).
    unexpected: Mutex<Vec<String>>,
    stop: AtomicBool,
}

fn send(c: &mut Client, req: &Req) -> std::io::Result<Resp> {
    let body = (!req.body.is_empty()).then_some(req.body.as_str());
    c.try_request("POST", &req.path, body, &[("Idempotency-Key", &req.key)])
}

#[allow(clippy::too_many_arguments)]
fn client_thread(
    addr: SocketAddr,
    w: Arc<World>,
    shared: Arc<Shared>,
    round: usize,
    thread: usize,
    seed: u64,
    mut mine: Vec<(String, Known)>,
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let keys = &w.merchant_keys;
    let mut clients: Vec<Option<Client>> = (0..MERCHANTS).map(|_| None).collect();
    let mut n = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        let open: Vec<usize> = (0..mine.len())
            .filter(|&i| is_open(&mine[i].1.view))
            .collect();
        let (req, slot) = if open.is_empty() || rng.gen_bool(0.35) {
            let op = Op::Create {
                card: rng.gen_range(0..CARDS),
                amount: rng.gen_range(100..=50_000),
                capture: rng.gen_bool(0.3),
                bad_expiry: rng.gen_bool(0.05),
            };
            let merchant = rng.gen_range(0..MERCHANTS);
            let key = format!("r{round}-t{thread}-{n}");
            (build(&w, merchant, None, op, key), None)
        } else {
            let i = open[rng.gen_range(0..open.len())];
            let (id, k) = &mine[i];
            let op = next_op(&mut rng, &k.view);
            let key = format!("r{round}-t{thread}-{n}");
            (build(&w, k.merchant, Some(id), op, key), Some(i))
        };
        n += 1;
        let m = req.merchant;
        if clients[m].is_none() {
            match Client::try_connect(addr, Some(&keys[m])) {
                Ok(c) => clients[m] = Some(c),
                Err(_) => break, // the server is gone; this request was never sent
            }
        }
        let result = send(clients[m].as_mut().unwrap(), &req);
        let seen = match &result {
            Ok(r) => match payment_of(r.status, &r.body) {
                Some(p) => Seen::Acked(r.status, p),
                None if r.status == 503 => Seen::Unknown(Why::Shed),
                None => {
                    shared.unexpected.lock().unwrap().push(format!(
                        "merchant {} (settles on shard {}): {} {} {}: {} {}",
                        m,
                        shard_of(w.settlement_accounts[m], w.shards),
                        req.path,
                        req.key,
                        req.body,
                        r.status,
                        String::from_utf8_lossy(&r.raw)
                    ));
                    Seen::Unknown(Why::Unexpected)
                }
            },
            Err(_) => {
                clients[m] = None; // reconnect next time (fails once the server is gone)
                Seen::Unknown(Why::Lost)
            }
        };
        let stopping = matches!(&result, Ok(r) if r.status == 503);
        if matches!(&result, Ok(r) if r.header("connection") == Some("close")) {
            clients[m] = None; // the server closes this connection
        }
        match (&seen, slot) {
            (Seen::Acked(_, p), None) => {
                if let Op::Create { card, .. } = req.op {
                    let id = p["id"].as_str().unwrap().to_string();
                    let k = Known {
                        merchant: m,
                        card,
                        view: p.clone(),
                    };
                    mine.push((id, k));
                }
            }
            (Seen::Acked(_, p), Some(i)) => mine[i].1.view = p.clone(),
            // Not known any more: leave this payment alone for the rest of the round.
            (Seen::Unknown(_), Some(i)) => mine[i].1.view["status"] = "unknown".into(),
            (Seen::Unknown(_), None) => {}
        }
        shared.events.lock().unwrap().push(Event {
            thread,
            n,
            req,
            seen,
        });
        if stopping {
            break;
        }
    }
}

// ---- one round -----------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Debug)]
enum Stop {
    Kill,
    Term,
}

/// The whole model: every payment ever created, with its current state.
struct Model {
    payments: BTreeMap<String, Known>,
    /// Acknowledged requests of all rounds (for replay checks).
    acked: Vec<(Req, u16, Value)>,
}

struct RoundStats {
    acked: usize,
    unknown: usize,
    replayed: usize,
    executed_on_retry: usize,
    stop_ms: u128,
}

fn merchant_client(s: &Server, w: &World, m: usize) -> Client {
    Client::with_key(s.http, &w.merchant_keys[m])
}

/// GET a payment; a 503 (a cold read slower than state.read_timeout_ms on a busy machine)
/// is retried, as a client would, for a bounded time.
fn get_payment(c: &mut Client, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, p) = c.get(&format!("/v1/payments/{id}"));
        if status == 503 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        assert_eq!(status, 200, "GET {id}: {p}");
        return p;
    }
}

/// Retries `req` until it gets an answer the client can count on.
fn retry(s: &Server, w: &World, req: &Req) -> Resp {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = merchant_client(s, w, req.merchant);
    loop {
        let r = send(&mut c, req).expect("the restarted server answers");
        if payment_of(r.status, &r.body).is_some() {
            return r;
        }
        assert!(
            matches!(r.status, 409 | 503) && Instant::now() < deadline,
            "retry of {req:?} answered {} {}",
            r.status,
            r.body
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Acknowledgements a round has before its crash (at least; it runs on for `load_ms` first).
const MIN_ACKED_PER_ROUND: usize = 12;

fn acked_so_far(shared: &Shared) -> usize {
    let events = shared.events.lock().unwrap();
    events
        .iter()
        .filter(|e| matches!(e.seen, Seen::Acked(..)))
        .count()
}

#[allow(clippy::too_many_arguments)]
fn round(
    s: &mut Server,
    w: &Arc<World>,
    model: &mut Model,
    seed: u64,
    round: usize,
    threads: usize,
    load_ms: u64,
    stop: Stop,
) -> RoundStats {
    let mut rng = SmallRng::seed_from_u64(seed ^ (round as u64).wrapping_mul(0x9E37_79B9));
    // ---- load, then the crash
    let shared = Arc::new(Shared {
        events: Mutex::new(Vec::new()),
        unexpected: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
    });
    let open: Vec<(String, Known)> = model
        .payments
        .iter()
        .filter(|(_, k)| is_open(&k.view))
        .map(|(id, k)| (id.clone(), k.clone()))
        .collect();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let mine: Vec<_> = open
                .iter()
                .enumerate()
                .filter(|(i, _)| i % threads == t)
                .map(|(_, p)| p.clone())
                .collect();
            let (addr, w, shared) = (s.http, w.clone(), shared.clone());
            let seed = rng.gen();
            std::thread::spawn(move || client_thread(addr, w, shared, round, t, seed, mine))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(load_ms));
    // A slow machine (a debug build beside parallel tests) may not have acknowledged
    // anything yet: keep the load on until some acknowledgements exist to lose, bounded.
    let enough = Instant::now() + Duration::from_secs(20);
    while acked_so_far(&shared) < MIN_ACKED_PER_ROUND && Instant::now() < enough {
        std::thread::sleep(Duration::from_millis(rng.gen_range(5..=50)));
    }
    let mut stop_ms = 0;
    match stop {
        Stop::Kill => s.kill9(),
        Stop::Term => {
            let t = Instant::now();
            let status = s.terminate();
            stop_ms = t.elapsed().as_millis();
            assert_eq!(
                status.code(),
                Some(0),
                "SIGTERM must drain and exit 0, got {status}; log:\n{}",
                s.log()
            );
        }
    }
    shared.stop.store(true, Ordering::SeqCst);
    for h in handles {
        h.join().expect("client thread");
    }
    let unexpected = shared.unexpected.lock().unwrap().clone();
    assert!(unexpected.is_empty(), "unexpected answers: {unexpected:#?}");
    let mut events = std::mem::take(&mut *shared.events.lock().unwrap());
    events.sort_by_key(|e| (e.thread, e.n));
    s.spawn();

    // ---- 1. what was acknowledged survived, exactly
    // Per payment: the last acknowledged answer, and the one unanswered request after it
    // (a client leaves a payment alone once a request on it went unanswered).
    let mut last_acked: BTreeMap<String, Value> = BTreeMap::new();
    let mut pending: BTreeMap<String, (Req, Why)> = BTreeMap::new();
    let mut unknown_creates: Vec<(Req, Why)> = Vec::new();
    for e in &events {
        match (&e.seen, &e.req.payment) {
            (Seen::Acked(_, p), _) => {
                let id = p["id"].as_str().unwrap().to_string();
                assert!(!pending.contains_key(&id), "used after an unknown: {e:?}");
                last_acked.insert(id, p.clone());
            }
            (Seen::Unknown(why), Some(id)) => {
                assert!(pending.insert(id.clone(), (e.req.clone(), *why)).is_none());
            }
            (Seen::Unknown(why), None) => unknown_creates.push((e.req.clone(), *why)),
        }
        if let (Seen::Acked(_, p), Op::Create { card, .. }) = (&e.seen, &e.req.op) {
            let id = p["id"].as_str().unwrap().to_string();
            let k = Known {
                merchant: e.req.merchant,
                card: *card,
                view: p.clone(),
            };
            assert!(model.payments.insert(id, k).is_none(), "a new id: {p}");
        }
    }
    let mut clients: Vec<Client> = (0..MERCHANTS).map(|m| merchant_client(s, w, m)).collect();
    let touched: BTreeSet<String> = last_acked.keys().chain(pending.keys()).cloned().collect();
    let mut before_retry: BTreeMap<String, Value> = BTreeMap::new();
    for id in &touched {
        let known = &model.payments[id];
        let acked = last_acked.get(id).unwrap_or(&known.view).clone();
        let now = get_payment(&mut clients[known.merchant], id);
        match pending.get(id).map(|(req, _)| req) {
            None => assert_eq!(now, acked, "{id}: acknowledged state lost or changed"),
            Some(req) => {
                let after = predict(&acked, &req.op);
                assert!(
                    progress(&now) == progress(&acked) || progress(&now) == after,
                    "{id}: after the acknowledged {acked}\nand an unanswered {} the payment \
                     must be either; it is {now}",
                    req.op.name()
                );
                for field in [
                    "id",
                    "amount",
                    "currency",
                    "card",
                    "approval_code",
                    "created_at",
                ] {
                    assert_eq!(now[field], acked[field], "{id}: {field} changed");
                }
            }
        }
        before_retry.insert(id.clone(), now);
    }

    // ---- 2. retry every unanswered request: replayed iff it had happened
    let mut stats = RoundStats {
        acked: events
            .iter()
            .filter(|e| matches!(e.seen, Seen::Acked(..)))
            .count(),
        unknown: pending.len() + unknown_creates.len(),
        replayed: 0,
        executed_on_retry: 0,
        stop_ms,
    };
    let mut note = |r: &Resp, req: &Req, why: Why| {
        let replayed = r.header("Idempotent-Replayed") == Some("true");
        if replayed {
            stats.replayed += 1;
        } else {
            stats.executed_on_retry += 1;
        }
        // 503 means "not done, retry"; and SIGTERM answers every request it took in.
        assert!(
            !(replayed && why == Why::Shed),
            "{req:?} was answered 503 but had been carried out"
        );
        assert!(
            !(replayed && why == Why::Lost && stop == Stop::Term),
            "SIGTERM: {req:?} was carried out but its connection closed without an answer"
        );
        replayed
    };
    for (req, why) in &unknown_creates {
        let r = retry(s, w, req);
        note(&r, req, *why);
        let p = payment_of(r.status, &r.body).unwrap();
        let Op::Create { card, .. } = req.op else {
            unreachable!()
        };
        let id = p["id"].as_str().unwrap().to_string();
        let k = Known {
            merchant: req.merchant,
            card,
            view: p.clone(),
        };
        assert!(
            model.payments.insert(id.clone(), k).is_none(),
            "the retried create {req:?} answered another payment's id: {p}"
        );
        let now = get_payment(&mut clients[req.merchant], &id);
        assert_eq!(now, p, "{id}: GET after the retried create");
        model.acked.push((req.clone(), r.status, p));
    }
    for (id, (req, why)) in &pending {
        let r = retry(s, w, req);
        let replayed = note(&r, req, *why);
        let p = payment_of(r.status, &r.body).unwrap();
        let before = &before_retry[id];
        let acked = last_acked.get(id).unwrap_or(&model.payments[id].view);
        if replayed {
            assert_eq!(
                progress(before),
                predict(acked, &req.op),
                "{id}: {} replayed after restart, but the payment did not show it: {before}",
                req.op.name()
            );
        } else {
            assert_eq!(
                progress(before),
                progress(acked),
                "{id}: {} ran again on retry though the payment already showed it (twice!)",
                req.op.name()
            );
        }
        assert_eq!(progress(&p), predict(acked, &req.op), "{id}: {r:?}");
        last_acked.insert(id.clone(), p.clone());
        model.acked.push((req.clone(), r.status, p));
    }
    for (id, p) in &last_acked {
        model.payments.get_mut(id).unwrap().view = p.clone();
    }
    for e in &events {
        if let Seen::Acked(status, p) = &e.seen {
            model.acked.push((e.req.clone(), *status, p.clone()));
        }
    }

    // ---- 3. acknowledged requests replay their answer; payments read back as known
    wait_settled(s);
    for _ in 0..8 {
        let (req, status, p) = &model.acked[rng.gen_range(0..model.acked.len())];
        // A 503 (a store read slower than state.read_timeout_ms on a busy machine) is
        // retried as a client would; anything else must be the replayed first answer.
        let deadline = Instant::now() + Duration::from_secs(10);
        let r = loop {
            let r = send(&mut clients[req.merchant], req).expect("an answer");
            if r.status != 503 || Instant::now() > deadline {
                break r;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(
            r.header("Idempotent-Replayed"),
            Some("true"),
            "{req:?}: {} {}",
            r.status,
            r.body
        );
        assert_eq!(r.status, *status, "{req:?}: {}", r.body);
        let replay = payment_of(r.status, &r.body).unwrap();
        assert_eq!(
            &replay, p,
            "{req:?}: the replay differs from the first answer"
        );
    }
    let ids: Vec<String> = model.payments.keys().cloned().collect();
    let sample = (0..10).map(|_| ids[rng.gen_range(0..ids.len())].clone());
    for id in touched.iter().cloned().chain(sample) {
        let k = &model.payments[&id];
        let now = get_payment(&mut clients[k.merchant], &id);
        assert_eq!(now, k.view, "{id}: not as the model knows it");
    }

    // ---- 4. every hold applied once, every cent accounted for
    check_accounts(s, w, model);
    stats
}

/// Holds and balances of every account against the model (after in-flight credits landed).
fn check_accounts(s: &Server, w: &World, model: &Model) {
    wait_settled(s);
    let mut held = [0i64; CARDS];
    let mut moved = [0i64; CARDS];
    let mut settled = [0i64; MERCHANTS];
    for k in model.payments.values() {
        let p = &k.view;
        let net = cents(&p["amount_captured"]) - cents(&p["amount_refunded"]);
        if p["status"] == "authorized" {
            held[k.card] += cents(&p["amount"]);
        }
        moved[k.card] += net;
        settled[k.merchant] += net;
    }
    for (c, &id) in w.card_accounts.iter().enumerate() {
        let a = get_account(s, id);
        assert_eq!(
            (cents(&a["held"]), cents(&a["balance"])),
            (held[c], CARD_BALANCE - moved[c]),
            "card account {id}: (held, balance) differ from its payments: {a}"
        );
    }
    for (m, &id) in w.settlement_accounts.iter().enumerate() {
        let a = get_account(s, id);
        assert_eq!(
            (cents(&a["held"]), cents(&a["balance"])),
            (0, SETTLEMENT_BALANCE + settled[m]),
            "settlement account {id} of merchant {m}: {a}"
        );
    }
}

fn seed() -> u64 {
    let seed = std::env::var("COREPAY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("COREPAY_CRASH_SEED={seed}");
    seed
}

fn run(shards: u16, rounds: usize, stop: Stop) {
    run_with(shards, rounds, stop, "")
}

fn run_with(shards: u16, rounds: usize, stop: Stop, config: &str) {
    let seed = seed();
    let started = Instant::now();
    let mut s = Server::start_with(shards, config);
    let w = Arc::new(provision(&s));
    let mut model = Model {
        payments: BTreeMap::new(),
        acked: Vec::new(),
    };
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut total = (0, 0, 0, 0);
    for r in 0..rounds {
        let threads = rng.gen_range(4..=6);
        let load_ms = rng.gen_range(50..=400);
        let st = round(&mut s, &w, &mut model, seed, r, threads, load_ms, stop);
        println!(
            "{stop:?} round {r:2}: {threads} clients, {load_ms:3} ms: {:3} acked, {:2} unanswered \
             -> {} replayed, {} executed on retry; {} payments; stopped in {} ms",
            st.acked,
            st.unknown,
            st.replayed,
            st.executed_on_retry,
            model.payments.len(),
            st.stop_ms
        );
        total.0 += st.acked;
        total.1 += st.unknown;
        total.2 += st.replayed;
        total.3 += st.executed_on_retry;
    }
    println!(
        "{stop:?} x{rounds} on {shards} shards: {} acked, {} unanswered ({} had happened, {} \
         had not), {} payments, {:.1} s",
        total.0,
        total.1,
        total.2,
        total.3,
        model.payments.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(total.0 > rounds * 10, "too little load to mean anything");
    if stop == Stop::Kill {
        assert!(total.1 > 0, "no request was ever caught mid-flight");
    }
}

/// kill -9 at random moments under load, 20 rounds on 2 shards.
#[test]
fn kill9_under_load_loses_no_acknowledged_payment() {
    run(2, 20, Stop::Kill);
}

/// kill -9 while payments leave memory and come back, the store checkpoints every 20 ms and
/// WAL segments (1 MiB) are deleted behind the checkpoints: the crash lands during store
/// writes, checkpoints and deletions.
#[test]
fn kill9_during_store_writes_checkpoints_and_segment_deletion_loses_nothing() {
    run_with(
        2,
        12,
        Stop::Kill,
        "[state]\ncache_mb = 1\nwindow_payments = 64\ncheckpoint_interval_ms = 20\n\
         [wal]\nsegment_bytes = 1048576\n",
    );
}

/// SIGTERM under load on 3 shards: exit 0, and everything acknowledged is there after restart.
#[test]
fn sigterm_under_load_drains_and_exits_zero() {
    run(3, 4, Stop::Term);
}
