//! Messages between shards: owned, plain data, bounded in size by their fields.

use crate::domain::{AccountId, Currency, Millis, ShardId};
use crate::ledger::*;

/// A request one shard makes of another (or of itself, without a ring).
#[derive(Debug)]
pub enum Request {
    /// Log and apply a command; answer its outcome once durable.
    Execute(Command),
    ReadAccount(AccountId),
    ReadPayment(u64),
    CardLookup(CardHash),
    /// Verify a merchant's API key hash at the merchant's home shard.
    MerchantAuth {
        id: MerchantId,
        key_hash: [u8; 32],
    },
    /// Look up a merchant by id (admin paths, no key).
    MerchantLookup(MerchantId),
    /// At the key's owner: start using an idempotency key.
    IdemBegin {
        key: Hash16,
        body: Hash16,
        now: Millis,
    },
    /// At the key's owner: the guarded operation finished; `owner` holds its record.
    IdemEnd {
        key: Hash16,
        owner: Option<ShardId>,
    },
    /// At the record's owner: the stored answer.
    IdemFetch(Hash16),
    /// At the key's owner: where the finished record of `key` is, without starting anything
    /// (finding the original of a reversal). Answers `Replay`, `InFlight` or `Proceed` (unknown).
    IdemLookup(Hash16),
    /// At the key's owner: wait until the operation running under `key` ends; answers
    /// `Replay(holder)`, or `Proceed` when it ended without a record.
    IdemAwait(Hash16),
    /// At the payment's shard: reserve a cross-shard refund, or run a local one.
    RefundPrepare {
        seq: u64,
        merchant: MerchantId,
        amount: Option<i64>,
        now: Millis,
        idem: Option<IdemTag>,
    },
    /// At the payment's shard: a reserved refund was declined by the settlement side.
    RefundRelease {
        seq: u64,
        amount: i64,
    },
    /// The `seq`-th cross-shard credit from `from` (re-sent until acknowledged).
    Credit {
        from: ShardId,
        seq: u64,
        credit: Credit,
    },
    /// `from` has durably applied every credit up to `seq` sent to the receiver.
    CreditAck {
        from: ShardId,
        seq: u64,
    },
    /// Per-shard figures for /metrics and the conservation check.
    Stats,
    /// Bulk provisioning: create this shard's share of a range of accounts and cards.
    Provision(Provision),
}

/// Bulk provisioning of accounts `first..first+count`, each with one card whose number is
/// `card_number(bin, id)`.
#[derive(Clone, Debug)]
pub struct Provision {
    pub first: u64,
    pub count: u64,
    pub currency: Currency,
    pub balance: i64,
    pub bin: String,
    pub exp_month: u8,
    pub exp_year: u16,
}

/// How the owner of an idempotency key answered `IdemBegin`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdemBegin {
    /// New key: go ahead, then send `IdemEnd`.
    Proceed,
    /// Same key, same body, finished: replay the record held at this shard.
    Replay(ShardId),
    /// Same key, still running.
    InFlight,
    /// Same key, another body.
    Mismatch,
    /// The index is full of unexpired keys.
    Full,
}

/// The answer to a refund preparation.
#[derive(Debug)]
pub enum RefundPlan {
    /// Settlement is on the payment's shard: the refund is done (or refused).
    Done(Outcome),
    /// Reserved: debit `settlement` at `settlement_shard`, then the credit comes back.
    Reserved {
        settlement: AccountId,
        settlement_shard: ShardId,
        card_account: AccountId,
        amount: i64,
        currency: Currency,
        view: Box<PaymentView>,
    },
    Rejected(Reject),
    /// The local refund could not be logged (shutting down, WAL back-pressure): 91 / 503.
    Unavailable,
}

#[derive(Clone, Debug, Default)]
pub struct ShardStats {
    pub shard: u16,
    pub accounts: usize,
    pub cards: usize,
    pub merchants: usize,
    pub payments: usize,
    pub idempotency_records: usize,
    pub idempotency_index: usize,
    pub outbox: usize,
    /// (currency numeric, Σ balances, treasury, sent, received)
    pub totals: Vec<(u16, i64, i64, i64, i64)>,
    pub wal_last_lsn: u64,
    pub wal_durable_lsn: u64,
    pub wal_batches: u64,
    pub wal_records: u64,
    pub wal_bytes: u64,
    /// fdatasync latency (µs) and records per group commit.
    pub wal_sync_buckets: crate::metrics::Buckets,
    pub wal_batch_records: crate::metrics::Buckets,
    /// Requests shed (503 / 91), per `gateway::SHED_REASONS`.
    pub shed: [u64; crate::gateway::SHED_REASONS.len()],
    pub requests: u64,
    pub dropped_posts: u64,
    /// Payments held in memory now, and the window's size (0: no window, all in memory).
    pub payments_in_memory: usize,
    pub payment_window: usize,
    /// The store: LSN applied, LSN checkpointed, WAL segments deleted or kept as spares
    /// after checkpoints, failed commits.
    pub store_applied_lsn: u64,
    pub store_checkpoint_lsn: u64,
    pub wal_segments_deleted: u64,
    pub wal_segments_recycled: u64,
    pub wal_spares_prepared: u64,
    /// Durable records the store writer read back from the segments (not handed over in
    /// memory: the tap was full).
    pub store_wal_records_read: u64,
    /// WAL segments the writer began, and of them those that were spares (no zero-fill).
    pub wal_segments_created: u64,
    pub wal_segments_reused: u64,
    pub store_failures: u64,
    /// Store commits (not checkpoints) and checkpoints: count, total and slowest time.
    pub store_commits: u64,
    pub store_commit_micros: u64,
    pub store_commit_micros_max: u64,
    pub store_checkpoints: u64,
    pub store_checkpoint_micros: u64,
    pub store_checkpoint_micros_max: u64,
    /// Payments read back from the store, and requests shed because it could not answer.
    pub cold_reads: u64,
    pub store_shed: u64,
    /// What the shard's thread recorded: request latency, status classes, tick lateness.
    pub metrics: crate::metrics::ShardSnapshot,
    /// Calls outstanding to each peer shard (at most `mesh.max_in_flight_per_peer`).
    pub mesh_in_flight: Vec<usize>,
    /// Free bytes on the data directory's filesystem, and whether new work is shed for it
    /// (below `state.min_free_mb`).
    pub data_free_bytes: u64,
    pub data_space_low: bool,
    /// Admission: the concurrency limit new work is admitted under, requests admitted and
    /// not yet answered, and the latest queue-delay sample (µs).
    pub admission_limit: u32,
    pub admission_in_flight: u32,
    pub queue_delay_micros: u64,
}

/// Every answer.
#[derive(Debug)]
pub enum Reply {
    Outcome(Outcome),
    Account(Option<AccountView>),
    Payment(Option<PaymentView>),
    Card(Option<CardFacts>),
    Merchant(Option<MerchantFacts>),
    Idem(IdemBegin),
    Refund(RefundPlan),
    Stats(Box<ShardStats>),
    Provisioned {
        accounts: u64,
        cards: u64,
    },
    Ack,
    /// The shard could not take the request (WAL back-pressure, shutting down, poisoned).
    Unavailable,
}
