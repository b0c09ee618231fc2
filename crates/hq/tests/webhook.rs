//! The webhook sink against a local receiver (`common::webhook`) that verifies each request's
//! HMAC-SHA256 signature and CloudEvents headers, answers 429 with `Retry-After`, 500 and a
//! permanent 422, and counts every event it takes by its `Idempotency-Key`: nothing forwarded
//! twice, nothing skipped, the refused events parked and counted.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::webhook::{Answer, Receiver};
use phygate_hq::metrics::{Shared, SinkFigures, Stats};
use phygate_hq::sink::config::{Secret, SinkConfig, SinkKind};
use phygate_hq::sink::mapping::Mapping;
use phygate_hq::sink::runner::SinkRunner;
use phygate_hq::store::sqlite::{SqliteStore, Synchronous};
use phygate_hq::store::{Group, JourneyStore, SinkLedger};
use serde_json::json;
use tokio::sync::watch;

fn id(i: u64) -> String {
    format!("00000000-0000-7000-8000-{i:012}")
}

/// `count` visit events of store s1; event `i` is anonymous when `i % 4 == 0`.
fn commit_events(path: &Path, count: u64) {
    let items: Vec<serde_json::Value> = (0..count)
        .map(|i| {
            let mut e = json!({
                "specversion": "1.0", "id": id(i), "source": "/stores/s1/stations/door",
                "type": "store.visit.started",
                "time": format!("2026-11-23T05:00:{:02}.{:03}Z", i / 1000 % 60, i % 1000),
                "datacontenttype": "application/json", "storeid": "s1", "stationid": "door",
                "gatewayid": "gw1", "seq": i + 1, "idsource": "session", "stage": "entry",
                "clocksync": true, "data": {"visit": format!("v-{i}")}
            });
            if i % 4 != 0 {
                e["userid"] = json!(format!("u-{i}"));
            }
            e
        })
        .collect();
    let topic = phygate_proto::topic::events("acme", "s1");
    let accepted: Vec<_> =
        phygate_hq::ingest::read_batch(&topic, &serde_json::to_vec(&items).unwrap())
            .into_iter()
            .map(|r| r.expect("a valid event"))
            .collect();
    let mut store = SqliteStore::open(path, Synchronous::Normal).unwrap();
    store
        .commit(&Group {
            accepted: &accepted,
            parked: &[],
            reports: &[],
            gateways: vec![],
            now_ms: 0,
        })
        .unwrap();
}

fn webhook(name: &str, url: String, anonymous: bool) -> SinkConfig {
    SinkConfig {
        name: name.into(),
        kind: SinkKind::Webhook,
        url,
        api_key: Secret("hook-secret".into()),
        batch: usize::MAX,
        timeout: Duration::from_secs(10),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        poll: Duration::from_millis(20),
        anonymous,
        mapping: Mapping::default(),
    }
}

fn figures(stats: &Shared, sink: &str) -> SinkFigures {
    stats
        .lock()
        .unwrap()
        .sinks
        .get(sink)
        .copied()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_forwards_each_event_once_signed_and_parks_the_refused_ones() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hq.db");
    commit_events(&db, 40);
    let all = Receiver::new("hook-secret");
    all.script
        .lock()
        .unwrap()
        .extend([Answer::Ok, Answer::Throttle(1), Answer::Status500]);
    all.refuse.lock().unwrap().extend([id(3), id(8)]);
    let identified = Receiver::new("hook-secret");
    let (a, i) = (all.serve().await, identified.serve().await);
    let stats: Shared = Arc::new(Mutex::new(Stats::default()));
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    for config in [
        webhook("all", format!("http://{a}/hook"), true),
        webhook("identified", format!("http://{i}/hook"), false),
    ] {
        let ledger = SqliteStore::open(&db, Synchronous::Normal).unwrap();
        let runner =
            SinkRunner::new(&config, Box::new(ledger), stats.clone(), stopped.clone()).unwrap();
        tasks.push(tokio::spawn(runner.run()));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while figures(&stats, "all").cursor < 40 || figures(&stats, "identified").cursor < 40 {
        assert!(Instant::now() < deadline, "the sinks did not reach the end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    for t in tasks {
        t.await.unwrap().unwrap();
    }

    for r in [&all, &identified] {
        assert_eq!(
            *r.rejected.lock().unwrap(),
            Vec::<String>::new(),
            "signature or headers"
        );
        assert_eq!(r.twice(), 0, "an event forwarded twice");
    }
    let expected: Vec<String> = (0..40).filter(|i| ![3, 8].contains(i)).map(id).collect();
    assert_eq!(
        all.taken().into_keys().collect::<Vec<_>>(),
        expected,
        "skipped or extra"
    );
    let f = figures(&stats, "all");
    assert_eq!(
        (f.forwarded, f.parked, f.throttled, f.retries, f.ambiguous),
        (38, 2, 1, 1, 0),
        "{f:?}"
    );
    let mut store = SqliteStore::open(&db, Synchronous::Normal).unwrap();
    let parked: Vec<String> = store
        .sink_parked("all")
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(parked, vec![id(3), id(8)]);
    // The throttled request is repeated, unchanged, no earlier than its Retry-After.
    let requests = all.requests.lock().unwrap().clone();
    assert_eq!(
        (requests[1].2, requests[2].2, requests[3].2),
        (429, 500, 200)
    );
    assert_eq!(requests[1].1, requests[2].1);
    assert!(requests[2].0 >= requests[1].0 + Duration::from_secs(1));

    let only: Vec<String> = (0..40).filter(|i| i % 4 != 0).map(id).collect();
    assert_eq!(identified.taken().into_keys().collect::<Vec<_>>(), only);
    let f = figures(&stats, "identified");
    assert_eq!((f.forwarded, f.skipped), (30, 10), "{f:?}");
}
