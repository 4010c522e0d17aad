//! What an operator relies on: the data directory's shard count is enforced, bad config is
//! refused in one line, `wal verify` / `wal dump` work, mid-log corruption stops start-up
//! naming the segment and offset while a torn tail is truncated, bulk provisioning works, and
//! no clear card number or key is ever written to disk or to the log.
mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn corepay(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_corepay"))
        .args(args)
        .output()
        .expect("run corepay")
}

fn segments(data: &Path, shard: u16) -> Vec<PathBuf> {
    let dir = data.join(format!("shard-{shard}")).join("wal");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

/// Offsets of the non-zero 4 KiB blocks of a file.
fn used_blocks(file: &Path) -> Vec<u64> {
    let bytes = std::fs::read(file).unwrap();
    bytes
        .chunks(4096)
        .enumerate()
        .filter(|(_, b)| b.iter().any(|&x| x != 0))
        .map(|(i, _)| i as u64 * 4096)
        .collect()
}

/// Creates `n` accounts on `shard`, one request each, so each is its own WAL batch there.
fn accounts_on_shard(s: &Server, shard: u16, n: usize, from: u64) -> Vec<u64> {
    let ids: Vec<u64> = (from..)
        .filter(|&id| shard_of(id, s.shards) == shard)
        .take(n)
        .collect();
    for &id in &ids {
        create_account(s, id, "EUR", "10.00");
    }
    ids
}

#[test]
fn another_shard_count_is_refused_with_a_clear_message() {
    let mut s = Server::start(2);
    accounts_on_shard(&s, 0, 1, 10_000);
    assert!(s.terminate().success());
    let text = std::fs::read_to_string(s.config_path())
        .unwrap()
        .replace("shards = 2", "shards = 3");
    std::fs::write(s.config_path(), text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_corepay"))
        .args(["serve", "--config"])
        .arg(s.config_path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("created with 2 shards") && err.contains("server.shards = 2"),
        "{err}"
    );
}

#[test]
fn bad_config_is_refused_in_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("[wal]\nsync = \"maybe\"\n", "wal.sync"),
        ("[http]\nlisten = \"not an address\"\n", "http.listen"),
        ("[server]\nshard = 2\n", "shard"),
        (
            "[idempotency]\nretention_secs = 5\n",
            "idempotency.retention_secs",
        ),
    ] {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, text).unwrap();
        for args in [
            vec!["check-config", file.to_str().unwrap()],
            vec!["serve", "--config", file.to_str().unwrap()],
        ] {
            let out = corepay(&args);
            assert!(!out.status.success(), "{args:?} accepted {text:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
            assert!(err.contains(key), "{err} should name {key}");
        }
    }
    let out = corepay(&[
        "check-config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/configs/corepay.toml"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn wal_verify_and_dump_read_every_shard() {
    let mut s = Server::start(2);
    accounts_on_shard(&s, 0, 3, 10_000);
    accounts_on_shard(&s, 1, 2, 10_000);
    s.kill9();
    let data = s.dir.join("data");
    let out = corepay(&["wal", "verify", data.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("shard-0/wal: ok") && text.contains("shard-1/wal: ok"),
        "{text}"
    );
    let out = corepay(&["wal", "dump", data.to_str().unwrap()]);
    assert!(out.status.success());
    let dump = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        dump.lines().filter(|l| l.contains("CreateAccount")).count(),
        5,
        "{dump}"
    );
}

#[test]
fn corruption_in_the_middle_of_a_log_stops_start_up_naming_segment_and_offset() {
    let mut s = Server::start(2);
    accounts_on_shard(&s, 0, 4, 10_000);
    s.kill9();
    let data = s.dir.join("data");
    let segment = segments(&data, 0).pop().unwrap();
    let blocks = used_blocks(&segment);
    assert!(blocks.len() >= 4, "one batch per request: {blocks:?}");
    let victim = blocks[1];
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[victim as usize + 40] ^= 0xFF; // inside the second batch's body
    std::fs::write(&segment, bytes).unwrap();

    let out = corepay(&["wal", "verify", data.to_str().unwrap()]);
    assert!(!out.status.success());
    let report = String::from_utf8_lossy(&out.stdout);
    let name = segment.file_name().unwrap().to_str().unwrap();
    assert!(
        report.contains("CORRUPT") && report.contains(name),
        "{report}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_corepay"))
        .args(["serve", "--config"])
        .arg(s.config_path())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "must refuse to start on a corrupt log"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(name) && err.contains(&victim.to_string()),
        "names segment and offset: {err}"
    );
}

#[test]
fn a_torn_tail_is_truncated_and_everything_acknowledged_stays() {
    let mut s = Server::start(2);
    let ids = accounts_on_shard(&s, 0, 3, 10_000);
    s.kill9();
    let segment = segments(&s.dir.join("data"), 0).pop().unwrap();
    let end = used_blocks(&segment).last().unwrap() + 4096;
    let mut bytes = std::fs::read(&segment).unwrap();
    // A half-written batch: a plausible header start followed by garbage, then nothing.
    bytes[end as usize..end as usize + 4].copy_from_slice(b"CPWL");
    for (i, b) in bytes[end as usize + 4..end as usize + 1500]
        .iter_mut()
        .enumerate()
    {
        *b = (i * 7 + 3) as u8;
    }
    std::fs::write(&segment, bytes).unwrap();
    s.spawn();
    assert!(
        s.log()
            .contains("bytes after the end of the log (a torn write"),
        "{}",
        s.log()
    );
    for id in ids {
        let (status, a) = s.admin().get(&format!("/v1/accounts/{id}"));
        assert_eq!((status, a["balance"].as_str()), (200, Some("10.00")));
    }
    // The log continues after the truncated tail.
    accounts_on_shard(&s, 0, 4, 20_000);
    s.restart();
    assert_conservation(&s);
}

#[test]
fn bulk_provisioning_creates_usable_accounts_and_cards() {
    let s = Server::start(2);
    let body = r#"{"first_account_id": 500000, "count": 5000, "currency": "EUR", "balance": "50.00",
                   "card_bin": "400000", "exp_month": 12, "exp_year": 2030}"#;
    let (status, v) = s.admin().post("/v1/provision", body);
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["accounts"].as_u64(), v["cards"].as_u64()),
        (Some(5000), Some(5000))
    );
    create_account(&s, 1, "EUR", "0.00");
    let key = create_merchant(&s, "BULK", 1);
    let mut m = Client::with_key(s.http, &key);
    for id in [500000u64, 502507, 504999] {
        let number = corepay::gateway::service::provisioned_card_number("400000", id);
        let body = format!(
            r#"{{"amount":"20.00","currency":"EUR","card":{{"number":"{number}","exp_month":12,"exp_year":2030}},"capture":true}}"#
        );
        let (status, p) = m.post("/v1/payments", &body);
        assert_eq!(status, 201, "{p}");
        let (_, a) = s.admin().get(&format!("/v1/accounts/{id}"));
        assert_eq!(a["balance"], "30.00");
    }
    let ledger = s.ledger();
    assert_eq!(ledger["currencies"][0]["accounts"], "250000.00");
    assert_conservation(&s);
}

#[test]
fn no_clear_card_number_or_key_is_ever_written() {
    let mut s = Server::start(2);
    let good = "4000056655665556";
    let bad_luhn = "4000056655665557";
    create_account(&s, 1, "EUR", "0.00");
    create_account(&s, 2, "EUR", "100.00");
    create_card(&s, good, 2);
    let key = create_merchant(&s, "NOPAN", 1);
    let mut m = Client::with_key(s.http, &key);
    for number in [good, bad_luhn, "4111111111111111"] {
        let body = format!(
            r#"{{"amount":"1.00","currency":"EUR","card":{{"number":"{number}","exp_month":12,"exp_year":2030}}}}"#
        );
        let (status, _) = m.post("/v1/payments", &body);
        assert!(status == 201 || status == 402);
    }
    assert!(s.terminate().success());
    let dump = corepay(&["wal", "dump", s.dir.join("data").to_str().unwrap()]);
    let mut haystacks = vec![
        ("wal dump".to_string(), dump.stdout),
        ("server.log".to_string(), s.log().into_bytes()),
    ];
    let mut stack = vec![s.dir.join("data")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                haystacks.push((p.display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    let needles: Vec<(&str, Vec<u8>)> = vec![
        ("pan", good.as_bytes().to_vec()),
        ("bad-luhn pan", bad_luhn.as_bytes().to_vec()),
        ("unknown pan", b"4111111111111111".to_vec()),
        ("api key", key.as_bytes().to_vec()),
        (
            "api key secret",
            key.rsplit('_').next().unwrap().as_bytes().to_vec(),
        ),
        ("admin key", ADMIN_KEY.as_bytes().to_vec()),
    ];
    assert!(haystacks.len() >= 4);
    for (name, hay) in &haystacks {
        for (what, needle) in &needles {
            assert!(
                !hay.windows(needle.len()).any(|w| w == needle.as_slice()),
                "{what} found in {name}"
            );
        }
    }
}

#[test]
fn a_second_gateway_on_the_same_ports_is_refused() {
    let s = Server::start(2);
    let other = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(s.config_path()).unwrap().replace(
        s.dir.join("data").to_str().unwrap(),
        other.path().to_str().unwrap(),
    );
    let file = other.path().join("corepay.toml");
    std::fs::write(&file, config).unwrap();
    let out = corepay(&["serve", "--config", file.to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "SO_REUSEPORT must not let two gateways share a port"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("http.listen") && err.contains("another process"),
        "{err}"
    );
    // The first one is untouched.
    let (status, _) = s.admin().get("/v1/ledger");
    assert_eq!(status, 200);
}
