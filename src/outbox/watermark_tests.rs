//! Acknowledgement by watermark on a real SQLite file: the totals stay exact whichever way a
//! range is sized, reads start above the watermark, and a crash between the watermark's commit
//! and the range delete leaves exactly the unacknowledged rows to publish.

use super::*;

fn open(path: &Path, max_bytes: u64) -> Store {
    Store::open(
        path,
        Synchronous::Full,
        Origin {
            store: "s1".into(),
            gateway: "gw".into(),
        },
        max_bytes,
        Duration::from_secs(3600),
    )
    .unwrap()
    .store
}

fn scans(from: usize, n: usize) -> Vec<Event> {
    (from..from + n)
        .map(|i| super::fault_tests::scan(&format!("wm-{i}-{}", "y".repeat(i % 40)), None))
        .collect()
}

/// Rows and body bytes above the watermark, and every row in the file, as a scan finds them.
fn counted(s: &Store) -> (u64, u64, u64) {
    s.conn
        .query_row(
            "SELECT count(*) FILTER (WHERE seq > ?1), \
             coalesce(sum(octet_length(body)) FILTER (WHERE seq > ?1), 0), count(*) FROM outbox",
            [s.acked() as i64],
            |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                ))
            },
        )
        .unwrap()
}

fn assert_exact(s: &Store) {
    let st = s.stats().unwrap();
    let (rows, bytes, _) = counted(s);
    assert_eq!(
        (st.depth, st.bytes),
        (rows, bytes),
        "totals are the live rows'"
    );
}

#[test]
fn acknowledging_handed_batches_moves_the_watermark_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir.path().join("o.db"), 1 << 30);
    s.commit_group(&scans(0, 20), &[]).unwrap();
    let a = s.fetch_after(0, 8, 1 << 20).unwrap().unwrap();
    let b = s.fetch_after(a.last, 8, 1 << 20).unwrap().unwrap();
    s.commit_group(&[], &[(a.first, a.last), (b.first, b.last)])
        .unwrap();
    assert_eq!(s.acked(), 16);
    assert_exact(&s);
    assert_eq!(
        counted(&s).2,
        20,
        "the acknowledged rows wait, dead, for a range delete"
    );
    // A reader starting from 0 (the uplink after a reconnect) gets only unacknowledged rows.
    let next = s.fetch_after(0, 100, 1 << 20).unwrap().unwrap();
    assert_eq!((next.first, next.last), (17, 20));
    // The PUBACK of a batch sent again changes nothing.
    s.commit_group(&[], &[(a.first, a.last)]).unwrap();
    assert_exact(&s);
    assert_eq!(s.stats().unwrap().depth, 4);
    assert!(s.reclaim_pending());
    assert_eq!(s.reclaim_all().unwrap(), 16);
    assert_eq!(counted(&s).2, 4);
    assert_exact(&s);
}

#[test]
fn ranges_not_handed_out_are_sized_from_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir.path().join("o.db"), 1 << 30);
    s.commit_group(&scans(0, 10), &[]).unwrap();
    // Out of order: rows 1..=5 are live, so 6..=8 cannot move the watermark; deleted alone.
    s.commit_group(&[], &[(6, 8)]).unwrap();
    assert_eq!(s.acked(), 0);
    assert_exact(&s);
    assert_eq!(counted(&s).2, 7);
    s.commit_group(&[], &[(1, 5)]).unwrap();
    assert_eq!(s.acked(), 5);
    // The gap 6..=8 holds no row: it does not stop the watermark.
    s.commit_group(&[], &[(9, 10)]).unwrap();
    assert_eq!(s.acked(), 10);
    assert_exact(&s);
    assert_eq!(s.stats().unwrap().depth, 0);
    assert!(s.fetch_after(0, 100, 1 << 20).unwrap().is_none());
    // A range past the last seq given acknowledges only the rows that exist: rows appended
    // later are live.
    s.commit_group(&scans(10, 2), &[]).unwrap();
    s.commit_group(&[], &[(11, 15)]).unwrap();
    assert_eq!(s.acked(), 12);
    s.commit_group(&scans(20, 3), &[]).unwrap();
    assert_exact(&s);
    assert_eq!(s.stats().unwrap().depth, 3);
}

#[test]
fn an_eviction_under_a_handed_batch_keeps_the_totals_exact() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir.path().join("o.db"), 12_000);
    s.commit_group(&scans(0, 10), &[]).unwrap();
    let a = s.fetch_after(0, 10, 1 << 20).unwrap().unwrap();
    // Over the quota: the eviction takes rows of the batch on its way to the broker.
    for i in 0..10 {
        s.commit_group(&scans(100 + i * 5, 5), &[]).unwrap();
    }
    assert!(counted(&s).2 < 60, "something was evicted");
    s.commit_group(&[], &[(a.first, a.last)]).unwrap();
    assert_exact(&s);
    let st = s.stats().unwrap();
    assert!(st.bytes <= 12_000, "{st:?}");
}

#[test]
fn a_crash_between_the_watermark_and_the_range_delete_resends_exactly_the_unacked_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    let mut s = open(&path, 1 << 30);
    s.commit_group(&scans(0, 30), &[]).unwrap();
    let a = s.fetch_after(0, 12, 1 << 20).unwrap().unwrap();
    s.commit_group(&[], &[(a.first, a.last)]).unwrap();
    let before = s.stats().unwrap();
    // The process dies here: the watermark is committed, no row was deleted yet. A connection
    // dropped without its close is the nearest a unit test gets (tests/watermark.rs kills
    // the daemon itself).
    std::mem::forget(s);
    let mut s = open(&path, 1 << 30);
    assert_eq!(s.acked(), 12);
    assert_eq!(
        s.stats().unwrap(),
        before,
        "the totals came back as committed"
    );
    assert_eq!(counted(&s).2, 30, "the dead rows are still in the file");
    assert_exact(&s);
    let all = s.fetch_after(0, 1000, 1 << 24).unwrap().unwrap();
    assert_eq!(
        (all.first, all.last, all.count),
        (13, 30, 18),
        "exactly the unacked rows"
    );
    assert!(s.reclaim_pending());
    s.reclaim_all().unwrap();
    assert_eq!(counted(&s).2, 18);
    // Reopened once more: nothing left to reclaim, the count goes on.
    drop(s);
    let mut s = open(&path, 1 << 30);
    assert!(!s.reclaim_pending());
    assert_eq!(s.commit_group(&scans(50, 1), &[]).unwrap(), vec![31]);
}
