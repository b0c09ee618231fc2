//! Real parts only: a real mosquitto on a free port (the gateway's test broker), the gateway's
//! own outbox and uplink publishing to it in-process, and the built `phygate-hq` binary as a
//! child process with its config and SQLite journey store in a temp dir. [`pg`] starts a real
//! PostgreSQL, [`nats`] a single nats-server, [`certs`] a CA and the certificates it signs, [`webhook`] a webhook receiver that checks signatures and counts repeats.
#![allow(dead_code)]

pub mod certs;
pub mod nats;
pub mod pg;
pub mod webhook;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use phygate::config::Config as EdgeConfig;
use phygate::event::{Event, EventData, Origin, QrScanned};
use phygate::outbox::{Outbox, OutboxHandle};
use phygate::shutdown::Shutdown;
use phygate::sim::broker::{free_port, Mosquitto};
use phygate::uplink::Uplink;
use serde_json::Value;

pub const TENANT: &str = "acme";

/// The `phygate-hq` binary with its config, store and log under `dir`.
pub struct Hq {
    child: Option<Child>,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub status_port: u16,
}

impl Hq {
    /// Starts HQ on `broker_port` with a loss grace of `grace` and its SQLite store in `dir`,
    /// and waits until it subscribed.
    pub fn start(dir: &Path, broker_port: u16, grace: &str) -> Hq {
        let client_id = format!("hq-test-{broker_port}");
        Hq::start_with(
            dir,
            broker_port,
            grace,
            &client_id,
            "[store]\npath = \"hq.db\"\n",
        )
    }

    /// The same with MQTT client id `client_id` and the config `tables` (`[store]`,
    /// `[[sink]]`) appended.
    pub fn start_with(
        dir: &Path,
        broker_port: u16,
        grace: &str,
        client_id: &str,
        tables: &str,
    ) -> Hq {
        let input = format!(
            "[mqtt]\nport = {broker_port}\nclient_id = \"{client_id}\"\nkeepalive = \"5s\"\n"
        );
        Hq::start_input(dir, &input, grace, tables)
    }

    /// Starts HQ reading the JetStream stream of the NATS servers `servers` through the shared
    /// durable consumer, and waits until it consumes.
    pub fn start_jetstream(dir: &Path, servers: &[String], grace: &str) -> Hq {
        let servers: Vec<String> = servers.iter().map(|s| format!("{s:?}")).collect();
        let input = format!(
            "[input]\nkind = \"jetstream\"\nservers = [{}]\nack_wait = \"3s\"\n",
            servers.join(", ")
        );
        Hq::start_input(dir, &input, grace, "[store]\npath = \"hq.db\"\n")
    }

    /// Starts HQ with `input` (its `[input]` and/or `[mqtt]` tables), the loss grace, a status
    /// endpoint and `tables` (`[store]`, `[[sink]]`), and waits until it consumes.
    pub fn start_input(dir: &Path, input: &str, grace: &str, tables: &str) -> Hq {
        let mut hq = Hq::configure(dir, input, grace, tables);
        hq.restart();
        hq
    }

    /// Writes the config as [`Hq::start_input`] does, and starts nothing.
    pub fn configure(dir: &Path, input: &str, grace: &str, tables: &str) -> Hq {
        std::fs::create_dir_all(dir).unwrap();
        let status_port = free_port().unwrap();
        let config = dir.join("hq.toml");
        std::fs::write(
            &config,
            format!(
                "{input}[loss]\ngrace = \"{grace}\"\n[status]\nlisten = \"127.0.0.1:{status_port}\"\n{tables}"
            ),
        )
        .unwrap();
        Hq {
            child: None,
            dir: dir.to_owned(),
            config,
            status_port,
        }
    }

    /// Starts the process and waits until it is ready to take messages.
    pub fn restart(&mut self) {
        let before = self.ready_marks();
        self.spawn();
        wait_for(Duration::from_secs(20), "HQ subscribed", || {
            self.ready_marks() > before
        });
    }

    /// Starts the process, without waiting for anything.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_phygate-hq"))
                .args(["run", "--config"])
                .arg(&self.config)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    /// How often the log says HQ is ready to take messages: subscribed on a new session, the
    /// broker resumed the old one, or the JetStream consumer is attached.
    fn ready_marks(&self) -> usize {
        let log = self.log();
        [
            "subscribed",
            "session_present=true",
            "consuming from JetStream",
        ]
        .iter()
        .map(|m| log.matches(m).count())
        .sum()
    }

    /// kill -9: nothing flushed, nothing acknowledged on the way out.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// The running process's id (to stop and continue it).
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// A gauge that `/metrics` shows as a decimal (`metric` reads integers).
    pub fn gauge(&self, name: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    /// SIGTERM; returns whether it exited with success.
    pub fn terminate(&mut self) -> bool {
        let mut c = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::SIGTERM,
        )
        .unwrap();
        c.wait().unwrap().success()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("hq.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn db(&self) -> rusqlite::Connection {
        let c = rusqlite::Connection::open(self.dir.join("hq.db")).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        c
    }

    /// `(seq, count)` of the events stored for gateway `gateway` of `store`.
    pub fn stored(&self, store: &str, gateway: &str) -> BTreeMap<u64, u64> {
        let db = self.db();
        let Ok(mut stmt) = db.prepare(
            "SELECT e.seq, count(*) FROM events e JOIN gateways g USING (gw) \
             WHERE g.store = ?1 AND g.gateway = ?2 GROUP BY e.seq",
        ) else {
            return BTreeMap::new();
        };
        stmt.query_map([store, gateway], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    /// Runs a `phygate-hq` subcommand on this HQ's config; its stdout lines as JSON.
    pub fn query(&self, args: &[&str]) -> Vec<Value> {
        let out = Command::new(env!("CARGO_BIN_EXE_phygate-hq"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The sum of metric `name` over its labels, as `/metrics` shows it now.
    pub fn metric(&self, name: &str) -> u64 {
        self.metrics()
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with([' ', '{']))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.status_port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: hq\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    }
}

impl Drop for Hq {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A store's gateway, reduced to what HQ sees of it: the real outbox (its own SQLite file) and
/// the real uplink, started separately so a test can work on the outbox before publishing.
pub struct Edge {
    pub config: EdgeConfig,
    pub outbox: OutboxHandle,
    stop: Option<Shutdown>,
    uplink: Option<tokio::task::JoinHandle<()>>,
    /// With [`Edge::start_answering`]: the link and the downlink, and the link's readings
    /// sender (it runs until that drops).
    answering: Vec<tokio::task::JoinHandle<()>>,
    readings: Option<tokio::sync::mpsc::Sender<phygate::sources::Reading>>,
}

impl Edge {
    /// Opens the outbox of gateway `gw1` of `store`; nothing is published yet.
    pub fn open(dir: &Path, store: &str, broker_port: u16) -> Edge {
        Edge::open_window(dir, store, broker_port, "30m")
    }

    /// The same, keeping acknowledged rows for `window` (`[outbox] replay_window`).
    pub fn open_window(dir: &Path, store: &str, broker_port: u16, window: &str) -> Edge {
        Edge::open_with(
            dir,
            store,
            &format!("host = \"127.0.0.1\"\nport = {broker_port}"),
            window,
        )
    }

    /// The same, with a list of brokers (`host:port`) tried in turn.
    pub fn open_brokers(dir: &Path, store: &str, brokers: &[String]) -> Edge {
        let list: Vec<String> = brokers.iter().map(|b| format!("{b:?}")).collect();
        Edge::open_with(
            dir,
            store,
            &format!("brokers = [{}]", list.join(", ")),
            "30m",
        )
    }

    /// `broker`: the `[mqtt]` keys that name the broker(s).
    fn open_with(dir: &Path, store: &str, broker: &str, window: &str) -> Edge {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("edge.toml");
        // A short backoff cap: the tests kill brokers and wait for the reconnect.
        let text = format!(
            "tenant = \"{TENANT}\"\nstore = \"{store}\"\ngateway = \"gw1\"\n\
             [outbox]\npath = \"{}\"\nmax_bytes = 1048576\nreplay_window = \"{window}\"\n\
             [mqtt]\n{broker}\nclient_id = \"edge-{store}\"\nkeepalive = \"5s\"\n\
             [uplink]\nbackoff_max = \"2s\"\n",
            dir.join("outbox.db").display()
        );
        let config = EdgeConfig::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
        let origin = Origin {
            store: store.into(),
            gateway: "gw1".into(),
        };
        let (outbox, handle) = Outbox::open(&config.outbox, origin).unwrap();
        outbox.spawn().unwrap();
        Edge {
            config,
            outbox: handle,
            stop: None,
            uplink: None,
            answering: Vec::new(),
            readings: None,
        }
    }

    /// Starts publishing and answering HQ's commands as the daemon does: the real link (with
    /// its replayer) behind the real downlink session, and the uplink publishing replays.
    pub fn start_answering(&mut self) {
        use phygate::link::{journey::Journey, Link};
        let stop = Shutdown::new();
        let batching = self.config.uplink_settings().batching;
        let (replayer, replays) = phygate::replay::channel(
            self.outbox.clone(),
            batching.batch_max_events,
            batching.batch_max_bytes,
        );
        let (readings, readings_rx) = tokio::sync::mpsc::channel(16);
        let mut link = Link::new(
            readings_rx,
            self.outbox.clone(),
            Journey::new(self.config.journey_settings()),
            &self.config.gateway,
            Default::default(),
        )
        .with_replayer(replayer);
        let updates = link.updates();
        // HQ's configs are not this test's business: their receiver is dropped.
        let (configs, _) = tokio::sync::mpsc::channel(1);
        let downlink = phygate::downlink::session::Downlink::new(
            self.config.downlink_settings(),
            updates,
            configs,
            stop.clone(),
        )
        .unwrap();
        let uplink = Uplink::new(
            self.config.uplink_settings(),
            self.outbox.clone(),
            stop.clone(),
        )
        .unwrap()
        .with_replays(replays)
        // The status with its `seq` report, as a store sends it.
        .with_report(phygate::uplink::report::ReportSources {
            applied: phygate::uplink::report::AppliedHandle::default().subscribe(),
            board: phygate::status::Board::new(Vec::new()),
        });
        self.uplink = Some(tokio::spawn(async move {
            uplink.run().await.unwrap();
        }));
        self.answering.push(tokio::spawn(async move {
            link.run().await.unwrap();
        }));
        self.answering.push(tokio::spawn(async move {
            downlink.run().await.unwrap();
        }));
        self.readings = Some(readings);
        self.stop = Some(stop);
    }

    /// Starts publishing (the gateway's uplink, QoS 1, rows deleted on PUBACK).
    pub fn start_uplink(&mut self) {
        self.start_uplink_with(None)
    }

    /// The same, its status carrying the gateway's report from `report`.
    pub fn start_uplink_with(&mut self, report: Option<phygate::uplink::report::ReportSources>) {
        let stop = Shutdown::new();
        let mut uplink = Uplink::new(
            self.config.uplink_settings(),
            self.outbox.clone(),
            stop.clone(),
        )
        .unwrap();
        if let Some(report) = report {
            uplink = uplink.with_report(report);
        }
        self.uplink = Some(tokio::spawn(async move {
            uplink.run().await.unwrap();
        }));
        self.stop = Some(stop);
    }

    pub async fn stop_uplink(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.stop();
            self.uplink.take().unwrap().await.unwrap();
            self.readings = None;
            for task in self.answering.drain(..) {
                task.await.unwrap();
            }
        }
    }

    /// Events the broker acknowledged that the outbox still counts as live: 0 once every
    /// append was published and acknowledged.
    pub async fn live(&self) -> u64 {
        self.outbox.stats().await.unwrap().depth
    }

    /// Appends `event` durably; returns its seq.
    pub async fn append(&self, event: Event) -> u64 {
        self.outbox.append(event).await.unwrap()
    }

    /// Rows still in the outbox and not acknowledged (published and not acknowledged, or not
    /// yet published); acknowledged rows kept for replay (`replay_window`) are not counted.
    pub fn backlog(&self) -> i64 {
        let c = rusqlite::Connection::open(&self.config.outbox.path).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        c.query_row(
            "SELECT count(*) FROM outbox WHERE seq > (SELECT value FROM meta WHERE key = 'acked')",
            [],
            |r| r.get(0),
        )
        .unwrap()
    }

    /// Deletes rows from the outbox's SQLite file behind its back: a simulated loss.
    pub fn delete_behind_its_back(&self, seqs: &[u64]) {
        let c = rusqlite::Connection::open(&self.config.outbox.path).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        for s in seqs {
            assert_eq!(
                c.execute("DELETE FROM outbox WHERE seq = ?1", [*s as i64])
                    .unwrap(),
                1
            );
        }
    }
}

/// An anonymous product scan with a payload of `pad` bytes.
pub fn scan(pad: usize) -> Event {
    Event::new(
        "aisle-1".into(),
        SystemTime::now(),
        EventData::QrScanned(QrScanned {
            kind: "product",
            symbology: "ean13",
            aim: None,
            payload: Some("4".repeat(pad.max(1))),
            kid: None,
            jti: None,
            verdict: None,
            gate_opened: None,
        }),
    )
}

/// The same, by an identified user (never evicted before anonymous events).
pub fn identified(user: &str, pad: usize) -> Event {
    let mut e = scan(pad);
    e.userid = Some(user.into());
    e.stage = Some("browse");
    e
}

pub fn wait_for(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn broker(dir: &Path) -> Mosquitto {
    Mosquitto::start(&dir.join("broker")).expect("mosquitto")
}
