//! The replay window on a real SQLite file: acknowledged rows stay (and replay) for the window,
//! their bytes are counted apart from the live ones, they are the first to go when live rows
//! need the room, and an eviction never names them.

use proptest::prelude::*;

use super::*;

fn open(path: &Path, max_bytes: u64, window: Duration) -> Store {
    let mut s = Store::open(
        path,
        Synchronous::Normal,
        Origin {
            store: "s1".into(),
            gateway: "gw".into(),
        },
        max_bytes,
        Duration::from_secs(3600),
    )
    .unwrap()
    .store;
    s.set_replay_window(window);
    s
}

fn scans(from: usize, n: usize, pad: usize) -> Vec<Event> {
    (from..from + n)
        .map(|i| super::fault_tests::scan(&format!("rt-{i}-{}", "z".repeat(pad)), None))
        .collect()
}

/// (live rows, live bytes, dead rows, dead bytes) as a scan of the file finds them.
fn counted(s: &Store) -> (u64, u64, u64, u64) {
    s.conn
        .query_row(
            "SELECT count(*) FILTER (WHERE seq > ?1), \
             coalesce(sum(octet_length(body)) FILTER (WHERE seq > ?1), 0), \
             count(*) FILTER (WHERE seq <= ?1), \
             coalesce(sum(octet_length(body)) FILTER (WHERE seq <= ?1), 0) FROM outbox",
            [s.acked() as i64],
            |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                    r.get::<_, i64>(3)? as u64,
                ))
            },
        )
        .unwrap()
}

fn assert_exact(s: &Store) {
    let st = s.stats().unwrap();
    let (rows, bytes, _, dead_bytes) = counted(s);
    assert_eq!((st.depth, st.bytes), (rows, bytes), "live totals are exact");
    assert_eq!(s.retained_bytes(), dead_bytes, "retained bytes are exact");
}

/// Publishes and acknowledges everything live, batch by batch, as the uplink would.
fn ack_all(s: &mut Store) {
    while let Some(b) = s.fetch_after(0, 16, 1 << 20).unwrap() {
        s.commit_group(&[], &[(b.first, b.last)]).unwrap();
    }
}

#[test]
fn acknowledged_rows_stay_for_the_window_and_replay_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir.path().join("o.db"), 1 << 30, Duration::from_secs(3600));
    s.commit_group(&scans(0, 20, 10), &[]).unwrap();
    let a = s.fetch_after(0, 16, 1 << 20).unwrap().unwrap();
    s.commit_group(&[], &[(a.first, a.last)]).unwrap();
    assert_eq!(s.acked(), 16);
    assert_exact(&s);
    assert_eq!(s.reclaim_step().unwrap(), 0, "the window keeps them");
    assert!(!s.reclaim_pending());
    assert!(!s.reclaim_overdue());
    let due = s.reclaim_due_in().unwrap();
    assert!(
        due > Duration::from_secs(3500),
        "due in about the window: {due:?}"
    );

    let r = s.replay_range(1, 20, 8, 1 << 20).unwrap();
    assert_eq!((r.rows, r.batches.len()), (20, 3));
    assert!(r.missing.is_empty());
    let v: Vec<serde_json::Value> = serde_json::from_slice(&r.batches[0].payload).unwrap();
    assert_eq!(v[0]["seq"], 1);
    // A read: the uplink's next batch is still the first unacknowledged row.
    let next = s.fetch_after(0, 100, 1 << 20).unwrap().unwrap();
    assert_eq!((next.first, next.last), (17, 20));

    // Room needed (or the disk full): they go before the window ends.
    assert_eq!(s.reclaim_all().unwrap(), 16);
    assert_exact(&s);
    assert_eq!(s.retained_bytes(), 0);
    let r = s.replay_range(1, 25, 100, 1 << 20).unwrap();
    assert_eq!(r.rows, 4);
    assert_eq!(r.missing, vec![[1, 16], [21, 25]]);
}

#[test]
fn a_zero_window_reclaims_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir.path().join("o.db"), 1 << 30, Duration::ZERO);
    s.commit_group(&scans(0, 10, 10), &[]).unwrap();
    ack_all(&mut s);
    assert!(s.reclaim_pending());
    assert_eq!(s.reclaim_step().unwrap(), 10);
    assert_exact(&s);
    assert_eq!(s.reclaim_due_in(), None);
}

#[test]
fn the_window_survives_a_reopen_and_the_retained_bytes_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    let mut s = open(&path, 1 << 30, Duration::from_secs(3600));
    s.commit_group(&scans(0, 12, 30), &[]).unwrap();
    ack_all(&mut s);
    let kept = s.retained_bytes();
    assert!(kept > 0);
    drop(s);
    let mut s = open(&path, 1 << 30, Duration::from_secs(3600));
    assert_eq!(s.retained_bytes(), kept);
    assert_eq!(s.reclaim_step().unwrap(), 0, "kept a window from the open");
    assert_eq!(s.replay_range(1, 12, 100, 1 << 20).unwrap().rows, 12);
    assert_exact(&s);
}

#[test]
fn retained_rows_go_before_any_live_row_is_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let quota = 64 * 1024;
    let mut s = open(&dir.path().join("o.db"), quota, Duration::from_secs(3600));
    // About 40 KiB acknowledged and kept.
    s.commit_group(&scans(0, 100, 300), &[]).unwrap();
    ack_all(&mut s);
    let acked = s.acked();
    assert!(s.retained_bytes() > 30 * 1024);
    // Live rows take 30 KiB more: together over the quota, live alone under it.
    s.commit_group(&scans(100, 75, 300), &[]).unwrap();
    assert!(s.stats().unwrap().bytes < quota);
    assert!(s.retained_over_quota());
    while s.retained_over_quota() {
        assert!(s.reclaim_for_room().unwrap() > 0);
    }
    assert_exact(&s);
    assert!(s.stats().unwrap().bytes + s.retained_bytes() <= quota);
    // Everything left is live: nothing was evicted, nothing announced.
    let reports: i64 = s
        .conn
        .query_row(
            "SELECT count(*) FROM outbox WHERE json_extract(body, '$.type') = 'store.outbox.evicted'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(reports, 0);

    // Ack the live rows (kept again), then live rows alone over the quota in one group: the
    // kept rows go in that group's transaction, and the eviction names live rows only.
    ack_all(&mut s);
    let acked2 = s.acked();
    assert!(acked2 > acked);
    s.commit_group(&scans(200, 250, 300), &[]).unwrap();
    assert_exact(&s);
    assert_eq!(counted(&s).2, 0, "no acknowledged row is left");
    let ranges: Vec<String> = s
        .conn
        .prepare(
            "SELECT json_extract(body, '$.data.ranges') FROM outbox \
             WHERE json_extract(body, '$.type') = 'store.outbox.evicted'",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert!(!ranges.is_empty(), "live rows over the quota were evicted");
    for r in ranges {
        let r: Vec<[u64; 2]> = serde_json::from_str(&r).unwrap();
        assert!(
            r.iter().all(|[a, _]| *a > acked2),
            "only live rows are announced: {r:?}"
        );
    }
}

#[derive(Debug, Clone)]
enum Op {
    Append(usize),
    /// Publish and acknowledge up to this many batches.
    Ack(usize),
    Room,
    Replay(u64, u64),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1usize..40).prop_map(Op::Append),
        3 => (1usize..4).prop_map(Op::Ack),
        1 => Just(Op::Room),
        2 => (1u64..200, 0u64..60).prop_map(|(a, n)| Op::Replay(a, a + n)),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Whatever the appends, acknowledgements, room needs and reopens: the live totals and the
    /// retained bytes stay exact, and a replay returns exactly the asked rows the file holds,
    /// naming the rest as missing.
    #[test]
    fn totals_stay_exact_and_replays_return_what_the_file_holds(ops in proptest::collection::vec(op(), 1..30)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let window = Duration::from_secs(3600);
        let mut s = open(&path, 1 << 30, window);
        let mut n = 0;
        for op in ops {
            match op {
                Op::Append(k) => {
                    s.commit_group(&scans(n, k, n % 50), &[]).unwrap();
                    n += k;
                }
                Op::Ack(batches) => {
                    for _ in 0..batches {
                        let Some(b) = s.fetch_after(0, 7, 1 << 20).unwrap() else { break };
                        s.commit_group(&[], &[(b.first, b.last)]).unwrap();
                    }
                }
                Op::Room => {
                    s.reclaim_for_room().unwrap();
                }
                Op::Replay(a, b) => {
                    let r = s.replay_range(a, b, 5, 1 << 20).unwrap();
                    let held: Vec<u64> = s.conn
                        .prepare("SELECT seq FROM outbox WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq").unwrap()
                        .query_map([a as i64, b as i64], |r| r.get::<_, i64>(0)).unwrap()
                        .map(|x| x.unwrap() as u64).collect();
                    let mut got = Vec::new();
                    for batch in &r.batches {
                        prop_assert!(batch.count <= 5);
                        let v: Vec<serde_json::Value> = serde_json::from_slice(&batch.payload).unwrap();
                        got.extend(v.iter().map(|e| e["seq"].as_u64().unwrap()));
                    }
                    prop_assert_eq!(&got, &held);
                    prop_assert_eq!(r.rows, held.len() as u64);
                    prop_assert_eq!(r.missing, super::replay::missing_ranges(a, b, &held));
                }
                Op::Reopen => {
                    drop(s);
                    s = open(&path, 1 << 30, window);
                }
            }
            assert_exact(&s);
            // The window is an hour: nothing acknowledged went but by a need for room.
            prop_assert_eq!(s.reclaim_step().unwrap(), 0);
        }
    }
}
