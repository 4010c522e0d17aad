//! The operations merchants and operators ask for, as the protocols see them.
//!
//! Each operation runs on the shard that received the request and reaches the shards that
//! own the state through `Gateway::call`: card lookups and merchant checks are reads (no
//! fsync); the one change is executed on the owning shard (one fsync); the idempotency key's
//! owner is told before and after. Protocol code calls these and never touches the ledger.

use crate::domain::{AccountId, Currency, Millis, ShardId};
use crate::gateway::msg::*;
use crate::gateway::{Gateway, Peers, ServiceError};
use crate::ledger::*;
use crate::secrets;
use crate::shard::routing::{
    shard_of_account, shard_of_card, shard_of_card_id, shard_of_key, shard_of_merchant,
};
use crate::wal::SegmentDir;
use std::rc::Rc;

/// A new payment as the merchant asked for it. The PAN lives only in this value, in memory.
pub struct NewPayment {
    pub amount: i64,
    pub currency: Currency,
    pub pan: secrets::Pan,
    pub exp_month: u8,
    pub exp_year: u16,
    pub capture: bool,
    pub reference: CompactString,
}

/// The idempotency key of transfer `id`: the id itself is the key.
pub fn transfer_key(id: &str) -> Hash16 {
    secrets::hash16(&[b"transfer", id.as_bytes()])
}

/// An outcome, and whether it is the stored answer of an earlier request with the same key.
#[derive(Debug)]
pub struct Answer {
    pub outcome: Outcome,
    pub replayed: bool,
}

/// The card number of account `id` in bulk provisioning: BIN, the id's last nine digits,
/// and a Luhn check digit (16 digits with a 6-digit BIN).
pub fn provisioned_card_number(bin: &str, id: u64) -> String {
    secrets::with_luhn_digit(&format!("{bin}{:09}", id % 1_000_000_000))
}

fn expect_outcome(reply: Reply) -> Result<Outcome, ServiceError> {
    match reply {
        Reply::Outcome(o) => Ok(o),
        Reply::Unavailable => Err(ServiceError::Unavailable),
        other => panic!("protocol violation: expected an outcome, got {other:?}"),
    }
}

impl<D: SegmentDir + 'static, P: Peers + 'static> Gateway<D, P> {
    fn shards(&self) -> u16 {
        self.config.shards
    }

    /// Runs `op` guarded by an idempotency key: at most once per key; the same key with the
    /// same body replays the stored answer; with another body it is refused.
    /// `op` returns the outcome and the shard whose WAL holds the record.
    async fn idempotent<F, Fut>(
        self: &Rc<Self>,
        idem: Option<IdemTag>,
        op: F,
    ) -> Result<Answer, ServiceError>
    where
        F: FnOnce(Option<IdemTag>) -> Fut,
        Fut: std::future::Future<Output = Result<(Outcome, ShardId), ServiceError>>,
    {
        let Some(tag) = idem else {
            return op(None).await.map(|(outcome, _)| Answer {
                outcome,
                replayed: false,
            });
        };
        let owner = shard_of_key(&tag.key, self.shards());
        let begin = Request::IdemBegin {
            key: tag.key,
            body: tag.body,
            now: self.now(),
        };
        match self.call(owner, begin).await {
            Reply::Idem(IdemBegin::Proceed) => {}
            Reply::Idem(IdemBegin::Replay(holder)) => {
                let outcome = expect_outcome(self.call(holder, Request::IdemFetch(tag.key)).await)?;
                return Ok(Answer {
                    outcome,
                    replayed: true,
                });
            }
            Reply::Idem(IdemBegin::InFlight) => return Err(ServiceError::IdempotencyInFlight),
            Reply::Idem(IdemBegin::Mismatch) => return Err(ServiceError::IdempotencyMismatch),
            Reply::Idem(IdemBegin::Full) | Reply::Unavailable => {
                return Err(ServiceError::Unavailable)
            }
            other => panic!("protocol violation: {other:?}"),
        }
        let result = op(Some(tag)).await;
        let holder = match &result {
            Ok((Outcome::Rejected(_), _)) | Err(_) => None,
            Ok((_, holder)) => Some(*holder),
        };
        // The end must reach the owner, or the key stays "in flight" until it expires.
        let _ = self
            .call(
                owner,
                Request::IdemEnd {
                    key: tag.key,
                    owner: holder,
                },
            )
            .await;
        result.map(|(outcome, _)| Answer {
            outcome,
            replayed: false,
        })
    }

    /// Waits until the operation running under `key` has ended (for protocols whose
    /// repeats must be answered with the original's result rather than "in flight").
    pub async fn await_idempotent(self: &Rc<Self>, key: Hash16) -> Result<(), ServiceError> {
        match self
            .call(shard_of_key(&key, self.shards()), Request::IdemAwait(key))
            .await
        {
            Reply::Idem(_) => Ok(()),
            Reply::Unavailable => Err(ServiceError::Unavailable),
            other => panic!("protocol violation: {other:?}"),
        }
    }

    /// The payment that an earlier request with idempotency key `key` produced, as it is now.
    pub async fn payment_by_key(
        self: &Rc<Self>,
        key: Hash16,
    ) -> Result<Option<PaymentView>, ServiceError> {
        let owner = shard_of_key(&key, self.shards());
        let holder = match self.call(owner, Request::IdemLookup(key)).await {
            Reply::Idem(IdemBegin::Replay(holder)) => holder,
            Reply::Idem(IdemBegin::InFlight) => {
                self.await_idempotent(key).await?;
                match self.call(owner, Request::IdemLookup(key)).await {
                    Reply::Idem(IdemBegin::Replay(holder)) => holder,
                    _ => return Ok(None),
                }
            }
            Reply::Idem(_) => return Ok(None),
            Reply::Unavailable => return Err(ServiceError::Unavailable),
            other => panic!("protocol violation: {other:?}"),
        };
        let id = match expect_outcome(self.call(holder, Request::IdemFetch(key)).await)? {
            Outcome::Payment(view) => view.id,
            _ => return Ok(None),
        };
        match self.call(id.shard, Request::ReadPayment(id.seq)).await {
            Reply::Payment(p) => Ok(p),
            Reply::Unavailable => Err(ServiceError::Unavailable),
            other => panic!("protocol violation: {other:?}"),
        }
    }

    /// Lowers an authorization to `amount` (a partial reversal).
    pub async fn reduce_authorization(
        self: &Rc<Self>,
        merchant: &MerchantFacts,
        id: PaymentRef,
        amount: i64,
        idem: Option<IdemTag>,
    ) -> Result<Answer, ServiceError> {
        let merchant = merchant.id.clone();
        self.on_payment(id, idem, move |now, idem| Command::ReduceAuthorization {
            payment: id.seq,
            merchant,
            amount,
            now,
            idem,
        })
        .await
    }

    /// The account behind a card, for a balance inquiry (a read: nothing is logged).
    pub async fn card_account(
        self: &Rc<Self>,
        pan: &str,
    ) -> Result<Option<(CardFacts, AccountView)>, ServiceError> {
        if !secrets::luhn_valid(pan) {
            return Ok(None);
        }
        let hash = self.config.pan_key.hash_pan(pan);
        let card = match self
            .call(
                shard_of_card(&hash, self.shards()),
                Request::CardLookup(hash),
            )
            .await
        {
            Reply::Card(Some(c)) => c,
            Reply::Card(None) => return Ok(None),
            Reply::Unavailable => return Err(ServiceError::Unavailable),
            other => panic!("protocol violation: {other:?}"),
        };
        Ok(self.account(card.account).await?.map(|a| (card, a)))
    }

    async fn execute_at(
        self: &Rc<Self>,
        shard: ShardId,
        cmd: Command,
    ) -> Result<(Outcome, ShardId), ServiceError> {
        expect_outcome(self.call(shard, Request::Execute(cmd)).await).map(|o| (o, shard))
    }

    // ---- merchants ---------------------------------------------------------------------

    /// The merchant whose API key this is, or None.
    pub async fn authenticate(
        self: &Rc<Self>,
        api_key: &str,
    ) -> Result<Option<MerchantFacts>, ServiceError> {
        let Some(id) = secrets::merchant_of_api_key(api_key).and_then(|id| MerchantId::parse(&id))
        else {
            return Ok(None);
        };
        let home = shard_of_merchant(&id, self.shards());
        let req = Request::MerchantAuth {
            id,
            key_hash: secrets::hash_api_key(api_key),
        };
        match self.call(home, req).await {
            Reply::Merchant(m) => Ok(m),
            Reply::Unavailable => Err(ServiceError::Unavailable),
            other => panic!("protocol violation: {other:?}"),
        }
    }

    pub async fn create_payment(
        self: &Rc<Self>,
        merchant: &MerchantFacts,
        p: NewPayment,
        idem: Option<IdemTag>,
    ) -> Result<Answer, ServiceError> {
        let hash = self.config.pan_key.hash_pan(&p.pan);
        let presented = PresentedCard {
            bin: CompactString::from(&p.pan[..6]),
            last4: CompactString::from(&p.pan[p.pan.len() - 4..]),
            exp_month: p.exp_month,
            exp_year: p.exp_year,
        };
        let luhn_ok = secrets::luhn_valid(&p.pan);
        drop(p.pan);
        self.idempotent(idem, |idem| async move {
            let card = if luhn_ok {
                match self
                    .call(
                        shard_of_card(&hash, self.shards()),
                        Request::CardLookup(hash),
                    )
                    .await
                {
                    Reply::Card(c) => c,
                    Reply::Unavailable => return Err(ServiceError::Unavailable),
                    other => panic!("protocol violation: {other:?}"),
                }
            } else {
                None
            };
            let now = self.now();
            let (target, pre_decline) = match &card {
                Some(c) => (shard_of_account(c.account, self.shards()), None),
                None => (self.shard(), Some(Decline::InvalidCard)),
            };
            let cmd = Command::Authorize {
                merchant: merchant.clone(),
                card,
                presented,
                pre_decline,
                amount: p.amount,
                currency: p.currency,
                capture: p.capture,
                reference: p.reference,
                now,
                expires_at: Millis(now.0 + self.config.hold_ttl_millis),
                idem,
            };
            self.execute_at(target, cmd).await
        })
        .await
    }

    /// A payment of this merchant (another merchant's payment is "not found").
    pub async fn payment(
        self: &Rc<Self>,
        merchant: &MerchantFacts,
        id: PaymentRef,
    ) -> Result<Option<PaymentView>, ServiceError> {
        if id.shard.0 >= self.shards() {
            return Ok(None);
        }
        match self.call(id.shard, Request::ReadPayment(id.seq)).await {
            Reply::Payment(p) => Ok(p.filter(|p| p.merchant == merchant.id)),
            Reply::Unavailable => Err(ServiceError::Unavailable),
            other => panic!("protocol violation: {other:?}"),
        }
    }

    pub async fn capture(
        self: &Rc<Self>,
        merchant: &MerchantFacts,
        id: PaymentRef,
        amount: Option<i64>,
        idem: Option<IdemTag>,
    ) -> Result<Answer, ServiceError> {
        let merchant = merchant.id.clone();
        self.on_payment(id, idem, move |now, idem| Command::Capture {
            payment: id.seq,
            merchant,
            amount,
            now,
            idem,
        })
        .await
    }

    pub async fn void(
        self: &Rc<Self>,
        merchant: &MerchantFacts,
        id: PaymentRef,
        idem: Option<IdemTag>,
    ) -> Result<Answer, ServiceError> {
        let merchant = merchant.id.clone();
        self.on_payment(id, idem, move |now, idem| Command::Void {
            payment: id.seq,
            merchant,
            now,
            idem,
        })
        .await
    }

    /// Runs the command `make` builds on payment `id`'s shard, guarded by `idem`; an id that
    /// names no shard is simply not found.
    async fn on_payment(
        self: &Rc<Self>,
        id: PaymentRef,
        idem: Option<IdemTag>,
        make: impl FnOnce(Millis, Option<IdemTag>) -> Command,
    ) -> Result<Answer, ServiceError> {
        if id.shard.0 >= self.shards() {
            return Ok(Answer {
                outcome: Outcome::Rejected(Reject::PaymentNotFound),
                replayed: false,
            });
        }
        self.idempotent(idem, |idem| async move {
            self.execute_at(id.shard, make(self.now(), idem)).await
        })
        .await
    }

    /// Refunds part or all of what remains. Debit first: the settlement account is debited
    /// (durably) before the card account is credited; several refunds racing on one payment
    /// are serialised by a reservation on the payment's shard, so Σ refunds ≤ captured.
    pub async fn refund(
        self: &Rc<Self>,
        merchant: &MerchantFacts,
        id: PaymentRef,
        amount: Option<i64>,
        idem: Option<IdemTag>,
    ) -> Result<Answer, ServiceError> {
        if id.shard.0 >= self.shards() {
            return Ok(Answer {
                outcome: Outcome::Rejected(Reject::PaymentNotFound),
                replayed: false,
            });
        }
        self.idempotent(idem, |idem| async move {
            let now = self.now();
            let prepare = Request::RefundPrepare {
                seq: id.seq,
                merchant: merchant.id.clone(),
                amount,
                now,
                idem,
            };
            let plan = match self.call(id.shard, prepare).await {
                Reply::Refund(plan) => plan,
                Reply::Unavailable => return Err(ServiceError::Unavailable),
                other => panic!("protocol violation: {other:?}"),
            };
            match plan {
                RefundPlan::Done(outcome) => Ok((outcome, id.shard)),
                RefundPlan::Rejected(r) => Ok((Outcome::Rejected(r), id.shard)),
                RefundPlan::Unavailable => Err(ServiceError::Unavailable),
                RefundPlan::Reserved {
                    settlement,
                    settlement_shard,
                    card_account,
                    amount,
                    currency,
                    view,
                } => {
                    let cmd = Command::RefundDebit {
                        payment: id,
                        settlement,
                        card_account,
                        amount,
                        currency,
                        view,
                        now,
                        idem,
                    };
                    let result = self.execute_at(settlement_shard, cmd).await;
                    if !matches!(result, Ok((Outcome::Payment(_), _))) {
                        let _ = self
                            .call(
                                id.shard,
                                Request::RefundRelease {
                                    seq: id.seq,
                                    amount,
                                },
                            )
                            .await;
                    }
                    result
                }
            }
        })
        .await
    }

    // ---- operators ---------------------------------------------------------------------

    pub async fn create_account(
        self: &Rc<Self>,
        id: AccountId,
        currency: Currency,
        initial: i64,
        floor: i64,
        amount_limit: Option<i64>,
        daily_count_limit: Option<u32>,
    ) -> Result<Outcome, ServiceError> {
        let cmd = Command::CreateAccount {
            id,
            currency,
            initial,
            floor,
            amount_limit,
            daily_count_limit,
        };
        self.execute_at(shard_of_account(id, self.shards()), cmd)
            .await
            .map(|(o, _)| o)
    }

    pub async fn account(
        self: &Rc<Self>,
        id: AccountId,
    ) -> Result<Option<AccountView>, ServiceError> {
        match self
            .call(
                shard_of_account(id, self.shards()),
                Request::ReadAccount(id),
            )
            .await
        {
            Reply::Account(a) => Ok(a),
            Reply::Unavailable => Err(ServiceError::Unavailable),
            other => panic!("protocol violation: {other:?}"),
        }
    }

    pub async fn set_account_status(
        self: &Rc<Self>,
        id: AccountId,
        status: Status,
    ) -> Result<Outcome, ServiceError> {
        let cmd = Command::SetAccountStatus { id, status };
        self.execute_at(shard_of_account(id, self.shards()), cmd)
            .await
            .map(|(o, _)| o)
    }

    /// Binds a card to an existing account. The PAN is hashed here and dropped.
    pub async fn create_card(
        self: &Rc<Self>,
        pan: secrets::Pan,
        exp_month: u8,
        exp_year: u16,
        account: AccountId,
    ) -> Result<Outcome, ServiceError> {
        if self.account(account).await?.is_none() {
            return Ok(Outcome::Rejected(Reject::AccountNotFound));
        }
        let hash = self.config.pan_key.hash_pan(&pan);
        let cmd = Command::CreateCard {
            hash,
            account,
            bin: CompactString::from(&pan[..6]),
            last4: CompactString::from(&pan[pan.len() - 4..]),
            exp_month,
            exp_year,
        };
        drop(pan);
        self.execute_at(shard_of_card(&hash, self.shards()), cmd)
            .await
            .map(|(o, _)| o)
    }

    pub async fn set_card_status(
        self: &Rc<Self>,
        card_id: u64,
        status: Status,
    ) -> Result<Outcome, ServiceError> {
        let home = shard_of_card_id(card_id);
        if home.0 >= self.shards() {
            return Ok(Outcome::Rejected(Reject::CardNotFound));
        }
        self.execute_at(
            home,
            Command::SetCardStatus {
                id: card_id,
                status,
            },
        )
        .await
        .map(|(o, _)| o)
    }

    /// Creates a merchant; returns its API key (shown once, stored only as a hash).
    pub async fn create_merchant(
        self: &Rc<Self>,
        id: MerchantId,
        settlement: AccountId,
        mcc: u16,
    ) -> Result<(Outcome, Option<String>), ServiceError> {
        let Some(account) = self.account(settlement).await? else {
            return Ok((Outcome::Rejected(Reject::AccountNotFound), None));
        };
        let api_key = secrets::new_api_key(&id.0);
        let home = shard_of_merchant(&id, self.shards());
        let cmd = Command::CreateMerchant {
            id,
            key_hash: secrets::hash_api_key(&api_key),
            settlement,
            currency: account.currency,
            mcc,
        };
        let (outcome, _) = self.execute_at(home, cmd).await?;
        let key = matches!(outcome, Outcome::Merchant { .. }).then_some(api_key);
        Ok((outcome, key))
    }

    pub async fn set_merchant_status(
        self: &Rc<Self>,
        id: MerchantId,
        status: Status,
    ) -> Result<Outcome, ServiceError> {
        let home = shard_of_merchant(&id, self.shards());
        self.execute_at(home, Command::SetMerchantStatus { id, status })
            .await
            .map(|(o, _)| o)
    }

    pub async fn merchant(
        self: &Rc<Self>,
        id: MerchantId,
    ) -> Result<Option<MerchantFacts>, ServiceError> {
        let home = shard_of_merchant(&id, self.shards());
        match self.call(home, Request::MerchantLookup(id)).await {
            Reply::Merchant(m) => Ok(m),
            Reply::Unavailable => Err(ServiceError::Unavailable),
            other => panic!("protocol violation: {other:?}"),
        }
    }

    /// Moves money between two accounts of one currency. The transfer id is its idempotency
    /// key: the same id with the same body answers the first result.
    #[allow(clippy::too_many_arguments)]
    pub async fn transfer(
        self: &Rc<Self>,
        id: String,
        from: AccountId,
        to: AccountId,
        amount: i64,
        currency: Currency,
        body_hash: Hash16,
    ) -> Result<Answer, ServiceError> {
        let tag = IdemTag {
            key: transfer_key(&id),
            body: body_hash,
        };
        self.idempotent(Some(tag), |idem| async move {
            let from_shard = shard_of_account(from, self.shards());
            match self.account(to).await? {
                None => return Ok((Outcome::Rejected(Reject::AccountNotFound), from_shard)),
                Some(a) if a.currency != currency => {
                    return Ok((Outcome::Rejected(Reject::CurrencyMismatch), from_shard));
                }
                Some(_) => {}
            }
            let to_shard = shard_of_account(to, self.shards());
            let cmd = Command::Transfer {
                id,
                from,
                to,
                to_shard,
                amount,
                currency,
                now: self.now(),
                idem,
            };
            self.execute_at(from_shard, cmd).await
        })
        .await
    }

    /// Every shard's figures (conservation, counts, WAL), in shard order.
    pub async fn all_stats(self: &Rc<Self>) -> Result<Vec<ShardStats>, ServiceError> {
        let mut out = Vec::with_capacity(self.shards() as usize);
        for s in 0..self.shards() {
            match self.call(ShardId(s), Request::Stats).await {
                Reply::Stats(st) => out.push(*st),
                Reply::Unavailable => return Err(ServiceError::Unavailable),
                other => panic!("protocol violation: {other:?}"),
            }
        }
        Ok(out)
    }

    /// Bulk provisioning on every shard at once; returns (accounts, cards) created.
    pub async fn provision_all(self: &Rc<Self>, p: Provision) -> Result<(u64, u64), ServiceError> {
        let calls =
            (0..self.shards()).map(|s| self.call(ShardId(s), Request::Provision(p.clone())));
        let mut totals = (0, 0);
        for reply in futures::future::join_all(calls).await {
            match reply {
                Reply::Provisioned { accounts, cards } => {
                    totals.0 += accounts;
                    totals.1 += cards;
                }
                _ => return Err(ServiceError::Unavailable),
            }
        }
        Ok(totals)
    }

    /// This shard's share of a bulk provisioning request.
    pub(crate) async fn provision(self: &Rc<Self>, p: Provision) -> Reply {
        let shards = self.shards();
        let (mut accounts, mut cards) = (0u64, 0u64);
        let mut last = None;
        for (i, id) in (p.first..p.first + p.count).enumerate() {
            if i % 256 == 255 {
                futures_lite::future::yield_now().await;
            }
            let account = AccountId(id);
            if shard_of_account(account, shards) == self.shard() {
                let cmd = Command::CreateAccount {
                    id: account,
                    currency: p.currency,
                    initial: p.balance,
                    floor: 0,
                    amount_limit: None,
                    daily_count_limit: None,
                };
                match self.log_with_backpressure(&cmd).await {
                    Some((lsn, Outcome::Account(_))) => {
                        accounts += 1;
                        last = Some(lsn);
                    }
                    Some(_) => {}
                    None => return Reply::Unavailable,
                }
            }
            let pan = secrets::Pan::from(provisioned_card_number(&p.bin, id));
            let hash = self.config.pan_key.hash_pan(&pan);
            if shard_of_card(&hash, shards) == self.shard() {
                let cmd = Command::CreateCard {
                    hash,
                    account,
                    bin: CompactString::from(&pan[..6]),
                    last4: CompactString::from(&pan[pan.len() - 4..]),
                    exp_month: p.exp_month,
                    exp_year: p.exp_year,
                };
                match self.log_with_backpressure(&cmd).await {
                    Some((lsn, Outcome::Card { .. })) => {
                        cards += 1;
                        last = Some(lsn);
                    }
                    Some(_) => {}
                    None => return Reply::Unavailable,
                }
            }
        }
        if let Some(lsn) = last {
            if self.wal().wait_durable(lsn).await.is_err() {
                return Reply::Unavailable;
            }
        }
        Reply::Provisioned { accounts, cards }
    }

    /// Appends and applies, waiting for the group commit to drain when the WAL pushes back.
    async fn log_with_backpressure(&self, cmd: &Command) -> Option<(crate::domain::Lsn, Outcome)> {
        const RETRIES_MAX: usize = 1000;
        for _ in 0..RETRIES_MAX {
            match self.log_and_apply(cmd) {
                Ok(r) => return Some(r),
                Err(_) if self.wal().is_poisoned() => return None,
                Err(_) => {
                    let last = self.wal().last_lsn();
                    self.wal().wait_durable(last).await.ok()?;
                }
            }
        }
        None
    }
}
