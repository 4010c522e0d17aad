//! Commands (what the WAL records) and outcomes (what the ledger answers).
//!
//! A command carries every input the ledger needs, including the time and anything decided
//! outside the ledger (routing, configuration), so that replaying the WAL rebuilds the exact
//! same state. Commands are plain data; they are encoded with postcard, versioned by the WAL
//! record header (`COMMAND_VERSION`).

use crate::domain::{AccountId, Currency, Millis, ShardId};
use crate::ledger::decline::Decline;
pub use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// WAL record kind for a ledger command.
pub const RECORD_KIND_COMMAND: u8 = 1;
/// Version of the `Command` encoding; bump it with any change to the enum below.
pub const COMMAND_VERSION: u8 = 2;

/// 128-bit truncation of SHA-256: enough to make collisions irrelevant, half the memory.
pub type Hash16 = [u8; 16];
/// Keyed hash (HMAC-SHA-256) of a card number: the only form in which a PAN is kept.
pub type CardHash = [u8; 32];

/// Most holds one `ExpireHolds` names.
pub const EXPIRE_BATCH_MAX: usize = 256;

/// Longest merchant id: ISO 8583 DE42 is ans15.
pub const MERCHANT_ID_MAX: usize = 15;
/// Longest payment reference a merchant may attach.
pub const REFERENCE_MAX: usize = 64;

/// A merchant's id (DE42), 1..=15 printable ASCII characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MerchantId(pub CompactString);

impl MerchantId {
    pub fn parse(text: &str) -> Option<MerchantId> {
        let ok = !text.is_empty()
            && text.len() <= MERCHANT_ID_MAX
            && text.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
        ok.then(|| MerchantId(CompactString::from(text)))
    }
}

/// A payment's global address: the shard that owns it and its sequence there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PaymentRef {
    pub shard: ShardId,
    pub seq: u64,
}

/// Idempotency tag: which key (scoped to its merchant) guards this command, and the hash of
/// the request body it was first used with. Recorded in the same WAL record as the change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdemTag {
    pub key: Hash16,
    pub body: Hash16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    Active,
    Blocked,
    Closed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Blocked => "blocked",
            Status::Closed => "closed",
        }
    }
    pub fn parse(text: &str) -> Option<Status> {
        match text {
            "active" => Some(Status::Active),
            "blocked" => Some(Status::Blocked),
            "closed" => Some(Status::Closed),
            _ => None,
        }
    }
}

/// What the card's home shard knows about a card, handed to the account's shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardFacts {
    pub id: u64,
    pub home: ShardId,
    pub account: AccountId,
    pub bin: CompactString,
    pub last4: CompactString,
    pub exp_month: u8,
    pub exp_year: u16,
    pub status: Status,
}

/// What the merchant's home shard knows about a merchant, handed to the payment's shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerchantFacts {
    pub id: MerchantId,
    pub settlement: AccountId,
    pub settlement_shard: ShardId,
    /// Currency of the settlement account; payments in another currency are declined (12).
    pub currency: Currency,
    pub mcc: u16,
    pub status: Status,
}

/// The card as the merchant presented it (never the PAN: BIN and last four only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresentedCard {
    pub bin: CompactString,
    pub last4: CompactString,
    /// 0 when the expiry was not presented.
    pub exp_month: u8,
    pub exp_year: u16,
}

/// Why money moves between shards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CreditPurpose {
    /// A capture's proceeds to the merchant's settlement account.
    Settlement { payment: PaymentRef },
    /// An account-to-account transfer.
    Transfer,
    /// A refund's money back to the card account; the payment lives at the credit's shard.
    RefundReturn { payment_seq: u64 },
}

/// A credit owed to an account on another shard: the second step of a cross-shard transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credit {
    pub account: AccountId,
    pub amount: i64,
    pub currency: Currency,
    pub purpose: CreditPurpose,
}

/// Every state change. Each variant's doc says where (which shard) it is applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// At shard(id): open an account funded from this shard's treasury.
    CreateAccount {
        id: AccountId,
        currency: Currency,
        initial: i64,
        floor: i64,
        amount_limit: Option<i64>,
        daily_count_limit: Option<u32>,
    },
    /// At shard(id).
    SetAccountStatus { id: AccountId, status: Status },
    /// At the card's home shard (routing by its hash).
    CreateCard {
        hash: CardHash,
        account: AccountId,
        bin: CompactString,
        last4: CompactString,
        exp_month: u8,
        exp_year: u16,
    },
    /// At the card's home shard.
    SetCardStatus { id: u64, status: Status },
    /// At the merchant's home shard.
    CreateMerchant {
        id: MerchantId,
        key_hash: [u8; 32],
        settlement: AccountId,
        /// The settlement account's currency: the only currency the merchant can take.
        currency: Currency,
        mcc: u16,
    },
    /// At the merchant's home shard.
    SetMerchantStatus { id: MerchantId, status: Status },
    /// At the card account's shard (or, with `card: None`, at the shard that received it):
    /// hold (`capture: false`) or sale (`capture: true`), declined or approved.
    Authorize {
        merchant: MerchantFacts,
        card: Option<CardFacts>,
        presented: PresentedCard,
        /// Set when the decline was decided before the ledger (unknown card, bad Luhn).
        pre_decline: Option<Decline>,
        amount: i64,
        currency: Currency,
        capture: bool,
        reference: CompactString,
        now: Millis,
        expires_at: Millis,
        idem: Option<IdemTag>,
    },
    /// At the payment's shard.
    Capture {
        payment: u64,
        merchant: MerchantId,
        amount: Option<i64>,
        now: Millis,
        idem: Option<IdemTag>,
    },
    /// At the payment's shard: lower an authorization's hold to `amount` (a partial
    /// reversal); the rest of the hold is released.
    ReduceAuthorization {
        payment: u64,
        merchant: MerchantId,
        amount: i64,
        now: Millis,
        idem: Option<IdemTag>,
    },
    /// At the payment's shard.
    Void {
        payment: u64,
        merchant: MerchantId,
        now: Millis,
        idem: Option<IdemTag>,
    },
    /// At the payment's shard, when the settlement account is on the same shard.
    RefundLocal {
        payment: u64,
        merchant: MerchantId,
        amount: i64,
        now: Millis,
        idem: Option<IdemTag>,
    },
    /// At the settlement account's shard: debit first, then credit the card account's shard.
    /// `view` is the payment as it will read once the credit lands (the idempotent answer).
    RefundDebit {
        payment: PaymentRef,
        settlement: AccountId,
        card_account: AccountId,
        amount: i64,
        currency: Currency,
        view: Box<PaymentView>,
        now: Millis,
        idem: Option<IdemTag>,
    },
    /// At shard(from): debit, and credit `to` here or through the outbox.
    Transfer {
        id: String,
        from: AccountId,
        to: AccountId,
        to_shard: ShardId,
        amount: i64,
        currency: Currency,
        now: Millis,
        idem: Option<IdemTag>,
    },
    /// At the credit's destination: apply the `seq`-th credit from `from`, at most once.
    ApplyCredit {
        from: ShardId,
        seq: u64,
        credit: Credit,
    },
    /// At the credit's source: `to` has durably applied every credit up to `seq`.
    AckCredits { to: ShardId, seq: u64 },
    /// Release the holds of the named payments that are uncaptured authorizations with
    /// `expires_at <= now` (the others are left alone). At most `EXPIRE_BATCH_MAX` names.
    ExpireHolds { now: Millis, payments: Vec<u64> },
    /// Forget idempotency records created before `before`.
    PruneIdempotency { before: Millis },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PaymentStatus {
    Authorized,
    Captured,
    PartiallyCaptured,
    Voided,
    Expired,
    Declined,
    Refunded,
    PartiallyRefunded,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Authorized => "authorized",
            PaymentStatus::Captured => "captured",
            PaymentStatus::PartiallyCaptured => "partially_captured",
            PaymentStatus::Voided => "voided",
            PaymentStatus::Expired => "expired",
            PaymentStatus::Declined => "declined",
            PaymentStatus::Refunded => "refunded",
            PaymentStatus::PartiallyRefunded => "partially_refunded",
        }
    }
}

/// A payment as clients see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentView {
    pub id: PaymentRef,
    pub merchant: MerchantId,
    pub status: PaymentStatus,
    pub amount: i64,
    pub amount_captured: i64,
    pub amount_refunded: i64,
    pub currency: Currency,
    pub bin: CompactString,
    pub last4: CompactString,
    pub approval_code: Option<CompactString>,
    pub decline: Option<Decline>,
    pub reference: CompactString,
    pub created_at: Millis,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    pub id: AccountId,
    pub currency: Currency,
    pub balance: i64,
    pub held: i64,
    pub floor: i64,
    pub status: Status,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferView {
    pub id: String,
    pub from: AccountId,
    pub to: AccountId,
    pub amount: i64,
    pub currency: Currency,
    pub created_at: Millis,
}

/// A request the ledger refused without changing anything: the caller's mistake, not a
/// decline of the card (those are `Outcome::Payment` with `decline` set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reject {
    AccountExists,
    AccountNotFound,
    CardExists,
    CardNotFound,
    MerchantExists,
    MerchantNotFound,
    PaymentNotFound,
    /// The operation does not fit the payment's state (capture of a voided payment...).
    InvalidState,
    /// More than remains to capture or refund.
    AmountTooLarge,
    CurrencyMismatch,
    /// The debited account would go below its floor.
    InsufficientFunds,
    /// The account is not active.
    AccountNotActive,
    SameAccount,
}

impl Reject {
    /// The ISO 8583 response code this refusal maps to.
    pub fn decline(self) -> Decline {
        match self {
            Reject::PaymentNotFound | Reject::AccountNotFound | Reject::CardNotFound => {
                Decline::OriginalNotFound
            }
            Reject::MerchantNotFound => Decline::NotPermittedMerchant,
            Reject::AmountTooLarge => Decline::InvalidAmount,
            Reject::InsufficientFunds => Decline::InsufficientFunds,
            Reject::AccountNotActive => Decline::NotPermittedCardholder,
            _ => Decline::InvalidTransaction,
        }
    }
}

/// What applying a command produced. Stored verbatim as the idempotent answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Account(AccountView),
    Card {
        id: u64,
        account: AccountId,
        bin: CompactString,
        last4: CompactString,
    },
    Merchant {
        id: MerchantId,
        settlement: AccountId,
        mcc: u16,
        status: Status,
    },
    /// A payment, approved or declined (`view.decline`).
    Payment(Box<PaymentView>),
    Transfer(TransferView),
    Rejected(Reject),
    /// Internal commands (credits, acks, expiry, pruning).
    Done,
}

/// Decodes one WAL record into a command.
pub fn decode_command(kind: u8, version: u8, payload: &[u8]) -> Result<Command, String> {
    if kind == RECORD_KIND_COMMAND && version < COMMAND_VERSION {
        return Err(format!(
            "command version {version} was written by an older corepay (this one reads version \
             {COMMAND_VERSION}); start on a new data directory"
        ));
    }
    if kind != RECORD_KIND_COMMAND || version != COMMAND_VERSION {
        return Err(format!("unknown record kind {kind} version {version}"));
    }
    postcard::from_bytes(payload).map_err(|e| format!("undecodable command: {e}"))
}
