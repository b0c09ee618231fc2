//! Serial skin analyzers end to end on real parts: a pty speaking SKN1 → phygate binary →
//! SQLite → mosquitto → HQ.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use phygate::sim::skin::{sample, Fault};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);
const DIAGNOSED: &str = "store.skin.diagnosed";

fn skin_rig() -> Rig {
    let rig = Rig::new();
    rig.write_config(&format!(
        r#"
[[station]]
id = "kiosk-1"
role = "kiosk"

[[device]]
kind = "skin"
id = "skin-1"
station = "kiosk-1"
port = "{}"
"#,
        rig.device_link("skin0").display()
    ));
    rig
}

fn skin_ups(hq: &Hq) -> usize {
    hq.statuses_of("skin-1")
        .iter()
        .filter(|e| e["data"]["state"] == "up")
        .count()
}

fn diagnoses(hq: &Hq) -> Vec<(String, u64)> {
    hq.of_type(DIAGNOSED)
        .iter()
        .map(|e| {
            (
                e["data"]["model"].as_str().unwrap().to_owned(),
                e["data"]["device_seq"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn as_f64_map(v: &Value) -> BTreeMap<String, f64> {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
        .collect()
}

#[test]
fn good_reading_arrives_with_its_measures_intact() {
    let rig = skin_rig();
    let hq = rig.hq("skin-good");
    let (_pty, mut skin) = rig.skin();
    let _gw = rig.start_gateway();
    hq.wait_for(LONG, "analyzer up", |h| skin_ups(h) >= 1);

    let first = sample("AX-200", 812);
    skin.send(&first).unwrap();
    // Either case of CRC hex is the protocol.
    skin.send_upper_crc(&sample("AX-200", 813)).unwrap();
    let mut no_seq = sample("AX-200", 0);
    no_seq.seq = None;
    skin.send(&no_seq).unwrap();
    skin.send(&no_seq).unwrap();
    hq.wait_for(LONG, "four diagnoses", |h| h.of_type(DIAGNOSED).len() >= 4);

    let e = &hq.of_type(DIAGNOSED)[0];
    assert_eq!(e["source"], "/stores/s1/stations/kiosk-1");
    assert_eq!(e["idsource"], "none");
    assert!(e.get("userid").is_none(), "a diagnosis carries no identity");
    let d = &e["data"];
    assert_eq!(d["model"], "AX-200");
    assert_eq!(as_f64_map(&d["measures"]), first.measures);
    assert_eq!(as_f64_map(&d["extra"]), first.extra);
    assert_eq!(d["skin_type"], first.skin_type.unwrap().as_str());
    assert_eq!(d["device_seq"], 812);
    assert_eq!(d["device_time"], "2026-11-23T05:01:02Z");
    assert_eq!(
        diagnoses(&hq)[1],
        ("AX-200".into(), 813),
        "upper-case CRC accepted"
    );
    let seqless = &hq.of_type(DIAGNOSED)[2..];
    assert!(
        seqless
            .iter()
            .all(|e| e["data"].get("device_seq").is_none()),
        "without `seq` nothing can repeat: both arrive"
    );
    assert_eq!(hq.assert_consistent(), 0);
}

#[test]
fn each_bad_line_is_reported_with_its_reason_and_the_next_good_reading_arrives() {
    let rig = skin_rig();
    let hq = rig.hq("skin-bad");
    let (_pty, mut skin) = rig.skin();
    let mut gw = rig.start_gateway();
    hq.wait_for(LONG, "analyzer up", |h| skin_ups(h) >= 1);

    let errors = |h: &Hq| -> Vec<(String, u64)> {
        h.statuses_of("skin-1")
            .iter()
            .filter(|e| e["data"]["state"] == "error")
            .map(|e| {
                (
                    e["data"]["reason"].as_str().unwrap().to_owned(),
                    e["data"]["count"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    // One at a time: the report of each is due within a second (one per device per second).
    let around = sample("AX-200", 1);
    for (i, fault) in Fault::ALL.into_iter().enumerate() {
        skin.send_fault(fault, &around).unwrap();
        hq.wait_for(LONG, fault.reason(), |h| errors(h).len() > i);
        assert_eq!(errors(&hq)[i], (fault.reason().to_owned(), 1), "{fault:?}");
    }
    // A line the analyzer never finishes is dropped after a second of silence.
    skin.raw(&around.to_line()[..40]).unwrap();
    hq.wait_for(LONG, "partial", |h| {
        errors(h).last().is_some_and(|(r, _)| r == "partial")
    });

    skin.send(&sample("AX-200", 2)).unwrap();
    hq.wait_for(LONG, "the good reading after", |h| {
        diagnoses(h) == [("AX-200".to_owned(), 2)]
    });
    assert!(gw.terminate().success(), "still up, and stops cleanly");
    assert!(!gw.log().contains("panicked"), "{}", gw.log());
}

#[test]
fn a_burst_of_bad_lines_is_one_report_per_second_with_its_count() {
    let rig = skin_rig();
    let hq = rig.hq("skin-burst");
    let (_pty, mut skin) = rig.skin();
    let _gw = rig.start_gateway();
    hq.wait_for(LONG, "analyzer up", |h| skin_ups(h) >= 1);

    let around = sample("AX-200", 1);
    for _ in 0..50 {
        skin.send_fault(Fault::BadCrc, &around).unwrap();
    }
    skin.send(&sample("AX-200", 3)).unwrap();
    let counted = |h: &Hq| -> u64 {
        h.statuses_of("skin-1")
            .iter()
            .filter(|e| e["data"]["state"] == "error")
            .map(|e| e["data"]["count"].as_u64().unwrap())
            .sum()
    };
    hq.wait_for(LONG, "all 50 counted", |h| counted(h) == 50);
    let reports = hq
        .statuses_of("skin-1")
        .iter()
        .filter(|e| e["data"]["state"] == "error")
        .count();
    assert!(reports <= 3, "throttled to one a second: {reports} reports");
    hq.wait_for(LONG, "the good reading", |h| diagnoses(h).len() == 1);
}

#[test]
fn same_model_and_seq_is_one_reading_even_across_a_restart() {
    let rig = skin_rig();
    let hq = rig.hq("skin-dedupe");
    let (_pty, mut skin) = rig.skin();
    let mut gw = rig.start_gateway();
    hq.wait_for(LONG, "analyzer up", |h| skin_ups(h) >= 1);

    skin.send(&sample("AX-200", 5)).unwrap();
    skin.send(&sample("AX-200", 5)).unwrap();
    // Another model's counter is its own: the same seq there is another reading.
    skin.send(&sample("BX-9", 5)).unwrap();
    skin.send(&sample("AX-200", 6)).unwrap();
    hq.wait_for(LONG, "seq 6", |h| {
        diagnoses(h).contains(&("AX-200".into(), 6))
    });

    assert!(gw.terminate().success());
    gw.restart();
    hq.wait_for(LONG, "analyzer up again", |h| skin_ups(h) >= 2);
    skin.send(&sample("AX-200", 5)).unwrap();
    skin.send(&sample("AX-200", 6)).unwrap();
    skin.send(&sample("AX-200", 7)).unwrap();
    hq.wait_for(LONG, "seq 7", |h| {
        diagnoses(h).contains(&("AX-200".into(), 7))
    });

    assert_eq!(
        diagnoses(&hq),
        [
            ("AX-200".to_owned(), 5),
            ("BX-9".to_owned(), 5),
            ("AX-200".to_owned(), 6),
            ("AX-200".to_owned(), 7)
        ]
    );
    hq.assert_consistent();
}

#[test]
fn unplugged_analyzer_is_reported_down_and_reopened() {
    let rig = skin_rig();
    let hq = rig.hq("skin-unplug");
    let (pty, mut skin) = rig.skin();
    let _gw = rig.start_gateway();
    hq.wait_for(LONG, "analyzer up", |h| skin_ups(h) >= 1);
    skin.send(&sample("AX-200", 1)).unwrap();
    hq.wait_for(LONG, "first reading", |h| diagnoses(h).len() == 1);

    drop(skin);
    drop(pty);
    hq.wait_for(LONG, "analyzer down", |h| {
        h.statuses_of("skin-1")
            .iter()
            .any(|e| e["data"]["state"] == "down")
    });
    let (_pty, mut skin) = rig.skin();
    hq.wait_for(LONG, "analyzer up again", |h| skin_ups(h) >= 2);
    skin.send(&sample("AX-200", 2)).unwrap();
    hq.wait_for(LONG, "reading after replug", |h| diagnoses(h).len() == 2);
    let states: Vec<String> = hq
        .statuses_of("skin-1")
        .iter()
        .map(|e| e["data"]["state"].as_str().unwrap().to_owned())
        .collect();
    let down = states.iter().position(|s| s == "down").unwrap();
    assert!(
        states[down + 1..].iter().any(|s| s == "up"),
        "down then up: {states:?}"
    );
}
