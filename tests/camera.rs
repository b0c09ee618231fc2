//! The camera source end to end: QR PNGs dropped into a `dir:` camera's folder → phygate binary
//! → mosquitto → HQ, next to a turnstile that an app code shown to the camera opens.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use phygate::link::jwks::{generate_key, jwks_json};
use phygate::link::token::{mint, Claims, Purpose};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

/// A rig with a camera `cam-1` at the gate station (with gate `gate-a`) watching `frames/`,
/// and the token key HQ signs app codes with.
fn camera_rig() -> (Rig, ed25519_dalek::SigningKey, PathBuf) {
    let rig = Rig::new();
    let (key, jwk) = generate_key("k1");
    let jwks = rig.dir.path().join("jwks.json");
    std::fs::write(&jwks, jwks_json(&[jwk]).to_string()).unwrap();
    let frames = rig.dir.path().join("frames");
    let devices = format!(
        "{}\n[[device]]\nkind = \"camera\"\nid = \"cam-1\"\nstation = \"gate-1\"\nurl = \"dir:{}\"\ninterval = \"50ms\"\n",
        rig.gate_device("poll_interval = \"1s\""),
        frames.display()
    );
    let extra = format!(
        "\n[identity]\njwks_file = \"{}\"\n\n[uplink]\nbackoff_min = \"200ms\"\nbackoff_max = \"1s\"\n",
        jwks.display()
    );
    rig.write_config_with(&devices, &extra);
    (rig, key, frames)
}

fn app_url(key: &ed25519_dalek::SigningKey, user: &str) -> String {
    let claims = Claims::fresh(
        user,
        TENANT,
        Some(Purpose::Entry),
        Some(vec![STORE.into()]),
        Duration::from_secs(120),
    );
    format!("https://app.example/e?t={}", mint(key, "k1", &claims))
}

/// Puts a frame in place as a camera writer should: under a hidden name, then renamed.
fn drop_frame(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn png(content: &str, inverted: bool) -> Vec<u8> {
    let mut img = phygate::cli::token::qr_image(content, 4).unwrap();
    if inverted {
        image::imageops::invert(&mut img);
    }
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn scans(hq: &Hq) -> Vec<Value> {
    hq.of_type("store.qr.scanned")
}

fn payloads(hq: &Hq) -> Vec<String> {
    scans(hq)
        .iter()
        .filter_map(|e| e["data"]["payload"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn camera_frames_reach_hq_as_codes_tokens_and_errors() {
    let (rig, key, frames) = camera_rig();
    let hq = rig.hq("camera");
    let gate = rig.gate(0, 0);
    let coil = gate.watch_coil_writes();
    let _gw = rig.start_gateway();

    // No folder yet: the camera is down, and up once the folder appears.
    hq.wait_for(LONG, "camera down", |h| {
        h.device_states("cam-1").iter().any(|(s, _)| s == "down")
    });
    std::fs::create_dir(&frames).unwrap();
    hq.wait_for(LONG, "camera up", |h| {
        h.device_states("cam-1").iter().any(|(s, _)| s == "up")
    });

    let token = app_url(&key, "alice");
    drop_frame(&frames, "01-product.png", &png("4006381333931", false));
    drop_frame(&frames, "02-token.png", &png(&token, false));
    drop_frame(
        &frames,
        "03-inverted.png",
        &png("https://shop.example/p/42", true),
    );
    drop_frame(
        &frames,
        "04-garbage.png",
        b"\x89PNG\r\n\x1a\nthis is no image",
    );
    drop_frame(&frames, "05-after.png", &png("AFTER-GARBAGE-1", false));

    hq.wait_for(LONG, "four codes", |h| scans(h).len() >= 4);
    assert_eq!(
        payloads(&hq),
        [
            "4006381333931",
            "https://shop.example/p/42",
            "AFTER-GARBAGE-1"
        ],
        "payloads intact, in the frames' name order, the token's withheld"
    );
    let all = scans(&hq);
    assert_eq!(all[0]["data"]["kind"], "product");
    assert_eq!(all[0]["data"]["symbology"], "qr");
    assert!(all[0]["data"].get("aim").is_none());
    let tok = &all[1]["data"];
    assert_eq!(tok["kind"], "app_token");
    assert_eq!(tok["verdict"], "valid");
    assert_eq!(tok["gate_opened"], true);
    assert!(
        tok.get("payload").is_none(),
        "the token never leaves the store"
    );
    let write = coil
        .recv_timeout(Duration::from_secs(5))
        .expect("the app code shown to the camera opened the gate");
    assert!(write.on);

    hq.wait_for(LONG, "bad_image error", |h| {
        h.device_states("cam-1")
            .iter()
            .any(|(s, r)| s == "error" && r == "bad_image")
    });
    hq.assert_consistent();
}

#[test]
fn the_same_code_in_consecutive_frames_is_one_event() {
    let (rig, _key, frames) = camera_rig();
    std::fs::create_dir(&frames).unwrap();
    let hq = rig.hq("camera-repeat");
    let _gate = rig.gate(0, 0);
    let _gw = rig.start_gateway();
    hq.wait_for(LONG, "camera up", |h| {
        h.device_states("cam-1").iter().any(|(s, _)| s == "up")
    });

    let held = png("HELD-IN-VIEW", false);
    for i in 0..8 {
        drop_frame(&frames, &format!("f{i:02}.png"), &held);
    }
    drop_frame(&frames, "f99.png", &png("NEXT", false));
    hq.wait_for(LONG, "the next code", |h| {
        payloads(h).iter().any(|p| p == "NEXT")
    });
    assert_eq!(payloads(&hq), ["HELD-IN-VIEW", "NEXT"]);
}
