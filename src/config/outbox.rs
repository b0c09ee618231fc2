//! `[outbox]`: where and how events are kept until HQ has them.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{host, Validator};
use crate::outbox::settings::{OutboxConfig, Synchronous};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutbox {
    #[serde(default = "default_db_path")]
    path: PathBuf,
    #[serde(default = "default_synchronous")]
    synchronous: Synchronous,
    #[serde(default = "default_max_bytes")]
    max_bytes: u64,
    #[serde(default = "default_max_age", with = "humantime_serde")]
    max_age: Duration,
    #[serde(default)]
    max_file_bytes: Option<u64>,
    #[serde(default = "default_replay_window", with = "humantime_serde")]
    replay_window: Duration,
}

impl Default for RawOutbox {
    fn default() -> Self {
        RawOutbox {
            path: default_db_path(),
            synchronous: default_synchronous(),
            max_bytes: default_max_bytes(),
            max_age: default_max_age(),
            max_file_bytes: None,
            replay_window: default_replay_window(),
        }
    }
}

/// The smallest file cap: a few dozen SQLite pages, room for the schema and a batch.
pub const MIN_FILE_BYTES: u64 = 256 * 1024;

fn default_db_path() -> PathBuf {
    PathBuf::from("/var/lib/phygate/phygate.db")
}
/// FULL: a commit is on the platter before a reading counts as accepted (power-cut safe in WAL).
fn default_synchronous() -> Synchronous {
    Synchronous::Full
}
/// 256 MiB holds days of a busy store's events on a small SD card.
fn default_max_bytes() -> u64 {
    256 * 1024 * 1024
}
/// A week: after that HQ's journeys no longer care.
fn default_max_age() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

/// Half an hour: HQ asks for a missing range after seconds (`[repair] after`, default 10 s) and
/// declares it lost after a minute plus its consumers' lag; thirty minutes also covers a
/// consumer group that lags for many minutes, at the cost of half an hour of events on disk
/// (bounded by `max_bytes`: retained rows are the first to go when live rows need the room).
fn default_replay_window() -> Duration {
    Duration::from_secs(30 * 60)
}
/// The longest window: longer than a day keeps rows HQ has long stopped asking for.
pub const MAX_REPLAY_WINDOW: Duration = Duration::from_secs(24 * 3600);

impl Validator<'_> {
    pub(super) fn outbox(&mut self, raw: RawOutbox) -> OutboxConfig {
        let outbox = OutboxConfig {
            path: self.path(raw.path),
            synchronous: raw.synchronous,
            max_bytes: raw.max_bytes,
            max_age: raw.max_age,
            max_file_bytes: raw.max_file_bytes,
            replay_window: raw.replay_window,
        };
        if outbox.max_file_bytes.is_some_and(|b| b < MIN_FILE_BYTES) {
            self.problem(
                "outbox.max_file_bytes",
                format!("must be at least {MIN_FILE_BYTES} (256 KiB)"),
            );
        }
        if outbox.max_bytes < 1024 * 1024 {
            self.problem("outbox.max_bytes", "must be at least 1048576 (1 MiB)");
        }
        if outbox.max_age < Duration::from_secs(60) {
            self.problem("outbox.max_age", "must be at least 1m");
        }
        if outbox.replay_window > MAX_REPLAY_WINDOW {
            self.problem(
                "outbox.replay_window",
                "must be at most 24h (\"0s\" keeps no acknowledged row)",
            );
        }
        if self.host {
            if let Err(e) = host::outbox_writable(&outbox.path) {
                self.problem("outbox.path", e);
            }
        }
        outbox
    }
}
