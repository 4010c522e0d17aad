//! One JSON line per event on stderr, through `tracing` and `tracing-subscriber`'s JSON
//! formatter: `{"timestamp":…,"level":"WARN","message":…,"event":"store.write_failed",
//! "shard":0,"threadName":…}`. journald keeps each line as one entry, and log shippers
//! (Vector, Fluent Bit, Loki's promtail) parse it without a pattern.
//!
//! Every call names its event (`info!("wal.poisoned": "…", …)`): a stable name to alert and
//! count on, whatever the wording of the message. Lines from a shard's thread carry its
//! number (`set_shard`).
//!
//! Never: a PAN, an API key, the admin key or the PAN key. Callers pass ids and codes only
//! (tests/operator_tools_and_data_dir.rs greps every log for them).

use std::cell::Cell;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Info,
    Warn,
    Error,
}

thread_local! {
    static SHARD: Cell<Option<u16>> = const { Cell::new(None) };
}

/// Lines logged from this thread from now on carry `shard`.
pub fn set_shard(shard: u16) {
    SHARD.with(|s| s.set(Some(shard)));
}

/// Installs the JSON-lines subscriber on stderr (once, at start; later calls do nothing).
pub fn init() {
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_thread_names(true)
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn emit(level: Level, event: &'static str, args: fmt::Arguments<'_>) {
    let shard = SHARD.with(Cell::get);
    match (level, shard) {
        (Level::Info, Some(shard)) => tracing::info!(event, shard, "{args}"),
        (Level::Info, None) => tracing::info!(event, "{args}"),
        (Level::Warn, Some(shard)) => tracing::warn!(event, shard, "{args}"),
        (Level::Warn, None) => tracing::warn!(event, "{args}"),
        (Level::Error, Some(shard)) => tracing::error!(event, shard, "{args}"),
        (Level::Error, None) => tracing::error!(event, "{args}"),
    }
}

/// `info!("event.name": "format", args…)`.
#[macro_export]
macro_rules! info {
    ($event:literal : $($t:tt)*) => {
        $crate::logline::emit($crate::logline::Level::Info, $event, format_args!($($t)*))
    };
}

/// `warn!("event.name": "format", args…)`.
#[macro_export]
macro_rules! warn {
    ($event:literal : $($t:tt)*) => {
        $crate::logline::emit($crate::logline::Level::Warn, $event, format_args!($($t)*))
    };
}

/// `error!("event.name": "format", args…)`.
#[macro_export]
macro_rules! error {
    ($event:literal : $($t:tt)*) => {
        $crate::logline::emit($crate::logline::Level::Error, $event, format_args!($($t)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_event_is_one_json_line_with_level_event_name_and_shard() {
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_target(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            crate::warn!("test.unsharded": "disk \"nearly\" full: {} MiB", 7);
            // The test's own thread (thread-locals do not outlive it).
            set_shard(3);
            crate::info!("test.sharded": "line one\nline two");
        });
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["level"], "WARN");
        assert_eq!(lines[0]["event"], "test.unsharded");
        assert_eq!(lines[0]["message"], "disk \"nearly\" full: 7 MiB");
        assert!(lines[0].get("shard").is_none());
        assert_eq!(lines[1]["level"], "INFO");
        assert_eq!(lines[1]["event"], "test.sharded");
        assert_eq!(lines[1]["shard"], 3);
        assert_eq!(
            lines[1]["message"], "line one\nline two",
            "one line, escaped"
        );
    }
}
