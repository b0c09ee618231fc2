//! Test harness: real parts only. A real mosquitto on a free port, the built `phygate` binary
//! with a config in a temp dir, a pty pair as the scanner's serial port, and an HQ subscriber.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use phygate::sim::broker::Mosquitto;
use phygate::sim::modbus_gate::GateSim;
use phygate::sim::scanner::ScannerSim;
use phygate::sim::skin::SkinSim;
use phygate::sim::Pty;
use phygate::sources::scanner::Framing;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

pub const TENANT: &str = "acme";
pub const STORE: &str = "s1";

pub fn events_topic() -> String {
    format!("phygate/v1/{TENANT}/{STORE}/events")
}

/// The MQTT version a rig's gateway speaks (`[mqtt] protocol`); HQ's test subscriber stays on
/// 3.1.1 (mosquitto bridges the two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mqtt {
    V311,
    V5,
}

impl Mqtt {
    pub fn config_value(self) -> &'static str {
        match self {
            Mqtt::V311 => "3.1.1",
            Mqtt::V5 => "5",
        }
    }
}

/// Runs each named broker test once per MQTT version: `fn name(mqtt: Mqtt)` becomes the tests
/// `name::mqtt_3_1_1` and `name::mqtt_5`. The gateway's uplink and downlink are the same code
/// above a thin per-version shell, so the same test body must hold on both.
#[macro_export]
macro_rules! on_both_protocols {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn mqtt_3_1_1() {
                super::$name($crate::common::Mqtt::V311)
            }
            #[test]
            fn mqtt_5() {
                super::$name($crate::common::Mqtt::V5)
            }
        }
    )*};
}

/// Everything one test needs, in its own temp dir.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub broker: Mosquitto,
    pub config: PathBuf,
    pub scanner_link: PathBuf,
    /// The status listener's port (`[status] listen`): free, so tests can run side by side.
    pub status_port: u16,
    /// `[[station]]` / `[[device]]` tables added by `add_devices`.
    devices: std::cell::RefCell<String>,
    /// `[mqtt] protocol` of the gateway.
    pub mqtt: Mqtt,
}

impl Rig {
    pub fn new() -> Rig {
        Rig::with_broker("allow_anonymous true\n")
    }

    /// A rig whose mosquitto has `settings` (see [`Mosquitto::start_with`]), e.g. a password
    /// file or a TLS listener.
    pub fn with_broker(settings: &str) -> Rig {
        Rig::with_broker_on(settings, Mqtt::V311)
    }

    /// A rig whose gateway speaks `mqtt`.
    pub fn on(mqtt: Mqtt) -> Rig {
        Rig::with_broker_on("allow_anonymous true\n", mqtt)
    }

    /// [`Rig::with_broker`] with the gateway speaking `mqtt`.
    pub fn with_broker_on(settings: &str, mqtt: Mqtt) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let broker =
            Mosquitto::start_with(&dir.path().join("broker"), settings).expect("mosquitto");
        let scanner_link = dir.path().join("scanner0");
        let config = dir.path().join("phygate.toml");
        let rig = Rig {
            dir,
            broker,
            config,
            scanner_link,
            status_port: phygate::sim::broker::free_port().unwrap(),
            devices: Default::default(),
            mqtt,
        };
        rig.write_config("");
        rig
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("phygate.db")
    }

    /// Adds station and device tables to the config (kept by later `write_config` calls) and
    /// rewrites it without an `extra`: call `write_config(extra)` after this, not before.
    pub fn add_devices(&self, tables: &str) {
        self.devices.borrow_mut().push_str(tables);
        self.write_config("");
    }

    /// The test config; `extra` is appended (e.g. an `[uplink]` table).
    pub fn write_config(&self, extra: &str) {
        self.write_config_with("", extra);
    }

    /// The test config with more `[[device]]` tables after the scanner (e.g. [`Rig::gate_device`]).
    pub fn write_config_with(&self, devices: &str, extra: &str) {
        let text = format!(
            r#"tenant = "{TENANT}"
store = "{STORE}"
gateway = "gw1"

[[station]]
id = "gate-1"
role = "gate"

[[device]]
kind = "scanner"
id = "scanner-1"
station = "gate-1"
port = "{}"
terminator = "cr"
aim = true
{devices}
{}
[status]
listen = "127.0.0.1:{}"

[outbox]
path = "{}"

[mqtt]
host = "127.0.0.1"
port = {}
keepalive = "5s"
protocol = "{}"
{extra}
"#,
            self.scanner_link.display(),
            self.devices.borrow(),
            self.status_port,
            self.db_path().display(),
            self.broker.port,
            self.mqtt.config_value()
        );
        std::fs::write(&self.config, text).unwrap();
    }

    pub fn start_gateway(&self) -> Gateway {
        Gateway::start(&self.config, &self.dir.path().join("phygate.log"))
    }

    pub fn hq(&self, name: &str) -> Hq {
        Hq::connect(self.broker.port, name)
    }

    /// Where a simulated device's port appears (as `port = …` in its config).
    pub fn device_link(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A simulated SKN1 skin analyzer on `device_link("skin0")`.
    pub fn skin(&self) -> (Pty, SkinSim<std::fs::File>) {
        let pty = Pty::open(&self.device_link("skin0")).unwrap();
        let sim = SkinSim {
            port: pty.master.try_clone().unwrap(),
        };
        (pty, sim)
    }

    /// Where the gate's simulated I/O module plugs in.
    pub fn gate_link(&self) -> PathBuf {
        self.dir.path().join("gate0")
    }

    /// A `[[device]]` table for gate `gate-a` at station `gate-1`, unit 1, plus `fields`.
    pub fn gate_device(&self, fields: &str) -> String {
        format!(
            "\n[[device]]\nkind = \"gate\"\nid = \"gate-a\"\nstation = \"gate-1\"\nport = \"{}\"\n{fields}\n",
            self.gate_link().display()
        )
    }

    /// Plugs in the gate's I/O module with its counters at `pass_in` / `pass_out`.
    pub fn gate(&self, pass_in: u32, pass_out: u32) -> GateSim {
        GateSim::start_with_counters(&self.gate_link(), 1, pass_in, pass_out).unwrap()
    }

    pub fn scanner(&self) -> (Pty, ScannerSim<std::fs::File>) {
        let pty = Pty::open(&self.scanner_link).unwrap();
        let sim = ScannerSim {
            port: pty.master.try_clone().unwrap(),
            framing: Framing {
                aim: true,
                ..Framing::default()
            },
        };
        (pty, sim)
    }
}

/// The phygate binary as a child process.
pub struct Gateway {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    /// Extra environment (e.g. systemd's NOTIFY_SOCKET), kept across restarts.
    env: Vec<(String, String)>,
}

impl Gateway {
    pub fn start(config: &Path, log: &Path) -> Gateway {
        Gateway::start_with_env(config, log, &[])
    }

    pub fn start_with_env(config: &Path, log: &Path, env: &[(&str, &str)]) -> Gateway {
        let mut g = Gateway {
            child: None,
            config: config.to_owned(),
            log: log.to_owned(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        g.restart();
        g
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_phygate"))
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// kill -9: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM, as systemd stops it; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "phygate did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// HQ's subscriber: a persistent session, so what is published while it reconnects after a
/// broker restart still reaches it. Keeps every event in arrival order, duplicates included.
pub struct Hq {
    pub received: Arc<Mutex<Vec<Value>>>,
    client: Client,
}

impl Hq {
    pub fn connect(port: u16, name: &str) -> Hq {
        Hq::connect_as(port, name, None)
    }

    /// As [`Hq::connect`], with a username and password (a broker without anonymous access).
    pub fn connect_as(port: u16, name: &str, credentials: Option<(&str, &str)>) -> Hq {
        let mut options = MqttOptions::new(format!("hq-{name}-{port}"), "127.0.0.1", port);
        if let Some((user, password)) = credentials {
            options.set_credentials(user, password);
        }
        options.set_clean_session(false);
        options.set_keep_alive(Duration::from_secs(5));
        options.set_max_packet_size(64 * 1024 * 1024, 1024 * 1024);
        let (client, mut connection) = Client::new(options, 64);
        client.subscribe(events_topic(), QoS::AtLeastOnce).unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let sink = received.clone();
        std::thread::spawn(move || {
            for notification in connection.iter() {
                match notification {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let batch: Vec<Value> =
                            serde_json::from_slice(&p.payload).expect("a batch is a JSON array");
                        sink.lock().unwrap().extend(batch);
                    }
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::RequestsDone) => return,
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("HQ subscribed");
        Hq { received, client }
    }

    pub fn all(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }

    /// Distinct events by id (the first arrival of each).
    pub fn unique(&self) -> Vec<Value> {
        let mut seen = HashSet::new();
        self.all()
            .into_iter()
            .filter(|e| seen.insert(e["id"].as_str().unwrap().to_owned()))
            .collect()
    }

    pub fn scanned_payloads(&self) -> Vec<String> {
        self.unique()
            .iter()
            .filter(|e| e["type"] == "store.qr.scanned")
            .map(|e| e["data"]["payload"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Distinct events of one `type`, in arrival order.
    pub fn of_type(&self, ty: &str) -> Vec<Value> {
        self.unique()
            .into_iter()
            .filter(|e| e["type"] == ty)
            .collect()
    }

    /// Distinct status events of one device.
    pub fn statuses_of(&self, device: &str) -> Vec<Value> {
        self.statuses()
            .into_iter()
            .filter(|e| e["data"]["device"] == device)
            .collect()
    }

    /// The counts of `store.gate.passed` events of `direction`, in seq order.
    pub fn gate_passes(&self, direction: &str) -> Vec<u64> {
        self.unique()
            .iter()
            .filter(|e| e["type"] == "store.gate.passed" && e["data"]["direction"] == direction)
            .map(|e| e["data"]["count"].as_u64().unwrap())
            .collect()
    }

    /// `(state, reason)` of each status of `device`, in seq order.
    pub fn device_states(&self, device: &str) -> Vec<(String, String)> {
        self.statuses()
            .iter()
            .filter(|e| e["data"]["device"] == device)
            .map(|e| {
                let s = |k: &str| e["data"][k].as_str().unwrap_or_default().to_owned();
                (s("state"), s("reason"))
            })
            .collect()
    }

    pub fn statuses(&self) -> Vec<Value> {
        self.unique()
            .into_iter()
            .filter(|e| e["type"] == "store.device.status")
            .collect()
    }

    /// Waits until `f(self)` holds, failing with `what` after `timeout`.
    pub fn wait_for(&self, timeout: Duration, what: &str, f: impl Fn(&Hq) -> bool) {
        let deadline = Instant::now() + timeout;
        while !f(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; HQ has {} events",
                self.all().len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every id arrived with one body: duplicates are resends of the same event, and per id the
    /// seq never differs; the first arrivals are in increasing seq order.
    pub fn assert_consistent(&self) -> usize {
        let mut by_id: BTreeMap<String, Value> = BTreeMap::new();
        for e in self.all() {
            let id = e["id"].as_str().unwrap().to_owned();
            if let Some(prev) = by_id.get(&id) {
                assert_eq!(prev, &e, "a duplicate must be the same event");
            } else {
                by_id.insert(id, e);
            }
        }
        let seqs: Vec<u64> = self
            .unique()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "first arrivals in seq order: {seqs:?}"
        );
        self.all().len() - by_id.len()
    }
}

impl Drop for Hq {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
    }
}

/// Polls `f` until it holds.
pub fn eventually(timeout: Duration, what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A state value in an outbox file (None until written, or while the file is not created).
pub fn outbox_state(db: &Path, key: &str) -> Option<Vec<u8>> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .ok()?;
    conn.query_row("SELECT value FROM state WHERE key = ?1", [key], |r| {
        r.get(0)
    })
    .ok()
}

/// The ids of the events still in an outbox file (accepted, not yet acknowledged).
pub fn outbox_ids(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    // Rows at or below the acknowledged watermark are acknowledged, waiting to be removed.
    let mut q = conn
        .prepare(
            "SELECT id FROM outbox WHERE seq > \
             (SELECT coalesce((SELECT value FROM meta WHERE key = 'acked'), 0)) ORDER BY seq",
        )
        .unwrap();
    let ids = q
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    ids
}

/// An HTTP/1.1 answer: status and body (JSON when it parses, else a JSON string).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

/// POSTs `body` to the gateway's ingest listener on a plain socket, as a device would.
pub fn post(port: u16, path: &str, token: Option<&str>, body: &[u8]) -> Answer {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("ingest listening");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{auth}Connection: close\r\n\r\n",
        body.len()
    );
    // A server refusing early (413) may close while the body is still being written.
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if raw.is_empty() => panic!("no answer from the ingest listener: {e}"),
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text}"));
    let body = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()));
    Answer { status, body }
}

/// GETs `path` from a local listener (the status page): status and body as text.
pub fn get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("listening");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    (status.unwrap_or(0), body.to_owned())
}

/// Waits until something accepts connections on `port` (the gateway has started).
pub fn wait_listening(port: u16) {
    eventually(Duration::from_secs(30), "the ingest listener", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

/// A stdout for a child whose reader is already gone (`… | head -c 10` after head quit):
/// every write gets `EPIPE`. (`std::io::pipe` needs Rust 1.87; the MSRV is 1.85.)
pub fn closed_pipe() -> Stdio {
    let (reader, writer) = nix::unistd::pipe().unwrap();
    drop(reader);
    Stdio::from(writer)
}
