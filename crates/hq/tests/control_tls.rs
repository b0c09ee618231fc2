//! The fleet controls over TLS with a client certificate, on a real mosquitto whose TLS
//! listener requires one (certificates made here with rcgen). The plain loopback listener of
//! the same broker is the test's own view of what was published.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use phygate::sim::broker::{free_port, Mosquitto};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A CA in `dir` and a leaf it signs; returns (ca, cert, key) paths.
fn issue(dir: &Path, ca: &CertifiedIssuer<'static, KeyPair>, cn: &str) -> (PathBuf, PathBuf) {
    let mut params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    let (c, k) = (dir.join(format!("{cn}.pem")), dir.join(format!("{cn}.key")));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

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
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "hq test CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let (broker_cert, broker_key) = issue(dir.path(), &ca, "broker");
    let (hq_cert, hq_key) = issue(dir.path(), &ca, "hq-engineer");
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
