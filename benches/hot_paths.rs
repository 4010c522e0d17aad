//! Criterion benchmarks of one authorization's hot path, piece by piece: every CPU step an
//! approved payment takes between "request parsed" and "reply bytes ready", other than
//! those `primitives.rs` (ledger apply, command encode, WAL commit, ring hop, HTTP request
//! parse) and `iso8583.rs` (0100 decode/encode) already cover. Each bench measures one thing,
//! so that a regression points to its function:
//! - `secrets`: the API key's merchant id and SHA-256 (authentication), the idempotency key
//!   hash and keyed body fingerprint, the Luhn check, the HMAC-SHA-256 of the PAN (card lookup)
//! - `routing`: the shard of an account, a card hash, a merchant id and an idempotency key
//! - `idem_index`: the idempotency index of one shard holding 1M keys: a new key's begin + end
//!   in steady state (one key expires as one arrives), and a retried request's begin
//! - `wal_format`: framing real `Authorize` commands into a CRC32C-checked batch, 1 and 64
//!   records
//! - `wal_replay`: decoding one `Authorize` record at recovery (per-record replay cost)
//! - `http_reply`: the approved payment's JSON body, and the 201 response framing around it
//! - `iso8583_flow`: the ISO 8583 duplicate key, the 0110 answer (echoed fields + DE38 +
//!   DE39) and its encoding (the flows need a live gateway, so only these pure steps are here)
//! - `metrics`: classifying the request's endpoint and recording its latency
//!
//! Figures are machine-relative: compare runs made side by side on the same machine.

mod common;
use corepay::domain::{AccountId, Currency, Lsn, Millis, ShardId};
use corepay::gateway::idem_index::{IdemIndex, Local};
use corepay::http::{json, wire};
use corepay::iso8583::flows::{answer, duplicate_key, response_mti};
use corepay::iso8583::{encode, BitmapEncoding, Message};
use corepay::ledger::*;
use corepay::metrics;
use corepay::secrets::{self, PanKey};
use corepay::shard::routing;
use corepay::wal::format::BatchEncoder;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

const PAN: &str = "4111111111111111";
const API_KEY: &str = "sk_53484f5031_0123456789abcdef0123456789abcdef";
const IDEMPOTENCY_KEY: &[u8] = b"8d7f3c1e-2b4a-4c55-9f0e-1a2b3c4d5e6f";
const PAYMENT_JSON: &str = r#"{"amount":"25.00","currency":"EUR","card":{"number":"4111111111111111","exp_month":12,"exp_year":2030},"capture":false,"reference":"order-1234"}"#;
const SHARDS: u16 = 8;

fn eur() -> Currency {
    Currency::from_alpha("EUR").unwrap()
}

fn pan_key() -> PanKey {
    PanKey::from_hex(&"5a".repeat(secrets::PAN_KEY_BYTES)).unwrap()
}

fn bench_secrets(c: &mut Criterion) {
    let mut g = c.benchmark_group("secrets");
    g.throughput(Throughput::Elements(1));
    g.bench_function("merchant_of_api_key", |b| {
        b.iter(|| black_box(secrets::merchant_of_api_key(black_box(API_KEY))))
    });
    g.bench_function("hash_api_key", |b| {
        b.iter(|| black_box(secrets::hash_api_key(black_box(API_KEY))))
    });
    g.bench_function("idem_key_hash16", |b| {
        b.iter(|| {
            black_box(secrets::hash16(&[
                b"merchant",
                black_box(b"SHOP1"),
                black_box(IDEMPOTENCY_KEY),
            ]))
        })
    });
    let key = pan_key();
    g.bench_function("body_mac16", |b| {
        b.iter(|| {
            black_box(key.mac16(&[
                black_box(b"/v1/payments"),
                black_box(PAYMENT_JSON.as_bytes()),
            ]))
        })
    });
    g.bench_function("luhn_valid", |b| {
        b.iter(|| black_box(secrets::luhn_valid(black_box(PAN))))
    });
    g.bench_function("hash_pan", |b| {
        b.iter(|| black_box(key.hash_pan(black_box(PAN))))
    });
    g.finish();
}

fn bench_routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("routing");
    g.throughput(Throughput::Elements(1));
    let card = pan_key().hash_pan(PAN);
    let merchant = MerchantId("SHOP1".into());
    let idem = secrets::hash16(&[b"merchant", b"SHOP1", IDEMPOTENCY_KEY]);
    g.bench_function("shard_of_account", |b| {
        b.iter(|| {
            black_box(routing::shard_of_account(
                black_box(AccountId(123_456)),
                black_box(SHARDS),
            ))
        })
    });
    g.bench_function("shard_of_card", |b| {
        b.iter(|| black_box(routing::shard_of_card(black_box(&card), black_box(SHARDS))))
    });
    g.bench_function("shard_of_merchant", |b| {
        b.iter(|| {
            black_box(routing::shard_of_merchant(
                black_box(&merchant),
                black_box(SHARDS),
            ))
        })
    });
    g.bench_function("shard_of_key", |b| {
        b.iter(|| black_box(routing::shard_of_key(black_box(&idem), black_box(SHARDS))))
    });
    g.finish();
}

/// A uniformly spread 16-byte key for sequence number `i`, like the SHA-256 prefixes the
/// index really holds, at a few nanoseconds rather than a hash's cost.
fn key_of(i: u64) -> Hash16 {
    fn mix(mut x: u64) -> u64 {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&mix(i).to_le_bytes());
    key[8..].copy_from_slice(&mix(!i).to_le_bytes());
    key
}

/// An index of about `n` finished keys, every one already in its holder's store (so any may
/// leave for a new key): the steady state of a busy shard.
fn idem_index_with(n: u64) -> IdemIndex {
    let mut idx = IdemIndex::new(86_400_000, n as usize, true, Millis(1));
    for i in 0..n {
        let key = key_of(i);
        if idx.begin(key, [7; 16], Millis(i), &all_stored) == Local::Unknown {
            idx.resolve(key, [7; 16], None);
            idx.end(key, Some((ShardId((i % 8) as u16), Lsn(i + 1))));
        }
    }
    idx
}

fn all_stored(_: ShardId) -> Lsn {
    Lsn(u64::MAX)
}

fn bench_idem_index(c: &mut Criterion) {
    const KEYS: u64 = 1_000_000;
    let mut g = c.benchmark_group("idem_index");
    g.throughput(Throughput::Elements(1));

    let mut idx = idem_index_with(KEYS);
    let mut next = KEYS;
    g.bench_function("begin_end_new_key_1m", |b| {
        b.iter(|| {
            // A new key takes the slot of a stored one; the stores said "unknown" (not timed
            // here: that is a store read); end finishes it.
            let key = key_of(next);
            let begun = idx.begin(key, [7; 16], Millis(next), &all_stored);
            debug_assert_eq!(begun, Local::Unknown);
            idx.resolve(key, [7; 16], None);
            idx.end(key, Some((ShardId(3), Lsn(next))));
            next += 1;
            black_box(begun)
        })
    });
    assert!(idx.len() <= idx.capacity());
    drop(idx);

    let mut idx = idem_index_with(KEYS);
    let mut i = 0u64;
    g.bench_function("begin_duplicate_1m", |b| {
        b.iter(|| {
            // A retried request: its key is there (or left for the store) and finished.
            i = (i + 7919) % KEYS;
            let begun = idx.begin(key_of(i), [7; 16], Millis(KEYS - 1), &all_stored);
            if begun == Local::Unknown {
                idx.resolve(key_of(i), [7; 16], Some((ShardId(0), [7; 16], Millis(i))));
            }
            black_box(begun)
        })
    });
    g.finish();
}

fn merchant() -> MerchantFacts {
    MerchantFacts {
        id: MerchantId("SHOP1".into()),
        settlement: AccountId(1),
        settlement_shard: ShardId(0),
        currency: eur(),
        mcc: 5411,
        status: Status::Active,
    }
}

/// An HTTP authorization as `Gateway::create_payment` logs it, with its idempotency tag.
fn authorize_command(seq: u64) -> Command {
    Command::Authorize {
        merchant: merchant(),
        card: Some(CardFacts {
            id: 4096 + seq,
            home: ShardId(3),
            account: AccountId(100_000 + seq),
            bin: "411111".into(),
            last4: "1111".into(),
            exp_month: 12,
            exp_year: 2030,
            status: Status::Active,
        }),
        presented: PresentedCard {
            bin: "411111".into(),
            last4: "1111".into(),
            exp_month: 12,
            exp_year: 2030,
        },
        pre_decline: None,
        amount: 2500,
        currency: eur(),
        capture: false,
        reference: "order-1234".into(),
        now: Millis(1_800_000_000_000 + seq),
        expires_at: Millis(1_800_604_800_000 + seq),
        idem: Some(IdemTag {
            key: key_of(seq),
            body: key_of(!seq),
        }),
    }
}

fn bench_wal_format(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal_format");
    let payloads: Vec<Vec<u8>> = (0..64)
        .map(|i| postcard::to_stdvec(&authorize_command(i)).unwrap())
        .collect();
    for records in [1usize, 64] {
        let mut buf = Vec::with_capacity(1 << 20);
        g.throughput(Throughput::Elements(records as u64));
        g.bench_function(format!("batch_{records}"), |b| {
            b.iter(|| {
                buf.clear();
                let mut enc = BatchEncoder::begin(&mut buf, Lsn(1_000_001));
                for p in &payloads[..records] {
                    enc.push(&mut buf, RECORD_KIND_COMMAND, COMMAND_VERSION, black_box(p));
                }
                black_box(enc.finish(&mut buf))
            })
        });
    }
    g.finish();
}

fn bench_wal_replay(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal_replay");
    let payload = postcard::to_stdvec(&authorize_command(42)).unwrap();
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_command", |b| {
        b.iter(|| {
            black_box(
                decode_command(RECORD_KIND_COMMAND, COMMAND_VERSION, black_box(&payload)).unwrap(),
            )
        })
    });
    g.finish();
}

fn approved_payment() -> PaymentView {
    PaymentView {
        id: PaymentRef {
            shard: ShardId(3),
            seq: 1_234_567,
        },
        merchant: MerchantId("SHOP1".into()),
        status: PaymentStatus::Authorized,
        amount: 2500,
        amount_captured: 0,
        amount_refunded: 0,
        currency: eur(),
        bin: "411111".into(),
        last4: "1111".into(),
        approval_code: Some("K7Q2ZD".into()),
        decline: None,
        reference: "order-1234".into(),
        created_at: Millis(1_800_000_000_000),
    }
}

fn bench_http_reply(c: &mut Criterion) {
    let mut g = c.benchmark_group("http_reply");
    g.throughput(Throughput::Elements(1));
    let view = approved_payment();
    // What `api::Response::json` does with an approved payment.
    g.bench_function("payment_json_body", |b| {
        b.iter(|| black_box(serde_json::to_vec(&json::payment(black_box(&view))).unwrap()))
    });
    let body = serde_json::to_vec(&json::payment(&view)).unwrap();
    let mut out = Vec::with_capacity(1024);
    g.bench_function("write_response_201", |b| {
        b.iter(|| {
            out.clear();
            wire::write_response(
                &mut out,
                201,
                &[],
                "application/json",
                black_box(&body),
                true,
            );
            black_box(out.len())
        })
    });
    g.finish();
}

/// The approved 0110 as `IsoApi::respond` builds it.
fn approved_0110(request: &Message) -> Message {
    let mut r = answer(request, response_mti(request.mti()).unwrap(), b"00");
    r.set(38, b"K7Q2ZD");
    r
}

fn bench_iso8583_flow(c: &mut Criterion) {
    let mut g = c.benchmark_group("iso8583_flow");
    g.throughput(Throughput::Elements(1));
    let request = common::authorization();
    g.bench_function("duplicate_key", |b| {
        b.iter(|| {
            let m = black_box(&request);
            black_box(duplicate_key(
                m.get(32).unwrap(),
                m.get(41).unwrap(),
                m.get(11).unwrap(),
                m.get(7).unwrap(),
            ))
        })
    });
    g.bench_function("answer_0110", |b| {
        b.iter(|| black_box(approved_0110(black_box(&request))))
    });
    let response = approved_0110(&request);
    let mut out = Vec::with_capacity(256);
    g.bench_function("encode_0110", |b| {
        b.iter(|| {
            out.clear();
            encode(black_box(&response), BitmapEncoding::Binary, &mut out).unwrap();
            black_box(out.len())
        })
    });
    g.finish();
}

fn bench_metrics(c: &mut Criterion) {
    let mut g = c.benchmark_group("metrics");
    g.throughput(Throughput::Elements(1));
    g.bench_function("classify", |b| {
        b.iter(|| {
            black_box(metrics::classify(
                black_box(true),
                black_box("/v1/payments"),
            ))
        })
    });
    let mut micros = 0u64;
    g.bench_function("record", |b| {
        b.iter(|| {
            // Latencies spread over 0.2..3.3 ms, so different buckets are touched.
            micros = (micros + 997) % 3_100;
            metrics::record(black_box(0), black_box(201), black_box(200 + micros))
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_secrets,
    bench_routing,
    bench_idem_index,
    bench_wal_format,
    bench_wal_replay,
    bench_http_reply,
    bench_iso8583_flow,
    bench_metrics
);
criterion_main!(benches);
