//! corepay: a thread-per-core payment gateway. See ARCHITECTURE.md for the map.
//!
//! `main.rs` only wires these modules together.

pub mod admission;
pub mod affinity;
pub mod config;
pub mod domain;
pub mod gateway;
pub mod http;
pub mod iso8583;
pub mod ledger;
pub mod logline;
pub mod metrics;
pub mod replication;
pub mod secrets;
pub mod service;
pub mod shard;
pub mod store;
pub mod tls;
pub mod wal;
