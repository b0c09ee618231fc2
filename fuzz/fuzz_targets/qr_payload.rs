//! Scanned QR payloads: classification and token extraction agree wherever a bearer token is
//! at stake (a token's payload must never be forwarded).
#![no_main]

use libfuzzer_sys::fuzz_target;
use phygate::link::{classify_code, CodeKind};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let kind = classify_code(&text);
    if phygate::link::token::extract_token(&text).is_some() {
        assert_eq!(kind, CodeKind::AppToken, "{text:?}");
    }
});
