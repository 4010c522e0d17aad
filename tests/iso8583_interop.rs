//! ISO 8583 interoperability: an implementation corepay did not write (pyiso8583, from PyPI)
//! drives the real gateway over a real socket through every message type of the corepay
//! profile, under both length headers and both bitmap encodings (tests/iso8583_interop.py).
//! Afterwards the HTTP admin API must show exactly the balances and holds the script's
//! operations imply, and every currency must still sum to zero.
//!
//! pyiso8583 comes from `scripts/pyiso8583-env.sh` (a venv under the target directory), or
//! from the interpreter named by `COREPAY_ISO_PYTHON` (scripts/test.sh sets it). If it cannot
//! be installed the test fails: it is never skipped.
mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// The python interpreter that can `import iso8583`, installed once per test binary.
fn python() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        if let Ok(p) = std::env::var("COREPAY_ISO_PYTHON") {
            if !p.is_empty() {
                return p;
            }
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pyiso8583-env.sh");
        let out = Command::new("bash")
            .arg(&script)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprint!("{stderr}");
        assert!(
            out.status.success(),
            "pyiso8583 could not be installed ({}, {}); the ISO 8583 interop test cannot run:\n{stderr}",
            script.display(),
            out.status
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .expect("pyiso8583-env.sh prints the interpreter")
            .trim()
            .to_string()
    })
}

/// Minor units (EUR, exponent 2) as the HTTP API formats them.
fn eur(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", minor.abs() / 100, minor.abs() % 100)
}

/// One provisioned card and its account, as the script knows it (balance in minor units).
struct Role {
    name: &'static str,
    account: u64,
    pan: String,
    yymm: &'static str,
    balance: i64,
}

const MERCHANT: &str = "ISO-SHOP-01"; // shorter than DE42's 15: the script pads it
const SETTLEMENT_BALANCE: i64 = 10_000; // 100.00

fn provision_card(s: &Server, role: &mut Role, exp: (u8, u16)) -> String {
    create_account(s, role.account, "EUR", &eur(role.balance));
    let body = format!(
        r#"{{"number":"{}","exp_month":{},"exp_year":{},"account_id":{}}}"#,
        role.pan, exp.0, exp.1, role.account
    );
    let (status, card) = s.admin().post("/v1/cards", &body);
    assert_eq!(status, 201, "{card}");
    card["id"].as_str().unwrap().to_string()
}

fn interop(header: &str, bitmap: &str) {
    let s = Server::start_with(
        2,
        &format!("[iso8583]\nheader = \"{header}\"\nbitmap = \"{bitmap}\"\n"),
    );
    let python = python();

    // Card accounts on both shards, the merchant settling on shard 1: completions and sales
    // credit across shards.
    let mut roles = vec![
        Role {
            name: "main",
            account: account_on_shard(0, 2, 1000),
            pan: card_number("400000100000001"),
            yymm: "3012",
            balance: 100_000, // 1000.00
        },
        Role {
            name: "poor",
            account: account_on_shard(1, 2, 2000),
            pan: card_number("400000100000002"),
            yymm: "3012",
            balance: 500, // 5.00
        },
        Role {
            name: "expired",
            account: account_on_shard(0, 2, 3000),
            pan: card_number("400000100000003"),
            yymm: "2001",
            balance: 10_000, // 100.00
        },
        Role {
            name: "blocked",
            account: account_on_shard(1, 2, 4000),
            pan: card_number("400000100000004"),
            yymm: "3012",
            balance: 10_000, // 100.00
        },
        Role {
            name: "frozen",
            account: account_on_shard(0, 2, 5000),
            pan: card_number("400000100000005"),
            yymm: "3012",
            balance: 10_000, // 100.00
        },
    ];
    for role in roles.iter_mut() {
        let exp = if role.name == "expired" {
            (1, 2020)
        } else {
            (12, 2030)
        };
        let card_id = provision_card(&s, role, exp);
        if role.name == "blocked" {
            let (status, v) = set_status(&s, "cards", &card_id, "blocked");
            assert_eq!(status, 200, "{v}");
        }
        if role.name == "frozen" {
            let (status, v) = set_status(&s, "accounts", &role.account.to_string(), "blocked");
            assert_eq!(status, 200, "{v}");
        }
    }
    let settlement = account_on_shard(1, 2, 9000);
    create_account(&s, settlement, "EUR", &eur(SETTLEMENT_BALANCE));
    create_merchant(&s, MERCHANT, settlement);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/iso8583_interop.py");
    let mut cmd = Command::new(python);
    cmd.arg(&script)
        .args(["--port", &s.iso.port().to_string()])
        .args(["--header", header, "--bitmap", bitmap])
        .args(["--merchant", MERCHANT, "--currency", "978"])
        .args(["--settlement", &SETTLEMENT_BALANCE.to_string()]);
    for r in &roles {
        cmd.arg("--card")
            .arg(format!("{}={}:{}:{}", r.name, r.pan, r.yymm, r.balance));
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} {}: {e}", script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("---- {header} / {bitmap}: tests/iso8583_interop.py\n{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "tests/iso8583_interop.py failed ({}) with header = {header}, bitmap = {bitmap}: {}\n\
         ---- server log (tail)\n{}",
        out.status,
        stdout
            .lines()
            .find(|l| l.starts_with("FAIL"))
            .unwrap_or("(no FAIL line; see stderr above)"),
        tail(&s.log(), 40)
    );

    // What the script's approved operations imply, checked through the HTTP admin API.
    let expect: Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("EXPECT "))
        .map(|j| serde_json::from_str(j).expect("EXPECT line is JSON"))
        .expect("the script prints its EXPECT line on success");
    let mut accounts: Vec<(&str, u64)> = roles.iter().map(|r| (r.name, r.account)).collect();
    accounts.push(("settlement", settlement));
    assert_eq!(
        expect.as_object().unwrap().len(),
        accounts.len(),
        "EXPECT names other accounts than provisioned: {expect}"
    );
    for (name, id) in accounts {
        let want = &expect[name];
        let balance = eur(want["balance"].as_i64().unwrap());
        let held = eur(want["held"].as_i64().unwrap());
        // Credits to accounts on the other shard land asynchronously.
        let a = wait_balance(&s, id, &balance);
        assert_eq!(
            a["held"], held,
            "{name} (account {id}) after the ISO 8583 traffic: {a}"
        );
        println!("http: {name} account {id}: balance {balance}, held {held} as the script implies");
    }
    wait_settled(&s);
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
fn binary_length_header_binary_bitmap() {
    interop("binary2", "binary");
}

#[test]
fn binary_length_header_hex_bitmap() {
    interop("binary2", "hex");
}

#[test]
fn ascii_length_header_binary_bitmap() {
    interop("ascii4", "binary");
}

#[test]
fn ascii_length_header_hex_bitmap() {
    interop("ascii4", "hex");
}
