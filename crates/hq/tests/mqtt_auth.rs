//! phygate-hq consuming from a broker that lets no one in anonymously: a real mosquitto whose
//! TLS listener requires a client certificate signed by the test CA and a username and
//! password from its password_file. The gateway publishes on the same broker's plain loopback
//! listener (anonymous there: `per_listener_settings`), so only HQ's side is under test: the
//! consumer, and `stores` through the controls' MQTT link (the repairer's link too).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::certs::TestCa;
use common::{scan, wait_for, Edge, Hq};
use phygate::sim::broker::{free_port, Mosquitto};

const WAIT: Duration = Duration::from_secs(60);

/// The `[mqtt]` table of an HQ that connects to the TLS listener as `hq` with its certificate.
fn tls_input(tls_port: u16, ca: &TestCa, client_id: &str) -> String {
    let (cert, key) = ca.issue(client_id);
    format!(
        "[mqtt]\nport = {tls_port}\nclient_id = \"{client_id}\"\nkeepalive = \"5s\"\n\
         ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
         username = \"hq\"\npassword_file = \"mqtt.password\"\n",
        ca.file.display(),
        cert.display(),
        key.display()
    )
}

/// A mosquitto with an anonymous plain listener (`Mosquitto::port`) and a TLS listener (the
/// returned port) that wants a client certificate of the returned CA and the login `hq` /
/// `s3cret`.
fn secured_broker(dir: &Path) -> (Mosquitto, u16, TestCa) {
    let ca = TestCa::new(dir);
    let (broker_cert, broker_key) = ca.issue("broker");
    let passwords = dir.join("mosquitto.passwd");
    let made = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwords)
        .args(["hq", "s3cret"])
        .status()
        .expect("mosquitto_passwd (in the mosquitto package)");
    assert!(made.success());
    let tls_port = free_port().unwrap();
    // The plain listener (the first, from `start_with`) stays anonymous for the gateway.
    let broker = Mosquitto::start_with(
        &dir.join("broker"),
        &format!(
            "per_listener_settings true\nallow_anonymous true\n\
             listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
             require_certificate true\nallow_anonymous false\npassword_file {}\n",
            ca.file.display(),
            broker_cert.display(),
            broker_key.display(),
            passwords.display()
        ),
    )
    .expect("mosquitto");

    (broker, tls_port, ca)
}

/// HQ's config dir under `dir` with `password` in its `mqtt.password`.
fn hq_dir(dir: &Path, name: &str, password: &str) -> PathBuf {
    let hq_dir = dir.join(name);
    std::fs::create_dir_all(&hq_dir).unwrap();
    std::fs::write(hq_dir.join("mqtt.password"), format!("{password}\n")).unwrap();
    hq_dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hq_consumes_over_tls_with_a_client_certificate_and_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, tls_port, ca) = secured_broker(dir.path());

    // The right certificate and password: HQ subscribes (or `start_input` times out) and
    // stores what the gateway publishes.
    let mut hq = Hq::start_input(
        &hq_dir(dir.path(), "hq", "s3cret"),
        &tls_input(tls_port, &ca, "hq-auth"),
        "30s",
        "[store]\npath = \"hq.db\"\n",
    );
    assert!(
        hq.log().contains("tls, client certificate, username"),
        "{}",
        hq.log()
    );
    let mut edge = Edge::open(&dir.path().join("s1"), "s1", broker.port);
    edge.start_uplink();
    let mut last = 0;
    for i in 0..50 {
        last = edge.append(scan(40 + i % 5)).await;
    }
    wait_for(WAIT, "every event at HQ over TLS", || {
        hq.stored("s1", "gw1").len() as u64 == last
    });
    assert!(hq.stored("s1", "gw1").values().all(|&n| n == 1));
    // `stores` reads the retained statuses through the same TLS listener and login.
    let rows = hq.query(&["stores", "--json"]);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["store"], "s1");
    assert_eq!(rows[0]["status"], "online", "{rows:?}");

    // A wrong password: the broker's refusal is in HQ's log, and HQ keeps trying.
    let mut wrong = Hq::configure(
        &hq_dir(dir.path(), "hq-wrong", "not-it"),
        &tls_input(tls_port, &ca, "hq-wrong"),
        "30s",
        "[store]\npath = \"hq.db\"\n",
    );
    wrong.spawn();
    wait_for(WAIT, "the broker's refusal in HQ's log", || {
        let log = wrong.log();
        log.contains("BadUserNamePassword") || log.contains("NotAuthorized")
    });
    assert!(
        !wrong.log().contains("subscribed"),
        "a refused HQ subscribed:\n{}",
        wrong.log()
    );
    assert!(wrong.terminate(), "SIGTERM exits cleanly while refused");

    edge.stop_uplink().await;
    assert!(hq.terminate(), "SIGTERM exits cleanly:\n{}", hq.log());
}

/// The repairer asks the store for a hole through the same TLS listener and login: the store
/// (its link and downlink on the plain listener) answers that it no longer holds the rows, and
/// HQ declares them lost at once instead of after the ten-minute grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_requests_go_over_tls_with_the_inputs_login() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, tls_port, ca) = secured_broker(dir.path());
    let hq = Hq::start_input(
        &hq_dir(dir.path(), "hq", "s3cret"),
        &tls_input(tls_port, &ca, "hq-repair"),
        "10m",
        "[store]\npath = \"hq.db\"\n[repair]\nafter = \"1s\"\nretry = \"3s\"\n",
    );
    let mut edge = Edge::open_window(&dir.path().join("s1"), "s1", broker.port, "0s");
    for _ in 0..10 {
        edge.append(scan(40)).await;
    }
    edge.delete_behind_its_back(&[4, 5]);
    edge.start_answering();
    wait_for(WAIT, "the store's answer declared 4..=5 lost", || {
        hq.query(&["losses"])
            .iter()
            .any(|g| g["store"] == "s1" && g["lost"] == 2)
    });
    assert!(
        hq.metric("phygate_hq_replays_requested_total") >= 1,
        "{}",
        hq.metrics()
    );
    assert!(
        hq.log()
            .contains("the gateway answered it no longer holds them"),
        "{}",
        hq.log()
    );
    edge.stop_uplink().await;
}
