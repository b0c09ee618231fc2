//! The TOML config: any text parses to a config or to errors that name real lines.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phygate::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, std::path::Path::new("/etc/phygate/phygate.toml")) {
        Ok(config) => {
            let _ = config.to_string();
        }
        Err(e) => {
            let lines = text.lines().count().max(1);
            assert!(e.problems.iter().all(|p| p.line.is_none_or(|l| l <= lines + 1)));
            let _ = e.to_string();
        }
    }
});
