//! Idempotency-Key over real sockets: replay, 409 while in flight, 422 for another body (also
//! when the other body names a card on another shard), scoping per merchant, restarts.
mod common;
use common::*;
use std::sync::{Arc, Barrier};

const EXP: (u8, u16) = (12, 2030);

fn pan(n: u64) -> String {
    card_number(&format!("4111{n:011}"))
}

/// A gateway with one funded card account on every shard and one merchant.
struct World {
    s: Server,
    key: String,
    settle: u64,
    /// (account id, card number), index = shard.
    cards: Vec<(u64, String)>,
}

impl World {
    fn new(shards: u16, settle_shard: u16) -> World {
        let s = Server::start(shards);
        let cards = (0..shards)
            .map(|sh| {
                let id = account_on_shard(sh, shards, 1000 + 100 * sh as u64);
                create_account(&s, id, "EUR", "100.00");
                let number = pan(id);
                create_card(&s, &number, id);
                (id, number)
            })
            .collect();
        let settle = account_on_shard(settle_shard, shards, 9000);
        create_account(&s, settle, "EUR", "0.00");
        let key = create_merchant(&s, "SHOP1", settle);
        World {
            s,
            key,
            settle,
            cards,
        }
    }

    fn merchant(&self) -> Client {
        Client::with_key(self.s.http, &self.key)
    }

    fn pay(&self, amount: &str, shard: usize, capture: bool) -> String {
        payment_json(amount, "EUR", &self.cards[shard].1, EXP, capture, "idem")
    }

    fn held(&self, shard: usize) -> String {
        balance_held(&self.s, self.cards[shard].0).1
    }

    fn balance(&self, shard: usize) -> String {
        balance_held(&self.s, self.cards[shard].0).0
    }
}

fn assert_replay(first: &Resp, again: &Resp) {
    assert_eq!(again.status, first.status, "{}", again.body);
    assert_eq!(again.body, first.body, "the replay answers the stored body");
    assert_eq!(again.header("Idempotent-Replayed"), Some("true"));
    assert_eq!(first.header("Idempotent-Replayed"), None);
}

fn assert_reused(r: &Resp) {
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["error"]["type"], "idempotency_error", "{}", r.body);
    assert_eq!(
        r.body["error"]["code"], "idempotency_key_reused",
        "{}",
        r.body
    );
    assert_eq!(r.body["error"]["param"], "Idempotency-Key", "{}", r.body);
    assert_eq!(r.header("Idempotent-Replayed"), None);
}

#[test]
fn same_key_same_body_replays_the_payment_with_one_hold() {
    let w = World::new(2, 1);
    let body = w.pay("25.00", 0, false);
    let first = w.merchant().post_idem("/v1/payments", &body, "order-1");
    assert_eq!(first.status, 201, "{}", first.body);
    // The same connection, new connections, many times: one payment, one hold.
    let mut m = w.merchant();
    for _ in 0..5 {
        assert_replay(&first, &m.post_idem("/v1/payments", &body, "order-1"));
        assert_replay(
            &first,
            &w.merchant().post_idem("/v1/payments", &body, "order-1"),
        );
    }
    assert_eq!(w.held(0), "25.00");
    assert_eq!(w.held(1), "0.00");
    let ledger = w.s.ledger();
    let payments: u64 = ledger["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["payments"].as_u64().unwrap())
        .sum();
    assert_eq!(payments, 1, "{ledger}");

    // Another key is another payment.
    let other = m.post_idem("/v1/payments", &body, "order-2");
    assert_eq!(other.status, 201);
    assert_ne!(other.body["id"], first.body["id"]);
    assert_eq!(w.held(0), "50.00");
}

#[test]
fn a_declined_payment_replays_its_decline() {
    let w = World::new(2, 0);
    let body = w.pay("100.01", 1, false);
    let first = w.merchant().post_idem("/v1/payments", &body, "too-much");
    assert_eq!(first.status, 402, "{}", first.body);
    assert_eq!(first.body["error"]["decline_code"], "insufficient_funds");
    let again = w.merchant().post_idem("/v1/payments", &body, "too-much");
    assert_replay(&first, &again);
    assert_eq!(again.body["payment"]["id"], first.body["payment"]["id"]);
    assert_eq!(w.held(1), "0.00");
    assert_eq!(w.balance(1), "100.00");
}

#[test]
fn same_key_with_another_body_is_refused() {
    let w = World::new(2, 1);
    let mut m = w.merchant();
    let body = w.pay("25.00", 0, false);
    let first = m.post_idem("/v1/payments", &body, "k");
    assert_eq!(first.status, 201, "{}", first.body);
    for other in [
        w.pay("25.01", 0, false),
        w.pay("25.00", 0, true),
        payment_json("25.00", "EUR", &w.cards[0].1, EXP, false, "other-ref"),
        payment_json("25.00", "USD", &w.cards[0].1, EXP, false, "idem"),
        // Same JSON, other spacing: a different body.
        body.replace(',', ", "),
    ] {
        assert_reused(&m.post_idem("/v1/payments", &other, "k"));
    }
    assert_eq!(w.held(0), "25.00");
    // The key still replays its own body afterwards.
    assert_replay(&first, &m.post_idem("/v1/payments", &body, "k"));
    // The same key on another path is another request.
    let id = first.body["id"].as_str().unwrap();
    assert_reused(&m.post_idem(&format!("/v1/payments/{id}/capture"), "", "k"));
    let (_, p) = m.get(&format!("/v1/payments/{id}"));
    assert_eq!(p["status"], "authorized");
}

/// The key's record and the second body's card live on different shards: still 422, and no
/// hold anywhere else.
#[test]
fn same_key_with_a_card_on_another_shard_is_refused() {
    let w = World::new(4, 2);
    let mut m = w.merchant();
    let mut expected_held = [0u32; 4];
    for i in 0..8usize {
        let (a, b) = (i % 4, (i + 1 + i / 4) % 4);
        assert_ne!(a, b);
        let key = format!("cross-{i}");
        let first = m.post_idem("/v1/payments", &w.pay("5.00", a, false), &key);
        assert_eq!(first.status, 201, "{}", first.body);
        expected_held[a] += 5;
        assert_reused(&m.post_idem("/v1/payments", &w.pay("5.00", b, false), &key));
        assert_replay(
            &first,
            &m.post_idem("/v1/payments", &w.pay("5.00", a, false), &key),
        );
    }
    for (shard, held) in expected_held.iter().enumerate() {
        assert_eq!(w.held(shard), format!("{held}.00"), "shard {shard}");
    }
    assert_conservation(&w.s);
}

#[test]
fn replay_survives_a_restart() {
    let mut w = World::new(4, 3);
    let mut firsts = Vec::new();
    for i in 0..8usize {
        let key = format!("restart-{i}");
        let body = w.pay("3.00", i % 4, i % 2 == 0);
        let r = w.merchant().post_idem("/v1/payments", &body, &key);
        assert_eq!(r.status, 201, "{}", r.body);
        firsts.push((key, body, r));
    }
    // A capture and a refund with keys too.
    let mut m = w.merchant();
    let authorized = firsts[1].2.body["id"].as_str().unwrap().to_string();
    let capture_path = format!("/v1/payments/{authorized}/capture");
    let capture = m.post_idem(&capture_path, r#"{"amount":"2.00"}"#, "cap-1");
    assert_eq!(capture.status, 200, "{}", capture.body);
    let sold = firsts[0].2.body["id"].as_str().unwrap().to_string();
    wait_balance(&w.s, w.settle, "14.00");
    let refund_path = format!("/v1/payments/{sold}/refunds");
    let refund = m.post_idem(&refund_path, r#"{"amount":"1.00"}"#, "ref-1");
    assert_eq!(refund.status, 200, "{}", refund.body);
    wait_settled(&w.s);
    let before: Vec<(String, String)> =
        (0..4).map(|sh| balance_held(&w.s, w.cards[sh].0)).collect();
    let settle_before = balance_held(&w.s, w.settle);

    for _ in 0..2 {
        w.s.restart();
        let mut m = w.merchant();
        for (key, body, first) in &firsts {
            assert_replay(first, &m.post_idem("/v1/payments", body, key));
            assert_reused(&m.post_idem("/v1/payments", &body.replace("3.00", "3.01"), key));
        }
        assert_replay(
            &capture,
            &m.post_idem(&capture_path, r#"{"amount":"2.00"}"#, "cap-1"),
        );
        assert_replay(
            &refund,
            &m.post_idem(&refund_path, r#"{"amount":"1.00"}"#, "ref-1"),
        );
        assert_reused(&m.post_idem(&refund_path, r#"{"amount":"0.50"}"#, "ref-1"));
        let after: Vec<(String, String)> =
            (0..4).map(|sh| balance_held(&w.s, w.cards[sh].0)).collect();
        assert_eq!(after, before, "replays after a restart moved money");
        assert_eq!(balance_held(&w.s, w.settle), settle_before);
        assert_conservation(&w.s);
    }
    // A new key after the restarts is a new payment.
    let fresh = w
        .merchant()
        .post_idem("/v1/payments", &firsts[0].1, "after-restart");
    assert_eq!(fresh.status, 201, "{}", fresh.body);
    assert_eq!(fresh.header("Idempotent-Replayed"), None);
    assert_ne!(fresh.body["id"], firsts[0].2.body["id"]);
}

/// Many connections send the same key at once: one payment, one hold; the others are told
/// the key is in use (409) or get the replay.
#[test]
fn concurrent_requests_with_one_key_make_one_payment() {
    const THREADS: usize = 12;
    let w = World::new(2, 0);
    for round in 0..5usize {
        let shard = round % 2;
        let body = w.pay("1.00", shard, false);
        let key = format!("race-{round}");
        let barrier = Arc::new(Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let mut c = w.merchant();
                let (barrier, body, key) = (barrier.clone(), body.clone(), key.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    c.post_idem("/v1/payments", &body, &key)
                })
            })
            .collect();
        let results: Vec<Resp> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let originals: Vec<&Resp> = results
            .iter()
            .filter(|r| r.status == 201 && r.header("Idempotent-Replayed").is_none())
            .collect();
        assert_eq!(originals.len(), 1, "round {round}: {results:?}");
        let id = &originals[0].body["id"];
        for r in &results {
            match r.status {
                201 => assert_eq!(&r.body["id"], id, "round {round}"),
                409 => {
                    assert_eq!(
                        r.body["error"]["code"], "idempotency_key_in_use",
                        "{}",
                        r.body
                    );
                    assert_eq!(r.body["error"]["param"], "Idempotency-Key", "{}", r.body);
                }
                other => panic!("round {round}: unexpected {other}: {}", r.body),
            }
        }
        // Once it is done, every retry replays.
        assert_replay(
            originals[0],
            &w.merchant().post_idem("/v1/payments", &body, &key),
        );
    }
    assert_eq!(w.held(0), "3.00");
    assert_eq!(w.held(1), "2.00");
}

/// The same key at once with bodies that name cards on different shards: one hold in all.
#[test]
fn concurrent_requests_with_one_key_and_cards_on_two_shards_make_one_hold() {
    const THREADS: usize = 8;
    let w = World::new(2, 1);
    for round in 0..5usize {
        let key = format!("split-{round}");
        let barrier = Arc::new(Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let mut c = w.merchant();
                let (barrier, body, key) =
                    (barrier.clone(), w.pay("1.00", t % 2, false), key.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    (t % 2, c.post_idem("/v1/payments", &body, &key))
                })
            })
            .collect();
        let results: Vec<(usize, Resp)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let winners: Vec<&(usize, Resp)> = results
            .iter()
            .filter(|(_, r)| r.status == 201 && r.header("Idempotent-Replayed").is_none())
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let winner_shard = winners[0].0;
        for (shard, r) in &results {
            match r.status {
                201 => assert_eq!(*shard, winner_shard, "round {round}: {}", r.body),
                409 => assert_eq!(*shard, winner_shard, "round {round}: {}", r.body),
                422 => assert_ne!(*shard, winner_shard, "round {round}: {}", r.body),
                other => panic!("round {round}: unexpected {other}: {}", r.body),
            }
        }
    }
    let held: f64 = (0..2).map(|sh| w.held(sh).parse::<f64>().unwrap()).sum();
    assert_eq!(held, 5.0, "one hold per key");
}

#[test]
fn idempotency_keys_are_checked() {
    let w = World::new(2, 0);
    let mut m = w.merchant();
    let body = w.pay("1.00", 0, false);
    let longest = "k".repeat(255);
    let ok = m.post_idem("/v1/payments", &body, &longest);
    assert_eq!(ok.status, 201, "a 255-character key is fine: {}", ok.body);
    for bad in ["k".repeat(256), "k".repeat(1000), "two words".to_string()] {
        let r = m.post_idem("/v1/payments", &body, &bad);
        assert_eq!(r.status, 400, "{} chars: {}", bad.len(), r.body);
        assert_eq!(
            r.body["error"]["code"], "idempotency_key_invalid",
            "{}",
            r.body
        );
        assert_eq!(r.body["error"]["param"], "Idempotency-Key", "{}", r.body);
    }
    assert_eq!(w.held(0), "1.00", "refused keys created nothing");
    // The connection is still good.
    assert_replay(&ok, &m.post_idem("/v1/payments", &body, &longest));
}

#[test]
fn keys_are_scoped_to_their_merchant() {
    let w = World::new(2, 0);
    let other_settle = account_on_shard(1, 2, 9500);
    create_account(&w.s, other_settle, "EUR", "0.00");
    let other_key = create_merchant(&w.s, "SHOP2", other_settle);
    let body = w.pay("4.00", 1, false);
    let a = w.merchant().post_idem("/v1/payments", &body, "shared");
    let b = Client::with_key(w.s.http, &other_key).post_idem("/v1/payments", &body, "shared");
    assert_eq!((a.status, b.status), (201, 201), "{} {}", a.body, b.body);
    assert_eq!(b.header("Idempotent-Replayed"), None);
    assert_ne!(a.body["id"], b.body["id"]);
    assert_eq!(a.body["merchant_id"], "SHOP1");
    assert_eq!(b.body["merchant_id"], "SHOP2");
    assert_eq!(w.held(1), "8.00");
    assert_replay(&a, &w.merchant().post_idem("/v1/payments", &body, "shared"));
    assert_replay(
        &b,
        &Client::with_key(w.s.http, &other_key).post_idem("/v1/payments", &body, "shared"),
    );
    // A key of one merchant with another body does not bother the other merchant's key.
    let other_body = w.pay("4.50", 1, false);
    let c = Client::with_key(w.s.http, &other_key).post_idem("/v1/payments", &other_body, "mine");
    assert_eq!(c.status, 201, "{}", c.body);
    let d = w.merchant().post_idem("/v1/payments", &body, "mine");
    assert_eq!(d.status, 201, "{}", d.body);
    assert_eq!(w.held(1), "16.50");

    // Merchant id and key do not run together: SHOP1 + "2x" is not SHOP12 + "x".
    let key12 = create_merchant(&w.s, "SHOP12", other_settle);
    let e = w.merchant().post_idem("/v1/payments", &body, "2x");
    let f = Client::with_key(w.s.http, &key12).post_idem("/v1/payments", &body, "x");
    assert_eq!((e.status, f.status), (201, 201), "{} {}", e.body, f.body);
    assert_eq!(f.header("Idempotent-Replayed"), None);
    assert_ne!(e.body["id"], f.body["id"]);
    assert_eq!(w.held(1), "24.50");
}

/// Capture, void and refund with keys, settlement on the card's shard and on another.
fn capture_refund_void_replay(settle_shard: u16) {
    let w = World::new(2, settle_shard);
    let mut m = w.merchant();
    let p = m.post_idem("/v1/payments", &w.pay("30.00", 0, false), "auth");
    assert_eq!(p.status, 201, "{}", p.body);
    let id = p.body["id"].as_str().unwrap().to_string();

    let capture = format!("/v1/payments/{id}/capture");
    let first = m.post_idem(&capture, r#"{"amount":"20.00"}"#, "cap");
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["status"], "partially_captured");
    for _ in 0..3 {
        assert_replay(
            &first,
            &w.merchant()
                .post_idem(&capture, r#"{"amount":"20.00"}"#, "cap"),
        );
    }
    assert_reused(&m.post_idem(&capture, r#"{"amount":"10.00"}"#, "cap"));
    assert_eq!(
        balance_held(&w.s, w.cards[0].0),
        ("80.00".into(), "0.00".into())
    );
    wait_balance(&w.s, w.settle, "20.00");

    let refunds = format!("/v1/payments/{id}/refunds");
    let r1 = m.post_idem(&refunds, r#"{"amount":"5.00"}"#, "ref-1");
    assert_eq!(r1.status, 200, "{}", r1.body);
    for _ in 0..3 {
        assert_replay(
            &r1,
            &w.merchant()
                .post_idem(&refunds, r#"{"amount":"5.00"}"#, "ref-1"),
        );
    }
    // Another key is another refund.
    let r2 = m.post_idem(&refunds, r#"{"amount":"5.00"}"#, "ref-2");
    assert_eq!(r2.status, 200, "{}", r2.body);
    assert_eq!(r2.body["amount_refunded"], "10.00");
    assert_replay(&r1, &m.post_idem(&refunds, r#"{"amount":"5.00"}"#, "ref-1"));
    wait_balance(&w.s, w.cards[0].0, "90.00");
    assert_eq!(balance_held(&w.s, w.settle).0, "10.00");
    wait_payment(&mut m, &id, |p| p["amount_refunded"] == "10.00");

    // Void with a key.
    let v = m.post_idem("/v1/payments", &w.pay("7.00", 1, false), "auth-2");
    let vid = v.body["id"].as_str().unwrap().to_string();
    let void = format!("/v1/payments/{vid}/void");
    let first = m.post_idem(&void, "", "void");
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["status"], "voided");
    assert_replay(&first, &w.merchant().post_idem(&void, "", "void"));
    assert_eq!(w.held(1), "0.00");
    wait_settled(&w.s);
}

#[test]
fn capture_refund_and_void_replay_with_settlement_on_the_same_shard() {
    capture_refund_void_replay(0);
}

#[test]
fn capture_refund_and_void_replay_with_settlement_on_another_shard() {
    capture_refund_void_replay(1);
}
