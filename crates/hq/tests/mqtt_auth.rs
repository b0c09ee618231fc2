//! phygate-hq consuming from a broker that lets no one in anonymously: a real mosquitto whose
//! TLS listener requires a client certificate signed by the test CA and a username and
//! password from its password_file. The gateway publishes on the same broker's plain loopback
//! listener (anonymous there: `per_listener_settings`), so only HQ's side is under test: the
//! consumer, and `stores` through the controls' MQTT link (the repairer's link too).

mod common;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hq_consumes_over_tls_with_a_client_certificate_and_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let (broker_cert, broker_key) = ca.issue("broker");
    let passwords = dir.path().join("mosquitto.passwd");
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
        &dir.path().join("broker"),
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

    // The right certificate and password: HQ subscribes (or `start_input` times out) and
    // stores what the gateway publishes.
    let hq_dir = dir.path().join("hq");
    std::fs::create_dir_all(&hq_dir).unwrap();
    std::fs::write(hq_dir.join("mqtt.password"), "s3cret\n").unwrap();
    let mut hq = Hq::start_input(
        &hq_dir,
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
    let wrong_dir = dir.path().join("hq-wrong");
    std::fs::create_dir_all(&wrong_dir).unwrap();
    std::fs::write(wrong_dir.join("mqtt.password"), "not-it\n").unwrap();
    let mut wrong = Hq::configure(
        &wrong_dir,
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
