//! The harness itself works: a gateway starts, takes a payment end to end, and restarts.
mod common;
use common::*;

#[test]
fn a_payment_survives_a_restart() {
    let mut s = Server::start(2);
    create_account(&s, 1001, "EUR", "100.00");
    create_account(&s, 2001, "EUR", "0.00");
    create_card(&s, "4242424242424242", 1001);
    let key = create_merchant(&s, "SHOP1", 2001);
    let mut m = Client::with_key(s.http, &key);
    let (status, p) = m.post(
        "/v1/payments",
        r#"{"amount":"25.00","currency":"EUR","card":{"number":"4242424242424242","exp_month":12,"exp_year":2030},"capture":true}"#,
    );
    assert_eq!(status, 201, "{p}");
    assert_eq!(p["status"], "captured");
    let id = p["id"].as_str().unwrap().to_string();
    s.restart();
    let mut m = Client::with_key(s.http, &key);
    let (status, again) = m.get(&format!("/v1/payments/{id}"));
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["status"], "captured");
    assert_eq!(again["amount_captured"], "25.00");
    assert_conservation(&s);
}

/// A read before anything was ever written (an empty log) is answered, not a panic: the
/// read barrier has no LSN to wait for. The perf harness found this on its first run.
#[test]
fn reads_on_a_fresh_gateway_are_answered() {
    let s = Server::start(2);
    let (status, v) = s.admin().get("/v1/accounts/1000000");
    assert_eq!(status, 404, "{v}");
    let (status, v) = s.admin().get("/v1/ledger");
    assert_eq!(status, 200, "{v}");
    // Still serving afterwards.
    create_account(&s, 1, "EUR", "1.00");
    let (status, v) = s.admin().get("/v1/accounts/1");
    assert_eq!(status, 200, "{v}");
}
