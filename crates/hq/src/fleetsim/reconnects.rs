//! The stores' reconnect spread after a broker node's SIGKILL, read from fleet-sim's log: each
//! simulated uplink logs "connected to HQ" inside a `gateway{store=…}` span, with the log's
//! UTC timestamp in front (plain text: the log is a file). For every store, the first connect
//! after the kill is its reconnect; the spread of those says whether the fleet stampeded the
//! surviving nodes or the jittered backoff (`phygate::backoff`) spread it out.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// What the reconnects after the kill looked like.
#[derive(Debug, Default, PartialEq)]
pub struct Spread {
    /// Stores that connected again after the kill.
    pub reconnects: usize,
    /// Kill → reconnect, over those stores: the first one, the median, …
    pub first_ms: u64,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
    /// The most reconnects in any 100 ms: a stampede puts most of them in one.
    pub peak_per_100ms: usize,
    /// Reconnects per second after the kill (`[0]`: within the first second).
    pub per_second: Vec<usize>,
}

impl Spread {
    /// `reconnects=… reconnect_spread_p50_ms=… …`, then the per-second histogram.
    pub fn line(&self) -> String {
        format!(
            "reconnects={} reconnect_first_ms={} reconnect_spread_p50_ms={} reconnect_spread_p99_ms={} reconnect_spread_max_ms={} peak_per_100ms={} per_second={:?}",
            self.reconnects, self.first_ms, self.p50_ms, self.p99_ms, self.max_ms, self.peak_per_100ms, self.per_second
        )
    }
}

/// The spread of the first reconnect of each store after `killed_at`, from the sim's log.
pub fn from_log(log: &Path, killed_at: SystemTime) -> std::io::Result<Spread> {
    Ok(spread(&std::fs::read_to_string(log)?, killed_at))
}

fn spread(log: &str, killed_at: SystemTime) -> Spread {
    let mut first: BTreeMap<&str, Duration> = BTreeMap::new();
    for (store, at) in log.lines().filter_map(connect) {
        if let Ok(after) = at.duration_since(killed_at) {
            first.entry(store).or_insert(after);
        }
    }
    let mut ms: Vec<u64> = first.values().map(|d| d.as_millis() as u64).collect();
    ms.sort_unstable();
    if ms.is_empty() {
        return Spread::default();
    }
    let pct = |p: usize| ms[(ms.len() * p / 100).min(ms.len() - 1)];
    let mut per_second = vec![0; (ms[ms.len() - 1] / 1000 + 1) as usize];
    for m in &ms {
        per_second[(m / 1000) as usize] += 1;
    }
    // A window of 100 ms starting at each reconnect.
    let peak = (0..ms.len())
        .map(|i| ms[i..].iter().take_while(|&&m| m < ms[i] + 100).count())
        .max()
        .unwrap_or(0);
    Spread {
        reconnects: ms.len(),
        first_ms: ms[0],
        p50_ms: pct(50),
        p99_ms: pct(99),
        max_ms: ms[ms.len() - 1],
        peak_per_100ms: peak,
        per_second,
    }
}

/// `(store, time)` of a "connected to HQ" line:
/// `2026-12-07T09:01:02.345678Z  INFO gateway{store=s0001}: phygate::uplink: connected to HQ …`.
fn connect(line: &str) -> Option<(&str, SystemTime)> {
    if !line.contains("connected to HQ") {
        return None;
    }
    let at = humantime::parse_rfc3339(line.split_whitespace().next()?).ok()?;
    let store = line.split("gateway{store=").nth(1)?.split('}').next()?;
    Some((store, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_connect_of_each_store_after_the_kill_counts() {
        let log = "\
2026-12-07T09:00:00.000000Z  INFO gateway{store=s0001}: phygate::uplink: connected to HQ broker=(\"127.0.0.1\", 1)
2026-12-07T09:00:10.250000Z  WARN gateway{store=s0001}: phygate::uplink: HQ link down
2026-12-07T09:00:10.600000Z  INFO gateway{store=s0001}: phygate::uplink: connected to HQ broker=(\"127.0.0.1\", 2)
2026-12-07T09:00:10.650000Z  INFO gateway{store=s0002}: phygate::uplink: connected to HQ broker=(\"127.0.0.1\", 2)
2026-12-07T09:00:12.100000Z  INFO gateway{store=s0001}: phygate::uplink: connected to HQ broker=(\"127.0.0.1\", 3)
2026-12-07T09:00:11.900000Z  INFO gateway{store=s0003}: phygate::uplink: connected to HQ broker=(\"127.0.0.1\", 2)
";
        let killed = humantime::parse_rfc3339("2026-12-07T09:00:10.000000Z").unwrap();
        let s = spread(log, killed);
        assert_eq!(s.reconnects, 3);
        assert_eq!((s.first_ms, s.p50_ms, s.max_ms), (600, 650, 1900));
        assert_eq!(s.peak_per_100ms, 2);
        assert_eq!(s.per_second, vec![2, 1]);
    }
}
