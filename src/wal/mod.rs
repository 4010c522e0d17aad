//! The per-shard write-ahead log: record format, group-commit writer, reader and recovery.
//!
//! Owns: bytes on disk and the promise "a record is durable once `wait_durable` returns".
//! Never: interprets payloads (they are opaque `(kind, version, bytes)`), names glommio
//! (the real segment files are implemented in `crate::shard::disk`), or acknowledges
//! anything itself.
//!
//! Map: `format` (the on-disk layout, documented there), `io` (the storage traits and
//! `FsSource`), `writer` (append + group commit), `reader` (recover, verify, dump),
//! `error`, `sim` (an in-memory disk with power loss for deterministic tests), `tap` (durable
//! batches handed to the store writer in memory).

pub mod error;
pub mod format;
pub mod io;
pub mod reader;
pub mod sim;
pub mod tap;
pub mod writer;

pub use error::WalError;
pub use format::{BLOCK, RECORD_PAYLOAD_MAX};
pub use io::{FsSource, SegmentDir, SegmentFile, SegmentSource};
pub use reader::{dump_records, recover, recover_from, verify, Recovered, VerifyReport};
pub use writer::{SyncMode, WalConfig, WalStats, WalWriter};
