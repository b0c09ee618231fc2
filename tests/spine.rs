//! The spine end to end on real parts: pty scanner → phygate binary → SQLite → mosquitto → HQ.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(60);

fn codes(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{prefix}-{i:05}-https://x.example/p?q={i}"))
        .collect()
}

fn scanner_up(hq: &Hq, ups: usize) -> bool {
    hq.statuses()
        .iter()
        .filter(|e| e["data"]["state"] == "up")
        .count()
        >= ups
}

fn thousand_codes_arrive_once_each_in_seq_order_intact(mqtt: Mqtt) {
    let rig = Rig::on(mqtt);
    let hq = rig.hq("thousand");
    let (_pty, mut scanner) = rig.scanner();
    let _gw = rig.start_gateway();
    hq.wait_for(LONG, "scanner up", |h| scanner_up(h, 1));

    let sent = codes("A", 1000);
    scanner
        .scan_all(sent.iter().map(String::as_str), Duration::ZERO)
        .unwrap();
    hq.wait_for(LONG, "1000 codes", |h| h.scanned_payloads().len() >= 1000);

    assert_eq!(
        hq.scanned_payloads(),
        sent,
        "every payload intact, in order"
    );
    let dupes = hq.assert_consistent();
    assert_eq!(
        dupes, 0,
        "no reconnect happened, so no duplicate is allowed"
    );
    let events = hq.unique();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "seq is dense from 1"
    );
    let e = &events[1];
    assert_eq!(e["specversion"], "1.0");
    assert_eq!(e["source"], "/stores/s1/stations/gate-1");
    assert_eq!(e["data"]["symbology"], "qr");
    assert_eq!(e["data"]["aim"], "]Q1");
    assert!(e["time"].as_str().unwrap().ends_with('Z'));
}

fn broker_outage_of_ten_seconds_loses_nothing(mqtt: Mqtt) {
    let mut rig = Rig::on(mqtt);
    rig.write_config("\n[uplink]\nbackoff_min = \"200ms\"\nbackoff_max = \"2s\"\n");
    let hq = rig.hq("outage");
    let (_pty, mut scanner) = rig.scanner();
    let gw = rig.start_gateway();
    hq.wait_for(LONG, "scanner up", |h| scanner_up(h, 1));

    let sent = codes("B", 600);
    let (before, rest) = sent.split_at(200);
    let (during, after) = rest.split_at(200);
    scanner
        .scan_all(before.iter().map(String::as_str), Duration::from_millis(2))
        .unwrap();
    rig.broker.stop(false);
    // Codes keep coming while HQ is unreachable: 10 s of outage.
    scanner
        .scan_all(during.iter().map(String::as_str), Duration::from_millis(50))
        .unwrap();
    std::thread::sleep(Duration::from_secs(10).saturating_sub(Duration::from_millis(50 * 200)));
    rig.broker.restart().unwrap();
    scanner
        .scan_all(after.iter().map(String::as_str), Duration::from_millis(2))
        .unwrap();

    hq.wait_for(LONG, "all 600 codes", |h| h.scanned_payloads().len() >= 600);
    assert_eq!(
        hq.scanned_payloads(),
        sent,
        "nothing lost, nothing reordered"
    );
    let dupes = hq.assert_consistent();
    eprintln!("duplicates after the outage: {dupes}");
    assert!(gw.log().contains("HQ link down"), "the outage was noticed");
}

fn sigkill_mid_stream_loses_nothing_that_was_accepted(mqtt: Mqtt) {
    let rig = Rig::on(mqtt);
    let hq = rig.hq("kill9");
    let (_pty, mut scanner) = rig.scanner();
    let mut gw = rig.start_gateway();
    hq.wait_for(LONG, "scanner up", |h| scanner_up(h, 1));

    // Take the broker away so accepted events pile up in the outbox, then kill -9.
    let first = codes("C", 300);
    scanner
        .scan_all(first[..100].iter().map(String::as_str), Duration::ZERO)
        .unwrap();
    hq.wait_for(LONG, "first 100", |h| h.scanned_payloads().len() >= 100);
    let db = rig.db_path();
    let mut broker = rig.broker;
    broker.stop(false);
    scanner
        .scan_all(
            first[100..].iter().map(String::as_str),
            Duration::from_millis(1),
        )
        .unwrap();
    eventually(LONG, "the outbox holds accepted codes", || {
        outbox_ids(&db).len() >= 150
    });
    std::thread::sleep(Duration::from_millis(300));
    gw.kill9();

    let at_hq: HashSet<String> = hq
        .unique()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let in_outbox = outbox_ids(&db);
    assert!(!in_outbox.is_empty());
    broker.restart().unwrap();
    gw.restart();
    let second = codes("D", 50);
    hq.wait_for(LONG, "scanner up again", |h| scanner_up(h, 2));
    scanner
        .scan_all(second.iter().map(String::as_str), Duration::ZERO)
        .unwrap();

    let accepted: HashSet<String> = at_hq
        .union(&in_outbox.into_iter().collect())
        .cloned()
        .collect();
    hq.wait_for(LONG, "every accepted event", |h| {
        let got: HashSet<String> = h
            .unique()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        accepted.is_subset(&got)
            && h.scanned_payloads()
                .iter()
                .filter(|p| p.starts_with("D-"))
                .count()
                == 50
    });
    let dupes = hq.assert_consistent();
    eprintln!(
        "accepted before the kill: {}, duplicates: {dupes}",
        accepted.len()
    );
    // Codes written while phygate was up all made it: the pty kept them for the restart.
    let payloads: HashSet<String> = hq.scanned_payloads().into_iter().collect();
    assert!(
        first.iter().all(|c| payloads.contains(c)),
        "every code of the first run arrived"
    );
}

#[test]
fn garbage_on_the_line_is_reported_and_the_next_code_still_arrives() {
    let rig = Rig::new();
    let hq = rig.hq("garbage");
    let (_pty, mut scanner) = rig.scanner();
    let mut gw = rig.start_gateway();
    hq.wait_for(LONG, "scanner up", |h| scanner_up(h, 1));

    // Binary noise without CR/LF (invalid UTF-8), an invalid UTF-8 line, an empty line, a line
    // without its AIM id: four rejections.
    let noise: Vec<u8> = (0u8..=255).filter(|b| *b != b'\r' && *b != b'\n').collect();
    scanner
        .port
        .write_all(&[noise.as_slice(), b"\r"].concat())
        .unwrap();
    scanner.port.write_all(b"]Q1caf\xc3\x28\r\r").unwrap();
    scanner.port.write_all(b"no-aim-here\r").unwrap();
    scanner.scan("GOOD-1").unwrap();
    // 100 KB without a terminator: dropped after the 1 s partial-line timeout.
    scanner.port.write_all(&vec![b'x'; 100 * 1024]).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    scanner.scan("GOOD-2").unwrap();

    hq.wait_for(LONG, "both good codes", |h| {
        h.scanned_payloads() == ["GOOD-1", "GOOD-2"]
    });
    hq.wait_for(LONG, "five rejections counted", |h| {
        h.statuses()
            .iter()
            .filter(|e| e["data"]["state"] == "error")
            .map(|e| e["data"]["count"].as_u64().unwrap())
            .sum::<u64>()
            == 5
    });
    let reasons: HashSet<String> = hq
        .statuses()
        .iter()
        .filter(|e| e["data"]["state"] == "error")
        .map(|e| e["data"]["reason"].as_str().unwrap().to_owned())
        .collect();
    assert!(reasons.contains("too_long"), "{reasons:?}");
    assert!(
        reasons.len() >= 2,
        "at most one report per second, so not every reason shows: {reasons:?}"
    );
    assert!(gw.terminate().success(), "still up, and stops cleanly");
}

#[test]
fn unplugged_scanner_is_reported_down_and_reopened() {
    let rig = Rig::new();
    let hq = rig.hq("unplug");
    let (pty, mut scanner) = rig.scanner();
    let _gw = rig.start_gateway();
    hq.wait_for(LONG, "scanner up", |h| scanner_up(h, 1));
    scanner.scan("BEFORE").unwrap();
    hq.wait_for(LONG, "first code", |h| h.scanned_payloads() == ["BEFORE"]);

    drop(scanner);
    drop(pty);
    hq.wait_for(LONG, "scanner down", |h| {
        h.statuses().iter().any(|e| e["data"]["state"] == "down")
    });
    std::thread::sleep(Duration::from_millis(500));
    let (_pty, mut scanner) = rig.scanner();
    hq.wait_for(LONG, "scanner up again", |h| scanner_up(h, 2));
    scanner.scan("AFTER").unwrap();
    hq.wait_for(LONG, "code after replug", |h| {
        h.scanned_payloads() == ["BEFORE", "AFTER"]
    });
    let states: Vec<String> = hq
        .statuses()
        .iter()
        .map(|e| e["data"]["state"].as_str().unwrap().to_owned())
        .collect();
    let down = states.iter().position(|s| s == "down").unwrap();
    assert!(
        states[down + 1..].iter().any(|s| s == "up"),
        "down then up: {states:?}"
    );
}

fn sigterm_flushes_and_exits_zero(mqtt: Mqtt) {
    let rig = Rig::on(mqtt);
    let (_pty, mut scanner) = rig.scanner();
    let hq = rig.hq("term");
    let mut gw = rig.start_gateway();
    hq.wait_for(LONG, "scanner up", |h| scanner_up(h, 1));
    scanner
        .scan_all(codes("E", 50).iter().map(String::as_str), Duration::ZERO)
        .unwrap();
    hq.wait_for(LONG, "50 codes", |h| h.scanned_payloads().len() == 50);
    assert!(gw.terminate().success());
    assert!(
        gw.log()
            .contains("stopped; everything accepted is in the outbox"),
        "{}",
        gw.log()
    );
}

on_both_protocols!(
    thousand_codes_arrive_once_each_in_seq_order_intact,
    broker_outage_of_ten_seconds_loses_nothing,
    sigkill_mid_stream_loses_nothing_that_was_accepted,
    sigterm_flushes_and_exits_zero,
);
