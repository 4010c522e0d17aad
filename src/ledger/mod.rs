//! The pure, deterministic ledger and payment state machine.
//!
//! Owns: accounts, cards, merchants, payments, transfers, idempotency records, the outbox of
//! cross-shard credits, and the rules that decide approvals and declines.
//! Never: I/O, clocks, randomness, threads, or knowledge of wire protocols and storage.

pub mod command;
pub mod decline;
pub mod effects;
pub mod state;
pub mod window;

pub use command::*;
pub use decline::Decline;
pub use state::{Changes, Ledger, Snapshot};
