//! `kind = "scanner"` and `kind = "nfc"`: serial readers (docs/protocols.md §1, §2), and the
//! port checks every serial device shares.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{DeviceConfig, DeviceKind, Validator};
use crate::sources::nfc::settings::NfcConfig;
use crate::sources::scanner::framing::{Framing, Terminator};
use crate::sources::scanner::settings::ScannerConfig;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScanner {
    id: String,
    station: String,
    port: PathBuf,
    #[serde(default = "default_scanner_baud")]
    baud: u32,
    #[serde(default)]
    terminator: Terminator,
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    suffix: String,
    #[serde(default)]
    aim: bool,
    #[serde(default = "default_max_line")]
    max_line: usize,
    #[serde(default = "default_dedupe", with = "humantime_serde")]
    dedupe_window: Duration,
    #[serde(default, with = "humantime_serde")]
    silent_after: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNfc {
    id: String,
    station: String,
    port: PathBuf,
    #[serde(default = "default_nfc_baud")]
    baud: u32,
    #[serde(default = "default_nfc_poll", with = "humantime_serde")]
    poll_interval: Duration,
    #[serde(default, with = "humantime_serde")]
    silent_after: Option<Duration>,
}

/// The PN532's HSU speed after power-up (the gateway never sends SetSerialBaudRate).
fn default_nfc_baud() -> u32 {
    115_200
}
/// docs/protocols.md §2: a poll every 100 ms feels instant to a customer holding out a card.
fn default_nfc_poll() -> Duration {
    Duration::from_millis(100)
}
/// A card left on the reader must be seen again within the 500 ms tap window (docs/protocols.md §2),
/// and a poll with its InRelease can take up to ~2 × 180 ms: slower polling would count it twice.
const NFC_POLL_MAX: Duration = Duration::from_millis(300);
/// Faster than this only loads the UART and the reader's RF front end.
const NFC_POLL_MIN: Duration = Duration::from_millis(20);

fn default_scanner_baud() -> u32 {
    115_200
}
fn default_max_line() -> usize {
    4096
}
pub(super) fn default_dedupe() -> Duration {
    Duration::from_millis(1500)
}

impl Validator<'_> {
    pub(super) fn scanner(&mut self, i: usize, s: RawScanner) -> DeviceConfig {
        let at = |f: &str| format!("device[{i}].{f}");
        self.serial_port(i, &s.port, s.baud, "scanner0");
        if !(16..=1024 * 1024).contains(&s.max_line) {
            self.problem(at("max_line"), "must be between 16 and 1048576 bytes");
        }
        if s.dedupe_window > Duration::from_secs(60) {
            self.problem(at("dedupe_window"), "must be at most 60s");
        }
        for (name, v) in [("prefix", &s.prefix), ("suffix", &s.suffix)] {
            if v.contains(['\r', '\n']) {
                self.problem(
                    at(name),
                    "must not contain CR or LF (those are terminators)",
                );
            }
        }
        DeviceConfig {
            id: s.id,
            station: s.station,
            kind: DeviceKind::Scanner(ScannerConfig {
                port: s.port,
                baud: s.baud,
                framing: Framing {
                    terminator: s.terminator,
                    prefix: s.prefix.into_bytes(),
                    suffix: s.suffix.into_bytes(),
                    aim: s.aim,
                    max_line: s.max_line,
                },
                dedupe_window: s.dedupe_window,
                silent_after: s.silent_after,
            }),
        }
    }

    /// Checks every serial device shares: a port named, a real speed.
    pub(super) fn serial_port(&mut self, i: usize, port: &Path, baud: u32, example: &str) {
        let at = |f: &str| format!("device[{i}].{f}");
        if port.as_os_str().is_empty() {
            self.problem(
                at("port"),
                format!("must name the serial device, e.g. /dev/phygate/{example}"),
            );
        }
        if !(300..=4_000_000).contains(&baud) {
            self.problem(
                at("baud"),
                format!("{baud} is not a serial speed (300-4000000)"),
            );
        }
    }

    pub(super) fn nfc(&mut self, i: usize, n: RawNfc) -> DeviceConfig {
        self.serial_port(i, &n.port, n.baud, "nfc0");
        if !(NFC_POLL_MIN..=NFC_POLL_MAX).contains(&n.poll_interval) {
            self.problem(
                format!("device[{i}].poll_interval"),
                format!(
                    "must be between {} and {} (a card left on the reader is seen again within the 500ms tap window)",
                    humantime::format_duration(NFC_POLL_MIN),
                    humantime::format_duration(NFC_POLL_MAX)
                ),
            );
        }
        DeviceConfig {
            id: n.id,
            station: n.station,
            kind: DeviceKind::Nfc(NfcConfig {
                port: n.port,
                baud: n.baud,
                poll_interval: n.poll_interval,
                silent_after: n.silent_after,
            }),
        }
    }
}
