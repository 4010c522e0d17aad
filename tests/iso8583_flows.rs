//! ISO 8583 flows under concurrency: many authorizations in flight on one connection,
//! answered out of order and matched by STAN; repeats sent while their original is still
//! running wait for it and answer identically, with one hold; reversing twice releases once.
mod common;
use common::*;
use std::collections::HashMap;

fn pan(i: u64) -> String {
    card_number(&format!("4000009876{i:05}"))
}

fn authorization(stan_n: u32, card: u64, amount: u64) -> Message {
    let mut m = Message::new(*b"0100");
    m.set(2, pan(card).as_bytes());
    m.set(3, b"000000");
    m.set(4, format!("{amount:012}").as_bytes());
    m.set(7, b"1121093000");
    m.set(11, &stan(stan_n));
    m.set(32, b"4711");
    m.set(41, b"POS00001");
    m.set(42, b"FLOWSHOP       ");
    m.set(49, b"978");
    m
}

fn held_minor(s: &Server, id: u64) -> u64 {
    let (status, a) = s.admin().get(&format!("/v1/accounts/{id}"));
    assert_eq!(status, 200, "{a}");
    a["held"]
        .as_str()
        .unwrap()
        .replace('.', "")
        .parse()
        .unwrap()
}

fn setup(s: &Server, cards: u64) {
    create_account(s, 1, "EUR", "0.00");
    for i in 0..cards {
        create_account(s, 100 + i, "EUR", "100000.00");
        create_card(s, &pan(i), 100 + i);
    }
    create_merchant(s, "FLOWSHOP", 1);
}

#[test]
fn one_hundred_fifty_authorizations_in_flight_are_matched_by_stan() {
    let s = Server::start(2);
    setup(&s, 6);
    let mut c = s.iso();
    let mut out = Vec::new();
    let mut sent = HashMap::new();
    for n in 1..=150u32 {
        let (card, amount) = (n as u64 % 6, 100 + n as u64);
        let m = authorization(n, card, amount);
        c.frame_message(&m, &mut out);
        sent.insert(stan(n), (card, amount));
    }
    c.send_raw(&out).unwrap();
    let mut held: HashMap<u64, u64> = HashMap::new();
    let mut answered = HashMap::new();
    for _ in 0..150 {
        let r = c.read();
        assert_eq!(&r.mti(), b"0110");
        assert_eq!(r.get(39), Some(&b"00"[..]), "{r:?}");
        assert_eq!(r.get(38).map(|a| a.len()), Some(6));
        assert!(r.get(2).is_none(), "DE2 is never echoed");
        let stan: [u8; 6] = r.get(11).unwrap().try_into().unwrap();
        let (card, amount) = sent[&stan];
        assert_eq!(r.get(4), Some(format!("{amount:012}").as_bytes()));
        assert!(
            answered.insert(stan, ()).is_none(),
            "STAN {stan:?} answered twice"
        );
        *held.entry(100 + card).or_default() += amount;
    }
    assert_eq!(answered.len(), 150);
    for (id, amount) in held {
        assert_eq!(held_minor(&s, id), amount, "account {id}");
    }
}

#[test]
fn repeats_sent_while_the_original_runs_answer_identically_with_one_hold() {
    let s = Server::start(2);
    setup(&s, 4);
    let mut c = s.iso();
    for round in 0..20u32 {
        let original = authorization(1000 + round, round as u64 % 4, 500 + round as u64);
        let mut repeat = original.clone();
        repeat.set_mti(*b"0101");
        // Original, an identical duplicate and two repeats in one write: the later ones
        // reach the gateway while the first is still waiting for its fdatasync.
        let mut out = Vec::new();
        for m in [&original, &original, &repeat, &repeat] {
            c.frame_message(m, &mut out);
        }
        c.send_raw(&out).unwrap();
        let answers: Vec<Message> = (0..4).map(|_| c.read()).collect();
        for a in &answers {
            assert_eq!(&a.mti(), b"0110");
            for f in [4, 11, 38, 39] {
                assert_eq!(
                    a.get(f),
                    answers[0].get(f),
                    "round {round}: DE{f} differs: {answers:?}"
                );
            }
        }
        assert_eq!(answers[0].get(39), Some(&b"00"[..]));
    }
    let expected: u64 = (0..20u64).map(|r| 500 + r).sum();
    let total: u64 = (0..4).map(|i| held_minor(&s, 100 + i)).sum();
    assert_eq!(
        total, expected,
        "one hold per transaction, however often it was sent"
    );
}

#[test]
fn reversing_twice_releases_once() {
    let s = Server::start(2);
    setup(&s, 1);
    let mut c = s.iso();
    let auth = authorization(7, 0, 2500);
    assert_eq!(c.call(&auth).get(39), Some(&b"00"[..]));
    assert_eq!(held_minor(&s, 100), 2500);
    let de90 = format!("0100{}{}{:0>11}{:011}", "000007", "1121093000", "4711", 0);
    for (i, mti) in [b"0400", b"0400", b"0420"].iter().enumerate() {
        let mut rev = Message::new(**mti);
        rev.set(2, pan(0).as_bytes());
        rev.set(3, b"000000");
        rev.set(4, b"000000002500");
        rev.set(7, b"1121093100");
        rev.set(11, &stan(50 + i as u32));
        rev.set(32, b"4711");
        rev.set(41, b"POS00001");
        rev.set(42, b"FLOWSHOP       ");
        rev.set(49, b"978");
        rev.set(90, de90.as_bytes());
        let r = c.call(&rev);
        assert_eq!(r.get(39), Some(&b"00"[..]), "reversal {i}: {r:?}");
        assert_eq!(held_minor(&s, 100), 0, "released once, and stays released");
    }
    let (_, a) = s.admin().get("/v1/accounts/100");
    assert_eq!(a["balance"], "100000.00");
    assert_conservation(&s);
}
