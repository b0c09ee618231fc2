//! The entry gate end to end on real parts: a simulated Modbus RTU I/O module on a pty → the
//! phygate binary → SQLite → mosquitto → HQ. Counting across restarts, faults, unplugs, unlocks.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use phygate::sim::modbus_gate::{Fault, GateSim};

const LONG: Duration = Duration::from_secs(30);
const GATE: &str = "gate-a";

fn gate_rig(fields: &str) -> Rig {
    let rig = Rig::new();
    rig.write_config_with(&rig.gate_device(fields), "");
    rig
}

fn has_state(hq: &Hq, state: &str, reason: &str) -> bool {
    hq.device_states(GATE)
        .iter()
        .any(|(s, r)| s == state && r.starts_with(reason))
}

fn count_of(hq: &Hq, state: &str, reason: &str) -> usize {
    hq.device_states(GATE)
        .iter()
        .filter(|(s, r)| s == state && r.starts_with(reason))
        .count()
}

/// The persisted baseline `(in, out)`.
fn baseline(rig: &Rig) -> Option<(u64, u64)> {
    let v: serde_json::Value =
        serde_json::from_slice(&outbox_state(&rig.db_path(), "gate/gate-a")?).ok()?;
    Some((v["in"].as_u64()?, v["out"].as_u64()?))
}

/// Waits until the module has answered `n` more requests: the gateway has seen what it holds.
fn polls(sim: &GateSim, n: u64) {
    let target = sim.requests() + n;
    eventually(LONG, "more polls", || sim.requests() >= target);
}

fn sum(v: &[u64]) -> u64 {
    v.iter().sum()
}

#[test]
fn passes_in_and_out_arrive_as_gate_passed_events() {
    let rig = gate_rig("");
    let hq = rig.hq("gate-pass");
    let sim = rig.gate(100, 50);
    let _gw = rig.start_gateway();
    hq.wait_for(LONG, "gate up", |h| has_state(h, "up", "responding"));
    eventually(LONG, "the first read persisted as the baseline", || {
        baseline(&rig) == Some((100, 50))
    });

    sim.pass_in(3);
    hq.wait_for(LONG, "3 in", |h| h.gate_passes("in") == [3]);
    sim.pass_out(1);
    sim.pass_in(2);
    hq.wait_for(LONG, "2 in, 1 out", |h| {
        h.gate_passes("in") == [3, 2] && h.gate_passes("out") == [1]
    });
    polls(&sim, 4);
    assert_eq!(
        hq.gate_passes("in"),
        [3, 2],
        "the counters' first values were never counted"
    );
    assert_eq!(hq.gate_passes("out"), [1]);
    assert_eq!(baseline(&rig), Some((105, 51)));

    let e = hq
        .unique()
        .into_iter()
        .find(|e| e["type"] == "store.gate.passed")
        .unwrap();
    assert_eq!(e["source"], "/stores/s1/stations/gate-1");
    assert_eq!(e["data"]["gate"], GATE);
    assert_eq!(e["idsource"], "none");
    assert!(e.get("userid").is_none());
    hq.assert_consistent();
}

#[test]
fn counter_wrap_at_2_pow_32_counts_the_passages() {
    let rig = gate_rig("");
    let hq = rig.hq("gate-wrap");
    let sim = rig.gate(u32::MAX - 1, u32::MAX);
    let _gw = rig.start_gateway();
    eventually(LONG, "baseline", || {
        baseline(&rig) == Some((u64::from(u32::MAX - 1), u64::from(u32::MAX)))
    });
    sim.pass_in(5);
    sim.pass_out(2);
    assert_eq!(sim.counters(), (3, 1), "both counters wrapped");
    hq.wait_for(LONG, "5 in, 2 out", |h| {
        h.gate_passes("in") == [5] && h.gate_passes("out") == [2]
    });
    assert!(
        !has_state(&hq, "error", "counter_reset"),
        "a wrap is no reset"
    );
    assert_eq!(baseline(&rig), Some((3, 1)));
}

#[test]
fn module_reset_reports_counter_reset_and_counts_since_the_reset() {
    let rig = gate_rig("");
    let hq = rig.hq("gate-reset");
    let sim = rig.gate(5000, 4000);
    let _gw = rig.start_gateway();
    eventually(LONG, "baseline", || baseline(&rig) == Some((5000, 4000)));
    // The module restarts, and two people come in before the next poll.
    sim.set_counters(2, 0);
    hq.wait_for(LONG, "counter_reset and 2 in", |h| {
        has_state(h, "error", "counter_reset") && h.gate_passes("in") == [2]
    });
    eventually(LONG, "the reset baseline", || {
        baseline(&rig) == Some((2, 0))
    });
    sim.pass_out(1);
    hq.wait_for(LONG, "1 out", |h| h.gate_passes("out") == [1]);
    polls(&sim, 3);
    assert_eq!(count_of(&hq, "error", "counter_reset"), 1);
    assert_eq!(hq.gate_passes("in"), [2]);
}

#[test]
fn restart_counts_passages_during_downtime_once() {
    let rig = gate_rig("");
    let hq = rig.hq("gate-restart");
    let sim = rig.gate(10, 10);
    let mut gw = rig.start_gateway();
    eventually(LONG, "baseline", || baseline(&rig) == Some((10, 10)));
    sim.pass_in(3);
    hq.wait_for(LONG, "3 in", |h| h.gate_passes("in") == [3]);

    // SIGTERM, people pass while phygate is stopped, start again.
    assert!(gw.terminate().success());
    sim.pass_in(4);
    sim.pass_out(1);
    gw.restart();
    hq.wait_for(LONG, "the downtime's passages", |h| {
        h.gate_passes("in") == [3, 4] && h.gate_passes("out") == [1]
    });

    // kill -9 at various points after passages: before the poll saw them, between the poll and
    // the commit, after the commit. Each way they are counted exactly once.
    let mut expected_in = 7;
    for (i, delay_ms) in [0u64, 40, 90, 160, 260, 400].into_iter().enumerate() {
        let n = i as u32 + 1;
        sim.pass_in(n);
        expected_in += u64::from(n);
        std::thread::sleep(Duration::from_millis(delay_ms));
        gw.kill9();
        if i % 2 == 0 {
            sim.pass_out(1);
        }
        gw.restart();
        hq.wait_for(LONG, "every passage counted", |h| {
            sum(&h.gate_passes("in")) >= expected_in
        });
    }
    let expected_out = 1 + 3;
    hq.wait_for(LONG, "every out counted", |h| {
        sum(&h.gate_passes("out")) >= expected_out
    });
    polls(&sim, 4);
    assert_eq!(sum(&hq.gate_passes("in")), expected_in, "none twice");
    assert_eq!(sum(&hq.gate_passes("out")), expected_out, "none twice");
    let (i, o) = sim.counters();
    assert_eq!(baseline(&rig), Some((u64::from(i), u64::from(o))));
    hq.assert_consistent();
}

#[test]
fn exception_bad_crc_timeout_and_garbage_are_reported_and_the_next_passage_counts() {
    let rig = gate_rig("");
    let hq = rig.hq("gate-faults");
    let sim = rig.gate(0, 0);
    let mut gw = rig.start_gateway();
    hq.wait_for(LONG, "gate up", |h| has_state(h, "up", "responding"));
    let faults = [
        (Fault::Exception(2), "exception_illegal_data_address"),
        (Fault::BadCrc, "crc_mismatch"),
        (Fault::Silence, "no_response"),
        (Fault::HangMidFrame, "truncated"),
        (Fault::Garbage, "bad_frame"),
    ];
    for (fault, reason) in faults {
        sim.inject(fault, 1);
        hq.wait_for(LONG, reason, |h| has_state(h, "error", reason));
    }
    sim.pass_in(2);
    hq.wait_for(LONG, "2 in", |h| h.gate_passes("in") == [2]);
    let errors: u64 = hq
        .statuses()
        .iter()
        .filter(|e| e["data"]["device"] == GATE && e["data"]["state"] == "error")
        .map(|e| e["data"]["count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(errors, 5, "each failed poll counted once");
    assert!(
        !has_state(&hq, "down", ""),
        "single failures never mark the gate down"
    );
    assert!(!gw.log().contains("panicked"), "{}", gw.log());
    assert!(gw.terminate().success());
}

#[test]
fn three_timeouts_mark_the_gate_down_until_it_answers_again() {
    let rig = gate_rig("");
    let hq = rig.hq("gate-down");
    let sim = rig.gate(0, 0);
    let _gw = rig.start_gateway();
    hq.wait_for(LONG, "gate up", |h| has_state(h, "up", "responding"));

    sim.inject(Fault::Silence, 2);
    eventually(LONG, "two timeouts", || sim.faults_pending() == 0);
    polls(&sim, 2);
    assert!(!has_state(&hq, "down", ""), "two in a row are not down");

    sim.inject(Fault::Silence, 3);
    hq.wait_for(LONG, "down", |h| {
        has_state(h, "down", "3 failed polls in a row")
    });
    hq.wait_for(LONG, "up again", |h| has_state(h, "up", "answering again"));
    let states = hq.device_states(GATE);
    let down = states.iter().position(|(s, _)| s == "down").unwrap();
    assert!(
        states[down + 1..].iter().any(|(s, _)| s == "up"),
        "{states:?}"
    );
    sim.pass_in(1);
    hq.wait_for(LONG, "1 in", |h| h.gate_passes("in") == [1]);
}

#[test]
fn unplugged_gate_is_down_and_counts_what_passed_while_unplugged() {
    let rig = gate_rig("");
    let hq = rig.hq("gate-unplug");
    let sim = rig.gate(0, 0);
    let _gw = rig.start_gateway();
    hq.wait_for(LONG, "gate up", |h| has_state(h, "up", "responding"));
    sim.pass_in(1);
    hq.wait_for(LONG, "1 in", |h| h.gate_passes("in") == [1]);

    let (i, o) = sim.counters();
    drop(sim);
    hq.wait_for(LONG, "down", |h| has_state(h, "down", ""));
    std::thread::sleep(Duration::from_millis(300));
    // The module kept counting while its cable was out.
    let sim = rig.gate(i + 4, o + 2);
    hq.wait_for(LONG, "up again", |h| has_state(h, "up", "answering again"));
    hq.wait_for(LONG, "the unplugged time's passages", |h| {
        h.gate_passes("in") == [1, 4] && h.gate_passes("out") == [2]
    });
    polls(&sim, 2);
    assert_eq!(count_of(&hq, "down", ""), 1, "one report per outage");
}

#[test]
fn alarm_input_is_an_error_and_clearing_it_is_up() {
    let rig = gate_rig("");
    let hq = rig.hq("gate-alarm");
    let sim = rig.gate(0, 0);
    let _gw = rig.start_gateway();
    hq.wait_for(LONG, "gate up", |h| has_state(h, "up", "responding"));
    sim.set_alarm(true);
    hq.wait_for(LONG, "alarm", |h| has_state(h, "error", "alarm"));
    polls(&sim, 3);
    assert_eq!(count_of(&hq, "error", "alarm"), 1, "an edge, not a level");
    sim.set_alarm(false);
    hq.wait_for(LONG, "alarm cleared", |h| {
        has_state(h, "up", "alarm cleared")
    });
}

/// The daemon in this process, so the test can hold its gate registry.
struct InProcess {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl InProcess {
    fn start(rig: &Rig) -> (InProcess, phygate::daemon::Controls) {
        let config = phygate::config::Config::load(&rig.config).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, controls) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(phygate::daemon::run_with(
                config,
                async {
                    let _ = stopped.await;
                },
                move |c| ready.send(c).unwrap(),
            ))
        });
        let controls = controls.recv_timeout(LONG).expect("the daemon started");
        let daemon = InProcess {
            stop: Some(stop),
            thread: Some(thread),
        };
        (daemon, controls)
    }

    fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap().unwrap();
    }
}

#[test]
fn unlock_writes_coil_0_ff00_before_the_next_poll() {
    // Polls 2 s apart: an unlock that waited for the next poll would take ~1 s on average.
    let rig = gate_rig("poll_interval = \"2s\"");
    let sim = rig.gate(0, 0);
    let (daemon, controls) = InProcess::start(&rig);
    let gate = controls
        .gates
        .get("gate-1")
        .expect("the gate of station gate-1")
        .clone();
    assert_eq!(gate.device(), GATE);
    assert!(controls.gates.get("gate-2").is_none());
    eventually(LONG, "first poll", || sim.requests() >= 1);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut to_wire = Vec::new();
    let mut at_module = Vec::new();
    for i in 0..20 {
        let asked = Instant::now();
        let receipt = rt.block_on(gate.unlock()).expect("unlocked");
        assert!(
            receipt.confirmed(),
            "the module echoed the write: {receipt:?}"
        );
        let writes = sim.coil_writes();
        assert_eq!(writes.len(), i + 1);
        let w = writes[i];
        assert_eq!((w.address, w.on), (0, true), "coil 0 = FF00");
        assert!(w.at >= asked && w.at <= Instant::now());
        to_wire.push(receipt.latency());
        at_module.push(w.at - asked);
        // Land the next request elsewhere in the poll cycle.
        std::thread::sleep(Duration::from_millis(fastrand::u64(0..300)));
    }
    to_wire.sort();
    at_module.sort();
    eprintln!(
        "unlock latency over {} requests, request -> on the wire (tcdrain): min {:?} median {:?} max {:?}; \
         request -> module read it: min {:?} median {:?} max {:?}",
        to_wire.len(),
        to_wire[0],
        to_wire[to_wire.len() / 2],
        to_wire[to_wire.len() - 1],
        at_module[0],
        at_module[at_module.len() / 2],
        at_module[at_module.len() - 1],
    );
    assert!(
        at_module[at_module.len() / 2] < Duration::from_millis(500),
        "unlocks must not wait for the next poll: {at_module:?}"
    );

    // Unplugged: refused, never queued to open the gate later.
    drop(sim);
    let refused = (0..200).find_map(|_| match rt.block_on(gate.unlock()) {
        Err(phygate::sources::gate::GateError::NotConnected(_)) => Some(()),
        _ => {
            std::thread::sleep(Duration::from_millis(50));
            None
        }
    });
    assert!(refused.is_some(), "an unplugged gate refuses unlocks");
    daemon.stop();
}

#[test]
fn simulate_gate_cli_drives_a_running_gateway() {
    let rig = gate_rig("");
    let hq = rig.hq("gate-cli");
    let mut sim = Command::new(env!("CARGO_BIN_EXE_phygate"))
        .args(["simulate", "gate", "--link"])
        .arg(rig.gate_link())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually(LONG, "the simulated port", || rig.gate_link().exists());
    let _gw = rig.start_gateway();
    hq.wait_for(LONG, "gate up", |h| has_state(h, "up", "responding"));
    let stdin = sim.stdin.as_mut().unwrap();
    stdin.write_all(b"in 3\nout 1\n").unwrap();
    stdin.flush().unwrap();
    hq.wait_for(LONG, "3 in, 1 out", |h| {
        h.gate_passes("in") == [3] && h.gate_passes("out") == [1]
    });
    stdin.write_all(b"alarm on\n").unwrap();
    stdin.flush().unwrap();
    hq.wait_for(LONG, "alarm", |h| has_state(h, "error", "alarm"));
    sim.kill().unwrap();
    sim.wait().unwrap();
}
