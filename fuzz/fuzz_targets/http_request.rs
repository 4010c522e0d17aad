//! Fuzz target for the HTTP/1.1 request reader (`corepay::http::wire::RequestReader`): the
//! bytes every merchant connection reaches before anything else.
//!
//! Properties: no panic; every request taken has a body within `max_body_bytes` and at most
//! `max_headers` headers' worth of head; the reader ends (Closed or an error with a status
//! in 4xx/5xx) once the input is used up, never loops.
//!
//! Run on stable: `cargo fuzz run http_request -s none -- -max_total_time=600`.

#![no_main]

use corepay::http::wire::{Limits, RequestReader, WireError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_header_bytes: 1024,
        max_headers: 8,
        max_body_bytes: 2048,
    };
    let mut reader = RequestReader::new(futures_lite::io::Cursor::new(data), limits);
    futures_lite::future::block_on(async {
        // Each request consumes at least one byte, so the input bounds the loop.
        for _ in 0..=data.len() {
            match reader.next().await {
                Ok(r) => assert!(r.body.len() <= limits.max_body_bytes),
                Err(WireError::Closed) | Err(WireError::Io(_)) => return,
                Err(e) => {
                    assert!((400..600).contains(&e.status()), "{e}");
                    return;
                }
            }
        }
        panic!("more requests than input bytes");
    });
});
