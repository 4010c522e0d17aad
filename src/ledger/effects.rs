//! What a command changed, as rows a downstream system can store: the accounts, cards,
//! merchants and payments it touched (their state after), and balanced journal entries.
//!
//! Used by replication, which replays each shard's WAL through its own `Ledger` (the state
//! machine is deterministic, so the replica's state is the gateway's) and stores the effects.
//! Computed around `Ledger::apply` from the command and public reads, so the gateway's hot
//! path pays nothing for it.

use crate::domain::{AccountId, Currency, Lsn, ShardId};
use crate::ledger::command::*;
use crate::ledger::state::Ledger;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;

/// Who a journal entry moves money for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum JournalAccount {
    Account(AccountId),
    /// The shard's treasury for the currency (funds opening balances).
    Treasury(ShardId),
    /// Money that left this shard for another and has not been applied there yet (positive
    /// while in flight); the receiving shard's credit takes it back out.
    InFlight,
}

/// One line of the append-only journal. The entries of one command sum to zero per currency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub account: JournalAccount,
    pub currency: Currency,
    /// Signed minor units: credit positive, debit negative.
    pub amount: i64,
}

/// A merchant as stored downstream: never its API key, not even hashed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerchantRow {
    pub id: MerchantId,
    pub settlement: AccountId,
    pub currency: Currency,
    pub mcc: u16,
    pub status: Status,
}

/// The rows one command changed. Kept in the store's change log until every sink has it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effects {
    pub accounts: Vec<AccountView>,
    pub cards: Vec<CardFacts>,
    pub merchants: Vec<MerchantRow>,
    pub payments: Vec<PaymentView>,
    pub journal: Vec<JournalEntry>,
    /// What kind of operation this was ("authorize", "capture", ...), for the journal.
    #[serde(deserialize_with = "kind_from_str")]
    pub kind: Kind,
    /// The payment or transfer the journal entries belong to, when there is one.
    pub reference: Option<String>,
}

/// Applies `cmd` to `ledger` and returns what it changed.
pub fn apply_with_effects(ledger: &mut Ledger, lsn: Lsn, cmd: &Command) -> (Outcome, Effects) {
    let (accounts, payments) = touched(ledger, cmd);
    let before: BTreeMap<AccountId, i64> = accounts
        .iter()
        .filter_map(|&id| ledger.account(id).map(|a| (id, a.balance)))
        .collect();
    let totals_before = ledger.totals().clone();
    let next_card = ledger.next_card_id();
    let new_payment = PaymentRef {
        shard: ledger.shard(),
        seq: ledger.next_payment_seq(),
    };
    let outcome = ledger.apply(lsn, cmd);

    let reference = match cmd {
        Command::Authorize { .. } => {
            Some(format!("pay_{}_{}", new_payment.shard.0, new_payment.seq))
        }
        _ => reference(ledger.shard(), cmd),
    };
    let mut fx = Effects {
        kind: kind(cmd),
        reference,
        ..Effects::default()
    };
    for &id in &accounts {
        let Some(after) = ledger.account(id) else {
            continue;
        };
        let delta = after.balance - before.get(&id).copied().unwrap_or(0);
        if delta != 0 {
            fx.journal.push(JournalEntry {
                account: JournalAccount::Account(id),
                currency: after.currency,
                amount: delta,
            });
        }
        fx.accounts.push(after);
    }
    for (currency, after) in ledger.totals() {
        let b = totals_before.get(currency).copied().unwrap_or_default();
        let treasury = after.treasury - b.treasury;
        if treasury != 0 {
            let account = JournalAccount::Treasury(ledger.shard());
            fx.journal.push(JournalEntry {
                account,
                currency: *currency,
                amount: treasury,
            });
        }
        let in_flight = (after.sent - after.received) - (b.sent - b.received);
        if in_flight != 0 {
            fx.journal.push(JournalEntry {
                account: JournalAccount::InFlight,
                currency: *currency,
                amount: in_flight,
            });
        }
    }
    // A refused command changed no payment: publishing its rows again would announce a
    // state change that did not happen.
    if !matches!(outcome, Outcome::Rejected(_)) {
        for seq in payments {
            if let Some(p) = ledger.payment(seq) {
                fx.payments.push(p.view.clone());
            }
        }
    }
    match cmd {
        Command::CreateCard { .. } => fx.cards.extend(ledger.card(next_card)),
        Command::SetCardStatus { id, .. } => fx.cards.extend(ledger.card(*id)),
        Command::CreateMerchant { id, .. } | Command::SetMerchantStatus { id, .. } => fx
            .merchants
            .extend(ledger.merchant(id).map(|m| MerchantRow {
                id: id.clone(),
                settlement: m.settlement,
                currency: m.currency,
                mcc: m.mcc,
                status: m.status,
            })),
        _ => {}
    }
    let mut sums: BTreeMap<Currency, i64> = BTreeMap::new();
    for e in &fx.journal {
        *sums.entry(e.currency).or_default() += e.amount;
    }
    assert!(
        sums.values().all(|&s| s == 0),
        "journal entries balance: {fx:?}"
    );
    (outcome, fx)
}

/// Accounts and payments a command may change (a superset is fine: unchanged rows are
/// rewritten with the same values and produce no journal entry).
fn touched(ledger: &Ledger, cmd: &Command) -> (Vec<AccountId>, Vec<u64>) {
    let payment = |seq: u64| ledger.payment(seq);
    let mut accounts = Vec::new();
    let mut payments = Vec::new();
    let mut with_payment = |seq: u64, accounts: &mut Vec<AccountId>| {
        payments.push(seq);
        if let Some(p) = payment(seq) {
            accounts.extend(p.account);
            if p.settlement_shard == ledger.shard() {
                accounts.push(p.settlement);
            }
        }
    };
    match cmd {
        Command::CreateAccount { id, .. } | Command::SetAccountStatus { id, .. } => {
            accounts.push(*id)
        }
        Command::Authorize { card, merchant, .. } => {
            with_payment(ledger.next_payment_seq(), &mut accounts);
            accounts.extend(card.as_ref().map(|c| c.account));
            if merchant.settlement_shard == ledger.shard() {
                accounts.push(merchant.settlement);
            }
        }
        Command::Capture { payment, .. }
        | Command::Void { payment, .. }
        | Command::ReduceAuthorization { payment, .. }
        | Command::RefundLocal { payment, .. } => with_payment(*payment, &mut accounts),
        Command::RefundDebit { settlement, .. } => accounts.push(*settlement),
        Command::Transfer {
            from, to, to_shard, ..
        } => {
            accounts.push(*from);
            if *to_shard == ledger.shard() {
                accounts.push(*to);
            }
        }
        Command::ApplyCredit { credit, .. } => {
            accounts.push(credit.account);
            if let CreditPurpose::RefundReturn { payment_seq } = credit.purpose {
                payments.push(payment_seq);
            }
        }
        Command::ExpireHolds {
            now,
            payments: named,
        } => {
            for &seq in named {
                let due = ledger.payment(seq).is_some_and(|p| {
                    p.view.status == crate::ledger::PaymentStatus::Authorized
                        && p.expires_at <= *now
                });
                if due {
                    with_payment(seq, &mut accounts);
                }
            }
        }
        Command::CreateCard { .. }
        | Command::SetCardStatus { .. }
        | Command::CreateMerchant { .. }
        | Command::SetMerchantStatus { .. }
        | Command::AckCredits { .. }
        | Command::PruneIdempotency { .. } => {}
    }
    accounts.sort();
    accounts.dedup();
    (accounts, payments)
}

/// A kind, named through an alias so that serde does not take it for a borrowed string.
pub type Kind = &'static str;

/// Every `kind` a command can have.
const KINDS: [&str; 17] = [
    "open_account",
    "account_status",
    "create_card",
    "card_status",
    "create_merchant",
    "merchant_status",
    "sale",
    "authorize",
    "capture",
    "void",
    "reduce_authorization",
    "refund",
    "transfer",
    "credit",
    "ack",
    "expire",
    "prune",
];

fn kind_from_str<'de, D: Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
    let text = String::deserialize(d)?;
    KINDS
        .iter()
        .find(|&&k| k == text)
        .copied()
        .ok_or_else(|| serde::de::Error::custom(format!("unknown effects kind {text:?}")))
}

fn kind(cmd: &Command) -> &'static str {
    match cmd {
        Command::CreateAccount { .. } => "open_account",
        Command::SetAccountStatus { .. } => "account_status",
        Command::CreateCard { .. } => "create_card",
        Command::SetCardStatus { .. } => "card_status",
        Command::CreateMerchant { .. } => "create_merchant",
        Command::SetMerchantStatus { .. } => "merchant_status",
        Command::Authorize { capture: true, .. } => "sale",
        Command::Authorize { .. } => "authorize",
        Command::Capture { .. } => "capture",
        Command::Void { .. } => "void",
        Command::ReduceAuthorization { .. } => "reduce_authorization",
        Command::RefundLocal { .. } | Command::RefundDebit { .. } => "refund",
        Command::Transfer { .. } => "transfer",
        Command::ApplyCredit { .. } => "credit",
        Command::AckCredits { .. } => "ack",
        Command::ExpireHolds { .. } => "expire",
        Command::PruneIdempotency { .. } => "prune",
    }
}

fn reference(shard: ShardId, cmd: &Command) -> Option<String> {
    let pay = |shard: ShardId, seq: u64| Some(format!("pay_{}_{}", shard.0, seq));
    match cmd {
        Command::Capture { payment, .. }
        | Command::Void { payment, .. }
        | Command::ReduceAuthorization { payment, .. }
        | Command::RefundLocal { payment, .. } => pay(shard, *payment),
        Command::RefundDebit { payment, .. } => pay(payment.shard, payment.seq),
        Command::Transfer { id, .. } => Some(format!("transfer:{id}")),
        Command::ApplyCredit { credit, .. } => match &credit.purpose {
            CreditPurpose::Settlement { payment } => pay(payment.shard, payment.seq),
            CreditPurpose::RefundReturn { payment_seq } => pay(shard, *payment_seq),
            CreditPurpose::Transfer => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod kind_tests {
    use super::*;

    #[test]
    fn effects_round_trip_through_the_store_encoding() {
        for k in KINDS {
            let fx = Effects {
                kind: k,
                reference: Some("pay_0_1".into()),
                journal: vec![JournalEntry {
                    account: JournalAccount::InFlight,
                    currency: Currency::from_alpha("EUR").unwrap(),
                    amount: 5,
                }],
                ..Effects::default()
            };
            let bytes = postcard::to_stdvec(&fx).unwrap();
            assert_eq!(postcard::from_bytes::<Effects>(&bytes).unwrap(), fx);
        }
    }
}
