//! A serial skin analyzer's settings, as the config validates them (`kind = "skin"`): plain
//! values.

use std::path::PathBuf;
use std::time::Duration;

/// A serial SKN1 skin analyzer.
#[derive(Debug, Clone)]
pub struct SkinConfig {
    pub port: PathBuf,
    pub baud: u32,
    /// Report the device `silent` after this long without a reading (None: kiosks may idle).
    pub silent_after: Option<Duration>,
}
