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
