//! Fuzz target for the ISO 8583 listener's TLS-wrapped input: arbitrary bytes offered to a
//! rustls server session built by `corepay::tls::server_config` (the gateway's own
//! settings), and whatever plaintext comes out split into frames and decoded, as
//! `shard::iso_net` does.
//!
//! Properties: no panic in the session, the framing or the decoder; a frame never exceeds
//! the configured maximum.
//!
//! The certificate and key in fuzz/certs are throw-away, made for this target only.
//!
//! Run on stable: `cargo fuzz run iso_over_tls -s none -- -max_total_time=600`.

#![no_main]

use corepay::config::Tls;
use corepay::iso8583::{decode, BitmapEncoding, FrameReader, Framing};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

fn config() -> Arc<rustls::ServerConfig> {
    static CONFIG: OnceLock<Arc<rustls::ServerConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/certs/");
            let files = Tls {
                cert_file: format!("{dir}fuzz-only.pem"),
                key_file: format!("{dir}fuzz-only.key"),
                client_ca_file: String::new(),
            };
            Arc::new(corepay::tls::server_config("iso8583.tls", &files, None).unwrap())
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let mut session = rustls::ServerConnection::new(config()).unwrap();
    let mut input = data;
    let mut plain = Vec::new();
    while !input.is_empty() {
        match session.read_tls(&mut input) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if session.process_new_packets().is_err() {
            break;
        }
        let mut chunk = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut session.reader(), &mut chunk) {
            if n == 0 {
                break;
            }
            plain.extend_from_slice(&chunk[..n]);
        }
    }
    let frames = FrameReader::new(Framing::Binary2, 8192);
    let mut at = 0;
    while let Ok(Some((header, len))) = frames.next_frame(&plain[at..]) {
        assert!(len <= 8192);
        let _ = decode(&plain[at + header..at + header + len], BitmapEncoding::Binary);
        at += header + len;
    }
});
