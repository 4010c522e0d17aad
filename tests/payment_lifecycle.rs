//! The payment lifecycle over real sockets: authorize, partial capture, several partial refunds,
//! void, sale, concurrent refunds, cross-shard settlement, transfers, and restarts.
mod common;
use common::*;
use serde_json::Value;
use std::sync::{Arc, Barrier};

const EXP: (u8, u16) = (12, 2030);

/// A Luhn-valid card number unique to `n`.
fn pan(n: u64) -> String {
    card_number(&format!("4000{n:011}"))
}

/// A funded account on `shard` (id ≥ `from`) with one card; returns (account id, card number).
fn card_on(s: &Server, shard: u16, from: u64, balance: &str) -> (u64, String) {
    let id = account_on_shard(shard, s.shards, from);
    create_account(s, id, "EUR", balance);
    let number = pan(id);
    let card = create_card(s, &number, id);
    assert_eq!(card["account_id"], id);
    assert_eq!(card["last4"], &number[12..]);
    assert_eq!(card["bin"], &number[..6]);
    (id, number)
}

/// A merchant settling into a new empty account on `shard` (id ≥ `from`); returns (key, account).
fn shop_on(s: &Server, name: &str, shard: u16, from: u64) -> (String, u64) {
    let id = account_on_shard(shard, s.shards, from);
    create_account(s, id, "EUR", "0.00");
    (create_merchant(s, name, id), id)
}

/// POST that must answer `status`; returns the body.
fn post_expect(m: &mut Client, path: &str, body: &str, status: u16) -> Value {
    let (got, v) = m.post(path, body);
    assert_eq!(got, status, "POST {path} {body}: {v}");
    v
}

fn authorize(m: &mut Client, amount: &str, number: &str, capture: bool) -> Value {
    let body = payment_json(amount, "EUR", number, EXP, capture, "order-1");
    post_expect(m, "/v1/payments", &body, 201)
}

fn id_of(p: &Value) -> String {
    p["id"].as_str().expect("payment id").to_string()
}

fn amount_body(amount: Option<&str>) -> String {
    amount.map_or(String::new(), |a| format!(r#"{{"amount":"{a}"}}"#))
}

fn assert_account(s: &Server, id: u64, balance: &str, held: &str, available: &str) {
    let a = get_account(s, id);
    assert_eq!(a["balance"], balance, "{a}");
    assert_eq!(a["held"], held, "{a}");
    assert_eq!(a["available"], available, "{a}");
}

/// Authorize 40 → capture 30 (the other 10 is released) → refund 5 → refund 10 → refund the
/// rest; exact balances of both accounts after every step.
fn full_lifecycle(shards: u16, card_shard: u16, shop_shard: u16) {
    let s = Server::start(shards);
    let (acct, number) = card_on(&s, card_shard, 1000, "100.00");
    let (key, settle) = shop_on(&s, "SHOP1", shop_shard, 5000);
    let mut m = Client::with_key(s.http, &key);

    let p = authorize(&mut m, "40.00", &number, false);
    let id = id_of(&p);
    assert!(id.starts_with(&format!("pay_{card_shard}_")), "{p}");
    assert_eq!(p["status"], "authorized");
    assert_eq!(p["amount"], "40.00");
    assert_eq!(p["amount_captured"], "0.00");
    assert_eq!(p["amount_refunded"], "0.00");
    assert_eq!(p["currency"], "EUR");
    assert_eq!(p["card"]["bin"], &number[..6]);
    assert_eq!(p["card"]["last4"], &number[12..]);
    assert_eq!(p["response_code"], "00");
    assert_eq!(p["reference"], "order-1");
    assert!(p["approval_code"].as_str().is_some_and(|c| !c.is_empty()));
    assert!(p["created_at"].as_u64().is_some_and(|t| t > 1_600_000_000));
    assert!(!p.to_string().contains(&number), "the PAN is never echoed");
    assert_account(&s, acct, "100.00", "40.00", "60.00");
    assert_account(&s, settle, "0.00", "0.00", "0.00");
    let (status, read) = m.get(&format!("/v1/payments/{id}"));
    assert_eq!((status, &read), (200, &p));

    let capture = format!("/v1/payments/{id}/capture");
    let c = post_expect(&mut m, &capture, &amount_body(Some("30.00")), 200);
    assert_eq!(c["status"], "partially_captured");
    assert_eq!(c["amount"], "40.00");
    assert_eq!(c["amount_captured"], "30.00");
    assert_account(&s, acct, "70.00", "0.00", "70.00");
    wait_balance(&s, settle, "30.00");
    assert_account(&s, settle, "30.00", "0.00", "30.00");

    let refunds = format!("/v1/payments/{id}/refunds");
    let r = post_expect(&mut m, &refunds, &amount_body(Some("5.00")), 200);
    assert_eq!(r["status"], "partially_refunded");
    assert_eq!(r["amount_refunded"], "5.00");
    assert_eq!(r["amount_captured"], "30.00");
    assert_eq!(wait_balance(&s, acct, "75.00")["held"], "0.00");
    assert_account(&s, settle, "25.00", "0.00", "25.00");
    wait_payment(&mut m, &id, |p| p["amount_refunded"] == "5.00");

    let r = post_expect(&mut m, &refunds, &amount_body(Some("10.00")), 200);
    assert_eq!(r["status"], "partially_refunded");
    assert_eq!(r["amount_refunded"], "15.00");
    wait_balance(&s, acct, "85.00");
    assert_account(&s, settle, "15.00", "0.00", "15.00");
    wait_payment(&mut m, &id, |p| p["amount_refunded"] == "15.00");

    // No amount: the rest of what was captured.
    let r = post_expect(&mut m, &refunds, "", 200);
    assert_eq!(r["status"], "refunded");
    assert_eq!(r["amount_refunded"], "30.00");
    wait_balance(&s, acct, "100.00");
    assert_account(&s, acct, "100.00", "0.00", "100.00");
    assert_account(&s, settle, "0.00", "0.00", "0.00");
    let done = wait_payment(&mut m, &id, |p| p["status"] == "refunded");
    assert_eq!(done["amount_refunded"], "30.00");
    assert_eq!(done["amount_captured"], "30.00");

    // Nothing is left to refund, capture or void.
    let (status, e) = m.post(&refunds, &amount_body(Some("0.01")));
    assert_eq!(status, 422, "{e}");
    let (status, e) = m.post(&capture, "");
    assert_eq!(
        (status, &e["error"]["code"]),
        (422, &"invalid_state".into())
    );
    let (status, e) = m.post(&format!("/v1/payments/{id}/void"), "");
    assert_eq!(
        (status, &e["error"]["code"]),
        (422, &"invalid_state".into())
    );
    assert_account(&s, acct, "100.00", "0.00", "100.00");
    assert_account(&s, settle, "0.00", "0.00", "0.00");
    wait_settled(&s);
}

#[test]
fn full_lifecycle_with_settlement_on_the_same_shard() {
    full_lifecycle(2, 0, 0);
}

#[test]
fn full_lifecycle_with_settlement_on_another_shard() {
    full_lifecycle(2, 0, 1);
}

#[test]
fn full_lifecycle_on_four_shards_cross_shard() {
    full_lifecycle(4, 3, 1);
}

#[test]
fn void_releases_the_hold_and_a_voided_payment_cannot_be_captured() {
    let s = Server::start(2);
    let (acct, number) = card_on(&s, 1, 1000, "100.00");
    let (key, settle) = shop_on(&s, "SHOP1", 0, 5000);
    let mut m = Client::with_key(s.http, &key);

    let p = authorize(&mut m, "30.00", &number, false);
    let id = id_of(&p);
    let keep = authorize(&mut m, "20.00", &number, false);
    assert_account(&s, acct, "100.00", "50.00", "50.00");

    let v = post_expect(&mut m, &format!("/v1/payments/{id}/void"), "", 200);
    assert_eq!(v["status"], "voided");
    assert_eq!(v["amount_captured"], "0.00");
    assert_account(&s, acct, "100.00", "20.00", "80.00");
    let (_, read) = m.get(&format!("/v1/payments/{id}"));
    assert_eq!(read["status"], "voided");

    for (path, body) in [
        ("capture", ""),
        ("capture", r#"{"amount":"1.00"}"#),
        ("void", ""),
        ("refunds", ""),
    ] {
        let (status, e) = m.post(&format!("/v1/payments/{id}/{path}"), body);
        assert_eq!(status, 422, "{path} of a voided payment: {e}");
        assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
    }
    let (status, e) = m.post(&format!("/v1/payments/{id}/capture"), "");
    assert_eq!(e["error"]["code"], "invalid_state", "{status} {e}");
    assert_account(&s, acct, "100.00", "20.00", "80.00");
    assert_account(&s, settle, "0.00", "0.00", "0.00");

    // The other hold is untouched and still capturable in full.
    let c = post_expect(
        &mut m,
        &format!("/v1/payments/{}/capture", id_of(&keep)),
        "",
        200,
    );
    assert_eq!(c["status"], "captured");
    assert_eq!(c["amount_captured"], "20.00");
    assert_account(&s, acct, "80.00", "0.00", "80.00");
    wait_balance(&s, settle, "20.00");
    wait_settled(&s);
}

#[test]
fn a_sale_captures_at_once() {
    let s = Server::start(2);
    let (acct, number) = card_on(&s, 0, 1000, "100.00");
    let (key, settle) = shop_on(&s, "SHOP1", 1, 5000);
    let mut m = Client::with_key(s.http, &key);

    let p = authorize(&mut m, "12.34", &number, true);
    assert_eq!(p["status"], "captured");
    assert_eq!(p["amount"], "12.34");
    assert_eq!(p["amount_captured"], "12.34");
    assert_eq!(p["response_code"], "00");
    assert_account(&s, acct, "87.66", "0.00", "87.66");
    wait_balance(&s, settle, "12.34");

    let id = id_of(&p);
    let (status, e) = m.post(&format!("/v1/payments/{id}/capture"), "");
    assert_eq!(
        (status, &e["error"]["code"]),
        (422, &"invalid_state".into())
    );
    let (status, e) = m.post(&format!("/v1/payments/{id}/void"), "");
    assert_eq!(
        (status, &e["error"]["code"]),
        (422, &"invalid_state".into())
    );

    let r = post_expect(&mut m, &format!("/v1/payments/{id}/refunds"), "", 200);
    assert_eq!(r["status"], "refunded");
    assert_eq!(r["amount_refunded"], "12.34");
    wait_balance(&s, acct, "100.00");
    assert_account(&s, settle, "0.00", "0.00", "0.00");
    wait_settled(&s);
}

#[test]
fn capture_and_refund_amounts_are_bounded() {
    let s = Server::start(2);
    let (acct, number) = card_on(&s, 1, 1000, "100.00");
    let (key, settle) = shop_on(&s, "SHOP1", 1, 5000);
    let mut m = Client::with_key(s.http, &key);

    let id = id_of(&authorize(&mut m, "20.00", &number, false));
    let capture = format!("/v1/payments/{id}/capture");
    for (amount, code) in [
        ("20.01", "amount_too_large"),
        ("0.00", "amount_not_positive"),
        ("-1.00", "amount_not_positive"),
        ("1.001", "amount_too_precise"),
    ] {
        let (status, e) = m.post(&capture, &amount_body(Some(amount)));
        assert_eq!(status, 422, "capture {amount}: {e}");
        assert_eq!(e["error"]["code"], code, "capture {amount}: {e}");
        assert_eq!(e["error"]["param"], "amount", "capture {amount}: {e}");
    }
    assert_account(&s, acct, "100.00", "20.00", "80.00");
    post_expect(&mut m, &capture, &amount_body(Some("20.00")), 200);
    assert_account(&s, acct, "80.00", "0.00", "80.00");

    let refunds = format!("/v1/payments/{id}/refunds");
    post_expect(&mut m, &refunds, &amount_body(Some("15.00")), 200);
    let (status, e) = m.post(&refunds, &amount_body(Some("5.01")));
    assert_eq!(status, 422, "refund over the remaining 5.00: {e}");
    assert_eq!(e["error"]["code"], "amount_too_large", "{e}");
    assert_account(&s, acct, "95.00", "0.00", "95.00");
    assert_account(&s, settle, "5.00", "0.00", "5.00");
    let p = post_expect(&mut m, &refunds, &amount_body(Some("5.00")), 200);
    assert_eq!(p["status"], "refunded");
    assert_account(&s, acct, "100.00", "0.00", "100.00");
    assert_account(&s, settle, "0.00", "0.00", "0.00");
    assert_conservation(&s);
}

/// Two refunds of one payment race from two connections; together they exceed what was
/// captured, so exactly one may succeed, in every round.
fn concurrent_refunds(shards: u16, card_shard: u16, shop_shard: u16) {
    const ROUNDS: usize = 20;
    let s = Server::start(shards);
    let (acct, number) = card_on(&s, card_shard, 1000, "1000.00");
    let (key, settle) = shop_on(&s, "SHOP1", shop_shard, 5000);
    let mut m = Client::with_key(s.http, &key);
    let ids: Vec<String> = (0..ROUNDS)
        .map(|_| id_of(&authorize(&mut m, "10.00", &number, true)))
        .collect();
    wait_balance(&s, settle, "200.00");
    assert_account(&s, acct, "800.00", "0.00", "800.00");

    let pairs: [(Option<&str>, Option<&str>); 5] = [
        (Some("6.00"), Some("6.00")),
        (Some("7.00"), Some("5.00")),
        (Some("10.00"), Some("0.01")),
        (None, None),
        (None, Some("10.00")),
    ];
    let mut refunded_cents = 0i64;
    for (round, id) in ids.iter().enumerate() {
        let (a, b) = pairs[round % pairs.len()];
        let barrier = Arc::new(Barrier::new(2));
        let threads: Vec<_> = [a, b]
            .into_iter()
            .map(|amount| {
                let mut c = Client::with_key(s.http, &key);
                let (barrier, path) = (barrier.clone(), format!("/v1/payments/{id}/refunds"));
                let body = amount_body(amount);
                std::thread::spawn(move || {
                    barrier.wait();
                    c.post(&path, &body)
                })
            })
            .collect();
        let results: Vec<(u16, Value)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let winners: Vec<_> = results.iter().filter(|(st, _)| *st == 200).collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round} ({a:?}, {b:?}): {results:?}"
        );
        for (status, v) in &results {
            if *status != 200 {
                assert_eq!(*status, 422, "round {round}: {v}");
                let code = v["error"]["code"].as_str().unwrap();
                assert!(
                    code == "amount_too_large" || code == "invalid_state",
                    "round {round}: {v}"
                );
            }
        }
        let won = winners[0].1["amount_refunded"]
            .as_str()
            .unwrap()
            .to_string();
        let p = wait_payment(&mut m, id, |p| p["amount_refunded"] == won.as_str());
        let cents = (won.parse::<f64>().unwrap() * 100.0).round() as i64;
        assert!(
            cents <= 1000,
            "round {round}: refunded more than captured: {p}"
        );
        refunded_cents += cents;
    }
    // Σ refunded ≤ captured everywhere, and the money says so too.
    let money = |c: i64| format!("{}.{:02}", c / 100, c % 100);
    wait_balance(&s, acct, &money(80_000 + refunded_cents));
    assert_account(
        &s,
        settle,
        &money(20_000 - refunded_cents),
        "0.00",
        &money(20_000 - refunded_cents),
    );
    for id in &ids {
        let (_, p) = m.get(&format!("/v1/payments/{id}"));
        let refunded: f64 = p["amount_refunded"].as_str().unwrap().parse().unwrap();
        assert!(refunded > 0.0 && refunded <= 10.0, "{p}");
    }
    wait_settled(&s);
}

#[test]
fn concurrent_refunds_exceeding_captured_same_shard() {
    concurrent_refunds(2, 1, 1);
}

#[test]
fn concurrent_refunds_exceeding_captured_cross_shard() {
    concurrent_refunds(2, 1, 0);
}

#[test]
fn concurrent_refunds_exceeding_captured_cross_shard_on_four_shards() {
    concurrent_refunds(4, 0, 3);
}

/// Every (card shard, settlement shard) pair of 4 shards: capture and refund move the money
/// exactly, and nothing stays in flight.
#[test]
fn cross_shard_capture_and_refund_conserve_money_on_four_shards() {
    let s = Server::start(4);
    let cards: Vec<(u64, String)> = (0..4)
        .map(|sh| card_on(&s, sh, 1000 + 100 * sh as u64, "1000.00"))
        .collect();
    let shops: Vec<(String, u64)> = (0..4)
        .map(|sh| shop_on(&s, &format!("SHOP{sh}"), sh, 5000 + 100 * sh as u64))
        .collect();
    let mut payments = Vec::new();
    for (key, _) in &shops {
        let mut m = Client::with_key(s.http, key);
        for (_, number) in &cards {
            let id = id_of(&authorize(&mut m, "50.00", number, false));
            let c = post_expect(
                &mut m,
                &format!("/v1/payments/{id}/capture"),
                &amount_body(Some("40.00")),
                200,
            );
            assert_eq!(c["status"], "partially_captured");
            payments.push((key.clone(), id));
        }
    }
    for (acct, _) in &cards {
        assert_account(&s, *acct, "840.00", "0.00", "840.00");
    }
    for (_, settle) in &shops {
        wait_balance(&s, *settle, "160.00");
    }
    for (key, id) in &payments {
        let mut m = Client::with_key(s.http, key);
        let r = post_expect(
            &mut m,
            &format!("/v1/payments/{id}/refunds"),
            &amount_body(Some("15.00")),
            200,
        );
        assert_eq!(r["amount_refunded"], "15.00");
        assert_eq!(r["status"], "partially_refunded");
    }
    for (acct, _) in &cards {
        wait_balance(&s, *acct, "900.00");
    }
    for (_, settle) in &shops {
        assert_account(&s, *settle, "100.00", "0.00", "100.00");
    }
    for (key, id) in &payments {
        let mut m = Client::with_key(s.http, key);
        let p = wait_payment(&mut m, id, |p| p["amount_refunded"] == "15.00");
        assert_eq!(p["status"], "partially_refunded");
        assert_eq!(p["amount_captured"], "40.00");
    }
    wait_settled(&s);
    let ledger = s.ledger();
    let eur = ledger["currencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["currency"] == "EUR")
        .unwrap();
    // 4 cards at 1000.00, 4 settlement accounts at 0.00: the treasury funded exactly that.
    assert_eq!(eur["accounts"], "4000.00", "{ledger}");
    assert_eq!(eur["treasury"], "-4000.00", "{ledger}");
}

/// A merchant that captures and refunds at once must not depend on how fast the capture's
/// credit crosses to the settlement shard.
#[test]
fn refund_right_after_a_cross_shard_capture() {
    let s = Server::start(2);
    let (acct, number) = card_on(&s, 0, 1000, "1000.00");
    let (key, settle) = shop_on(&s, "SHOP1", 1, 5000);
    let mut m = Client::with_key(s.http, &key);
    for round in 0..20 {
        let p = authorize(&mut m, "10.00", &number, true);
        let (status, r) = m.post(&format!("/v1/payments/{}/refunds", id_of(&p)), "");
        assert_eq!(status, 200, "round {round}: {r}");
        assert_eq!(r["status"], "refunded", "round {round}: {r}");
    }
    wait_balance(&s, acct, "1000.00");
    assert_account(&s, settle, "0.00", "0.00", "0.00");
    wait_settled(&s);
}

#[test]
fn another_merchants_payment_is_not_found() {
    let s = Server::start(2);
    let (acct, number) = card_on(&s, 0, 1000, "100.00");
    let (key_a, settle_a) = shop_on(&s, "SHOPA", 0, 5000);
    let (key_b, _) = shop_on(&s, "SHOPB", 1, 6000);
    let mut a = Client::with_key(s.http, &key_a);
    let mut b = Client::with_key(s.http, &key_b);
    let id = id_of(&authorize(&mut a, "10.00", &number, false));
    let sale = id_of(&authorize(&mut a, "5.00", &number, true));

    let not_found = |r: (u16, Value), what: &str| {
        assert_eq!(r.0, 404, "{what}: {}", r.1);
        assert_eq!(r.1["error"]["code"], "resource_missing", "{what}: {}", r.1);
        assert!(
            !r.1.to_string().contains("SHOPA"),
            "{what}: leaks the owner: {}",
            r.1
        );
    };
    not_found(b.get(&format!("/v1/payments/{id}")), "get");
    not_found(b.post(&format!("/v1/payments/{id}/capture"), ""), "capture");
    not_found(
        b.post(
            &format!("/v1/payments/{id}/capture"),
            r#"{"amount":"1.00"}"#,
        ),
        "capture with amount",
    );
    not_found(b.post(&format!("/v1/payments/{id}/void"), ""), "void");
    not_found(
        b.post(&format!("/v1/payments/{sale}/refunds"), ""),
        "refund",
    );
    not_found(
        b.post(
            &format!("/v1/payments/{sale}/refunds"),
            r#"{"amount":"1.00"}"#,
        ),
        "refund with amount",
    );
    // Ids that name no payment at all.
    for unknown in ["pay_0_999999", "pay_1_999999", "pay_7_1", "pay_65535_1"] {
        not_found(a.get(&format!("/v1/payments/{unknown}")), unknown);
        not_found(
            a.post(&format!("/v1/payments/{unknown}/capture"), ""),
            unknown,
        );
        not_found(a.post(&format!("/v1/payments/{unknown}/void"), ""), unknown);
        not_found(
            a.post(&format!("/v1/payments/{unknown}/refunds"), ""),
            unknown,
        );
    }

    // Nothing B tried changed anything: A still owns an untouched hold.
    assert_account(&s, acct, "95.00", "10.00", "85.00");
    let (_, p) = a.get(&format!("/v1/payments/{id}"));
    assert_eq!(p["status"], "authorized");
    post_expect(&mut a, &format!("/v1/payments/{id}/capture"), "", 200);
    assert_account(&s, acct, "85.00", "0.00", "85.00");
    wait_balance(&s, settle_a, "15.00");
    assert_conservation(&s);
}

#[test]
fn transfers_move_money_once_and_replay_by_id() {
    let s = Server::start(2);
    let a = account_on_shard(0, 2, 1000);
    let b = account_on_shard(0, 2, a + 1);
    let c = account_on_shard(1, 2, 1000);
    let usd = account_on_shard(1, 2, c + 1);
    create_account(&s, a, "EUR", "100.00");
    create_account(&s, b, "EUR", "0.00");
    create_account(&s, c, "EUR", "0.00");
    create_account(&s, usd, "USD", "0.00");
    let mut admin = s.admin();
    let transfer = |id: &str, from: u64, to: u64, amount: &str, currency: &str| {
        format!(
            r#"{{"id":"{id}","from":{from},"to":{to},"amount":"{amount}","currency":"{currency}"}}"#
        )
    };

    // Same shard.
    let body = transfer("t-1", a, b, "10.00", "EUR");
    let first = admin.request("POST", "/v1/transfers", Some(&body), &[]);
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(first.body["id"], "t-1");
    assert_eq!(first.body["amount"], "10.00");
    assert_eq!(first.body["from"], a);
    assert_eq!(first.body["to"], b);
    assert_eq!(first.header("Idempotent-Replayed"), None);
    assert_account(&s, a, "90.00", "0.00", "90.00");
    assert_account(&s, b, "10.00", "0.00", "10.00");

    // Cross shard.
    let cross = transfer("t-2", a, c, "25.00", "EUR");
    let r = admin.request("POST", "/v1/transfers", Some(&cross), &[]);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_account(&s, a, "65.00", "0.00", "65.00");
    wait_balance(&s, c, "25.00");

    // Replays answer the first result and move nothing, also on a new connection.
    for (body, first_body) in [(&body, &first.body), (&cross, &r.body)] {
        for mut client in [s.admin(), s.admin()] {
            let again = client.request("POST", "/v1/transfers", Some(body), &[]);
            assert_eq!(again.status, 201, "{}", again.body);
            assert_eq!(&again.body, first_body);
            assert_eq!(again.header("Idempotent-Replayed"), Some("true"));
        }
    }
    // The same id with another body is refused.
    let (status, e) = admin.post("/v1/transfers", &transfer("t-1", a, b, "11.00", "EUR"));
    assert_eq!(status, 422, "{e}");
    assert_eq!(e["error"]["code"], "idempotency_key_reused", "{e}");
    assert_account(&s, a, "65.00", "0.00", "65.00");
    assert_account(&s, b, "10.00", "0.00", "10.00");
    assert_account(&s, c, "25.00", "0.00", "25.00");

    // What a transfer may not do.
    let (status, e) = admin.post("/v1/transfers", &transfer("t-3", a, b, "65.01", "EUR"));
    assert_eq!(
        (status, &e["error"]["decline_code"]),
        (402, &"insufficient_funds".into())
    );
    let (status, e) = admin.post("/v1/transfers", &transfer("t-4", a, usd, "1.00", "EUR"));
    assert_eq!(status, 422, "currency mismatch: {e}");
    let (status, e) = admin.post("/v1/transfers", &transfer("t-5", a, 424242, "1.00", "EUR"));
    assert_eq!(status, 404, "unknown destination: {e}");
    let (status, e) = admin.post("/v1/transfers", &transfer("t-6", a, a, "1.00", "EUR"));
    assert_eq!(status, 422, "to itself: {e}");
    let (status, e) = admin.post("/v1/transfers", &transfer("t-7", a, b, "0.00", "EUR"));
    assert_eq!(
        (status, &e["error"]["code"]),
        (422, &"amount_not_positive".into())
    );
    assert_account(&s, a, "65.00", "0.00", "65.00");
    assert_account(&s, b, "10.00", "0.00", "10.00");
    assert_account(&s, c, "25.00", "0.00", "25.00");
    assert_account(&s, usd, "0.00", "0.00", "0.00");
    wait_settled(&s);
}

#[test]
fn a_restart_keeps_every_payment_account_and_key() {
    let mut s = Server::start(2);
    let (acct0, card0) = card_on(&s, 0, 1000, "500.00");
    let (acct1, card1) = card_on(&s, 1, 2000, "500.00");
    let (key, settle) = shop_on(&s, "SHOP1", 1, 5000);
    let mut m = Client::with_key(s.http, &key);

    let held = id_of(&authorize(&mut m, "11.00", &card0, false));
    let partial = id_of(&authorize(&mut m, "20.00", &card1, false));
    post_expect(
        &mut m,
        &format!("/v1/payments/{partial}/capture"),
        &amount_body(Some("12.00")),
        200,
    );
    let sale = id_of(&authorize(&mut m, "30.00", &card0, true));
    let voided = id_of(&authorize(&mut m, "7.00", &card1, false));
    post_expect(&mut m, &format!("/v1/payments/{voided}/void"), "", 200);
    wait_balance(&s, settle, "42.00");
    post_expect(
        &mut m,
        &format!("/v1/payments/{sale}/refunds"),
        &amount_body(Some("5.00")),
        200,
    );
    let declined = {
        let body = payment_json("9999.00", "EUR", &card1, EXP, false, "too-much");
        let (status, v) = m.post("/v1/payments", &body);
        assert_eq!(status, 402, "{v}");
        id_of(&v["payment"])
    };
    let transfer =
        format!(r#"{{"id":"t-r","from":{acct1},"to":{acct0},"amount":"1.00","currency":"EUR"}}"#);
    let (status, t) = s.admin().post("/v1/transfers", &transfer);
    assert_eq!(status, 201, "{t}");
    wait_balance(&s, acct0, "476.00");
    let ids = [&held, &partial, &sale, &voided, &declined];
    let wait_all = |m: &mut Client| {
        wait_payment(m, &sale, |p| p["amount_refunded"] == "5.00");
    };
    wait_all(&mut m);
    let snapshot = |s: &Server, m: &mut Client| -> Vec<Value> {
        let mut all: Vec<Value> = ids
            .iter()
            .map(|id| {
                let (status, p) = m.get(&format!("/v1/payments/{id}"));
                assert_eq!(status, 200, "{p}");
                p
            })
            .collect();
        all.extend([acct0, acct1, settle].map(|id| get_account(s, id)));
        all
    };
    let before = snapshot(&s, &mut m);
    assert_eq!(before[0]["status"], "authorized");
    assert_eq!(before[1]["status"], "partially_captured");
    assert_eq!(before[2]["status"], "partially_refunded");
    assert_eq!(before[3]["status"], "voided");
    assert_eq!(before[4]["status"], "declined");

    for round in 0..2 {
        s.restart();
        let mut m = Client::with_key(s.http, &key);
        assert_eq!(snapshot(&s, &mut m), before, "after restart {round}");
        assert_conservation(&s);
        let again = s
            .admin()
            .request("POST", "/v1/transfers", Some(&transfer), &[]);
        assert_eq!(again.status, 201);
        assert_eq!(again.body, t);
        assert_eq!(again.header("Idempotent-Replayed"), Some("true"));
    }

    // The state still works: the hold captures, the cards pay, the refund limit holds.
    let mut m = Client::with_key(s.http, &key);
    let c = post_expect(&mut m, &format!("/v1/payments/{held}/capture"), "", 200);
    assert_eq!(c["status"], "captured");
    assert_account(&s, acct0, "465.00", "0.00", "465.00");
    authorize(&mut m, "1.00", &card1, true);
    let (status, e) = m.post(
        &format!("/v1/payments/{sale}/refunds"),
        &amount_body(Some("25.01")),
    );
    assert_eq!(status, 422, "{e}");
    post_expect(
        &mut m,
        &format!("/v1/payments/{sale}/refunds"),
        &amount_body(Some("25.00")),
        200,
    );
    wait_settled(&s);
}
