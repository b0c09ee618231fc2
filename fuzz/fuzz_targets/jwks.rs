//! JWKS documents (a key file, or HQ's keys topic).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = phygate::link::jwks::KeySet::from_jwks_json(text);
    }
});
