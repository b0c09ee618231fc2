//! Acknowledgement by watermark, on real parts: the daemon dies between committing the
//! acknowledged watermark and removing the rows under it (a fault point,
//! `PHYGATE_TEST_ABORT_BEFORE_RECLAIM`, aborts the process where the first range delete would
//! start, as a SIGKILL would). The next run publishes exactly the rows above the watermark:
//! nothing acknowledged again, nothing unacknowledged dropped, and the dead rows are removed.

mod common;
mod fault;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::Gateway;
use fault::*;

const LONG: Duration = Duration::from_secs(120);
const CODES: usize = 5_000;

/// The watermark and the rows in the file (dead ones included), read beside the daemon.
fn file_state(db: &Path) -> (u64, Vec<u64>) {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let acked: i64 = conn
        .query_row("SELECT value FROM meta WHERE key = 'acked'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let mut q = conn.prepare("SELECT seq FROM outbox ORDER BY seq").unwrap();
    let seqs = q
        .query_map([], |r| r.get::<_, i64>(0))
        .unwrap()
        .map(|s| s.unwrap() as u64)
        .collect();
    (acked as u64, seqs)
}

/// How many times HQ got each seq.
fn arrivals_by_seq(hq: &common::Hq) -> HashMap<u64, usize> {
    let mut by_seq = HashMap::new();
    for e in hq.all() {
        *by_seq.entry(e["seq"].as_u64().unwrap()).or_insert(0) += 1;
    }
    by_seq
}

fn alive(pid: i32) -> bool {
    // Exited but not yet reaped shows as a zombie (`Z`) in /proc.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

#[test]
fn a_kill_between_the_watermark_and_the_range_delete_loses_nothing_and_resends_nothing_acked() {
    // No replay window: the range delete comes right after the acknowledgement, where the
    // fault point is (with a window it comes a window later, through the same code). One event
    // per publish and one publish in flight: the drain takes thousands of round trips, far
    // longer than the outbox waits before committing a drain's acknowledgements (ACK_LINGER,
    // 500 ms, unless they reach the last row); with the default 8 × 500 the whole backlog was
    // acknowledged within that wait in about half the runs, and the first commit left no row
    // unacknowledged.
    let mut store = Store::new(&Knobs {
        outbox: "replay_window = \"0s\"".into(),
        uplink: "batch_max_events = 1\ninflight = 1".into(),
        ..Knobs::default()
    });
    let hq = store.hq("watermark");
    let (_pty, mut scanner) = store.rig.scanner();
    let db = store.db();

    // A backlog, as after an outage: the codes are in the outbox, none published.
    let mut gw = store.start_gateway();
    hq.wait_for(LONG, "the gateway online", |h| !h.statuses().is_empty());
    store.rig.broker.stop(false);
    let sent = codes("WM", CODES);
    scanner
        .scan_all(sent.iter().map(String::as_str), Duration::ZERO)
        .unwrap();
    assert!(
        wait_until(LONG, || outbox_depth(&db) >= CODES as u64),
        "the outbox holds the backlog: {}",
        outbox_depth(&db)
    );
    gw.kill9();
    let (acked_before, _) = file_state(&db);

    // The run that dies: it starts to drain, commits the first acknowledgements' watermark,
    // and aborts where the range delete would start, with most of the backlog unacknowledged.
    store.rig.broker.restart().unwrap();
    let mut dying = Gateway::start_with_env(
        &store.rig.config,
        &store.log_path(),
        &[("PHYGATE_TEST_ABORT_BEFORE_RECLAIM", "1")],
    );
    let pid = dying.pid();
    assert!(
        wait_until(LONG, || !alive(pid)),
        "the daemon reached the fault point"
    );
    dying.kill9();
    let (acked, rows) = file_state(&db);
    assert!(acked > acked_before, "the run acknowledged by watermark");
    let dead = rows.iter().filter(|s| **s <= acked).count();
    assert!(
        dead > 0,
        "killed between the watermark's commit and the range delete: dead rows remain"
    );
    assert!(
        rows.iter().any(|s| *s > acked),
        "killed in the middle of the drain: unacknowledged rows remain"
    );
    let last_seq = *rows.last().unwrap().max(&acked);
    // Everything at or below the watermark was acknowledged by the broker, so HQ gets it.
    hq.wait_for(LONG, "every acknowledged seq at HQ", |h| {
        let got = arrivals_by_seq(h);
        (1..=acked).all(|s| got.contains_key(&s))
    });
    std::thread::sleep(Duration::from_millis(300));
    let before_restart = arrivals_by_seq(&hq);

    // The next run: publishes what is above the watermark, and removes the dead rows.
    let mut gw = store.start_gateway();
    hq.wait_for(LONG, "every code at HQ", |h| {
        let payloads = h.scanned_payloads();
        sent.iter().all(|c| payloads.contains(c))
    });
    assert!(
        wait_until(LONG, || file_state(&db).1.iter().all(|s| *s > last_seq)),
        "the dead rows were removed: {:?}",
        file_state(&db).1.first()
    );
    gw.terminate();

    let after = arrivals_by_seq(&hq);
    for seq in 1..=last_seq {
        assert!(after.contains_key(&seq), "seq {seq} never reached HQ");
    }
    let resent: Vec<u64> = (1..=acked)
        .filter(|s| after.get(s) != before_restart.get(s))
        .collect();
    assert!(
        resent.is_empty(),
        "acknowledged rows were published again after the restart: {resent:?}"
    );
    assert!(
        (acked + 1..=last_seq).all(|s| after.contains_key(&s)),
        "every unacknowledged row was published"
    );
    eprintln!(
        "watermark {acked} of {last_seq} at the kill, {dead} dead rows left in the file, \
         {} seqs above it published by the next run",
        last_seq - acked
    );
}
