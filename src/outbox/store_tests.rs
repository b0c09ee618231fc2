//! The store's own tests: append, fetch, ack, quota, retention, state, corruption at open.

use super::*;
use crate::event::{DeviceStatusData, EventData};
use std::time::SystemTime;

fn origin() -> Origin {
    Origin {
        store: "s1".into(),
        gateway: "gw".into(),
    }
}

fn open(path: &Path, max_bytes: u64) -> Opened {
    Store::open(
        path,
        Synchronous::Full,
        origin(),
        max_bytes,
        Duration::from_secs(3600),
    )
    .unwrap()
}

fn scan(payload: &str) -> Event {
    super::fault_tests::scan(payload, None)
}

fn status() -> Event {
    Event::new(
        "k1".into(),
        SystemTime::now(),
        EventData::DeviceStatus(DeviceStatusData {
            device: "d".into(),
            kind: "scanner",
            state: crate::event::DeviceState::Up,
            reason: "x".repeat(200),
            count: None,
        }),
    )
}

fn bodies(b: &Batch) -> Vec<serde_json::Value> {
    serde_json::from_slice(&b.payload).unwrap()
}

#[test]
fn append_fetch_ack_in_seq_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir.path().join("o.db"), 1 << 30).store;
    let seqs = s
        .commit_group(&[scan("a"), scan("b"), scan("c")], &[])
        .unwrap();
    assert_eq!(seqs, vec![1, 2, 3]);
    let b = s.fetch_after(0, 2, 1 << 20).unwrap().unwrap();
    assert_eq!((b.first, b.last, b.count), (1, 2, 2));
    let v = bodies(&b);
    assert_eq!(v[0]["data"]["payload"], "a");
    assert_eq!(v[1]["seq"], 2);
    // Fetching does not delete; only an ack does.
    assert_eq!(s.stats().unwrap().depth, 3);
    s.commit_group(&[], &[(1, 2)]).unwrap();
    let b = s.fetch_after(0, 10, 1 << 20).unwrap().unwrap();
    assert_eq!((b.first, b.last), (3, 3));
    assert_eq!(s.stats().unwrap().depth, 1);
}

#[test]
fn several_batches_in_one_read_are_consecutive_and_each_acknowledged_by_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir.path().join("o.db"), 1 << 30).store;
    let events: Vec<Event> = (0..7).map(|i| scan(&format!("e{i}"))).collect();
    s.commit_group(&events, &[]).unwrap();
    // Room for four batches of two: the outbox has seven rows after the first, so 2+2+2+1.
    let batches = s.fetch_batches(0, 4, 2, 1 << 20).unwrap();
    let ranges: Vec<_> = batches.iter().map(|b| (b.first, b.last, b.count)).collect();
    assert_eq!(ranges, vec![(1, 2, 2), (3, 4, 2), (5, 6, 2), (7, 7, 1)]);
    assert_eq!(bodies(&batches[3])[0]["data"]["payload"], "e6");
    // Fewer asked than there are: it stops there; nothing left: empty.
    assert_eq!(s.fetch_batches(0, 1, 2, 1 << 20).unwrap().len(), 1);
    assert!(s.fetch_batches(7, 4, 2, 1 << 20).unwrap().is_empty());
    // Each batch's acknowledgement takes exactly its rows off the depth.
    let before = s.stats().unwrap();
    for (i, b) in batches.iter().enumerate() {
        s.commit_group(&[], &[(b.first, b.last)]).unwrap();
        let depth = s.stats().unwrap().depth;
        let acked: u64 = batches[..=i].iter().map(|b| b.count as u64).sum();
        assert_eq!(depth, before.depth - acked);
    }
    assert_eq!(s.stats().unwrap().bytes, 0);
}

#[test]
fn batch_respects_byte_cap() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir.path().join("o.db"), 1 << 30).store;
    let events: Vec<Event> = (0..10)
        .map(|i| scan(&format!("{i}{}", "x".repeat(100))))
        .collect();
    s.commit_group(&events, &[]).unwrap();
    let b = s.fetch_after(0, 100, 1024).unwrap().unwrap();
    assert!(b.payload.len() <= 1024, "{}", b.payload.len());
    assert!(b.count >= 2 && b.count < 10);
    assert_eq!(bodies(&b).len(), b.count);
}

#[test]
fn seq_continues_after_reopen_of_an_empty_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    {
        let mut s = open(&path, 1 << 30).store;
        s.commit_group(&[scan("a"), scan("b")], &[]).unwrap();
        s.commit_group(&[], &[(1, 2)]).unwrap();
    }
    let mut s = open(&path, 1 << 30).store;
    assert_eq!(s.stats().unwrap().depth, 0);
    assert_eq!(s.commit_group(&[scan("c")], &[]).unwrap(), vec![3]);
}

#[test]
fn reopen_after_crash_keeps_committed_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    let s = open(&path, 1 << 30).store;
    let mut s = s;
    s.commit_group(&[scan("a"), scan("b")], &[]).unwrap();
    // No close, no checkpoint: as after kill -9 (WAL file left behind).
    std::mem::forget(s);
    let s = open(&path, 1 << 30).store;
    let b = s.fetch_after(0, 10, 1 << 20).unwrap().unwrap();
    assert_eq!(b.count, 2);
}

#[test]
fn quota_evicts_lowest_priority_oldest_first_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir.path().join("o.db"), 20_000).store;
    // Interleave identified scans and telemetry until well over quota.
    for i in 0..40 {
        let mut e = scan(&format!("user-scan-{i}"));
        e.userid = Some(format!("u{i}"));
        s.commit_group(&[e, status()], &[]).unwrap();
    }
    let st = s.stats().unwrap();
    assert!(st.bytes <= 20_000, "{st:?}");
    let all = s.fetch_after(0, 10_000, 1 << 24).unwrap().unwrap();
    let v = bodies(&all);
    let identified = v.iter().filter(|e| e["userid"].is_string()).count();
    assert_eq!(identified, 40, "identified events are the last to go");
    let reports: Vec<&serde_json::Value> = v
        .iter()
        .filter(|e| e["type"] == "store.outbox.evicted")
        .collect();
    assert!(!reports.is_empty());
    let evicted: u64 = reports
        .iter()
        .map(|r| r["data"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(
        evicted as usize + v.len() - reports.len(),
        80,
        "every event is either kept or counted"
    );
    assert!(v
        .iter()
        .all(|e| e["type"] != "store.device.status" || e["seq"].as_u64().unwrap() > 40));
}

#[test]
fn expired_rows_are_dropped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir.path().join("o.db"), 1 << 30).store;
    let mut old = scan("old");
    old.time = SystemTime::now() - Duration::from_secs(7200);
    old.clocksync = true;
    s.commit_group(&[old, scan("new")], &[]).unwrap();
    assert_eq!(s.expire(SystemTime::now()).unwrap(), 1);
    let v = bodies(&s.fetch_after(0, 10, 1 << 20).unwrap().unwrap());
    assert_eq!(v[0]["data"]["payload"], "new");
    assert_eq!(v[1]["type"], "store.outbox.evicted");
    assert_eq!(v[1]["data"]["ranges"], serde_json::json!([[1, 1]]));
    assert_eq!(v[1]["data"]["policy"], "age");
}

#[test]
fn state_commits_with_events_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    {
        let mut s = open(&path, 1 << 30).store;
        let state = vec![
            ("gate/g1".to_string(), Some(b"41".to_vec())),
            ("gate/g2".to_string(), Some(b"7".to_vec())),
        ];
        s.commit_group_with_state(&[scan("a")], &[], &state)
            .unwrap();
        s.commit_group_with_state(&[], &[], &[("gate/g2".to_string(), None)])
            .unwrap();
    }
    let s = open(&path, 1 << 30).store;
    assert_eq!(s.get_state("gate/g1").unwrap(), Some(b"41".to_vec()));
    assert_eq!(s.get_state("gate/g2").unwrap(), None);
    assert_eq!(s.scan_state("gate/").unwrap().len(), 1);
}

#[test]
fn corrupt_database_is_quarantined_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let opened = open(&path, 1 << 30);
    let moved = opened.quarantined.expect("quarantined");
    assert_eq!(std::fs::read(&moved).unwrap(), vec![0x5a; 8192]);
    let mut s = opened.store;
    assert_eq!(s.commit_group(&[scan("a")], &[]).unwrap(), vec![1]);
}
