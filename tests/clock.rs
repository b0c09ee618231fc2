//! The wall clock stepped back an hour under a running gateway (as when NTP corrects a clock
//! that ran ahead): ordering still follows `seq`, nothing is dropped or reordered, and every
//! event says its clock was not synchronised.
//!
//! The seam is libfaketime (Debian's `faketime`, installed by `.ci/run`): phygate runs with it
//! preloaded and its wall clock offset read from a file the test rewrites mid-run. Monotonic
//! time is left alone, as the kernel does when the wall clock is stepped.

mod common;
mod fault;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fault::*;

const LONG: Duration = Duration::from_secs(60);

/// libfaketime's multi-threaded build, wherever the distribution put it.
fn libfaketime() -> Option<PathBuf> {
    let dirs = std::fs::read_dir("/usr/lib").ok()?;
    dirs.filter_map(|d| d.ok())
        .map(|d| d.path().join("faketime/libfaketimeMT.so.1"))
        .chain([PathBuf::from("/usr/lib/faketime/libfaketimeMT.so.1")])
        .find(|p| p.is_file())
}

/// phygate under libfaketime, its wall clock offset by what `offset_file` says.
struct FakedGateway(Child);

impl FakedGateway {
    fn start(store: &Store, lib: &PathBuf, offset_file: &PathBuf) -> FakedGateway {
        let log = std::fs::File::create(store.log_path()).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_phygate"))
            .arg("run")
            .arg("--config")
            .arg(&store.rig.config)
            .env("RUST_LOG", "info")
            .env("LD_PRELOAD", lib)
            .env("FAKETIME_TIMESTAMP_FILE", offset_file)
            // Re-read the offset every second; leave CLOCK_MONOTONIC real (tokio's timers).
            .env("FAKETIME_CACHE_DURATION", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        FakedGateway(child)
    }
}

impl Drop for FakedGateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn times(events: &[serde_json::Value]) -> Vec<chrono::DateTime<chrono::Utc>> {
    events
        .iter()
        .map(|e| e["time"].as_str().unwrap().parse().unwrap())
        .collect()
}

#[test]
fn wall_clock_stepped_back_an_hour_keeps_seq_order_and_drops_nothing() {
    let Some(lib) = libfaketime() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have libfaketime (.ci/run installs faketime)"
        );
        eprintln!("SKIPPED: libfaketime is not installed (apt-get install faketime)");
        return;
    };
    let store = Store::new(&Knobs {
        top: "\n[clock]\nsync = \"assume_unsynced\"\n".into(),
        ..Knobs::default()
    });
    let offset = store.rig.dir.path().join("clock-offset");
    std::fs::write(&offset, "+0\n").unwrap();
    let hq = store.hq("clock");
    let (_pty, mut scanner) = store.rig.scanner();
    let _gw = FakedGateway::start(&store, &lib, &offset);
    store.wait_listening();
    hq.wait_for(LONG, "the scanner up", |h| !h.statuses().is_empty());

    let before = codes("T0", 100);
    let after = codes("T1", 100);
    scanner
        .scan_all(before.iter().map(String::as_str), Duration::from_millis(5))
        .unwrap();
    let mut posted = Vec::new();
    for k in 0..5 {
        let a = store.post_counts(k, 2, 1).unwrap();
        assert_eq!(a.status, 202, "{a:?}");
        posted.extend(a.ids);
    }
    hq.wait_for(LONG, "the codes before the step", |h| {
        h.scanned_payloads().len() == 100
    });

    // NTP steps the clock back an hour.
    std::fs::write(&offset, "-1h\n").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    scanner
        .scan_all(after.iter().map(String::as_str), Duration::from_millis(5))
        .unwrap();
    for k in 5..10 {
        let a = store.post_counts(k, 2, 1).unwrap();
        assert_eq!(a.status, 202, "{a:?}");
        posted.extend(a.ids);
    }
    // A counter with a right clock posts the minute that just ended: to the gateway's clock
    // it ends in the future. It is a count all the same.
    let now = chrono::Utc::now();
    let fmt = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let body = serde_json::json!({"device": "pc-1", "from": fmt(now - chrono::Duration::seconds(60)),
        "to": fmt(now), "in": 4, "out": 0});
    let a = try_post(
        store.ingest_port,
        COUNTS_PATH,
        COUNTER,
        body.to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(
        a.status, 202,
        "a future interval by the gateway's clock: {a:?}"
    );
    posted.extend(a.ids);

    hq.wait_for(LONG, "everything", |h| {
        let d = delivered(h);
        h.scanned_payloads().len() == 200 && posted.iter().all(|id| d.by_id.contains_key(id))
    });
    let all: Vec<String> = before.iter().chain(&after).cloned().collect();
    assert_eq!(
        hq.scanned_payloads(),
        all,
        "nothing dropped, nothing reordered"
    );
    hq.assert_consistent(); // arrivals in increasing seq
    let d = delivered(&hq);
    assert_eq!(d.seq_gaps(), Vec::<[u64; 2]>::new());

    // The step is visible in `time` and nowhere else.
    let scans = hq.of_type("store.qr.scanned");
    let t = times(&scans);
    let (last_before, first_after) = (t[99], t[100]);
    assert!(
        first_after < last_before - chrono::Duration::minutes(55),
        "the clock went back: {last_before} then {first_after}"
    );
    assert!(t[..100].windows(2).all(|w| w[0] <= w[1]));
    assert!(t[100..].windows(2).all(|w| w[0] <= w[1]));
    assert!(
        d.by_id.values().all(|e| e["clocksync"] == false),
        "every event says its clock was not synchronised"
    );
    assert!(wait_until(LONG, || outbox_depth(&store.db()) == 0));
}
