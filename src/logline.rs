//! One line per event on stderr (journald adds its own timestamp under systemd).
//!
//! Never: a PAN, an API key, the admin key or the PAN key. Callers pass ids and codes only.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Info,
    Warn,
    Error,
}

pub fn emit(level: Level, args: fmt::Arguments<'_>) {
    let tag = match level {
        Level::Info => "info",
        Level::Warn => "WARN",
        Level::Error => "ERROR",
    };
    let now = crate::gateway::system_clock().0;
    eprintln!("{}.{:03} {tag} {args}", now / 1000, now % 1000);
}

#[macro_export]
macro_rules! info {
    ($($t:tt)*) => { $crate::logline::emit($crate::logline::Level::Info, format_args!($($t)*)) };
}

#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => { $crate::logline::emit($crate::logline::Level::Warn, format_args!($($t)*)) };
}

#[macro_export]
macro_rules! error {
    ($($t:tt)*) => { $crate::logline::emit($crate::logline::Level::Error, format_args!($($t)*)) };
}
