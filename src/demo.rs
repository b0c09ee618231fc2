//! `phygate demo`: a whole store on one machine. Simulated devices speak their real protocols on
//! pseudo-terminals (an entrance scanner and turnstile, a kiosk with scanner, skin analyzer and
//! NFC reader, an exit scanner), a camera at the kiosk reads QR PNGs dropped into a folder, simulated customers walk through with app codes signed by a
//! demo HQ key, the gateway buffers everything in a local SQLite outbox and publishes to a local
//! broker, and an HQ subscriber prints each event as HQ receives it.
//!
//! Lines typed on standard input are scanned at the entrance: paste a code minted with
//! `phygate token mint` (the demo prints the command) and watch the turnstile open.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};

use crate::config::Config;
use crate::link::jwks::{generate_key, jwks_json, signing_key_to_base64url};
use crate::link::token::{mint, Claims, Purpose};
use crate::sim::broker::Mosquitto;
use crate::sim::modbus_gate::GateSim;
use crate::sim::pn532::{Pn532Sim, SimCard};
use crate::sim::scanner::ScannerSim;
use crate::sim::skin::{sample, SkinSim};
use crate::sim::Pty;
use crate::sources::scanner::Framing;

const TENANT: &str = "demo";
const STORE: &str = "store-001";
const KID: &str = "demo-hq-1";

/// A local broker: mosquitto when installed, else the embedded one when built in.
enum Broker {
    Mosquitto(#[allow(dead_code)] Mosquitto),
    #[cfg(feature = "embedded-broker")]
    Embedded,
}

fn start_broker(dir: &Path) -> anyhow::Result<(Broker, u16)> {
    // PHYGATE_DEMO_BROKER=embedded skips mosquitto (to try the embedded broker).
    let embedded_wanted = std::env::var("PHYGATE_DEMO_BROKER").is_ok_and(|v| v == "embedded");
    if !embedded_wanted && crate::sim::broker::find_mosquitto().is_some() {
        let m = Mosquitto::start(&dir.join("broker"))?;
        let port = m.port;
        eprintln!("broker: mosquitto on 127.0.0.1:{port}");
        return Ok((Broker::Mosquitto(m), port));
    }
    #[cfg(feature = "embedded-broker")]
    {
        let port = crate::sim::broker::free_port()?;
        crate::sim::embedded::start(port)?;
        eprintln!("broker: embedded (rumqttd) on 127.0.0.1:{port}");
        Ok((Broker::Embedded, port))
    }
    #[cfg(not(feature = "embedded-broker"))]
    anyhow::bail!("no mosquitto found: install it (apt-get install mosquitto) or build with `--features embedded-broker`")
}

/// The simulated store's devices, plugged in for the demo's lifetime.
struct Devices {
    entrance: Arc<Mutex<ScannerSim<std::fs::File>>>,
    kiosk: Mutex<ScannerSim<std::fs::File>>,
    exit: Mutex<ScannerSim<std::fs::File>>,
    skin: Mutex<SkinSim<std::fs::File>>,
    nfc: Pn532Sim,
    gate: GateSim,
    /// The kiosk camera's `dir:` folder: each PNG put there is one frame.
    camera: std::path::PathBuf,
    _ptys: Vec<Pty>,
}

fn scanner(
    dir: &Path,
    name: &str,
    ptys: &mut Vec<Pty>,
) -> anyhow::Result<ScannerSim<std::fs::File>> {
    let pty =
        Pty::open(&dir.join(name)).context("opening a pseudo-terminal for a simulated scanner")?;
    let sim = ScannerSim {
        port: pty.master.try_clone()?,
        framing: Framing {
            aim: true,
            ..Framing::default()
        },
    };
    ptys.push(pty);
    Ok(sim)
}

fn config_text(dir: &Path, port: u16, card_key: &str) -> String {
    let d = |n: &str| dir.join(n).display().to_string();
    format!(
        r#"tenant = "{TENANT}"
store = "{STORE}"
gateway = "{STORE}-gw1"

[[station]]
id = "entrance"
role = "gate"

[[station]]
id = "beauty-kiosk"
role = "kiosk"

[[station]]
id = "exit"
role = "gate"
direction = "out"

[[device]]
kind = "scanner"
id = "entrance-scanner"
station = "entrance"
port = "{entrance}"
aim = true

[[device]]
kind = "gate"
id = "turnstile"
station = "entrance"
port = "{gate}"

[[device]]
kind = "scanner"
id = "kiosk-scanner"
station = "beauty-kiosk"
port = "{kiosk}"
aim = true

[[device]]
kind = "skin"
id = "skin-analyzer"
station = "beauty-kiosk"
port = "{skin}"

[[device]]
kind = "nfc"
id = "kiosk-nfc"
station = "beauty-kiosk"
port = "{nfc}"

[[device]]
kind = "camera"
id = "kiosk-camera"
station = "beauty-kiosk"
url = "dir:{camera}"

[[device]]
kind = "scanner"
id = "exit-scanner"
station = "exit"
port = "{exit}"
aim = true

[outbox]
path = "{db}"

[mqtt]
host = "127.0.0.1"
port = {port}

[uplink]
backoff_max = "5s"

[status]
listen = "127.0.0.1:{status_port}"

[identity]
jwks_file = "{jwks}"
card_key = "{card_key}"
session_window = "2m"
"#,
        entrance = d("entrance-scanner"),
        gate = d("turnstile"),
        kiosk = d("kiosk-scanner"),
        skin = d("skin-analyzer"),
        nfc = d("kiosk-nfc"),
        exit = d("exit-scanner"),
        camera = d("kiosk-camera"),
        db = d("phygate.db"),
        // 8080 if free (easy to remember), else any free port: the demo must start anywhere.
        status_port = std::net::TcpListener::bind("127.0.0.1:8080")
            .map(|_| 8080)
            .or_else(|_| crate::sim::broker::free_port())
            .unwrap_or(8080),
        jwks = d("keys/jwks.json"),
    )
}

pub async fn run(seconds: Option<u64>, rate: f64) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("phygate-demo-").tempdir()?;
    let (_broker, port) = start_broker(dir.path())?;

    // The demo's HQ: a token signing key and the store's copy of its public key.
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys)?;
    let (signing, jwk) = generate_key(KID);
    std::fs::write(keys.join("jwks.json"), jwks_json(&[jwk]).to_string())?;
    let key_file = keys.join(format!("{KID}.key"));
    std::fs::write(&key_file, signing_key_to_base64url(&signing))?;
    let card_key = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(fastrand::u64(..).to_le_bytes().repeat(4))
    };

    let devices = Arc::new(simulated_devices(dir.path())?);

    let config_path = dir.path().join("phygate.toml");
    std::fs::write(&config_path, config_text(dir.path(), port, &card_key))?;
    let config = Config::load(&config_path)?;
    eprintln!("config: {}", config_path.display());
    let phygate = self_command();
    eprintln!(
        "\nTry it: mint an app code and paste it here (it is scanned at the entrance):\n  {phygate} token mint --key {} --kid {KID} --user you --tenant {TENANT} --purpose entry\n",
        key_file.display()
    );
    eprintln!(
        "Or show one to the kiosk camera: drop a QR PNG into\n  {}\ne.g. {phygate} token mint --key {} --kid {KID} --user you --tenant {TENANT} --png {}\n",
        devices.camera.display(),
        key_file.display(),
        devices.camera.join("code.png").display()
    );

    // For `phygate-hq demo` in another terminal: HQ's config for this broker, at a fixed
    // place so that it needs no argument (removed when the demo ends).
    let hq_config = std::env::temp_dir().join("phygate-demo-hq.toml");
    std::fs::write(
        &hq_config,
        format!(
            "# written by `phygate demo` for `phygate-hq demo`\n[mqtt]\nport = {port}\nclient_id = \"phygate-hq-demo\"\n[store]\npath = \"{}\"\n",
            dir.path().join("hq.db").display()
        ),
    )?;
    eprintln!("HQ beside it, as the journey engine sees it (another terminal, in this repository):\n  cargo run -p phygate-hq -- demo\n");
    let hq = tokio::spawn(hq_view(port, config.events_topic()));
    let stop = Arc::new(AtomicBool::new(false));
    let customers = {
        let (devices, stop) = (devices.clone(), stop.clone());
        std::thread::spawn(move || walk_customers(&devices, &signing, rate, &stop))
    };
    forward_pasted_codes(devices.entrance.clone());

    let shutdown = async move {
        match seconds {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    eprintln!(
        "status page: http://{}/ ({phygate} status --url http://{})",
        config.status.listen, config.status.listen
    );
    eprintln!("demo running; Ctrl-C stops it\n");
    crate::daemon::run(config, shutdown).await?;
    stop.store(true, Ordering::SeqCst);
    // Give HQ's view a moment to print the last acknowledged events.
    tokio::time::sleep(Duration::from_millis(300)).await;
    hq.abort();
    let _ = std::fs::remove_file(&hq_config);
    let _ = customers.join();
    eprintln!(
        "turnstile opened {} time(s)",
        devices.gate.coil_writes().len()
    );
    Ok(())
}

/// The store's devices, each simulated on a pseudo-terminal (the camera: a directory).
fn simulated_devices(dir: &Path) -> anyhow::Result<Devices> {
    let mut ptys = Vec::new();
    Ok(Devices {
        entrance: Arc::new(Mutex::new(scanner(dir, "entrance-scanner", &mut ptys)?)),
        kiosk: Mutex::new(scanner(dir, "kiosk-scanner", &mut ptys)?),
        exit: Mutex::new(scanner(dir, "exit-scanner", &mut ptys)?),
        skin: {
            let pty = Pty::open(&dir.join("skin-analyzer"))?;
            let sim = SkinSim {
                port: pty.master.try_clone()?,
            };
            ptys.push(pty);
            Mutex::new(sim)
        },
        nfc: Pn532Sim::start(&dir.join("kiosk-nfc"))?,
        gate: GateSim::start(&dir.join("turnstile"), 1)?,
        camera: {
            let camera = dir.join("kiosk-camera");
            std::fs::create_dir_all(&camera)?;
            camera
        },
        _ptys: ptys,
    })
}

/// Codes pasted on the terminal are scanned at the entrance.
fn forward_pasted_codes(entrance: Arc<Mutex<ScannerSim<std::fs::File>>>) {
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            let code = line.trim();
            if !code.is_empty() {
                let mut sim = entrance.lock().unwrap_or_else(|e| e.into_inner());
                let _ = sim.scan(code);
            }
        }
    });
}

/// How to run this very binary from a second terminal, for the hints the demo prints. Under
/// `cargo run` no `phygate` is on PATH, and a bare `cargo run -- token …` with other flags would
/// rebuild the release binary; the absolute path of the running executable works as printed.
fn self_command() -> String {
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.to_str().map(str::to_owned));
    let plain = |p: &str| {
        p.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
    };
    match exe {
        Some(path) if !path.is_empty() && plain(&path) => path,
        Some(path) => format!("'{}'", path.replace('\'', r"'\''")),
        None => "phygate".to_owned(),
    }
}

/// Customers walking through the store, one step every 1/rate s: entry code at the turnstile,
/// code at the beauty kiosk, a skin diagnosis, a member card registered, a product scanned,
/// the exit. Now and then someone walks in without the app, and a scanner garbles a line.
fn walk_customers(d: &Devices, key: &ed25519_dalek::SigningKey, rate: f64, stop: &AtomicBool) {
    let pause = Duration::from_secs_f64(1.0 / rate.clamp(0.1, 100.0));
    let step = |f: &mut dyn FnMut()| {
        if !stop.load(Ordering::SeqCst) {
            f();
            std::thread::sleep(pause);
        }
    };
    let lock = |m: &Mutex<ScannerSim<std::fs::File>>| -> ScannerSim<std::fs::File> {
        let sim = m.lock().unwrap_or_else(|e| e.into_inner());
        ScannerSim {
            port: sim.port.try_clone().expect("pty"),
            framing: sim.framing.clone(),
        }
    };
    std::thread::sleep(Duration::from_secs(1));
    for n in 1u64.. {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let user = format!("app-user-{n:03}");
        let code = |pur| demo_token(key, &user, pur);
        step(&mut || drop(lock(&d.entrance).scan(&code(Some(Purpose::Entry)))));
        step(&mut || d.gate.pass_in(1));
        if n % 4 == 2 {
            // Now and then a customer holds the phone up to the kiosk camera instead.
            step(&mut || show_to_camera(&d.camera, &format!("{n:06}-{user}.png"), &code(None)));
        } else {
            step(&mut || drop(lock(&d.kiosk).scan(&code(None))));
        }
        step(&mut || {
            let _ = d
                .skin
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .send(&sample("AX-200", n));
        });
        if n % 2 == 1 {
            step(&mut || drop(lock(&d.kiosk).scan(&code(Some(Purpose::Link)))));
            let uid = [0x04, (n >> 8) as u8, n as u8, 0x5A, 0x61, 0x72, 0x80];
            step(&mut || d.nfc.place(SimCard::new(&uid, 0x08)));
            d.nfc.remove();
        }
        step(&mut || drop(lock(&d.kiosk).scan("3600523614479")));
        if n % 3 == 0 {
            step(&mut || d.gate.pass_in(1)); // someone without the app
            step(&mut || {
                let mut sim = lock(&d.entrance);
                let _ = sim.port.write_all(b"\xff\xfe garbled\r");
            });
        }
        step(&mut || drop(lock(&d.exit).scan(&code(None))));
        step(&mut || d.gate.pass_out(1));
    }
}

/// Writes a QR PNG of `content` into the camera's folder under a hidden name, then renames it,
/// so the camera never reads it half written.
fn show_to_camera(dir: &Path, name: &str, content: &str) {
    let tmp = dir.join(format!(".{name}"));
    let shown = crate::cli::token::write_qr_png(content, &tmp)
        .and_then(|()| Ok(std::fs::rename(&tmp, dir.join(name))?));
    if let Err(e) = shown {
        tracing::warn!("demo camera frame not written: {e:#}");
    }
}

fn demo_token(key: &ed25519_dalek::SigningKey, user: &str, pur: Option<Purpose>) -> String {
    let claims = Claims::fresh(user, TENANT, pur, None, Duration::from_secs(120));
    let token = mint(key, KID, &claims);
    format!("https://app.example/e?t={token}")
}

/// HQ's side: subscribes to the store's events and prints one line per event.
async fn hq_view(port: u16, topic: String) {
    let mut options = MqttOptions::new("demo-hq", "127.0.0.1", port);
    options.set_max_packet_size(16 * 1024 * 1024, 1024 * 1024);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    if let Err(e) = client.subscribe(&topic, QoS::AtLeastOnce).await {
        eprintln!("HQ view: cannot subscribe: {e}");
        return;
    }
    loop {
        match eventloop.poll().await {
            Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                let Ok(events) = serde_json::from_slice::<Vec<serde_json::Value>>(&p.payload)
                else {
                    continue;
                };
                for e in events {
                    // Nobody reads a closed stdout any more: the demo runs on for its
                    // status page and its Ctrl-C.
                    let _ = crate::outln!(
                        "{}   [outbox depth {}]",
                        describe(&e),
                        crate::metrics::OUTBOX_DEPTH.get()
                    );
                }
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// One line for one event, as HQ sees it.
fn describe(e: &serde_json::Value) -> String {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_owned();
    let data = &e["data"];
    let what = match e["type"].as_str().unwrap_or("") {
        "store.qr.scanned" if data["kind"] == "app_token" => format!(
            "app code {}{}",
            s(&data["verdict"]),
            match data["gate_opened"].as_bool() {
                Some(true) => " -> gate OPENED",
                Some(false) => " -> gate stays shut",
                None => "",
            }
        ),
        "store.qr.scanned" => format!("{} {}", s(&data["kind"]), s(&data["payload"])),
        "store.device.status" => format!(
            "{} {} {}{}",
            s(&data["device"]),
            s(&data["state"]),
            s(&data["reason"]),
            data["count"]
                .as_u64()
                .map(|c| format!(" (x{c})"))
                .unwrap_or_default()
        ),
        "store.skin.diagnosed" => format!(
            "{} moisture {}",
            s(&data["model"]),
            data["measures"]["moisture"]
        ),
        "store.gate.passed" => format!(
            "{} {} x{}",
            s(&data["gate"]),
            s(&data["direction"]),
            data["count"]
        ),
        "store.visit.ended" => format!("dwell {} s ({})", data["dwell_s"], s(&data["end_reason"])),
        "store.nfc.tapped" => format!("{} member={}", s(&data["card_type"]), data["member"]),
        "store.nfc.linked" => format!(
            "card {}…",
            &s(&data["card_hash"]).chars().take(8).collect::<String>()
        ),
        _ => String::new(),
    };
    format!(
        "HQ <- seq {:>4} {:<21} {:<13} {:<14} {:<16} {what}",
        e["seq"],
        s(&e["type"]),
        s(&e["stationid"]),
        e["userid"].as_str().unwrap_or("-"),
        e["stage"].as_str().unwrap_or("")
    )
}
