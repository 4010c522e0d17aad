//! Fuzz target for the JSON request bodies (`corepay::http::json`) and the amount parser
//! every body's amounts go through.
//!
//! Properties: no panic; an amount that parses formats back to a string that parses to the
//! same value.
//!
//! Run on stable: `cargo fuzz run json_bodies -s none -- -max_total_time=600`.

#![no_main]

use corepay::domain::{format_amount, parse_amount, Currency};
use corepay::http::json::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<CreateAccount>(data);
    let _ = serde_json::from_slice::<SetStatus>(data);
    let _ = serde_json::from_slice::<CreateCard>(data);
    let _ = serde_json::from_slice::<CreateMerchant>(data);
    let _ = serde_json::from_slice::<CreateTransfer>(data);
    let _ = serde_json::from_slice::<OptionalAmount>(data);
    let _ = serde_json::from_slice::<Provision>(data);
    if let Ok(p) = serde_json::from_slice::<CreatePayment>(data) {
        if let Some(currency) = Currency::from_alpha(&p.currency) {
            if let Ok(minor) = parse_amount(&p.amount, currency, false) {
                let text = format_amount(minor, currency);
                assert_eq!(parse_amount(&text, currency, false), Ok(minor), "{text}");
            }
        }
    }
});
