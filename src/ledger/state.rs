//! The per-shard ledger: accounts, cards, merchants, payments, idempotency records and the
//! cross-shard outbox, changed only by `Ledger::apply`.
//!
//! Pure and deterministic: no I/O, no clock, no randomness, no hashing of unordered maps into
//! results. The same commands in the same order give the same state, which is what WAL replay
//! and the simulation tests rely on. Invariants are asserted after every change.

use crate::domain::{AccountId, Currency, Lsn, Millis, ShardId};
use crate::ledger::command::*;
use crate::ledger::decline::Decline;
use crate::ledger::window::{transfer_key, IdemTable, NoRoom, PaymentTable, TransferTable};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub currency: Currency,
    pub balance: i64,
    pub held: i64,
    pub floor: i64,
    pub status: Status,
    pub amount_limit: Option<i64>,
    pub daily_count_limit: Option<u32>,
    /// (day number, authorizations that day) for the frequency limit.
    pub day_count: (u64, u32),
}

impl Account {
    pub fn available(&self) -> i64 {
        self.balance - self.held
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Card {
    pub id: u64,
    pub hash: CardHash,
    pub account: AccountId,
    pub bin: CompactString,
    pub last4: CompactString,
    pub exp_month: u8,
    pub exp_year: u16,
    pub status: Status,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Merchant {
    pub key_hash: [u8; 32],
    pub settlement: AccountId,
    pub currency: Currency,
    pub mcc: u16,
    pub status: Status,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub view: PaymentView,
    /// The card account holding the funds (`None` for declines of unknown cards).
    pub account: Option<AccountId>,
    pub settlement: AccountId,
    pub settlement_shard: ShardId,
    pub expires_at: Millis,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdemRecord {
    pub body: Hash16,
    pub at: Millis,
    pub outcome: Outcome,
}

/// Per-currency totals that make conservation checkable on one shard in O(1):
/// Σ balances + treasury + sent − received == 0 at every moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrencyTotals {
    pub accounts: i64,
    pub treasury: i64,
    pub sent: i64,
    pub received: i64,
}

/// One shard's whole state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ledger {
    shard: ShardId,
    shards: u16,
    accounts: HashMap<AccountId, Account>,
    cards_by_hash: HashMap<CardHash, u64>,
    cards: HashMap<u64, Card>,
    next_card: u64,
    merchants: HashMap<MerchantId, Merchant>,
    /// Every payment (`PaymentTable::all`) or a bounded window of them in front of the
    /// shard's store: a command may only touch payments that are held (`needs_payment`).
    payments: PaymentTable,
    next_payment: u64,
    /// Idempotency records of changes logged here: all, or a window in front of the store
    /// (which also prunes them after their retention).
    idem: IdemTable,
    /// Credits sent to other shards and not yet acknowledged, by (destination, seq).
    outbox: BTreeMap<(ShardId, u64), (Lsn, Credit)>,
    next_out: Vec<u64>,
    applied_in: Vec<u64>,
    totals: BTreeMap<Currency, CurrencyTotals>,
    /// Transfers by id hash: all, or a window in front of the store (loaded before a
    /// `Transfer` with that id is applied: `needs_transfer`).
    transfers: TransferTable,
    last_now: Millis,
    /// LSN of the command being applied (0 between commands).
    applying: Lsn,
    /// What changed since the last `take_changes`, when the store is fed from this ledger.
    changes: Option<Box<Changes>>,
}

/// Keys of everything a run of commands changed: what the store writes after applying them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub accounts: BTreeSet<AccountId>,
    pub cards: BTreeSet<u64>,
    pub merchants: BTreeSet<MerchantId>,
    pub payments: BTreeSet<u64>,
    pub idem_added: Vec<Hash16>,
    pub transfers: Vec<Hash16>,
    pub outbox_added: Vec<(ShardId, u64)>,
    pub outbox_removed: Vec<(ShardId, u64)>,
}

/// The ledger's scalar state, stored as one value beside the tables.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scalars {
    pub shard: ShardId,
    pub shards: u16,
    pub next_card: u64,
    pub next_payment: u64,
    pub next_out: Vec<u64>,
    pub applied_in: Vec<u64>,
    pub totals: Vec<(Currency, CurrencyTotals)>,
    pub last_now: Millis,
}

/// Everything but the payments, as the store holds it: what a ledger is rebuilt from.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub scalars: Option<Scalars>,
    pub accounts: Vec<(AccountId, Account)>,
    pub cards: Vec<Card>,
    pub merchants: Vec<(MerchantId, Merchant)>,
    pub outbox: Vec<((ShardId, u64), (Lsn, Credit))>,
}

const DAY_MILLIS: u64 = 86_400_000;

impl Ledger {
    pub fn new(shard: ShardId, shards: u16) -> Ledger {
        assert!(shards >= 1 && shard.0 < shards);
        Ledger {
            shard,
            shards,
            accounts: HashMap::new(),
            cards_by_hash: HashMap::new(),
            cards: HashMap::new(),
            next_card: 1,
            merchants: HashMap::new(),
            payments: PaymentTable::all(),
            next_payment: 1,
            idem: IdemTable::all(),
            outbox: BTreeMap::new(),
            next_out: vec![1; shards as usize],
            applied_in: vec![0; shards as usize],
            totals: BTreeMap::new(),
            transfers: TransferTable::all(),
            last_now: Millis(0),
            applying: Lsn(0),
            changes: None,
        }
    }

    /// A ledger that holds at most about `window` payments; the rest are in the store and
    /// must be loaded (`load_payment`) before a command touches them.
    /// Idempotency records share the budget: one slot for every four payment slots.
    pub fn with_payment_window(shard: ShardId, shards: u16, window: usize) -> Ledger {
        let mut ledger = Ledger::new(shard, shards);
        ledger.payments = PaymentTable::window(window);
        ledger.idem = IdemTable::window(window / 4);
        ledger.transfers = TransferTable::window(window / 8);
        ledger
    }

    /// Rebuilds a ledger from what the store holds (every payment left in the store).
    pub fn from_snapshot(shard: ShardId, shards: u16, window: usize, snap: Snapshot) -> Ledger {
        let mut l = Ledger::with_payment_window(shard, shards, window);
        if let Some(sc) = snap.scalars {
            assert_eq!(
                (sc.shard, sc.shards),
                (shard, shards),
                "the store is this shard's"
            );
            l.next_card = sc.next_card;
            l.next_payment = sc.next_payment;
            l.next_out = sc.next_out;
            l.applied_in = sc.applied_in;
            l.totals = sc.totals.into_iter().collect();
            l.last_now = sc.last_now;
        }
        l.accounts.reserve(snap.accounts.len());
        l.accounts.extend(snap.accounts);
        l.cards_by_hash.reserve(snap.cards.len());
        l.cards.reserve(snap.cards.len());
        for c in snap.cards {
            l.cards_by_hash.insert(c.hash, c.id);
            l.cards.insert(c.id, c);
        }
        l.merchants.extend(snap.merchants);
        l.outbox.extend(snap.outbox);
        l.check_invariants();
        l
    }

    /// A copy of everything but the payments, with an empty window of `window` payments: the
    /// shard's working ledger, made from the store's after recovery.
    pub fn clone_without_payments(&self, window: usize) -> Ledger {
        Ledger {
            shard: self.shard,
            shards: self.shards,
            accounts: self.accounts.clone(),
            cards_by_hash: self.cards_by_hash.clone(),
            cards: self.cards.clone(),
            next_card: self.next_card,
            merchants: self.merchants.clone(),
            payments: PaymentTable::window(window),
            next_payment: self.next_payment,
            idem: IdemTable::window(window / 4),
            outbox: self.outbox.clone(),
            next_out: self.next_out.clone(),
            applied_in: self.applied_in.clone(),
            totals: self.totals.clone(),
            transfers: TransferTable::window(window / 8),
            last_now: self.last_now,
            applying: Lsn(0),
            changes: None,
        }
    }

    /// Sizes the tables of what is provisioned for `accounts` accounts and cards and
    /// `merchants` merchants, so that provisioning up to there never rehashes a table under
    /// a request (the memory is reserved, and touched only as rows arrive).
    pub fn reserve(&mut self, accounts: usize, merchants: usize) {
        self.accounts
            .reserve(accounts.saturating_sub(self.accounts.len()));
        self.cards
            .reserve(accounts.saturating_sub(self.cards.len()));
        self.cards_by_hash
            .reserve(accounts.saturating_sub(self.cards_by_hash.len()));
        self.merchants
            .reserve(merchants.saturating_sub(self.merchants.len()));
    }

    /// Starts recording what changes (for the store writer).
    pub fn track_changes(&mut self) {
        self.changes = Some(Box::default());
    }

    /// What changed since the last call (empty when not tracking).
    pub fn take_changes(&mut self) -> Changes {
        self.changes
            .as_mut()
            .map(|c| std::mem::take(&mut **c))
            .unwrap_or_default()
    }

    fn note(&mut self, f: impl FnOnce(&mut Changes)) {
        if let Some(c) = &mut self.changes {
            f(c);
        }
    }

    pub fn scalars(&self) -> Scalars {
        Scalars {
            shard: self.shard,
            shards: self.shards,
            next_card: self.next_card,
            next_payment: self.next_payment,
            next_out: self.next_out.clone(),
            applied_in: self.applied_in.clone(),
            totals: self.totals.iter().map(|(c, t)| (*c, *t)).collect(),
            last_now: self.last_now,
        }
    }

    /// Rows the store writes for a change set.
    pub fn account_row(&self, id: AccountId) -> Option<&Account> {
        self.accounts.get(&id)
    }
    pub fn card_row(&self, id: u64) -> Option<&Card> {
        self.cards.get(&id)
    }
    pub fn idem_row(&self, key: &Hash16) -> Option<&IdemRecord> {
        self.idem.get(*key)
    }
    pub fn transfer_row(&self, key: &Hash16) -> Option<&TransferView> {
        self.transfers.get(*key)
    }

    /// The transfer id a command creates, whose earlier copy (if any) must be held first.
    pub fn needs_transfer(cmd: &Command) -> Option<Hash16> {
        match cmd {
            Command::Transfer { id, .. } => Some(transfer_key(id)),
            _ => None,
        }
    }

    /// Places a transfer read from the store.
    pub fn load_transfer(&mut self, key: Hash16, view: TransferView) -> Result<(), NoRoom> {
        assert_eq!(transfer_key(&view.id), key);
        self.transfers.load(key, view)
    }

    pub fn transfer_held(&self, key: &Hash16) -> bool {
        self.transfers.contains(*key)
    }
    pub fn outbox_row(&self, to: ShardId, seq: u64) -> Option<&(Lsn, Credit)> {
        self.outbox.get(&(to, seq))
    }

    // ---- the payment window ------------------------------------------------------------

    /// True when the payment `seq` exists (it may be in the store rather than held here).
    pub fn payment_exists(&self, seq: u64) -> bool {
        seq >= 1 && seq < self.next_payment
    }

    /// True when the payment is held here (always, in `all` mode, for payments that exist).
    pub fn payment_held(&self, seq: u64) -> bool {
        self.payments.contains(seq)
    }

    /// Places a payment read from the store. `Err(NoRoom)` when its set holds only changes
    /// the store has not applied yet.
    pub fn load_payment(&mut self, seq: u64, payment: Payment) -> Result<(), NoRoom> {
        assert!(
            self.payment_exists(seq),
            "the store holds only payments that exist"
        );
        assert_eq!(payment.view.id.seq, seq);
        self.payments.load(seq, payment)
    }

    /// The store has applied every record up to `lsn`: changes up to it may leave memory.
    pub fn set_stored(&mut self, lsn: Lsn) {
        self.payments.set_stored(lsn);
        self.idem.set_stored(lsn);
        self.transfers.set_stored(lsn);
    }

    /// Payments held in memory, and the window's size (`None`: every payment is held).
    pub fn payments_held(&self) -> (usize, Option<usize>) {
        (self.payments.len(), self.payments.capacity())
    }

    /// The existing payments `cmd` reads or changes: each must be held before `apply`.
    /// Allocates nothing (it runs for every command, more than once).
    pub fn needs_payments<'a>(&'a self, cmd: &'a Command) -> impl Iterator<Item = u64> + 'a {
        let (one, many): (Option<u64>, &[u64]) = match cmd {
            Command::Capture { payment, .. }
            | Command::Void { payment, .. }
            | Command::ReduceAuthorization { payment, .. }
            | Command::RefundLocal { payment, .. } => (Some(*payment), &[]),
            Command::ApplyCredit { credit, .. } => match credit.purpose {
                CreditPurpose::RefundReturn { payment_seq } => (Some(payment_seq), &[]),
                CreditPurpose::Transfer | CreditPurpose::Settlement { .. } => (None, &[]),
            },
            Command::ExpireHolds { payments, .. } => (None, payments.as_slice()),
            _ => (None, &[]),
        };
        one.into_iter()
            .chain(many.iter().copied())
            .filter(|&s| self.payment_exists(s))
    }

    /// False when applying `cmd` now would need a window slot that is not free: the caller
    /// must not log it (shed, or let the store catch up first).
    pub fn has_room_for(&self, cmd: &Command) -> bool {
        let new_payment = matches!(cmd, Command::Authorize { .. });
        let idem_room = command_idem(cmd).is_none_or(|tag| self.idem.has_room(tag.key));
        let transfer_room = Ledger::needs_transfer(cmd).is_none_or(|k| self.transfers.has_room(k));
        idem_room
            && transfer_room
            && (!new_payment || self.payments.has_room(self.next_payment))
            && self.needs_payments(cmd).all(|s| self.payments.contains(s))
    }

    /// Uncaptured authorizations due at `now`, found by scanning held payments: for ledgers
    /// that hold every payment (tests, tools, a gateway without a store). O(payments).
    pub fn holds_due_in_memory(&self, now: Millis, limit: usize) -> Vec<u64> {
        assert!(
            !self.payments.is_window(),
            "a window does not hold every hold"
        );
        let mut due: Vec<(Millis, u64)> = self
            .payments
            .iter()
            .filter(|(_, p)| p.view.status == PaymentStatus::Authorized && p.expires_at <= now)
            .map(|(s, p)| (p.expires_at, s))
            .collect();
        due.sort();
        due.into_iter().take(limit).map(|(_, s)| s).collect()
    }

    pub fn shard(&self) -> ShardId {
        self.shard
    }

    // ---- reads -------------------------------------------------------------------------

    pub fn account(&self, id: AccountId) -> Option<AccountView> {
        self.accounts.get(&id).map(|a| view_account(id, a))
    }

    pub fn card_by_hash(&self, hash: &CardHash) -> Option<CardFacts> {
        let card = &self.cards[self.cards_by_hash.get(hash)?];
        Some(self.card_facts(card))
    }

    pub fn card(&self, id: u64) -> Option<CardFacts> {
        self.cards.get(&id).map(|c| self.card_facts(c))
    }

    fn card_facts(&self, c: &Card) -> CardFacts {
        CardFacts {
            id: c.id,
            home: self.shard,
            account: c.account,
            bin: c.bin.clone(),
            last4: c.last4.clone(),
            exp_month: c.exp_month,
            exp_year: c.exp_year,
            status: c.status,
        }
    }

    pub fn merchant(&self, id: &MerchantId) -> Option<&Merchant> {
        self.merchants.get(id)
    }

    /// A held payment (see `payment_held`; in `all` mode, every payment).
    pub fn payment(&self, seq: u64) -> Option<&Payment> {
        self.payments.get(seq)
    }

    fn payment_mut(&mut self, seq: u64) -> Option<&mut Payment> {
        assert!(
            !self.payment_exists(seq) || self.payments.contains(seq),
            "payment {seq} was not loaded before a command touched it"
        );
        let lsn = self.applying;
        if self.payments.contains(seq) {
            self.note(|c| {
                c.payments.insert(seq);
            });
        }
        self.payments.get_mut(seq, lsn)
    }

    fn account_mut(&mut self, id: AccountId) -> Option<&mut Account> {
        if let Some(c) = &mut self.changes {
            if self.accounts.contains_key(&id) {
                c.accounts.insert(id);
            }
        }
        self.accounts.get_mut(&id)
    }

    /// A held idempotency record (in a window, the store holds those that left memory).
    pub fn idempotency(&self, key: &Hash16) -> Option<&IdemRecord> {
        self.idem.get(*key)
    }

    /// Idempotency records held in memory.
    pub fn idempotency_len(&self) -> usize {
        self.idem.len()
    }

    /// Credits not yet acknowledged, in (destination, seq) order, with the LSN that made each.
    pub fn outbox(&self) -> impl Iterator<Item = (ShardId, u64, Lsn, &Credit)> {
        self.outbox
            .iter()
            .map(|(&(to, seq), (lsn, c))| (to, seq, *lsn, c))
    }

    /// Credits awaiting acknowledgement, in O(1).
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    pub fn last_applied_from(&self, from: ShardId) -> u64 {
        self.applied_in[from.index()]
    }

    pub fn totals(&self) -> &BTreeMap<Currency, CurrencyTotals> {
        &self.totals
    }

    /// Every account, in no particular order (reconciliation).
    pub fn all_accounts(&self) -> impl Iterator<Item = AccountView> + '_ {
        self.accounts.iter().map(|(&id, a)| view_account(id, a))
    }

    /// Every held payment, in no particular order (reconciliation, on `all` ledgers).
    pub fn all_payments(&self) -> impl Iterator<Item = &PaymentView> {
        self.payments.iter().map(|(_, p)| &p.view)
    }

    /// The sequence the next payment will get.
    pub fn next_payment_seq(&self) -> u64 {
        self.next_payment
    }

    /// The id the next card will get.
    pub fn next_card_id(&self) -> u64 {
        self.next_card * crate::domain::SHARDS_MAX as u64 + self.shard.0 as u64
    }

    pub fn counts(&self) -> (usize, usize, usize, usize) {
        (
            self.accounts.len(),
            self.cards.len(),
            self.merchants.len(),
            (self.next_payment - 1) as usize,
        )
    }

    /// Σ of account balances per currency, recomputed from the accounts (for tests and
    /// `reconcile`; the running totals must always agree with it).
    pub fn balances_by_currency(&self) -> BTreeMap<Currency, i64> {
        let mut sums = BTreeMap::new();
        for a in self.accounts.values() {
            *sums.entry(a.currency).or_insert(0) += a.balance;
        }
        sums
    }

    /// Amount that can still be refunded on a payment (captured − refunded).
    pub fn refundable(&self, seq: u64) -> Option<i64> {
        self.payments
            .get(seq)
            .map(|p| p.view.amount_captured - p.view.amount_refunded)
    }

    // ---- the one way to change state ---------------------------------------------------

    /// Applies one command (recorded at `lsn`) and returns its outcome.
    ///
    /// Every existing payment the command touches must be held (`needs_payments`), and a new
    /// payment must have room (`has_room_for`): both are checked before the record is logged.
    pub fn apply(&mut self, lsn: Lsn, cmd: &Command) -> Outcome {
        assert!(lsn.0 > 0 && self.applying.0 == 0);
        assert!(
            self.has_room_for(cmd),
            "payments loaded and room checked before apply"
        );
        self.applying = lsn;
        let outcome = match cmd {
            Command::CreateAccount {
                id,
                currency,
                initial,
                floor,
                amount_limit,
                daily_count_limit,
            } => self.create_account(
                *id,
                *currency,
                *initial,
                *floor,
                *amount_limit,
                *daily_count_limit,
            ),
            Command::SetAccountStatus { id, status } => match self.account_mut(*id) {
                Some(a) => {
                    a.status = *status;
                    Outcome::Account(view_account(*id, a))
                }
                None => Outcome::Rejected(Reject::AccountNotFound),
            },
            Command::CreateCard {
                hash,
                account,
                bin,
                last4,
                exp_month,
                exp_year,
            } => self.create_card(hash, *account, bin, last4, *exp_month, *exp_year),
            Command::SetCardStatus { id, status } => match self.cards.get_mut(id) {
                Some(c) => {
                    if let Some(ch) = &mut self.changes {
                        ch.cards.insert(*id);
                    }
                    c.status = *status;
                    Outcome::Card {
                        id: c.id,
                        account: c.account,
                        bin: c.bin.clone(),
                        last4: c.last4.clone(),
                    }
                }
                None => Outcome::Rejected(Reject::CardNotFound),
            },
            Command::CreateMerchant {
                id,
                key_hash,
                settlement,
                currency,
                mcc,
            } => {
                if self.merchants.contains_key(id) {
                    Outcome::Rejected(Reject::MerchantExists)
                } else {
                    let m = Merchant {
                        key_hash: *key_hash,
                        settlement: *settlement,
                        currency: *currency,
                        mcc: *mcc,
                        status: Status::Active,
                    };
                    self.merchants.insert(id.clone(), m);
                    self.note(|c| {
                        c.merchants.insert(id.clone());
                    });
                    Outcome::Merchant {
                        id: id.clone(),
                        settlement: *settlement,
                        mcc: *mcc,
                        status: Status::Active,
                    }
                }
            }
            Command::SetMerchantStatus { id, status } => match self.merchants.get_mut(id) {
                Some(m) => {
                    if let Some(ch) = &mut self.changes {
                        ch.merchants.insert(id.clone());
                    }
                    m.status = *status;
                    Outcome::Merchant {
                        id: id.clone(),
                        settlement: m.settlement,
                        mcc: m.mcc,
                        status: m.status,
                    }
                }
                None => Outcome::Rejected(Reject::MerchantNotFound),
            },
            Command::Authorize { .. } => self.authorize(lsn, cmd),
            Command::Capture {
                payment,
                merchant,
                amount,
                now,
                ..
            } => self.capture(lsn, *payment, merchant, *amount, *now),
            Command::Void {
                payment, merchant, ..
            } => self.void(*payment, merchant),
            Command::ReduceAuthorization {
                payment,
                merchant,
                amount,
                ..
            } => self.reduce_authorization(*payment, merchant, *amount),
            Command::RefundLocal {
                payment,
                merchant,
                amount,
                ..
            } => self.refund_local(*payment, merchant, *amount),
            Command::RefundDebit {
                payment,
                settlement,
                card_account,
                amount,
                currency,
                view,
                ..
            } => self.refund_debit(
                lsn,
                *payment,
                *settlement,
                *card_account,
                *amount,
                *currency,
                view,
            ),
            Command::Transfer {
                id,
                from,
                to,
                to_shard,
                amount,
                currency,
                now,
                ..
            } => self.transfer(lsn, id, *from, *to, *to_shard, *amount, *currency, *now),
            Command::ApplyCredit { from, seq, credit } => self.apply_credit(*from, *seq, credit),
            Command::AckCredits { to, seq } => {
                let acked: Vec<_> = self
                    .outbox
                    .range((*to, 0)..=(*to, *seq))
                    .map(|(k, _)| *k)
                    .collect();
                for k in acked {
                    self.outbox.remove(&k);
                    self.note(|c| c.outbox_removed.push(k));
                }
                Outcome::Done
            }
            Command::ExpireHolds { now, payments } => self.expire_holds(*now, payments),
            Command::PruneIdempotency { before } => {
                // Records are pruned where they are kept: by the store (a range of its index
                // by time); held copies simply age out of the window. `before` is a record
                // of when, for the store to act on in order.
                let _ = before;
                Outcome::Done
            }
        };
        if let (Some(tag), Some(now)) = (command_idem(cmd), command_now(cmd)) {
            if !matches!(outcome, Outcome::Rejected(_)) {
                self.record_idem(tag, now, outcome.clone());
            }
        }
        if let Some(now) = command_now(cmd) {
            self.last_now = self.last_now.max(now);
        }
        self.check_invariants();
        self.applying = Lsn(0);
        outcome
    }

    fn record_idem(&mut self, tag: IdemTag, now: Millis, outcome: Outcome) {
        // The key's owner lets a key run once per retention; a held copy with another body
        // is a broken invariant.
        assert!(self
            .idem
            .get(tag.key)
            .is_none_or(|p| p.body == tag.body || p.at < now));
        let record = IdemRecord {
            body: tag.body,
            at: now,
            outcome,
        };
        self.idem.upsert(tag.key, record, self.applying);
        self.note(|c| c.idem_added.push(tag.key));
    }

    fn create_account(
        &mut self,
        id: AccountId,
        currency: Currency,
        initial: i64,
        floor: i64,
        amount_limit: Option<i64>,
        daily_count_limit: Option<u32>,
    ) -> Outcome {
        if self.accounts.contains_key(&id) {
            return Outcome::Rejected(Reject::AccountExists);
        }
        assert!(initial >= 0 && floor <= initial, "validated by the caller");
        let account = Account {
            currency,
            balance: initial,
            held: 0,
            floor,
            status: Status::Active,
            amount_limit,
            daily_count_limit,
            day_count: (0, 0),
        };
        let totals = self.totals.entry(currency).or_default();
        totals.treasury -= initial;
        totals.accounts += initial;
        let view = view_account(id, &account);
        self.accounts.insert(id, account);
        self.note(|c| {
            c.accounts.insert(id);
        });
        Outcome::Account(view)
    }

    fn create_card(
        &mut self,
        hash: &CardHash,
        account: AccountId,
        bin: &str,
        last4: &str,
        exp_month: u8,
        exp_year: u16,
    ) -> Outcome {
        if self.cards_by_hash.contains_key(hash) {
            return Outcome::Rejected(Reject::CardExists);
        }
        let id = self.next_card * crate::domain::SHARDS_MAX as u64 + self.shard.0 as u64;
        self.next_card += 1;
        let card = Card {
            id,
            hash: *hash,
            account,
            bin: CompactString::from(bin),
            last4: CompactString::from(last4),
            exp_month,
            exp_year,
            status: Status::Active,
        };
        self.cards_by_hash.insert(*hash, id);
        self.cards.insert(id, card);
        self.note(|c| {
            c.cards.insert(id);
        });
        Outcome::Card {
            id,
            account,
            bin: CompactString::from(bin),
            last4: CompactString::from(last4),
        }
    }

    fn authorize(&mut self, lsn: Lsn, cmd: &Command) -> Outcome {
        let Command::Authorize {
            merchant,
            card,
            presented,
            pre_decline,
            amount,
            currency,
            capture,
            reference,
            now,
            expires_at,
            ..
        } = cmd
        else {
            unreachable!()
        };
        let seq = self.next_payment;
        self.next_payment += 1;
        let id = PaymentRef {
            shard: self.shard,
            seq,
        };
        let account_id = card.as_ref().map(|c| c.account);
        let decline = pre_decline.or_else(|| {
            let card = card
                .as_ref()
                .expect("a card is present when there is no pre-decline");
            self.authorization_decline(merchant, card, presented, *amount, *currency, *now)
        });
        let mut view = PaymentView {
            id,
            merchant: merchant.id.clone(),
            status: PaymentStatus::Declined,
            amount: *amount,
            amount_captured: 0,
            amount_refunded: 0,
            currency: *currency,
            bin: presented.bin.clone(),
            last4: presented.last4.clone(),
            approval_code: None,
            decline,
            reference: reference.clone(),
            created_at: *now,
        };
        let mut sale = false;
        if decline.is_none() {
            let account_id = account_id.expect("approved payments have an account");
            let account = self.account_mut(account_id).expect("checked");
            let day = now.0 / DAY_MILLIS;
            account.day_count = if account.day_count.0 == day {
                (day, account.day_count.1 + 1)
            } else {
                (day, 1)
            };
            view.approval_code = Some(approval_code(id));
            if *capture {
                account.balance -= amount;
                view.status = PaymentStatus::Captured;
                view.amount_captured = *amount;
                sale = true;
            } else {
                account.held += amount;
                view.status = PaymentStatus::Authorized;
            }
        }
        let payment = Payment {
            view: view.clone(),
            account: account_id.filter(|_| decline.is_none()),
            settlement: merchant.settlement,
            settlement_shard: merchant.settlement_shard,
            expires_at: *expires_at,
        };
        self.payments.insert_new(seq, payment, lsn);
        self.note(|c| {
            c.payments.insert(seq);
        });
        if sale {
            self.totals.entry(*currency).or_default().accounts -= amount;
            self.settle(lsn, seq, *amount);
        }
        Outcome::Payment(Box::new(view))
    }

    /// Checks in precedence order; the first failing check is the decline.
    fn authorization_decline(
        &self,
        merchant: &MerchantFacts,
        card: &CardFacts,
        presented: &PresentedCard,
        amount: i64,
        currency: Currency,
        now: Millis,
    ) -> Option<Decline> {
        let Some(account) = self.accounts.get(&card.account) else {
            return Some(Decline::InvalidCard);
        };
        if merchant.currency != currency {
            return Some(Decline::InvalidTransaction);
        }
        if merchant.status != Status::Active {
            return Some(Decline::NotPermittedMerchant);
        }
        if card.status != Status::Active {
            return Some(Decline::RestrictedCard);
        }
        let presented_expiry = presented.exp_month != 0; // 0: not presented (ISO 8583 without DE14)
        let mismatch = (presented.exp_month, presented.exp_year) != (card.exp_month, card.exp_year);
        if (presented_expiry && mismatch) || card_expired(card.exp_month, card.exp_year, now) {
            return Some(Decline::ExpiredCard);
        }
        match account.status {
            Status::Active => {}
            Status::Blocked => return Some(Decline::NotPermittedCardholder),
            Status::Closed => return Some(Decline::DoNotHonour),
        }
        if account.currency != currency {
            return Some(Decline::InvalidTransaction);
        }
        if account.amount_limit.is_some_and(|limit| amount > limit) {
            return Some(Decline::ExceedsAmountLimit);
        }
        let today = now.0 / DAY_MILLIS;
        if let Some(limit) = account.daily_count_limit {
            let used = if account.day_count.0 == today {
                account.day_count.1
            } else {
                0
            };
            if used >= limit {
                return Some(Decline::ExceedsFrequency);
            }
        }
        if account.available() - amount < account.floor {
            return Some(Decline::InsufficientFunds);
        }
        None
    }

    /// Moves a captured amount to the merchant's settlement account, here or via the outbox.
    /// The card account has already been debited and `totals.accounts` adjusted.
    fn settle(&mut self, lsn: Lsn, seq: u64, amount: i64) {
        let p = self.payments.get(seq).expect("settled payments are held");
        let (to, to_shard, currency) = (p.settlement, p.settlement_shard, p.view.currency);
        let purpose = CreditPurpose::Settlement {
            payment: PaymentRef {
                shard: self.shard,
                seq,
            },
        };
        self.send_credit(
            lsn,
            to_shard,
            Credit {
                account: to,
                amount,
                currency,
                purpose,
            },
        );
    }

    /// Credits `credit` locally when its account lives here, else queues it in the outbox.
    /// The debit side has already left `totals.accounts`.
    fn send_credit(&mut self, lsn: Lsn, to_shard: ShardId, credit: Credit) {
        if to_shard == self.shard {
            let account = self
                .account_mut(credit.account)
                .expect("credited accounts exist");
            assert_eq!(account.currency, credit.currency);
            account.balance += credit.amount;
            self.totals.entry(credit.currency).or_default().accounts += credit.amount;
        } else {
            let seq = self.next_out[to_shard.index()];
            self.next_out[to_shard.index()] += 1;
            self.totals.entry(credit.currency).or_default().sent += credit.amount;
            self.outbox.insert((to_shard, seq), (lsn, credit));
            self.note(|c| c.outbox_added.push((to_shard, seq)));
        }
    }

    fn payment_for(&mut self, seq: u64, merchant: &MerchantId) -> Result<&mut Payment, Reject> {
        let owned = self
            .payments
            .get(seq)
            .is_some_and(|p| &p.view.merchant == merchant);
        if !owned {
            assert!(
                !self.payment_exists(seq) || self.payments.contains(seq),
                "loaded"
            );
            return Err(Reject::PaymentNotFound);
        }
        match self.payment_mut(seq) {
            Some(p) if &p.view.merchant == merchant => Ok(p),
            _ => Err(Reject::PaymentNotFound),
        }
    }

    fn capture(
        &mut self,
        lsn: Lsn,
        seq: u64,
        merchant: &MerchantId,
        amount: Option<i64>,
        _now: Millis,
    ) -> Outcome {
        let p = match self.payment_for(seq, merchant) {
            Ok(p) => p,
            Err(r) => return Outcome::Rejected(r),
        };
        if p.view.status != PaymentStatus::Authorized {
            return Outcome::Rejected(Reject::InvalidState);
        }
        let amount = amount.unwrap_or(p.view.amount);
        if amount > p.view.amount || amount <= 0 {
            return Outcome::Rejected(Reject::AmountTooLarge);
        }
        let authorized = p.view.amount;
        p.view.amount_captured = amount;
        p.view.status = if amount == authorized {
            PaymentStatus::Captured
        } else {
            PaymentStatus::PartiallyCaptured
        };
        let (account_id, currency, expires_at) = (
            p.account.expect("authorized"),
            p.view.currency,
            p.expires_at,
        );
        let view = p.view.clone();
        let _ = expires_at;
        let account = self
            .account_mut(account_id)
            .expect("payment accounts exist");
        account.held -= authorized;
        account.balance -= amount;
        self.totals.entry(currency).or_default().accounts -= amount;
        self.settle(lsn, seq, amount);
        Outcome::Payment(Box::new(view))
    }

    fn void(&mut self, seq: u64, merchant: &MerchantId) -> Outcome {
        let p = match self.payment_for(seq, merchant) {
            Ok(p) => p,
            Err(r) => return Outcome::Rejected(r),
        };
        if p.view.status != PaymentStatus::Authorized {
            return Outcome::Rejected(Reject::InvalidState);
        }
        p.view.status = PaymentStatus::Voided;
        let (account_id, amount, expires_at) =
            (p.account.expect("authorized"), p.view.amount, p.expires_at);
        let view = p.view.clone();
        let _ = expires_at;
        self.account_mut(account_id)
            .expect("payment accounts exist")
            .held -= amount;
        Outcome::Payment(Box::new(view))
    }

    fn reduce_authorization(&mut self, seq: u64, merchant: &MerchantId, amount: i64) -> Outcome {
        let p = match self.payment_for(seq, merchant) {
            Ok(p) => p,
            Err(r) => return Outcome::Rejected(r),
        };
        if p.view.status != PaymentStatus::Authorized {
            return Outcome::Rejected(Reject::InvalidState);
        }
        if amount <= 0 || amount > p.view.amount {
            return Outcome::Rejected(Reject::AmountTooLarge);
        }
        let released = p.view.amount - amount;
        p.view.amount = amount;
        let account_id = p.account.expect("authorized");
        let view = p.view.clone();
        let account = self
            .account_mut(account_id)
            .expect("payment accounts exist");
        account.held -= released;
        assert!(account.held >= 0);
        Outcome::Payment(Box::new(view))
    }

    /// Checks a refund against the payment without changing anything.
    pub fn check_refund(
        &self,
        seq: u64,
        merchant: &MerchantId,
        amount: i64,
        reserved: i64,
    ) -> Result<(), Reject> {
        let p = match self.payments.get(seq) {
            Some(p) if &p.view.merchant == merchant => p,
            _ => return Err(Reject::PaymentNotFound),
        };
        let refundable_status = matches!(
            p.view.status,
            PaymentStatus::Captured
                | PaymentStatus::PartiallyCaptured
                | PaymentStatus::PartiallyRefunded
        );
        if !refundable_status {
            return Err(Reject::InvalidState);
        }
        if amount <= 0 || amount > p.view.amount_captured - p.view.amount_refunded - reserved {
            return Err(Reject::AmountTooLarge);
        }
        Ok(())
    }

    fn refund_local(&mut self, seq: u64, merchant: &MerchantId, amount: i64) -> Outcome {
        if let Err(r) = self.check_refund(seq, merchant, amount, 0) {
            return Outcome::Rejected(r);
        }
        let p = self.payments.get(seq).expect("checked");
        assert_eq!(p.settlement_shard, self.shard);
        let (settlement, card_account) = (
            p.settlement,
            p.account.expect("captured payments have an account"),
        );
        let s = &self.accounts[&settlement];
        if s.available() - amount < s.floor {
            return Outcome::Rejected(Reject::InsufficientFunds);
        }
        self.account_mut(settlement).expect("exists").balance -= amount;
        self.account_mut(card_account).expect("exists").balance += amount;
        Outcome::Payment(Box::new(self.record_refund(seq, amount)))
    }

    fn record_refund(&mut self, seq: u64, amount: i64) -> PaymentView {
        let p = self.payment_mut(seq).expect("refunded payments exist");
        p.view.amount_refunded += amount;
        assert!(
            p.view.amount_refunded <= p.view.amount_captured,
            "Σ refunds ≤ captured"
        );
        p.view.status = if p.view.amount_refunded == p.view.amount_captured {
            PaymentStatus::Refunded
        } else {
            PaymentStatus::PartiallyRefunded
        };
        p.view.clone()
    }

    /// What a payment will look like after a refund of `amount` (for the idempotent answer
    /// of a cross-shard refund).
    pub fn project_refund(&self, seq: u64, amount: i64, reserved: i64) -> Option<PaymentView> {
        let p = self.payments.get(seq)?;
        let mut view = p.view.clone();
        view.amount_refunded += reserved + amount;
        view.status = if view.amount_refunded == view.amount_captured {
            PaymentStatus::Refunded
        } else {
            PaymentStatus::PartiallyRefunded
        };
        Some(view)
    }

    #[allow(clippy::too_many_arguments)]
    fn refund_debit(
        &mut self,
        lsn: Lsn,
        payment: PaymentRef,
        settlement: AccountId,
        card_account: AccountId,
        amount: i64,
        currency: Currency,
        view: &PaymentView,
    ) -> Outcome {
        let Some(s) = self.account_mut(settlement) else {
            return Outcome::Rejected(Reject::AccountNotFound);
        };
        if s.available() - amount < s.floor {
            return Outcome::Rejected(Reject::InsufficientFunds);
        }
        assert_eq!(s.currency, currency);
        s.balance -= amount;
        self.totals.entry(currency).or_default().accounts -= amount;
        let purpose = CreditPurpose::RefundReturn {
            payment_seq: payment.seq,
        };
        self.send_credit(
            lsn,
            payment.shard,
            Credit {
                account: card_account,
                amount,
                currency,
                purpose,
            },
        );
        Outcome::Payment(Box::new(view.clone()))
    }

    #[allow(clippy::too_many_arguments)]
    fn transfer(
        &mut self,
        lsn: Lsn,
        id: &str,
        from: AccountId,
        to: AccountId,
        to_shard: ShardId,
        amount: i64,
        currency: Currency,
        now: Millis,
    ) -> Outcome {
        let key = transfer_key(id);
        if let Some(existing) = self.transfers.get(key) {
            return Outcome::Transfer(existing.clone());
        }
        if from == to {
            return Outcome::Rejected(Reject::SameAccount);
        }
        let Some(a) = self.accounts.get_mut(&from) else {
            return Outcome::Rejected(Reject::AccountNotFound);
        };
        if a.currency != currency {
            return Outcome::Rejected(Reject::CurrencyMismatch);
        }
        if a.status != Status::Active {
            return Outcome::Rejected(Reject::AccountNotActive);
        }
        if a.available() - amount < a.floor {
            return Outcome::Rejected(Reject::InsufficientFunds);
        }
        if to_shard == self.shard
            && self
                .accounts
                .get(&to)
                .is_none_or(|t| t.currency != currency)
        {
            return Outcome::Rejected(Reject::AccountNotFound);
        }
        let a = self.account_mut(from).expect("checked");
        a.balance -= amount;
        self.totals.entry(currency).or_default().accounts -= amount;
        self.send_credit(
            lsn,
            to_shard,
            Credit {
                account: to,
                amount,
                currency,
                purpose: CreditPurpose::Transfer,
            },
        );
        let view = TransferView {
            id: id.to_string(),
            from,
            to,
            amount,
            currency,
            created_at: now,
        };
        self.transfers.insert_new(key, view.clone(), lsn);
        self.note(|c| c.transfers.push(key));
        Outcome::Transfer(view)
    }

    fn apply_credit(&mut self, from: ShardId, seq: u64, credit: &Credit) -> Outcome {
        assert_ne!(from, self.shard, "local credits never travel");
        let last = self.applied_in[from.index()];
        if seq <= last {
            return Outcome::Done; // a re-sent credit, already applied once
        }
        assert_eq!(seq, last + 1, "credits from one shard arrive in order");
        self.applied_in[from.index()] = seq;
        let account = self
            .account_mut(credit.account)
            .expect("credited accounts exist");
        assert_eq!(account.currency, credit.currency);
        account.balance += credit.amount;
        let totals = self.totals.entry(credit.currency).or_default();
        totals.accounts += credit.amount;
        totals.received += credit.amount;
        if let CreditPurpose::RefundReturn { payment_seq, .. } = credit.purpose {
            self.record_refund(payment_seq, credit.amount);
        }
        Outcome::Done
    }

    /// Releases the named holds that are still uncaptured and due at `now`; the others (since
    /// captured, voided or expired, or not yet due) are left as they are.
    fn expire_holds(&mut self, now: Millis, payments: &[u64]) -> Outcome {
        for &seq in payments {
            let due = self
                .payments
                .get(seq)
                .is_some_and(|p| p.view.status == PaymentStatus::Authorized && p.expires_at <= now);
            if !due {
                continue;
            }
            let p = self.payment_mut(seq).expect("held");
            p.view.status = PaymentStatus::Expired;
            let (account, amount) = (p.account.expect("authorized"), p.view.amount);
            let a = self.account_mut(account).expect("exists");
            a.held -= amount;
            assert!(a.held >= 0, "a hold is released once");
        }
        Outcome::Done
    }

    /// Cheap invariants after every change; the full sums run under `cfg(debug_assertions)`.
    fn check_invariants(&self) {
        for t in self.totals.values() {
            assert_eq!(
                t.accounts + t.treasury + t.sent - t.received,
                0,
                "conservation on one shard"
            );
        }
        if cfg!(debug_assertions) && self.accounts.len() <= 1_000 {
            for (currency, sum) in self.balances_by_currency() {
                assert_eq!(
                    self.totals[&currency].accounts, sum,
                    "running totals match the accounts"
                );
            }
            for a in self.accounts.values() {
                assert!(a.held >= 0, "holds are never negative");
            }
        }
    }
}

/// An account as the API and replication show it.
pub fn view_account(id: AccountId, a: &Account) -> AccountView {
    AccountView {
        id,
        currency: a.currency,
        balance: a.balance,
        held: a.held,
        floor: a.floor,
        status: a.status,
    }
}

/// A six-character approval code derived from the payment's id: deterministic, so replay and
/// idempotent answers agree.
fn approval_code(id: PaymentRef) -> CompactString {
    let mut x = (id.seq << 8) ^ id.shard.0 as u64;
    x = x.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    const DIGITS: &[u8] = b"0123456789ABCDEFGHJKLMNPQRSTUVWXYZ";
    (0..6)
        .map(|i| DIGITS[((x >> (i * 6)) % DIGITS.len() as u64) as usize] as char)
        .collect()
}

/// The idempotency tag a command carries, if any.
pub fn command_idem(cmd: &Command) -> Option<IdemTag> {
    match cmd {
        Command::Authorize { idem, .. }
        | Command::Capture { idem, .. }
        | Command::Void { idem, .. }
        | Command::ReduceAuthorization { idem, .. }
        | Command::RefundLocal { idem, .. }
        | Command::RefundDebit { idem, .. }
        | Command::Transfer { idem, .. } => *idem,
        _ => None,
    }
}

/// The time a command carries, if any.
pub fn command_now(cmd: &Command) -> Option<Millis> {
    match cmd {
        Command::Authorize { now, .. }
        | Command::Capture { now, .. }
        | Command::Void { now, .. }
        | Command::ReduceAuthorization { now, .. }
        | Command::RefundLocal { now, .. }
        | Command::RefundDebit { now, .. }
        | Command::Transfer { now, .. }
        | Command::ExpireHolds { now, .. } => Some(*now),
        _ => None,
    }
}

/// True when the card's expiry month (MM/YYYY, valid through its last day) is before `now`.
pub fn card_expired(exp_month: u8, exp_year: u16, now: Millis) -> bool {
    let (year, month) = year_month(now);
    (exp_year as u32, exp_month as u32) < (year, month)
}

/// Civil (year, month) in UTC of a Unix time in milliseconds (Howard Hinnant's algorithm).
pub fn year_month(now: Millis) -> (u32, u32) {
    let days = (now.0 / DAY_MILLIS) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    (year as u32, month as u32)
}
