//! A scanner's settings, as the config validates them (`kind = "scanner"`): plain values.

use std::path::PathBuf;
use std::time::Duration;

use super::framing::Framing;

/// A serial barcode / QR scanner in line mode (docs/protocols.md §1).
#[derive(Debug, Clone)]
pub struct ScannerConfig {
    pub port: PathBuf,
    pub baud: u32,
    pub framing: Framing,
    pub dedupe_window: Duration,
    /// Report the device `silent` after this long without a code (None: scanners may idle).
    pub silent_after: Option<Duration>,
}
