//! Every decline reason over real sockets: 402 with the error object and the stored payment,
//! its ISO response code, and no change to any balance.
mod common;
use common::*;
use serde_json::Value;

const EXP: (u8, u16) = (12, 2030);

/// A gateway with a card account on shard 0 and a merchant settling on shard 1.
struct Bank {
    s: Server,
    key: String,
    acct: u64,
    settle: u64,
    number: String,
    card_id: String,
}

impl Bank {
    /// `account` is the JSON of the card account without its id.
    fn new(account: &str) -> Bank {
        Bank::with_card_expiry(account, EXP)
    }

    fn with_card_expiry(account: &str, exp: (u8, u16)) -> Bank {
        let s = Server::start(2);
        let acct = account_on_shard(0, 2, 1000);
        create_account_json(&s, &format!(r#"{{"id":{acct},{account}}}"#));
        let number = card_number("424242000000001");
        let body = format!(
            r#"{{"number":"{number}","exp_month":{},"exp_year":{},"account_id":{acct}}}"#,
            exp.0, exp.1
        );
        let (status, card) = s.admin().post("/v1/cards", &body);
        assert_eq!(status, 201, "{card}");
        let settle = account_on_shard(1, 2, 5000);
        create_account(&s, settle, "EUR", "0.00");
        let key = create_merchant(&s, "SHOP1", settle);
        Bank {
            s,
            key,
            acct,
            settle,
            number,
            card_id: card["id"].as_str().unwrap().to_string(),
        }
    }

    fn funded() -> Bank {
        Bank::new(r#""currency":"EUR","initial_balance":"100.00","floor":"0.00""#)
    }

    fn merchant(&self) -> Client {
        Client::with_key(self.s.http, &self.key)
    }

    fn pay(&self, amount: &str) -> String {
        payment_json(amount, "EUR", &self.number, EXP, false, "decline-test")
    }

    fn balances(&self) -> Vec<Value> {
        [self.acct, self.settle]
            .map(|id| get_account(&self.s, id))
            .to_vec()
    }

    fn approve(&self, body: &str) -> Value {
        let (status, p) = self.merchant().post("/v1/payments", body);
        assert_eq!(status, 201, "{body}: {p}");
        assert_eq!(p["response_code"], "00");
        p
    }

    /// Sends `body` and checks the decline everywhere it shows; returns the stored payment.
    fn decline(&self, body: &str, iso: &str, code: &str) -> Value {
        let before = self.balances();
        let mut m = self.merchant();
        let (status, v) = m.post("/v1/payments", body);
        assert_eq!(status, 402, "{body}: {v}");
        let e = &v["error"];
        assert_eq!(e["type"], "card_error", "{v}");
        assert_eq!(e["code"], "card_declined", "{v}");
        assert_eq!(e["decline_code"], code, "{v}");
        assert_eq!(e["response_code"], iso, "{v}");
        assert!(e["message"].as_str().is_some_and(|t| !t.is_empty()), "{v}");
        assert!(e["param"].is_null(), "{v}");
        let p = &v["payment"];
        assert_eq!(p["status"], "declined", "{v}");
        assert_eq!(p["response_code"], iso, "{v}");
        assert_eq!(p["decline_code"], code, "{v}");
        assert!(p["approval_code"].is_null(), "{v}");
        let captured: f64 = p["amount_captured"].as_str().unwrap().parse().unwrap();
        assert_eq!(captured, 0.0, "{v}");
        assert_eq!(p["reference"], "decline-test", "{v}");
        // The decline is stored: reading it gives the same payment.
        let id = p["id"].as_str().expect("a declined payment has an id");
        let (status, stored) = m.get(&format!("/v1/payments/{id}"));
        assert_eq!(status, 200, "{stored}");
        assert_eq!(&stored, p);
        // A declined payment cannot be captured, voided or refunded.
        for op in ["capture", "void", "refunds"] {
            let (status, e) = m.post(&format!("/v1/payments/{id}/{op}"), "");
            assert_eq!(status, 422, "{op} of a decline: {e}");
            assert_eq!(e["error"]["code"], "invalid_state", "{op}: {e}");
        }
        assert_eq!(self.balances(), before, "a decline moved money: {v}");
        assert_conservation(&self.s);
        stored
    }
}

#[test]
fn unknown_card_is_14() {
    let b = Bank::funded();
    let unknown = card_number("424242000000002");
    let p = b.decline(
        &payment_json("10.00", "EUR", &unknown, EXP, false, "decline-test"),
        "14",
        "incorrect_number",
    );
    assert_eq!(p["card"]["last4"], &unknown[12..]);
    assert_eq!(p["card"]["bin"], "424242");
    // As a sale too.
    b.decline(
        &payment_json("10.00", "EUR", &unknown, EXP, true, "decline-test"),
        "14",
        "incorrect_number",
    );
}

#[test]
fn card_number_failing_luhn_is_14() {
    let b = Bank::funded();
    // The registered number with its check digit changed.
    let last = b.number.as_bytes()[15] - b'0';
    let bad = format!("{}{}", &b.number[..15], (last + 1) % 10);
    b.decline(
        &payment_json("10.00", "EUR", &bad, EXP, false, "decline-test"),
        "14",
        "incorrect_number",
    );
    b.approve(&b.pay("10.00"));
}

#[test]
fn expired_card_is_54() {
    let b = Bank::with_card_expiry(
        r#""currency":"EUR","initial_balance":"100.00","floor":"0.00""#,
        (1, 2020),
    );
    b.decline(
        &payment_json("10.00", "EUR", &b.number, (1, 2020), false, "decline-test"),
        "54",
        "expired_card",
    );
    b.decline(
        &payment_json("10.00", "EUR", &b.number, (1, 2020), true, "decline-test"),
        "54",
        "expired_card",
    );
}

#[test]
fn presented_expiry_other_than_the_cards_is_54() {
    let b = Bank::funded();
    for exp in [(11, 2030), (12, 2031), (1, 2020)] {
        b.decline(
            &payment_json("10.00", "EUR", &b.number, exp, false, "decline-test"),
            "54",
            "expired_card",
        );
    }
    b.approve(&b.pay("10.00"));
}

#[test]
fn blocked_account_is_57() {
    let b = Bank::funded();
    let (status, a) = set_status(&b.s, "accounts", &b.acct.to_string(), "blocked");
    assert_eq!(status, 200, "{a}");
    assert_eq!(get_account(&b.s, b.acct)["status"], "blocked");
    b.decline(&b.pay("10.00"), "57", "account_blocked");
    set_status(&b.s, "accounts", &b.acct.to_string(), "active");
    b.approve(&b.pay("10.00"));
}

#[test]
fn closed_account_is_05() {
    let b = Bank::funded();
    let (status, a) = set_status(&b.s, "accounts", &b.acct.to_string(), "closed");
    assert_eq!(status, 200, "{a}");
    assert_eq!(get_account(&b.s, b.acct)["status"], "closed");
    b.decline(&b.pay("10.00"), "05", "do_not_honor");
    b.decline(
        &payment_json("1.00", "EUR", &b.number, EXP, true, "decline-test"),
        "05",
        "do_not_honor",
    );
}

#[test]
fn blocked_card_is_62() {
    let b = Bank::funded();
    let (status, c) = set_status(&b.s, "cards", &b.card_id, "blocked");
    assert_eq!(status, 200, "{c}");
    b.decline(&b.pay("10.00"), "62", "restricted_card");
    let (status, c) = set_status(&b.s, "cards", &b.card_id, "active");
    assert_eq!(status, 200, "{c}");
    b.approve(&b.pay("10.00"));
}

#[test]
fn blocked_merchant_is_58() {
    let b = Bank::funded();
    let (status, v) = set_status(&b.s, "merchants", "SHOP1", "blocked");
    assert_eq!(status, 200, "{v}");
    b.decline(&b.pay("10.00"), "58", "merchant_blocked");
    set_status(&b.s, "merchants", "SHOP1", "active");
    b.approve(&b.pay("10.00"));
}

/// A connection remembers the key it proved (hashed once per connection and key), but not
/// the merchant's status: a merchant blocked while its connection is open is declined on that
/// same connection at once, and served again once active.
#[test]
fn blocked_merchant_is_58_on_a_connection_opened_before() {
    let b = Bank::funded();
    let mut m = b.merchant();
    let (status, p) = m.post("/v1/payments", &b.pay("10.00"));
    assert_eq!(status, 201, "{p}");
    let (status, v) = set_status(&b.s, "merchants", "SHOP1", "blocked");
    assert_eq!(status, 200, "{v}");
    let (status, v) = m.post("/v1/payments", &b.pay("10.00"));
    assert_eq!(status, 402, "{v}");
    assert_eq!(v["error"]["decline_code"], "merchant_blocked", "{v}");
    set_status(&b.s, "merchants", "SHOP1", "active");
    let (status, p) = m.post("/v1/payments", &b.pay("10.00"));
    assert_eq!(status, 201, "{p}");
}

/// Keys that change on one connection are each checked: a wrong key after a good one is
/// refused, the admin key is no merchant's (and the admin plane is not on this listener),
/// another merchant's key acts for that merchant.
#[test]
fn every_key_on_one_connection_is_checked() {
    let b = Bank::funded();
    let other_settle = account_on_shard(0, 2, 7000);
    create_account(&b.s, other_settle, "EUR", "0.00");
    let other = create_merchant(&b.s, "SHOP2", other_settle);
    let mut c = b.merchant();
    let (status, p) = c.post("/v1/payments", &b.pay("1.00"));
    assert_eq!(status, 201, "{p}");
    assert_eq!(p["merchant_id"], "SHOP1", "{p}");
    // The same key with its last character changed.
    let mut wrong = b.key.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == '0' { '1' } else { '0' });
    c.bearer = Some(wrong);
    let (status, e) = c.post("/v1/payments", &b.pay("1.00"));
    assert_eq!(status, 401, "{e}");
    let admin_key = b.s.admin().bearer.clone().unwrap();
    c.bearer = Some(admin_key);
    let (status, v) = c.get("/v1/ledger");
    assert_eq!(
        status, 404,
        "the admin plane is on the operator listener: {v}"
    );
    let (status, e) = c.post("/v1/payments", &b.pay("1.00"));
    assert_eq!(status, 403, "the admin key is not a merchant's: {e}");
    c.bearer = Some(other);
    let (status, p) = c.post("/v1/payments", &b.pay("1.00"));
    assert_eq!(status, 201, "{p}");
    assert_eq!(p["merchant_id"], "SHOP2", "{p}");
    c.bearer = Some(b.key.clone());
    let (status, p) = c.post("/v1/payments", &b.pay("1.00"));
    assert_eq!(status, 201, "{p}");
    assert_eq!(p["merchant_id"], "SHOP1", "{p}");
}

#[test]
fn payment_in_another_currency_than_the_account_is_12() {
    let b = Bank::funded();
    for currency in ["USD", "GBP", "JPY"] {
        b.decline(
            &payment_json("10", currency, &b.number, EXP, false, "decline-test"),
            "12",
            "invalid_transaction",
        );
    }
    b.approve(&b.pay("10.00"));
}

/// A merchant settling in EUR cannot take a USD payment even when the card's account is in
/// USD: the captured money would have nowhere to go. (Approving it makes the settlement shard
/// panic on the credit's currency, and again on every restart when the credit is re-sent.)
#[test]
fn payment_in_a_currency_the_merchant_cannot_settle_is_12() {
    let b = Bank::funded();
    let usd = account_on_shard(0, 2, 3000);
    create_account(&b.s, usd, "USD", "100.00");
    let number = card_number("424242000000003");
    create_card(&b.s, &number, usd);
    // First with a short timeout, so that a dying shard fails the test quickly.
    let body = payment_json("10.00", "USD", &number, EXP, true, "decline-test");
    let mut m = b.merchant();
    m.stream
        .get_ref()
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let head = format!(
        "POST /v1/payments HTTP/1.1\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
        b.key,
        body.len()
    );
    m.send_raw(format!("{head}{body}").as_bytes()).unwrap();
    let r = m.read_response().map(|r| (r.status, r.body));
    assert!(
        matches!(&r, Ok((402, _))),
        "a sale the merchant cannot settle: {r:?}"
    );
    for capture in [true, false] {
        let body = payment_json("10.00", "USD", &number, EXP, capture, "decline-test");
        b.decline(&body, "12", "invalid_transaction");
    }
    let a = get_account(&b.s, usd);
    assert_eq!(
        (&a["balance"], &a["held"]),
        (&"100.00".into(), &"0.00".into()),
        "{a}"
    );
    // Everything still works.
    b.approve(&payment_json("1.00", "EUR", &b.number, EXP, true, "ok"));
    wait_balance(&b.s, b.settle, "1.00");
    wait_settled(&b.s);
}

#[test]
fn amount_over_the_account_limit_is_61() {
    let b = Bank::new(
        r#""currency":"EUR","initial_balance":"100.00","floor":"0.00","amount_limit":"50.00""#,
    );
    b.decline(&b.pay("50.01"), "61", "amount_limit_exceeded");
    b.decline(
        &payment_json("99.00", "EUR", &b.number, EXP, true, "decline-test"),
        "61",
        "amount_limit_exceeded",
    );
    b.approve(&b.pay("50.00"));
}

#[test]
fn more_authorizations_in_a_day_than_the_limit_is_65() {
    let b = Bank::new(
        r#""currency":"EUR","initial_balance":"100.00","floor":"0.00","daily_count_limit":3"#,
    );
    for _ in 0..3 {
        b.approve(&b.pay("1.00"));
    }
    b.decline(&b.pay("1.00"), "65", "frequency_limit_exceeded");
    b.decline(
        &payment_json("1.00", "EUR", &b.number, EXP, true, "decline-test"),
        "65",
        "frequency_limit_exceeded",
    );
    assert_eq!(get_account(&b.s, b.acct)["held"], "3.00");
}

#[test]
fn insufficient_funds_is_51() {
    let b = Bank::funded();
    b.decline(&b.pay("100.01"), "51", "insufficient_funds");
    // Held money is not available either.
    b.approve(&b.pay("60.00"));
    b.decline(&b.pay("40.01"), "51", "insufficient_funds");
    b.decline(
        &payment_json("40.01", "EUR", &b.number, EXP, true, "decline-test"),
        "51",
        "insufficient_funds",
    );
    b.approve(&b.pay("40.00"));
    b.decline(&b.pay("0.01"), "51", "insufficient_funds");
    let a = get_account(&b.s, b.acct);
    assert_eq!(
        (&a["balance"], &a["held"], &a["available"]),
        (&"100.00".into(), &"100.00".into(), &"0.00".into())
    );
}

#[test]
fn below_a_credit_lines_floor_is_51() {
    let b = Bank::new(r#""currency":"EUR","initial_balance":"0.00","floor":"-50.00""#);
    b.decline(&b.pay("50.01"), "51", "insufficient_funds");
    b.approve(&payment_json("50.00", "EUR", &b.number, EXP, true, "ok"));
    let a = get_account(&b.s, b.acct);
    assert_eq!(a["balance"], "-50.00", "{a}");
    assert_eq!(a["floor"], "-50.00", "{a}");
    b.decline(&b.pay("0.01"), "51", "insufficient_funds");
}

/// Several reasons at once: the first in the documented order wins.
#[test]
fn reasons_are_checked_in_order() {
    let b = Bank::funded();
    set_status(&b.s, "merchants", "SHOP1", "blocked");
    set_status(&b.s, "cards", &b.card_id, "blocked");
    set_status(&b.s, "accounts", &b.acct.to_string(), "blocked");
    let too_much = b.pay("500.00");
    b.decline(&too_much, "58", "merchant_blocked");
    set_status(&b.s, "merchants", "SHOP1", "active");
    b.decline(&too_much, "62", "restricted_card");
    set_status(&b.s, "cards", &b.card_id, "active");
    b.decline(&too_much, "57", "account_blocked");
    set_status(&b.s, "accounts", &b.acct.to_string(), "active");
    b.decline(&too_much, "51", "insufficient_funds");
}

#[test]
fn unknown_payment_is_not_found() {
    let b = Bank::funded();
    let mut m = b.merchant();
    for id in ["pay_0_424242", "pay_1_424242", "pay_3_1"] {
        for (method, path) in [
            ("GET", format!("/v1/payments/{id}")),
            ("POST", format!("/v1/payments/{id}/capture")),
            ("POST", format!("/v1/payments/{id}/void")),
            ("POST", format!("/v1/payments/{id}/refunds")),
        ] {
            let r = m.request(method, &path, (method == "POST").then_some(""), &[]);
            assert_eq!(r.status, 404, "{method} {path}: {}", r.body);
            assert_eq!(r.body["error"]["code"], "resource_missing", "{}", r.body);
        }
    }
    assert_conservation(&b.s);
}
