//! The fleet controls over TLS with a client certificate, on a real mosquitto whose TLS
//! listener requires one (certificates from `common::certs`, made with rcgen). The plain loopback listener of
//! the same broker is the test's own view of what was published.

mod common;

use std::process::Command;
use std::time::Duration;

use common::certs::TestCa;
use phygate::sim::broker::{free_port, Mosquitto};

fn retained_jwks(port: u16) -> Option<String> {
    use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
    let (client, mut conn) = Client::new(MqttOptions::new("probe", "127.0.0.1", port), 8);
    client
        .subscribe("phygate/v1/acme/keys", QoS::AtLeastOnce)
        .unwrap();
    while let Ok(Ok(event)) = conn.recv_timeout(Duration::from_millis(700)) {
        if let Event::Incoming(Packet::Publish(p)) = event {
            return Some(String::from_utf8_lossy(&p.payload).into_owned());
        }
    }
    None
}

#[test]
fn keys_rotate_publishes_over_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let ca_file = ca.file.clone();
    let (broker_cert, broker_key) = ca.issue("broker");
    let (hq_cert, hq_key) = ca.issue("hq-engineer");
    let tls_port = free_port().unwrap();
    let broker = Mosquitto::start_with(
        &dir.path().join("broker"),
        &format!(
            "allow_anonymous true\nlistener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            ca_file.display(),
            broker_cert.display(),
            broker_key.display()
        ),
    )
    .expect("mosquitto");
    let rotate = |extra: &[&std::ffi::OsStr]| {
        let out = Command::new(env!("CARGO_BIN_EXE_phygate-hq"))
            .args(["keys", "rotate", "--kid", "k1", "--tenant", "acme"])
            .args(["--broker", &format!("127.0.0.1:{tls_port}")])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(extra)
            .output()
            .unwrap();
        eprintln!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };

    // Plain TCP to the TLS listener: an error, nothing published.
    let plain = rotate(&[]);
    assert!(!plain.status.success());
    assert_eq!(retained_jwks(broker.port), None);
    // The key was made and kept before the failed publish: the retries below publish it.
    let key_file = dir.path().join("state").join("k1.key");
    let private = std::fs::read_to_string(&key_file).unwrap();
    // TLS without the client certificate the broker requires: refused too.
    let no_cert = rotate(&["--ca".as_ref(), ca_file.as_os_str()]);
    assert!(!no_cert.status.success());
    let ok = rotate(&[
        "--ca".as_ref(),
        ca_file.as_os_str(),
        "--cert".as_ref(),
        hq_cert.as_os_str(),
        "--key".as_ref(),
        hq_key.as_os_str(),
    ]);
    assert!(ok.status.success());
    let jwks = retained_jwks(broker.port).expect("the JWKS is retained on the broker");
    assert!(jwks.contains("\"kid\":\"k1\""), "{jwks}");
    let public = phygate::link::jwks::signing_key_from_base64url(&private)
        .unwrap()
        .verifying_key();
    let jwk = phygate::link::jwks::public_jwk("k1", &public);
    assert!(
        jwks.contains(jwk["x"].as_str().unwrap()),
        "the published key is the one whose private half was kept after the failed attempts"
    );
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), private);
}
