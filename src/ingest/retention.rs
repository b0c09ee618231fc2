//! How long what the ingest leaves in the outbox's state table is kept, and its pruning.
//!
//! Per device, two key families grow with its posts:
//! - its receipts (`ingest/{device}/…`, [`super::receipt`]): kept until their `keep_until_ms`
//!   (24 h for a skin reading, 7 days past a counts interval);
//! - for a skin tablet, the de-duplication sightings the link writes with each reading that has a
//!   `seq` (`skin/seen/{device}/{model}/{seq}` → first sighting, ms; see
//!   `link::journey::skin_seen_state`), kept for the de-duplication window. The serial skin
//!   source reports the ones it forgets, for the link to delete; an HTTP device's are read by
//!   nobody (its receipts de-duplicate), so they are this stage's to prune, or they pile up
//!   forever.
//!
//! Both are pruned hourly, so a device's keys are bounded by its post rate times the retention
//! plus one hour, whatever the uptime.

use crate::outbox::{OutboxError, OutboxHandle, StateWrite};
use crate::sources::skin::skn1;

use super::receipt::{self, Receipt};

/// Most deletes in one transaction: a device that posted fast for an hour does not stall the
/// outbox thread with one huge commit.
const DELETE_CHUNK: usize = 1_000;

/// The prefix of the sightings the link writes for `device`'s skin readings.
pub use crate::outbox::keys::skin_seen_prefix as seen_prefix;

/// The receipts past their time (or unreadable: at worst one duplicate later).
pub fn stale_receipts(entries: Vec<(String, Vec<u8>)>, now_ms: u64) -> Vec<String> {
    entries
        .into_iter()
        .filter(|(_, v)| !Receipt::decode(v).is_some_and(|r| r.live(now_ms)))
        .map(|(k, _)| k)
        .collect()
}

/// The sightings past the de-duplication window (or unreadable).
pub fn stale_sightings(entries: Vec<(String, Vec<u8>)>, now_ms: u64) -> Vec<String> {
    entries
        .into_iter()
        .filter(|(_, v)| {
            let at = std::str::from_utf8(v)
                .ok()
                .and_then(|v| v.parse::<u64>().ok());
            at.is_none_or(|at| now_ms.saturating_sub(at) >= skn1::DEDUP_WINDOW_MS)
        })
        .map(|(k, _)| k)
        .collect()
}

/// Deletes `device`'s receipts past their time and, for a skin tablet, its sightings past the
/// window. Returns how many keys went. Call with the device's post lock held, so a post cannot
/// renew a receipt between the read and the delete.
pub async fn prune_device(
    outbox: &OutboxHandle,
    device: &str,
    skin: bool,
    now_ms: u64,
) -> Result<usize, OutboxError> {
    let entries = outbox.state(&receipt::device_prefix(device)).await?;
    let mut stale = stale_receipts(entries, now_ms);
    if skin {
        stale.extend(stale_sightings(
            outbox.state(&seen_prefix(device)).await?,
            now_ms,
        ));
    }
    for chunk in stale.chunks(DELETE_CHUNK) {
        let writes: Vec<StateWrite> = chunk.iter().map(|k| (k.clone(), None)).collect();
        outbox.put_states(writes).await?;
    }
    Ok(stale.len())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::clock::unix_ms;
    use crate::ingest::counts;
    use crate::link::journey::skin_seen_state as seen_state;
    use crate::outbox::Outbox;
    use crate::outbox::{OutboxConfig, Synchronous};

    #[test]
    fn the_sightings_prefix_is_the_one_the_link_writes_under() {
        let reading = skn1::SkinReading {
            model: "AX-200".into(),
            seq: Some(7),
            device_time: None,
            measures: Default::default(),
            extra: Default::default(),
            skin_type: None,
        };
        let (key, _) = seen_state("tab-1", &reading, SystemTime::now()).unwrap();
        assert!(key.starts_with(&seen_prefix("tab-1")), "{key}");
        assert!(!key.starts_with(&seen_prefix("tab-")));
    }

    /// A skin tablet posting once a minute and a people counter once every 5 minutes, for two
    /// weeks of simulated time with the hourly prune: the state table stops growing once the
    /// longest retention (a counts receipt's 7 days) has passed, at the bound the rates give.
    #[tokio::test]
    async fn a_week_of_posts_leaves_the_state_table_bounded() {
        const MINUTE: u64 = 60_000;
        const HOUR: u64 = 60 * MINUTE;
        const DAY: u64 = 24 * HOUR;
        let dir = tempfile::tempdir().unwrap();
        let config = OutboxConfig {
            path: dir.path().join("o.db"),
            synchronous: Synchronous::Off,
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(3600),
            max_file_bytes: None,
            replay_window: std::time::Duration::ZERO,
        };
        let origin = crate::event::Origin {
            store: "s".into(),
            gateway: "g".into(),
        };
        let (outbox, handle) = Outbox::open(&config, origin).unwrap();
        let thread = outbox.spawn().unwrap();
        let t0 = unix_ms(SystemTime::now()) - 14 * DAY;
        let mut sizes = Vec::new();
        for hour in 0..14 * 24 {
            let start = t0 + hour * HOUR;
            let mut writes: Vec<StateWrite> = Vec::new();
            for minute in 0..60 {
                let at = start + minute * MINUTE;
                let seq = hour * 60 + minute;
                // What a skin post writes: the link's sighting and the ingest's receipt.
                let reading = skn1::SkinReading {
                    model: "AX-200".into(),
                    seq: Some(seq),
                    device_time: None,
                    measures: Default::default(),
                    extra: Default::default(),
                    skin_type: None,
                };
                let when = SystemTime::UNIX_EPOCH + Duration::from_millis(at);
                writes.extend(seen_state("tab-1", &reading, when));
                let r = Receipt {
                    events: Vec::new(),
                    keep_until_ms: at + skn1::DEDUP_WINDOW_MS,
                    counts: None,
                };
                writes.push((receipt::skin_key("tab-1", "AX-200", seq), Some(r.encode())));
                if minute % 5 == 0 {
                    let r = Receipt {
                        events: Vec::new(),
                        keep_until_ms: at + counts::KEPT_MS,
                        counts: Some([1, 1]),
                    };
                    let (from, to) = (format!("{}", at - 5 * MINUTE), format!("{at}"));
                    writes.push((receipt::counts_key("pc-1", &from, &to), Some(r.encode())));
                }
            }
            handle.put_states_durable(writes).await.unwrap();
            let now = start + HOUR;
            prune_device(&handle, "tab-1", true, now).await.unwrap();
            prune_device(&handle, "pc-1", false, now).await.unwrap();
            if (hour + 1) % 24 == 0 {
                sizes.push(handle.state("").await.unwrap().len());
            }
        }
        drop(handle);
        thread.join().unwrap();
        // Skin: a day of receipts and a day of sightings; counts: 7 days of intervals.
        let bound = 2 * (24 * 60) + 7 * 24 * 12;
        assert!(sizes.iter().all(|&n| n <= bound), "{sizes:?} over {bound}");
        assert_eq!(
            sizes[7..].iter().max(),
            sizes[7..].iter().min(),
            "flat: {sizes:?}"
        );
        assert!(sizes[13] + 5 >= bound, "the rates fill it: {sizes:?}");
    }
}
