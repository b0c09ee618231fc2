//! A misbehaving network between phygate and the broker, through the fault proxy: a partition
//! that drops everything without a reset, a slow link, and a connection cut in the middle of a
//! publish. phygate notices a dead link by its keepalive, reconnects, and loses nothing.

mod common;
mod fault;

use std::time::{Duration, Instant};

use fault::proxy::Mode;
use fault::*;

const LONG: Duration = Duration::from_secs(60);
/// The test config's `mqtt.keepalive`.
const KEEPALIVE: Duration = Duration::from_secs(5);

fn proxied() -> Store {
    Store::with_proxy(&Knobs {
        uplink: "backoff_min = \"200ms\"\nbackoff_max = \"1s\"\n".into(),
        ..Knobs::default()
    })
}

fn link_downs(log: &str) -> usize {
    strip_ansi(log).matches("HQ link down").count()
}

#[test]
fn blackholed_link_is_detected_by_keepalive_and_nothing_is_lost() {
    let store = proxied();
    let proxy = store.proxy.as_ref().unwrap();
    let hq = store.hq("blackhole");
    let (_pty, mut scanner) = store.rig.scanner();
    let gw = store.start_gateway();
    hq.wait_for(LONG, "the scanner up", |h| !h.statuses().is_empty());

    let sent = codes("BH", 600);
    scanner
        .scan_all(sent[..200].iter().map(String::as_str), Duration::ZERO)
        .unwrap();
    hq.wait_for(LONG, "the first codes", |h| {
        h.scanned_payloads().len() == 200
    });

    // The partition: no byte moves, nothing is closed, no RST. Codes keep coming.
    proxy.set_mode(Mode::Blackhole);
    let cut_off = Instant::now();
    scanner
        .scan_all(
            sent[200..400].iter().map(String::as_str),
            Duration::from_millis(5),
        )
        .unwrap();
    let detected = wait_until(KEEPALIVE * 4, || link_downs(&gw.log()) >= 1);
    let detection = cut_off.elapsed();
    assert!(detected, "a silent link was never noticed:\n{}", gw.log());
    eprintln!("dead link noticed after {detection:.1?} (keepalive {KEEPALIVE:?})");
    assert!(
        detection <= KEEPALIVE * 3,
        "noticed in {detection:?}, keepalive is {KEEPALIVE:?}"
    );
    // Attempts into the partition hang until their connect timeout, and back off.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        hq.scanned_payloads().len(),
        200,
        "nothing crosses a partition"
    );

    proxy.set_mode(Mode::Pass);
    scanner
        .scan_all(sent[400..].iter().map(String::as_str), Duration::ZERO)
        .unwrap();
    hq.wait_for(LONG, "every code", |h| h.scanned_payloads().len() >= 600);
    assert_eq!(
        hq.scanned_payloads(),
        sent,
        "nothing lost, nothing reordered"
    );
    hq.assert_consistent();
    assert_eq!(delivered(&hq).seq_gaps(), Vec::<[u64; 2]>::new());
}

#[test]
fn slow_link_delivers_everything_without_dropping_the_connection() {
    let store = proxied();
    let proxy = store.proxy.as_ref().unwrap();
    let hq = store.hq("slow");
    let (_pty, mut scanner) = store.rig.scanner();
    let gw = store.start_gateway();
    hq.wait_for(LONG, "the scanner up", |h| !h.statuses().is_empty());

    // A satellite-grade link: 700 ms added to every chunk in each direction, so a publish
    // waits 1.4 s for its PUBACK, while keepalive pings keep flowing.
    proxy.set_delay(Duration::from_millis(700));
    let sent = codes("SL", 400);
    scanner
        .scan_all(sent.iter().map(String::as_str), Duration::from_millis(20))
        .unwrap();
    hq.wait_for(LONG, "every code over the slow link", |h| {
        h.scanned_payloads().len() >= 400
    });
    assert_eq!(hq.scanned_payloads(), sent);
    assert_eq!(hq.assert_consistent(), 0, "no reconnect, so no duplicate");
    assert_eq!(link_downs(&gw.log()), 0, "a slow link is not a dead one");
}

#[test]
fn publish_cut_mid_packet_is_resent_after_reconnect() {
    let store = proxied();
    let proxy = store.proxy.as_ref().unwrap();
    let hq = store.hq("cut");
    let (_pty, mut scanner) = store.rig.scanner();
    let gw = store.start_gateway();
    hq.wait_for(LONG, "the scanner up", |h| !h.statuses().is_empty());

    // The next publish big enough to be a batch of codes is cut after half its bytes.
    proxy.cut_next_chunk(4000);
    let sent = codes("CUT", 500);
    scanner
        .scan_all(sent.iter().map(String::as_str), Duration::ZERO)
        .unwrap();
    hq.wait_for(LONG, "every code", |h| h.scanned_payloads().len() >= 500);
    assert_eq!(proxy.cuts(), 1, "the cut happened");
    assert_eq!(
        hq.scanned_payloads(),
        sent,
        "the half-written batch was resent"
    );
    hq.assert_consistent();
    assert_eq!(delivered(&hq).seq_gaps(), Vec::<[u64; 2]>::new());
    assert!(link_downs(&gw.log()) >= 1, "the cut was noticed");
}
