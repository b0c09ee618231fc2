//! The HTTP ingest end to end: a device's POST on a plain socket → phygate binary → SQLite →
//! mosquitto → HQ. People counters (docs/protocols.md §3b) and tablet skin analyzers (§4).

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::*;
use phygate::sim::broker::free_port;
use phygate::sim::skin::sample;
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(60);
const TABLET: &str = "tablet-token-0123456789";
const COUNTER: &str = "counter-token-0123456789";
const COUNTS: &str = "/v1/stations/door/counts";
const SKIN: &str = "/v1/stations/kiosk-1/skin";
const PASSED: &str = "store.gate.passed";
const DIAGNOSED: &str = "store.skin.diagnosed";

/// A rig whose gateway listens for a tablet analyzer at kiosk-1 and a counter at the door.
fn ingest_rig() -> (Rig, u16) {
    ingest_rig_with("")
}

/// As [`ingest_rig`], with `extra` config appended.
fn ingest_rig_with(extra: &str) -> (Rig, u16) {
    let rig = Rig::new();
    let port = free_port().unwrap();
    rig.write_config(&format!(
        r#"
[ingest]
listen = "127.0.0.1:{port}"

[[station]]
id = "kiosk-1"
role = "kiosk"

[[station]]
id = "door"
role = "gate"

[[device]]
kind = "skin_http"
id = "tablet-1"
station = "kiosk-1"
token = "{TABLET}"

[[device]]
kind = "people_counter"
id = "pc-1"
station = "door"
token = "{COUNTER}"
{extra}"#
    ));
    (rig, port)
}

fn counts(from: &str, to: &str, people_in: i64, people_out: i64) -> Vec<u8> {
    json!({"device": "pc-1", "from": from, "to": to, "in": people_in, "out": people_out})
        .to_string()
        .into_bytes()
}

/// A counts interval ending now-ish (so it is never "too old").
fn minute(n: u32) -> (String, String) {
    let base = chrono::Utc::now() - chrono::Duration::hours(1);
    let at = |m: u32| {
        (base + chrono::Duration::minutes(m as i64))
            .format("%Y-%m-%dT%H:%M:00Z")
            .to_string()
    };
    (at(n), at(n + 1))
}

fn ids(answer: &Answer) -> Vec<String> {
    answer.body["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events in {answer:?}"))
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

fn passed(hq: &Hq) -> Vec<(String, u64)> {
    hq.of_type(PASSED)
        .iter()
        .map(|e| {
            (
                e["data"]["direction"].as_str().unwrap().to_owned(),
                e["data"]["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn skin_post_is_accepted_once_durable_and_reaches_hq() {
    let (rig, port) = ingest_rig();
    let hq = rig.hq("ingest-skin");
    let _gw = rig.start_gateway();
    wait_listening(port);

    let reading = sample("TAB-1", 41);
    let a = post(port, SKIN, Some(TABLET), &reading.to_json());
    assert_eq!(a.status, 202, "{a:?}");
    assert_eq!(a.body["duplicate"], false);
    let id = ids(&a)[0].clone();
    // 202 means durable: the event is in the outbox file, or it is already gone from it because
    // the broker acknowledged it. The broker acknowledges before its copy reaches HQ's
    // subscriber, so a row missing from the file must show up at HQ within a moment.
    if !outbox_ids(&rig.db_path()).contains(&id) {
        hq.wait_for(Duration::from_secs(5), "an acknowledged post at HQ", |h| {
            h.unique().iter().any(|e| e["id"] == id)
        });
    }
    hq.wait_for(LONG, "the diagnosis", |h| h.of_type(DIAGNOSED).len() == 1);
    let e = &hq.of_type(DIAGNOSED)[0];
    assert_eq!(e["id"], id.as_str());
    assert_eq!(e["source"], "/stores/s1/stations/kiosk-1");
    assert_eq!(e["data"]["model"], "TAB-1");
    assert_eq!(e["data"]["device_seq"], 41);
    assert_eq!(e["data"]["measures"]["pigmentation"], 18.25);

    // The same model + seq again: the original answer, nothing new.
    let again = post(port, SKIN, Some(TABLET), &reading.to_json());
    assert_eq!(again.status, 202);
    assert_eq!(again.body["duplicate"], true);
    assert_eq!(ids(&again), [id]);
    let next = post(port, SKIN, Some(TABLET), &sample("TAB-1", 42).to_json());
    assert_eq!(next.status, 202);
    hq.wait_for(LONG, "the next diagnosis", |h| {
        h.of_type(DIAGNOSED).len() == 2
    });
    assert_eq!(hq.of_type(DIAGNOSED)[1]["data"]["device_seq"], 42);
}

#[test]
fn counts_make_one_event_per_direction_and_a_repeated_interval_creates_nothing() {
    let (rig, port) = ingest_rig();
    let hq = rig.hq("ingest-counts");
    let _gw = rig.start_gateway();
    wait_listening(port);

    let (from, to) = minute(0);
    let first = post(port, COUNTS, Some(COUNTER), &counts(&from, &to, 3, 1));
    assert_eq!(first.status, 202, "{first:?}");
    assert_eq!(ids(&first).len(), 2);
    let again = post(port, COUNTS, Some(COUNTER), &counts(&from, &to, 3, 1));
    assert_eq!(
        (again.status, &again.body["duplicate"]),
        (202, &json!(true))
    );
    assert_eq!(ids(&again), ids(&first), "the original events' answer");
    // The same instants spelled with an offset are the same interval.
    let offset = |t: &str| t.replace('Z', "+00:00");
    let spelled = post(
        port,
        COUNTS,
        Some(COUNTER),
        &counts(&offset(&from), &offset(&to), 3, 1),
    );
    assert_eq!(ids(&spelled), ids(&first));

    // Zero counts make no event; a zero direction is skipped.
    let (from2, to2) = minute(1);
    let zero = post(port, COUNTS, Some(COUNTER), &counts(&from2, &to2, 0, 0));
    assert_eq!(zero.status, 202, "{zero:?}");
    assert!(ids(&zero).is_empty());
    let (from3, to3) = minute(2);
    let out_only = post(port, COUNTS, Some(COUNTER), &counts(&from3, &to3, 0, 2));
    assert_eq!(ids(&out_only).len(), 1);

    hq.wait_for(LONG, "three passages", |h| h.of_type(PASSED).len() >= 3);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        passed(&hq),
        [("in".into(), 3), ("out".into(), 1), ("out".into(), 2)]
    );
    let e = &hq.of_type(PASSED)[0];
    assert_eq!(e["source"], "/stores/s1/stations/door");
    assert_eq!(e["data"]["gate"], "pc-1");
    assert_eq!(e["data"]["from"], from.as_str());
    assert_eq!(e["data"]["to"], to.as_str());
    assert_eq!(e["id"], ids(&first)[0].as_str());
}

#[test]
fn concurrent_identical_counts_posts_insert_once() {
    let (rig, port) = ingest_rig();
    let hq = rig.hq("ingest-race");
    let _gw = rig.start_gateway();
    wait_listening(port);

    let (from, to) = minute(5);
    let body = Arc::new(counts(&from, &to, 4, 2));
    let start = Arc::new(Barrier::new(8));
    let posts: Vec<_> = (0..8)
        .map(|_| {
            let (body, start) = (body.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                post(port, COUNTS, Some(COUNTER), &body)
            })
        })
        .collect();
    let answers: Vec<Answer> = posts.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(answers.iter().all(|a| a.status == 202), "{answers:?}");
    let first = ids(&answers[0]);
    assert!(answers.iter().all(|a| ids(a) == first), "{answers:?}");
    assert_eq!(
        answers
            .iter()
            .filter(|a| a.body["duplicate"] == false)
            .count(),
        1
    );
    hq.wait_for(LONG, "two passages", |h| h.of_type(PASSED).len() >= 2);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(passed(&hq), [("in".into(), 4), ("out".into(), 2)]);
}

#[test]
fn refused_posts_answer_why_and_create_nothing() {
    let (rig, port) = ingest_rig();
    let hq = rig.hq("ingest-refused");
    let _gw = rig.start_gateway();
    wait_listening(port);

    let (from, to) = minute(10);
    let good = counts(&from, &to, 1, 1);
    let skin = sample("TAB-1", 1).to_json();
    let refuse = |path: &str, token: Option<&str>, body: &[u8], status: u16, error: &str| {
        let a = post(port, path, token, body);
        assert_eq!(a.status, status, "{path} {error}: {a:?}");
        assert_eq!(a.body["error"], error, "{a:?}");
    };
    refuse(COUNTS, None, &good, 401, "no_token");
    refuse(
        COUNTS,
        Some("wrong-token-0123456789"),
        &good,
        401,
        "bad_token",
    );
    // A tablet's token is no counter's, and the other way round.
    refuse(COUNTS, Some(TABLET), &good, 401, "bad_token");
    refuse(SKIN, Some(COUNTER), &skin, 401, "bad_token");
    refuse(
        "/v1/stations/kiosk-1/counts",
        Some(COUNTER),
        &good,
        403,
        "wrong_station",
    );
    refuse(
        "/v1/stations/nowhere/counts",
        Some(COUNTER),
        &good,
        404,
        "unknown_station",
    );
    let other = String::from_utf8(good.clone())
        .unwrap()
        .replace("pc-1", "pc-2");
    refuse(COUNTS, Some(COUNTER), other.as_bytes(), 403, "wrong_device");
    refuse(COUNTS, Some(COUNTER), b"{not json", 400, "bad_json");
    refuse(
        COUNTS,
        Some(COUNTER),
        &counts(&to, &from, 1, 1),
        400,
        "empty_interval",
    );
    refuse(
        COUNTS,
        Some(COUNTER),
        &counts(&from, &to, -1, 1),
        400,
        "bad_count",
    );
    refuse(
        COUNTS,
        Some(COUNTER),
        &counts("noon", &to, 1, 1),
        400,
        "bad_time",
    );
    let mut hot = sample("TAB-1", 2);
    hot.measures.insert("moisture".into(), 140.0);
    refuse(SKIN, Some(TABLET), &hot.to_json(), 400, "out_of_range");
    refuse(
        SKIN,
        Some(TABLET),
        br#"{"v":1,"model":"TAB-1"}"#,
        400,
        "no_measures",
    );
    let mut padded: Value = serde_json::from_slice(&good).unwrap();
    padded["vendor_blob"] = json!("x".repeat(64 * 1024));
    refuse(
        COUNTS,
        Some(COUNTER),
        padded.to_string().as_bytes(),
        413,
        "too_large",
    );
    let mut big = sample("TAB-1", 3);
    big.device_time = Some("x".repeat(16 * 1024));
    refuse(SKIN, Some(TABLET), &big.to_json(), 413, "too_large");

    // The listener still serves, and only this post became events.
    let ok = post(port, COUNTS, Some(COUNTER), &good);
    assert_eq!(ok.status, 202, "{ok:?}");
    hq.wait_for(LONG, "the good post", |h| h.of_type(PASSED).len() >= 2);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(passed(&hq), [("in".into(), 1), ("out".into(), 1)]);
    assert!(hq.of_type(DIAGNOSED).is_empty());
}

#[test]
fn a_post_accepted_while_the_broker_is_down_arrives_after_it_is_back() {
    let (mut rig, port) =
        ingest_rig_with("\n[uplink]\nbackoff_min = \"200ms\"\nbackoff_max = \"1s\"\n");
    let hq = rig.hq("ingest-outage");
    let _gw = rig.start_gateway();
    wait_listening(port);

    rig.broker.stop(false);
    let (from, to) = minute(20);
    let a = post(port, COUNTS, Some(COUNTER), &counts(&from, &to, 7, 0));
    assert_eq!(a.status, 202, "{a:?}");
    let id = ids(&a)[0].clone();
    assert!(
        outbox_ids(&rig.db_path()).contains(&id),
        "202 means it is in the outbox"
    );
    rig.broker.restart().unwrap();
    hq.wait_for(LONG, "the passage after the outage", |h| {
        h.of_type(PASSED).iter().any(|e| e["id"] == id.as_str())
    });
    assert_eq!(passed(&hq), [("in".into(), 7)]);
}

#[test]
fn check_config_shows_skin_and_ingest_devices_without_their_tokens() {
    let (rig, _) = ingest_rig();
    let mut text = std::fs::read_to_string(&rig.config).unwrap();
    text.push_str(
        "\n[[device]]\nkind = \"skin\"\nid = \"skin-1\"\nstation = \"kiosk-1\"\nport = \"/dev/phygate/skin0\"\n",
    );
    std::fs::write(&rig.config, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_phygate"))
        .arg("check-config")
        .arg(&rig.config)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("skin analyzer (SKN1) on /dev/phygate/skin0"),
        "{shown}"
    );
    assert!(
        shown.contains("device pc-1 at station door: people_counter"),
        "{shown}"
    );
    assert!(shown.contains("ingest listener on 127.0.0.1:"), "{shown}");
    assert!(
        !shown.contains(COUNTER) && !shown.contains(TABLET),
        "{shown}"
    );
}
