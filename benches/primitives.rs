//! Criterion benchmarks of the hot primitives, one group each:
//! - `ledger`: applying an authorization, and an authorize+capture pair, to a ledger of 100k accounts
//! - `wal`: append + group commit on a real O_DIRECT file (fdatasync and `none`), per batch size
//! - `ring`: one request/reply hop between two shards over the glommio mesh
//! - `http`: parsing a pipelined HTTP request and its JSON payment body
//!
//! Figures are machine-relative: compare runs made side by side on the same machine.

use corepay::domain::{AccountId, Currency, Lsn, Millis, ShardId};
use corepay::http::json::CreatePayment;
use corepay::http::wire::{Limits, RequestReader};
use corepay::ledger::*;
use corepay::shard::disk::DmaSegmentDir;
use corepay::wal::{recover, FsSource, SyncMode, WalConfig, WalWriter};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use std::time::{Duration, Instant};

fn eur() -> Currency {
    Currency::from_alpha("EUR").unwrap()
}

fn merchant() -> MerchantFacts {
    MerchantFacts {
        id: MerchantId("BENCH".into()),
        settlement: AccountId(0),
        settlement_shard: ShardId(0),
        currency: eur(),
        mcc: 5411,
        status: Status::Active,
    }
}

fn authorize(account: u64, capture: bool, lsn: u64) -> Command {
    Command::Authorize {
        merchant: merchant(),
        card: Some(CardFacts {
            id: account,
            home: ShardId(0),
            account: AccountId(account),
            bin: "424242".into(),
            last4: "4242".into(),
            exp_month: 12,
            exp_year: 2030,
            status: Status::Active,
        }),
        presented: PresentedCard {
            bin: "424242".into(),
            last4: "4242".into(),
            exp_month: 12,
            exp_year: 2030,
        },
        pre_decline: None,
        amount: 1 + (lsn % 500) as i64,
        currency: eur(),
        capture,
        reference: Default::default(),
        now: Millis(1_800_000_000_000 + lsn),
        expires_at: Millis(1_900_000_000_000 + lsn),
        idem: None,
    }
}

fn ledger_with_accounts(n: u64) -> Ledger {
    let mut ledger = Ledger::new(ShardId(0), 1);
    for id in 0..n {
        let cmd = Command::CreateAccount {
            id: AccountId(id),
            currency: eur(),
            initial: 1 << 40,
            floor: 0,
            amount_limit: None,
            daily_count_limit: None,
        };
        ledger.apply(Lsn(id + 1), &cmd);
    }
    ledger
}

fn bench_ledger(c: &mut Criterion) {
    const ACCOUNTS: u64 = 100_000;
    let mut g = c.benchmark_group("ledger");
    g.throughput(Throughput::Elements(1));
    let mut ledger = ledger_with_accounts(ACCOUNTS);
    let mut lsn = ACCOUNTS + 1;
    g.bench_function("authorize_hold", |b| {
        b.iter(|| {
            lsn += 1;
            black_box(ledger.apply(Lsn(lsn), &authorize(lsn % ACCOUNTS, false, lsn)))
        })
    });
    let mut ledger = ledger_with_accounts(ACCOUNTS);
    g.bench_function("sale", |b| {
        b.iter(|| {
            lsn += 1;
            black_box(ledger.apply(Lsn(lsn), &authorize(lsn % ACCOUNTS, true, lsn)))
        })
    });
    g.bench_function("encode_command", |b| {
        let cmd = authorize(7, false, 7);
        b.iter(|| black_box(postcard::to_stdvec(black_box(&cmd)).unwrap()))
    });
    g.finish();
}

/// Appends `batch` records of 128 bytes and waits until they are durable: one group commit.
fn bench_wal(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for (mode, sync) in [("fdatasync", SyncMode::Fdatasync), ("none", SyncMode::None)] {
        for batch in [1usize, 16, 128] {
            let dir = tempfile::tempdir().unwrap();
            let ex = LocalExecutorBuilder::default().make().unwrap();
            let wal = ex.run(async {
                let recovered = recover(&FsSource::new(dir.path()), |_, _, _, _| {}).unwrap();
                let config = WalConfig {
                    segment_bytes: 256 << 20,
                    sync,
                    max_pending_bytes: 8 << 20,
                };
                let wal = WalWriter::open(DmaSegmentDir::new(dir.path()), &recovered, config)
                    .await
                    .unwrap();
                let w = wal.clone();
                glommio::spawn_local(async move {
                    let _ = w.run_flusher().await;
                })
                .detach();
                wal
            });
            let payload = [7u8; 128];
            g.throughput(Throughput::Elements(batch as u64));
            g.bench_function(format!("{mode}/batch_{batch}"), |b| {
                b.iter_custom(|iters| {
                    ex.run(async {
                        let start = Instant::now();
                        for _ in 0..iters {
                            let mut last = Lsn(0);
                            for _ in 0..batch {
                                last = wal.append(1, 1, &payload).unwrap();
                            }
                            wal.wait_durable(last).await.unwrap();
                        }
                        start.elapsed()
                    })
                })
            });
            wal.shutdown();
        }
    }
    g.finish();
}

/// One request and its reply between two executors on the mesh, with the executors parking
/// at once when idle and with them spinning 200 µs first (`server.spin_before_park_us`).
fn bench_ring(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(1));
    for spin_us in [0u64, 200] {
        let spin = Duration::from_micros(spin_us);
        let mesh = MeshBuilder::<u64, _>::full(2, 1024);
        let peer = mesh.clone();
        let echo = LocalExecutorBuilder::new(Placement::Unbound)
            .spin_before_park(spin)
            .spawn(move || async move {
                let (tx, rx) = peer.join().await.unwrap();
                let other = 1 - tx.peer_id();
                while let Ok(Some(v)) = rx.recv_from(other).await {
                    if v == u64::MAX {
                        break;
                    }
                    if tx.send_to(other, v).await.is_err() {
                        break;
                    }
                }
            })
            .unwrap();
        let ex = LocalExecutorBuilder::default()
            .spin_before_park(spin)
            .make()
            .unwrap();
        let (tx, rx) = ex.run(async { mesh.join().await.unwrap() });
        // Peer ids follow executor creation order: the echo executor was made first.
        let other = 1 - tx.peer_id();
        g.bench_function(format!("round_trip/spin_{spin_us}us"), |b| {
            b.iter_custom(|iters| {
                ex.run(async {
                    let start = Instant::now();
                    for i in 0..iters {
                        tx.send_to(other, i).await.unwrap();
                        assert_eq!(rx.recv_from(other).await.unwrap(), Some(i));
                    }
                    start.elapsed()
                })
            })
        });
        g.bench_function(format!("pipelined_64/spin_{spin_us}us"), |b| {
            b.iter_custom(|iters| {
                ex.run(async {
                    let start = Instant::now();
                    for i in 0..iters {
                        for k in 0..64 {
                            tx.send_to(other, i * 64 + k).await.unwrap();
                        }
                        for _ in 0..64 {
                            rx.recv_from(other).await.unwrap();
                        }
                    }
                    start.elapsed()
                })
            })
        });
        ex.run(async { tx.send_to(other, u64::MAX).await.unwrap() });
        echo.join().unwrap();
    }
    g.finish();
}

const PAYMENT_JSON: &str = r#"{"amount":"25.00","currency":"EUR","card":{"number":"4242424242424242","exp_month":12,"exp_year":2030},"capture":false,"reference":"order-1234"}"#;

fn bench_http(c: &mut Criterion) {
    let mut g = c.benchmark_group("http");
    g.throughput(Throughput::Elements(1));
    g.bench_function("json_payment_body", |b| {
        b.iter(|| {
            let p: CreatePayment = serde_json::from_str(black_box(PAYMENT_JSON)).unwrap();
            let amount = corepay::domain::parse_amount(&p.amount, eur(), false).unwrap();
            black_box((p, amount))
        })
    });
    let request = format!(
        "POST /v1/payments HTTP/1.1\r\nHost: corepay\r\nAuthorization: Bearer sk_4245_0123456789abcdef0123456789abcdef\r\n\
         Idempotency-Key: 8d7f3c1e-2b4a-4c55-9f0e-1a2b3c4d5e6f\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        PAYMENT_JSON.len(),
        PAYMENT_JSON
    );
    g.bench_function("wire_request", |b| {
        b.iter_batched(
            || request.as_bytes().to_vec(),
            |bytes| {
                let mut reader =
                    RequestReader::new(futures_lite::io::Cursor::new(bytes), Limits::default());
                black_box(futures_lite::future::block_on(reader.next()).unwrap())
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench_ledger, bench_wal, bench_ring, bench_http);
criterion_main!(benches);
