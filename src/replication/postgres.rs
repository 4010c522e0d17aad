//! The PostgreSQL sink: each shard's records, in batches, into a schema this module creates
//! and migrates itself (`schema_version`, version 2).
//!
//! Exactly-once: a batch, its refund and journal rows, and the shard's `progress` row commit
//! in ONE transaction. The transaction first locks the shard's progress row and skips the
//! prefix of the batch that is already stored (`lsn <= progress`), so a retry after a crash,
//! a lost COMMIT acknowledgement or a killed connection stores every record once. The
//! journal's primary key (shard, lsn, n) would refuse a duplicate anyway.
//!
//! Money is `bigint` signed minor units of the row's currency (cents for EUR, yen for JPY,
//! fils for BHD: `Currency::exponent` decimals); currencies are ISO 4217 alpha codes. Times
//! are `timestamptz` built from the command's milliseconds since the Unix epoch.
//!
//! Tables (all in one schema, "corepay" by default; see `migrate` for the exact DDL):
//! - `accounts`, `cards` (BIN and last four only, never a PAN or its hash), `merchants`
//!   (never an API key), `payments` (id "pay_<shard>_<seq>"): the latest row, upserted;
//!   later records of a batch win.
//! - `refunds`: one row per refund event, at the shard that owns the payment. Rule: a record
//!   whose payment row has a larger `amount_refunded` than the one stored before (earlier in
//!   the batch, else in PostgreSQL) refunded the difference. That covers both a same-shard
//!   refund (`RefundLocal`, kind "refund") and the return leg of a cross-shard refund
//!   (`ApplyCredit`, kind "credit", whose `at` is NULL: credits carry no time); the debit leg
//!   on the settlement shard touches no payment row and shows in the journal only.
//! - `journal`: append-only, balanced per record and currency; `account` is
//!   "account:<id>", "treasury:<shard>" or "in_flight".
//! - `progress`: the last LSN stored per shard.
//! - `reseeds`: each re-seed (`Sink::reseed`, schema version 2). A sink that needs records the
//!   gateway no longer keeps gets the shard's whole state as of one LSN in ONE transaction:
//!   every account, card, merchant and payment upserted, and at that LSN, kind "reseed"
//!   journal entries that make each account's, the treasury's and the in-flight position's
//!   entries of the shard sum to what the state says (what the missed records moved, summed;
//!   they balance per currency because both sides do). The missed records have no `refunds`
//!   rows; their payments' `amount_refunded` is exact.
//!
//! Each statement carries a whole batch as arrays (`INSERT ... SELECT FROM UNNEST(...)`), so
//! a batch costs a fixed ~10 round trips whatever its size.
//!
//! Outages: any error drops the connection; the next `progress()` (or `apply`) reconnects
//! (connect timeout 5 s, statements time out after 60 s) and re-runs the idempotent migration.

use super::{Record, Seed, Sink, SinkError};
use crate::domain::{Lsn, ShardId};
use crate::ledger::command::{AccountView, CardFacts, PaymentView};
use crate::ledger::effects::{JournalAccount, MerchantRow};
use postgres::{Client, IsolationLevel, NoTls, Statement, Transaction};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

/// The schema `PostgresSink::new` and `read_state` use.
pub const DEFAULT_SCHEMA: &str = "corepay";
/// The version `migrate` brings a schema to.
pub const SCHEMA_VERSION: i32 = 2;
/// Payments per statement while re-seeding.
const RESEED_CHUNK: usize = 5_000;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const STATEMENT_TIMEOUT: &str = "60s";

/// Stores one shard's records in PostgreSQL (one instance, and one connection, per shard).
pub struct PostgresSink {
    url: String,
    schema: String,
    client: Option<Connection>,
}

struct Connection {
    client: Client,
    st: Statements,
}

impl PostgresSink {
    /// A sink on schema "corepay". Connects lazily, in `progress()`.
    pub fn new(url: &str) -> PostgresSink {
        PostgresSink::with_schema(url, DEFAULT_SCHEMA)
    }

    /// A sink on another schema (lower-case letters, digits and '_'; checked at connect).
    pub fn with_schema(url: &str, schema: &str) -> PostgresSink {
        PostgresSink {
            url: url.to_string(),
            schema: schema.to_string(),
            client: None,
        }
    }

    fn connection(&mut self) -> Result<&mut Connection, SinkError> {
        if self.client.is_none() {
            let q = quoted(&self.schema)?;
            let mut client = connect(&self.url)?;
            migrate(&mut client, &self.schema)?;
            let st = Statements::prepare(&mut client, &q).map_err(pg("prepare"))?;
            self.client = Some(Connection { client, st });
        }
        Ok(self.client.as_mut().expect("just connected"))
    }

    fn try_progress(&mut self, shard: ShardId) -> Result<Lsn, SinkError> {
        let conn = self.connection()?;
        let row = conn
            .client
            .query_opt(&conn.st.progress, &[&(shard.0 as i16)])
            .map_err(pg("read progress"))?;
        Ok(Lsn(row.map_or(0, |r| r.get::<_, i64>(0) as u64)))
    }

    fn try_apply(&mut self, shard: ShardId, batch: &[Record]) -> Result<(), SinkError> {
        check_batch(shard, batch)?;
        let Some(last) = batch.last() else {
            return Ok(());
        };
        let shard_i = shard.0 as i16;
        let last_lsn = int(last.lsn.0, "lsn")?;
        let conn = self.connection()?;
        let st = &conn.st;
        let mut tx = conn.client.transaction().map_err(pg("begin"))?;
        let stored = lock_progress(&mut tx, st, shard_i)?;
        if stored >= last_lsn {
            // All of it was stored before (a retry after a commit whose answer was lost).
            return tx.rollback().map_err(pg("rollback"));
        }
        let fresh = &batch[batch.partition_point(|r| r.lsn.0 <= stored as u64)..];
        let candidates = refund_candidates(fresh);
        let mut prior = HashMap::new();
        if !candidates.is_empty() {
            for row in tx
                .query(&st.refunded, &[&candidates])
                .map_err(pg("read payments"))?
            {
                prior.insert(row.get::<_, String>(0), row.get::<_, i64>(1));
            }
        }
        let rows = Rows::build(fresh, &prior)?;
        rows.write(&mut tx, st, shard_i)?;
        set_progress(&mut tx, st, shard_i, last_lsn, stored)?;
        tx.commit().map_err(pg("commit"))
    }
}

impl PostgresSink {
    fn try_reseed(&mut self, seed: &mut Seed<'_>) -> Result<(), SinkError> {
        let shard_i = small(u64::from(seed.shard.0), "shard")?;
        let at = int(seed.at.0, "lsn")?;
        let conn = self.connection()?;
        let st = &conn.st;
        let mut tx = conn.client.transaction().map_err(pg("begin"))?;
        let stored = lock_progress(&mut tx, st, shard_i)?;
        if stored >= at {
            return tx.rollback().map_err(pg("rollback"));
        }
        // The rows as they are at `at`: upserts, so what was stored before is overwritten.
        let mut rows = Rows::default();
        for a in &seed.accounts {
            rows.accounts.insert(a.id.0, (a, seed.at.0));
        }
        for c in &seed.cards {
            rows.cards.insert(c.id, c);
        }
        for m in &seed.merchants {
            rows.merchants.insert(&m.id.0, m);
        }
        rows.write(&mut tx, st, shard_i)?;
        let mut payments = 0u64;
        loop {
            let chunk = (seed.payments)(RESEED_CHUNK)?;
            if chunk.is_empty() {
                break;
            }
            payments += chunk.len() as u64;
            let mut rows = Rows::default();
            for p in &chunk {
                rows.payments.insert(payment_id(p), (p, seed.at.0));
            }
            rows.write(&mut tx, st, shard_i)?;
        }
        // The journal entries of the records never stored, summed: per (account, currency),
        // what the shard's entries must sum to now minus what they sum to here.
        let mut want: BTreeMap<(String, &'static str), i64> = BTreeMap::new();
        for a in &seed.accounts {
            want.insert(
                (
                    journal_account(&JournalAccount::Account(a.id)),
                    a.currency.alpha(),
                ),
                a.balance,
            );
        }
        for &(currency, treasury, in_flight) in &seed.positions {
            let c = currency.alpha();
            let t = journal_account(&JournalAccount::Treasury(seed.shard));
            *want.entry((t, c)).or_default() += treasury;
            let f = journal_account(&JournalAccount::InFlight);
            *want.entry((f, c)).or_default() += in_flight;
        }
        let mut have: BTreeMap<(String, String), i64> = BTreeMap::new();
        for r in tx
            .query(&st.journal_sums, &[&shard_i])
            .map_err(pg("sum the journal"))?
        {
            have.insert((r.get(0), r.get(1)), r.get(2));
        }
        let mut entries: Vec<(String, String, i64)> = Vec::new();
        for ((account, currency), &amount) in &want {
            let before = have
                .remove(&(account.clone(), currency.to_string()))
                .unwrap_or(0);
            entries.push((account.clone(), currency.to_string(), amount - before));
        }
        // Entries of this shard for anything the state no longer names sum to zero now.
        entries.extend(have.into_iter().map(|((a, c), sum)| (a, c, -sum)));
        entries.retain(|e| e.2 != 0);
        let mut balance: BTreeMap<&str, i64> = BTreeMap::new();
        for (_, currency, amount) in &entries {
            *balance.entry(currency).or_default() += amount;
        }
        if let Some((currency, sum)) = balance.iter().find(|(_, &s)| s != 0) {
            return Err(SinkError(format!(
                "postgres: re-seeding shard {}: the summed journal entries in {currency} would \
                 not balance ({sum}); nothing stored",
                seed.shard
            )));
        }
        if !entries.is_empty() {
            let n: Vec<i32> = (0..entries.len())
                .map(|i| i32::try_from(i).map_err(|_| SinkError("too many accounts".into())))
                .collect::<Result<_, _>>()?;
            let account: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
            let currency: Vec<&str> = entries.iter().map(|e| e.1.as_str()).collect();
            let amount: Vec<i64> = entries.iter().map(|e| e.2).collect();
            let time = int(seed.time.0, "time")?;
            tx.execute(
                &st.reseed_journal,
                &[&shard_i, &at, &time, &n, &account, &currency, &amount],
            )
            .map_err(pg("insert the re-seed journal entries"))?;
        }
        tx.execute(
            &st.reseed_log,
            &[
                &shard_i,
                &at,
                &int(seed.missing_from.0, "lsn")?,
                &int(seed.accounts.len() as u64, "accounts")?,
                &int(payments, "payments")?,
                &int(entries.len() as u64, "entries")?,
                &int(seed.time.0, "time")?,
            ],
        )
        .map_err(pg("record the re-seed"))?;
        set_progress(&mut tx, st, shard_i, at, stored)?;
        tx.commit().map_err(pg("commit"))
    }
}

impl Sink for PostgresSink {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn progress(&mut self, shard: ShardId) -> Result<Lsn, SinkError> {
        let result = self.try_progress(shard);
        if result.is_err() {
            self.client = None;
        }
        result
    }

    fn apply(&mut self, shard: ShardId, batch: &[Record]) -> Result<(), SinkError> {
        let result = self.try_apply(shard, batch);
        if result.is_err() {
            self.client = None;
        }
        result
    }

    fn reseed(&mut self, seed: &mut Seed<'_>) -> Result<(), SinkError> {
        let result = self.try_reseed(seed);
        if result.is_err() {
            self.client = None;
        }
        result
    }
}

/// What PostgreSQL holds, for `corepay reconcile` to compare with the gateway's own state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PgState {
    /// id → (currency, balance, held, status).
    pub accounts: BTreeMap<u64, (String, i64, i64, String)>,
    /// payment id ("pay_<shard>_<seq>") → (status, amount, captured, refunded).
    pub payments: BTreeMap<String, (String, i64, i64, i64)>,
    /// Σ of every journal entry per currency (zero when the journal balances).
    pub journal_sums: BTreeMap<String, i64>,
    /// Σ of the journal entries of each account (its balance, when nothing is missing).
    pub account_journal: BTreeMap<u64, i64>,
    /// shard → last LSN stored.
    pub progress: BTreeMap<u16, u64>,
}

/// Reads schema "corepay" (one consistent snapshot).
pub fn read_state(url: &str) -> Result<PgState, SinkError> {
    read_state_in(url, DEFAULT_SCHEMA)
}

/// Reads `schema` (one consistent snapshot).
pub fn read_state_in(url: &str, schema: &str) -> Result<PgState, SinkError> {
    let q = quoted(schema)?;
    let mut client = connect(url)?;
    let mut tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(pg("begin"))?;
    let exists = tx
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL",
            &[&format!("{q}.progress")],
        )
        .map_err(pg("look for the schema"))?
        .get::<_, bool>(0);
    if !exists {
        return Err(SinkError(format!(
            "postgres: schema {schema} has no corepay tables (has replication ever run?)"
        )));
    }
    let mut state = PgState::default();
    let sql = format!("SELECT id, currency, balance, held, status FROM {q}.accounts");
    for r in tx.query(&sql, &[]).map_err(pg("read accounts"))? {
        let id: i64 = r.get(0);
        state
            .accounts
            .insert(id as u64, (r.get(1), r.get(2), r.get(3), r.get(4)));
    }
    let sql =
        format!("SELECT id, status, amount, amount_captured, amount_refunded FROM {q}.payments");
    for r in tx.query(&sql, &[]).map_err(pg("read payments"))? {
        state
            .payments
            .insert(r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4)));
    }
    let sql = format!("SELECT currency, sum(amount)::bigint FROM {q}.journal GROUP BY currency");
    for r in tx.query(&sql, &[]).map_err(pg("read journal sums"))? {
        state.journal_sums.insert(r.get(0), r.get(1));
    }
    let sql = format!(
        "SELECT substr(account, 9)::bigint, sum(amount)::bigint FROM {q}.journal \
         WHERE account LIKE 'account:%' GROUP BY 1"
    );
    for r in tx.query(&sql, &[]).map_err(pg("read account journal"))? {
        let id: i64 = r.get(0);
        state.account_journal.insert(id as u64, r.get(1));
    }
    let sql = format!("SELECT shard, lsn FROM {q}.progress");
    for r in tx.query(&sql, &[]).map_err(pg("read progress"))? {
        let (shard, lsn): (i16, i64) = (r.get(0), r.get(1));
        state.progress.insert(shard as u16, lsn as u64);
    }
    tx.commit().map_err(pg("commit"))?;
    Ok(state)
}

/// Drops `schema` and every table in it (`DROP SCHEMA IF EXISTS <schema> CASCADE`).
pub fn reset(url: &str, schema: &str) -> Result<(), SinkError> {
    let q = quoted(schema)?;
    let mut client = connect(url)?;
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {q} CASCADE"))
        .map_err(pg("drop schema"))
}

// ---- connection and schema -----------------------------------------------------------

/// Locks `shard`'s progress row for the transaction; returns the LSN stored (0: none).
fn lock_progress(tx: &mut Transaction<'_>, st: &Statements, shard: i16) -> Result<i64, SinkError> {
    Ok(tx
        .query_opt(&st.progress_lock, &[&shard])
        .map_err(pg("lock progress"))?
        .map_or(0, |r| r.get(0)))
}

/// Moves `shard`'s progress from `stored` (read under `lock_progress`) to `lsn`.
fn set_progress(
    tx: &mut Transaction<'_>,
    st: &Statements,
    shard: i16,
    lsn: i64,
    stored: i64,
) -> Result<(), SinkError> {
    let updated = tx
        .execute(&st.set_progress, &[&shard, &lsn, &stored])
        .map_err(pg("write progress"))?;
    if updated != 1 {
        return Err(SinkError(format!(
            "postgres: progress of shard {shard} moved while this transaction stored it \
             (two writers for one shard?)"
        )));
    }
    Ok(())
}

fn pg(what: &'static str) -> impl Fn(postgres::Error) -> SinkError {
    move |e| SinkError(format!("postgres: {what}: {e}"))
}

fn int(value: u64, what: &str) -> Result<i64, SinkError> {
    i64::try_from(value).map_err(|_| SinkError(format!("postgres: {what} {value} exceeds bigint")))
}

fn small(value: u64, what: &str) -> Result<i16, SinkError> {
    i16::try_from(value)
        .map_err(|_| SinkError(format!("postgres: {what} {value} exceeds smallint")))
}

/// The schema name, checked (it is spliced into SQL) and double-quoted.
fn quoted(schema: &str) -> Result<String, SinkError> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok {
        return Err(SinkError(format!(
            "postgres: schema name {schema:?}: use 1 to 63 lower-case letters, digits and '_'"
        )));
    }
    Ok(format!("\"{schema}\""))
}

/// Connects (the URL's password is never repeated in errors or logs).
fn connect(url: &str) -> Result<Client, SinkError> {
    let mut config: postgres::Config = url
        .parse()
        .map_err(|e| SinkError(format!("postgres: invalid connection string: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("corepay");
    }
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let target = format!(
        "{}:{:?}/{}",
        hosts.join(","),
        config.get_ports(),
        config.get_dbname().unwrap_or("")
    );
    let mut client = config
        .connect(NoTls)
        .map_err(|e| SinkError(format!("postgres: cannot connect to {target}: {e}")))?;
    client
        .batch_execute(&format!("SET statement_timeout = '{STATEMENT_TIMEOUT}'"))
        .map_err(pg("set statement_timeout"))?;
    Ok(client)
}

/// Creates or migrates `schema` to `SCHEMA_VERSION`. Safe to run from many connections at
/// once: a transaction-scoped advisory lock (per schema) serialises them.
fn migrate(client: &mut Client, schema: &str) -> Result<(), SinkError> {
    let q = quoted(schema)?;
    let mut tx = client.transaction().map_err(pg("begin migration"))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1)::bigint)",
        &[&format!("corepay.migrate.{schema}")],
    )
    .map_err(pg("lock for migration"))?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {q};
         CREATE TABLE IF NOT EXISTS {q}.schema_version (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now());"
    ))
    .map_err(pg("create schema"))?;
    let version: Option<i32> = tx
        .query_one(&format!("SELECT max(version) FROM {q}.schema_version"), &[])
        .map_err(pg("read schema version"))?
        .get(0);
    let version = version.unwrap_or(0);
    if version > SCHEMA_VERSION {
        return Err(SinkError(format!(
            "postgres: schema {schema} is at version {version}, newer than this corepay \
             ({SCHEMA_VERSION}); upgrade corepay"
        )));
    }
    if version < 1 {
        tx.batch_execute(&schema_v1(&q))
            .map_err(pg("create tables (schema version 1)"))?;
        tx.execute(
            &format!("INSERT INTO {q}.schema_version (version) VALUES (1)"),
            &[],
        )
        .map_err(pg("record schema version"))?;
    }
    if version < 2 {
        tx.batch_execute(&schema_v2(&q))
            .map_err(pg("migrate tables (schema version 2)"))?;
        tx.execute(
            &format!("INSERT INTO {q}.schema_version (version) VALUES (2)"),
            &[],
        )
        .map_err(pg("record schema version"))?;
    }
    // Later versions: `if version < 3 { ALTER ...; INSERT version 3 }`, in this transaction.
    tx.commit().map_err(pg("commit migration"))
}

fn schema_v1(q: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {q}.accounts (
             id bigint PRIMARY KEY,
             currency text NOT NULL,
             balance bigint NOT NULL,
             held bigint NOT NULL,
             floor bigint NOT NULL,
             status text NOT NULL,
             shard smallint NOT NULL,
             updated_lsn bigint NOT NULL);
         CREATE TABLE IF NOT EXISTS {q}.cards (
             id bigint PRIMARY KEY,
             account_id bigint NOT NULL,
             bin text NOT NULL,
             last4 text NOT NULL,
             exp_month smallint NOT NULL,
             exp_year smallint NOT NULL,
             status text NOT NULL,
             shard smallint NOT NULL);
         CREATE TABLE IF NOT EXISTS {q}.merchants (
             id text PRIMARY KEY,
             settlement_account_id bigint NOT NULL,
             currency text NOT NULL,
             mcc text NOT NULL,
             status text NOT NULL);
         CREATE TABLE IF NOT EXISTS {q}.payments (
             id text PRIMARY KEY,
             merchant_id text NOT NULL,
             status text NOT NULL,
             amount bigint NOT NULL,
             amount_captured bigint NOT NULL,
             amount_refunded bigint NOT NULL,
             currency text NOT NULL,
             bin text NOT NULL,
             last4 text NOT NULL,
             approval_code text,
             response_code text NOT NULL,
             reference text NOT NULL,
             created_at timestamptz NOT NULL,
             updated_lsn bigint NOT NULL);
         CREATE TABLE IF NOT EXISTS {q}.refunds (
             shard smallint NOT NULL,
             lsn bigint NOT NULL,
             payment_id text NOT NULL,
             amount bigint NOT NULL,
             currency text NOT NULL,
             at timestamptz,
             PRIMARY KEY (shard, lsn, payment_id));
         CREATE TABLE IF NOT EXISTS {q}.journal (
             shard smallint NOT NULL,
             lsn bigint NOT NULL,
             n smallint NOT NULL,
             account text NOT NULL,
             currency text NOT NULL,
             amount bigint NOT NULL,
             kind text NOT NULL,
             reference text,
             at timestamptz,
             PRIMARY KEY (shard, lsn, n));
         CREATE TABLE IF NOT EXISTS {q}.progress (
             shard smallint PRIMARY KEY,
             lsn bigint NOT NULL,
             updated_at timestamptz NOT NULL);
         COMMENT ON TABLE {q}.journal IS
             'Append-only, balanced per (shard, lsn) and currency. amount: signed minor units \
              (credit > 0). account: account:<id> | treasury:<shard> | in_flight';
         COMMENT ON TABLE {q}.accounts IS 'balance, held, floor: minor units of currency';
         COMMENT ON TABLE {q}.payments IS 'amounts: minor units of currency';
         COMMENT ON TABLE {q}.refunds IS
             'One row per refund event, at the payment''s shard; amount in minor units';
         COMMENT ON TABLE {q}.progress IS 'Last WAL LSN stored per shard';"
    )
}

/// Version 2: re-seeding (`PostgresSink::reseed`). A re-seed writes one journal entry per
/// account of the shard, so `n` becomes an integer; `reseeds` records each one.
fn schema_v2(q: &str) -> String {
    format!(
        "ALTER TABLE {q}.journal ALTER COLUMN n TYPE integer;
         CREATE TABLE IF NOT EXISTS {q}.reseeds (
             shard smallint NOT NULL,
             lsn bigint NOT NULL,
             missing_from bigint NOT NULL,
             accounts bigint NOT NULL,
             payments bigint NOT NULL,
             journal_entries bigint NOT NULL,
             at timestamptz NOT NULL,
             PRIMARY KEY (shard, lsn));
         COMMENT ON TABLE {q}.reseeds IS
             'Each time a shard was copied whole because this database needed records the \
              gateway no longer kept: records missing_from..lsn were not stored one by one; \
              their journal entries are summed into the kind ''reseed'' entries at lsn';"
    )
}

/// `epoch + ms` as timestamptz, exact to the millisecond.
const TS: &str = "timestamptz 'epoch' + interval '1 millisecond' *";

struct Statements {
    progress: Statement,
    progress_lock: Statement,
    refunded: Statement,
    accounts: Statement,
    cards: Statement,
    merchants: Statement,
    payments: Statement,
    refunds: Statement,
    journal: Statement,
    set_progress: Statement,
    journal_sums: Statement,
    reseed_journal: Statement,
    reseed_log: Statement,
}

/// `INSERT INTO table (cols) SELECT select FROM UNNEST(params) AS t(cols) ON CONFLICT ...`
fn upsert(q: &str, table: &str, cols: &[(&str, &str)], select: &str) -> String {
    let names: Vec<&str> = cols.iter().map(|c| c.0).collect();
    let params: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}[]", i + 1, c.1))
        .collect();
    let set: Vec<String> = names[1..]
        .iter()
        .map(|n| format!("{n} = EXCLUDED.{n}"))
        .collect();
    format!(
        "INSERT INTO {q}.{table} ({names}) SELECT {select} FROM UNNEST({params}) AS t({names}) \
         ON CONFLICT ({key}) DO UPDATE SET {set}",
        names = names.join(", "),
        params = params.join(", "),
        key = names[0],
        set = set.join(", "),
    )
}

impl Statements {
    fn prepare(client: &mut Client, q: &str) -> Result<Statements, postgres::Error> {
        let mut p = |sql: &str| client.prepare(sql);
        Ok(Statements {
            progress: p(&format!("SELECT lsn FROM {q}.progress WHERE shard = $1"))?,
            progress_lock: p(&format!(
                "SELECT lsn FROM {q}.progress WHERE shard = $1 FOR UPDATE"
            ))?,
            refunded: p(&format!(
                "SELECT id, amount_refunded FROM {q}.payments WHERE id = ANY($1::text[])"
            ))?,
            accounts: p(&upsert(
                q,
                "accounts",
                &[
                    ("id", "bigint"),
                    ("currency", "text"),
                    ("balance", "bigint"),
                    ("held", "bigint"),
                    ("floor", "bigint"),
                    ("status", "text"),
                    ("shard", "smallint"),
                    ("updated_lsn", "bigint"),
                ],
                "*",
            ))?,
            cards: p(&upsert(
                q,
                "cards",
                &[
                    ("id", "bigint"),
                    ("account_id", "bigint"),
                    ("bin", "text"),
                    ("last4", "text"),
                    ("exp_month", "smallint"),
                    ("exp_year", "smallint"),
                    ("status", "text"),
                    ("shard", "smallint"),
                ],
                "*",
            ))?,
            merchants: p(&upsert(
                q,
                "merchants",
                &[
                    ("id", "text"),
                    ("settlement_account_id", "bigint"),
                    ("currency", "text"),
                    ("mcc", "text"),
                    ("status", "text"),
                ],
                "*",
            ))?,
            payments: p(&upsert(
                q,
                "payments",
                &[
                    ("id", "text"),
                    ("merchant_id", "text"),
                    ("status", "text"),
                    ("amount", "bigint"),
                    ("amount_captured", "bigint"),
                    ("amount_refunded", "bigint"),
                    ("currency", "text"),
                    ("bin", "text"),
                    ("last4", "text"),
                    ("approval_code", "text"),
                    ("response_code", "text"),
                    ("reference", "text"),
                    ("created_at", "bigint"),
                    ("updated_lsn", "bigint"),
                ],
                &format!(
                    "id, merchant_id, status, amount, amount_captured, amount_refunded, \
                     currency, bin, last4, approval_code, response_code, reference, \
                     {TS} created_at, updated_lsn"
                ),
            ))?,
            refunds: p(&format!(
                "INSERT INTO {q}.refunds (shard, lsn, payment_id, amount, currency, at) \
                 SELECT $1::smallint, lsn, payment_id, amount, currency, {TS} at_ms \
                 FROM UNNEST($2::bigint[], $3::text[], $4::bigint[], $5::text[], $6::bigint[]) \
                 AS t(lsn, payment_id, amount, currency, at_ms)"
            ))?,
            journal: p(&format!(
                "INSERT INTO {q}.journal \
                 (shard, lsn, n, account, currency, amount, kind, reference, at) \
                 SELECT $1::smallint, lsn, n, account, currency, amount, kind, reference, \
                 {TS} at_ms \
                 FROM UNNEST($2::bigint[], $3::smallint[], $4::text[], $5::text[], \
                 $6::bigint[], $7::text[], $8::text[], $9::bigint[]) \
                 AS t(lsn, n, account, currency, amount, kind, reference, at_ms)"
            ))?,
            set_progress: p(&format!(
                "INSERT INTO {q}.progress (shard, lsn, updated_at) VALUES ($1, $2, now()) \
                 ON CONFLICT (shard) DO UPDATE SET lsn = EXCLUDED.lsn, updated_at = now() \
                 WHERE progress.lsn = $3"
            ))?,
            journal_sums: p(&format!(
                "SELECT account, currency, sum(amount)::bigint FROM {q}.journal \
                 WHERE shard = $1 GROUP BY account, currency"
            ))?,
            reseed_journal: p(&format!(
                "INSERT INTO {q}.journal \
                 (shard, lsn, n, account, currency, amount, kind, reference, at) \
                 SELECT $1::smallint, $2::bigint, n, account, currency, amount, 'reseed', NULL, \
                 {TS} $3::bigint \
                 FROM UNNEST($4::integer[], $5::text[], $6::text[], $7::bigint[]) \
                 AS t(n, account, currency, amount)"
            ))?,
            reseed_log: p(&format!(
                "INSERT INTO {q}.reseeds \
                 (shard, lsn, missing_from, accounts, payments, journal_entries, at) \
                 VALUES ($1, $2, $3, $4, $5, $6, {TS} $7::bigint)"
            ))?,
        })
    }
}

// ---- turning records into rows ------------------------------------------------------

fn check_batch(shard: ShardId, batch: &[Record]) -> Result<(), SinkError> {
    for (i, r) in batch.iter().enumerate() {
        if r.shard != shard {
            return Err(SinkError(format!(
                "postgres: a record of shard {} in a batch of shard {shard}",
                r.shard
            )));
        }
        if i > 0 && r.lsn <= batch[i - 1].lsn {
            return Err(SinkError(format!(
                "postgres: shard {shard}: batch LSNs not increasing ({} after {})",
                r.lsn.0,
                batch[i - 1].lsn.0
            )));
        }
    }
    Ok(())
}

fn payment_id(p: &PaymentView) -> String {
    format!("pay_{}_{}", p.id.shard.0, p.id.seq)
}

fn journal_account(a: &JournalAccount) -> String {
    match a {
        JournalAccount::Account(id) => format!("account:{}", id.0),
        JournalAccount::Treasury(shard) => format!("treasury:{}", shard.0),
        JournalAccount::InFlight => "in_flight".to_string(),
    }
}

/// Payments whose first row in the batch shows refunds: the only ones whose stored
/// `amount_refunded` matters for the refund rule.
fn refund_candidates(batch: &[Record]) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for r in batch {
        for p in &r.effects.payments {
            let id = payment_id(p);
            if seen.insert(id.clone()) && p.amount_refunded > 0 {
                out.push(id);
            }
        }
    }
    out
}

/// A batch as column arrays, one statement per table.
#[derive(Default)]
struct Rows<'a> {
    /// id → (row, lsn): the last version in the batch wins.
    accounts: BTreeMap<u64, (&'a AccountView, u64)>,
    cards: BTreeMap<u64, &'a CardFacts>,
    merchants: BTreeMap<&'a str, &'a MerchantRow>,
    payments: BTreeMap<String, (&'a PaymentView, u64)>,
    refunds: RefundCols,
    journal: JournalCols<'a>,
}

#[derive(Default)]
struct RefundCols {
    lsn: Vec<i64>,
    payment: Vec<String>,
    amount: Vec<i64>,
    currency: Vec<&'static str>,
    at: Vec<Option<i64>>,
}

#[derive(Default)]
struct JournalCols<'a> {
    lsn: Vec<i64>,
    n: Vec<i16>,
    account: Vec<String>,
    currency: Vec<&'static str>,
    amount: Vec<i64>,
    kind: Vec<&'static str>,
    reference: Vec<Option<&'a str>>,
    at: Vec<Option<i64>>,
}

impl<'a> Rows<'a> {
    /// `prior`: `amount_refunded` as stored in PostgreSQL before the batch.
    fn build(batch: &'a [Record], prior: &HashMap<String, i64>) -> Result<Rows<'a>, SinkError> {
        let mut rows = Rows::default();
        for r in batch {
            let lsn = int(r.lsn.0, "lsn")?;
            let at = r.time.map(|t| int(t.0, "time")).transpose()?;
            let fx = &r.effects;
            for a in &fx.accounts {
                rows.accounts.insert(a.id.0, (a, r.lsn.0));
            }
            for c in &fx.cards {
                rows.cards.insert(c.id, c);
            }
            for m in &fx.merchants {
                rows.merchants.insert(&m.id.0, m);
            }
            for p in &fx.payments {
                let id = payment_id(p);
                let before = match rows.payments.get(&id) {
                    Some((v, _)) => v.amount_refunded,
                    None => prior.get(&id).copied().unwrap_or(0),
                };
                if p.amount_refunded > before {
                    rows.refunds.lsn.push(lsn);
                    rows.refunds.payment.push(id.clone());
                    rows.refunds.amount.push(p.amount_refunded - before);
                    rows.refunds.currency.push(p.currency.alpha());
                    rows.refunds.at.push(at);
                }
                rows.payments.insert(id, (p, r.lsn.0));
            }
            for (n, e) in fx.journal.iter().enumerate() {
                let j = &mut rows.journal;
                j.lsn.push(lsn);
                j.n.push(small(n as u64, "journal entry index")?);
                j.account.push(journal_account(&e.account));
                j.currency.push(e.currency.alpha());
                j.amount.push(e.amount);
                j.kind.push(fx.kind);
                j.reference.push(fx.reference.as_deref());
                j.at.push(at);
            }
        }
        Ok(rows)
    }

    fn write(
        &self,
        tx: &mut Transaction<'_>,
        st: &Statements,
        shard: i16,
    ) -> Result<(), SinkError> {
        if !self.accounts.is_empty() {
            let mut c = (
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
            );
            for (&id, &(a, lsn)) in &self.accounts {
                c.0.push(int(id, "account id")?);
                c.1.push(a.currency.alpha());
                c.2.push(a.balance);
                c.3.push(a.held);
                c.4.push(a.floor);
                c.5.push(a.status.as_str());
                c.6.push(shard);
                c.7.push(int(lsn, "lsn")?);
            }
            tx.execute(
                &st.accounts,
                &[&c.0, &c.1, &c.2, &c.3, &c.4, &c.5, &c.6, &c.7],
            )
            .map_err(pg("upsert accounts"))?;
        }
        if !self.cards.is_empty() {
            let mut c = (
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
            );
            for (&id, card) in &self.cards {
                c.0.push(int(id, "card id")?);
                c.1.push(int(card.account.0, "account id")?);
                c.2.push(card.bin.as_str());
                c.3.push(card.last4.as_str());
                c.4.push(i16::from(card.exp_month));
                c.5.push(small(u64::from(card.exp_year), "expiry year")?);
                c.6.push(card.status.as_str());
                c.7.push(shard);
            }
            tx.execute(&st.cards, &[&c.0, &c.1, &c.2, &c.3, &c.4, &c.5, &c.6, &c.7])
                .map_err(pg("upsert cards"))?;
        }
        if !self.merchants.is_empty() {
            let mut c = (vec![], vec![], vec![], vec![], vec![]);
            for (&id, m) in &self.merchants {
                c.0.push(id);
                c.1.push(int(m.settlement.0, "account id")?);
                c.2.push(m.currency.alpha());
                c.3.push(format!("{:04}", m.mcc));
                c.4.push(m.status.as_str());
            }
            tx.execute(&st.merchants, &[&c.0, &c.1, &c.2, &c.3, &c.4])
                .map_err(pg("upsert merchants"))?;
        }
        if !self.payments.is_empty() {
            let n = self.payments.len();
            let mut id = Vec::with_capacity(n);
            let mut merchant = Vec::with_capacity(n);
            let mut status = Vec::with_capacity(n);
            let mut amount = Vec::with_capacity(n);
            let mut captured = Vec::with_capacity(n);
            let mut refunded = Vec::with_capacity(n);
            let mut currency = Vec::with_capacity(n);
            let mut bin = Vec::with_capacity(n);
            let mut last4 = Vec::with_capacity(n);
            let mut approval = Vec::with_capacity(n);
            let mut response = Vec::with_capacity(n);
            let mut reference = Vec::with_capacity(n);
            let mut created = Vec::with_capacity(n);
            let mut updated = Vec::with_capacity(n);
            for (pid, &(p, lsn)) in &self.payments {
                id.push(pid.as_str());
                merchant.push(p.merchant.0.as_str());
                status.push(p.status.as_str());
                amount.push(p.amount);
                captured.push(p.amount_captured);
                refunded.push(p.amount_refunded);
                currency.push(p.currency.alpha());
                bin.push(p.bin.as_str());
                last4.push(p.last4.as_str());
                approval.push(p.approval_code.as_deref());
                response.push(p.decline.map_or("00", |d| d.iso_code()));
                reference.push(p.reference.as_str());
                created.push(int(p.created_at.0, "created_at")?);
                updated.push(int(lsn, "lsn")?);
            }
            tx.execute(
                &st.payments,
                &[
                    &id, &merchant, &status, &amount, &captured, &refunded, &currency, &bin,
                    &last4, &approval, &response, &reference, &created, &updated,
                ],
            )
            .map_err(pg("upsert payments"))?;
        }
        let r = &self.refunds;
        if !r.lsn.is_empty() {
            tx.execute(
                &st.refunds,
                &[&shard, &r.lsn, &r.payment, &r.amount, &r.currency, &r.at],
            )
            .map_err(pg("insert refunds"))?;
        }
        let j = &self.journal;
        if !j.lsn.is_empty() {
            tx.execute(
                &st.journal,
                &[
                    &shard,
                    &j.lsn,
                    &j.n,
                    &j.account,
                    &j.currency,
                    &j.amount,
                    &j.kind,
                    &j.reference,
                    &j.at,
                ],
            )
            .map_err(pg("insert journal"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AccountId, Currency, Millis};
    use crate::ledger::effects::apply_with_effects;
    use crate::ledger::state::command_now;
    use crate::ledger::*;
    use crate::shard::routing::{shard_of_account, shard_of_card, shard_of_merchant};
    use sha2::{Digest, Sha256};
    use std::time::Instant;

    const SHARDS: u16 = 2;
    /// Card numbers the tests "use": they must appear nowhere in PostgreSQL.
    const PANS: [&str; 3] = ["4000001234567899", "4000005555444433", "5100009876543210"];

    fn url() -> String {
        std::env::var("COREPAY_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
    }

    fn client() -> Client {
        connect(&url()).unwrap_or_else(|e| {
            panic!(
                "these tests need the real PostgreSQL at {} (set COREPAY_TEST_POSTGRES_URL; \
                 scripts/services.sh starts it): {e}",
                url()
            )
        })
    }

    /// A fresh schema, dropped when the test ends (pass or fail).
    struct TestSchema(String);

    impl TestSchema {
        fn new() -> TestSchema {
            client(); // fail loudly and early without a database
            let r: [u8; 8] = crate::secrets::random_bytes();
            TestSchema(format!("corepay_test_{}", hex::encode(r)))
        }
        fn sink(&self) -> PostgresSink {
            PostgresSink::with_schema(&url(), &self.0)
        }
        fn count(&self, sql_from: &str) -> i64 {
            let sql = format!("SELECT count(*) FROM \"{}\".{sql_from}", self.0);
            client().query_one(&sql, &[]).unwrap().get(0)
        }
        fn state(&self) -> PgState {
            read_state_in(&url(), &self.0).unwrap()
        }
    }

    impl Drop for TestSchema {
        fn drop(&mut self) {
            if let Err(e) = reset(&url(), &self.0) {
                eprintln!("could not drop test schema {}: {e}", self.0);
            }
        }
    }

    fn eur() -> Currency {
        Currency::from_alpha("EUR").unwrap()
    }

    /// Ledgers of several shards, driven by commands, keeping every record's effects.
    struct Sim {
        ledgers: Vec<Ledger>,
        records: Vec<Vec<Record>>,
        now: u64,
        accounts: Vec<AccountId>,
        /// Refunds that changed a payment: (payment id, amount).
        refunds: Vec<(String, i64)>,
    }

    impl Sim {
        fn new(shards: u16) -> Sim {
            Sim {
                ledgers: (0..shards)
                    .map(|s| Ledger::new(ShardId(s), shards))
                    .collect(),
                records: (0..shards).map(|_| Vec::new()).collect(),
                now: 1_800_000_000_000,
                accounts: Vec::new(),
                refunds: Vec::new(),
            }
        }

        fn shards(&self) -> u16 {
            self.ledgers.len() as u16
        }

        fn exec(&mut self, shard: ShardId, cmd: Command) -> Outcome {
            self.now += 7;
            let log = &mut self.records[shard.index()];
            let lsn = Lsn(log.len() as u64 + 1);
            let (outcome, effects) =
                apply_with_effects(&mut self.ledgers[shard.index()], lsn, &cmd);
            log.push(Record {
                shard,
                lsn,
                time: command_now(&cmd),
                effects,
            });
            outcome
        }

        /// The `k`-th unused account id that lives on `shard`.
        fn account_on(&self, shard: u16) -> AccountId {
            (1..)
                .map(AccountId)
                .find(|&id| {
                    shard_of_account(id, self.shards()).0 == shard && !self.accounts.contains(&id)
                })
                .unwrap()
        }

        fn open(&mut self, shard: u16, currency: Currency, initial: i64) -> AccountId {
            let id = self.account_on(shard);
            let cmd = Command::CreateAccount {
                id,
                currency,
                initial,
                floor: 0,
                amount_limit: None,
                daily_count_limit: None,
            };
            let s = shard_of_account(id, self.shards());
            assert!(matches!(self.exec(s, cmd), Outcome::Account(_)));
            self.accounts.push(id);
            id
        }

        fn card(&mut self, pan: &str, account: AccountId) -> CardFacts {
            let hash: CardHash = Sha256::digest(pan.as_bytes()).into();
            let home = shard_of_card(&hash, self.shards());
            let cmd = Command::CreateCard {
                hash,
                account,
                bin: pan[..6].into(),
                last4: pan[pan.len() - 4..].into(),
                exp_month: 12,
                exp_year: 2031,
            };
            let Outcome::Card { id, .. } = self.exec(home, cmd) else {
                panic!("card created")
            };
            self.ledgers[home.index()].card(id).unwrap()
        }

        fn merchant(&mut self, name: &str, settlement: AccountId) -> MerchantFacts {
            let id = MerchantId(name.into());
            let home = shard_of_merchant(&id, self.shards());
            let cmd = Command::CreateMerchant {
                id: id.clone(),
                key_hash: [7; 32],
                settlement,
                currency: eur(),
                mcc: 5411,
            };
            assert!(matches!(self.exec(home, cmd), Outcome::Merchant { .. }));
            MerchantFacts {
                id,
                settlement,
                settlement_shard: shard_of_account(settlement, self.shards()),
                currency: eur(),
                mcc: 5411,
                status: Status::Active,
            }
        }

        fn authorize(
            &mut self,
            card: &CardFacts,
            m: &MerchantFacts,
            amount: i64,
            sale: bool,
        ) -> PaymentView {
            let shard = shard_of_account(card.account, self.shards());
            let cmd = Command::Authorize {
                merchant: m.clone(),
                card: Some(card.clone()),
                presented: PresentedCard {
                    bin: card.bin.clone(),
                    last4: card.last4.clone(),
                    exp_month: 12,
                    exp_year: 2031,
                },
                pre_decline: None,
                amount,
                currency: eur(),
                capture: sale,
                reference: format!("order-{}", self.now).into(),
                now: Millis(self.now),
                expires_at: Millis(self.now + 3_600_000),
                idem: None,
            };
            let Outcome::Payment(view) = self.exec(shard, cmd) else {
                panic!("a payment")
            };
            *view
        }

        fn capture(&mut self, p: &PaymentView, m: &MerchantFacts, amount: Option<i64>) {
            let cmd = Command::Capture {
                payment: p.id.seq,
                merchant: m.id.clone(),
                amount,
                now: Millis(self.now),
                idem: None,
            };
            let outcome = self.exec(p.id.shard, cmd);
            assert!(matches!(outcome, Outcome::Payment(_)), "{outcome:?}");
        }

        /// Refunds on the payment's shard or, for another settlement shard, debit there and
        /// (after `deliver`) credit back.
        fn refund(&mut self, p: &PaymentView, m: &MerchantFacts, card: &CardFacts, amount: i64) {
            let now = Millis(self.now);
            let outcome = if m.settlement_shard == p.id.shard {
                self.refunds.push((payment_id(p), amount));
                let cmd = Command::RefundLocal {
                    payment: p.id.seq,
                    merchant: m.id.clone(),
                    amount,
                    now,
                    idem: None,
                };
                self.exec(p.id.shard, cmd)
            } else {
                let view = self.ledgers[p.id.shard.index()]
                    .project_refund(p.id.seq, amount, 0)
                    .unwrap();
                self.refunds.push((payment_id(p), amount));
                let cmd = Command::RefundDebit {
                    payment: p.id,
                    settlement: m.settlement,
                    card_account: card.account,
                    amount,
                    currency: eur(),
                    view: Box::new(view),
                    now,
                    idem: None,
                };
                let outcome = self.exec(m.settlement_shard, cmd);
                self.deliver();
                outcome
            };
            assert!(matches!(outcome, Outcome::Payment(_)), "{outcome:?}");
        }

        fn transfer(&mut self, from: AccountId, to: AccountId, amount: i64, currency: Currency) {
            let cmd = Command::Transfer {
                id: format!("t{}", self.now),
                from,
                to,
                to_shard: shard_of_account(to, self.shards()),
                amount,
                currency,
                now: Millis(self.now),
                idem: None,
            };
            let outcome = self.exec(shard_of_account(from, self.shards()), cmd);
            assert!(matches!(outcome, Outcome::Transfer(_)), "{outcome:?}");
        }

        /// Applies every pending cross-shard credit, then acknowledges it.
        fn deliver(&mut self) {
            for from in 0..self.shards() {
                let pending: Vec<(ShardId, u64, Credit)> = self.ledgers[from as usize]
                    .outbox()
                    .map(|(to, seq, _, c)| (to, seq, c.clone()))
                    .collect();
                for (to, seq, credit) in pending {
                    if seq > self.ledgers[to.index()].last_applied_from(ShardId(from)) {
                        let cmd = Command::ApplyCredit {
                            from: ShardId(from),
                            seq,
                            credit,
                        };
                        assert_eq!(self.exec(to, cmd), Outcome::Done);
                    }
                    self.exec(ShardId(from), Command::AckCredits { to, seq });
                }
            }
        }

        fn payments(&self) -> Vec<PaymentView> {
            let mut out = Vec::new();
            for l in &self.ledgers {
                out.extend(
                    (1..l.next_payment_seq()).map(|seq| l.payment(seq).unwrap().view.clone()),
                );
            }
            out
        }

        fn journal_rows(&self) -> usize {
            self.records
                .iter()
                .flatten()
                .map(|r| r.effects.journal.len())
                .sum()
        }
    }

    /// Every kind of change on two shards: accounts in two currencies, cards, merchants
    /// settling on the card's shard and on the other, authorize, capture (full, partial),
    /// sale, decline, void, refunds (local and cross-shard), transfers (local, cross-shard),
    /// status changes, hold expiry.
    fn mixed_workload(rounds: usize) -> Sim {
        let mut sim = Sim::new(SHARDS);
        let usd = Currency::from_alpha("USD").unwrap();
        let holders: Vec<AccountId> = (0..3).map(|i| sim.open(i % 2, eur(), 50_000_000)).collect();
        let settle_a = sim.open(0, eur(), 1_000_000);
        let settle_b = sim.open(1, eur(), 1_000_000);
        let usd_a = sim.open(0, usd, 700_000);
        let usd_b = sim.open(1, usd, 0);
        let cards: Vec<CardFacts> = PANS
            .iter()
            .zip(&holders)
            .map(|(pan, &a)| sim.card(pan, a))
            .collect();
        let merchants = [
            sim.merchant("MERCH-A", settle_a),
            sim.merchant("MERCH-B", settle_b),
        ];
        for i in 0..rounds {
            let card = cards[i % cards.len()].clone();
            let m = merchants[i % 2].clone();
            let amount = 1_000 + (i as i64 * 37) % 5_000;
            let p = sim.authorize(&card, &m, amount, i % 3 == 0);
            if i % 3 != 0 {
                match i % 5 {
                    0 => sim.capture(&p, &m, None),
                    1 => sim.capture(&p, &m, Some(amount / 2)),
                    2 => {
                        let cmd = Command::Void {
                            payment: p.id.seq,
                            merchant: m.id.clone(),
                            now: Millis(sim.now),
                            idem: None,
                        };
                        sim.exec(p.id.shard, cmd);
                        continue;
                    }
                    3 => continue, // stays authorized (some expire below)
                    _ => sim.capture(&p, &m, Some(amount - 1)),
                }
            }
            sim.deliver();
            if i % 2 == 0 {
                sim.refund(&p, &m, &card, 100);
                if i % 4 == 0 {
                    sim.refund(&p, &m, &card, 50);
                }
            }
            if i % 4 == 1 {
                let to = holders[(i + 1) % holders.len()];
                sim.transfer(card.account, to, 300, eur());
            }
            if i % 6 == 5 {
                sim.transfer(usd_a, usd_b, 1_000, usd);
                sim.deliver();
            }
            if i % 10 == 9 {
                sim.now += 4_000_000;
                for s in 0..SHARDS {
                    let now = Millis(sim.now);
                    let payments = sim.ledgers[s as usize].holds_due_in_memory(now, usize::MAX);
                    sim.exec(ShardId(s), Command::ExpireHolds { now, payments });
                }
            }
            if i == rounds / 2 {
                // A decline (insufficient funds) and a blocked, then re-activated, merchant.
                let p = sim.authorize(&card, &m, 1_000_000_000_000, false);
                assert_eq!(p.decline, Some(Decline::InsufficientFunds));
                for status in [Status::Blocked, Status::Active] {
                    let home = shard_of_merchant(&m.id, SHARDS);
                    let cmd = Command::SetMerchantStatus {
                        id: m.id.clone(),
                        status,
                    };
                    sim.exec(home, cmd);
                }
                let cmd = Command::SetCardStatus {
                    id: card.id,
                    status: Status::Blocked,
                };
                sim.exec(card.home, cmd);
                let cmd = Command::SetAccountStatus {
                    id: usd_b,
                    status: Status::Blocked,
                };
                sim.exec(shard_of_account(usd_b, SHARDS), cmd);
            }
        }
        sim.deliver();
        sim
    }

    fn apply_in_batches(sink: &mut PostgresSink, shard: ShardId, records: &[Record], size: usize) {
        let from = sink.progress(shard).unwrap();
        let start = records.partition_point(|r| r.lsn <= from);
        for batch in records[start..].chunks(size) {
            sink.apply(shard, batch).unwrap();
        }
    }

    /// PostgreSQL holds exactly the ledgers' state: progress, accounts, payments, and a
    /// journal that sums to each balance and balances per currency.
    fn assert_state(sim: &Sim, schema: &TestSchema) {
        let state = schema.state();
        for (s, log) in sim.records.iter().enumerate() {
            assert_eq!(
                state.progress.get(&(s as u16)),
                Some(&(log.len() as u64)),
                "progress"
            );
        }
        assert_eq!(state.accounts.len(), sim.accounts.len());
        for &id in &sim.accounts {
            let a = sim.ledgers[shard_of_account(id, sim.shards()).index()]
                .account(id)
                .unwrap();
            let expected = (
                a.currency.alpha().to_string(),
                a.balance,
                a.held,
                a.status.as_str().to_string(),
            );
            assert_eq!(state.accounts[&id.0], expected, "account {}", id.0);
            assert_eq!(
                state.account_journal.get(&id.0).copied().unwrap_or(0),
                a.balance,
                "Σ journal of account {}",
                id.0
            );
        }
        let payments = sim.payments();
        assert_eq!(state.payments.len(), payments.len());
        for p in &payments {
            let expected = (
                p.status.as_str().to_string(),
                p.amount,
                p.amount_captured,
                p.amount_refunded,
            );
            assert_eq!(state.payments[&payment_id(p)], expected);
        }
        assert_eq!(
            state.journal_sums.len(),
            2,
            "EUR and USD: {:?}",
            state.journal_sums
        );
        assert!(
            state.journal_sums.values().all(|&s| s == 0),
            "{:?}",
            state.journal_sums
        );
    }

    /// `assert_state`, and PostgreSQL holds every record's own rows: a journal entry per
    /// entry, a refund row per refund.
    fn assert_matches(sim: &Sim, schema: &TestSchema) {
        assert_state(sim, schema);
        let payments = sim.payments();
        assert_eq!(schema.count("journal") as usize, sim.journal_rows());
        // Refunds: one row per refund, Σ per payment == amount_refunded.
        assert_eq!(schema.count("refunds") as usize, sim.refunds.len());
        let sql = format!(
            "SELECT payment_id, sum(amount)::bigint FROM \"{}\".refunds GROUP BY 1",
            schema.0
        );
        let sums: BTreeMap<String, i64> = client()
            .query(&sql, &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        for p in &payments {
            assert_eq!(
                sums.get(&payment_id(p)).copied().unwrap_or(0),
                p.amount_refunded
            );
        }
    }

    /// One shard's state as a store would give it for a re-seed: the ledger as it is now,
    /// cards and merchants as its records last showed them.
    struct SeedParts {
        shard: ShardId,
        at: Lsn,
        accounts: Vec<AccountView>,
        cards: Vec<CardFacts>,
        merchants: Vec<MerchantRow>,
        positions: Vec<(Currency, i64, i64)>,
        payments: Vec<PaymentView>,
    }

    fn seed_parts(sim: &Sim, s: u16) -> SeedParts {
        let ledger = &sim.ledgers[s as usize];
        let records = &sim.records[s as usize];
        let mut cards = BTreeMap::new();
        let mut merchants = BTreeMap::new();
        for r in records {
            for c in &r.effects.cards {
                cards.insert(c.id, c.clone());
            }
            for m in &r.effects.merchants {
                merchants.insert(m.id.0.clone(), m.clone());
            }
        }
        SeedParts {
            shard: ShardId(s),
            at: Lsn(records.len() as u64),
            accounts: ledger.all_accounts().collect(),
            cards: cards.into_values().collect(),
            merchants: merchants.into_values().collect(),
            positions: ledger
                .totals()
                .iter()
                .map(|(c, t)| (*c, t.treasury, t.sent - t.received))
                .collect(),
            payments: ledger.all_payments().cloned().collect(),
        }
    }

    fn reseed(sink: &mut PostgresSink, parts: &SeedParts, missing_from: Lsn) {
        let mut given = 0;
        let mut next = |n: usize| {
            let chunk: Vec<PaymentView> =
                parts.payments.iter().skip(given).take(n).cloned().collect();
            given += chunk.len();
            Ok(chunk)
        };
        let mut seed = Seed {
            shard: parts.shard,
            at: parts.at,
            missing_from,
            time: Millis(1_700_000_000_000),
            accounts: parts.accounts.clone(),
            cards: parts.cards.clone(),
            merchants: parts.merchants.clone(),
            positions: parts.positions.clone(),
            payments: &mut next,
        };
        sink.reseed(&mut seed).unwrap();
    }

    /// A sink that missed records (a third of each shard's, up to a copy taken later) is
    /// re-seeded from that copy, then follows the records after it: PostgreSQL ends up
    /// holding exactly the ledgers' state, its journal summing to every balance, with the
    /// missed entries summed into 'reseed' entries. A repeated re-seed changes nothing.
    #[test]
    fn a_reseed_fills_a_gap_and_the_records_after_it_follow() {
        let schema = TestSchema::new();
        let mut sim = mixed_workload(60);
        let copies: Vec<SeedParts> = (0..SHARDS).map(|s| seed_parts(&sim, s)).collect();
        // Records after the copy: transfers both ways across shards, a new account.
        let (a, b) = (sim.accounts[0], sim.accounts[1]);
        assert_ne!(
            shard_of_account(a, SHARDS),
            shard_of_account(b, SHARDS),
            "a cross-shard transfer"
        );
        sim.transfer(a, b, 700, eur());
        sim.deliver();
        sim.open(0, eur(), 12_345);
        sim.transfer(b, a, 300, eur());
        sim.deliver();
        let mut sink = schema.sink();
        for s in 0..SHARDS {
            let records = &sim.records[s as usize];
            let copy = &copies[s as usize];
            let third = records.len() / 3;
            assert!((third as u64) < copy.at.0 && copy.at.0 < records.len() as u64);
            apply_in_batches(&mut sink, ShardId(s), &records[..third], 5);
            reseed(&mut sink, copy, Lsn(third as u64 + 1));
            assert_eq!(sink.progress(ShardId(s)).unwrap(), copy.at);
            // A retry whose first commit went through (its answer lost) changes nothing.
            reseed(&mut sink, copy, Lsn(third as u64 + 1));
            apply_in_batches(&mut sink, ShardId(s), records, 5);
        }
        assert_state(&sim, &schema);
        assert_eq!(schema.count("reseeds"), i64::from(SHARDS));
        assert!(schema.count("journal WHERE kind = 'reseed'") >= 2);
        assert!(
            (schema.count("journal") as usize) < sim.journal_rows(),
            "the missed entries are summed, not stored one by one"
        );
    }

    /// A schema made by an earlier corepay (version 1) is migrated in place: its rows stay,
    /// the journal's entry index becomes an integer, `reseeds` appears.
    #[test]
    fn a_version_1_schema_is_migrated_and_keeps_its_rows() {
        let schema = TestSchema::new();
        let q = quoted(&schema.0).unwrap();
        let c = &mut client();
        c.batch_execute(&format!(
            "CREATE SCHEMA {q};
             CREATE TABLE {q}.schema_version (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now());
             {}
             INSERT INTO {q}.schema_version (version) VALUES (1);
             INSERT INTO {q}.journal VALUES (0, 7, 0, 'account:1', 'EUR', 5, 'transfer', NULL, NULL);
             INSERT INTO {q}.progress VALUES (0, 7, now());",
            schema_v1(&q)
        ))
        .unwrap();
        assert_eq!(schema.sink().progress(ShardId(0)).unwrap(), Lsn(7));
        let ty: String = c
            .query_one(
                "SELECT data_type FROM information_schema.columns \
                 WHERE table_schema = $1 AND table_name = 'journal' AND column_name = 'n'",
                &[&schema.0],
            )
            .unwrap()
            .get(0);
        assert_eq!(ty, "integer");
        assert_eq!(schema.count("journal WHERE lsn = 7 AND amount = 5"), 1);
        assert_eq!(schema.count("reseeds"), 0);
    }

    #[test]
    fn replicates_a_mixed_workload_exactly() {
        let schema = TestSchema::new();
        let sim = mixed_workload(120);
        assert!(sim.refunds.len() > 50 && sim.records.iter().all(|r| r.len() > 100));
        // Both shards at once, as the runner does: their migrations race.
        std::thread::scope(|scope| {
            for s in 0..SHARDS {
                let (schema, sim) = (&schema, &sim);
                scope.spawn(move || {
                    let mut sink = schema.sink();
                    assert_eq!(sink.name(), "postgres");
                    assert_eq!(sink.progress(ShardId(s)).unwrap(), Lsn(0));
                    apply_in_batches(&mut sink, ShardId(s), &sim.records[s as usize], 7);
                });
            }
        });
        assert_matches(&sim, &schema);
        // Rows beyond read_state: cards, merchants, a payment, journal lines, a refund.
        let mut c = client();
        let q = &schema.0;
        let cards = c
            .query(
                &format!("SELECT bin, last4, status, exp_year FROM \"{q}\".cards ORDER BY id"),
                &[],
            )
            .unwrap();
        assert_eq!(cards.len(), 3);
        let blocked: Vec<String> = cards.iter().map(|r| r.get::<_, String>(2)).collect();
        assert_eq!(blocked.iter().filter(|s| *s == "blocked").count(), 1);
        assert!(cards
            .iter()
            .all(|r| r.get::<_, String>(0).len() == 6 && r.get::<_, String>(1).len() == 4));
        let merchants = c
            .query(
                &format!("SELECT id, mcc, status, currency FROM \"{q}\".merchants ORDER BY id"),
                &[],
            )
            .unwrap();
        let merchants: Vec<(String, String, String, String)> = merchants
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        assert_eq!(
            merchants[0],
            (
                "MERCH-A".into(),
                "5411".into(),
                "active".into(),
                "EUR".into()
            )
        );
        assert_eq!(merchants.len(), 2);
        let declined = c
            .query(&format!("SELECT response_code, approval_code FROM \"{q}\".payments WHERE status = 'declined'"), &[])
            .unwrap();
        assert_eq!(declined.len(), 1);
        assert_eq!(declined[0].get::<_, String>(0), "51");
        assert_eq!(declined[0].get::<_, Option<String>>(1), None);
        let approved = c
            .query_one(&format!("SELECT count(*) FROM \"{q}\".payments WHERE response_code = '00' AND approval_code IS NOT NULL"), &[])
            .unwrap()
            .get::<_, i64>(0);
        assert_eq!(approved as usize, sim.payments().len() - 1);
        let kinds: Vec<String> = c
            .query(
                &format!("SELECT DISTINCT kind FROM \"{q}\".journal ORDER BY 1"),
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        for k in [
            "capture",
            "credit",
            "open_account",
            "refund",
            "sale",
            "transfer",
        ] {
            assert!(kinds.iter().any(|x| x == k), "{k} in {kinds:?}");
        }
        let in_flight: i64 = c
            .query_one(&format!("SELECT coalesce(sum(amount), 0)::bigint FROM \"{q}\".journal WHERE account = 'in_flight'"), &[])
            .unwrap()
            .get(0);
        assert_eq!(in_flight, 0, "every credit delivered");
        // Cross-shard refund returns are stored at the payment's shard, without a time.
        let untimed = schema.count("refunds WHERE at IS NULL");
        assert!(
            untimed > 0 && untimed < sim.refunds.len() as i64,
            "{untimed}"
        );
        let first = c
            .query_one(
                &format!(
                    "SELECT extract(epoch FROM min(created_at))::bigint FROM \"{q}\".payments"
                ),
                &[],
            )
            .unwrap()
            .get::<_, i64>(0);
        assert_eq!(
            first, 1_800_000_000,
            "created_at from the command's milliseconds"
        );
    }

    #[test]
    fn no_pan_or_card_hash_anywhere() {
        let schema = TestSchema::new();
        let sim = mixed_workload(30);
        let mut sink = schema.sink();
        for s in 0..SHARDS {
            apply_in_batches(&mut sink, ShardId(s), &sim.records[s as usize], 50);
        }
        let c = &mut client();
        let columns = c
            .query(
                "SELECT table_name, column_name FROM information_schema.columns \
                 WHERE table_schema = $1 AND data_type = 'text'",
                &[&schema.0],
            )
            .unwrap();
        assert!(columns.len() >= 20, "{}", columns.len());
        let mut needles: Vec<String> = PANS.iter().map(|p| p.to_string()).collect();
        needles.extend(
            PANS.iter()
                .map(|p| hex::encode(Sha256::digest(p.as_bytes()))),
        );
        needles.extend(PANS.iter().map(|p| p[6..12].to_string())); // the hidden middle digits
        for row in &columns {
            let (table, column): (String, String) = (row.get(0), row.get(1));
            for needle in &needles {
                let sql = format!(
                    "SELECT count(*) FROM \"{}\".\"{table}\" WHERE \"{column}\" LIKE '%' || $1 || '%'",
                    schema.0
                );
                let n: i64 = c.query_one(&sql, &[needle]).unwrap().get(0);
                assert_eq!(n, 0, "{table}.{column} contains {needle}");
            }
        }
    }

    #[test]
    fn reapplying_committed_batches_changes_nothing() {
        let schema = TestSchema::new();
        let sim = mixed_workload(40);
        let shard = ShardId(0);
        let log = &sim.records[0];
        let mut sink = schema.sink();
        sink.progress(shard).unwrap();
        sink.apply(shard, &log[..60]).unwrap();
        let journal = schema.count("journal");
        let refunds = schema.count("refunds");
        let before = schema.state();
        // A crash after COMMIT: the runner did not see the answer and sends the batch again.
        sink.apply(shard, &log[..60]).unwrap();
        sink.apply(shard, &log[10..60]).unwrap();
        assert_eq!(schema.state(), before);
        assert_eq!(schema.count("journal"), journal);
        assert_eq!(schema.count("refunds"), refunds);
        // An overlapping batch: only the new suffix is stored.
        sink.apply(shard, &log[50..90]).unwrap();
        assert_eq!(sink.progress(shard).unwrap(), Lsn(90));
        // A fresh sink (a restarted process) resumes from its progress.
        let mut sink = schema.sink();
        apply_in_batches(&mut sink, shard, log, 13);
        sink.apply(shard, &log[log.len() - 5..]).unwrap();
        let mut other = schema.sink();
        apply_in_batches(&mut other, ShardId(1), &sim.records[1], 1000);
        assert_matches(&sim, &schema);
    }

    #[test]
    fn a_batch_whose_connection_dies_mid_transaction_is_applied_once() {
        let schema = TestSchema::new();
        let sim = mixed_workload(40);
        let shard = ShardId(0);
        let log = sim.records[0].clone();
        let mut sink = schema.sink();
        sink.progress(shard).unwrap();
        sink.apply(shard, &log[..30]).unwrap();
        // Hold a lock on an account row the next batch updates: the sink's transaction
        // stops there, after it has locked progress and before it commits.
        let next = &log[30..80];
        let account = next
            .iter()
            .flat_map(|r| &r.effects.accounts)
            .next()
            .unwrap()
            .id;
        let mut blocker = client();
        let mut tx = blocker.transaction().unwrap();
        let blocker_pid: i32 = tx.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        tx.execute(
            &format!(
                "SELECT 1 FROM \"{}\".accounts WHERE id = $1 FOR UPDATE",
                schema.0
            ),
            &[&(account.0 as i64)],
        )
        .unwrap();
        let batch = next.to_vec();
        let worker = std::thread::spawn(move || {
            let result = sink.apply(shard, &batch);
            (sink, result)
        });
        let mut admin = client();
        let started = Instant::now();
        let victim: i32 = loop {
            let rows = admin
                .query(
                    "SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                    &[&blocker_pid],
                )
                .unwrap();
            if let Some(r) = rows.first() {
                break r.get(0);
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the sink never blocked"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let killed: bool = admin
            .query_one("SELECT pg_terminate_backend($1)", &[&victim])
            .unwrap()
            .get(0);
        assert!(killed);
        let (mut sink, result) = worker.join().unwrap();
        let err = result.expect_err("the connection died mid-batch");
        assert!(err.0.starts_with("postgres: "), "{err}");
        tx.rollback().unwrap();
        // Nothing of the batch is stored; the next progress() reconnects.
        assert_eq!(schema.state().progress[&0], 30);
        assert_eq!(sink.progress(shard).unwrap(), Lsn(30));
        sink.apply(shard, next).unwrap();
        // Also a sink dropped with a transaction open (a crash before COMMIT).
        {
            let mut doomed = schema.sink();
            doomed.connection().unwrap();
            let mut conn = doomed.client.take().unwrap();
            let mut tx = conn.client.transaction().unwrap();
            let rows = Rows::build(&log[80..100], &HashMap::new()).unwrap();
            rows.write(&mut tx, &conn.st, 0).unwrap();
            std::mem::forget(tx); // no COMMIT, no ROLLBACK: the process "dies"
            drop(conn);
        }
        apply_in_batches(&mut sink, shard, &log, 25);
        apply_in_batches(&mut sink, ShardId(1), &sim.records[1], 25);
        assert_matches(&sim, &schema);
    }

    #[test]
    fn concurrent_start_up_creates_the_schema_once() {
        let schema = TestSchema::new();
        std::thread::scope(|scope| {
            for s in 0..8u16 {
                let schema = &schema;
                scope
                    .spawn(move || assert_eq!(schema.sink().progress(ShardId(s)).unwrap(), Lsn(0)));
            }
        });
        let c = &mut client();
        let versions: Vec<i32> = c
            .query(
                &format!(
                    "SELECT version FROM \"{}\".schema_version ORDER BY version",
                    schema.0
                ),
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        // Each migration step once, in order, however many sinks raced.
        assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
        // Running again on a migrated schema is a no-op; a newer schema is refused.
        assert_eq!(schema.sink().progress(ShardId(0)).unwrap(), Lsn(0));
        c.execute(
            &format!(
                "INSERT INTO \"{}\".schema_version (version) VALUES (99)",
                schema.0
            ),
            &[],
        )
        .unwrap();
        let err = schema.sink().progress(ShardId(0)).unwrap_err();
        assert!(err.0.contains("version 99"), "{err}");
    }

    #[test]
    fn failures_are_errors_not_panics() {
        let schema = TestSchema::new();
        let mut down = PostgresSink::with_schema("postgres://postgres@127.0.0.1:1/test", &schema.0);
        let err = down.progress(ShardId(0)).unwrap_err();
        assert!(err.0.contains("cannot connect"), "{err}");
        let sim = mixed_workload(2);
        assert!(down.apply(ShardId(0), &sim.records[0]).is_err());
        let err = PostgresSink::with_schema(&url(), "Bad-Name; DROP")
            .progress(ShardId(0))
            .unwrap_err();
        assert!(err.0.contains("schema name"), "{err}");
        let err = read_state_in(&url(), &schema.0).unwrap_err();
        assert!(err.0.contains("no corepay tables"), "{err}");
        // A malformed batch (another shard's records, or out of order) is refused.
        let mut sink = schema.sink();
        assert!(sink.apply(ShardId(1), &sim.records[0]).is_err());
        let reversed: Vec<Record> = sim.records[0].iter().rev().cloned().collect();
        assert!(sink.apply(ShardId(0), &reversed).is_err());
        assert!(sink.apply(ShardId(0), &[]).is_ok());
    }

    #[test]
    fn throughput_10k_records_in_batches_of_1000() {
        let schema = TestSchema::new();
        let mut sim = Sim::new(1);
        let holder = sim.open(0, eur(), i64::MAX / 4);
        let other = sim.open(0, eur(), 0);
        let settle = sim.open(0, eur(), 0);
        let card = sim.card(PANS[0], holder);
        let m = sim.merchant("BENCH", settle);
        let mut i = 0i64;
        while sim.records[0].len() < 10_000 {
            i += 1;
            let p = sim.authorize(&card, &m, 1_000 + i % 500, false);
            sim.capture(&p, &m, None);
            if i % 4 == 0 {
                sim.refund(&p, &m, &card, 10);
            }
            if i % 3 == 0 {
                sim.transfer(holder, other, 5, eur());
            }
        }
        let log = &sim.records[0][..10_000];
        let mut sink = schema.sink();
        sink.progress(ShardId(0)).unwrap();
        let started = Instant::now();
        for batch in log.chunks(1000) {
            sink.apply(ShardId(0), batch).unwrap();
        }
        let took = started.elapsed();
        let journal = schema.count("journal");
        println!(
            "postgres sink: {} records ({journal} journal rows) in {:.3} s = {:.0} records/s \
             (batches of 1000, {} build)",
            log.len(),
            took.as_secs_f64(),
            log.len() as f64 / took.as_secs_f64(),
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
        );
        assert_eq!(schema.state().progress[&0], 10_000);
    }
}
