//! Fuzz target for the ISO 8583 decoder: the parsing surface every acquirer's bytes
//! reach (`corepay::iso8583::decode` and `decode_partial`, both bitmap encodings).
//!
//! Properties checked on every input: no panic and no out-of-bounds read (the fuzzer's
//! job); a decoded message re-encodes, and that encoding decodes to the same message;
//! `decode_partial` agrees with a successful decode on the MTI and STAN.
//!
//! Run on stable: `cargo fuzz run decode -s none -- -max_total_time=60`.

#![no_main]

use corepay::iso8583::{decode, decode_partial, encode, BitmapEncoding};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for encoding in [BitmapEncoding::Binary, BitmapEncoding::HexAscii] {
        let partial = decode_partial(data, encoding);
        let Ok(msg) = decode(data, encoding) else {
            continue;
        };
        let mut again = Vec::new();
        encode(&msg, encoding, &mut again).expect("a decoded message encodes");
        assert_eq!(decode(&again, encoding).as_ref(), Ok(&msg));
        assert_eq!(partial.mti, Some(msg.mti()));
        assert_eq!(partial.stan.as_ref().map(|s| &s[..]), msg.get(11));
    }
});
