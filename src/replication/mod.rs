//! Asynchronous replication of every shard's WAL to PostgreSQL (`postgres`) and to a Redis
//! stream (`redis`), and the comparison of PostgreSQL with the gateway (`reconcile`).
//!
//! Owns: the only SQL and the only Redis commands in corepay. Each sink runs on threads of its
//! own, one per shard, reading only durable records (`source`), replaying them through a
//! replica `Ledger` to learn what they changed (`ledger::effects`), and storing each batch
//! together with its progress (the last LSN stored) in one transaction, so a crash or retry
//! stores every record exactly once. Never: runs on a shard's executor, delays an
//! acknowledgement, or stores a PAN, track data or a key.

use crate::domain::{Lsn, Millis, ShardId};
use crate::ledger::effects::Effects;
use std::fmt;

/// One WAL record's effects, ready for a sink.
#[derive(Clone, Debug)]
pub struct Record {
    pub shard: ShardId,
    pub lsn: Lsn,
    /// The time the command carried (None for internal bookkeeping without one).
    pub time: Option<Millis>,
    pub effects: Effects,
}

/// A downstream store. Each instance serves one shard's stream of records, on its own thread.
pub trait Sink: Send {
    /// A short name for logs and metrics ("postgres", "redis").
    fn name(&self) -> &'static str;
    /// Connects (or reconnects), creates or migrates what it needs, and returns the last LSN
    /// of `shard` it has stored (Lsn(0) when none).
    fn progress(&mut self, shard: ShardId) -> Result<Lsn, SinkError>;
    /// Stores `batch` (consecutive records of `shard`, in LSN order, all after `progress`)
    /// and the new progress (the last record's LSN) atomically: all or nothing.
    fn apply(&mut self, shard: ShardId, batch: &[Record]) -> Result<(), SinkError>;
}

/// Why a sink could not store a batch; the runner backs off and retries.
#[derive(Debug)]
pub struct SinkError(pub String);

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SinkError {}
