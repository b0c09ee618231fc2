//! The loss rule under consumer lag (docs/hq.md, "Losses"), on a real mosquitto and a real
//! PostgreSQL: two `phygate-hq` consumers share one group and one journey store, and one of
//! them is slowed for real — its process is stopped (SIGSTOP) for 3 s at a time, then runs
//! for 0.3 s — while two stores publish with the gateway's own outbox and uplink. The broker
//! queues the slow consumer's share of each store's batches, so the other consumer commits
//! numbers far above the ones still queued, for longer than the 2 s grace. Nothing is declared
//! lost that then arrives (no late event), while three rows deleted behind one outbox are
//! reported lost, exactly those.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pg::Postgres;
use common::{broker, identified, scan, wait_for, Edge, Hq};
use nix::sys::signal::Signal;

const WAIT: Duration = Duration::from_secs(120);
const GRACE_S: f64 = 2.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagging_consumer_raises_no_false_loss_and_a_real_one_is_still_reported() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    let pg = Postgres::start();
    let tables = format!(
        "[store]\nkind = \"postgres\"\nurl = \"{}\"\n",
        pg.database("journey")
    );
    let slow = Hq::start_with(&dir.path().join("a"), broker.port, "2s", "hq-a", &tables);
    let fast = Hq::start_with(&dir.path().join("b"), broker.port, "2s", "hq-b", &tables);
    let mut s1 = Edge::open(&dir.path().join("s1"), "s1", broker.port);
    let mut s2 = Edge::open(&dir.path().join("s2"), "s2", broker.port);

    // A real loss first: rows 4, 5 and 8 deleted behind s1's outbox before it publishes.
    let mut published = 0u64;
    for _ in 0..10 {
        s1.append(identified("u-1", 20)).await;
        published += 1;
    }
    s1.delete_behind_its_back(&[4, 5, 8]);
    published -= 3;
    s1.start_uplink();
    s2.start_uplink();

    // The slow consumer: stopped 3 s, running 0.3 s, for 15 s.
    let stalling = Arc::new(AtomicBool::new(true));
    let staller = {
        let (stalling, pid) = (stalling.clone(), slow_pid(&slow));
        std::thread::spawn(move || {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(15) {
                signal(pid, Signal::SIGSTOP);
                std::thread::sleep(Duration::from_millis(3_000));
                signal(pid, Signal::SIGCONT);
                std::thread::sleep(Duration::from_millis(300));
            }
            stalling.store(false, Ordering::SeqCst);
        })
    };
    let mut worst_lag = 0f64;
    while stalling.load(Ordering::SeqCst) {
        for i in 0..20 {
            for e in [&s1, &s2] {
                e.append(if i % 4 == 0 {
                    identified("u-2", 20)
                } else {
                    scan(30)
                })
                .await;
                published += 1;
            }
        }
        worst_lag = worst_lag.max(fast.gauge("phygate_hq_group_lag_seconds").unwrap_or(0.0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    staller.join().unwrap();

    let stored = || -> u64 {
        pg.query("journey", "SELECT count(*) FROM events")[0]
            .parse()
            .unwrap()
    };
    wait_for(WAIT, "every published event stored", || {
        worst_lag = worst_lag.max(fast.gauge("phygate_hq_group_lag_seconds").unwrap_or(0.0));
        stored() == published
    });
    // The test has teeth only if the slow consumer held numbers longer than the grace.
    assert!(
        worst_lag > GRACE_S,
        "the slowed consumer never lagged past the grace ({worst_lag:.1} s)"
    );
    wait_for(WAIT, "the real loss reported", || {
        fast.query(&["losses"])
            .iter()
            .any(|g| g["store"] == "s1" && g["lost"] == 3)
    });
    std::thread::sleep(Duration::from_millis(3_000));
    let losses = fast.query(&["losses"]);
    assert_eq!(losses.len(), 2, "{losses:?}");
    for g in &losses {
        let lost = if g["store"] == "s1" {
            serde_json::json!([[4, 5], [8, 8]])
        } else {
            serde_json::json!([])
        };
        assert_eq!(g["lost_ranges"], lost, "{g}");
        assert_eq!(g["pending_ranges"], serde_json::json!([]), "{g}");
        assert_eq!(g["late"], 0, "declared lost, then arrived: {g}");
    }
    for hq in [&slow, &fast] {
        assert_eq!(hq.metric("phygate_hq_late_events_total"), 0, "{}", hq.log());
    }
    s1.stop_uplink().await;
    s2.stop_uplink().await;
}

fn slow_pid(hq: &Hq) -> i32 {
    hq.pid()
}

fn signal(pid: i32, s: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), s).unwrap();
}
