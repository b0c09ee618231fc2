//! The source against the simulated PN532 over a real pty, without the rest of the pipeline.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::*;
use crate::sim::pn532::{Fault, Pn532Sim, SimCard};
use crate::sources::Reading;

const WAIT: Duration = Duration::from_secs(10);
const UID7: [u8; 7] = [0x04, 0xA2, 0x2B, 0x19, 0x3C, 0x5E, 0x80];

struct Harness {
    sim: Pn532Sim,
    rx: mpsc::Receiver<Reading>,
    stop: Shutdown,
    thread: Option<JoinHandle<Result<(), SourceError>>>,
    got: Vec<Reading>,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn start() -> Harness {
        Harness::start_with(None)
    }

    fn start_with(silent_after: Option<Duration>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("nfc0");
        let sim = Pn532Sim::start(&link).unwrap();
        let (tx, rx) = mpsc::channel(64);
        let stop = Shutdown::new();
        let config = NfcConfig {
            port: link,
            baud: 115_200,
            poll_interval: Duration::from_millis(100),
            silent_after,
        };
        let source = NfcSource::new(
            config,
            ReadingSink::new("nfc-1", "kiosk-1", "nfc", tx),
            stop.clone(),
        );
        let thread = std::thread::spawn(move || source.run());
        Harness {
            sim,
            rx,
            stop,
            thread: Some(thread),
            got: Vec::new(),
            _dir: dir,
        }
    }

    /// Collects readings until `f` holds.
    fn wait_for(&mut self, what: &str, f: impl Fn(&Harness) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !f(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                self.states()
            );
            match self.rx.try_recv() {
                Ok(r) => self.got.push(r),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    fn taps(&self) -> Vec<&NfcTap> {
        self.got
            .iter()
            .filter_map(|r| match &r.observation {
                Observation::NfcTap(t) => Some(t),
                _ => None,
            })
            .collect()
    }

    fn states(&self) -> Vec<(DeviceState, String)> {
        self.got
            .iter()
            .filter_map(|r| match &r.observation {
                Observation::Status(s) => Some((s.state, s.reason.clone())),
                _ => None,
            })
            .collect()
    }

    fn count(&self, state: DeviceState) -> usize {
        self.states().iter().filter(|(s, _)| *s == state).count()
    }

    fn stop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            t.join().unwrap().unwrap();
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.stop();
    }
}

#[test]
fn initialises_with_wakeup_polls_and_taps_once_per_card() {
    let mut h = Harness::start();
    h.wait_for("up", |h| h.count(DeviceState::Up) == 1);
    assert_eq!(h.states()[0].1, "ready: PN532 v1.6");
    let s = h.sim.stats();
    assert_eq!(s.wakeups, 1, "{s:?}");

    h.sim.place(SimCard::new(&UID7, 0x00));
    h.wait_for("a tap", |h| h.taps().len() == 1);
    let before = h.sim.stats().polls_with_card;
    h.wait_for("5 more polls seeing the card", |h| {
        h.sim.stats().polls_with_card >= before + 5
    });
    let s = h.sim.stats();
    assert!(
        s.releases >= s.polls_with_card,
        "InRelease after each card: {s:?}"
    );
    let tap = h.taps()[0].clone();
    assert_eq!(tap.uid.as_bytes(), UID7);
    assert_eq!(tap.card_type, CardType::UltralightNtag);
    assert!(!tap.random_uid);

    h.sim.place(SimCard::new(&[0x04, 1, 2, 3], 0x08));
    h.wait_for("the other card", |h| h.taps().len() == 2);
    assert_eq!(h.taps()[1].card_type, CardType::MifareClassic1k);
    assert_eq!(h.count(DeviceState::Error), 0, "{:?}", h.states());

    h.stop();
    h.wait_for("the abort ACK", |h| h.sim.stats().host_acks == 1);
}

#[test]
fn lost_frames_are_resent_or_nacked_without_an_error() {
    let mut h = Harness::start();
    h.wait_for("up", |h| h.count(DeviceState::Up) == 1);
    h.sim.inject(Fault::DropAck);
    h.sim.inject(Fault::BadChecksum);
    h.sim.inject(Fault::Garbage(
        b"\x13\x37\x00\x00\xff\x05\x99 noise".to_vec(),
    ));
    h.wait_for("faults applied", |h| h.sim.stats().faults_applied == 3);
    h.sim.place(SimCard::new(&UID7, 0x00));
    h.wait_for("a tap", |h| h.taps().len() == 1);
    let s = h.sim.stats();
    assert_eq!(s.resends, 1, "{s:?}");
    assert_eq!(
        s.nacks, 2,
        "one for the bad DCS, one for the noise's bad LCS: {s:?}"
    );
    assert_eq!(h.count(DeviceState::Error), 0, "{:?}", h.states());
}

#[test]
fn hung_reader_is_an_error_then_reinitialised_with_wakeup() {
    let mut h = Harness::start();
    h.wait_for("up", |h| h.count(DeviceState::Up) == 1);
    h.sim.inject(Fault::Hang(Duration::from_millis(800)));
    h.wait_for("error", |h| h.count(DeviceState::Error) == 1);
    h.wait_for("recovered", |h| h.count(DeviceState::Up) == 2);
    let states = h.states();
    assert!(
        states[1].1.contains("no response to command 0x4a"),
        "{states:?}"
    );
    assert_eq!(states[2].1, "recovered: PN532 v1.6", "{states:?}");
    assert_eq!(h.sim.stats().wakeups, 2, "woken again after the hang");
    h.sim.place(SimCard::random());
    h.wait_for("a tap", |h| h.taps().len() == 1);
    assert!(h.taps()[0].random_uid);
}

#[test]
fn idle_reader_goes_silent_and_a_tap_brings_it_back() {
    let mut h = Harness::start_with(Some(Duration::from_millis(300)));
    h.wait_for("silent", |h| h.count(DeviceState::Silent) == 1);
    assert_eq!(h.states()[1].1, "no tap for 300 ms");
    h.sim.place(SimCard::new(&UID7, 0x00));
    h.wait_for("a tap", |h| h.taps().len() == 1);
    let states = h.states();
    assert_eq!(
        states[2],
        (DeviceState::Up, "tapped again".to_owned()),
        "{states:?}"
    );
    assert_eq!(states.len(), 3, "reported once each: {states:?}");
}
