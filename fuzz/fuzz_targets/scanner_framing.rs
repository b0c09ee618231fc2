//! Scanner line framing: the first bytes choose a profile, the rest arrives in reads of varying
//! size. Lines never exceed `max_line`; decoding never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phygate::sources::scanner::{decode_line, Framing, Line, LineSplitter, Terminator};

fuzz_target!(|data: &[u8]| {
    let [t, aim, max, cut, rest @ ..] = data else {
        return;
    };
    let framing = Framing {
        terminator: [Terminator::Cr, Terminator::Lf, Terminator::Crlf][*t as usize % 3],
        prefix: rest.iter().take(*t as usize % 3).copied().collect(),
        suffix: Vec::new(),
        aim: aim & 1 == 1,
        max_line: 1 + *max as usize * 4,
    };
    let mut splitter = LineSplitter::new(&framing);
    let mut lines = Vec::new();
    for chunk in rest.chunks(1 + *cut as usize) {
        splitter.push(chunk, &mut lines);
    }
    let _ = splitter.discard_partial();
    for line in lines {
        if let Line::Complete(bytes) = line {
            assert!(bytes.len() <= framing.max_line);
            let _ = decode_line(&framing, &bytes);
        }
    }
});
