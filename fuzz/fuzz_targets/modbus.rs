//! Modbus RTU frames from a gate's I/O module (responses) and to the simulator (requests).
#![no_main]

use libfuzzer_sys::fuzz_target;
use phygate::sources::gate::modbus::{parse_request, parse_response, Request, RequestReader, ResponseReader};

fuzz_target!(|data: &[u8]| {
    let [unit, quantity, rest @ ..] = data else {
        return;
    };
    let Ok(req) = Request::read_holding(*unit, 0, 1 + *quantity as u16 % 125) else {
        return;
    };
    let _ = parse_response(&req, rest);
    let _ = parse_request(rest);
    let mut reader = ResponseReader::new(req);
    for chunk in rest.chunks(3) {
        if reader.push(chunk).is_some() {
            break;
        }
    }
    let mut requests = RequestReader::new();
    requests.push(rest);
    while requests.next().is_some() {}
});
