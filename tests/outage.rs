//! Broker outages on real parts: a long outage with a six-figure backlog, and a broker that
//! flaps for a minute. Nothing accepted is lost, the backlog drains in `seq` order without new
//! readings to wake it, and reconnects follow the capped, jittered exponential backoff.

mod common;
mod fault;

use std::time::{Duration, Instant};

use common::Hq;
use fault::*;

const LONG: Duration = Duration::from_secs(120);
/// The backlog the outage leaves behind.
const BACKLOG: usize = 100_000;

/// Waits until HQ has at least `n` arrivals, without copying them on every poll.
fn wait_arrivals(hq: &Hq, n: usize, timeout: Duration, what: &str) {
    assert!(
        wait_until(timeout, || hq.received.lock().unwrap().len() >= n),
        "timed out waiting for {what}: HQ has {} of {n}",
        hq.received.lock().unwrap().len()
    );
}

/// The reconnect delay band of attempt `k` after the link went down: uniformly jittered in
/// `[d/2, d]`, `d = min(min · 2^k, max)` (docs/architecture.md §6).
fn band(k: u32, min: Duration, max: Duration) -> (Duration, Duration) {
    let d = min.saturating_mul(2u32.saturating_pow(k)).min(max);
    (d / 2, d)
}

#[test]
fn backlog_of_100k_drains_in_seq_order_after_a_long_outage_with_spaced_reconnects() {
    let (min, max) = (Duration::from_millis(250), Duration::from_secs(2));
    let mut store = Store::with_proxy(&Knobs {
        uplink: format!("backoff_min = \"{min:?}\"\nbackoff_max = \"{max:?}\"\n"),
        ..Knobs::default()
    });
    let hq = store.hq("backlog");
    let (_pty, mut scanner) = store.rig.scanner();
    let gw = store.start_gateway();
    hq.wait_for(LONG, "the scanner up", |h| !h.statuses().is_empty());
    let before = hq.all().len();

    store.rig.broker.stop(false);
    let down_at = Instant::now();
    let sent = codes("BL", BACKLOG);
    let fill = Instant::now();
    scanner
        .scan_all(sent.iter().map(String::as_str), Duration::ZERO)
        .unwrap();
    let db = store.db();
    assert!(
        wait_until(LONG, || outbox_depth(&db) >= BACKLOG as u64),
        "the outbox holds the backlog: {} rows",
        outbox_depth(&db)
    );
    let filled = fill.elapsed();
    // Long enough for the backoff to reach its cap and stay there a while.
    std::thread::sleep(Duration::from_secs(12).saturating_sub(down_at.elapsed()));
    assert_eq!(
        hq.all().len(),
        before,
        "nothing reached HQ during the outage"
    );

    store.rig.broker.restart().unwrap();
    let up_at = Instant::now();
    wait_arrivals(&hq, before + BACKLOG, LONG, "the backlog");
    let drained = up_at.elapsed();
    eprintln!(
        "backlog {BACKLOG}: filled in {filled:.1?} ({:.0}/s), drained in {drained:.1?} ({:.0}/s)",
        BACKLOG as f64 / filled.as_secs_f64(),
        BACKLOG as f64 / drained.as_secs_f64()
    );

    let got: Vec<String> = hq
        .scanned_payloads()
        .into_iter()
        .filter(|p| p.starts_with("BL-"))
        .collect();
    assert!(got == sent, "every code once, in the order scanned");
    hq.assert_consistent(); // first arrivals in increasing seq
    let d = delivered(&hq);
    assert_eq!(d.seq_gaps(), Vec::<[u64; 2]>::new(), "seq is dense");
    assert!(
        wait_until(Duration::from_secs(10), || outbox_depth(&db) == 0),
        "every acknowledged row deleted"
    );

    // Reconnect spacing, seen from the network: every attempt the proxy accepted while the
    // broker was down, and what phygate logged it would wait.
    let proxy = store.proxy.as_ref().unwrap();
    // The uplink's attempts only: the downlink's own session backs off on its own.
    let attempts: Vec<Instant> = proxy
        .accepts_of(|id| !id.ends_with("-downlink"))
        .into_iter()
        .filter(|t| *t > down_at && *t < up_at)
        .collect();
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!(
        "reconnect attempts during the outage: {}, gaps {gaps:.2?}",
        attempts.len()
    );
    assert!(attempts.len() >= 6, "kept retrying: {gaps:?}");
    let slack_low = Duration::from_millis(150);
    let slack_high = Duration::from_millis(600);
    for (i, gap) in gaps.iter().enumerate() {
        let (lo, hi) = band(i as u32 + 1, min, max);
        assert!(
            *gap + slack_low >= lo && *gap <= hi + slack_high,
            "gap {i} is {gap:?}, outside the backoff band {lo:?}..{hi:?}: {gaps:?}"
        );
    }
    let capped: Vec<Duration> = gaps.iter().skip(3).copied().collect();
    assert!(capped.len() >= 4, "reached the cap and stayed: {gaps:?}");
    let spread = *capped.iter().max().unwrap() - *capped.iter().min().unwrap();
    assert!(
        spread >= Duration::from_millis(20),
        "jittered, not lockstep: {capped:?}"
    );
    let logged = logged_retry_delays(&gw.log());
    assert!(logged.len() >= attempts.len(), "{logged:?}");
    for (k, delay) in logged.iter().enumerate() {
        let (lo, hi) = band(k as u32, min, max);
        assert!(
            *delay >= lo && *delay <= hi,
            "logged retry_in #{k} {delay:?} outside {lo:?}..{hi:?}"
        );
    }
}

#[test]
fn broker_flapping_two_seconds_up_two_down_for_a_minute_loses_nothing() {
    let mut store = Store::new(&Knobs {
        uplink: "backoff_min = \"200ms\"\nbackoff_max = \"1s\"\n".into(),
        ..Knobs::default()
    });
    let hq = store.hq("flap");
    let (_pty, mut scanner) = store.rig.scanner();
    let gw = store.start_gateway();
    hq.wait_for(LONG, "the scanner up", |h| !h.statuses().is_empty());
    store.wait_listening();

    let minute = Duration::from_secs(60);
    let start = Instant::now();
    // A scanner and a people counter keep producing through the whole minute.
    let sent = codes("FL", 3000);
    let scans = {
        let sent = sent.clone();
        std::thread::spawn(move || {
            let every = minute / sent.len() as u32;
            for code in &sent {
                scanner.scan(code).unwrap();
                std::thread::sleep(every);
            }
        })
    };
    let ingest_port = store.ingest_port;
    let posts = std::thread::spawn(move || {
        let mut accepted = Vec::new();
        let mut k = 0;
        while start.elapsed() < minute {
            let body = counts_body(k, 2, 1);
            let a = try_post(ingest_port, COUNTS_PATH, COUNTER, &body).unwrap();
            assert_eq!(
                a.status, 202,
                "the broker's state never refuses a post: {a:?}"
            );
            accepted.extend(a.ids);
            k += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        accepted
    });
    let mut flaps = 0;
    while start.elapsed() + Duration::from_secs(4) <= minute {
        std::thread::sleep(Duration::from_secs(2));
        store.rig.broker.stop(false);
        std::thread::sleep(Duration::from_secs(2));
        store.rig.broker.restart().unwrap();
        flaps += 1;
    }
    scans.join().unwrap();
    let accepted = posts.join().unwrap();

    hq.wait_for(LONG, "every code and every accepted count", |h| {
        let d = delivered(h);
        h.scanned_payloads().len() >= sent.len()
            && accepted.iter().all(|id| d.by_id.contains_key(id))
    });
    assert_eq!(
        hq.scanned_payloads(),
        sent,
        "nothing lost, nothing reordered"
    );
    let dupes = hq.assert_consistent();
    let d = delivered(&hq);
    assert_eq!(d.seq_gaps(), Vec::<[u64; 2]>::new(), "seq is dense");
    let log = gw.log();
    let downs = log.matches("HQ link down").count();
    let ups = log.matches("connected to HQ").count();
    eprintln!(
        "flaps={flaps} link_down_lines={downs} connects={ups} codes={} counts_events={} duplicates={dupes}",
        sent.len(),
        accepted.len()
    );
    assert!(flaps >= 14, "{flaps}");
    assert!(ups > flaps / 2, "reconnected after most flaps: {ups}");
}
