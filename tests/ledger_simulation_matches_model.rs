//! Deterministic simulation of the pure ledger: seeded random operations on several shards
//! (authorize, sale, capture, void, refunds on the same and on other shards, transfers, hold
//! expiry, credits delivered late and re-sent) checked step by step against a simple model,
//! then every shard's log replayed into a fresh ledger that must be identical.
//!
//! Every shard also has a twin that runs as production does: a ledger holding a window of
//! only `TWIN_WINDOW` payments in front of a simulated store, fed by a second ledger (the
//! store writer) that lags a random distance behind and commits at random moments. Evicted
//! payments are loaded back before a command touches them. Every command must have the
//! same outcome on the twin as on the ledger that holds everything, and at the end the
//! store must hold every payment exactly as that ledger does.

use corepay::domain::{AccountId, Currency, Lsn, Millis, ShardId};
use corepay::ledger::*;
use corepay::shard::routing::shard_of_account;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, VecDeque};

const SHARDS: u16 = 3;
const CARD_ACCOUNTS: u64 = 10;
const MERCHANTS: u64 = 3;
const STEPS: usize = 3000;
const TWIN_WINDOW: usize = 64;

/// A shard as production runs it: a payment window, a store, a store writer behind it.
struct Twin {
    shard: Ledger,
    writer: Ledger,
    store: BTreeMap<u64, corepay::ledger::state::Payment>,
    stored_transfers: BTreeMap<Hash16, TransferView>,
    stored: Lsn,
    /// Logged records the writer has not applied.
    pending: VecDeque<(Lsn, Command)>,
    shard_lsn: u64,
    cold_loads: u64,
    catch_ups: u64,
}

impl Twin {
    fn new(shard: ShardId) -> Twin {
        let mut writer = Ledger::with_payment_window(shard, SHARDS, TWIN_WINDOW);
        writer.track_changes();
        Twin {
            shard: Ledger::with_payment_window(shard, SHARDS, TWIN_WINDOW),
            writer,
            store: BTreeMap::new(),
            stored_transfers: BTreeMap::new(),
            stored: Lsn(0),
            pending: VecDeque::new(),
            shard_lsn: 0,
            cold_loads: 0,
            catch_ups: 0,
        }
    }

    /// The writer applies up to `n` pending records, loading what it needs from the store.
    fn writer_apply(&mut self, n: usize) {
        for _ in 0..n {
            let Some((lsn, cmd)) = self.pending.pop_front() else {
                return;
            };
            if !self.writer_prepare(&cmd) {
                self.commit();
                assert!(self.writer_prepare(&cmd), "a committed window has room");
            }
            self.writer.apply(lsn, &cmd);
        }
    }

    fn writer_prepare(&mut self, cmd: &Command) -> bool {
        if let Some(key) = Ledger::needs_transfer(cmd) {
            if let Some(t) = self.stored_transfers.get(&key) {
                if !self.writer.transfer_held(&key)
                    && self.writer.load_transfer(key, t.clone()).is_err()
                {
                    return false;
                }
            }
        }
        let needed: Vec<u64> = self.writer.needs_payments(cmd).collect();
        for seq in needed {
            if !self.writer.payment_held(seq) {
                let p = self.store[&seq].clone();
                if self.writer.load_payment(seq, p).is_err() {
                    return false;
                }
            }
        }
        self.writer.has_room_for(cmd)
    }

    /// The writer commits what it applied: the store has it, both windows may evict it.
    fn commit(&mut self) {
        let changes = self.writer.take_changes();
        for seq in changes.payments {
            let p = self
                .writer
                .payment(seq)
                .expect("changed payments stay held");
            self.store.insert(seq, p.clone());
        }
        for key in changes.transfers {
            let t = self
                .writer
                .transfer_row(&key)
                .expect("new transfers stay held");
            self.stored_transfers.insert(key, t.clone());
        }
        let applied = self
            .pending
            .front()
            .map_or(self.last_logged(), |(l, _)| Lsn(l.0 - 1));
        self.stored = applied;
        self.writer.set_stored(applied);
        self.shard.set_stored(applied);
    }

    fn last_logged(&self) -> Lsn {
        Lsn(self.shard_lsn)
    }

    fn catch_up(&mut self) {
        self.catch_ups += 1;
        self.writer_apply(usize::MAX);
        self.commit();
    }

    /// Loads what `cmd` needs (catching the store up when the window has no room) and
    /// applies it as the shard would.
    fn exec(&mut self, lsn: Lsn, cmd: &Command) -> Outcome {
        for attempt in 0..2 {
            let mut ready = true;
            if let Some(key) = Ledger::needs_transfer(cmd) {
                if let Some(t) = self.stored_transfers.get(&key) {
                    if !self.shard.transfer_held(&key) {
                        ready &= self.shard.load_transfer(key, t.clone()).is_ok();
                    }
                }
            }
            let needed: Vec<u64> = self.shard.needs_payments(cmd).collect();
            for seq in needed {
                if !self.shard.payment_held(seq) {
                    self.cold_loads += 1;
                    let p = self
                        .store
                        .get(&seq)
                        .expect("an evicted payment is stored")
                        .clone();
                    ready &= self.shard.load_payment(seq, p).is_ok();
                }
            }
            if ready && self.shard.has_room_for(cmd) {
                break;
            }
            assert_eq!(attempt, 0, "room after the store caught up");
            self.catch_up();
        }
        let outcome = self.shard.apply(lsn, cmd);
        self.pending.push_back((lsn, cmd.clone()));
        self.shard_lsn = lsn.0;
        outcome
    }
}

#[derive(Clone, Debug, Default)]
struct ModelAccount {
    balance: i64,
    held: i64,
    floor: i64,
}

#[derive(Clone, Debug)]
struct ModelPayment {
    shard: ShardId,
    seq: u64,
    account: u64,
    merchant: usize,
    amount: i64,
    captured: i64,
    refunded: i64,
    refund_in_flight: i64,
    status: PaymentStatus,
    expires_at: Millis,
}

struct Sim {
    rng: SmallRng,
    now: u64,
    ledgers: Vec<Ledger>,
    twins: Vec<Twin>,
    logs: Vec<Vec<(Lsn, Command)>>,
    accounts: BTreeMap<u64, ModelAccount>,
    payments: Vec<ModelPayment>,
    /// Money the model knows is travelling: (destination account, amount, refund of payment).
    in_flight: VecDeque<(u64, i64, Option<usize>)>,
    merchants: Vec<MerchantFacts>,
    eur: Currency,
    /// Σ of the journal entries replication would store, per journal account.
    journal: BTreeMap<effects::JournalAccount, i64>,
    /// Latest account rows replication would store.
    replica_accounts: BTreeMap<AccountId, AccountView>,
}

impl Sim {
    fn shard(&self, account: u64) -> ShardId {
        shard_of_account(AccountId(account), SHARDS)
    }

    fn exec(&mut self, shard: ShardId, cmd: Command) -> Outcome {
        let log = &mut self.logs[shard.index()];
        let lsn = Lsn(log.len() as u64 + 1);
        let (outcome, fx) =
            effects::apply_with_effects(&mut self.ledgers[shard.index()], lsn, &cmd);
        for e in fx.journal {
            *self.journal.entry(e.account).or_default() += e.amount;
        }
        for a in fx.accounts {
            self.replica_accounts.insert(a.id, a);
        }
        let twin = self.twins[shard.index()].exec(lsn, &cmd);
        assert_eq!(twin, outcome, "the windowed twin decides alike: {cmd:?}");
        log.push((lsn, cmd));
        outcome
    }

    fn new(seed: u64) -> Sim {
        let mut sim = Sim {
            rng: SmallRng::seed_from_u64(seed),
            now: 1_800_000_000_000,
            ledgers: (0..SHARDS)
                .map(|s| Ledger::new(ShardId(s), SHARDS))
                .collect(),
            twins: (0..SHARDS).map(|s| Twin::new(ShardId(s))).collect(),
            logs: vec![Vec::new(); SHARDS as usize],
            accounts: BTreeMap::new(),
            payments: Vec::new(),
            in_flight: VecDeque::new(),
            merchants: Vec::new(),
            eur: Currency::from_alpha("EUR").unwrap(),
            journal: BTreeMap::new(),
            replica_accounts: BTreeMap::new(),
        };
        for id in 0..CARD_ACCOUNTS + MERCHANTS {
            let initial = sim.rng.gen_range(0..200_000);
            let floor = if sim.rng.gen_bool(0.3) {
                -sim.rng.gen_range(0..50_000)
            } else {
                0
            };
            let cmd = Command::CreateAccount {
                id: AccountId(id),
                currency: sim.eur,
                initial,
                floor,
                amount_limit: None,
                daily_count_limit: None,
            };
            let shard = sim.shard(id);
            assert!(matches!(sim.exec(shard, cmd), Outcome::Account(_)));
            sim.accounts.insert(
                id,
                ModelAccount {
                    balance: initial,
                    held: 0,
                    floor,
                },
            );
        }
        for m in 0..MERCHANTS {
            let settlement = CARD_ACCOUNTS + m;
            sim.merchants.push(MerchantFacts {
                id: MerchantId(format!("M{m}").into()),
                settlement: AccountId(settlement),
                settlement_shard: sim.shard(settlement),
                currency: sim.eur,
                mcc: 5411,
                status: Status::Active,
            });
        }
        sim
    }

    fn card(&self, account: u64) -> CardFacts {
        CardFacts {
            id: account,
            home: ShardId(0),
            account: AccountId(account),
            bin: "400000".into(),
            last4: format!("{:04}", account).into(),
            exp_month: 12,
            exp_year: 2030,
            status: Status::Active,
        }
    }

    fn step(&mut self) {
        // The store writer lags far enough behind that windows fill with unstored changes.
        if self.rng.gen_bool(0.004) {
            for t in 0..SHARDS as usize {
                let n = self.rng.gen_range(0..400);
                self.twins[t].writer_apply(n);
                self.twins[t].commit();
            }
        }
        self.now += self.rng.gen_range(0..5_000);
        match self.rng.gen_range(0..100) {
            0..=29 => self.authorize(),
            30..=44 => self.capture(),
            45..=48 => self.void(),
            49..=51 => self.reduce(),
            52..=66 => self.refund(),
            67..=76 => self.transfer(),
            77..=94 => self.deliver_credits(),
            95..=97 => self.resend_and_ack(),
            _ => self.expire(),
        }
    }

    fn authorize(&mut self) {
        let account = self.rng.gen_range(0..CARD_ACCOUNTS);
        let merchant = self.rng.gen_range(0..MERCHANTS as usize);
        let amount = self.rng.gen_range(1..60_000);
        let capture = self.rng.gen_bool(0.3);
        let shard = self.shard(account);
        let expires_at = Millis(self.now + self.rng.gen_range(10_000..2_000_000));
        let cmd = Command::Authorize {
            merchant: self.merchants[merchant].clone(),
            card: Some(self.card(account)),
            presented: PresentedCard {
                bin: "400000".into(),
                last4: format!("{account:04}").into(),
                exp_month: 12,
                exp_year: 2030,
            },
            pre_decline: None,
            amount,
            currency: self.eur,
            capture,
            reference: Default::default(),
            now: Millis(self.now),
            expires_at,
            idem: None,
        };
        let Outcome::Payment(view) = self.exec(shard, cmd) else {
            panic!("authorize answers a payment")
        };
        let a = self.accounts.get_mut(&account).unwrap();
        let approve = a.balance - a.held - amount >= a.floor;
        assert_eq!(
            view.decline.is_none(),
            approve,
            "approval disagrees with the model: {view:?} {a:?}"
        );
        if !approve {
            assert_eq!(view.decline, Some(Decline::InsufficientFunds));
            return;
        }
        let mut p = ModelPayment {
            shard,
            seq: view.id.seq,
            account,
            merchant,
            amount,
            captured: 0,
            refunded: 0,
            refund_in_flight: 0,
            status: PaymentStatus::Authorized,
            expires_at,
        };
        if capture {
            a.balance -= amount;
            p.captured = amount;
            p.status = PaymentStatus::Captured;
            self.settle(shard, merchant, amount);
        } else {
            a.held += amount;
        }
        self.payments.push(p);
    }

    /// Captured money to the merchant: now when local, later when cross-shard.
    fn settle(&mut self, from: ShardId, merchant: usize, amount: i64) {
        let settlement = self.merchants[merchant].settlement.0;
        if self.merchants[merchant].settlement_shard == from {
            self.accounts.get_mut(&settlement).unwrap().balance += amount;
        } else {
            self.in_flight.push_back((settlement, amount, None));
        }
    }

    fn pick(&mut self, pred: impl Fn(&ModelPayment) -> bool) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.payments.len())
            .filter(|&i| pred(&self.payments[i]))
            .collect();
        (!candidates.is_empty()).then(|| candidates[self.rng.gen_range(0..candidates.len())])
    }

    fn capture(&mut self) {
        let Some(i) = self.pick(|p| p.status == PaymentStatus::Authorized) else {
            return;
        };
        let p = self.payments[i].clone();
        let amount = if self.rng.gen_bool(0.5) {
            None
        } else {
            Some(self.rng.gen_range(1..=p.amount))
        };
        let over = self.rng.gen_bool(0.05);
        let asked = if over { Some(p.amount + 1) } else { amount };
        let cmd = Command::Capture {
            payment: p.seq,
            merchant: self.merchants[p.merchant].id.clone(),
            amount: asked,
            now: Millis(self.now),
            idem: None,
        };
        let outcome = self.exec(p.shard, cmd);
        if over {
            assert_eq!(outcome, Outcome::Rejected(Reject::AmountTooLarge));
            return;
        }
        let Outcome::Payment(view) = outcome else {
            panic!("{outcome:?}")
        };
        let captured = amount.unwrap_or(p.amount);
        assert_eq!(view.amount_captured, captured);
        let a = self.accounts.get_mut(&p.account).unwrap();
        a.held -= p.amount;
        a.balance -= captured;
        let m = &mut self.payments[i];
        m.captured = captured;
        m.status = if captured == p.amount {
            PaymentStatus::Captured
        } else {
            PaymentStatus::PartiallyCaptured
        };
        self.settle(p.shard, p.merchant, captured);
    }

    fn void(&mut self) {
        let Some(i) = self.pick(|_| true) else { return };
        let p = self.payments[i].clone();
        let cmd = Command::Void {
            payment: p.seq,
            merchant: self.merchants[p.merchant].id.clone(),
            now: Millis(self.now),
            idem: None,
        };
        let outcome = self.exec(p.shard, cmd);
        if p.status != PaymentStatus::Authorized {
            assert_eq!(outcome, Outcome::Rejected(Reject::InvalidState), "{p:?}");
            return;
        }
        assert!(matches!(outcome, Outcome::Payment(ref v) if v.status == PaymentStatus::Voided));
        self.accounts.get_mut(&p.account).unwrap().held -= p.amount;
        self.payments[i].status = PaymentStatus::Voided;
    }

    /// A partial reversal: the hold shrinks to a smaller amount.
    fn reduce(&mut self) {
        let Some(i) = self.pick(|p| p.status == PaymentStatus::Authorized && p.amount > 1) else {
            return;
        };
        let p = self.payments[i].clone();
        let to = self.rng.gen_range(1..p.amount);
        let cmd = Command::ReduceAuthorization {
            payment: p.seq,
            merchant: self.merchants[p.merchant].id.clone(),
            amount: to,
            now: Millis(self.now),
            idem: None,
        };
        let outcome = self.exec(p.shard, cmd);
        assert!(
            matches!(outcome, Outcome::Payment(ref v) if v.amount == to),
            "{outcome:?}"
        );
        self.accounts.get_mut(&p.account).unwrap().held -= p.amount - to;
        self.payments[i].amount = to;
    }

    fn refund(&mut self) {
        let Some(i) = self.pick(|p| p.captured > p.refunded + p.refund_in_flight) else {
            return;
        };
        let p = self.payments[i].clone();
        let remaining = p.captured - p.refunded - p.refund_in_flight;
        let amount = self.rng.gen_range(1..=remaining);
        let merchant = self.merchants[p.merchant].clone();
        let ledger = &self.ledgers[p.shard.index()];
        ledger
            .check_refund(p.seq, &merchant.id, amount, p.refund_in_flight)
            .expect("the model allows it");
        assert_eq!(
            ledger.check_refund(p.seq, &merchant.id, remaining + 1, p.refund_in_flight),
            Err(Reject::AmountTooLarge)
        );
        let settlement = merchant.settlement.0;
        let s = &self.accounts[&settlement];
        let funded = s.balance - s.held - amount >= s.floor;
        if merchant.settlement_shard == p.shard {
            let cmd = Command::RefundLocal {
                payment: p.seq,
                merchant: merchant.id,
                amount,
                now: Millis(self.now),
                idem: None,
            };
            let outcome = self.exec(p.shard, cmd);
            if !funded {
                assert_eq!(outcome, Outcome::Rejected(Reject::InsufficientFunds));
                return;
            }
            assert!(matches!(outcome, Outcome::Payment(_)), "{outcome:?}");
            self.accounts.get_mut(&settlement).unwrap().balance -= amount;
            self.accounts.get_mut(&p.account).unwrap().balance += amount;
            self.record_refund(i, amount);
        } else {
            let view = self.ledgers[p.shard.index()]
                .project_refund(p.seq, amount, p.refund_in_flight)
                .unwrap();
            let cmd = Command::RefundDebit {
                payment: PaymentRef {
                    shard: p.shard,
                    seq: p.seq,
                },
                settlement: merchant.settlement,
                card_account: AccountId(p.account),
                amount,
                currency: self.eur,
                view: Box::new(view),
                now: Millis(self.now),
                idem: None,
            };
            let outcome = self.exec(merchant.settlement_shard, cmd);
            if !funded {
                assert_eq!(outcome, Outcome::Rejected(Reject::InsufficientFunds));
                return;
            }
            assert!(matches!(outcome, Outcome::Payment(_)), "{outcome:?}");
            self.accounts.get_mut(&settlement).unwrap().balance -= amount;
            self.payments[i].refund_in_flight += amount;
            self.in_flight.push_back((p.account, amount, Some(i)));
        }
    }

    fn record_refund(&mut self, i: usize, amount: i64) {
        let m = &mut self.payments[i];
        m.refunded += amount;
        assert!(m.refunded <= m.captured);
        m.status = if m.refunded == m.captured {
            PaymentStatus::Refunded
        } else {
            PaymentStatus::PartiallyRefunded
        };
    }

    fn transfer(&mut self) {
        let from = self.rng.gen_range(0..CARD_ACCOUNTS + MERCHANTS);
        let to = self.rng.gen_range(0..CARD_ACCOUNTS + MERCHANTS);
        let amount = self.rng.gen_range(1..30_000);
        let (fs, ts) = (self.shard(from), self.shard(to));
        let id = format!("t{}", self.now);
        let cmd = Command::Transfer {
            id,
            from: AccountId(from),
            to: AccountId(to),
            to_shard: ts,
            amount,
            currency: self.eur,
            now: Millis(self.now),
            idem: None,
        };
        let outcome = self.exec(fs, cmd);
        let a = &self.accounts[&from];
        if from == to {
            assert_eq!(outcome, Outcome::Rejected(Reject::SameAccount));
            return;
        }
        if a.balance - a.held - amount < a.floor {
            assert_eq!(outcome, Outcome::Rejected(Reject::InsufficientFunds));
            return;
        }
        assert!(matches!(outcome, Outcome::Transfer(_)), "{outcome:?}");
        self.accounts.get_mut(&from).unwrap().balance -= amount;
        if fs == ts {
            self.accounts.get_mut(&to).unwrap().balance += amount;
        } else {
            self.in_flight.push_back((to, amount, None));
        }
    }

    /// Delivers some outbox credits, in order per (source, destination), as the pump would.
    fn deliver_credits(&mut self) {
        for from in 0..SHARDS {
            let pending: Vec<(ShardId, u64, Credit)> = self.ledgers[from as usize]
                .outbox()
                .map(|(to, seq, _, c)| (to, seq, c.clone()))
                .collect();
            for (to, seq, credit) in pending {
                if self.rng.gen_bool(0.3) {
                    break; // the rest of this source's credits stay in flight for now
                }
                let last = self.ledgers[to.index()].last_applied_from(ShardId(from));
                if seq <= last {
                    continue;
                }
                let cmd = Command::ApplyCredit {
                    from: ShardId(from),
                    seq,
                    credit: credit.clone(),
                };
                assert_eq!(self.exec(to, cmd), Outcome::Done);
                self.model_credit_arrived(credit.account.0, credit.amount);
            }
        }
    }

    fn model_credit_arrived(&mut self, account: u64, amount: i64) {
        let k = self
            .in_flight
            .iter()
            .position(|&(a, amt, _)| a == account && amt == amount)
            .expect("a known credit");
        let (account, amount, refund) = self.in_flight.remove(k).unwrap();
        self.accounts.get_mut(&account).unwrap().balance += amount;
        if let Some(i) = refund {
            self.payments[i].refund_in_flight -= amount;
            self.record_refund(i, amount);
        }
    }

    /// Re-sends already applied credits (must be ignored) and acknowledges them.
    fn resend_and_ack(&mut self) {
        for from in 0..SHARDS {
            let outbox: Vec<(ShardId, u64, Credit)> = self.ledgers[from as usize]
                .outbox()
                .map(|(to, seq, _, c)| (to, seq, c.clone()))
                .collect();
            for (to, seq, credit) in outbox {
                let last = self.ledgers[to.index()].last_applied_from(ShardId(from));
                if seq <= last {
                    let before = self.ledgers[to.index()].clone();
                    let cmd = Command::ApplyCredit {
                        from: ShardId(from),
                        seq,
                        credit,
                    };
                    assert_eq!(self.exec(to, cmd), Outcome::Done);
                    assert_eq!(
                        self.ledgers[to.index()].account(AccountId(0)),
                        before.account(AccountId(0))
                    );
                    let ack = Command::AckCredits { to, seq: last };
                    self.exec(ShardId(from), ack);
                }
            }
        }
    }

    fn expire(&mut self) {
        self.now += 500_000;
        let now = Millis(self.now);
        for s in 0..SHARDS {
            let payments = self.ledgers[s as usize].holds_due_in_memory(now, usize::MAX);
            self.exec(ShardId(s), Command::ExpireHolds { now, payments });
        }
        for p in &mut self.payments {
            if p.status == PaymentStatus::Authorized && p.expires_at <= now {
                p.status = PaymentStatus::Expired;
                self.accounts.get_mut(&p.account).unwrap().held -= p.amount;
            }
        }
    }

    fn check(&self) {
        for (&id, m) in &self.accounts {
            let a = self.ledgers[self.shard(id).index()]
                .account(AccountId(id))
                .unwrap();
            assert_eq!((a.balance, a.held), (m.balance, m.held), "account {id}");
            assert!(
                a.balance - a.held >= a.floor || a.held == 0,
                "account {id} below its floor: {a:?}"
            );
        }
        for p in &self.payments {
            let v = &self.ledgers[p.shard.index()].payment(p.seq).unwrap().view;
            assert_eq!(
                (v.status, v.amount_captured, v.amount_refunded),
                (p.status, p.captured, p.refunded),
                "payment {p:?}"
            );
        }
        // What replication derives from the effects matches the ledger itself.
        for &id in self.accounts.keys() {
            let a = self.ledgers[self.shard(id).index()]
                .account(AccountId(id))
                .unwrap();
            let journal = self
                .journal
                .get(&effects::JournalAccount::Account(AccountId(id)))
                .copied();
            assert_eq!(journal.unwrap_or(0), a.balance, "journal of account {id}");
            assert_eq!(
                self.replica_accounts.get(&AccountId(id)),
                Some(&a),
                "replicated row of account {id}"
            );
        }
        assert_eq!(
            self.journal.values().sum::<i64>(),
            0,
            "the journal balances"
        );
        let in_flight: i64 = self.in_flight.iter().map(|&(_, a, _)| a).sum();
        assert_eq!(
            self.journal
                .get(&effects::JournalAccount::InFlight)
                .copied()
                .unwrap_or(0),
            in_flight
        );
        let mut sum = 0;
        for l in &self.ledgers {
            for t in l.totals().values() {
                sum += t.accounts + t.treasury;
            }
        }
        assert_eq!(
            sum + in_flight,
            0,
            "conservation across shards, money in flight included"
        );
    }
}

#[test]
fn random_operations_match_the_model_and_replay_identically() {
    let mut full_windows = 0;
    for seed in 0..8 {
        let mut sim = Sim::new(seed);
        for i in 0..STEPS {
            sim.step();
            if i % 100 == 0 {
                sim.check();
            }
        }
        while !sim.in_flight.is_empty() {
            sim.deliver_credits();
        }
        sim.check();
        assert!(
            sim.payments.len() > 100,
            "the simulation exercised payments"
        );
        for (s, twin) in sim.twins.iter_mut().enumerate() {
            twin.catch_up();
            let all = &sim.ledgers[s];
            for (seq, p) in all.all_payments().map(|v| (v.id.seq, v)) {
                assert_eq!(
                    &twin.store[&seq].view, p,
                    "seed {seed}: stored payment {seq}"
                );
            }
            assert_eq!(twin.store.len(), all.all_payments().count());
            for a in all.all_accounts() {
                assert_eq!(twin.shard.account(a.id), Some(a.clone()));
                assert_eq!(twin.writer.account(a.id), Some(a));
            }
            let (held, window) = twin.shard.payments_held();
            assert!(held <= window.unwrap());
            assert!(
                twin.cold_loads > 0 && twin.store.len() > window.unwrap(),
                "seed {seed}: shard {s} evicted and loaded payments back"
            );
            // Beyond the final catch-up: a window that filled with unstored changes.
            full_windows += twin.catch_ups - 1;
        }
        for s in 0..SHARDS as usize {
            let mut replayed = Ledger::new(ShardId(s as u16), SHARDS);
            for (lsn, cmd) in &sim.logs[s] {
                // Through the WAL encoding, as recovery does.
                let bytes = postcard::to_stdvec(cmd).unwrap();
                let decoded: Command = postcard::from_bytes(&bytes).unwrap();
                replayed.apply(*lsn, &decoded);
            }
            assert_eq!(
                replayed, sim.ledgers[s],
                "seed {seed}: shard {s} replays to the same state"
            );
        }
    }
    assert!(
        full_windows > 0,
        "a window filled with unstored changes at least once"
    );
}
