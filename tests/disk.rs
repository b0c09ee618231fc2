//! The disk under the outbox: a byte quota reached during an outage, a real full file system,
//! and a corrupt database at start.

mod common;
mod fault;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fault::*;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

/// A small tmpfs the test mounts (we run as root), unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None`, with the reason, where mounting is impossible (no privilege, no tmpfs).
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Posts tablet diagnoses from `first` until one is refused; returns the accepted ids and the
/// refusal.
fn post_until_refused(store: &Store, first: u64, limit: u64) -> (Vec<String>, u64, Posted) {
    let mut ids = Vec::new();
    for k in first..first + limit {
        let a = store.post_skin(k).unwrap();
        if a.status != 202 {
            return (ids, k, a);
        }
        ids.extend(a.ids);
    }
    panic!("{limit} posts and the disk never filled");
}

#[test]
fn full_filesystem_answers_503_keeps_the_database_whole_and_resumes_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small-disk");
    let _fs = match Tmpfs::mount(&mnt, "3m") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("SKIPPED: no real full file system here ({why}); the file-size cap test still forces SQLITE_FULL");
            return;
        }
    };
    let db = mnt.join("phygate.db");
    let mut store = Store::new(&Knobs {
        db: Some(db.clone()),
        ..Knobs::default()
    });
    let hq = store.hq("full-disk");
    let (_pty, mut scanner) = store.rig.scanner();
    let gw = store.start_gateway();
    store.wait_listening();
    hq.wait_for(LONG, "the scanner up", |h| !h.statuses().is_empty());

    // HQ unreachable, and the log partition's neighbour has eaten most of the space.
    store.rig.broker.stop(false);
    let ballast = mnt.join("ballast");
    std::fs::write(&ballast, vec![0u8; 1024 * 1024]).unwrap();
    let (mut accepted, next, refused) = post_until_refused(&store, 0, 100_000);
    eprintln!(
        "disk full after {} accepted posts: {refused:?}",
        accepted.len()
    );
    assert_eq!(
        refused.status, 503,
        "a full disk is 'try later', not an error: {refused:?}"
    );
    assert_eq!(refused.body["error"], "not_stored", "{refused:?}");
    assert!(
        refused.retry_after.is_some(),
        "the device is told when to retry"
    );
    // Still full: every post is refused, none half-stored.
    for k in next..next + 5 {
        assert_eq!(store.post_skin(k).unwrap().status, 503);
    }
    // Codes scanned meanwhile are held by phygate until they can be written.
    let held = codes("FULL", 50);
    scanner
        .scan_all(held.iter().map(String::as_str), Duration::ZERO)
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        integrity(&db),
        "ok",
        "a full disk must not corrupt the outbox"
    );
    assert!(strip_ansi(&gw.log()).contains("outbox transaction failed"));

    // Space returns: the same post is accepted again, without a restart.
    std::fs::remove_file(&ballast).unwrap();
    let resumed = Instant::now();
    let again = loop {
        let a = store.post_skin(next).unwrap();
        if a.status == 202 {
            break a;
        }
        assert!(resumed.elapsed() < LONG, "never resumed: {a:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    accepted.extend(again.ids);

    store.rig.broker.restart().unwrap();
    hq.wait_for(LONG, "every accepted diagnosis and every held code", |h| {
        let d = delivered(h);
        accepted.iter().all(|id| d.by_id.contains_key(id))
            && h.scanned_payloads().len() >= held.len()
    });
    assert_eq!(
        hq.scanned_payloads(),
        held,
        "held codes were written, in order"
    );
    assert_eq!(delivered(&hq).seq_gaps(), Vec::<[u64; 2]>::new());
    hq.assert_consistent();
    assert_eq!(integrity(&db), "ok");
}

#[test]
fn file_cap_reached_in_an_outage_answers_503_and_acknowledged_rows_make_room_again() {
    let mut store = Store::new(&Knobs {
        outbox: "max_file_bytes = 1048576\n".into(),
        ..Knobs::default()
    });
    let db = store.db();
    let hq = store.hq("file-cap");
    let (_pty, mut scanner) = store.rig.scanner();
    let gw = store.start_gateway();
    store.wait_listening();
    hq.wait_for(LONG, "the scanner up", |h| !h.statuses().is_empty());

    store.rig.broker.stop(false);
    let (mut accepted, next, refused) = post_until_refused(&store, 0, 100_000);
    eprintln!("file cap reached after {} accepted posts", accepted.len());
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.body["error"], "not_stored", "{refused:?}");
    // More codes than the whole cap holds: phygate keeps them in memory (up to its limit)
    // and writes them as room appears, oldest first.
    let held = codes("CAP", 3000);
    scanner
        .scan_all(held.iter().map(String::as_str), Duration::ZERO)
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(store.post_skin(next).unwrap().status, 503, "still full");
    assert_eq!(integrity(&db), "ok");
    let size = std::fs::metadata(&db).unwrap().len();
    assert!(size <= 1024 * 1024, "the file stays under its cap: {size}");

    // HQ is back: the backlog goes out, its acknowledgements delete rows, and the freed pages
    // take the held codes and new posts. Nobody had to free the disk.
    store.rig.broker.restart().unwrap();
    let resumed = Instant::now();
    let again = loop {
        let a = store.post_skin(next).unwrap();
        if a.status == 202 {
            break a;
        }
        assert!(
            resumed.elapsed() < LONG,
            "never resumed: {a:?}\n{}",
            strip_ansi(&gw.log())
                .lines()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    accepted.extend(again.ids);
    hq.wait_for(LONG, "every accepted diagnosis and every held code", |h| {
        let d = delivered(h);
        accepted.iter().all(|id| d.by_id.contains_key(id))
            && h.scanned_payloads().len() >= held.len()
    });
    assert_eq!(hq.scanned_payloads(), held);
    assert_eq!(delivered(&hq).seq_gaps(), Vec::<[u64; 2]>::new());
    hq.assert_consistent();
    assert!(
        wait_until(LONG, || outbox_depth(&db) == 0),
        "every row acknowledged and deleted: {} left",
        outbox_depth(&db)
    );
    assert_eq!(integrity(&db), "ok");
}

#[test]
fn quota_in_an_outage_evicts_oldest_lowest_priority_first_and_hq_sees_exactly_the_announced_gaps() {
    let mut store = Store::new(&Knobs {
        outbox: "max_bytes = 1048576\n".into(),
        ..Knobs::default()
    });
    let db = store.db();
    let hq = store.hq("quota");
    let (_pty, _scanner) = store.rig.scanner();
    let gw = store.start_gateway();
    store.wait_listening();
    hq.wait_for(LONG, "the scanner up", |h| !h.statuses().is_empty());
    assert!(wait_until(LONG, || outbox_depth(&db) == 0));
    std::thread::sleep(Duration::from_millis(300));
    let s0 = delivered(&hq)
        .by_id
        .values()
        .map(|e| e["seq"].as_u64().unwrap())
        .max()
        .unwrap()
        + 1;

    // HQ away; a people counter (footfall: lowest priority) and a tablet (anonymous journey
    // events) post one at a time, so the order phygate gives seqs in is the order posted.
    store.rig.broker.stop(false);
    let mut rng = Rng::new(seed("PHYGATE_QUOTA_SEED"));
    let mut produced: Vec<(String, u8)> = Vec::new();
    for k in 0..2400u64 {
        let a = if rng.range(0, 2) == 0 {
            store.post_counts(k, 1 + k % 5, 0).unwrap()
        } else {
            let mut reading = phygate::sim::skin::sample("TAB-Q", k);
            // A long vendor record: anonymous events outweigh footfall, as in a real store.
            for i in 0..24 {
                reading
                    .extra
                    .insert(format!("vendor_metric_{i:02}"), i as f64);
            }
            try_post(store.ingest_port, SKIN_PATH, TABLET, &reading.to_json()).unwrap()
        };
        assert_eq!(a.status, 202, "{a:?}");
        let ty = if a.body["events"][0]["type"] == "store.gate.passed" {
            0
        } else {
            1
        };
        produced.extend(a.ids.into_iter().map(|id| (id, ty)));
    }
    store.rig.broker.restart().unwrap();
    assert!(wait_until(LONG, || outbox_depth(&db) == 0), "drained");
    std::thread::sleep(Duration::from_secs(1));

    let d = delivered(&hq);
    let at_hq: BTreeMap<u64, &Value> = d
        .by_id
        .values()
        .map(|e| (e["seq"].as_u64().unwrap(), e))
        .filter(|(s, _)| *s >= s0)
        .collect();
    let reports: Vec<(u64, &Value)> = at_hq
        .iter()
        .filter(|(_, e)| e["type"] == "store.outbox.evicted")
        .map(|(s, e)| (*s, *e))
        .collect();
    assert!(reports.len() >= 2, "the quota was reached more than once");
    let last = *at_hq.keys().next_back().unwrap();

    // Every seq of the outage is a produced event or a report: the produced ones in order.
    let report_seqs: BTreeSet<u64> = reports.iter().map(|(s, _)| *s).collect();
    let event_seqs: Vec<u64> = (s0..=last).filter(|s| !report_seqs.contains(s)).collect();
    assert_eq!(event_seqs.len(), produced.len(), "seqs of the outage");
    let prio: BTreeMap<u64, u8> = event_seqs
        .iter()
        .zip(&produced)
        .map(|(s, (_, p))| (*s, *p))
        .chain(report_seqs.iter().map(|s| (*s, 2)))
        .collect();
    for (s, (id, _)) in event_seqs.iter().zip(&produced) {
        if let Some(e) = at_hq.get(s) {
            assert_eq!(
                e["id"],
                id.as_str(),
                "seq {s} is the event posted in that place"
            );
        }
    }

    // The gaps at HQ are exactly the announced ranges, each seq announced once, and the
    // counts add up.
    let mut announced = BTreeSet::new();
    let mut counted = 0;
    for (_, r) in &reports {
        assert_eq!(r["data"]["policy"], "bytes");
        let mut n = 0;
        for range in r["data"]["ranges"].as_array().unwrap() {
            for s in range[0].as_u64().unwrap()..=range[1].as_u64().unwrap() {
                assert!(announced.insert(s), "seq {s} announced twice");
                n += 1;
            }
        }
        assert_eq!(r["data"]["count"].as_u64().unwrap(), n);
        counted += n;
    }
    let missing: BTreeSet<u64> = (s0..=last).filter(|s| !at_hq.contains_key(s)).collect();
    assert_eq!(
        missing, announced,
        "HQ's gaps are exactly the announced evictions"
    );
    assert_eq!(d.seq_gaps(), ranges(missing.iter().copied()));

    // Each eviction took the lowest priority first, oldest first within it: what a report
    // names sorts before everything it left behind.
    let mut evicted_before = BTreeSet::new();
    for (r, e) in &reports {
        let named: BTreeSet<u64> = e["data"]["ranges"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|x| x[0].as_u64().unwrap()..=x[1].as_u64().unwrap())
            .collect();
        let left: Vec<(u8, u64)> = (s0..*r)
            .filter(|s| !evicted_before.contains(s) && !named.contains(s))
            .map(|s| (prio[&s], s))
            .collect();
        let worst_named = named.iter().map(|s| (prio[s], *s)).max().unwrap();
        let best_left = left.iter().min().copied();
        assert!(
            best_left.is_none_or(|b| worst_named < b),
            "report at seq {r} evicted {worst_named:?} but kept {best_left:?}"
        );
        assert!(
            named.iter().all(|s| prio[s] < 2),
            "reports are never evicted"
        );
        evicted_before.extend(named);
    }
    let by_priority = |p: u8| announced.iter().filter(|s| prio[s] == p).count();
    eprintln!(
        "evicted {counted} of {} events in {} rounds: {} footfall, {} anonymous",
        produced.len(),
        reports.len(),
        by_priority(0),
        by_priority(1)
    );
    assert!(by_priority(0) > 0);

    // Every drop was counted in the log too.
    let logged: u64 = strip_ansi(&gw.log())
        .lines()
        .filter(|l| l.contains("outbox over its byte quota"))
        .filter_map(|l| {
            l.split("count=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(logged, counted, "log lines count every eviction");
    hq.assert_consistent();
}

/// The files phygate moved aside next to `db`.
fn quarantined(db: &Path) -> Vec<PathBuf> {
    let name = db.file_name().unwrap().to_str().unwrap().to_owned();
    let mut found: Vec<PathBuf> = std::fs::read_dir(db.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            n.starts_with(&format!("{name}.corrupt-"))
                && !n.ends_with("-wal")
                && !n.ends_with("-shm")
        })
        .collect();
    found.sort();
    found
}

/// Starts phygate on a broken database and checks it quarantines, reports and runs.
fn starts_fresh_after(store: &Store, broken: &[u8], hq_name: &str) {
    let db = store.db();
    let hq = store.hq(hq_name);
    let (_pty, mut scanner) = store.rig.scanner();
    let gw = store.start_gateway();
    hq.wait_for(LONG, "the outbox's error report", |h| {
        !h.statuses_of("outbox").is_empty()
    });
    let report = &hq.statuses_of("outbox")[0];
    assert_eq!(report["data"]["state"], "error");
    assert_eq!(report["data"]["kind"], "outbox");
    let moved = quarantined(&db);
    assert_eq!(moved.len(), 1, "{moved:?}");
    let name = moved[0].file_name().unwrap().to_str().unwrap().to_owned();
    let stamp = name.rsplit("corrupt-").next().unwrap();
    assert!(
        stamp.len() == 16 && stamp.ends_with('Z') && stamp.as_bytes()[8] == b'T',
        "a timestamped name: {name}"
    );
    assert!(
        report["data"]["reason"].as_str().unwrap().contains(&name),
        "the report says where the old file went: {report}"
    );
    assert_eq!(
        std::fs::read(&moved[0]).unwrap(),
        broken,
        "moved, not rewritten"
    );
    assert!(strip_ansi(&gw.log()).contains("outbox database is corrupt"));

    // A fresh outbox: the daemon runs and delivers.
    scanner.scan("AFTER-CORRUPTION").unwrap();
    hq.wait_for(LONG, "a code through the fresh outbox", |h| {
        h.scanned_payloads() == ["AFTER-CORRUPTION"]
    });
    assert_eq!(integrity(&db), "ok");
}

#[test]
fn garbage_database_at_start_is_moved_aside_reported_and_a_fresh_one_runs() {
    let store = Store::new(&Knobs::default());
    let mut rng = Rng::new(7);
    let garbage: Vec<u8> = (0..64 * 1024).map(|_| rng.next_u64() as u8).collect();
    std::fs::write(store.db(), &garbage).unwrap();
    starts_fresh_after(&store, &garbage, "garbage-db");
}

#[test]
fn truncated_database_at_start_is_moved_aside_reported_and_a_fresh_one_runs() {
    let mut store = Store::new(&Knobs::default());
    let db = store.db();
    // A real outbox with a backlog (HQ away), cut short as by a failing SD card.
    store.rig.broker.stop(false);
    {
        let (_pty, mut scanner) = store.rig.scanner();
        let mut gw = store.start_gateway();
        let sent = codes("TR", 3000);
        scanner
            .scan_all(sent.iter().map(String::as_str), Duration::ZERO)
            .unwrap();
        assert!(wait_until(LONG, || outbox_depth(&db) >= 3000));
        gw.kill9();
    }
    {
        // Fold the WAL in, so the main file holds the rows, then cut it in half.
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
    }
    let whole = std::fs::read(&db).unwrap();
    let half = &whole[..whole.len() / 2];
    std::fs::write(&db, half).unwrap();
    store.rig.broker.restart().unwrap();
    starts_fresh_after(&store, half, "truncated-db");
}
