//! Fuzz target for the configuration file (`corepay::config::Config::parse`): an operator's
//! file, typed by hand.
//!
//! Properties: no panic; a refusal is one line that names a key or a line.
//!
//! Run on stable: `cargo fuzz run config -s none -- -max_total_time=600`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = corepay::config::Config::parse(text) {
        let line = e.to_string();
        assert!(!line.is_empty());
    }
});
