//! Errors of the write-ahead log, sorted by whose fault they are: the disk (`Io`,
//! `Corrupt`), an earlier failure (`Poisoned`), load (`Backpressure`), the caller
//! (`RecordTooLarge`).

use std::fmt;

use super::format::RECORD_PAYLOAD_MAX;

#[derive(Debug)]
pub enum WalError {
    /// An operation on a segment file or the WAL directory failed.
    Io {
        op: &'static str,
        path: String,
        source: std::io::Error,
    },
    /// Durable data is damaged: a bad batch followed by a valid one, an LSN gap, or a bad
    /// batch in a segment that is not the newest. Recovery refuses to start and changes
    /// nothing.
    Corrupt {
        segment: String,
        offset: u64,
        reason: String,
    },
    /// A write or fdatasync failed earlier (or the writer was shut down): nothing more is
    /// appended or acknowledged. The process must exit and recover.
    Poisoned,
    /// The unflushed buffer is full (`WalConfig::max_pending_bytes`); retry later or
    /// answer "busy".
    Backpressure,
    /// The payload exceeds `RECORD_PAYLOAD_MAX`.
    RecordTooLarge { len: usize },
}

impl fmt::Display for WalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalError::Io { op, path, source } => write!(f, "wal {op} failed on {path}: {source}"),
            WalError::Corrupt {
                segment,
                offset,
                reason,
            } => {
                write!(
                    f,
                    "wal corrupt: segment {segment} at offset {offset}: {reason}"
                )
            }
            WalError::Poisoned => {
                write!(
                    f,
                    "wal poisoned: an earlier write or fdatasync failed, or the log was shut down"
                )
            }
            WalError::Backpressure => write!(f, "wal busy: the unflushed buffer is full"),
            WalError::RecordTooLarge { len } => {
                write!(
                    f,
                    "wal record payload of {len} bytes exceeds the limit of {RECORD_PAYLOAD_MAX}"
                )
            }
        }
    }
}

impl std::error::Error for WalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WalError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_line_and_names_the_place() {
        let e = WalError::Corrupt {
            segment: "00000000000000000001.wal".into(),
            offset: 8192,
            reason: "bad".into(),
        };
        let s = e.to_string();
        assert!(
            s.contains("00000000000000000001.wal") && s.contains("8192"),
            "{s}"
        );
        let io = WalError::Io {
            op: "sync",
            path: "x.wal".into(),
            source: std::io::Error::other("boom"),
        };
        assert!(io.to_string().contains("x.wal"));
        assert!(std::error::Error::source(&io).is_some());
        for e in [
            e,
            io,
            WalError::Poisoned,
            WalError::Backpressure,
            WalError::RecordTooLarge { len: 1 },
        ] {
            assert!(!e.to_string().contains('\n'));
        }
    }
}
