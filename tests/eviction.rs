//! The quota policy on the outbox itself, over random mixes of footfall, anonymous and
//! identified events of random sizes: each eviction takes the lowest priority first and the
//! oldest first within it, names exactly what it removed, and the metric counts every drop.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use phygate::config::Synchronous;
use phygate::event::{DeviceStatusData, Event, EventData, Origin, QrScanned};
use phygate::outbox::Store;
use phygate::sources::DeviceState;
use proptest::prelude::*;
use serde_json::Value;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Footfall,
    Anonymous,
    Identified,
}

fn event(kind: Kind, size: usize) -> Event {
    let pad = "x".repeat(size);
    let mut e = match kind {
        Kind::Footfall => Event::new(
            "door".into(),
            SystemTime::now(),
            EventData::DeviceStatus(DeviceStatusData {
                device: "pc-1".into(),
                kind: "people_counter",
                state: DeviceState::Up,
                reason: pad,
                count: None,
            }),
        ),
        Kind::Anonymous | Kind::Identified => Event::new(
            "gate-1".into(),
            SystemTime::now(),
            EventData::QrScanned(QrScanned {
                kind: "other",
                symbology: "qr",
                aim: None,
                payload: Some(pad),
                kid: None,
                jti: None,
                verdict: None,
                gate_opened: None,
            }),
        ),
    };
    if let Kind::Identified = kind {
        e.userid = Some("u-1".into());
    }
    e
}

fn rank(e: &Value) -> u8 {
    match (e["type"].as_str().unwrap(), e.get("userid").is_some()) {
        ("store.outbox.evicted", _) | (_, true) => 2,
        ("store.device.status", false) => 0,
        _ => 1,
    }
}

/// Seq → (rank, names) of every row in the outbox; `names` are a loss report's seqs.
fn snapshot(store: &Store) -> BTreeMap<u64, (u8, BTreeSet<u64>)> {
    let Some(batch) = store.fetch_after(0, 1_000_000, usize::MAX).unwrap() else {
        return BTreeMap::new();
    };
    let rows: Vec<Value> = serde_json::from_slice(&batch.payload).unwrap();
    rows.iter()
        .map(|e| {
            let names = if e["type"] == "store.outbox.evicted" {
                e["data"]["ranges"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|r| r[0].as_u64().unwrap()..=r[1].as_u64().unwrap())
                    .collect()
            } else {
                BTreeSet::new()
            };
            (e["seq"].as_u64().unwrap(), (rank(e), names))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn each_eviction_takes_lowest_priority_oldest_first_and_names_every_seq(
        groups in proptest::collection::vec(
            proptest::collection::vec((0usize..3, 50usize..3000), 1..20), 40..120)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let origin = Origin { store: "s1".into(), gateway: "gw".into() };
        let quota = 64 * 1024;
        let mut store = Store::open(&dir.path().join("o.db"), Synchronous::Normal, origin, quota,
            Duration::from_secs(3600)).unwrap().store;
        let mut gone = BTreeSet::new();
        for g in &groups {
            let before = snapshot(&store);
            let dropped_before = phygate::metrics::EVENTS_EVICTED.get();
            let events: Vec<Event> = g.iter().map(|(k, size)| {
                event([Kind::Footfall, Kind::Anonymous, Kind::Identified][*k], *size)
            }).collect();
            let seqs = store.commit_group(&events, &[]).unwrap();
            prop_assert!(store.stats().unwrap().bytes <= quota);
            let after = snapshot(&store);
            // Candidates: what was there, and what this group added.
            let mut candidates: Vec<(u8, u64)> = before.iter().map(|(s, (r, _))| (*r, *s)).collect();
            for (s, (k, _)) in seqs.iter().zip(g) {
                candidates.push(([0, 1, 2][*k], *s));
            }
            candidates.sort();
            let evicted: Vec<(u8, u64)> = candidates.iter().copied()
                .filter(|(_, s)| !after.contains_key(s)).collect();
            prop_assert_eq!(
                phygate::metrics::EVENTS_EVICTED.get() - dropped_before,
                evicted.len() as u64,
                "the metric counts every dropped row"
            );
            let last = store.stats().unwrap().last_seq;
            if evicted.is_empty() {
                prop_assert_eq!(last, *seqs.last().unwrap(), "no report without an eviction");
                continue;
            }
            // The lowest priority first, the oldest first within it: a prefix of the order.
            prop_assert_eq!(&evicted[..], &candidates[..evicted.len()]);
            // One report, right after the group, naming the dropped rows and whatever the
            // dropped reports named.
            let (rank, names) = &after[&last];
            prop_assert_eq!(*rank, 2);
            let mut expected: BTreeSet<u64> = evicted.iter().map(|(_, s)| *s).collect();
            for (_, s) in &evicted {
                if let Some((_, carried)) = before.get(s) {
                    expected.extend(carried);
                }
            }
            prop_assert_eq!(names, &expected);
            gone.extend(evicted.iter().map(|(_, s)| *s));
        }
        // At the end, every seq ever given is held or named by a report still held.
        let end = snapshot(&store);
        let named: BTreeSet<u64> = end.values().flat_map(|(_, n)| n.iter().copied()).collect();
        let held: BTreeSet<u64> = end.keys().copied().collect();
        prop_assert!(held.is_disjoint(&named));
        let last = store.stats().unwrap().last_seq;
        prop_assert_eq!(held.union(&named).copied().collect::<BTreeSet<u64>>(),
            (1..=last).collect::<BTreeSet<u64>>());
        prop_assert_eq!(named, gone);
    }
}
