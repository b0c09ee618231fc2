//! An NFC reader's settings, as the config validates them (`kind = "nfc"`): plain values.

use std::path::PathBuf;
use std::time::Duration;

/// An NFC reader: NXP PN532 over HSU (docs/protocols.md §2).
#[derive(Debug, Clone)]
pub struct NfcConfig {
    pub port: PathBuf,
    pub baud: u32,
    /// Time between the starts of two InListPassiveTarget polls.
    pub poll_interval: Duration,
    /// Report the reader `silent` after this long without a tap (None: readers may idle).
    pub silent_after: Option<Duration>,
}
