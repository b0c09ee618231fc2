//! Pushes to a fleet, and what each store reports back, on real parts: a real mosquitto, N
//! stores each running the gateway's whole daemon (`phygate::daemon::run`: outbox, link,
//! uplink with its status report, downlink, config applier) in this process, and the built
//! `phygate-hq` binary publishing to them. Each push `--wait`s until every store's retained
//! status reports the version it published.
//!
//! `cargo test -p phygate-hq --test fleet_push` runs 20 stores; the 1,000-store figure is
//! `cargo test --release -p phygate-hq --test fleet_push -- --ignored --nocapture`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{broker, wait_for, TENANT};
use phygate::sim::broker::Mosquitto;

/// One card hash (43 characters of base64url) per member.
const MEMBERS: &str = "card_hash,userid\n\
Jzag_ZOFVBSfvlxB9un5O9E7IYrzVYbB0jwSEQ3LWQo,u-8812\n\
UAujdZEDEPbv9949akLfXRzoOrdlvRdMXWXKFHu-qvU,u-9001\n";

#[test]
fn a_member_and_a_config_push_to_20_stores_report_every_stores_version() {
    push_to_fleet(20, Duration::from_secs(120));
}

#[test]
#[ignore = "1,000 stores in one process: a few minutes; run with --release -- --ignored"]
fn a_member_and_a_config_push_to_1000_stores_report_every_stores_version() {
    push_to_fleet(1000, Duration::from_secs(600));
}

fn push_to_fleet(n: usize, patience: Duration) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    let state = dir.path().join("hq-state");
    let started = Instant::now();
    let fleet = Fleet::start(&dir.path().join("stores"), broker.port, n);
    wait_for(patience, "every store online", || {
        let online = online_stores(&broker);
        eprintln!("{online} of {n} stores online");
        online == n
    });
    eprintln!(
        "{n} stores online in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let wait = format!("{}s", patience.as_secs());

    // The key set first: retained, so it also proves every store's downlink is subscribed
    // before the member map (not retained) goes out.
    let keys = hq(
        &broker,
        &state,
        &["keys", "rotate", "--kid", "k1", "--wait", &wait],
    );
    assert!(keys.status.success(), "{}", stdout(&keys));
    assert!(
        stdout(&keys).contains(&format!("{n} of {n} stores hold key set sha256:")),
        "{}",
        stdout(&keys)
    );

    let file = dir.path().join("members.csv");
    std::fs::write(&file, MEMBERS).unwrap();
    let push = |args: &[&str]| {
        let mut all = vec!["members", "push", "--scope", "all", "--file"];
        all.push(file.to_str().unwrap());
        all.extend_from_slice(args);
        hq(&broker, &state, &all)
    };
    let members = push(&["--wait", &wait]);
    assert!(members.status.success(), "{}", stdout(&members));
    let expect = format!("{n} of {n} stores hold members all version 1 or newer");
    assert!(stdout(&members).contains(&expect), "{}", stdout(&members));
    eprintln!(
        "FIGURE members push to {n} stores: {}",
        summary(&stdout(&members))
    );
    // Idempotent: the same map is the same version, which every store already holds.
    let again = push(&["--wait", "10s"]);
    assert!(again.status.success());
    assert!(stdout(&again).contains(&expect), "{}", stdout(&again));
    assert!(stdout(&again).contains("version 1 "), "{}", stdout(&again));

    // An invalid config is refused before anything is published.
    let config = dir.path().join("fleet.toml");
    std::fs::write(
        &config,
        fleet_config(broker.port, "[uplink]\nbatch_max_event = 5\n"),
    )
    .unwrap();
    let refused = hq(
        &broker,
        &state,
        &[
            "config",
            "push",
            "--all",
            "--file",
            config.to_str().unwrap(),
        ],
    );
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("nothing was published"),
        "{}",
        stderr(&refused)
    );
    assert!(
        stderr(&refused).contains("batch_max_event"),
        "{}",
        stderr(&refused)
    );
    assert!(!fleet.any_stored_config(), "no store got a config");

    // A valid one: each store applies its own (the file plus its `store` line) and reports it.
    std::fs::write(&config, fleet_config(broker.port, "")).unwrap();
    let applied = hq(
        &broker,
        &state,
        &[
            "config",
            "push",
            "--all",
            "--file",
            config.to_str().unwrap(),
            "--wait",
            &wait,
        ],
    );
    assert!(applied.status.success(), "{}", stdout(&applied));
    assert!(
        stdout(&applied).contains(&format!("{n} of {n} stores applied their config")),
        "{}",
        stdout(&applied)
    );
    eprintln!(
        "FIGURE config push to {n} stores: {}",
        summary(&stdout(&applied))
    );
    // And their status reports say which config is in force: each store's own version.
    let (store, text) = fleet.stored_config(0);
    let version = phygate::config::hq::version(&text);
    wait_for(
        Duration::from_secs(30),
        "the report names the config",
        || retained_status(&broker, &store).is_some_and(|s| s.contains(&version)),
    );
    fleet.stop();
}

fn summary(out: &str) -> String {
    out.lines()
        .find(|l| l.contains(" of "))
        .unwrap_or("?")
        .to_owned()
}

/// The config pushed to every store: no `store` line (each store gets its own), no `gateway`
/// (each store's default, `{store}-gw`, which also keeps the MQTT client ids apart), and
/// `extra`.
fn fleet_config(broker_port: u16, extra: &str) -> String {
    format!(
        "tenant = \"{TENANT}\"\n\
         [mqtt]\nhost = \"127.0.0.1\"\nport = {broker_port}\nkeepalive = \"5s\"\n\
         [status]\nlisten = \"127.0.0.1:0\"\n\
         [log]\nlevel = \"warn\"\n{extra}"
    )
}

/// N gateways' daemons on one runtime (two worker threads), stopped together. Every second one
/// has a scanner whose port does not exist (a device in error in its report); the others have
/// no device and no HTTP ingest at all, and must still apply what HQ sends (their link once
/// ended at start, for want of a reading sender).
struct Fleet {
    dirs: Vec<(String, PathBuf)>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Fleet {
    fn start(dir: &Path, broker_port: u16, n: usize) -> Fleet {
        let mut configs = Vec::new();
        let mut dirs = Vec::new();
        for i in 0..n {
            let store = format!("s{:04}", i + 1);
            let d = dir.join(&store);
            std::fs::create_dir_all(&d).unwrap();
            let text = format!(
                "store = \"{store}\"\ntenant = \"{TENANT}\"\n\
                 [outbox]\npath = \"{}\"\nsynchronous = \"normal\"\n\
                 [mqtt]\nhost = \"127.0.0.1\"\nport = {broker_port}\nkeepalive = \"5s\"\n\
                 [uplink]\nbackoff_min = \"200ms\"\nbackoff_max = \"2s\"\n\
                 [status]\nlisten = \"127.0.0.1:0\"\n\
                 {}",
                d.join("phygate.db").display(),
                if i % 2 == 0 {
                    format!(
                        "[[station]]\nid = \"entrance\"\nrole = \"gate\"\n\
                         [[device]]\nkind = \"scanner\"\nid = \"scanner-1\"\nstation = \"entrance\"\nport = \"{}\"\n",
                        d.join("no-scanner").display()
                    )
                } else {
                    String::new()
                },
            );
            let path = d.join("phygate.toml");
            std::fs::write(&path, &text).unwrap();
            configs.push(
                phygate::config::Config::parse(&text, &path).unwrap_or_else(|e| panic!("{e}")),
            );
            dirs.push((store, d));
        }
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut daemons = Vec::new();
                for config in configs {
                    let mut stopped = stopped.clone();
                    daemons.push(tokio::spawn(phygate::daemon::run(config, async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    })));
                }
                for d in daemons {
                    d.await.unwrap().unwrap();
                }
            });
        });
        Fleet {
            dirs,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Whether any store stored a config from HQ.
    fn any_stored_config(&self) -> bool {
        self.dirs
            .iter()
            .any(|(_, d)| d.join("hq-config.toml").exists())
    }

    /// Store `i`'s id and the config from HQ it stored.
    fn stored_config(&self, i: usize) -> (String, String) {
        let (store, d) = &self.dirs[i];
        (
            store.clone(),
            std::fs::read_to_string(d.join("hq-config.toml")).unwrap(),
        )
    }

    fn stop(mut self) {
        self.stop.take().unwrap().send_replace(true);
        self.thread.take().unwrap().join().unwrap();
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send_replace(true);
        }
    }
}

fn hq(broker: &Mosquitto, state: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_phygate-hq"))
        .args(args)
        .args(["--broker", &format!("127.0.0.1:{}", broker.port)])
        .args(["--tenant", TENANT])
        .arg("--state-dir")
        .arg(state)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let head = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .chars()
            .take(4000)
            .collect::<String>()
    };
    eprintln!(
        "phygate-hq {args:?} → {}\nstdout: {}\nstderr: {}",
        out.status,
        head(&out.stdout),
        head(&out.stderr)
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The retained statuses on the broker that say `online`.
fn online_stores(broker: &Mosquitto) -> usize {
    retained(broker, &phygate_proto::topic::status(TENANT, "+"))
        .iter()
        .filter(|p| p.contains("\"online\""))
        .count()
}

fn retained_status(broker: &Mosquitto, store: &str) -> Option<String> {
    retained(broker, &phygate_proto::topic::status(TENANT, store)).pop()
}

/// The retained messages on `filter`, read until the broker is quiet for a moment.
fn retained(broker: &Mosquitto, filter: &str) -> Vec<String> {
    use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
    let mut options = MqttOptions::new(
        format!("probe-{}", fastrand::u32(..)),
        "127.0.0.1",
        broker.port,
    );
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut conn) = Client::new(options, 64);
    client.subscribe(filter, QoS::AtLeastOnce).unwrap();
    let mut found = Vec::new();
    let mut quiet = Duration::from_secs(5);
    while let Ok(Ok(event)) = conn.recv_timeout(quiet) {
        match event {
            Event::Incoming(Packet::Publish(p)) if p.retain => {
                found.push(String::from_utf8_lossy(&p.payload).into_owned());
            }
            Event::Incoming(Packet::SubAck(_)) => quiet = Duration::from_millis(500),
            _ => {}
        }
    }
    let _ = client.disconnect();
    found
}
