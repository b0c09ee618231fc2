//! The outbox's settings, as the config validates them (`[outbox]`): plain values.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Synchronous {
    Off,
    Normal,
    Full,
    Extra,
}

impl Synchronous {
    pub fn pragma(self) -> &'static str {
        match self {
            Synchronous::Off => "OFF",
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
            Synchronous::Extra => "EXTRA",
        }
    }
}

#[derive(Debug, Clone)]
pub struct OutboxConfig {
    pub path: PathBuf,
    pub synchronous: Synchronous,
    pub max_bytes: u64,
    pub max_age: Duration,
    /// Hard cap on the database file (SQLite `max_page_count`): at the cap, appends are refused
    /// as on a full disk, while deletes of acknowledged rows still commit (the WAL is outside
    /// the cap) and make room. None: the file system is the limit.
    pub max_file_bytes: Option<u64>,
    /// How long acknowledged rows stay in the file after their PUBACK, so that HQ can ask for
    /// them again (`replay` command) when the broker lost them after acknowledging. Zero:
    /// removed as soon as the outbox is idle (the behaviour before the window existed).
    pub replay_window: Duration,
}
