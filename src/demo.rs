//! `phygate demo`: the whole flow on one machine. A simulated scanner on a pseudo-terminal feeds
//! codes (and now and then a garbled line), the gateway buffers them in a local SQLite outbox and
//! publishes to a local broker, and an HQ subscriber prints each event as HQ receives it.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};

use crate::config::Config;
use crate::sim::broker::Mosquitto;
use crate::sim::scanner::ScannerSim;
use crate::sim::Pty;
use crate::sources::scanner::Framing;

/// A local broker: mosquitto when installed, else the embedded one when built in.
enum Broker {
    Mosquitto(#[allow(dead_code)] Mosquitto),
    #[cfg(feature = "embedded-broker")]
    Embedded,
}

fn start_broker(dir: &std::path::Path) -> anyhow::Result<(Broker, u16)> {
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

const CODES: &[&str] = &[
    "4006381333931",
    "https://shop.example/p/serum-hydra-50ml",
    "3600523614479",
    "LOYALTY-CARD-PROMO-11",
    "https://shop.example/p/spf50-fluid",
    "8710103934615",
];

pub async fn run(seconds: Option<u64>, rate: f64) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("phygate-demo-").tempdir()?;
    let (_broker, port) = start_broker(dir.path())?;
    let scanner_link = dir.path().join("scanner0");
    let pty =
        Pty::open(&scanner_link).context("opening a pseudo-terminal for the simulated scanner")?;
    let config_text = format!(
        r#"tenant = "demo"
store = "store-001"
gateway = "store-001-gw1"

[[station]]
id = "entrance"
role = "gate"

[[device]]
kind = "scanner"
id = "scanner-1"
station = "entrance"
port = "{}"
terminator = "cr"
aim = true

[outbox]
path = "{}"

[mqtt]
host = "127.0.0.1"
port = {port}

[uplink]
backoff_max = "5s"
"#,
        scanner_link.display(),
        dir.path().join("phygate.db").display()
    );
    let config_path = dir.path().join("phygate.toml");
    std::fs::write(&config_path, &config_text)?;
    let config = Config::load(&config_path)?;
    eprintln!(
        "config: {} (outbox {})",
        config_path.display(),
        config.outbox.path.display()
    );

    let hq = tokio::spawn(hq_view(port, config.events_topic()));

    // The simulated scanner: a code every 1/rate s, a garbled line every 15 codes.
    let master = pty.master.try_clone()?;
    let interval = Duration::from_secs_f64(1.0 / rate.clamp(0.1, 1000.0));
    std::thread::spawn(move || {
        let mut sim = ScannerSim {
            port: master,
            framing: Framing {
                aim: true,
                ..Framing::default()
            },
        };
        for i in 0usize.. {
            std::thread::sleep(interval);
            let result = if i % 15 == 14 {
                sim.port
                    .write_all(b"\xff\xfe garbled\r")
                    .and_then(|_| sim.port.flush())
            } else {
                sim.scan(CODES[i % CODES.len()])
            };
            if result.is_err() {
                return;
            }
        }
    });

    let shutdown = async move {
        match seconds {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    eprintln!(
        "status page: http://{}/ (phygate status --url http://{})",
        config.status.listen, config.status.listen
    );
    eprintln!("demo running; Ctrl-C stops it\n");
    crate::daemon::run(config, shutdown).await?;
    // Give HQ's view a moment to print the last acknowledged events.
    tokio::time::sleep(Duration::from_millis(300)).await;
    hq.abort();
    drop(pty);
    Ok(())
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
                    let data = &e["data"];
                    let what = match e["type"].as_str() {
                        Some("store.qr.scanned") => format!(
                            "{} {}",
                            data["kind"].as_str().unwrap_or(""),
                            data["payload"].as_str().unwrap_or("")
                        ),
                        Some("store.device.status") => format!(
                            "{} {} {}{}",
                            data["device"].as_str().unwrap_or(""),
                            data["state"].as_str().unwrap_or(""),
                            data["reason"].as_str().unwrap_or(""),
                            data["count"]
                                .as_u64()
                                .map(|c| format!(" (x{c})"))
                                .unwrap_or_default()
                        ),
                        _ => data.to_string(),
                    };
                    println!(
                        "HQ <- seq {:>4}  {:<20} {:<10} {}   [outbox depth {}]",
                        e["seq"],
                        e["type"].as_str().unwrap_or("?"),
                        e["stationid"].as_str().unwrap_or("?"),
                        what,
                        crate::metrics::OUTBOX_DEPTH.get()
                    );
                }
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}
