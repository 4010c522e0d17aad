//! More than fits is answered at once (issue 10): HTTP 503 with Retry-After and an error
//! object, ISO 8583 DE39 91 with the request's fields echoed; what was shed did nothing (no
//! payment, no hold), what was admitted is whole, and /metrics counts the shed per reason.
//! Network management (0800) is never shed.
//!
//! A shard that takes one request at a time (`admission.max_in_flight_per_shard = 1`) makes
//! "more than fits" certain: a request that arrives while another waits for its fsync is
//! over the limit.
mod common;
use common::*;
use std::collections::HashMap;

const ONE_AT_A_TIME: &str =
    "[admission]\nmax_in_flight_per_shard = 1\ninitial_limit = 1\nmin_limit = 1\n";

/// `corepay_<name>{shard="0",...}` from /metrics, summed over the labels given.
fn metric(s: &Server, name: &str, labels: &str) -> u64 {
    let (status, _, body) = raw_get(s.operator, "/metrics").expect("/metrics answers");
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| l.starts_with(&format!("corepay_{name}{{")) && l.contains(labels))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("a sample: {l}")) as u64
        })
        .sum()
}

fn setup(s: &Server) -> String {
    create_account(s, 1, "EUR", "0.00");
    create_account(s, 2, "EUR", "100000.00");
    create_card(s, &card_number("400000123400000"), 2);
    create_merchant(s, "SHOP", 1)
}

#[test]
fn http_requests_past_the_limit_are_answered_503_at_once_and_do_nothing() {
    let s = Server::start_with(1, ONE_AT_A_TIME);
    let key = setup(&s);
    let number = card_number("400000123400000");
    let payments_before = metric(&s, "payments", "shard=\"0\"");
    let mut clients: Vec<Client> = (0..16).map(|_| Client::with_key(s.http, &key)).collect();
    let (mut created, mut shed) = (Vec::new(), 0u64);
    // Each round writes one payment on every connection before reading any answer: the
    // later ones arrive while the first waits for its fsync.
    for round in 0..50 {
        for (i, c) in clients.iter_mut().enumerate() {
            let body = payment_json(
                "1.00",
                "EUR",
                &number,
                (12, 2030),
                false,
                &format!("r{round}-{i}"),
            );
            let req = format!(
                "POST /v1/payments HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            c.send_raw(req.as_bytes()).unwrap();
        }
        for c in clients.iter_mut() {
            let r = c.read_response().expect("every request is answered");
            match r.status {
                201 => created.push(r.body["id"].as_str().unwrap().to_string()),
                503 => {
                    shed += 1;
                    assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
                    assert_eq!(r.body["error"]["code"], "overloaded", "{}", r.body);
                    assert_eq!(r.body["error"]["type"], "api_error", "{}", r.body);
                }
                other => panic!("neither admitted nor shed: {other} {}", r.body),
            }
        }
        if shed > 0 && !created.is_empty() && round >= 2 {
            break;
        }
    }
    assert!(
        shed > 0,
        "a one-at-a-time shard shed nothing of 16 concurrent requests"
    );
    assert!(!created.is_empty(), "nothing was admitted");
    // The shed did nothing; every admitted payment is there, whole.
    assert_eq!(
        metric(&s, "payments", "shard=\"0\"") - payments_before,
        created.len() as u64
    );
    let mut m = Client::with_key(s.http, &key);
    for id in &created {
        let (status, p) = m.get(&format!("/v1/payments/{id}"));
        assert_eq!(status, 200, "{p}");
        assert_eq!(p["status"], "authorized", "{p}");
    }
    let held = balance_held(&s, 2).1;
    assert_eq!(
        held,
        format!("{}.00", created.len()),
        "held on the card account"
    );
    // Counted per reason (over the limit; an HTTP request never waited before it was read).
    assert_eq!(metric(&s, "shed_total", "reason=\"concurrency\""), shed);
    // The connections stay usable: a shed answer keeps the connection alive.
    let (status, _) = clients[0].get("/v1/payments/none");
    assert!(status == 404 || status == 503, "{status}");
}

#[test]
fn iso8583_requests_past_the_limit_get_91_with_their_fields_and_0800_is_never_shed() {
    let s = Server::start_with(1, ONE_AT_A_TIME);
    setup(&s);
    let number = card_number("400000123400000");
    let mut c = s.iso();
    let (mut approved, mut declined_91) = (0u64, 0u64);
    let mut n = 0u32;
    for _round in 0..50 {
        let mut out = Vec::new();
        let mut sent: HashMap<[u8; 6], Message> = HashMap::new();
        for _ in 0..32 {
            n += 1;
            let mut m = Message::new(*b"0100");
            m.set(2, number.as_bytes());
            m.set(3, b"000000");
            m.set(4, b"000000000100");
            m.set(7, b"1121093000");
            m.set(11, &stan(n));
            m.set(32, b"4711");
            m.set(37, format!("RRN{n:09}").as_bytes());
            m.set(41, b"POS00001");
            m.set(42, b"SHOP           ");
            m.set(49, b"978");
            c.frame_message(&m, &mut out);
            sent.insert(stan(n), m);
        }
        n += 1;
        let echo = network_request(n, b"301");
        c.frame_message(&echo, &mut out);
        c.send_raw(&out).unwrap();
        for _ in 0..33 {
            let body = c.read_frame().unwrap().expect("every frame is answered");
            let r = decode(&body, BitmapEncoding::Binary).unwrap();
            let key: [u8; 6] = r.get(11).unwrap().try_into().unwrap();
            if &r.mti() == b"0810" {
                assert_network_answer(&echo, &r);
                continue;
            }
            let req = sent.remove(&key).expect("an answer to a request sent");
            assert_eq!(&r.mti(), b"0110");
            for f in [3, 4, 7, 11, 32, 37, 41, 42, 49] {
                assert_eq!(r.get(f), req.get(f), "DE{f} echoed: {r:?}");
            }
            match r.get(39) {
                Some(b"00") => {
                    assert!(r.get(38).is_some(), "an approval carries DE38");
                    approved += 1;
                }
                Some(b"91") => {
                    assert!(r.get(38).is_none(), "a shed request was approved: {r:?}");
                    declined_91 += 1;
                }
                other => panic!("neither approved nor shed: {other:?} {r:?}"),
            }
        }
        assert!(sent.is_empty());
        if approved > 0 && declined_91 > 0 {
            break;
        }
    }
    assert!(
        declined_91 > 0,
        "32 pipelined frames on a one-at-a-time shard: none shed"
    );
    assert!(approved > 0, "nothing was admitted");
    // Holds: exactly one unit per approval; the shed held nothing.
    assert_eq!(balance_held(&s, 2).1, format!("{approved}.00"));
    // Counted: over the limit, or (frames read together wait their turn) for queue time.
    assert_eq!(metric(&s, "shed_total", "shard=\"0\""), declined_91);
}

#[test]
fn the_shard_publishes_its_admission_state() {
    let s = Server::start_with(1, "[admission]\ninitial_limit = 77\nmin_limit = 7\n");
    let limit = metric(&s, "admission_limit", "shard=\"0\"");
    assert!((7..=77).contains(&limit), "limit {limit}");
    assert_eq!(metric(&s, "admission_in_flight", "shard=\"0\""), 0);
    let (_, _, body) = raw_get(s.operator, "/metrics").unwrap();
    assert!(
        body.contains("corepay_queue_delay_seconds{shard=\"0\"}"),
        "{body}"
    );
    for reason in ["queue_time", "concurrency"] {
        assert!(
            body.contains(&format!(
                "corepay_shed_total{{shard=\"0\",reason=\"{reason}\"}} 0"
            )),
            "{reason}"
        );
    }
}
