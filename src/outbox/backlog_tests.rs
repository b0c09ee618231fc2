//! Tests of what a large backlog must not cost: totals kept in `meta` (no scan at the open),
//! state lookups by key range, evictions spread over bounded commits.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::*;
use crate::outbox::StateWrite;

fn open(path: &Path, max_bytes: u64) -> Store {
    Store::open(
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
    .store
}

fn scan(payload: &str, user: Option<&str>) -> Event {
    super::fault_tests::scan(payload, user)
}

/// The totals as a full scan finds them: the live rows, above the watermark.
fn counted(s: &Store) -> (u64, u64) {
    let (rows, bytes): (i64, i64) = s
        .conn
        .query_row(
            "SELECT count(*), coalesce(sum(octet_length(body)), 0) FROM outbox WHERE seq > ?1",
            [s.acked() as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    (rows as u64, bytes as u64)
}

#[test]
fn totals_in_meta_follow_appends_acks_evictions_and_expiry_across_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    let mut s = open(&path, 30_000);
    for i in 0..300 {
        let user = (i % 3 == 0).then_some("u1");
        s.commit_group(&[scan(&format!("{i}-{}", "x".repeat(i % 50)), user)], &[])
            .unwrap();
        if i % 7 == 0 {
            let first = s.fetch_after(0, 1, 1 << 20).unwrap().unwrap().first;
            s.commit_group(&[], &[(first, first + 2)]).unwrap();
        }
    }
    let mut old = scan("old", None);
    old.time = SystemTime::now() - Duration::from_secs(7200);
    old.clocksync = true;
    s.commit_group(&[old], &[]).unwrap();
    s.expire(SystemTime::now()).unwrap();
    let st = s.stats().unwrap();
    assert_eq!((st.depth, st.bytes), counted(&s));
    drop(s);
    let mut s = open(&path, 30_000);
    let reopened = s.stats().unwrap();
    assert_eq!(reopened, st, "the open reads the totals back");
    assert_eq!((reopened.depth, reopened.bytes), counted(&s));
    assert!(s.acked() > 0, "acknowledgements moved the watermark");
    s.reclaim_all().unwrap();
    let all: i64 = s
        .conn
        .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        all as u64, st.depth,
        "only live rows are left once reclaimed"
    );
}

#[test]
fn a_file_written_before_the_totals_existed_gets_them_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.db");
    let mut s = open(&path, 1 << 30);
    s.commit_group(&[scan("a", None), scan("bb", None), scan("ccc", None)], &[])
        .unwrap();
    let st = s.stats().unwrap();
    // As a version-2 file: no totals in meta.
    s.conn
        .execute_batch(
            "DELETE FROM meta WHERE key IN ('rows', 'bytes', 'acked', 'retained'); \
             PRAGMA user_version = 2;",
        )
        .unwrap();
    drop(s);
    let s = open(&path, 1 << 30);
    assert_eq!(s.stats().unwrap(), st);
}

#[test]
fn successor_bounds_exactly_the_keys_under_a_prefix() {
    assert_eq!(successor("ingest/pc-1/").as_deref(), Some("ingest/pc-10"));
    assert_eq!(successor("a\u{10FFFF}").as_deref(), Some("b"));
    assert_eq!(successor("\u{D7FF}").as_deref(), Some("\u{E000}"));
    assert_eq!(successor("\u{10FFFF}"), None);
    assert_eq!(successor(""), None);
}

#[test]
fn state_scan_finds_the_keys_under_a_prefix_and_no_others() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir.path().join("o.db"), 1 << 30);
    let keys = [
        "gate/g1",
        "gate/g10",
        "gate/g1/x",
        "gate/g2",
        "gate0",
        "gate",
        "gatf",
        "ü/1",
        "ü",
        "\u{10FFFF}/a",
    ];
    let writes: Vec<StateWrite> = keys
        .iter()
        .map(|k| (k.to_string(), Some(b"v".to_vec())))
        .collect();
    s.commit_group_with_state(&[], &[], &writes).unwrap();
    let found = |p: &str| -> Vec<String> {
        s.scan_state(p)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    };
    assert_eq!(found("gate/g1"), ["gate/g1", "gate/g1/x", "gate/g10"]);
    assert_eq!(
        found("gate/"),
        ["gate/g1", "gate/g1/x", "gate/g10", "gate/g2"]
    );
    assert_eq!(found("ü"), ["ü", "ü/1"]);
    assert_eq!(found("\u{10FFFF}"), ["\u{10FFFF}/a"]);
    assert_eq!(found("").len(), keys.len());
    assert_eq!(s.get_state("gate/g1").unwrap(), Some(b"v".to_vec()));
}

#[test]
fn state_lookups_use_the_key_index() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("o.db"), 1 << 30);
    let plan = |sql: &str| -> String {
        let mut q = s
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        let rows = q
            .query_map(["a", "b"], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<Vec<_>>>()
            .unwrap();
        rows.join("; ")
    };
    let range = plan("SELECT key, value FROM state WHERE key >= ?1 AND key < ?2 ORDER BY key");
    assert!(range.contains("SEARCH state USING PRIMARY KEY"), "{range}");
    let exact = plan("SELECT value FROM state WHERE key = ?1 AND ?2 IS NOT NULL");
    assert!(exact.contains("SEARCH state USING PRIMARY KEY"), "{exact}");
}

#[test]
fn a_large_eviction_is_spread_over_bounded_commits_and_finishes_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let quota = 200_000;
    let mut s = open(&dir.path().join("o.db"), quota);
    s.set_evict_step(10);
    // Just under the quota, then one group over it: 10 % of the quota is far more than one
    // step of 10 rows.
    let mut i = 0;
    while s.stats().unwrap().bytes < quota - 2_000 {
        s.commit_group(&[scan(&format!("fill-{i}"), None)], &[])
            .unwrap();
        i += 1;
    }
    let before = s.stats().unwrap();
    s.commit_group(&[scan(&"x".repeat(3_000), None)], &[])
        .unwrap();
    let st = s.stats().unwrap();
    assert!(s.evicting(), "more to evict, in later commits");
    // That commit did at most one step: here a scan for telemetry rows (there are none) of
    // 4 × 10 seqs, so it is over the quota until the steps reach rows they may evict.
    let gone = before.depth + 2 - st.depth;
    assert!(gone <= 10, "one bounded step, not the whole 10 %: {gone}");
    let (mut steps, mut over, mut under) = (0, 0, false);
    while s.evicting() {
        let depth = s.stats().unwrap().depth;
        s.evict_step().unwrap();
        let now = s.stats().unwrap();
        assert!(
            depth + 1 - now.depth <= 10,
            "a step deletes at most its share"
        );
        if now.bytes > quota {
            assert!(!under, "once back under the quota, it stays there");
            over += 1;
        } else {
            under = true;
        }
        steps += 1;
        assert!(steps < 1_000);
    }
    // Passing over the ~560 seqs without telemetry takes ~14 steps of 40.
    assert!(over <= 16, "{over} steps over the quota");
    assert!(steps > 3, "{steps}");
    let end = s.stats().unwrap();
    // Down to the target, plus the last step's own report.
    assert!(
        end.bytes <= quota / 100 * EVICT_TO_PERCENT + 1_000,
        "{end:?}"
    );
    assert_eq!((end.depth, end.bytes), counted(&s));
    // Every seq is kept or named by a report.
    let rows: Vec<serde_json::Value> = serde_json::from_slice(
        &s.fetch_after(0, 1_000_000, usize::MAX)
            .unwrap()
            .unwrap()
            .payload,
    )
    .unwrap();
    let named: u64 = rows
        .iter()
        .filter(|e| e["type"] == "store.outbox.evicted")
        .map(|e| e["data"]["count"].as_u64().unwrap())
        .sum();
    let reports = rows
        .iter()
        .filter(|e| e["type"] == "store.outbox.evicted")
        .count() as u64;
    assert_eq!(named + rows.len() as u64 - reports, end.last_seq - reports);
}

#[test]
fn an_eviction_under_way_goes_back_for_lower_priority_rows_that_came_in() {
    let dir = tempfile::tempdir().unwrap();
    let quota = 100_000;
    let mut s = open(&dir.path().join("o.db"), quota);
    s.set_evict_step(10);
    // Identified rows only, then over the quota: the eviction works through priority 2.
    while !s.evicting() {
        s.commit_group(&[scan("identified", Some("u1"))], &[])
            .unwrap();
    }
    assert!(s.evicting());
    // An anonymous row comes in: it goes before any identified one.
    let seq = s.commit_group(&[scan("anonymous", None)], &[]).unwrap()[0];
    let kept = s.fetch_after(seq - 1, 1, 1 << 20).unwrap().unwrap();
    assert_ne!(kept.first, seq, "the anonymous row was evicted first");
}

#[test]
fn expiry_of_a_large_backlog_is_spread_over_bounded_commits() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir.path().join("o.db"), 1 << 30);
    s.set_evict_step(25);
    let old: Vec<Event> = (0..100)
        .map(|i| {
            let mut e = scan(&format!("old-{i}"), None);
            e.time = SystemTime::now() - Duration::from_secs(7200);
            e.clocksync = true;
            e
        })
        .collect();
    s.commit_group(&old, &[]).unwrap();
    let mut runs = Vec::new();
    loop {
        let n = s.expire(SystemTime::now()).unwrap();
        runs.push(n);
        if (n as usize) < s.step() {
            break;
        }
    }
    assert_eq!(runs, [25, 25, 25, 25, 0]);
    assert_eq!(s.stats().unwrap().depth, 4, "the four reports");
}
