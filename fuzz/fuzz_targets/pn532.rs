//! PN532 frames from an NFC reader, and the payload parsers behind them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phygate::sources::nfc::pn532::{
    parse_firmware_version, parse_host_command, parse_in_list_passive_target, parse_in_release,
    FrameDecoder,
};

fuzz_target!(|data: &[u8]| {
    let mut decoder = FrameDecoder::new();
    for chunk in data.chunks(5) {
        decoder.push(chunk);
        while let Some(frame) = decoder.next() {
            if let Ok(frame) = frame {
                let _ = parse_firmware_version(&frame);
                let _ = parse_in_list_passive_target(&frame);
                let _ = parse_in_release(&frame);
                let _ = parse_host_command(&frame);
            }
        }
    }
});
