//! The NFC reader end to end on real parts: a simulated PN532 on a pty → phygate binary →
//! SQLite → mosquitto → HQ. The expected card hashes are computed here with the hmac crate, not
//! with phygate's own function.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use phygate::sim::pn532::{Fault, Pn532Sim, SimCard};
use serde_json::Value;
use sha2::Sha256;

use common::*;

const LONG: Duration = Duration::from_secs(60);
/// The tenant card key: bytes 0x00..=0x1f.
const CARD_KEY: [u8; 32] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
    26, 27, 28, 29, 30, 31,
];
const NTAG: [u8; 7] = [0x04, 0xA2, 0x2B, 0x19, 0x3C, 0x5E, 0x80];
const CLASSIC: [u8; 4] = [0xDE, 0xAD, 0xBE, 0xEF];
const DESFIRE: [u8; 10] = [0x04, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99];

fn expected_hash(uid: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&CARD_KEY).unwrap();
    mac.update(uid);
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A rig whose config also has reader `nfc-1` at station `kiosk-1`, with the card key unless
/// `card_key` is false. Returns the reader's port link.
fn nfc_rig(card_key: bool) -> (Rig, PathBuf) {
    let rig = Rig::new();
    let link = rig.dir.path().join("nfc0");
    rig.add_devices(&format!(
        r#"
[[station]]
id = "kiosk-1"
role = "kiosk"

[[device]]
kind = "nfc"
id = "nfc-1"
station = "kiosk-1"
port = "{}"
"#,
        link.display()
    ));
    if card_key {
        rig.write_config(&format!(
            "\n[identity]\ncard_key = \"{}\"\n",
            URL_SAFE_NO_PAD.encode(CARD_KEY)
        ));
    }
    (rig, link)
}

fn taps(hq: &Hq) -> Vec<Value> {
    hq.unique()
        .into_iter()
        .filter(|e| e["type"] == "store.nfc.tapped")
        .collect()
}

fn hashes(hq: &Hq) -> Vec<String> {
    taps(hq)
        .iter()
        .map(|e| e["data"]["card_hash"].as_str().unwrap_or("-").to_owned())
        .collect()
}

/// The reader's status reports as (state, reason), in seq order.
fn reader_states(hq: &Hq) -> Vec<(String, String)> {
    hq.statuses()
        .iter()
        .filter(|e| e["data"]["device"] == "nfc-1")
        .map(|e| {
            let d = &e["data"];
            (
                d["state"].as_str().unwrap().to_owned(),
                d["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn count_state(hq: &Hq, state: &str) -> usize {
    reader_states(hq).iter().filter(|(s, _)| s == state).count()
}

/// Starts HQ, the simulated reader and phygate, and waits until the reader is up.
fn start(rig: &Rig, link: &Path, name: &str) -> (Hq, Pn532Sim, Gateway) {
    let hq = rig.hq(name);
    let sim = Pn532Sim::start(link).unwrap();
    let gw = rig.start_gateway();
    hq.wait_for(LONG, "reader up", |h| count_state(h, "up") == 1);
    (hq, sim, gw)
}

fn event_time(e: &Value) -> SystemTime {
    let t = chrono::DateTime::parse_from_rfc3339(e["time"].as_str().unwrap()).unwrap();
    SystemTime::UNIX_EPOCH + Duration::from_millis(t.timestamp_millis() as u64)
}

#[test]
fn tap_reaches_hq_once_with_its_card_hash_and_never_the_uid() {
    let (rig, link) = nfc_rig(true);
    let (hq, sim, mut gw) = start(&rig, &link, "nfc-tap");
    assert_eq!(sim.stats().wakeups, 1, "woken before the first command");

    sim.place(SimCard::new(&NTAG, 0x00));
    hq.wait_for(LONG, "the tap", |h| taps(h).len() == 1);
    let e = &taps(&hq)[0];
    assert_eq!(e["source"], "/stores/s1/stations/kiosk-1");
    assert_eq!(e["idsource"], "none");
    assert!(e.get("userid").is_none());
    let d = &e["data"];
    assert_eq!(d["card_hash"], expected_hash(&NTAG));
    assert_eq!(d["card_type"], "ultralight_ntag");
    assert_eq!(d["uid_len"], 7);
    assert_eq!(d["random_uid"], false);
    assert_eq!(d["member"], false);
    assert!(d.get("sel_res").is_none());

    // Swapping cards: each new card is a tap at once, though the last one left just now.
    let swapped = SystemTime::now();
    sim.place(SimCard::new(&CLASSIC, 0x08));
    hq.wait_for(LONG, "the second card", |h| taps(h).len() == 2);
    let e = &taps(&hq)[1];
    let after = event_time(e).duration_since(swapped).unwrap_or_default();
    assert!(
        after < Duration::from_millis(450),
        "new card seen within the tap window: {after:?}"
    );
    assert_eq!(e["data"]["card_hash"], expected_hash(&CLASSIC));
    assert_eq!(e["data"]["card_type"], "mifare_classic_1k");
    assert_eq!(e["data"]["uid_len"], 4);
    sim.place(SimCard::new(&DESFIRE, 0x20));
    hq.wait_for(LONG, "the 10-byte card", |h| taps(h).len() == 3);
    let d = &taps(&hq)[2]["data"];
    assert_eq!(d["card_type"], "iso14443_4");
    assert_eq!(
        (d["uid_len"].as_u64(), d["card_hash"].as_str()),
        (Some(10), Some(expected_hash(&DESFIRE).as_str()))
    );
    sim.place(SimCard::new(&[0x04, 9, 8, 7, 6, 5, 4], 0x41));
    hq.wait_for(LONG, "the unknown card", |h| taps(h).len() == 4);
    let d = &taps(&hq)[3]["data"];
    assert_eq!(
        (d["card_type"].as_str(), d["sel_res"].as_u64()),
        (Some("unknown"), Some(0x41))
    );

    assert!(gw.terminate().success());
    eventually(LONG, "the abort ACK at shutdown", || {
        sim.stats().host_acks >= 1
    });
    let log = gw.log().to_lowercase();
    let wire = serde_json::to_string(&hq.all()).unwrap().to_lowercase();
    for uid in [&NTAG[..], &CLASSIC, &DESFIRE] {
        assert!(!wire.contains(&hex(uid)), "a raw UID reached HQ: {wire}");
        assert!(!log.contains(&hex(uid)), "a raw UID reached the log");
    }
    assert!(
        !log.contains("222, 173, 190, 239"),
        "not even as a byte list"
    );
}

#[test]
fn card_left_on_the_reader_is_one_tap_and_a_retap_after_500ms_is_another() {
    let (rig, link) = nfc_rig(true);
    let (hq, sim, _gw) = start(&rig, &link, "nfc-hold");
    sim.place(SimCard::new(&NTAG, 0x00));
    let placed = Instant::now();
    hq.wait_for(LONG, "the tap", |h| taps(h).len() == 1);
    let seen = sim.stats().polls_with_card;
    eventually(LONG, "the card held for 3 s, polled all along", || {
        placed.elapsed() >= Duration::from_secs(3) && sim.stats().polls_with_card >= seen + 20
    });

    sim.remove();
    let removed = Instant::now();
    let s = sim.stats();
    let empty_polls = |s: &phygate::sim::pn532::SimStats| s.polls - s.polls_with_card;
    let empty_before = empty_polls(&s);
    eventually(LONG, "500 ms of polls without the card", || {
        removed.elapsed() >= Duration::from_millis(600)
            && empty_polls(&sim.stats()) >= empty_before + 4
    });
    sim.place(SimCard::new(&NTAG, 0x00));
    hq.wait_for(LONG, "the second tap", |h| taps(h).len() == 2);
    // A marker card: any extra tap of the first card would reach HQ before it (seq order).
    sim.place(SimCard::new(&CLASSIC, 0x08));
    hq.wait_for(LONG, "the marker card", |h| taps(h).len() >= 3);
    let a = expected_hash(&NTAG);
    assert_eq!(hashes(&hq), [a.clone(), a, expected_hash(&CLASSIC)]);
    assert_eq!(count_state(&hq, "error"), 0, "{:?}", reader_states(&hq));
}

#[test]
fn random_uid_tap_has_no_card_hash() {
    let (rig, link) = nfc_rig(true);
    let (hq, sim, _gw) = start(&rig, &link, "nfc-random");
    sim.place(SimCard::random());
    hq.wait_for(LONG, "the tap", |h| taps(h).len() == 1);
    let d = &taps(&hq)[0]["data"];
    assert_eq!(d["random_uid"], true);
    assert!(d.get("card_hash").is_none(), "{d}");
    assert_eq!(d["member"], false);
    assert_eq!(d["uid_len"], 4);
    assert_eq!(d["card_type"], "iso14443_4");
}

#[test]
fn without_a_card_key_taps_carry_no_hash() {
    let (rig, link) = nfc_rig(false);
    let (hq, sim, _gw) = start(&rig, &link, "nfc-nokey");
    sim.place(SimCard::new(&CLASSIC, 0x08));
    hq.wait_for(LONG, "the tap", |h| taps(h).len() == 1);
    let d = &taps(&hq)[0]["data"];
    assert!(d.get("card_hash").is_none(), "{d}");
    assert_eq!(
        (d["random_uid"].as_bool(), d["uid_len"].as_u64()),
        (Some(false), Some(4))
    );
}

/// Injects `fault` into the idle reader, then checks that the next tap still arrives with no
/// error reported (each of these is recovered inside one exchange).
fn recovers_within_the_exchange(name: &str, fault: Fault) -> phygate::sim::pn532::SimStats {
    let (rig, link) = nfc_rig(true);
    let (hq, sim, _gw) = start(&rig, &link, name);
    sim.inject(fault);
    eventually(LONG, "the fault played", || sim.stats().faults_applied == 1);
    sim.place(SimCard::new(&NTAG, 0x00));
    hq.wait_for(LONG, "the tap after the fault", |h| taps(h).len() == 1);
    assert_eq!(hashes(&hq), [expected_hash(&NTAG)]);
    assert_eq!(
        reader_states(&hq).len(),
        1,
        "only the first up: {:?}",
        reader_states(&hq)
    );
    sim.stats()
}

#[test]
fn bad_checksum_is_nacked_and_the_next_tap_arrives() {
    let stats = recovers_within_the_exchange("nfc-dcs", Fault::BadChecksum);
    assert_eq!(stats.nacks, 1, "{stats:?}");
}

#[test]
fn dropped_ack_is_resent_and_the_next_tap_arrives() {
    let stats = recovers_within_the_exchange("nfc-ack", Fault::DropAck);
    assert_eq!(stats.resends, 1, "{stats:?}");
}

#[test]
fn garbage_on_the_line_is_skipped_and_the_next_tap_arrives() {
    // Noise with a false start code (bad LCS: NACKed) and without one (skipped).
    let noise = b"\xAB\x13\x37\x00\x00\xFF\x05\x99 noise \xFE\xFF\x00".to_vec();
    let stats = recovers_within_the_exchange("nfc-garbage", Fault::Garbage(noise));
    assert_eq!(stats.nacks, 1, "{stats:?}");
}

#[test]
fn hung_reader_is_reported_erring_then_reinitialised() {
    let (rig, link) = nfc_rig(true);
    let (hq, sim, _gw) = start(&rig, &link, "nfc-hang");
    sim.inject(Fault::Hang(Duration::from_millis(1500)));
    hq.wait_for(LONG, "the error", |h| count_state(h, "error") == 1);
    hq.wait_for(LONG, "recovery", |h| count_state(h, "up") == 2);
    let states = reader_states(&hq);
    assert!(
        states[1].1.contains("no response to command 0x4a"),
        "{states:?}"
    );
    assert_eq!(
        states[2],
        ("up".to_owned(), "recovered: PN532 v1.6".to_owned())
    );
    assert_eq!(
        states.len(),
        3,
        "one error for the whole outage: {states:?}"
    );
    assert_eq!(sim.stats().wakeups, 2, "woken again after the hang");
    sim.place(SimCard::new(&NTAG, 0x00));
    hq.wait_for(LONG, "a tap after recovery", |h| taps(h).len() == 1);
}

#[test]
fn unplugged_reader_is_reported_down_and_taps_resume_after_replug() {
    let (rig, link) = nfc_rig(true);
    let (hq, sim, _gw) = start(&rig, &link, "nfc-unplug");
    sim.place(SimCard::new(&NTAG, 0x00));
    hq.wait_for(LONG, "the tap", |h| taps(h).len() == 1);

    drop(sim);
    hq.wait_for(LONG, "reader down", |h| count_state(h, "down") == 1);
    let sim = Pn532Sim::start(&link).unwrap();
    hq.wait_for(LONG, "reader up again", |h| count_state(h, "up") == 2);
    assert_eq!(sim.stats().wakeups, 1, "the new reader was woken");
    sim.place(SimCard::new(&CLASSIC, 0x08));
    hq.wait_for(LONG, "a tap after the replug", |h| taps(h).len() == 2);
    let states: Vec<String> = reader_states(&hq).into_iter().map(|(s, _)| s).collect();
    assert_eq!(states, ["up", "down", "up"]);
    assert_eq!(hashes(&hq), [expected_hash(&NTAG), expected_hash(&CLASSIC)]);
}

#[test]
fn check_config_shows_the_nfc_reader() {
    let (rig, link) = nfc_rig(true);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_phygate"))
        .arg("check-config")
        .arg(&rig.config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!(
            "device nfc-1 at station kiosk-1: nfc reader (PN532) on {} @ 115200 baud, polled every 100 ms",
            link.display()
        )),
        "{text}"
    );
}
