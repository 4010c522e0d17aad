//! Payments leave memory for the shard's store and come back when touched: captures, voids,
//! refunds and reads of evicted payments are correct; restart after kill -9 replays only the
//! WAL after the store's checkpoint; checkpointed WAL segments are deleted; holds expire
//! through the store's index by expiry.
mod common;
use common::*;
use std::time::{Duration, Instant};

/// A window of a few hundred payments (state.cache_mb = 1), checkpoints every 50 ms, and
/// 1 MiB WAL segments so that recycling shows within a test.
const SMALL_STATE: &str =
    "[state]\ncache_mb = 1\nwindow_payments = 256\ncheckpoint_interval_ms = 50\n\
                           [wal]\nsegment_bytes = 1048576\n";

/// A request retried while it is answered 503 (a cold read slower than the read timeout on a
/// busy machine: shed before anything was logged, so retrying is what a client does).
fn retried(mut f: impl FnMut() -> (u16, serde_json::Value)) -> (u16, serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = f();
        if status != 503 || Instant::now() > deadline {
            return (status, body);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn get(m: &mut Client, path: &str) -> (u16, serde_json::Value) {
    retried(|| m.get(path))
}

fn post(m: &mut Client, path: &str, body: &str) -> (u16, serde_json::Value) {
    retried(|| m.post(path, body))
}

fn post_idem(m: &mut Client, path: &str, body: &str, key: &str) -> Resp {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = m.post_idem(path, body, key);
        if r.status != 503 || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn metric(s: &Server, name: &str) -> u64 {
    let r = raw_get(s.operator, "/metrics").unwrap();
    r.2.lines()
        .filter(|l| l.starts_with(&format!("corepay_{name}{{")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

fn wal_firsts(s: &Server) -> Vec<u64> {
    let dir = data_dir(s).join("data").join("shard-0").join("wal");
    let mut v: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".wal")?.parse().ok())
        .collect();
    v.sort();
    v
}

/// The shop every test here uses: card account 1001 with `balance` EUR and `number`'s card
/// on it, settlement account 2001, merchant SHOP1. Its API key.
fn shop(s: &Server, balance: &str, number: &str) -> String {
    create_account(s, 1001, "EUR", balance);
    create_account(s, 2001, "EUR", "0.00");
    create_card(s, number, 1001);
    create_merchant(s, "SHOP1", 2001)
}

#[test]
fn evicted_payments_are_captured_voided_refunded_and_read_after_kill9() {
    let mut s = Server::start_with(1, SMALL_STATE);
    let number = card_number("424242424242424");
    let key = shop(&s, "100000.00", &number);
    let mut m = Client::with_key(s.http, &key);

    const N: usize = 3000;
    let mut ids = Vec::with_capacity(N);
    for i in 0..N {
        let body = payment_json("1.00", "EUR", &number, (12, 2030), false, &format!("r{i}"));
        let (status, p) = post(&mut m, "/v1/payments", &body);
        assert_eq!(status, 201, "{p}");
        assert_eq!(p["status"], "authorized");
        ids.push(p["id"].as_str().unwrap().to_string());
    }
    let window = metric(&s, "payment_window_slots");
    assert!(window > 0 && (window as usize) < N / 2, "window {window}");
    assert!(metric(&s, "payments_in_memory") <= window);
    assert_eq!(metric(&s, "payments"), N as u64, "every payment is counted");

    // The oldest payments have left memory: touch them.
    let reads_before = metric(&s, "store_cold_reads_total");
    for (i, id) in ids.iter().take(60).enumerate() {
        let (status, p) = get(&mut m, &format!("/v1/payments/{id}"));
        assert_eq!(status, 200, "{p}");
        assert_eq!(p["status"], "authorized");
        assert_eq!(p["reference"], format!("r{i}"));
        let (status, p) = match i % 3 {
            0 => post(
                &mut m,
                &format!("/v1/payments/{id}/capture"),
                r#"{"amount":"0.60"}"#,
            ),
            1 => post(&mut m, &format!("/v1/payments/{id}/void"), "{}"),
            _ => post(&mut m, &format!("/v1/payments/{id}/capture"), "{}"),
        };
        assert_eq!(status, 200, "{id}: {p}");
    }
    assert!(
        metric(&s, "store_cold_reads_total") >= reads_before + 50,
        "the oldest payments were read back from the store"
    );
    // Refund the fully captured ones (they left memory again meanwhile or not: either way).
    for id in ids.iter().take(60).skip(2).step_by(3) {
        let (status, p) = post(
            &mut m,
            &format!("/v1/payments/{id}/refunds"),
            r#"{"amount":"0.25"}"#,
        );
        assert_eq!(status, 200, "{id}: {p}");
        assert_eq!(p["status"], "partially_refunded");
    }
    // 20 captured 0.60, 20 voided, 20 captured 1.00 and refunded 0.25; the rest held.
    let held = N - 60;
    let captured = 20.0 * 0.60 + 20.0 * 1.00 - 20.0 * 0.25;
    let expect_balance = format!("{:.2}", 100000.00 - captured);
    let expect_held = format!("{held}.00");
    assert_eq!(
        balance_held(&s, 1001),
        (expect_balance.clone(), expect_held.clone())
    );
    assert_eq!(balance_held(&s, 2001).0, format!("{captured:.2}"));

    // Checkpoints covered the old segments: they were retired (kept as spares while
    // fewer than two exist, else deleted), and the log starts later. New segments were
    // spares renamed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&s, "wal_segments_recycled_total") == 0 {
        assert!(Instant::now() < deadline, "no WAL segment was retired");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(wal_firsts(&s)[0] > 1, "the first segment was retired");
    let (created, reused) = (
        metric(&s, "wal_segments_created_total"),
        metric(&s, "wal_segments_reused_total"),
    );
    assert!(
        reused >= 1 && reused <= created,
        "created {created}, reused {reused}"
    );
    // Fewer batches than the in-memory hand-off holds were written: the store writer read
    // none of them back from disk.
    assert_eq!(metric(&s, "store_wal_records_read_total"), 0);

    s.kill9();
    s.spawn();
    let log = s.log();
    let replayed: u64 = log
        .lines()
        .filter_map(|l| l.split("replayed ").nth(1))
        .filter_map(|t| t.split(' ').next()?.parse().ok())
        .next_back()
        .expect("recovery says how much it replayed");
    assert!(
        replayed < (N as u64) / 2,
        "restart replays the WAL after the checkpoint, not history: {replayed}"
    );
    assert_eq!(balance_held(&s, 1001), (expect_balance, expect_held));
    let mut m = Client::with_key(s.http, &key);
    for (i, id) in ids.iter().enumerate().step_by(97) {
        let (status, p) = get(&mut m, &format!("/v1/payments/{id}"));
        assert_eq!(status, 200, "{p}");
        assert_eq!(p["reference"], format!("r{i}"));
    }
    let (_, p) = get(&mut m, &format!("/v1/payments/{}", ids[1]));
    assert_eq!(p["status"], "voided");
    let (_, p) = get(&mut m, &format!("/v1/payments/{}", ids[2]));
    assert_eq!(p["status"], "partially_refunded");
    assert_eq!(p["amount_refunded"], "0.25");
    // Not capturable twice, evicted or not.
    let (status, e) = post(&mut m, &format!("/v1/payments/{}/capture", ids[0]), "{}");
    assert_eq!(status, 422, "{e}");
    assert_conservation(&s);
}

#[test]
fn holds_expire_through_the_store_index() {
    let s = Server::start_with(1, &format!("{SMALL_STATE}[payments]\nhold_ttl_secs = 1\n"));
    let number = card_number("400000000000000");
    let key = shop(&s, "100.00", &number);
    let mut m = Client::with_key(s.http, &key);
    let mut ids = Vec::new();
    for i in 0..5 {
        let body = payment_json("2.00", "EUR", &number, (12, 2030), false, &format!("h{i}"));
        let (status, p) = post(&mut m, "/v1/payments", &body);
        assert_eq!(status, 201, "{p}");
        ids.push(p["id"].as_str().unwrap().to_string());
    }
    // One is captured before it expires: it stays captured.
    let (status, _) = post(&mut m, &format!("/v1/payments/{}/capture", ids[0]), "{}");
    assert_eq!(status, 200);
    assert_eq!(balance_held(&s, 1001).1, "8.00");
    for id in &ids[1..] {
        wait_payment_for(&mut m, id, Duration::from_secs(10), |p| {
            p["status"] == "expired"
        });
    }
    let (_, p) = get(&mut m, &format!("/v1/payments/{}", ids[0]));
    assert_eq!(p["status"], "captured");
    assert_eq!(balance_held(&s, 1001), ("98.00".into(), "0.00".into()));
    assert_conservation(&s);
}

fn wait_payment_for(
    m: &mut Client,
    id: &str,
    within: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) {
    let deadline = Instant::now() + within;
    loop {
        let (status, p) = get(m, &format!("/v1/payments/{id}"));
        assert_eq!(status, 200, "{p}");
        if done(&p) {
            return;
        }
        assert!(Instant::now() < deadline, "{id} never expired: {p}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Far more keyed requests than the key index holds in memory: none is refused, and every
/// key still replays (or refuses another body) after it left memory, and after a restart.
#[test]
fn idempotency_keys_outlive_the_index_in_memory() {
    let mut s = Server::start_with(
        2,
        &format!("{SMALL_STATE}[idempotency]\nmax_keys_per_shard = 64\n"),
    );
    let number = card_number("555555555555444");
    let key = shop(&s, "10000.00", &number);
    let mut m = Client::with_key(s.http, &key);
    let body = |i: usize| payment_json("1.00", "EUR", &number, (12, 2030), true, &format!("k{i}"));
    const N: usize = 600;
    let mut ids = Vec::new();
    for i in 0..N {
        let r = post_idem(&mut m, "/v1/payments", &body(i), &format!("key-{i}"));
        assert_eq!(r.status, 201, "request {i}: {}", r.body);
        assert_eq!(r.header("Idempotent-Replayed"), None);
        ids.push(r.body["id"].as_str().unwrap().to_string());
    }
    let check = |m: &mut Client| {
        for i in (0..N).step_by(37) {
            let r = post_idem(m, "/v1/payments", &body(i), &format!("key-{i}"));
            assert_eq!(r.status, 201, "replay {i}: {}", r.body);
            assert_eq!(r.header("Idempotent-Replayed"), Some("true"));
            assert_eq!(r.body["id"], ids[i].as_str());
            let other = post_idem(m, "/v1/payments", &body(i + 1), &format!("key-{i}"));
            assert_eq!(
                other.status, 422,
                "another body under key-{i}: {}",
                other.body
            );
        }
    };
    check(&mut m);
    assert_eq!(balance_held(&s, 1001).0, format!("{}.00", 10000 - N));
    s.kill9();
    s.spawn();
    let mut m = Client::with_key(s.http, &key);
    check(&mut m);
    assert_eq!(
        balance_held(&s, 1001).0,
        format!("{}.00", 10000 - N),
        "nothing ran twice"
    );
}

fn store_file(s: &Server) -> std::path::PathBuf {
    data_dir(s).join("data").join("shard-0").join("store.redb")
}

/// Damages the store file: every byte after the first 4 KiB flipped, or truncated.
fn damage(path: &std::path::Path, truncate: bool) {
    let mut bytes = std::fs::read(path).unwrap();
    if truncate {
        bytes.truncate(bytes.len() / 3);
    } else {
        for b in bytes.iter_mut().skip(4096) {
            *b ^= 0x5A;
        }
    }
    std::fs::write(path, bytes).unwrap();
}

fn some_payments(s: &Server, n: usize) -> (String, Vec<String>) {
    let number = card_number("424242424242424");
    let key = shop(s, "1000.00", &number);
    let mut m = Client::with_key(s.http, &key);
    let ids = (0..n)
        .map(|i| {
            let body = payment_json("1.00", "EUR", &number, (12, 2030), true, &format!("x{i}"));
            let (status, p) = post(&mut m, "/v1/payments", &body);
            assert_eq!(status, 201, "{p}");
            p["id"].as_str().unwrap().to_string()
        })
        .collect();
    (key, ids)
}

#[test]
fn a_damaged_store_is_rebuilt_from_a_wal_that_holds_every_record() {
    for truncate in [false, true] {
        // Default segments: nothing is recycled, the WAL holds every record.
        let mut s = Server::start_with(1, "[state]\ncheckpoint_interval_ms = 20\n");
        let (key, ids) = some_payments(&s, 40);
        s.terminate();
        damage(&store_file(&s), truncate);
        s.spawn();
        assert!(
            s.log().contains("rebuilding it from the WAL"),
            "truncate={truncate}: {}",
            s.log()
        );
        assert!(store_file(&s).with_extension("redb.damaged").exists());
        let mut m = Client::with_key(s.http, &key);
        for id in &ids {
            let (status, p) = get(&mut m, &format!("/v1/payments/{id}"));
            assert_eq!(status, 200, "{p}");
        }
        assert_eq!(balance_held(&s, 1001).0, "960.00");
    }
}

#[test]
fn a_damaged_store_is_refused_naming_it_when_the_wal_was_recycled() {
    let mut s = Server::start_with(1, SMALL_STATE);
    let (_, _) = some_payments(&s, 400);
    let deadline = Instant::now() + Duration::from_secs(10);
    while wal_firsts(&s)[0] == 1 {
        assert!(Instant::now() < deadline, "no segment was recycled");
        std::thread::sleep(Duration::from_millis(20));
    }
    s.terminate();
    damage(&store_file(&s), false);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_corepay"))
        .args(["serve", "--config"])
        .arg(s.config_path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains(&store_file(&s).display().to_string()) && last.contains("backup"),
        "one line naming the store: {stderr}"
    );
}

/// A store that falls behind: once the payment window has no slot the store has applied for
/// the next payment, new authorizations are refused before anything is logged (503 with
/// Retry-After, counted as `window_full`); nothing approved is lost, and authorizations are
/// approved again once the store has caught up.
#[test]
fn a_store_behind_sheds_new_payments_at_once_and_serving_resumes() {
    // 64 payments in memory, and the store applies what is durable only every 3 s.
    let s = Server::start_with(
        1,
        "[state]\nwindow_payments = 64\ncommit_interval_ms = 3000\ncheckpoint_interval_ms = 6000\n",
    );
    let number = card_number("424242424242424");
    let key = shop(&s, "100000.00", &number);
    let mut m = Client::with_key(s.http, &key);
    let body = |i: usize| payment_json("1.00", "EUR", &number, (12, 2030), false, &format!("r{i}"));

    let mut approved = Vec::new();
    let mut shed = 0;
    for i in 0..200 {
        let r = m.request("POST", "/v1/payments", Some(&body(i)), &[]);
        match r.status {
            201 => approved.push(r.body["id"].as_str().unwrap().to_string()),
            503 => {
                assert_eq!(r.body["error"]["code"], "system_unavailable", "{}", r.body);
                assert_eq!(r.header("retry-after"), Some("1"));
                shed += 1;
            }
            other => panic!("{other}: {}", r.body),
        }
    }
    assert!(shed > 0, "a full window refuses new payments");
    assert!(approved.len() <= 64, "{} approved", approved.len());
    assert!(metric(&s, "shed_total") >= shed, "shed answers are counted");
    let window_full: u64 = raw_get(s.operator, "/metrics")
        .unwrap()
        .2
        .lines()
        .filter(|l| l.starts_with("corepay_shed_total{") && l.contains("window_full"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(window_full, shed, "each refusal is counted as window_full");

    // The store catches up: new payments are approved again, and every approved one is there.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = m.request("POST", "/v1/payments", Some(&body(1000)), &[]);
        if r.status == 201 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(Instant::now() < deadline, "serving did not resume");
        std::thread::sleep(Duration::from_millis(100));
    }
    for id in &approved {
        let (status, p) = get(&mut m, &format!("/v1/payments/{id}"));
        assert_eq!(status, 200, "{p}");
        assert_eq!(p["status"], "authorized");
    }
}
