//! The journey store's contract, run on both backends: SQLite (a real file in a temp dir) and
//! PostgreSQL (a real server started in a temp dir, `common::pg`). Then what only a shared
//! PostgreSQL must hold: two writers committing at once never let a sink reading "above its
//! cursor" skip an event, their accounting of one gateway is merged, one consumer at a time
//! holds a sink, and a restarted server is reconnected to.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::pg::Postgres;
use phygate_hq::config::PgConfig;
use phygate_hq::ingest::{Accepted, GatewayKey};
use phygate_hq::seq::GatewaySeq;
use phygate_hq::store::postgres::PgStore;
use phygate_hq::store::sqlite::{SqliteStore, Synchronous};
use phygate_hq::store::{
    account, Group, JourneyStore, SinkLedger, SinkParked, SinkPosition, StoreError,
};

trait Store: JourneyStore + SinkLedger {}
impl Store for SqliteStore {}
impl Store for PgStore {}

fn key(gateway: &str) -> GatewayKey {
    GatewayKey {
        tenant: "t".into(),
        store: "s".into(),
        gateway: gateway.into(),
    }
}

fn event(gateway: &str, seq: u64, user: Option<&str>) -> Accepted {
    let id = format!("00000000-0000-7000-8000-{seq:012}");
    let time = format!(
        "2026-11-23T05:{:02}:{:02}.{:03}Z",
        seq / 60_000,
        seq / 1000 % 60,
        seq % 1000
    );
    Accepted {
        gateway: key(gateway),
        body: format!(r#"{{"id":"{id}","gatewayid":"{gateway}","seq":{seq}}}"#),
        id,
        seq,
        ty: "store.qr.scanned".into(),
        time,
        userid: user.map(str::to_owned),
        stage: Some("browse".into()),
        evicted: None,
        data: serde_json::json!({}),
    }
}

/// Commits `events` as the writer does: its own accounting moves first and goes with the
/// group; a shared store's answer replaces it.
fn commit(
    store: &mut dyn Store,
    local: &mut HashMap<GatewayKey, GatewaySeq>,
    events: &[Accepted],
    now_ms: u64,
) -> (u64, u64) {
    for e in events {
        account(local.entry(e.gateway.clone()).or_default(), e, now_ms);
    }
    let keys: BTreeSet<&GatewayKey> = events.iter().map(|e| &e.gateway).collect();
    let done = store
        .commit(&Group {
            accepted: events,
            parked: &[],
            reports: &[],
            gateways: keys.into_iter().map(|k| (k, &local[k])).collect(),
            now_ms,
        })
        .unwrap();
    local.extend(done.gateways);
    (done.fresh, done.duplicates)
}

/// Every case of the contract on fresh stores from `open`.
fn contract(open: &mut dyn FnMut() -> Box<dyn Store>) {
    each_gateway_and_id_is_stored_once_in_commit_order(open().as_mut());
    holes_are_declared_lost_after_the_grace_and_retracted_by_late_events(open().as_mut());
    a_users_view_follows_their_events(open().as_mut());
    a_sinks_cursor_and_parked_events_read_back(open().as_mut());
}

fn each_gateway_and_id_is_stored_once_in_commit_order(store: &mut dyn Store) {
    let mut local = HashMap::new();
    let a: Vec<Accepted> = (1..=30).map(|s| event("gw-a", s, None)).collect();
    let b: Vec<Accepted> = (1..=30).map(|s| event("gw-b", s, None)).collect();
    assert_eq!(commit(store, &mut local, &a[..20], 1), (20, 0));
    // A resend overlapping the first group, and the same ids from another gateway.
    assert_eq!(commit(store, &mut local, &a[10..], 2), (10, 10));
    assert_eq!(commit(store, &mut local, &b, 3), (30, 0));
    // The same event twice in one group: stored once.
    let c = event("gw-c", 1, None);
    assert_eq!(commit(store, &mut local, &[c.clone(), c], 4), (1, 1));
    let rows = store.events_after(0, 1000).unwrap();
    assert_eq!(rows.len(), 61);
    assert!(
        rows.windows(2).all(|w| w[0].0 < w[1].0),
        "n rises with commit order"
    );
    assert_eq!(store.last_n().unwrap(), rows.last().unwrap().0);
    let after = store.events_after(rows[29].0, 10).unwrap();
    assert_eq!(
        after[0].1, b[0].body,
        "the rows after a cursor start where it stands"
    );
    assert_eq!(after.len(), 10);
}

fn holes_are_declared_lost_after_the_grace_and_retracted_by_late_events(store: &mut dyn Store) {
    let mut local = HashMap::new();
    let events: Vec<Accepted> = [1, 2, 5, 9].iter().map(|s| event("gw", *s, None)).collect();
    commit(store, &mut local, &events, 1_000);
    assert!(
        store.expire(&local, 1_500, 1_000).unwrap().is_empty(),
        "within the grace"
    );
    let expired = store.expire(&local, 2_000, 1_000).unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].newly, vec![[3, 4], [6, 8]]);
    for e in &expired {
        local.insert(e.key.clone(), e.seq.clone());
    }
    commit(store, &mut local, &[event("gw", 7, None)], 3_000);
    let stored: HashMap<_, _> = store.load_gateways().unwrap().into_iter().collect();
    let g = &stored[&key("gw")];
    assert_eq!(g.lost_ranges(), vec![[3, 4], [6, 6], [8, 8]]);
    assert_eq!((g.lost(), g.late, g.span), (4, 1, Some((1, 9))));
    assert_eq!(g, &local[&key("gw")], "the writer's view is the stored one");
}

fn a_users_view_follows_their_events(store: &mut dyn Store) {
    let mut local = HashMap::new();
    let mut late = event("gw", 2, Some("u-1"));
    late.stage = Some("engage".into());
    commit(store, &mut local, &[late, event("gw", 1, Some("u-1"))], 1);
    let views = store.user("u-1").unwrap();
    assert_eq!(views.len(), 1);
    let v = serde_json::to_value(&views[0].1).unwrap();
    assert_eq!(
        v["stage"]["stage"], "engage",
        "the newest event's stage: {v}"
    );
    assert!(store.user("nobody").unwrap().is_empty());
}

fn a_sinks_cursor_and_parked_events_read_back(store: &mut dyn Store) {
    assert!(store.claim("braze").unwrap());
    assert_eq!(
        store.sink_position("braze").unwrap(),
        SinkPosition::default()
    );
    store.sink_inflight("braze", Some(9)).unwrap();
    assert_eq!(store.sink_position("braze").unwrap().inflight, Some(9));
    let parked = [SinkParked {
        n: 3,
        id: "x".into(),
        reason: "r".into(),
    }];
    store.sink_advance("braze", 9, &parked, 1).unwrap();
    assert_eq!(
        store.sink_position("braze").unwrap(),
        SinkPosition {
            cursor: 9,
            inflight: None
        }
    );
    assert_eq!(store.sink_parked("braze").unwrap(), parked);
    assert!(store.sink_parked("amplitude").unwrap().is_empty());
}

#[test]
fn sqlite_keeps_the_store_contract() {
    let dir = tempfile::tempdir().unwrap();
    let mut i = 0;
    contract(&mut || {
        i += 1;
        let path = dir.path().join(format!("hq-{i}.db"));
        Box::new(SqliteStore::open(&path, Synchronous::Normal).unwrap())
    });
}

fn pg(server: &Postgres, db: &str) -> PgConfig {
    PgConfig {
        url: server.database(db),
        password: None,
    }
}

#[test]
fn postgres_keeps_the_store_contract() {
    let server = Postgres::start();
    let mut i = 0;
    contract(&mut || {
        i += 1;
        Box::new(PgStore::open(&pg(&server, &format!("contract{i}"))).unwrap())
    });
}

/// Two writers commit groups at once, each a share of one gateway's events (as a share group
/// spreads them), while a sink-like reader moves its cursor to the last `n` it read. With `n`
/// handed out in commit order, the reader sees every event exactly once; the two writers'
/// accounting of the gateway is merged: no hole is left.
#[test]
fn concurrent_writers_never_let_a_cursor_skip_and_merge_one_gateways_accounting() {
    let server = Postgres::start();
    let config = pg(&server, "concurrent");
    const PER_WRITER: u64 = 600;
    const GROUP: u64 = 3;
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let config = config.clone();
            std::thread::spawn(move || {
                let mut store = PgStore::open(&config).unwrap();
                let mut local = HashMap::new();
                // Writer 0 has the odd seqs, writer 1 the even ones, both of gateway "gw".
                let seqs: Vec<u64> = (0..PER_WRITER).map(|i| 2 * i + 1 + w).collect();
                for chunk in seqs.chunks(GROUP as usize) {
                    let events: Vec<Accepted> =
                        chunk.iter().map(|s| event("gw", *s, None)).collect();
                    commit(&mut store, &mut local, &events, 1);
                }
            })
        })
        .collect();
    let mut reader = PgStore::open(&config).unwrap();
    let (mut cursor, mut seen) = (0u64, Vec::new());
    let read = |reader: &mut PgStore, cursor: &mut u64, seen: &mut Vec<String>| {
        for (n, body) in reader.events_after(*cursor, 50).unwrap() {
            *cursor = n;
            seen.push(body);
        }
    };
    while writers.iter().any(|w| !w.is_finished()) {
        read(&mut reader, &mut cursor, &mut seen);
    }
    for w in writers {
        w.join().unwrap();
    }
    read(&mut reader, &mut cursor, &mut seen);
    read(&mut reader, &mut cursor, &mut seen);
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "an event read twice");
    assert_eq!(
        seen.len() as u64,
        2 * PER_WRITER,
        "events skipped by the cursor"
    );
    let g = &reader.load_gateways().unwrap()[0].1;
    assert_eq!(g.span, Some((1, 2 * PER_WRITER)));
    assert!(
        g.holes.is_empty(),
        "the writers overwrote each other's accounting: {g:?}"
    );
}

#[test]
fn one_consumer_at_a_time_holds_a_sink_and_a_dead_ones_claim_is_taken_over() {
    let server = Postgres::start();
    let config = pg(&server, "claims");
    let mut first = PgStore::open(&config).unwrap();
    let mut second = PgStore::open(&config).unwrap();
    assert!(first.claim("braze").unwrap());
    assert!(
        !second.claim("braze").unwrap(),
        "two consumers drive one sink"
    );
    assert!(
        second.claim("amplitude").unwrap(),
        "each sink has its own claim"
    );
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !second.claim("braze").unwrap() {
        assert!(
            Instant::now() < deadline,
            "the claim did not end with its connection"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_restarted_server_is_reconnected_to_and_a_held_claim_is_reported_lost() {
    let mut server = Postgres::start();
    let config = pg(&server, "restart");
    let mut writer = PgStore::open(&config).unwrap();
    let mut sink = PgStore::open(&config).unwrap();
    let mut local = HashMap::new();
    commit(&mut writer, &mut local, &[event("gw", 1, None)], 1);
    assert!(sink.claim("braze").unwrap());
    server.crash();
    server.restart();
    // The first call after the restart may fail on the dead connection; the next connects.
    let mut group = vec![event("gw", 2, None)];
    let done = (0..2).find_map(|_| {
        writer
            .commit(&Group {
                accepted: &group,
                parked: &[],
                reports: &[],
                gateways: vec![],
                now_ms: 2,
            })
            .ok()
    });
    assert_eq!(
        done.map(|d| d.fresh),
        Some(1),
        "the writer did not reconnect"
    );
    group.clear();
    let mut lost = false;
    for _ in 0..3 {
        match sink.sink_position("braze") {
            Err(StoreError::ClaimLost(s)) => {
                assert_eq!(s, "braze");
                lost = true;
                break;
            }
            Err(_) => continue,
            Ok(p) => panic!("read {p:?} on a connection whose claim is gone"),
        }
    }
    assert!(lost, "the lost claim was not reported");
    assert!(
        sink.claim("braze").unwrap(),
        "claimed again on the new connection"
    );
    assert_eq!(sink.events_after(0, 10).unwrap().len(), 2);
}
