//! HTTP ingest: people-counter bodies and the idempotency receipts kept for them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phygate::ingest::counts::parse_counts;
use phygate::ingest::receipt::Receipt;

fuzz_target!(|data: &[u8]| {
    let _ = parse_counts(data, 1_795_410_600_000);
    let _ = parse_counts(data, u64::MAX);
    let _ = parse_counts(data, 0);
    let _ = Receipt::decode(data);
});
