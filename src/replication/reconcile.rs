//! `corepay reconcile`: compares what PostgreSQL holds with the gateway's own state, read
//! from every shard's store (one consistent snapshot each), and lists every difference.
//!
//! With the gateway stopped, the command opens the stores itself; while it runs (the data
//! directory is locked), the command asks it over the operator listener (`/reconcile`),
//! and the gateway runs this same comparison on a thread of its own.

use crate::config::Config;
use crate::domain::Lsn;
use crate::replication::postgres::read_state_in;
use crate::store::Store;
use std::sync::Arc;

/// One shard's state as its store holds it.
pub struct ShardState {
    pub applied: Lsn,
    pub accounts: Vec<crate::ledger::AccountView>,
    pub payments: Vec<crate::ledger::PaymentView>,
}

/// Reads every shard's state from its store (in shard order).
pub fn states(stores: &[Arc<Store>]) -> Result<Vec<ShardState>, String> {
    stores
        .iter()
        .map(|store| {
            let (applied, accounts, payments) = store.export().map_err(|e| e.to_string())?;
            Ok(ShardState {
                applied,
                accounts: accounts
                    .iter()
                    .map(|(id, a)| crate::ledger::state::view_account(*id, a))
                    .collect(),
                payments: payments.into_iter().map(|p| p.view).collect(),
            })
        })
        .collect()
}

/// Opens every shard's store of a stopped gateway and reconciles.
pub fn reconcile(config: &Config) -> Result<Vec<String>, String> {
    let data = &config.server.data_dir;
    let marker = data.join("shards");
    let shards: u16 = std::fs::read_to_string(&marker)
        .map_err(|e| format!("{}: {e} (is server.data_dir right?)", marker.display()))?
        .trim()
        .parse()
        .map_err(|_| format!("{} is damaged", marker.display()))?;
    let stores = (0..shards)
        .map(|k| {
            Store::open(&crate::store::store_path(data, k), 64 << 20)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    compare(config, &states(&stores)?)
}

/// Every difference between PostgreSQL and the gateway's `shards` (empty when they match).
pub fn compare(config: &Config, shards: &[ShardState]) -> Result<Vec<String>, String> {
    let url = config.replication.postgres().ok_or(
        "replication.postgres_url (or COREPAY_POSTGRES_URL) is not set: nothing to reconcile",
    )?;
    let pg = read_state_in(&url, &config.replication.postgres_schema).map_err(|e| e.to_string())?;
    let mut diffs = Vec::new();
    for (k, shard) in shards.iter().enumerate() {
        let stored = pg.progress.get(&(k as u16)).copied().unwrap_or(0);
        if stored != shard.applied.0 {
            diffs.push(format!(
                "shard {k}: PostgreSQL has records up to lsn {stored}, the gateway's store up to {}",
                shard.applied.0
            ));
        }
    }
    let mut seen_accounts = 0;
    for shard in shards {
        for a in &shard.accounts {
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
    for (k, shard) in shards.iter().enumerate() {
        for p in &shard.payments {
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
