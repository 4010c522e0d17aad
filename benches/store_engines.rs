//! Criterion benchmarks for issue 9: the embedded engine for the per-shard store, measured
//! on the store's own workload. The candidates are redb (what `src/store` uses) and fjall (an
//! LSM tree). RocksDB is not benched here: its C++ build takes too long on these machines.
//! Both engines run on a temp dir on the same file system, with the same 64 MiB cache:
//! - redb is used the way `src/store/mod.rs` uses it: one write transaction per batch,
//!   committed with `Durability::None`, and a `Durability::Immediate` commit as the
//!   checkpoint.
//! - fjall uses its defaults: keyspaces in one `Database`, one atomic `OwnedWriteBatch` per
//!   batch (its journal is written to OS buffers, with no fsync), and
//!   `persist(PersistMode::SyncData)` as the checkpoint. Flushes and compactions run on its own
//!   background threads.
//!
//! Rows look like the store's: a `payments` row (u64 seq -> about 250 bytes, half
//! high-entropy bytes and half text, like a postcard-encoded payment), a `holds` index entry
//! ((expires_at, seq) -> ()), and the applied LSN in `meta`, written in every commit.
//! Each engine is first preloaded with `rows` payments (1,000,000 under `cargo bench`, 20,000
//! in test mode), committed in 4096-row commits with a checkpoint every 65,536 rows. For fjall
//! the memtables are then flushed and compactions are allowed to finish, so that the
//! preloaded rows are read from disk tables.
//!
//! Groups (each has a `redb` and a `fjall` function):
//! - `cold_read`: one random preloaded payment, opening a read transaction (redb) or snapshot
//!   (fjall) for each read, as the reader pool does. The files fit in the OS page cache, but
//!   not in the engines' caches. This measures the engine's read path and not the disk.
//! - `expiry_scan_256`: the first 256 due holds, `(0, 0)..=(now, MAX)`, like `holds_due`.
//! - `expiry_scan_256_churned`: the same scan after the oldest tenth of the holds were
//!   expired (scanned and removed 256 at a time, as the shard's `ExpireHolds` does). An LSM
//!   tree leaves tombstones there until compaction.
//! - `expiry_scan_256_churned_flushed`: the same again after fjall's memtables were flushed and
//!   its compactions finished.
//! - `write_batch_256`: one commit of 256 new payments, their holds, and the applied LSN,
//!   without fsync: the store writer's per-batch commit. Every 16 batches (4096 rows) an untimed
//!   checkpoint is taken, as the writer does.
//! - `checkpoint`: the durable commit (fsync) after 4096 rows written in 16 untimed batches.
//!
//! The two write groups also print what each row cost the whole process: CPU time of every
//! thread (fjall's flushes and compactions included, waited for at the end), and bytes sent to
//! storage (`write_bytes` of /proc/self/io). On a 2-core machine background work competes
//! with the shards for the same cores, and criterion's times do not show it.
//!
//! Figures are machine-relative: compare runs made side by side on the same machine.

use criterion::{
    black_box, criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode, Throughput,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cell::Cell;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

const VALUE_BYTES: usize = 250;
const BATCH: u64 = 256;
/// Batches between two checkpoints (4096 rows).
const BATCHES_PER_CHECKPOINT: u64 = 16;
const CACHE_BYTES: usize = 64 << 20;
const T0_MS: u64 = 1_750_000_000_000;
const DAY_MS: u64 = 86_400_000;
const HOLD_TTL_MS: u64 = 7 * DAY_MS;
/// A time by which every preloaded hold is due.
const NOW_MS: u64 = T0_MS + 3_650 * DAY_MS;

/// Payments preloaded into each engine: the full size only in bench mode (`--bench`), so that
/// `cargo test --benches` stays quick.
fn preload_rows() -> u64 {
    if std::env::args().any(|a| a == "--bench") {
        1_000_000
    } else {
        20_000
    }
}

fn mix(mut x: u64) -> u64 {
    // splitmix64
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A payment's hold expiry: its authorization time (ten payments a second) plus the hold TTL
/// (`payments.hold_ttl_secs`, 7 days), as `gateway::service` sets it. The holds index thus
/// grows at its end, like the payments table.
fn expires_at(seq: u64) -> u64 {
    T0_MS + seq * 100 + HOLD_TTL_MS
}

/// About 250 bytes per payment: the seq, 117 high-entropy bytes (hashes, ids, amounts) and
/// text (merchant, reference, currency, status).
fn payment_bytes(seq: u64, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&seq.to_le_bytes());
    let mut x = seq;
    while out.len() < 125 {
        x = mix(x);
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(125);
    let text = format!(
        "merchant-{:06}|order-{seq:012}|EUR|authorized|CORNER SHOP LONDON GB|card 4111 **** {:04}|",
        seq % 997,
        seq % 10_000
    );
    out.extend_from_slice(text.as_bytes());
    out.resize(VALUE_BYTES, b' ');
}

/// What the benches need of an engine, in the store's terms.
trait Engine {
    /// One commit of payments `first..first + n`, their holds and `applied`, without fsync.
    fn write_batch(&self, first: u64, n: u64, applied: u64);
    /// A durable commit of `applied`: everything before it survives power loss.
    fn checkpoint(&self, applied: u64);
    /// Reads one payment in a read transaction of its own; returns its first byte.
    fn read(&self, seq: u64) -> u8;
    /// The first `limit` due holds as `(expires_at, seq)`.
    fn holds_due(&self, now: u64, limit: usize) -> Vec<(u64, u64)>;
    /// Removes holds in one commit without fsync.
    fn remove_holds(&self, holds: &[(u64, u64)], applied: u64);
    /// Lets background work (flushes, compactions) finish.
    fn settle(&self) {}
}

mod redb_engine {
    use super::*;
    use redb::{Database, Durability, TableDefinition};

    const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
    const PAYMENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("payments");
    const HOLDS: TableDefinition<(u64, u64), ()> = TableDefinition::new("holds");

    pub struct Redb(Database);

    impl Redb {
        pub fn open(dir: &Path) -> Redb {
            let db = Database::builder()
                .set_cache_size(CACHE_BYTES)
                .create(dir.join("store.redb"))
                .unwrap();
            let mut txn = db.begin_write().unwrap();
            txn.open_table(META).unwrap();
            txn.open_table(PAYMENTS).unwrap();
            txn.open_table(HOLDS).unwrap();
            txn.set_durability(Durability::Immediate);
            txn.commit().unwrap();
            Redb(db)
        }

        fn commit(
            &self,
            applied: u64,
            durability: Durability,
            f: impl FnOnce(&redb::WriteTransaction),
        ) {
            let mut txn = self.0.begin_write().unwrap();
            f(&txn);
            {
                let mut meta = txn.open_table(META).unwrap();
                meta.insert("applied_lsn", applied.to_le_bytes().as_slice())
                    .unwrap();
            }
            txn.set_durability(durability);
            txn.commit().unwrap();
        }
    }

    impl Engine for Redb {
        fn write_batch(&self, first: u64, n: u64, applied: u64) {
            self.commit(applied, Durability::None, |txn| {
                let mut payments = txn.open_table(PAYMENTS).unwrap();
                let mut holds = txn.open_table(HOLDS).unwrap();
                let mut value = Vec::with_capacity(VALUE_BYTES);
                for seq in first..first + n {
                    payment_bytes(seq, &mut value);
                    payments.insert(seq, value.as_slice()).unwrap();
                    holds.insert((expires_at(seq), seq), ()).unwrap();
                }
            });
        }

        fn checkpoint(&self, applied: u64) {
            self.commit(applied, Durability::Immediate, |_| {});
        }

        fn read(&self, seq: u64) -> u8 {
            let txn = self.0.begin_read().unwrap();
            let table = txn.open_table(PAYMENTS).unwrap();
            let row = table.get(seq).unwrap().expect("preloaded");
            row.value()[0]
        }

        fn holds_due(&self, now: u64, limit: usize) -> Vec<(u64, u64)> {
            let txn = self.0.begin_read().unwrap();
            let table = txn.open_table(HOLDS).unwrap();
            let mut due = Vec::with_capacity(limit);
            for row in table
                .range((0u64, 0u64)..=(now, u64::MAX))
                .unwrap()
                .take(limit)
            {
                due.push(row.unwrap().0.value());
            }
            due
        }

        fn remove_holds(&self, due: &[(u64, u64)], applied: u64) {
            self.commit(applied, Durability::None, |txn| {
                let mut holds = txn.open_table(HOLDS).unwrap();
                for &hold in due {
                    holds.remove(hold).unwrap();
                }
            });
        }
    }
}

mod fjall_engine {
    use super::*;
    use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};

    pub struct Fjall {
        db: Database,
        meta: Keyspace,
        payments: Keyspace,
        holds: Keyspace,
    }

    fn hold_key((at, seq): (u64, u64)) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&at.to_be_bytes());
        k[8..].copy_from_slice(&seq.to_be_bytes());
        k
    }

    impl Fjall {
        pub fn open(dir: &Path) -> Fjall {
            let db = Database::builder(dir)
                .cache_size(CACHE_BYTES as u64)
                .open()
                .unwrap();
            let meta = db.keyspace("meta", KeyspaceCreateOptions::default).unwrap();
            let payments = db
                .keyspace("payments", KeyspaceCreateOptions::default)
                .unwrap();
            let holds = db
                .keyspace("holds", KeyspaceCreateOptions::default)
                .unwrap();
            db.persist(PersistMode::SyncData).unwrap();
            Fjall {
                db,
                meta,
                payments,
                holds,
            }
        }
    }

    impl Engine for Fjall {
        fn write_batch(&self, first: u64, n: u64, applied: u64) {
            let mut batch = self.db.batch();
            let mut value = Vec::with_capacity(VALUE_BYTES);
            for seq in first..first + n {
                payment_bytes(seq, &mut value);
                batch.insert(&self.payments, seq.to_be_bytes(), value.as_slice());
                batch.insert(&self.holds, hold_key((expires_at(seq), seq)), []);
            }
            batch.insert(&self.meta, "applied_lsn", applied.to_le_bytes());
            batch.commit().unwrap();
        }

        fn checkpoint(&self, applied: u64) {
            let mut batch = self.db.batch();
            batch.insert(&self.meta, "applied_lsn", applied.to_le_bytes());
            batch.commit().unwrap();
            self.db.persist(PersistMode::SyncData).unwrap();
        }

        fn read(&self, seq: u64) -> u8 {
            let snapshot = self.db.snapshot();
            let row = snapshot
                .get(&self.payments, seq.to_be_bytes())
                .unwrap()
                .expect("preloaded");
            row[0]
        }

        fn holds_due(&self, now: u64, limit: usize) -> Vec<(u64, u64)> {
            let snapshot = self.db.snapshot();
            let mut due = Vec::with_capacity(limit);
            let range = hold_key((0, 0))..=hold_key((now, u64::MAX));
            for row in snapshot.range(&self.holds, range).take(limit) {
                let key = row.key().unwrap();
                let at = u64::from_be_bytes(key[..8].try_into().unwrap());
                let seq = u64::from_be_bytes(key[8..].try_into().unwrap());
                due.push((at, seq));
            }
            due
        }

        fn remove_holds(&self, due: &[(u64, u64)], applied: u64) {
            let mut batch = self.db.batch();
            for &hold in due {
                batch.remove(&self.holds, hold_key(hold));
            }
            batch.insert(&self.meta, "applied_lsn", applied.to_le_bytes());
            batch.commit().unwrap();
        }

        fn settle(&self) {
            self.db.persist(PersistMode::SyncData).unwrap();
            for keyspace in [&self.meta, &self.payments, &self.holds] {
                keyspace.rotate_memtable_and_wait().unwrap();
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            while (self.db.outstanding_flushes() > 0 || self.db.active_compactions() > 0)
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// One engine on its own temp dir, with the next payment seq and LSN to write.
struct Fixture {
    name: &'static str,
    engine: Box<dyn Engine>,
    next: Cell<u64>,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(name: &'static str, open: impl FnOnce(&Path) -> Box<dyn Engine>, rows: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path());
        let fixture = Fixture {
            name,
            engine,
            next: Cell::new(0),
            dir,
        };
        let start = Instant::now();
        let chunk = BATCH * BATCHES_PER_CHECKPOINT;
        while fixture.next.get() < rows {
            let n = chunk.min(rows - fixture.next.get());
            fixture.write_batch(n);
            if fixture.next.get() % (16 * chunk) == 0 {
                fixture.checkpoint();
            }
        }
        fixture.checkpoint();
        fixture.engine.settle();
        eprintln!(
            "store_engines: {name}: preloaded {rows} payments in {:.1?} ({} MiB on disk)",
            start.elapsed(),
            dir_bytes(fixture.dir.path()) >> 20
        );
        fixture
    }

    fn write_batch(&self, n: u64) {
        let first = self.next.get();
        self.engine.write_batch(first, n, first + n);
        self.next.set(first + n);
    }

    fn checkpoint(&self) {
        self.engine.checkpoint(self.next.get());
    }

    /// Expires the oldest holds 256 at a time, as the shard's `ExpireHolds` does.
    fn expire_holds(&self, count: u64) {
        let start = Instant::now();
        let mut expired = 0;
        while expired < count {
            let due = self.engine.holds_due(NOW_MS, BATCH as usize);
            assert_eq!(due.len(), BATCH as usize);
            self.engine.remove_holds(&due, self.next.get());
            expired += due.len() as u64;
            if expired % (BATCH * BATCHES_PER_CHECKPOINT) == 0 {
                self.checkpoint();
            }
        }
        self.checkpoint();
        eprintln!(
            "store_engines: {}: expired {expired} holds in {:.1?}",
            self.name,
            start.elapsed()
        );
    }
}

/// What the process has used so far: CPU time of all its threads, and bytes it has sent to
/// storage (0 where /proc/self/io is missing).
#[derive(Clone, Copy)]
struct Usage {
    cpu: Duration,
    written: u64,
}

fn usage() -> Usage {
    // SAFETY: getrusage only writes the struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut ru), 0);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1_000);
    let written = std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("write_bytes: "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0);
    Usage {
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        written,
    }
}

/// Runs `bench` (which writes rows into `f`), then a checkpoint and the engine's background
/// work, and prints the CPU time and bytes written per row.
fn accounted<T>(group: &str, fixtures: &[Fixture], f: &Fixture, bench: impl FnOnce() -> T) {
    for other in fixtures {
        other.engine.settle();
    }
    let (before, rows) = (usage(), f.next.get());
    bench();
    f.checkpoint();
    f.engine.settle();
    let after = usage();
    let rows = f.next.get() - rows;
    eprintln!(
        "store_engines: {group}/{}: {rows} rows written; per row: {:.2} µs CPU (all threads), {} bytes to storage",
        f.name,
        (after.cpu - before.cpu).as_secs_f64() * 1e6 / rows as f64,
        (after.written - before.written) / rows,
    );
}

/// Bytes allocated on disk under `dir` (preallocated, unwritten space is not counted).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.blocks() * 512,
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn bench_scan(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, f: &Fixture) {
    group.bench_function(f.name, |b| {
        b.iter(|| {
            let due = f.engine.holds_due(black_box(NOW_MS), BATCH as usize);
            assert_eq!(due.len(), BATCH as usize);
            due
        })
    });
}

fn store_engines(c: &mut Criterion) {
    let rows = preload_rows();
    let fixtures = [
        Fixture::new("redb", |dir| Box::new(redb_engine::Redb::open(dir)), rows),
        Fixture::new(
            "fjall",
            |dir| Box::new(fjall_engine::Fjall::open(dir)),
            rows,
        ),
    ];

    let mut g = c.benchmark_group("cold_read");
    g.throughput(Throughput::Elements(1));
    for f in &fixtures {
        let mut rng = SmallRng::seed_from_u64(9);
        g.bench_function(f.name, |b| b.iter(|| f.engine.read(rng.gen_range(0..rows))));
    }
    g.finish();

    let mut g = c.benchmark_group("expiry_scan_256");
    g.throughput(Throughput::Elements(BATCH));
    for f in &fixtures {
        bench_scan(&mut g, f);
    }
    g.finish();

    for f in &fixtures {
        f.expire_holds((rows / 10).next_multiple_of(BATCH));
    }
    let mut g = c.benchmark_group("expiry_scan_256_churned");
    g.throughput(Throughput::Elements(BATCH));
    for f in &fixtures {
        bench_scan(&mut g, f);
    }
    g.finish();

    for f in &fixtures {
        f.engine.settle();
    }
    let mut g = c.benchmark_group("expiry_scan_256_churned_flushed");
    g.throughput(Throughput::Elements(BATCH));
    for f in &fixtures {
        bench_scan(&mut g, f);
    }
    g.finish();

    let mut g = c.benchmark_group("write_batch_256");
    g.throughput(Throughput::Elements(BATCH))
        .measurement_time(Duration::from_secs(10));
    for f in &fixtures {
        let batches = Cell::new(0u64);
        accounted("write_batch_256", &fixtures, f, || {
            g.bench_function(f.name, |b| {
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        f.write_batch(BATCH);
                        timed += start.elapsed();
                        batches.set(batches.get() + 1);
                        if batches.get() % BATCHES_PER_CHECKPOINT == 0 {
                            f.checkpoint();
                        }
                    }
                    timed
                })
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("checkpoint");
    g.sampling_mode(SamplingMode::Flat).sample_size(20);
    for f in &fixtures {
        accounted("checkpoint", &fixtures, f, || {
            g.bench_function(f.name, |b| {
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        for _ in 0..BATCHES_PER_CHECKPOINT {
                            f.write_batch(BATCH);
                        }
                        let start = Instant::now();
                        f.checkpoint();
                        timed += start.elapsed();
                    }
                    timed
                })
            })
        });
    }
    g.finish();

    for f in &fixtures {
        eprintln!(
            "store_engines: {}: {} payments, {} MiB on disk at the end",
            f.name,
            f.next.get(),
            dir_bytes(f.dir.path()) >> 20
        );
    }
}

criterion_group!(benches, store_engines);
criterion_main!(benches);
