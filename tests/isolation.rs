//! One broken device never stalls another: every device kind runs at once, then the NFC reader
//! hangs mid-frame and the gate's I/O module goes silent mid-answer, and the scanner and skin
//! analyzer keep their rate.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use phygate::sim::modbus_gate::Fault as GateFault;
use phygate::sim::pn532::{Fault as NfcFault, Pn532Sim};
use phygate::sim::skin::sample;

const LONG: Duration = Duration::from_secs(60);
const PHASE: Duration = Duration::from_secs(4);

#[test]
fn hung_devices_do_not_slow_the_others() {
    let rig = Rig::new();
    let devices = format!(
        r#"
[[device]]
kind = "gate"
id = "turnstile"
station = "gate-1"
port = "{gate}"
timeout = "200ms"

[[station]]
id = "kiosk"
role = "kiosk"

[[device]]
kind = "nfc"
id = "kiosk-nfc"
station = "kiosk"
port = "{nfc}"

[[device]]
kind = "skin"
id = "analyzer"
station = "kiosk"
port = "{skin}"
"#,
        gate = rig.gate_link().display(),
        nfc = rig.device_link("nfc0").display(),
        skin = rig.device_link("skin0").display(),
    );
    rig.write_config_with(&devices, "");
    let hq = rig.hq("isolation");
    let (_s, mut scanner) = rig.scanner();
    let (_k, mut skin) = rig.skin();
    let gate = rig.gate(0, 0);
    let nfc = Pn532Sim::start(&rig.device_link("nfc0")).unwrap();
    let _gw = rig.start_gateway();
    hq.wait_for(LONG, "all four devices up", |h| {
        ["scanner-1", "turnstile", "kiosk-nfc", "analyzer"]
            .iter()
            .all(|d| h.statuses_of(d).iter().any(|e| e["data"]["state"] == "up"))
    });

    // Steady readings from the healthy devices: a code every 40 ms, a diagnosis every 200 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                scanner.scan(&format!("CODE-{n:05}")).unwrap();
                if n % 5 == 0 {
                    skin.send(&sample("AX-200", n)).unwrap();
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(40));
            }
            n
        })
    };
    let start = Instant::now();
    std::thread::sleep(PHASE);
    // Phase 2: the reader hangs mid-frame, the module answers half a frame to every poll.
    nfc.inject(NfcFault::Hang(PHASE * 2));
    for _ in 0..40 {
        gate.inject(GateFault::HangMidFrame, 1);
    }
    std::thread::sleep(PHASE);
    stop.store(true, Ordering::SeqCst);
    let sent = feeder.join().unwrap();
    let elapsed = start.elapsed();

    hq.wait_for(LONG, "every code", |h| {
        h.scanned_payloads().len() as u64 == sent
    });
    hq.wait_for(LONG, "the hung devices reported", |h| {
        ["turnstile", "kiosk-nfc"]
            .iter()
            .all(|d| h.statuses_of(d).iter().any(|e| e["data"]["state"] != "up"))
    });
    // Count by the gateway's reading time: a stalled pipeline would bunch or delay them.
    let events = hq.unique();
    let first = events
        .iter()
        .find(|e| e["type"] == "store.qr.scanned")
        .unwrap()["time"]
        .as_str()
        .unwrap()
        .to_owned();
    let t0 = chrono::DateTime::parse_from_rfc3339(&first).unwrap();
    let phase_of = |e: &serde_json::Value| {
        let t = chrono::DateTime::parse_from_rfc3339(e["time"].as_str().unwrap()).unwrap();
        ((t - t0).to_std().unwrap_or_default().as_millis() / PHASE.as_millis()) as usize
    };
    let mut codes = [0u32; 3];
    let mut diagnoses = [0u32; 3];
    for e in &events {
        let p = phase_of(e).min(2);
        match e["type"].as_str() {
            Some("store.qr.scanned") => codes[p] += 1,
            Some("store.skin.diagnosed") => diagnoses[p] += 1,
            _ => {}
        }
    }
    eprintln!("over {elapsed:?}: codes per phase {codes:?}, diagnoses per phase {diagnoses:?}");
    let ratio = f64::from(codes[1]) / f64::from(codes[0].max(1));
    assert!(
        ratio > 0.8,
        "codes while two devices hung: {codes:?} ({ratio:.2} of before)"
    );
    assert!(
        f64::from(diagnoses[1]) >= f64::from(diagnoses[0]) * 0.7,
        "diagnoses: {diagnoses:?}"
    );
    hq.assert_consistent();
}
