//! The per-shard store: everything that grows with traffic, on disk, as of an applied LSN.
//!
//! One redb file per shard (`data_dir/shard-K/store.redb`). It is fed from the durable WAL
//! by the shard's store writer (`writer`), which replays records through a ledger of its own
//! and writes every changed row together with the LSN it has applied, in one transaction.
//! Every `checkpoint_interval` the commit is durable (fsync): that LSN is the checkpoint,
//! recovery replays only the WAL after it, and WAL segments wholly before it may be deleted.
//! Cold payments are read by a bounded pool of threads (`reader`), never on a shard's
//! executor.
//!
//! Why redb: a pure-Rust, single-file B-tree with MVCC readers on any thread, atomic
//! multi-table commits, checksummed commit slots, and an explicit non-durable commit
//! (`Durability::None`) that becomes durable with the next durable one — exactly the
//! checkpoint protocol below, with no journal of its own duplicating our WAL. It builds in
//! seconds on these 2-core machines (RocksDB's C++ build takes many minutes). See
//! ARCHITECTURE.md "Store".
//!
//! Owns: the file format of the tables below. Never: SQL, sockets, glommio, or a decision
//! about a payment (the ledger decides; the store keeps rows).

pub mod reader;
pub mod space;
pub mod writer;

use crate::domain::{AccountId, Lsn, Millis, ShardId};
use crate::ledger::state::{Account, Card, IdemRecord, Merchant, Payment, Scalars};
use crate::ledger::{Changes, Credit, Hash16, Ledger, MerchantId, Snapshot, TransferView};
use redb::{Database, Durability, ReadableTable, TableDefinition, WriteTransaction};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const ACCOUNTS: TableDefinition<u64, &[u8]> = TableDefinition::new("accounts");
const CARDS: TableDefinition<u64, &[u8]> = TableDefinition::new("cards");
const MERCHANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("merchants");
const PAYMENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("payments");
/// Uncaptured authorizations by (expires_at, seq): the index that releases holds.
const HOLDS: TableDefinition<(u64, u64), ()> = TableDefinition::new("holds");
const IDEM: TableDefinition<u128, &[u8]> = TableDefinition::new("idempotency");
/// Idempotency records by (at, key): what pruning walks.
const IDEM_BY_TIME: TableDefinition<(u64, u128), ()> = TableDefinition::new("idempotency_by_time");
const TRANSFERS: TableDefinition<u128, &[u8]> = TableDefinition::new("transfers");
const OUTBOX: TableDefinition<(u16, u64), &[u8]> = TableDefinition::new("outbox");

/// The change log: each record's effects (rows after, journal entries), kept until every
/// replication sink has stored them.
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");

const META_APPLIED: &str = "applied_lsn";
const META_SCALARS: &str = "scalars";
const META_FORMAT: &str = "format";
const META_CHANGES_BYTES: &str = "changes_bytes";
/// The LSN the accounts table is current to (absent: every commit wrote accounts).
const META_ACCOUNTS_AT: &str = "accounts_at";
/// How long `export` and `seed` wait for the writer to bring the accounts table up to the
/// LSN applied.
const ACCOUNTS_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// Version of the rows' encoding (postcard of the ledger's types); bump with any change.
pub const STORE_FORMAT: u64 = 1;

/// A store's accounts and payments as of an LSN (`Store::export`).
pub type Export = (Lsn, Vec<(AccountId, Account)>, Vec<Payment>);

/// One record's effects as the change log keeps them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Change {
    /// The time the command carried (None for internal bookkeeping without one).
    pub time: Option<Millis>,
    pub effects: crate::ledger::effects::Effects,
}

pub fn store_path(data_dir: &Path, shard: u16) -> PathBuf {
    data_dir.join(format!("shard-{shard}")).join("store.redb")
}

/// An operating error of the store, with the file it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

fn err(path: &Path, what: &str, e: impl fmt::Display) -> StoreError {
    StoreError(format!("store {}: {what}: {e}", path.display()))
}

/// One shard's store file.
pub struct Store {
    db: Database,
    path: PathBuf,
    /// The same file, opened for `start_writeback` (redb does not lend its descriptor).
    file: std::fs::File,
    /// A reader that needs the accounts table current (`export`, `seed`) asks the writer for
    /// a commit that writes it.
    accounts_wanted: AtomicBool,
}

impl Store {
    /// Opens (or creates) the store. A damaged file is refused with one line naming it.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(path, "create directory", e))?;
        }
        // redb asserts on some damaged files (a truncated one) instead of returning an
        // error: opening is the one place where such a panic is caught and turned into one.
        let opened =
            catch_foreign_panic(|| Database::builder().set_cache_size(cache_bytes).create(path));
        let db = match opened {
            Ok(result) => {
                result.map_err(|e| err(path, "damaged or unreadable (cannot open)", e))?
            }
            Err(panic) => return Err(err(path, "damaged (cannot open)", panic)),
        };
        let file = std::fs::File::open(path).map_err(|e| err(path, "open", e))?;
        let store = Store {
            db,
            path: path.to_path_buf(),
            file,
            accounts_wanted: AtomicBool::new(false),
        };
        store.init()?;
        Ok(store)
    }

    /// Starts writing the file's dirty pages to disk without waiting for them
    /// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). A commit that is not durable leaves its
    /// pages in the page cache; started after each one, the write-back goes out in small
    /// steps instead of all at the checkpoint's fsync, where it would queue the WAL's
    /// fdatasync behind hundreds of megabytes (BENCHMARKS.md, "checkpoint write-back").
    /// Durability still comes only from the checkpoint's fsync.
    pub fn start_writeback(&self) -> Result<(), StoreError> {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain syscall on a descriptor this struct owns; offset 0 and length 0
        // mean the whole file.
        let rc = unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE)
        };
        if rc != 0 {
            return Err(err(
                &self.path,
                "start write-back",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates every table, records the format, and refuses another format.
    fn init(&self) -> Result<(), StoreError> {
        let p = &self.path;
        let mut txn = self.db.begin_write().map_err(|e| err(p, "begin", e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| err(p, "meta", e))?;
            let format = meta
                .get(META_FORMAT)
                .map_err(|e| err(p, "meta", e))?
                .map(|v| u64_from(v.value()));
            match format {
                None => {
                    meta.insert(META_FORMAT, STORE_FORMAT.to_le_bytes().as_slice())
                        .map_err(|e| err(p, "meta", e))?;
                }
                Some(Ok(STORE_FORMAT)) => {}
                Some(other) => {
                    return Err(err(
                        p,
                        "format",
                        format!("{other:?}, this corepay reads format {STORE_FORMAT}"),
                    ))
                }
            }
            txn.open_table(ACCOUNTS)
                .map_err(|e| err(p, "accounts", e))?;
            txn.open_table(CARDS).map_err(|e| err(p, "cards", e))?;
            txn.open_table(MERCHANTS)
                .map_err(|e| err(p, "merchants", e))?;
            txn.open_table(PAYMENTS)
                .map_err(|e| err(p, "payments", e))?;
            txn.open_table(HOLDS).map_err(|e| err(p, "holds", e))?;
            txn.open_table(IDEM).map_err(|e| err(p, "idempotency", e))?;
            txn.open_table(IDEM_BY_TIME)
                .map_err(|e| err(p, "idempotency", e))?;
            txn.open_table(TRANSFERS)
                .map_err(|e| err(p, "transfers", e))?;
            txn.open_table(OUTBOX).map_err(|e| err(p, "outbox", e))?;
            txn.open_table(CHANGES).map_err(|e| err(p, "changes", e))?;
        }
        txn.set_durability(Durability::Immediate);
        txn.commit().map_err(|e| err(p, "commit", e))
    }

    /// The LSN the store has applied (0: nothing yet).
    pub fn applied(&self) -> Result<Lsn, StoreError> {
        let p = &self.path;
        let txn = self.db.begin_read().map_err(|e| err(p, "begin read", e))?;
        applied_in(p, &txn)
    }

    /// Builds the shard's ledger from the store: everything provisioned and every record
    /// kept in memory, with an empty window of `window` payments. O(provisioned).
    pub fn load_ledger(
        &self,
        shard: ShardId,
        shards: u16,
        window: usize,
    ) -> Result<Ledger, StoreError> {
        let p = &self.path;
        let txn = self.db.begin_read().map_err(|e| err(p, "begin read", e))?;
        let mut snap = Snapshot::default();
        let meta = txn.open_table(META).map_err(|e| err(p, "meta", e))?;
        if let Some(v) = meta.get(META_SCALARS).map_err(|e| err(p, "meta", e))? {
            snap.scalars = Some(decode::<Scalars>(p, "scalars", v.value())?);
        }
        snap.accounts = accounts_in(p, &txn)?;
        let cards = txn.open_table(CARDS).map_err(|e| err(p, "cards", e))?;
        for row in cards.iter().map_err(|e| err(p, "cards", e))? {
            let (_, v) = row.map_err(|e| err(p, "cards", e))?;
            snap.cards.push(decode::<Card>(p, "card", v.value())?);
        }
        let merchants = txn
            .open_table(MERCHANTS)
            .map_err(|e| err(p, "merchants", e))?;
        for row in merchants.iter().map_err(|e| err(p, "merchants", e))? {
            let (k, v) = row.map_err(|e| err(p, "merchants", e))?;
            let m = decode::<Merchant>(p, "merchant", v.value())?;
            snap.merchants.push((MerchantId(k.value().into()), m));
        }
        let outbox = txn.open_table(OUTBOX).map_err(|e| err(p, "outbox", e))?;
        for row in outbox.iter().map_err(|e| err(p, "outbox", e))? {
            let (k, v) = row.map_err(|e| err(p, "outbox", e))?;
            let (to, seq) = k.value();
            let entry = decode::<(Lsn, Credit)>(p, "outbox entry", v.value())?;
            snap.outbox.push(((ShardId(to), seq), entry));
        }
        Ok(Ledger::from_snapshot(shard, shards, window, snap))
    }

    /// One payment as the store has it.
    pub fn payment(&self, seq: u64) -> Result<Option<Payment>, StoreError> {
        let p = &self.path;
        let txn = self.db.begin_read().map_err(|e| err(p, "begin read", e))?;
        let table = txn
            .open_table(PAYMENTS)
            .map_err(|e| err(p, "payments", e))?;
        let row = table.get(seq).map_err(|e| err(p, "payments", e))?;
        row.map(|v| decode::<Payment>(p, "payment", v.value()))
            .transpose()
    }

    /// The time of the newest idempotency record kept (None: none).
    pub fn newest_idem_at(&self) -> Result<Option<Millis>, StoreError> {
        let p = &self.path;
        let txn = self.db.begin_read().map_err(|e| err(p, "begin read", e))?;
        let table = txn
            .open_table(IDEM_BY_TIME)
            .map_err(|e| err(p, "idempotency", e))?;
        let last = table.last().map_err(|e| err(p, "idempotency", e))?;
        Ok(last.map(|(k, _)| Millis(k.value().0)))
    }

    /// The transfer whose id hashes to `key` (`ledger::window::transfer_key`), if any.
    pub fn transfer(&self, key: &Hash16) -> Result<Option<TransferView>, StoreError> {
        let p = &self.path;
        let txn = self.db.begin_read().map_err(|e| err(p, "begin read", e))?;
        let table = txn
            .open_table(TRANSFERS)
            .map_err(|e| err(p, "transfers", e))?;
        let row = table
            .get(u128::from_le_bytes(*key))
            .map_err(|e| err(p, "transfers", e))?;
        row.map(|v| decode::<TransferView>(p, "transfer", v.value()))
            .transpose()
    }

    /// The idempotency record of `key`, if this shard's WAL logged one still kept.
    pub fn idem(&self, key: &Hash16) -> Result<Option<IdemRecord>, StoreError> {
        let p = &self.path;
        let txn = self.db.begin_read().map_err(|e| err(p, "begin read", e))?;
        let table = txn.open_table(IDEM).map_err(|e| err(p, "idempotency", e))?;
        let row = table
            .get(u128::from_le_bytes(*key))
            .map_err(|e| err(p, "idempotency", e))?;
        row.map(|v| decode::<IdemRecord>(p, "idempotency record", v.value()))
            .transpose()
    }

    /// Up to `limit` uncaptured authorizations with `expires_at <= now`, oldest first.
    pub fn holds_due(&self, now: Millis, limit: usize) -> Result<Vec<u64>, StoreError> {
        let p = &self.path;
        let txn = self.db.begin_read().map_err(|e| err(p, "begin read", e))?;
        let table = txn.open_table(HOLDS).map_err(|e| err(p, "holds", e))?;
        let mut due = Vec::new();
        for row in table
            .range((0u64, 0u64)..=(now.0, u64::MAX))
            .map_err(|e| err(p, "holds", e))?
            .take(limit)
        {
            let (k, _) = row.map_err(|e| err(p, "holds", e))?;
            due.push(k.value().1);
        }
        Ok(due)
    }

    /// Up to `max` change-log entries from `from` on, in LSN order.
    pub fn changes(&self, from: Lsn, max: usize) -> Result<Vec<(Lsn, Change)>, StoreError> {
        let p = &self.path;
        let txn = self.db.begin_read().map_err(|e| err(p, "begin read", e))?;
        let table = txn.open_table(CHANGES).map_err(|e| err(p, "changes", e))?;
        let mut out = Vec::new();
        for row in table
            .range(from.0..)
            .map_err(|e| err(p, "changes", e))?
            .take(max)
        {
            let (k, v) = row.map_err(|e| err(p, "changes", e))?;
            out.push((Lsn(k.value()), decode::<Change>(p, "change", v.value())?));
        }
        Ok(out)
    }

    /// Bytes the change log holds.
    pub fn changes_bytes(&self) -> Result<u64, StoreError> {
        let p = &self.path;
        let txn = self.db.begin_read().map_err(|e| err(p, "begin read", e))?;
        let meta = txn.open_table(META).map_err(|e| err(p, "meta", e))?;
        let v = meta
            .get(META_CHANGES_BYTES)
            .map_err(|e| err(p, "meta", e))?;
        v.map_or(Ok(0), |v| {
            u64_from(v.value()).map_err(|e| err(p, "changes_bytes", e))
        })
    }

    /// The oldest LSN still in the change log.
    pub fn oldest_change(&self) -> Result<Option<Lsn>, StoreError> {
        let p = &self.path;
        let txn = self.db.begin_read().map_err(|e| err(p, "begin read", e))?;
        let table = txn.open_table(CHANGES).map_err(|e| err(p, "changes", e))?;
        let first = table.first().map_err(|e| err(p, "changes", e))?;
        Ok(first.map(|(k, _)| Lsn(k.value())))
    }

    /// Whether a reader asked for the accounts table to be written; clears the request. The
    /// writer asks before each commit.
    pub fn take_accounts_wanted(&self) -> bool {
        self.accounts_wanted.swap(false, Ordering::AcqRel)
    }

    /// Asks the writer for a commit that writes the accounts table.
    pub fn want_accounts(&self) {
        self.accounts_wanted.store(true, Ordering::Release);
    }

    /// A read transaction in which the accounts table is current to the LSN applied. The
    /// writer defers account rows to its checkpoints (an account's leaf is a random page per
    /// record otherwise); this asks it for a commit that writes them, and waits for one.
    fn read_with_accounts(&self) -> Result<(redb::ReadTransaction, Lsn), StoreError> {
        let p = &self.path;
        let deadline = std::time::Instant::now() + ACCOUNTS_WAIT;
        loop {
            let txn = self.db.begin_read().map_err(|e| err(p, "begin read", e))?;
            let applied = applied_in(p, &txn)?;
            if accounts_at_in(p, &txn)?.is_none_or(|at| at == applied) {
                return Ok((txn, applied));
            }
            if std::time::Instant::now() > deadline {
                return Err(err(
                    p,
                    "accounts",
                    format!(
                        "the writer did not bring the accounts up to lsn {} within {} s",
                        applied.0,
                        ACCOUNTS_WAIT.as_secs()
                    ),
                ));
            }
            drop(txn);
            self.want_accounts();
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Every account and payment, and the LSN they are as of, from one consistent read
    /// (reconciliation; O(state), never on a request path).
    pub fn export(&self) -> Result<Export, StoreError> {
        let p = &self.path;
        let (txn, applied) = self.read_with_accounts()?;
        let accounts = accounts_in(p, &txn)?;
        let mut payments = Vec::new();
        let table = txn
            .open_table(PAYMENTS)
            .map_err(|e| err(p, "payments", e))?;
        for row in table.iter().map_err(|e| err(p, "payments", e))? {
            let (_, v) = row.map_err(|e| err(p, "payments", e))?;
            payments.push(decode::<Payment>(p, "payment", v.value())?);
        }
        Ok((applied, accounts, payments))
    }

    /// A consistent copy of the shard's state as of the LSN the store has applied, read from
    /// one read transaction: what provisioning made (accounts, cards, merchants, the shard's
    /// currency totals) at once, payments in pieces (`SeedReader::payments`). Re-seeds a sink
    /// that needs records the change log no longer has. O(state), never on a request path.
    pub fn seed(&self) -> Result<SeedReader, StoreError> {
        let p = &self.path;
        let (txn, at) = self.read_with_accounts()?;
        let meta = txn.open_table(META).map_err(|e| err(p, "meta", e))?;
        let scalars = match meta.get(META_SCALARS).map_err(|e| err(p, "meta", e))? {
            Some(v) => Some(decode::<Scalars>(p, "scalars", v.value())?),
            None => None,
        };
        let shard = scalars.as_ref().map_or(ShardId(0), |s| s.shard);
        let totals = scalars.map(|s| s.totals).unwrap_or_default();
        let accounts = accounts_in(p, &txn)?
            .iter()
            .map(|(id, a)| crate::ledger::state::view_account(*id, a))
            .collect();
        let mut cards = Vec::new();
        let table = txn.open_table(CARDS).map_err(|e| err(p, "cards", e))?;
        for row in table.iter().map_err(|e| err(p, "cards", e))? {
            let (_, v) = row.map_err(|e| err(p, "cards", e))?;
            let c = decode::<Card>(p, "card", v.value())?;
            cards.push(crate::ledger::CardFacts {
                id: c.id,
                home: shard,
                account: c.account,
                bin: c.bin,
                last4: c.last4,
                exp_month: c.exp_month,
                exp_year: c.exp_year,
                status: c.status,
            });
        }
        let mut merchants = Vec::new();
        let table = txn
            .open_table(MERCHANTS)
            .map_err(|e| err(p, "merchants", e))?;
        for row in table.iter().map_err(|e| err(p, "merchants", e))? {
            let (k, v) = row.map_err(|e| err(p, "merchants", e))?;
            let m = decode::<Merchant>(p, "merchant", v.value())?;
            merchants.push(crate::ledger::effects::MerchantRow {
                id: MerchantId(k.value().into()),
                settlement: m.settlement,
                currency: m.currency,
                mcc: m.mcc,
                status: m.status,
            });
        }
        let payments = txn
            .open_table(PAYMENTS)
            .map_err(|e| err(p, "payments", e))?;
        Ok(SeedReader {
            path: p.clone(),
            at,
            accounts,
            cards,
            merchants,
            totals,
            payments,
            next: Some(0),
        })
    }

    /// Starts a batch of changes.
    pub fn begin(&self) -> Result<Batch<'_>, StoreError> {
        let txn = self
            .db
            .begin_write()
            .map_err(|e| err(&self.path, "begin write", e))?;
        Ok(Batch { store: self, txn })
    }
}

/// An open write transaction: rows of changed state, then `commit` with the applied LSN.
/// See `Store::seed`.
pub struct SeedReader {
    path: PathBuf,
    /// The LSN this copy is as of.
    pub at: Lsn,
    pub accounts: Vec<crate::ledger::AccountView>,
    pub cards: Vec<crate::ledger::CardFacts>,
    pub merchants: Vec<crate::ledger::effects::MerchantRow>,
    /// Per currency: the shard's totals (treasury, sent, received).
    pub totals: Vec<(
        crate::domain::Currency,
        crate::ledger::state::CurrencyTotals,
    )>,
    /// The payments table of the same read transaction (it keeps the snapshot alive).
    payments: redb::ReadOnlyTable<u64, &'static [u8]>,
    /// The next payment sequence to read (None: all read).
    next: Option<u64>,
}

impl SeedReader {
    /// The next (up to) `max` payments in sequence order; empty once all are read.
    pub fn payments(&mut self, max: usize) -> Result<Vec<crate::ledger::PaymentView>, StoreError> {
        let p = &self.path;
        let Some(from) = self.next else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(max.min(4096));
        let mut last = None;
        for row in self
            .payments
            .range(from..)
            .map_err(|e| err(p, "payments", e))?
            .take(max)
        {
            let (k, v) = row.map_err(|e| err(p, "payments", e))?;
            last = Some(k.value());
            out.push(decode::<Payment>(p, "payment", v.value())?.view);
        }
        self.next = match last {
            Some(seq) if out.len() == max => seq.checked_add(1),
            _ => None,
        };
        Ok(out)
    }
}

pub struct Batch<'a> {
    store: &'a Store,
    txn: WriteTransaction,
}

impl Batch<'_> {
    /// A transfer as this batch sees it (the writer's cold reads).
    pub fn transfer(&self, key: &Hash16) -> Result<Option<TransferView>, StoreError> {
        let p = &self.store.path;
        let table = self
            .txn
            .open_table(TRANSFERS)
            .map_err(|e| err(p, "transfers", e))?;
        let row = table
            .get(u128::from_le_bytes(*key))
            .map_err(|e| err(p, "transfers", e))?;
        row.map(|v| decode::<TransferView>(p, "transfer", v.value()))
            .transpose()
    }

    /// A payment as this batch sees it (the writer's cold reads).
    pub fn payment(&self, seq: u64) -> Result<Option<Payment>, StoreError> {
        let p = &self.store.path;
        let table = self
            .txn
            .open_table(PAYMENTS)
            .map_err(|e| err(p, "payments", e))?;
        let row = table.get(seq).map_err(|e| err(p, "payments", e))?;
        row.map(|v| decode::<Payment>(p, "payment", v.value()))
            .transpose()
    }

    /// Writes the rows named by `changes`, as `ledger` now holds them, except accounts:
    /// those named by `accounts` (the writer defers them to its checkpoints).
    pub fn write(
        &mut self,
        ledger: &Ledger,
        changes: &Changes,
        accounts: &BTreeSet<AccountId>,
    ) -> Result<(), StoreError> {
        let p = &self.store.path.clone();
        let e = |what: &'static str| move |x: redb::Error| err(p, what, x);
        let txn = &self.txn;
        {
            let mut t = txn
                .open_table(ACCOUNTS)
                .map_err(|x| e("accounts")(x.into()))?;
            for &id in accounts {
                let row = encode(ledger.account_row(id).expect("changed accounts exist"));
                t.insert(id.0, row.as_slice())
                    .map_err(|x| e("accounts")(x.into()))?;
            }
        }
        {
            let mut t = txn.open_table(CARDS).map_err(|x| e("cards")(x.into()))?;
            for &id in &changes.cards {
                let row = encode(ledger.card_row(id).expect("changed cards exist"));
                t.insert(id, row.as_slice())
                    .map_err(|x| e("cards")(x.into()))?;
            }
        }
        {
            let mut t = txn
                .open_table(MERCHANTS)
                .map_err(|x| e("merchants")(x.into()))?;
            for id in &changes.merchants {
                let row = encode(ledger.merchant(id).expect("changed merchants exist"));
                t.insert(id.0.as_str(), row.as_slice())
                    .map_err(|x| e("merchants")(x.into()))?;
            }
        }
        {
            let mut t = txn
                .open_table(PAYMENTS)
                .map_err(|x| e("payments")(x.into()))?;
            let mut holds = txn.open_table(HOLDS).map_err(|x| e("holds")(x.into()))?;
            for &seq in &changes.payments {
                let payment = ledger
                    .payment(seq)
                    .expect("a changed payment stays held until stored");
                t.insert(seq, encode(payment).as_slice())
                    .map_err(|x| e("payments")(x.into()))?;
                let hold = (payment.expires_at.0, seq);
                if payment.view.status == crate::ledger::PaymentStatus::Authorized {
                    holds.insert(hold, ()).map_err(|x| e("holds")(x.into()))?;
                } else {
                    holds.remove(hold).map_err(|x| e("holds")(x.into()))?;
                }
            }
        }
        {
            let mut t = txn
                .open_table(IDEM)
                .map_err(|x| e("idempotency")(x.into()))?;
            let mut by_time = txn
                .open_table(IDEM_BY_TIME)
                .map_err(|x| e("idempotency")(x.into()))?;
            for key in &changes.idem_added {
                let r = ledger
                    .idem_row(key)
                    .expect("a changed record stays held until stored");
                let k = u128::from_le_bytes(*key);
                let old = t
                    .insert(k, encode(r).as_slice())
                    .map_err(|x| e("idempotency")(x.into()))?
                    .map(|v| decode::<IdemRecord>(p, "idempotency record", v.value()))
                    .transpose()?;
                if let Some(old) = old {
                    by_time
                        .remove((old.at.0, k))
                        .map_err(|x| e("idempotency")(x.into()))?;
                }
                by_time
                    .insert((r.at.0, k), ())
                    .map_err(|x| e("idempotency")(x.into()))?;
            }
        }
        {
            let mut t = txn
                .open_table(TRANSFERS)
                .map_err(|x| e("transfers")(x.into()))?;
            for key in &changes.transfers {
                let row = encode(
                    ledger
                        .transfer_row(key)
                        .expect("recorded transfers stay held"),
                );
                t.insert(u128::from_le_bytes(*key), row.as_slice())
                    .map_err(|x| e("transfers")(x.into()))?;
            }
        }
        {
            let mut t = txn.open_table(OUTBOX).map_err(|x| e("outbox")(x.into()))?;
            for &(to, seq) in &changes.outbox_added {
                if let Some(entry) = ledger.outbox_row(to, seq) {
                    t.insert((to.0, seq), encode(entry).as_slice())
                        .map_err(|x| e("outbox")(x.into()))?;
                }
            }
            for &(to, seq) in &changes.outbox_removed {
                t.remove((to.0, seq)).map_err(|x| e("outbox")(x.into()))?;
            }
        }
        Ok(())
    }

    /// Adds one record's effects to the change log; returns the bytes it takes.
    pub fn put_change(&mut self, lsn: Lsn, change: &Change) -> Result<u64, StoreError> {
        let p = &self.store.path;
        let mut t = self
            .txn
            .open_table(CHANGES)
            .map_err(|e| err(p, "changes", e))?;
        let bytes = encode(change);
        t.insert(lsn.0, bytes.as_slice())
            .map_err(|e| err(p, "changes", e))?;
        Ok(bytes.len() as u64)
    }

    /// Deletes the oldest change-log entries until at least `excess` bytes are freed, at most
    /// `max` entries. Returns the bytes freed.
    pub fn prune_oldest_changes(&mut self, excess: u64, max: usize) -> Result<u64, StoreError> {
        let p = &self.store.path;
        let mut t = self
            .txn
            .open_table(CHANGES)
            .map_err(|e| err(p, "changes", e))?;
        let (mut old, mut freed) = (Vec::new(), 0u64);
        for row in t.iter().map_err(|e| err(p, "changes", e))?.take(max) {
            if freed >= excess {
                break;
            }
            let (k, v) = row.map_err(|e| err(p, "changes", e))?;
            freed += v.value().len() as u64;
            old.push(k.value());
        }
        for lsn in &old {
            t.remove(*lsn).map_err(|e| err(p, "changes", e))?;
        }
        Ok(freed)
    }

    /// Records how many bytes the change log holds (committed with the batch).
    pub fn set_changes_bytes(&mut self, bytes: u64) -> Result<(), StoreError> {
        let p = &self.store.path;
        let mut meta = self.txn.open_table(META).map_err(|e| err(p, "meta", e))?;
        meta.insert(META_CHANGES_BYTES, bytes.to_le_bytes().as_slice())
            .map_err(|e| err(p, "meta", e))?;
        Ok(())
    }

    /// Deletes up to `max` idempotency records made before `before`, oldest first. Returns
    /// how many were deleted.
    pub fn prune_idem(&mut self, before: Millis, max: usize) -> Result<usize, StoreError> {
        let p = &self.store.path;
        let e = |x: redb::Error| err(p, "pruning idempotency records", x);
        let mut by_time = self.txn.open_table(IDEM_BY_TIME).map_err(|x| e(x.into()))?;
        let mut idem = self.txn.open_table(IDEM).map_err(|x| e(x.into()))?;
        let mut old = Vec::new();
        for row in by_time
            .range((0u64, 0u128)..(before.0, 0u128))
            .map_err(|x| e(x.into()))?
            .take(max)
        {
            old.push(row.map_err(|x| e(x.into()))?.0.value());
        }
        for &(at, key) in &old {
            by_time.remove((at, key)).map_err(|x| e(x.into()))?;
            idem.remove(key).map_err(|x| e(x.into()))?;
        }
        Ok(old.len())
    }

    /// Records `applied` and the ledger's scalars, and commits: durable (fsync) when
    /// `durable`, else visible to readers now and durable with the next durable commit.
    /// `accounts_written`: this batch brought the accounts table up to `applied`.
    pub fn commit(
        self,
        ledger: &Ledger,
        applied: Lsn,
        durable: bool,
        accounts_written: bool,
    ) -> Result<(), StoreError> {
        let p = &self.store.path;
        {
            let mut meta = self.txn.open_table(META).map_err(|e| err(p, "meta", e))?;
            meta.insert(META_APPLIED, applied.0.to_le_bytes().as_slice())
                .map_err(|e| err(p, "meta", e))?;
            if accounts_written {
                meta.insert(META_ACCOUNTS_AT, applied.0.to_le_bytes().as_slice())
                    .map_err(|e| err(p, "meta", e))?;
            }
            meta.insert(META_SCALARS, encode(&ledger.scalars()).as_slice())
                .map_err(|e| err(p, "meta", e))?;
        }
        let mut txn = self.txn;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        });
        // A checkpoint also saves redb's allocator state, so that opening the file after a
        // crash does not walk every page to rebuild it (restart time bounded, not O(store)).
        txn.set_quick_repair(durable);
        txn.commit().map_err(|e| err(p, "commit", e))
    }
}

thread_local! {
    static CATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// True while this thread runs code whose panics are caught (the process's panic hook
/// must not abort then).
pub fn catching_foreign_panic() -> bool {
    CATCHING.with(|c| c.get())
}

/// Runs `f`, turning a panic inside it into `Err(message)`.
fn catch_foreign_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    CATCHING.with(|c| c.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(false));
    result.map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into())
    })
}

/// The LSN the store had applied as of `txn` (0: nothing yet).
fn applied_in(p: &Path, txn: &redb::ReadTransaction) -> Result<Lsn, StoreError> {
    let meta = txn.open_table(META).map_err(|e| err(p, "meta", e))?;
    let applied = meta.get(META_APPLIED).map_err(|e| err(p, "meta", e))?;
    match applied {
        None => Ok(Lsn(0)),
        Some(v) => u64_from(v.value())
            .map(Lsn)
            .map_err(|e| err(p, "applied_lsn", e)),
    }
}

/// The LSN the accounts table is current to, when the writer recorded one.
fn accounts_at_in(p: &Path, txn: &redb::ReadTransaction) -> Result<Option<Lsn>, StoreError> {
    let meta = txn.open_table(META).map_err(|e| err(p, "meta", e))?;
    let at = meta.get(META_ACCOUNTS_AT).map_err(|e| err(p, "meta", e))?;
    match at {
        None => Ok(None),
        Some(v) => u64_from(v.value())
            .map(|n| Some(Lsn(n)))
            .map_err(|e| err(p, "accounts_at", e)),
    }
}

/// Every account as of `txn`.
fn accounts_in(
    p: &Path,
    txn: &redb::ReadTransaction,
) -> Result<Vec<(AccountId, Account)>, StoreError> {
    let table = txn
        .open_table(ACCOUNTS)
        .map_err(|e| err(p, "accounts", e))?;
    let mut accounts = Vec::new();
    for row in table.iter().map_err(|e| err(p, "accounts", e))? {
        let (k, v) = row.map_err(|e| err(p, "accounts", e))?;
        accounts.push((
            AccountId(k.value()),
            decode::<Account>(p, "account", v.value())?,
        ));
    }
    Ok(accounts)
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("ledger rows always encode")
}

fn decode<T: DeserializeOwned>(path: &Path, what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| err(path, &format!("undecodable {what}"), e))
}

fn u64_from(bytes: &[u8]) -> Result<u64, String> {
    let b: [u8; 8] = bytes
        .try_into()
        .map_err(|_| format!("{} bytes, expected 8", bytes.len()))?;
    Ok(u64::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Currency;
    use crate::ledger::{Command, Status};
    use std::sync::Arc;

    #[test]
    fn readers_get_accounts_the_writer_deferred_brought_up_to_date() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("store.redb"), 1 << 20).unwrap());
        let mut ledger = Ledger::new(ShardId(0), 1);
        ledger.track_changes();
        let id = AccountId(7);
        let create = Command::CreateAccount {
            id,
            currency: Currency::from_alpha("EUR").unwrap(),
            initial: 100,
            floor: 0,
            amount_limit: None,
            daily_count_limit: None,
        };
        ledger.apply(Lsn(1), &create);
        let changes = ledger.take_changes();
        let mut batch = store.begin().unwrap();
        batch.write(&ledger, &changes, &changes.accounts).unwrap();
        batch.commit(&ledger, Lsn(1), true, true).unwrap();

        // Record 2 changes the account; the commit defers its row.
        ledger.apply(
            Lsn(2),
            &Command::SetAccountStatus {
                id,
                status: Status::Blocked,
            },
        );
        let changes = ledger.take_changes();
        assert!(changes.accounts.contains(&id));
        let mut batch = store.begin().unwrap();
        batch.write(&ledger, &changes, &BTreeSet::new()).unwrap();
        batch.commit(&ledger, Lsn(2), false, false).unwrap();
        let txn = store.db.begin_read().unwrap();
        assert_eq!(
            accounts_in(&store.path, &txn).unwrap()[0].1.status,
            Status::Active
        );
        drop(txn);

        // A reader asks for them; the writer (here a thread) answers with a commit that
        // writes them, and the reader sees them as of the LSN applied.
        let writer = std::thread::spawn({
            let store = store.clone();
            move || {
                while !store.take_accounts_wanted() {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                let mut batch = store.begin().unwrap();
                batch
                    .write(&ledger, &Changes::default(), &changes.accounts)
                    .unwrap();
                batch.commit(&ledger, Lsn(2), false, true).unwrap();
            }
        });
        let (applied, accounts, _) = store.export().unwrap();
        writer.join().unwrap();
        assert_eq!(applied, Lsn(2));
        assert_eq!(accounts.len(), 1);
        assert_eq!(accounts[0].1.status, Status::Blocked);
        assert_eq!(store.seed().unwrap().at, Lsn(2));
    }
}
