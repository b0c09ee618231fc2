//! Loss repair with real parts: a real mosquitto that loses what it acknowledged (killed -9
//! while it queues events for HQ's offline session, and restarted without persistence), the
//! gateway's real outbox, uplink, link and downlink, and the built `phygate-hq` with
//! `[repair]`. The events the broker PUBACKed and then lost come back by replay and nothing is
//! lost; a gateway whose replay window no longer holds them makes HQ declare them lost at
//! once, saying why. The holes at either end of what HQ received (a quiet store's last
//! events, a store's first ones before HQ ran) come from the store's status `seq` report.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{scan, wait_for, Edge, Hq};
use phygate::sim::broker::Mosquitto;

const WAIT: Duration = Duration::from_secs(90);
/// Far longer than the test waits for the repair: a loss declared in the test comes from the
/// gateway's answer, never from the grace.
const GRACE: &str = "10m";
/// Events before the loss, lost by the broker, and after it.
const BEFORE: u64 = 20;
const LOST: u64 = 30;
const AFTER: u64 = 10;

/// A broker whose PUBACK means "queued in memory": no persistence, so a kill -9 loses the
/// messages it holds for an offline session (mosquitto's own persistence only narrows this to
/// the last autosave; without it the loss is certain, which the test needs).
fn forgetful_broker(dir: &Path) -> Mosquitto {
    Mosquitto::start_with(
        &dir.join("broker"),
        "allow_anonymous true\npersistence false\n",
    )
    .expect("mosquitto")
}

/// HQ with repair asked after 1 s, retried after 3 s.
fn hq(dir: &Path, port: u16) -> Hq {
    Hq::start_with(
        &dir.join("hq"),
        port,
        GRACE,
        &format!("hq-repair-{port}"),
        "[store]\npath = \"hq.db\"\n[repair]\nafter = \"1s\"\nretry = \"3s\"\n",
    )
}

/// Seqs `BEFORE+1..=BEFORE+LOST` reach the broker (PUBACKed: the outbox counts them as
/// delivered) while HQ is away, and the broker then dies with them. Then `after` more events
/// once HQ is back and consuming; returns the last seq appended.
async fn lose_after_puback(hq: &mut Hq, edge: &Edge, broker: &mut Mosquitto, after: u64) -> u64 {
    for _ in 0..BEFORE {
        edge.append(scan(40)).await;
    }
    wait_for(WAIT, "the first events at HQ", || {
        hq.stored("s1", "gw1").len() as u64 >= BEFORE
    });
    assert!(hq.terminate(), "HQ stopped cleanly");
    for _ in 0..LOST {
        edge.append(scan(40)).await;
    }
    // Acknowledged by the broker: nothing left live in the outbox.
    let deadline = tokio::time::Instant::now() + WAIT;
    while edge.live().await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "never acknowledged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    broker.stop(true);
    broker.restart().unwrap();
    hq.restart();
    let mut last = BEFORE + LOST;
    for _ in 0..after {
        last = edge.append(scan(40)).await;
    }
    last
}

/// `phygate-hq losses` for the store: (lost, recovered, pending ranges).
fn losses(hq: &Hq) -> (u64, u64, usize) {
    let lines = hq.query(&["losses"]);
    let Some(g) = lines.iter().find(|l| l["store"] == "s1") else {
        return (0, 0, 0);
    };
    (
        g["lost"].as_u64().unwrap(),
        g["recovered"].as_u64().unwrap(),
        g["pending_ranges"].as_array().unwrap().len(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_the_broker_lost_after_its_puback_are_replayed_and_none_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = forgetful_broker(dir.path());
    let mut hq = hq(dir.path(), broker.port);
    let mut edge = Edge::open(&dir.path().join("s1"), "s1", broker.port);
    edge.start_answering();

    let last = lose_after_puback(&mut hq, &edge, &mut broker, AFTER).await;
    // Every seq up to the last arrives: the lost ones by replay (the store's command results
    // have seqs of their own, after `last`).
    wait_for(WAIT, "every event at HQ, the lost ones replayed", || {
        let stored = hq.stored("s1", "gw1");
        (1..=last).all(|s| stored.contains_key(&s))
    });
    let stored = hq.stored("s1", "gw1");
    assert!(stored.values().all(|&n| n == 1), "an event stored twice");
    wait_for(WAIT, "the accounting settled", || losses(&hq).2 == 0);
    let (lost, recovered, _) = losses(&hq);
    assert_eq!(lost, 0, "nothing is lost");
    assert_eq!(
        recovered, LOST,
        "exactly the broker's loss came back by replay"
    );
    assert!(hq.metric("phygate_hq_replays_requested_total") >= 1);
    assert_eq!(hq.metric("phygate_hq_recovered_events_total"), LOST);
    assert!(hq.log().contains("replay requested"), "{}", hq.log());
    edge.stop_uplink().await;
}

/// The broker loses the store's last events and the store then goes quiet: no later event
/// shows HQ a hole. The store's status does (its `seq` report: acknowledged through
/// `BEFORE+LOST`), and the replay brings them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_last_events_before_a_store_goes_quiet_are_replayed_from_its_seq_report() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = forgetful_broker(dir.path());
    let mut hq = hq(dir.path(), broker.port);
    let mut edge = Edge::open(&dir.path().join("s1"), "s1", broker.port);
    edge.start_answering();

    let last = lose_after_puback(&mut hq, &edge, &mut broker, 0).await;
    wait_for(WAIT, "the lost last events at HQ, replayed", || {
        let stored = hq.stored("s1", "gw1");
        (1..=last).all(|s| stored.contains_key(&s))
    });
    wait_for(WAIT, "the accounting settled", || losses(&hq).2 == 0);
    let (lost, recovered, _) = losses(&hq);
    assert_eq!(lost, 0, "nothing is lost");
    assert_eq!(recovered, LOST, "the broker's loss came back by replay");
    edge.stop_uplink().await;
}

/// HQ starts after a store has run: the broker PUBACKed the store's first events and dropped
/// them (no subscriber yet). HQ's first event from the store is not its first; the store's
/// status (`held_from` 1) shows the numbers below, and the replay brings them from the store's
/// replay window.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_hq_never_heard_from_gives_it_what_it_still_holds_from_before() {
    let dir = tempfile::tempdir().unwrap();
    let broker = forgetful_broker(dir.path());
    let mut edge = Edge::open(&dir.path().join("s1"), "s1", broker.port);
    edge.start_answering();
    for _ in 0..BEFORE {
        edge.append(scan(40)).await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while edge.live().await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "never acknowledged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hq = hq(dir.path(), broker.port);
    let mut last = 0;
    for _ in 0..AFTER {
        last = edge.append(scan(40)).await;
    }
    wait_for(WAIT, "every event at HQ, the first ones replayed", || {
        let stored = hq.stored("s1", "gw1");
        (1..=last).all(|s| stored.contains_key(&s))
    });
    wait_for(WAIT, "the accounting settled", || losses(&hq).2 == 0);
    let (lost, recovered, _) = losses(&hq);
    assert_eq!(lost, 0);
    assert_eq!(recovered, BEFORE, "the events from before HQ, replayed");
    assert!(hq.stored("s1", "gw1").values().all(|&n| n == 1));
    edge.stop_uplink().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_range_the_store_no_longer_holds_is_declared_lost_at_once_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = forgetful_broker(dir.path());
    let mut hq = hq(dir.path(), broker.port);
    // No replay window: acknowledged rows go as soon as the outbox is idle.
    let mut edge = Edge::open_window(&dir.path().join("s1"), "s1", broker.port, "0s");
    edge.start_answering();

    lose_after_puback(&mut hq, &edge, &mut broker, AFTER).await;
    wait_for(WAIT, "the store's answer declared the range lost", || {
        losses(&hq).0 == LOST
    });
    let lines = hq.query(&["losses"]);
    let g = lines.iter().find(|l| l["store"] == "s1").unwrap();
    assert_eq!(
        g["lost_ranges"],
        serde_json::json!([[BEFORE + 1, BEFORE + LOST]])
    );
    assert_eq!(g["recovered"], 0);
    // Declared from the answer, long before the ten-minute grace, and the log says why.
    assert!(
        hq.log()
            .contains("the gateway answered it no longer holds them"),
        "{}",
        hq.log()
    );
    edge.stop_uplink().await;
}
