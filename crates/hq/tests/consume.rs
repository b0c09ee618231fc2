//! phygate-hq against a real mosquitto and the gateway's own outbox and uplink: every event is
//! stored once, across a `kill -9` of HQ; rows deleted from a gateway's outbox behind its back
//! are reported as lost, exactly those seq values; an announced eviction is not a loss.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use common::{broker, identified, scan, wait_for, Edge, Hq};
use phygate::event::{Event, EventData, SkinDiagnosed, VisitStarted};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_event_is_stored_once_across_a_kill9_of_hq() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    let mut hq = Hq::start(&dir.path().join("hq"), broker.port, "30s");
    let mut edge = Edge::open(&dir.path().join("s1"), "s1", broker.port);
    edge.start_uplink();

    // A user's journey first, for the user view.
    let mut visit = Event::new(
        "entrance".into(),
        SystemTime::now(),
        EventData::VisitStarted(VisitStarted {
            visit: "v-1".into(),
        }),
    );
    visit.userid = Some("u-1".into());
    visit.stage = Some("entry");
    edge.append(visit).await;
    let mut diagnosis = Event::new(
        "kiosk".into(),
        SystemTime::now() + Duration::from_millis(5),
        EventData::SkinDiagnosed(SkinDiagnosed {
            model: "AX-200".into(),
            measures: [("moisture".to_string(), 41.5)].into(),
            extra: Default::default(),
            skin_type: Some("dry"),
            device_seq: None,
            device_time: None,
        }),
    );
    diagnosis.userid = Some("u-1".into());
    diagnosis.stage = Some("engage");
    edge.append(diagnosis).await;

    let mut last = 0;
    for round in 0..3 {
        for i in 0..200 {
            last = edge.append(scan(50 + i % 7)).await;
            if i % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        if round == 0 {
            // Killed while batches are arriving: whatever it had not committed and
            // acknowledged, the broker keeps for its session.
            wait_for(WAIT, "HQ stored some", || {
                !hq.stored("s1", "gw1").is_empty()
            });
            hq.kill9();
        }
        if round == 1 {
            hq.restart();
        }
    }
    wait_for(WAIT, "every event at HQ", || {
        hq.stored("s1", "gw1").len() as u64 == last
    });
    let stored = hq.stored("s1", "gw1");
    assert_eq!(
        stored.keys().copied().collect::<Vec<_>>(),
        (1..=last).collect::<Vec<_>>()
    );
    assert!(stored.values().all(|&n| n == 1), "an event stored twice");
    let rows: i64 = hq
        .db()
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows as u64, last);

    let losses = hq.query(&["losses"]);
    assert_eq!(losses.len(), 1, "{losses:?}");
    assert_eq!(losses[0]["last_seq"], last);
    assert_eq!(losses[0]["lost"], 0);
    assert_eq!(losses[0]["pending_ranges"].as_array().unwrap().len(), 0);

    let user = hq.query(&["user", "u-1"]);
    let journey = &user[0]["journey"];
    assert_eq!(journey["visit"]["visit"], "v-1", "{user:?}");
    assert_eq!(journey["stage"]["stage"], "engage");
    assert_eq!(journey["diagnosis"]["data"]["skin_type"], "dry");

    edge.stop_uplink().await;
    assert!(hq.terminate(), "SIGTERM exits cleanly:\n{}", hq.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_deleted_behind_the_outbox_are_lost_and_announced_evictions_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    let hq = Hq::start(&dir.path().join("hq"), broker.port, "1s");
    let mut edge = Edge::open(&dir.path().join("s1"), "s1", broker.port);

    // Offline for now: identified events, three of them then deleted behind the outbox's back.
    for _ in 0..10 {
        edge.append(identified("u-7", 20)).await;
    }
    edge.delete_behind_its_back(&[4, 5, 8]);
    // Then more anonymous bytes than the 1 MiB quota: the outbox evicts the oldest of them
    // and announces it with store.outbox.evicted.
    for _ in 0..70 {
        edge.append(scan(20 * 1024)).await;
    }
    let mut last = 0;
    for _ in 0..5 {
        last = edge.append(identified("u-7", 20)).await;
    }
    let outbox = rusqlite::Connection::open(&edge.config.outbox.path).unwrap();
    let announced: Vec<String> = outbox
        .prepare("SELECT body FROM outbox WHERE body LIKE '%store.outbox.evicted%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        !announced.is_empty(),
        "the quota evicted nothing: the test needs an eviction"
    );
    let mut evicted = BTreeSet::new();
    for body in &announced {
        let e: serde_json::Value = serde_json::from_str(body).unwrap();
        for r in e["data"]["ranges"].as_array().unwrap() {
            evicted.extend(r[0].as_u64().unwrap()..=r[1].as_u64().unwrap());
        }
    }

    edge.start_uplink();
    wait_for(WAIT, "the last event at HQ", || {
        hq.stored("s1", "gw1").contains_key(&last)
    });
    // The grace is 1 s: then the holes nobody announced are lost, and only they.
    wait_for(WAIT, "the loss reported", || {
        hq.query(&["losses"])
            .first()
            .is_some_and(|g| g["lost"] == 3)
    });
    std::thread::sleep(Duration::from_millis(1500));
    let g = &hq.query(&["losses"])[0];
    assert_eq!(g["store"], "s1");
    assert_eq!(g["lost_ranges"], serde_json::json!([[4, 5], [8, 8]]), "{g}");
    assert_eq!(g["evicted"], evicted.len() as u64, "{g}");
    assert_eq!(g["pending_ranges"], serde_json::json!([]), "{g}");
    let stored: BTreeSet<u64> = hq.stored("s1", "gw1").keys().copied().collect();
    let expected: BTreeSet<u64> = (1..=last)
        .filter(|s| ![4, 5, 8].contains(s) && !evicted.contains(s))
        .collect();
    assert_eq!(stored, expected);

    let metrics = hq.metrics();
    assert!(
        metrics.contains("phygate_hq_lost_events{tenant=\"acme\",store=\"s1\",gateway=\"gw1\"} 3"),
        "{metrics}"
    );
    let log = hq.log();
    let line = log
        .lines()
        .find(|l| l.contains("events lost"))
        .unwrap_or_else(|| panic!("no loss line in:\n{log}"));
    assert!(
        line.contains("store=s1") && line.contains("[4, 5]") && line.contains("[8, 8]"),
        "{line}"
    );
    edge.stop_uplink().await;
}
