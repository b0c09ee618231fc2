use std::time::{Duration, SystemTime};

use super::*;
use crate::status::board::{DeviceView, Shown};
use crate::status::report::{Device, Hq, Outbox};

const ALL_SHOWN: [Shown; 5] = [
    Shown::Ok,
    Shown::Silent,
    Shown::Error,
    Shown::Unplugged,
    Shown::Waiting,
];
const QUOTA: u64 = 1000;

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn device(id: &str, state: Shown, required: bool, reason: &str) -> Device {
    Device {
        view: DeviceView {
            id: id.into(),
            kind: "scanner".into(),
            station: "gate-1".into(),
            state,
            reason: reason.into(),
            last_reading: None,
            readings: 0,
        },
        required,
    }
}

/// Everything fine: one device ok, HQ connected, nothing waiting, clock synchronized.
struct World {
    devices: Vec<Device>,
    hq: Hq,
    outbox: Outbox,
    link_draining: bool,
    clock: Clock,
}

impl World {
    fn fine() -> World {
        World {
            devices: vec![device("scanner-1", Shown::Ok, true, "opened")],
            hq: Hq {
                broker: "hq:1883".into(),
                connected: true,
                since: now() - Duration::from_secs(600),
                reconnects: 0,
                last_error: None,
                last_error_at: None,
                refused: None,
                refused_since: None,
            },
            outbox: Outbox {
                answering: true,
                writable: true,
                depth: Some(0),
                bytes: Some(100),
                quota_bytes: QUOTA,
                oldest_unsent: None,
                evicted_total: 0,
            },
            link_draining: true,
            clock: Clock {
                synchronized: Some(true),
                estimated_error_us: Some(10),
            },
        }
    }

    fn judge(&self) -> Verdict {
        judge(&Inputs {
            now: now(),
            devices: &self.devices,
            hq: &self.hq,
            outbox: &self.outbox,
            link_draining: self.link_draining,
            clock: &self.clock,
        })
    }
}

#[test]
fn all_fine_is_ok_without_reasons() {
    let v = World::fine().judge();
    assert_eq!(v.level, Level::Ok);
    assert!(v.reasons.is_empty());
    assert!(!v.needs_attention());
    assert_eq!(v.to_string(), "ok");
}

#[test]
fn regression_a_device_in_error_is_degraded_with_its_reason() {
    let mut w = World::fine();
    w.devices[0] = device("scanner-1", Shown::Error, true, "missing_aim");
    let v = w.judge();
    assert_eq!(v.level, Level::Degraded);
    assert_eq!(
        v.texts().collect::<Vec<_>>(),
        ["scanner-1 reported an error: missing_aim"]
    );
    assert_eq!(v.reasons[0].device.as_deref(), Some("scanner-1"));
    assert_eq!(v.level_of(Part::Device), Level::Degraded);
    assert_eq!(v.level_of(Part::Hq), Level::Ok);
    assert!(v.needs_attention());
}

#[test]
fn regression_hq_down_is_degraded_and_says_how_long_and_what_waits() {
    let mut w = World::fine();
    w.hq.connected = false;
    w.hq.since = now() - Duration::from_millis(180_400);
    w.hq.last_error = Some("connection refused".into());
    w.outbox.depth = Some(12);
    w.outbox.oldest_unsent = Some(now() - Duration::from_secs(170));
    let v = w.judge();
    assert_eq!(v.level, Level::Degraded);
    assert_eq!(
        v.texts().collect::<Vec<_>>(),
        ["HQ is not connected for 3 min (last error: connection refused); 12 events wait in the outbox"]
    );
    assert_eq!(v.level_of(Part::Hq), Level::Degraded);
}

#[test]
fn a_broker_refusing_the_events_is_degraded_and_names_its_reason_code() {
    let mut w = World::fine();
    w.hq.refused = Some("NotAuthorized (0x87)".into());
    w.hq.refused_since = Some(now() - Duration::from_secs(30));
    w.outbox.depth = Some(3);
    let v = w.judge();
    assert_eq!(v.level, Level::Degraded);
    assert_eq!(
        v.texts().collect::<Vec<_>>(),
        ["HQ's broker refuses the events: NotAuthorized (0x87); 3 events wait in the outbox"]
    );
    assert_eq!(v.level_of(Part::Hq), Level::Degraded);
}

#[test]
fn hq_down_for_seconds_reads_in_whole_seconds() {
    let mut w = World::fine();
    w.hq.connected = false;
    w.hq.since = now() - Duration::from_millis(4_100);
    assert_eq!(
        w.judge().to_string(),
        "degraded: HQ is not connected for 4 s"
    );
}

#[test]
fn regression_an_unsynchronized_clock_is_degraded_and_an_unknown_one_is_no_reason() {
    let mut w = World::fine();
    w.clock.synchronized = Some(false);
    let v = w.judge();
    assert_eq!(v.level, Level::Degraded);
    assert!(v
        .texts()
        .next()
        .unwrap()
        .contains("clock is not synchronized (check NTP)"));
    w.clock.synchronized = None;
    assert_eq!(w.judge().level, Level::Ok);
}

#[test]
fn a_gate_that_never_answers_carries_its_hint_into_the_reason() {
    let mut w = World::fine();
    w.devices.push(device(
        "gate-a",
        Shown::Unplugged,
        false,
        "3 failed polls in a row (last: no response): check unit address, baud, parity, wiring",
    ));
    let v = w.judge();
    assert_eq!(
        v.level,
        Level::Degraded,
        "not required: the scanner still works"
    );
    assert_eq!(
        v.texts().collect::<Vec<_>>(),
        ["gate-a is unplugged: 3 failed polls in a row (last: no response): check unit address, baud, parity, wiring"]
    );
}

#[test]
fn outbox_near_quota_is_degraded_from_ninety_percent() {
    let mut w = World::fine();
    w.outbox.bytes = Some(QUOTA * NEAR_QUOTA_PERCENT / 100 - 1);
    assert_eq!(w.judge().level, Level::Ok);
    w.outbox.bytes = Some(QUOTA * NEAR_QUOTA_PERCENT / 100);
    let v = w.judge();
    assert_eq!(v.level, Level::Degraded);
    assert_eq!(
        v.texts().collect::<Vec<_>>(),
        ["the outbox is 90% full (900 bytes of 1000 bytes): the oldest events are dropped at the quota"]
    );
    assert_eq!(v.level_of(Part::Outbox), Level::Degraded);
    // Over the quota (before eviction catches up) still reads as at most 100 %.
    w.outbox.bytes = Some(QUOTA * 2);
    assert!(w.judge().texts().next().unwrap().contains("100% full"));
}

#[test]
fn a_backlog_hq_does_not_take_is_degraded_after_fifteen_minutes() {
    let mut w = World::fine();
    w.outbox.depth = Some(5);
    w.outbox.oldest_unsent = Some(now() - STALE_BACKLOG + Duration::from_secs(1));
    assert_eq!(w.judge().level, Level::Ok, "draining normally");
    w.outbox.oldest_unsent = Some(now() - STALE_BACKLOG);
    let v = w.judge();
    assert_eq!(v.level, Level::Degraded);
    assert_eq!(
        v.texts().collect::<Vec<_>>(),
        ["HQ is connected but has not taken the backlog: the oldest unsent event is 15 min old; 5 events wait in the outbox"]
    );
    // With HQ down, the one reason is HQ being down.
    w.hq.connected = false;
    let v = w.judge();
    assert_eq!(v.reasons.len(), 1);
    assert!(v.reasons[0].text.starts_with("HQ is not connected"));
}

#[test]
fn the_outbox_or_the_link_failing_is_down_worst_first() {
    let mut w = World::fine();
    w.clock.synchronized = Some(false);
    w.outbox.writable = false;
    let v = w.judge();
    assert_eq!(v.level, Level::Down);
    assert_eq!(v.reasons[0].level, Level::Down);
    assert!(v.reasons[0].text.starts_with("the outbox cannot write"));
    assert_eq!(v.reasons[1].about, Part::Clock);
    w.outbox.answering = false;
    let v = w.judge();
    assert!(
        v.reasons[0]
            .text
            .contains("the outbox (SQLite) is not answering"),
        "not answering hides cannot write: {v}"
    );
    assert_eq!(v.reasons.len(), 2);
    let mut w = World::fine();
    w.link_draining = false;
    assert_eq!(
        w.judge().to_string(),
        "down: readings are not being processed (the link is stuck)"
    );
}

#[test]
fn a_required_device_missing_is_down_an_optional_one_degraded() {
    let mut w = World::fine();
    w.devices
        .push(device("scanner-2", Shown::Unplugged, true, "port lost"));
    let v = w.judge();
    assert_eq!(v.level, Level::Down);
    assert_eq!(v.to_string(), "down: scanner-2 is unplugged: port lost");
    w.devices[1].required = false;
    assert_eq!(w.judge().level, Level::Degraded);
    // No device connected at all: down, required or not.
    w.devices[0] = device("scanner-1", Shown::Waiting, false, "nothing heard yet");
    let v = w.judge();
    assert_eq!(v.level, Level::Down);
    assert_eq!(
        v.texts().collect::<Vec<_>>(),
        [
            "scanner-1 has not been heard from yet",
            "scanner-2 is unplugged: port lost"
        ]
    );
}

/// The rules, written a second way, over every combination of the facts that matter.
#[test]
fn every_combination_follows_the_rules() {
    let mut device_sets: Vec<Vec<(Shown, bool)>> = vec![vec![]];
    for a in ALL_SHOWN {
        for ra in [false, true] {
            device_sets.push(vec![(a, ra)]);
            for b in ALL_SHOWN {
                for rb in [false, true] {
                    device_sets.push(vec![(a, ra), (b, rb)]);
                }
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for devices in &device_sets {
        for outbox in 0..3 {
            for link_draining in [true, false] {
                for hq_up in [true, false] {
                    for clock in [Some(true), Some(false), None] {
                        for near_quota in [false, true] {
                            for stale in [false, true] {
                                let mut w = World::fine();
                                w.devices = devices
                                    .iter()
                                    .enumerate()
                                    .map(|(i, (s, r))| device(&format!("d{i}"), *s, *r, "why"))
                                    .collect();
                                w.outbox.answering = outbox != 1;
                                w.outbox.writable = outbox != 2;
                                w.link_draining = link_draining;
                                w.hq.connected = hq_up;
                                w.clock.synchronized = clock;
                                if near_quota {
                                    w.outbox.bytes = Some(QUOTA);
                                }
                                if stale {
                                    w.outbox.depth = Some(3);
                                    w.outbox.oldest_unsent = Some(now() - STALE_BACKLOG * 2);
                                }
                                let v = w.judge();

                                let up = |s: Shown| {
                                    matches!(s, Shown::Ok | Shown::Silent | Shown::Error)
                                };
                                let none_up =
                                    !devices.is_empty() && devices.iter().all(|(s, _)| !up(*s));
                                let down = outbox != 0
                                    || !link_draining
                                    || none_up
                                    || devices.iter().any(|(s, r)| *r && !up(*s));
                                let degraded = devices.iter().any(|(s, _)| *s != Shown::Ok)
                                    || !hq_up
                                    || stale
                                    || near_quota
                                    || clock == Some(false);
                                let want = if down {
                                    Level::Down
                                } else if degraded {
                                    Level::Degraded
                                } else {
                                    Level::Ok
                                };
                                assert_eq!(v.level, want, "{devices:?} outbox {outbox} link {link_draining} hq {hq_up} clock {clock:?} quota {near_quota} stale {stale}: {v}");
                                seen.insert(want);

                                // Ok exactly when there is nothing to say; the level is the
                                // worst reason's; worst first; one reason per device not ok.
                                assert_eq!(v.level == Level::Ok, v.reasons.is_empty());
                                assert_eq!(
                                    v.reasons.iter().map(|r| r.level).max(),
                                    (!v.reasons.is_empty()).then_some(v.level)
                                );
                                assert!(v.reasons.windows(2).all(|p| p[0].level >= p[1].level));
                                assert_eq!(
                                    v.reasons.iter().filter(|r| r.about == Part::Device).count(),
                                    devices.iter().filter(|(s, _)| *s != Shown::Ok).count()
                                );
                                for r in &v.reasons {
                                    assert!(
                                        !r.text.contains("Some(") && !r.text.contains("None"),
                                        "words, not debug names: {}",
                                        r.text
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert_eq!(seen.len(), 3, "every level reached");
}

#[test]
fn the_verdict_travels_as_json_with_its_words() {
    let mut w = World::fine();
    w.devices[0] = device("scanner-1", Shown::Error, true, "too_long");
    let json = serde_json::to_value(w.judge()).unwrap();
    assert_eq!(json["level"], "degraded");
    assert_eq!(json["reasons"][0]["about"], "device");
    assert_eq!(json["reasons"][0]["device"], "scanner-1");
    assert_eq!(
        json["reasons"][0]["text"],
        "scanner-1 reported an error: too_long"
    );
    let back: Verdict = serde_json::from_value(json).unwrap();
    assert_eq!(back, w.judge());
}
