//! `corepay reconcile`: compares what PostgreSQL holds with the gateway's own state, rebuilt
//! read-only from the WAL, and lists every difference.

use crate::config::Config;
use crate::domain::{Lsn, ShardId};
use crate::ledger::command::decode_command;
use crate::ledger::Ledger;
use crate::replication::postgres::read_state_in;
use crate::wal::{dump_records, FsSource};
use std::path::Path;

/// Every difference between PostgreSQL and the WAL, one line each (empty when they match).
pub fn reconcile(config: &Config) -> Result<Vec<String>, String> {
    let url = config.replication.postgres().ok_or(
        "replication.postgres_url (or COREPAY_POSTGRES_URL) is not set: nothing to reconcile",
    )?;
    let data = &config.server.data_dir;
    let marker = data.join("shards");
    let shards: u16 = std::fs::read_to_string(&marker)
        .map_err(|e| format!("{}: {e} (is server.data_dir right?)", marker.display()))?
        .trim()
        .parse()
        .map_err(|_| format!("{} is damaged", marker.display()))?;
    let mut ledgers = Vec::new();
    let mut last = Vec::new();
    for k in 0..shards {
        let (ledger, lsn) = replay(
            &data.join(format!("shard-{k}")).join("wal"),
            ShardId(k),
            shards,
        )?;
        ledgers.push(ledger);
        last.push(lsn);
    }
    let pg = read_state_in(&url, &config.replication.postgres_schema).map_err(|e| e.to_string())?;
    let mut diffs = Vec::new();
    for (k, lsn) in last.iter().enumerate() {
        let stored = pg.progress.get(&(k as u16)).copied().unwrap_or(0);
        if stored != lsn.0 {
            diffs.push(format!(
                "shard {k}: PostgreSQL has the WAL up to lsn {stored}, the WAL ends at {}",
                lsn.0
            ));
        }
    }
    let mut seen_accounts = 0;
    for ledger in &ledgers {
        for a in ledger.all_accounts() {
            seen_accounts += 1;
            let want = (
                a.currency.alpha().to_string(),
                a.balance,
                a.held,
                a.status.as_str().to_string(),
            );
            match pg.accounts.get(&a.id.0) {
                Some(got) if *got == want => {}
                Some(got) => diffs.push(format!(
                    "account {}: gateway {want:?}, PostgreSQL {got:?}",
                    a.id.0
                )),
                None => diffs.push(format!("account {}: missing in PostgreSQL", a.id.0)),
            }
            let journal = pg.account_journal.get(&a.id.0).copied().unwrap_or(0);
            if journal != a.balance {
                diffs.push(format!(
                    "account {}: journal sums to {journal}, balance is {}",
                    a.id.0, a.balance
                ));
            }
        }
    }
    if pg.accounts.len() != seen_accounts {
        diffs.push(format!(
            "PostgreSQL has {} accounts, the gateway {seen_accounts}",
            pg.accounts.len()
        ));
    }
    let mut seen_payments = 0;
    for (k, ledger) in ledgers.iter().enumerate() {
        for p in ledger.all_payments() {
            seen_payments += 1;
            let id = format!("pay_{k}_{}", p.id.seq);
            let want = (
                p.status.as_str().to_string(),
                p.amount,
                p.amount_captured,
                p.amount_refunded,
            );
            match pg.payments.get(&id) {
                Some(got) if *got == want => {}
                Some(got) => diffs.push(format!(
                    "payment {id}: gateway {want:?}, PostgreSQL {got:?}"
                )),
                None => diffs.push(format!("payment {id}: missing in PostgreSQL")),
            }
        }
    }
    if pg.payments.len() != seen_payments {
        diffs.push(format!(
            "PostgreSQL has {} payments, the gateway {seen_payments}",
            pg.payments.len()
        ));
    }
    for (currency, sum) in &pg.journal_sums {
        if *sum != 0 {
            diffs.push(format!("journal entries in {currency} sum to {sum}, not 0"));
        }
    }
    Ok(diffs)
}

/// Rebuilds one shard's ledger from its WAL without changing any file.
fn replay(dir: &Path, shard: ShardId, shards: u16) -> Result<(Ledger, Lsn), String> {
    let mut ledger = Ledger::new(shard, shards);
    let mut last = Lsn(0);
    let mut bad = None;
    dump_records(
        &FsSource::new(dir),
        |_, _, lsn, kind, version, payload| match decode_command(kind, version, payload) {
            Ok(cmd) => {
                ledger.apply(lsn, &cmd);
                last = lsn;
            }
            Err(e) => bad = bad.take().or(Some(format!("lsn {}: {e}", lsn.0))),
        },
    )
    .map_err(|e| format!("{}: {e}", dir.display()))?;
    match bad {
        Some(e) => Err(format!("{}: {e}", dir.display())),
        None => Ok((ledger, last)),
    }
}
