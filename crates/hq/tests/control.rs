//! The fleet controls on real parts: a real mosquitto, a real gateway (the edge's daemon, run
//! in-process from its library with a simulated scanner and turnstile I/O module on ptys), and
//! the built `phygate-hq` binary publishing to it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{broker, wait_for, TENANT};
use phygate::link::jwks::signing_key_from_base64url;
use phygate::link::token::{mint, Claims};
use phygate::sim::broker::Mosquitto;
use phygate::sim::modbus_gate::GateSim;
use phygate::sim::scanner::ScannerSim;
use phygate::sim::Pty;
use phygate::sources::scanner::Framing;

const STORE: &str = "s1";
const LONG: Duration = Duration::from_secs(60);

/// One store: its config and state in `dir`, a scanner and a turnstile at station `gate-1`.
struct Store {
    dir: PathBuf,
    config: PathBuf,
    _scanner_pty: Pty,
    scanner: ScannerSim<std::fs::File>,
    gate: GateSim,
    daemon: Option<Daemon>,
}

/// The gateway's daemon on its own runtime thread, stopped as SIGTERM stops it.
struct Daemon {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

/// The store's config: `store = …` on the first line so a test can drop it (`--all` pushes).
fn config_text(dir: &Path, broker_port: u16, status_level: &str) -> String {
    format!(
        r#"store = "{STORE}"
tenant = "{TENANT}"
gateway = "gw1"

[[station]]
id = "gate-1"
role = "gate"

[[device]]
kind = "scanner"
id = "scanner-1"
station = "gate-1"
port = "{scanner}"
terminator = "cr"
aim = true

[[device]]
kind = "gate"
id = "gate-a"
station = "gate-1"
port = "{gate}"

[outbox]
path = "{db}"

[mqtt]
host = "127.0.0.1"
port = {broker_port}
keepalive = "5s"

[uplink]
backoff_min = "200ms"
backoff_max = "1s"

[log]
level = "{status_level}"
"#,
        scanner = dir.join("scanner0").display(),
        gate = dir.join("gate0").display(),
        db = dir.join("phygate.db").display(),
    )
}

impl Store {
    fn new(dir: &Path, broker_port: u16) -> Store {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("phygate.toml");
        std::fs::write(&config, config_text(dir, broker_port, "info")).unwrap();
        let pty = Pty::open(&dir.join("scanner0")).unwrap();
        let scanner = ScannerSim {
            port: pty.master.try_clone().unwrap(),
            framing: Framing {
                aim: true,
                ..Framing::default()
            },
        };
        let gate = GateSim::start(&dir.join("gate0"), 1).unwrap();
        let mut store = Store {
            dir: dir.to_owned(),
            config,
            _scanner_pty: pty,
            scanner,
            gate,
            daemon: None,
        };
        store.start();
        wait_for(LONG, "the gate polled", || store.gate.requests() > 0);
        store
    }

    fn start(&mut self) {
        assert!(self.daemon.is_none());
        let text = std::fs::read_to_string(&self.config).unwrap();
        let config = phygate::config::Config::parse(&text, &self.config).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(phygate::daemon::run(config, async {
                let _ = stopped.await;
            }))
            .unwrap();
        });
        self.daemon = Some(Daemon { stop, thread });
    }

    fn stop(&mut self) {
        let d = self.daemon.take().unwrap();
        d.stop.send(()).unwrap();
        d.thread.join().unwrap();
    }

    fn db(&self) -> PathBuf {
        self.dir.join("phygate.db")
    }

    /// A value in the gateway's state table (what it applied from the downlink).
    fn state(&self, key: &str) -> Option<String> {
        let c = rusqlite::Connection::open_with_flags(
            self.db(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .ok()?;
        c.busy_timeout(Duration::from_secs(5)).ok()?;
        c.query_row("SELECT value FROM state WHERE key = ?1", [key], |r| {
            r.get::<_, Vec<u8>>(0)
        })
        .ok()
        .map(|v| String::from_utf8(v).unwrap())
    }

    fn held_kids(&self) -> String {
        self.state("keys.jwks").unwrap_or_default()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if self.daemon.is_some() {
            self.stop();
        }
    }
}

/// `phygate-hq` with the broker, tenant and state dir of the test.
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
    eprintln!(
        "phygate-hq {args:?} → {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// An app code for `user`, signed with the private key HQ wrote for `kid`.
fn token(state: &Path, kid: &str, user: &str) -> String {
    let text = std::fs::read_to_string(state.join(format!("{kid}.key"))).unwrap();
    let key = signing_key_from_base64url(&text).unwrap();
    let claims = Claims::fresh(
        user,
        TENANT,
        None,
        Some(vec![STORE.into()]),
        Duration::from_secs(120),
    );
    mint(&key, kid, &claims)
}

#[test]
fn a_rotated_key_opens_the_gate_of_a_store_that_was_offline_and_a_retired_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    let state = dir.path().join("hq-state");
    let mut store = Store::new(&dir.path().join("store"), broker.port);

    let first = hq(&broker, &state, &["keys", "rotate", "--kid", "k1"]);
    assert!(first.status.success());
    wait_for(LONG, "k1 held by the store", || {
        store.held_kids().contains("\"k1\"")
    });
    let key_file = state.join("k1.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let private = std::fs::read_to_string(&key_file).unwrap();
    assert!(
        !stdout(&first).contains(private.trim()) && !stderr(&first).contains(private.trim()),
        "the private key is never printed"
    );

    // The store is offline while HQ rotates to k2.
    store.stop();
    let second = hq(&broker, &state, &["keys", "rotate", "--kid", "k2"]);
    assert!(second.status.success());
    assert!(stdout(&second).contains("k1, k2"), "{}", stdout(&second));
    // Run again: the same key set, no new key (the file is not overwritten).
    let key2 = std::fs::read_to_string(state.join("k2.key")).unwrap();
    let again = hq(&broker, &state, &["keys", "rotate", "--kid", "k2"]);
    assert!(again.status.success());
    assert!(
        stdout(&again).contains("already in the key set"),
        "{}",
        stdout(&again)
    );
    assert_eq!(std::fs::read_to_string(state.join("k2.key")).unwrap(), key2);
    store.start();
    wait_for(LONG, "k2 held by the store once back", || {
        store.held_kids().contains("\"k2\"")
    });
    store.scanner.scan(&token(&state, "k2", "alice")).unwrap();
    wait_for(LONG, "the gate opened for the new kid", || {
        store.gate.coil_writes().len() == 1
    });

    // Too early: a token signed with k1 just before the rotation may still be valid.
    let early = hq(&broker, &state, &["keys", "retire", "--kid", "k1"]);
    assert!(!early.status.success());
    assert!(stderr(&early).contains("not yet"), "{}", stderr(&early));
    assert!(store.held_kids().contains("\"k1\""));

    // Once the longest token lifetime has passed since k2 was published (the state file
    // backdated, as the clock would have it 301 s later).
    let path = state.join(format!("keys-{TENANT}.json"));
    let mut keys: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for k in keys["kids"].as_array_mut().unwrap() {
        let t = k["published_at"].as_u64().unwrap();
        k["published_at"] = (t - 301).into();
    }
    std::fs::write(&path, keys.to_string()).unwrap();
    let retire = hq(&broker, &state, &["keys", "retire", "--kid", "k1"]);
    assert!(retire.status.success());
    wait_for(LONG, "k1 withdrawn from the store", || {
        !store.held_kids().contains("\"k1\"")
    });
    store.scanner.scan(&token(&state, "k1", "bob")).unwrap();
    store.scanner.scan(&token(&state, "k2", "carol")).unwrap();
    wait_for(LONG, "the gate opened for carol", || {
        store.gate.coil_writes().len() >= 2
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        store.gate.coil_writes().len(),
        2,
        "the retired kid's token did not open the gate"
    );
    let last = hq(&broker, &state, &["keys", "retire", "--kid", "k2"]);
    assert!(!last.status.success(), "the last key is never retired");
}

#[test]
fn member_pushes_apply_as_snapshot_then_delta_and_a_bad_file_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    let state = dir.path().join("hq-state");
    let store = Store::new(&dir.path().join("store"), broker.port);
    let h = |c: char| c.to_string().repeat(43);
    let csv = dir.path().join("members.csv");
    downlink_ready(&broker, &state, &store);

    std::fs::write(
        &csv,
        format!("card_hash,userid\n{},u-a\n{},u-b\n", h('a'), h('b')),
    )
    .unwrap();
    let push = |extra: &[&str]| {
        let mut args = vec!["members", "push", "--file", csv.to_str().unwrap()];
        args.extend_from_slice(extra);
        hq(&broker, &state, &args)
    };
    assert!(push(&["--scope", "store", "--store", STORE])
        .status
        .success());
    wait_for(LONG, "version 1 applied", || {
        store.state("members.version/store").as_deref() == Some("1")
    });

    // The map edited: a removed, b changed, c added; sent as a delta from 1.
    std::fs::write(&csv, format!("{},u-b2\n{},u-c\n", h('b'), h('c'))).unwrap();
    let delta = push(&["--scope", "store", "--store", STORE, "--delta-from", "1"]);
    assert!(delta.status.success());
    assert!(
        stdout(&delta).contains("delta from 1 version 2"),
        "{}",
        stdout(&delta)
    );
    wait_for(LONG, "version 2 applied", || {
        store.state("members.version/store").as_deref() == Some("2")
    });
    let member = |c: char| store.state(&format!("member/store/{}", h(c)));
    assert_eq!(member('a'), None);
    assert_eq!(member('b').as_deref(), Some("u-b2"));
    assert_eq!(member('c').as_deref(), Some("u-c"));

    // A hash the store would refuse: refused here, with the store's reason, nothing published.
    std::fs::write(&csv, format!("{},u-d\nshort,u-e\n", h('d'))).unwrap();
    let bad = push(&["--scope", "store", "--store", STORE]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("not a card hash"), "{}", stderr(&bad));
    // The fleet-wide map has its own version.
    std::fs::write(&csv, format!("{},u-f\n", h('f'))).unwrap();
    assert!(push(&["--scope", "all"]).status.success());
    wait_for(LONG, "fleet version 1 applied", || {
        store.state("members.version/all").as_deref() == Some("1")
    });
    assert_eq!(
        store.state("members.version/store").as_deref(),
        Some("2"),
        "the refused file changed nothing"
    );
    assert_eq!(member('d'), None);
}

/// Waits until the store's downlink is subscribed: a message that is not retained reaches only
/// a session the broker already holds. The retained key set is the probe: once the store holds
/// it, its subscriptions are in place.
fn downlink_ready(broker: &Mosquitto, state: &Path, store: &Store) {
    assert!(hq(broker, state, &["keys", "rotate", "--kid", "ready"])
        .status
        .success());
    wait_for(LONG, "the store's downlink subscribed", || {
        store.held_kids().contains("\"ready\"")
    });
}

/// Whether the store's gateway has its retained `online` status on the broker.
fn store_online(broker: &Mosquitto) -> bool {
    retained(broker, &phygate_proto::topic::status(TENANT, STORE))
        .is_some_and(|p| String::from_utf8_lossy(&p).contains("\"online\""))
}

/// The retained message on `topic`, if any.
fn retained(broker: &Mosquitto, topic: &str) -> Option<Vec<u8>> {
    use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
    let options = MqttOptions::new(
        format!("probe-{}", fastrand::u32(..)),
        "127.0.0.1",
        broker.port,
    );
    let (client, mut conn) = Client::new(options, 8);
    client.subscribe(topic, QoS::AtLeastOnce).unwrap();
    let mut found = None;
    let mut subscribed = false;
    while let Ok(Ok(event)) = conn.recv_timeout(Duration::from_millis(500)) {
        match event {
            Event::Incoming(Packet::Publish(p)) if p.retain => {
                found = Some(p.payload.to_vec());
                break;
            }
            Event::Incoming(Packet::SubAck(_)) => subscribed = true,
            _ => {}
        }
    }
    assert!(subscribed, "the probe subscribed");
    let _ = client.disconnect();
    found
}

#[test]
fn an_invalid_config_is_refused_before_publishing_and_a_valid_one_is_applied_by_every_store() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    let state = dir.path().join("hq-state");
    let store_dir = dir.path().join("store");
    let store = Store::new(&store_dir, broker.port);
    wait_for(LONG, "the store online", || store_online(&broker));
    let file = dir.path().join("hq-config.toml");
    let topic = phygate_proto::topic::config(TENANT, STORE);

    // Another store's config, with a mistyped key: the edge's own problems, nothing published.
    let text = config_text(&store_dir, broker.port, "debug");
    let wrong = text
        .replacen("store = \"s1\"", "store = \"s2\"", 1)
        .replace("backoff_max", "backof_max");
    std::fs::write(&file, &wrong).unwrap();
    let refused = hq(
        &broker,
        &state,
        &[
            "config",
            "push",
            "--store",
            STORE,
            "--file",
            file.to_str().unwrap(),
        ],
    );
    assert!(!refused.status.success());
    let err = stderr(&refused);
    assert!(err.contains("nothing was published"), "{err}");
    assert!(err.contains("is not this gateway's store"), "{err}");
    assert!(err.contains("backof_max"), "{err}");
    assert_eq!(retained(&broker, &topic), None, "nothing retained");

    // For every store: the file without its `store` line, each store gets its own.
    let fleet = text.replacen("store = \"s1\"\n", "", 1);
    std::fs::write(&file, &fleet).unwrap();
    let applied = hq(
        &broker,
        &state,
        &["config", "push", "--all", "--file", file.to_str().unwrap()],
    );
    assert!(applied.status.success());
    let version = phygate::config::hq::version(&text);
    assert!(
        stdout(&applied).contains(&format!("s1: applied {version}")),
        "{}",
        stdout(&applied)
    );
    assert_eq!(
        std::fs::read_to_string(store_dir.join("hq-config.toml")).unwrap(),
        text,
        "the store keeps exactly what was checked and published"
    );
    drop(store);
}

#[test]
fn open_gate_prints_the_stores_result_and_runs_once_per_id() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    let state = dir.path().join("hq-state");
    let store = Store::new(&dir.path().join("store"), broker.port);
    downlink_ready(&broker, &state, &store);
    let open = |station: &str, id: &str| {
        hq(
            &broker,
            &state,
            &[
                "command",
                "open-gate",
                "--store",
                STORE,
                "--station",
                station,
                "--expires",
                "20s",
                "--id",
                id,
            ],
        )
    };

    let done = open("gate-1", "cmd-1");
    assert!(done.status.success());
    assert!(stdout(&done).contains("s1: done"), "{}", stdout(&done));
    assert_eq!(store.gate.coil_writes().len(), 1);
    let again = open("gate-1", "cmd-1");
    assert!(!again.status.success());
    assert!(
        stdout(&again).contains("s1: duplicate"),
        "{}",
        stdout(&again)
    );
    let nowhere = open("nowhere", "cmd-2");
    assert!(!nowhere.status.success());
    assert!(
        stdout(&nowhere).contains("s1: refused"),
        "{}",
        stdout(&nowhere)
    );
    assert_eq!(store.gate.coil_writes().len(), 1, "the gate opened once");

    // A store that is not there: no answer, said so, a distinct exit code.
    let absent = hq(
        &broker,
        &state,
        &[
            "command",
            "open-gate",
            "--store",
            "s9",
            "--station",
            "gate-1",
            "--expires",
            "1s",
        ],
    );
    assert_eq!(absent.status.code(), Some(2));
    assert!(stdout(&absent).contains("no store.command.result"));
}
