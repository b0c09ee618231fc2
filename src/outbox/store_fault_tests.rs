//! Regression tests for the outbox's loss accounting under faults: every seq that leaves the
//! outbox other than by an acknowledgement is named by a `store.outbox.evicted` event that
//! reaches HQ.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::*;
use crate::event::{EventData, QrScanned};

fn open(path: &Path, max_bytes: u64) -> Store {
    let origin = Origin {
        store: "s1".into(),
        gateway: "gw".into(),
    };
    Store::open(
        path,
        Synchronous::Full,
        origin,
        max_bytes,
        Duration::from_secs(3600),
    )
    .unwrap()
    .store
}

/// An anonymous (or, with `user`, identified) scan event; shared with the store's own tests.
pub(super) fn scan(payload: &str, user: Option<&str>) -> Event {
    let mut e = Event::new(
        "k1".into(),
        SystemTime::now(),
        EventData::QrScanned(QrScanned {
            kind: "other",
            symbology: "qr",
            aim: None,
            payload: Some(payload.into()),
            kid: None,
            jti: None,
            verdict: None,
            gate_opened: None,
        }),
    );
    e.userid = user.map(str::to_owned);
    e
}

fn rows(s: &Store) -> Vec<serde_json::Value> {
    s.fetch_after(0, 1_000_000, usize::MAX)
        .unwrap()
        .map(|b| serde_json::from_slice(&b.payload).unwrap())
        .unwrap_or_default()
}

/// The seqs named by the loss reports still in the outbox.
fn announced(rows: &[serde_json::Value]) -> BTreeSet<u64> {
    rows.iter()
        .filter(|e| e["type"] == "store.outbox.evicted")
        .flat_map(|e| e["data"]["ranges"].as_array().unwrap().clone())
        .flat_map(|r| r[0].as_u64().unwrap()..=r[1].as_u64().unwrap())
        .collect()
}

#[test]
fn regression_an_evicted_loss_report_passes_its_ranges_on() {
    // Only identified events: once over quota, the oldest loss reports are candidates too.
    // Evicting one used to drop its ranges with it, so HQ saw gaps nobody announced.
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir.path().join("o.db"), 8_000);
    for i in 0..200 {
        s.commit_group(
            &[scan(&format!("{i}-{}", "u".repeat(150)), Some("u1"))],
            &[],
        )
        .unwrap();
    }
    let rows = rows(&s);
    let kept: BTreeSet<u64> = rows.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let last = s.stats().unwrap().last_seq;
    let gone: BTreeSet<u64> = (1..=last).filter(|q| !kept.contains(q)).collect();
    assert!(!gone.is_empty());
    assert_eq!(
        announced(&rows),
        gone,
        "every gap is announced by a report still held"
    );
    let counted: u64 = rows
        .iter()
        .filter(|e| e["type"] == "store.outbox.evicted")
        .map(|e| e["data"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, gone.len() as u64);
}

#[test]
fn regression_expired_rows_and_their_report_commit_together() {
    // The sweep deleted old rows in one transaction and appended their report in another: a
    // crash or a full disk in between left a gap nobody announced. A trigger refusing the
    // report stands in for the disk refusing it.
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir.path().join("o.db"), 1 << 30);
    let mut old = scan("old", None);
    old.time = SystemTime::now() - Duration::from_secs(7200);
    old.clocksync = true;
    s.commit_group(&[old, scan("new", None)], &[]).unwrap();
    s.conn
        .execute_batch(
            "CREATE TEMP TRIGGER refuse_reports BEFORE INSERT ON outbox
             WHEN NEW.body LIKE '%store.outbox.evicted%'
             BEGIN SELECT RAISE(ABORT, 'no room for the report'); END;",
        )
        .unwrap();
    assert!(s.expire(SystemTime::now()).is_err());
    assert_eq!(rows(&s).len(), 2, "nothing dropped without its report");
    assert_eq!(s.stats().unwrap().depth, 2);
    s.conn.execute_batch("DROP TRIGGER refuse_reports").unwrap();
    assert_eq!(s.expire(SystemTime::now()).unwrap(), 1);
    let rows = rows(&s);
    assert_eq!(rows[0]["data"]["payload"], "new");
    assert_eq!(announced(&rows), BTreeSet::from([1]));
}

#[test]
fn an_expired_loss_report_passes_its_ranges_on() {
    let dir = tempfile::tempdir().unwrap();
    // The report is made now: by a clock this test calls synchronised.
    crate::clock::set_mode(crate::clock::ClockSync::AssumeSynced);
    let mut s = open(&dir.path().join("o.db"), 1 << 30);
    let mut a = scan("a", None);
    a.time = SystemTime::now() - Duration::from_secs(7200);
    a.clocksync = true;
    s.commit_group(&[a, scan("b", None)], &[]).unwrap();
    s.expire(SystemTime::now()).unwrap();
    // The report (seq 3) ages out in turn, as after a long outage.
    s.expire(SystemTime::now() + Duration::from_secs(7200))
        .unwrap();
    let rows = rows(&s);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["data"]["ranges"], serde_json::json!([[1, 3]]));
    assert_eq!(rows[0]["data"]["count"], 3);
}

#[test]
fn regression_non_ascii_bodies_do_not_inflate_the_byte_tally() {
    // Rows were counted in bytes when inserted but in characters (SQLite `length`) when
    // acknowledged or evicted: every non-ASCII code leaked its difference, until the tally
    // said "over quota" for an empty outbox and each new event evicted the rest.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    let mut s = open(&path, 1 << 30);
    let codes: Vec<Event> = (0..100)
        .map(|i| scan(&format!("{i} 東京都渋谷区 ☕ ünïcødé"), None))
        .collect();
    s.commit_group(&codes, &[]).unwrap();
    s.commit_group(&[], &[(1, 100)]).unwrap();
    assert_eq!(
        s.stats().unwrap().bytes,
        0,
        "acknowledged rows give back what they took"
    );
    s.commit_group(&codes[..10], &[]).unwrap();
    let tally = s.stats().unwrap().bytes;
    drop(s);
    let s = open(&path, 1 << 30);
    assert_eq!(
        s.stats().unwrap().bytes,
        tally,
        "reopening counts the same bytes"
    );
}

#[test]
fn regression_two_quarantines_in_one_second_keep_both_files() {
    // The quarantine name has one-second resolution: a second corrupt file within the same
    // second (a crash loop on a failing card) was renamed over the first, deleting it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    let mut moved = Vec::new();
    for fill in [0x5au8, 0xa5] {
        std::fs::write(&path, vec![fill; 8192]).unwrap();
        moved.push(
            Store::open(
                &path,
                Synchronous::Full,
                Origin {
                    store: "s1".into(),
                    gateway: "gw".into(),
                },
                1 << 30,
                Duration::from_secs(3600),
            )
            .unwrap()
            .quarantined
            .unwrap(),
        );
        std::fs::remove_file(&path).unwrap();
    }
    assert_ne!(moved[0], moved[1]);
    assert_eq!(std::fs::read(&moved[0]).unwrap(), vec![0x5a; 8192]);
    assert_eq!(std::fs::read(&moved[1]).unwrap(), vec![0xa5; 8192]);
}

#[test]
fn regression_rows_stamped_by_an_unsynchronised_clock_are_not_aged_out() {
    // A board without an RTC boots in 1970, buffers through an outage, then NTP steps the
    // clock forward 56 years: by `time`, every buffered event was decades old, and the next
    // retention sweep dropped the whole backlog.
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir.path().join("o.db"), 1 << 30);
    let mut booted_in_1970 = scan("before-ntp", None);
    booted_in_1970.time = SystemTime::UNIX_EPOCH + Duration::from_secs(3600);
    booted_in_1970.clocksync = false;
    let mut old_but_true = scan("old", None);
    old_but_true.time = SystemTime::now() - Duration::from_secs(7200);
    old_but_true.clocksync = true;
    s.commit_group(&[booted_in_1970, old_but_true], &[])
        .unwrap();
    assert_eq!(s.expire(SystemTime::now()).unwrap(), 1);
    let rows = rows(&s);
    assert_eq!(rows[0]["data"]["payload"], "before-ntp");
    assert_eq!(announced(&rows), BTreeSet::from([2]));
}
