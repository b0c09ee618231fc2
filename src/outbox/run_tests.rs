//! Tests of the outbox thread: group state order, durable state writes, a file found corrupt
//! while running.

use super::*;
use crate::event::Event;
use std::time::SystemTime;

fn appends(n: usize) -> Appends {
    let mut a = Appends::default();
    for i in 0..n {
        a.events.push(
            Event::new(
                "s".into(),
                SystemTime::now(),
                crate::event::EventData::OutboxEvicted(crate::event::OutboxEvicted {
                    ranges: Vec::new(),
                    count: 0,
                    policy: "bytes",
                }),
            )
            .prepare(&Origin {
                store: "st".into(),
                gateway: "gw".into(),
            }),
        );
        a.states.push(vec![(format!("e{i}"), None)]);
        a.dones.push(None);
    }
    a
}

fn keys(w: Vec<StateWrite>) -> Vec<String> {
    w.into_iter().map(|(k, _)| k).collect()
}

#[test]
fn state_of_a_run_of_appends_keeps_arrival_order_and_each_write_once() {
    let a = appends(3);
    // PutState before append 0, between 1 and 2, and after the last append.
    let lone: Vec<(usize, StateWrite)> = vec![
        (0, ("l0".into(), None)),
        (2, ("l2".into(), None)),
        (3, ("l3".into(), None)),
    ];
    assert_eq!(
        keys(a.state_of(0, 3, &lone)),
        ["l0", "e0", "e1", "l2", "e2", "l3"]
    );
    // Split as the disk-full fallback splits a group: every write lands in one part.
    assert_eq!(keys(a.state_of(0, 2, &lone)), ["l0", "e0", "e1"]);
    assert_eq!(keys(a.state_of(2, 3, &lone)), ["l2", "e2", "l3"]);
    // A group of lone writes only.
    assert_eq!(keys(appends(0).state_of(0, 0, &lone[..1])), ["l0"]);
}

#[tokio::test]
async fn put_states_durable_answers_after_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let config = OutboxConfig {
        path: dir.path().join("o.db"),
        synchronous: crate::outbox::Synchronous::Full,
        max_bytes: 1 << 20,
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
    handle
        .put_states_durable(vec![("k".into(), Some(b"v".to_vec()))])
        .await
        .unwrap();
    // Another connection sees it at once: committed, not merely queued.
    let other = rusqlite::Connection::open(&config.path).unwrap();
    let v: Vec<u8> = other
        .query_row("SELECT value FROM state WHERE key = 'k'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, b"v");
    drop(handle);
    thread.join().unwrap();
}

fn config(dir: &std::path::Path) -> OutboxConfig {
    OutboxConfig {
        path: dir.join("o.db"),
        synchronous: crate::outbox::Synchronous::Full,
        max_bytes: 1 << 30,
        max_age: Duration::from_secs(3600),
        max_file_bytes: None,
        replay_window: std::time::Duration::ZERO,
    }
}

fn scan(payload: &str) -> Event {
    Event::new(
        "k1".into(),
        SystemTime::now(),
        crate::event::EventData::QrScanned(crate::event::QrScanned {
            kind: "other",
            symbology: "qr",
            aim: None,
            payload: Some(payload.into()),
            kid: None,
            jti: None,
            verdict: None,
            gate_opened: None,
        }),
    )
}

#[tokio::test]
async fn a_file_found_corrupt_after_the_start_is_moved_aside_and_what_came_since_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let origin = crate::event::Origin {
        store: "s".into(),
        gateway: "g".into(),
    };
    {
        // A backlog, folded into the main file, then pages in its middle garbled as by a
        // failing card (a truncated file is found at the open: its header says how long it is).
        let mut s = Store::open(
            &config.path,
            config.synchronous,
            origin.clone(),
            config.max_bytes,
            config.max_age,
        )
        .unwrap()
        .store;
        let backlog: Vec<Event> = (0..3000).map(|i| scan(&format!("old-{i:04}"))).collect();
        s.commit_group(&backlog, &[]).unwrap();
        s.commit_group_with_state(&[], &[], &[("k".into(), Some(b"v".to_vec()))])
            .unwrap();
        // The last close folds the WAL into the file.
    }
    let mut damaged = std::fs::read(&config.path).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle..middle + 16_384].fill(0xa5);
    std::fs::write(&config.path, &damaged).unwrap();

    // The open reads only the small tables: it serves at once.
    let (outbox, handle) = Outbox::open(&config, origin).unwrap();
    assert!(outbox.quarantined.is_none());
    let thread = outbox.spawn().unwrap();
    let seq = handle.append(scan("after-start")).await.unwrap();
    assert_eq!(seq, 3001, "the seq count goes on");

    // The background check finds the damage; the file goes aside with its WAL, untouched.
    let moved = loop {
        let found: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| {
                n.starts_with("o.db.corrupt-") && !n.contains("-wal") && !n.contains("-shm")
            })
            .collect();
        if let Some(name) = found.first() {
            break dir.path().join(name);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        std::fs::read(&moved).unwrap(),
        damaged,
        "moved, not rewritten"
    );
    let batch = loop {
        // The fresh file: the event accepted since the start, then the report of the move.
        let b = handle.fetch_after(0, 100, 1 << 20).await.unwrap();
        if let Some(b) = b.filter(|b| b.count == 2) {
            break b;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&batch.payload).unwrap();
    assert_eq!(rows[0]["data"]["payload"], "after-start");
    assert_eq!(rows[0]["seq"], 3001);
    assert_eq!(rows[1]["type"], "store.device.status");
    assert_eq!(rows[1]["data"]["device"], "outbox");
    assert!(rows[1]["data"]["reason"]
        .as_str()
        .unwrap()
        .contains(moved.file_name().unwrap().to_str().unwrap()));
    assert_eq!(batch.last, 3002);
    assert_eq!(handle.state_value("k").await.unwrap(), Some(b"v".to_vec()));
    let after = handle.append(scan("later")).await.unwrap();
    assert_eq!(after, 3003);
    drop(handle);
    thread.join().unwrap();
    let fresh = rusqlite::Connection::open(&config.path).unwrap();
    let check: String = fresh
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

#[tokio::test]
async fn stats_say_when_the_opens_integrity_check_is_done() {
    let dir = tempfile::tempdir().unwrap();
    let origin = || Origin {
        store: "s".into(),
        gateway: "g".into(),
    };
    let (outbox, handle) = Outbox::open(&config(dir.path()), origin()).unwrap();
    let thread = outbox.spawn().unwrap();
    // The verdict comes back through the queue: "checking" clears only then, and an append
    // meanwhile is served as usual.
    handle.append(scan("a")).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while handle.stats().await.unwrap().checking {
        assert!(
            std::time::Instant::now() < deadline,
            "the check never reported"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(handle.stats().await.unwrap().depth, 1);
    drop(handle);
    thread.join().unwrap();
}

/// The committed watermark, read by another connection (what a crash would leave).
fn file_watermark(path: &std::path::Path) -> u64 {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row("SELECT value FROM meta WHERE key = 'acked'", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap() as u64
}

#[tokio::test]
async fn a_waiting_fetch_is_answered_by_the_commit_that_brings_rows() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin {
        store: "s".into(),
        gateway: "g".into(),
    };
    let (outbox, handle) = Outbox::open(&config(dir.path()), origin).unwrap();
    let thread = outbox.spawn().unwrap();
    assert!(
        handle
            .fetch_batches(0, 4, 100, 1 << 20)
            .await
            .unwrap()
            .is_empty(),
        "a plain fetch answers empty at once"
    );
    let waiting = {
        let h = handle.clone();
        tokio::spawn(async move { h.next_batches(0, 4, 100, 1 << 20).await })
    };
    // A waiting fetch given up (the uplink's connection dropped) is forgotten, not answered.
    let given_up = {
        let h = handle.clone();
        tokio::spawn(async move { h.next_batches(0, 4, 100, 1 << 20).await })
    };
    given_up.abort();
    // Queued behind both fetches: they are parked by the time the append is served.
    let seq = handle.append(scan("a")).await.unwrap();
    let batches = waiting.await.unwrap().unwrap();
    assert_eq!(batches.len(), 1);
    assert_eq!((batches[0].first, batches[0].last), (seq, seq));
    drop(handle);
    thread.join().unwrap();
}

#[tokio::test]
async fn a_lone_ack_is_committed_with_the_next_append_or_alone_after_the_linger() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let origin = Origin {
        store: "s".into(),
        gateway: "g".into(),
    };
    let (outbox, handle) = Outbox::open(&config, origin).unwrap();
    let thread = outbox.spawn().unwrap();
    let first = handle.append(scan("a")).await.unwrap();
    let b = handle.fetch_after(0, 100, 1 << 20).await.unwrap().unwrap();
    handle.ack(b.first, b.last).await.unwrap();
    // The next append's commit carries the acknowledgement queued before it.
    let second = handle.append(scan("b")).await.unwrap();
    assert_eq!(file_watermark(&config.path), first);
    // A read of the totals sees an acknowledgement applied at once.
    handle.ack(second, second).await.unwrap();
    assert_eq!(handle.stats().await.unwrap().depth, 0);
    assert_eq!(file_watermark(&config.path), second);
    // Alone, with nothing after it: committed once it has waited ACK_LINGER.
    let third = handle.append(scan("c")).await.unwrap();
    handle.ack(third, third).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while file_watermark(&config.path) != third {
        assert!(
            std::time::Instant::now() < deadline,
            "a lone acknowledgement was never committed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(handle);
    thread.join().unwrap();
}

#[tokio::test]
async fn acknowledgements_still_deferred_at_shutdown_are_committed() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let origin = Origin {
        store: "s".into(),
        gateway: "g".into(),
    };
    let (outbox, handle) = Outbox::open(&config, origin).unwrap();
    let thread = outbox.spawn().unwrap();
    let seq = handle.append(scan("a")).await.unwrap();
    handle.ack(seq, seq).await.unwrap();
    drop(handle);
    thread.join().unwrap();
    assert_eq!(file_watermark(&config.path), seq);
}
