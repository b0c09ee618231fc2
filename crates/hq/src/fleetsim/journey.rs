//! HQ's side as the bench reads it: the journey store the consumers share (events stored, the
//! sinks' cursors), and HQ's own report of losses (`phygate-hq losses`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::bench::API_KEY;

/// Waits until HQ has settled: every published event stored, or declared lost with no hole
/// still pending (a broker that loses PUBACKed events, docs/fleet.md, must not make the bench
/// wait its whole timeout for them), and the sinks done with what was stored. Returns how
/// long that took (None: timed out, or `sample` said to stop).
pub(super) fn settle(
    store: &Journey,
    published: impl Fn() -> u64,
    timeout: Duration,
    mut sample: impl FnMut() -> bool,
    mut losses: impl FnMut() -> Option<(u64, u64)>,
) -> Option<Duration> {
    let start = Instant::now();
    let mut turn = 0u64;
    loop {
        turn += 1;
        if !sample() {
            return None;
        }
        if let Ok((stored, done)) = store.progress() {
            let published = published();
            if stored >= published && done {
                return Some(start.elapsed());
            }
            // Asking HQ for its losses runs a process: every 2 s, once the stores are in.
            if done && turn % 8 == 0 && stored > 0 {
                if let Some((lost, 0)) = losses() {
                    if lost > 0 && stored + lost >= published {
                        return Some(start.elapsed());
                    }
                }
            }
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The journey store the consumers share, as the bench reads it.
pub(super) enum Journey {
    Sqlite(PathBuf),
    /// Its URL.
    Postgres(String),
}

/// Events stored and their last `n`; then the sinks done with everything up to `n`.
const STORED: &str = "SELECT count(*), coalesce(max(n), 0) FROM events";
const SINKS_DONE: &str = "SELECT count(*) FROM sink_cursors WHERE n >= $1 AND inflight IS NULL";

impl Journey {
    /// (events stored, whether both sinks are done with all of them).
    pub(super) fn progress(&self) -> anyhow::Result<(u64, bool)> {
        let (stored, done): (i64, i64) = match self {
            Journey::Sqlite(path) => {
                let c = rusqlite::Connection::open_with_flags(
                    path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )?;
                c.busy_timeout(Duration::from_secs(5))?;
                let (stored, last): (i64, i64) =
                    c.query_row(STORED, [], |r| Ok((r.get(0)?, r.get(1)?)))?;
                (stored, c.query_row(SINKS_DONE, [last], |r| r.get(0))?)
            }
            Journey::Postgres(url) => {
                let mut c = postgres::Client::connect(url, postgres::NoTls)?;
                let row = c.query_one(STORED, &[])?;
                let last: i64 = row.get(1);
                (row.get(0), c.query_one(SINKS_DONE, &[&last])?.get(0))
            }
        };
        Ok((stored as u64, done >= 2))
    }
}

/// (lost, pending) seq numbers over all gateways, as `phygate-hq losses` reports them.
pub(super) fn losses(config: &Path) -> anyhow::Result<(u64, u64)> {
    let out = Command::new(std::env::current_exe()?)
        .args(["losses", "--config"])
        .arg(config)
        .env(super::procs::KEY_ENV, API_KEY)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "phygate-hq losses: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (mut lost, mut pending) = (0, 0);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        lost += v["lost"].as_u64().unwrap_or(0);
        for r in v["pending_ranges"].as_array().into_iter().flatten() {
            pending += r[1].as_u64().unwrap_or(0) + 1 - r[0].as_u64().unwrap_or(0);
        }
    }
    Ok((lost, pending))
}
