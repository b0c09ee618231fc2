//! SKN1 skin-analyzer lines (serial) and JSON bodies (tablets over HTTP).
#![no_main]

use libfuzzer_sys::fuzz_target;
use phygate::sources::skin::skn1::{parse_json_body, parse_line, LineReader};

fuzz_target!(|data: &[u8]| {
    let _ = parse_line(data);
    let _ = parse_json_body(data);
    let mut reader = LineReader::new();
    for chunk in data.chunks(7) {
        reader.push(chunk);
        while reader.next().is_some() {}
    }
});
