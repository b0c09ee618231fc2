//! The HQ link's security on real parts: mosquitto with a TLS listener that requires a client
//! certificate per store (certificates made here with rcgen), the ACL shipped in
//! `hw/mosquitto-acl.example`, and a password file. HQ's test subscriber uses a plain loopback
//! listener of the same broker.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

const LONG: Duration = Duration::from_secs(30);

/// A CA and the files it signed, in `dir`.
struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A leaf certificate with CN `cn` and these names; returns (cert, key) paths.
    fn issue(&self, cn: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (c, k) = (
            self.dir.join(format!("{cn}.pem")),
            self.dir.join(format!("{cn}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

/// Broker settings: anonymous HQ on the plain listener (read-only by the ACL), and a TLS
/// listener on `tls_port` that requires a client certificate and takes its CN as username.
fn tls_broker(pki: &Pki, tls_port: u16, acl: &Path) -> String {
    let (cert, key) = pki.issue("broker", &["localhost", "127.0.0.1"]);
    format!(
        "allow_anonymous true\nacl_file {}\n\
         listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
         require_certificate true\nuse_identity_as_username true\n",
        acl.display(),
        pki.ca().display(),
        cert.display(),
        key.display()
    )
}

/// The shipped ACL, after a line that lets the anonymous test HQ read every store.
fn acl(dir: &Path) -> PathBuf {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/hw/mosquitto-acl.example"
    ))
    .unwrap();
    let path = dir.join("acl");
    std::fs::write(&path, format!("topic read phygate/v1/#\n{shipped}")).unwrap();
    path
}

/// Points the rig's config at `port` (the TLS listener) with `extra` tables.
fn gateway_config(rig: &Rig, port: u16, extra: &str) {
    rig.write_config(&format!(
        "\n[uplink]\nbackoff_min = \"100ms\"\nbackoff_max = \"400ms\"\n{extra}"
    ));
    let text = std::fs::read_to_string(&rig.config).unwrap();
    let text = text.replace(
        &format!("port = {}\nkeepalive", rig.broker.port),
        &format!("port = {port}\nkeepalive"),
    );
    std::fs::write(&rig.config, text).unwrap();
}

fn tls_table(ca: &Path, client: Option<&(PathBuf, PathBuf)>) -> String {
    let mut t = format!("\n[mqtt.tls]\nca = \"{}\"\n", ca.display());
    if let Some((cert, key)) = client {
        t += &format!(
            "cert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        );
    }
    t
}

/// Waits until the log shows `n` failed attempts, and checks the gateway is still up.
fn fails_and_retries(gw: &mut Gateway, n: usize) -> String {
    eventually(LONG, "repeated HQ link failures", || {
        gw.log().matches("HQ link down").count() >= n
    });
    let log = gw.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(gw.terminate().success(), "still running, stops cleanly");
    log
}

#[test]
fn events_arrive_over_mutual_tls_and_the_acl_keeps_a_store_in_its_prefix() {
    let certs = tempfile::tempdir().unwrap();
    let pki = Pki::new(certs.path(), "fleet");
    let tls_port = phygate::sim::broker::free_port().unwrap();
    let rig = Rig::with_broker(&tls_broker(&pki, tls_port, &acl(certs.path())));
    let hq = rig.hq("mtls");
    let (_pty, mut scanner) = rig.scanner();

    // Store s1 with its own certificate: delivered.
    let s1 = pki.issue(STORE, &[]);
    gateway_config(&rig, tls_port, &tls_table(&pki.ca(), Some(&s1)));
    let mut gw = rig.start_gateway();
    scanner.scan("OVER-TLS").unwrap();
    hq.wait_for(LONG, "the code over mTLS", |h| {
        h.scanned_payloads() == ["OVER-TLS"]
    });
    assert!(gw.log().contains("connected to HQ"));
    assert!(gw.terminate().success());

    // Another store's certificate, publishing under s1: mosquitto closes the connection at
    // the first denied publish, so nothing is acknowledged and the events stay in the outbox.
    let other = pki.issue("s2", &[]);
    gateway_config(&rig, tls_port, &tls_table(&pki.ca(), Some(&other)));
    let before = hq.all().len();
    let mut gw = rig.start_gateway();
    scanner.scan("FORGED").unwrap();
    let log = fails_and_retries(&mut gw, 3);
    assert!(
        log.contains("connected to HQ") && log.contains("closed by peer"),
        "{log}"
    );
    assert_eq!(hq.all().len(), before, "nothing from s2 under s1's prefix");
    assert!(
        outbox_ids(&rig.db_path()).len() >= 2,
        "the refused events are kept (scanner up + the code)"
    );
}

#[test]
fn a_wrong_ca_or_a_missing_client_certificate_fails_clearly_and_keeps_retrying() {
    let certs = tempfile::tempdir().unwrap();
    let pki = Pki::new(certs.path(), "fleet");
    let stranger = Pki::new(certs.path(), "stranger");
    let tls_port = phygate::sim::broker::free_port().unwrap();
    let rig = Rig::with_broker(&tls_broker(&pki, tls_port, &acl(certs.path())));
    let (_pty, _scanner) = rig.scanner();
    let s1 = pki.issue(STORE, &[]);

    // The gateway trusts another CA than the one that signed the broker.
    gateway_config(&rig, tls_port, &tls_table(&stranger.ca(), Some(&s1)));
    let mut gw = rig.start_gateway();
    let log = fails_and_retries(&mut gw, 3);
    assert!(
        log.contains("invalid peer certificate") && log.contains("UnknownIssuer"),
        "{log}"
    );
    eprintln!(
        "{}",
        log.lines().find(|l| l.contains("HQ link down")).unwrap()
    );

    // No client certificate for a broker that requires one.
    std::fs::remove_file(rig.dir.path().join("phygate.log")).unwrap();
    gateway_config(&rig, tls_port, &tls_table(&pki.ca(), None));
    let mut gw = rig.start_gateway();
    let log = fails_and_retries(&mut gw, 3);
    assert!(
        log.contains("CertificateRequired") || log.contains("client certificate"),
        "{log}"
    );
    eprintln!(
        "{}",
        log.lines().find(|l| l.contains("HQ link down")).unwrap()
    );
}

fn mosquitto_passwd() -> Option<PathBuf> {
    ["/usr/bin/mosquitto_passwd", "/usr/sbin/mosquitto_passwd"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn username_and_password_are_checked_by_the_broker(mqtt: Mqtt) {
    let Some(passwd) = mosquitto_passwd() else {
        eprintln!("NOTICE: skipping: mosquitto_passwd is not installed (it comes with mosquitto)");
        return;
    };
    let files = tempfile::tempdir().unwrap();
    let pw = files.path().join("passwords");
    std::fs::write(&pw, "").unwrap();
    for (user, password) in [("s1", "store-secret"), ("hq", "hq-secret")] {
        let ok = Command::new(&passwd)
            .args(["-b", pw.to_str().unwrap(), user, password])
            .status()
            .unwrap()
            .success();
        assert!(ok, "mosquitto_passwd");
    }
    let rig = Rig::with_broker_on(
        &format!("allow_anonymous false\npassword_file {}\n", pw.display()),
        mqtt,
    );
    let hq = Hq::connect_as(rig.broker.port, "passwords", Some(("hq", "hq-secret")));
    let (_pty, mut scanner) = rig.scanner();

    let with = |password: &str| {
        gateway_config(&rig, rig.broker.port, "");
        let text = std::fs::read_to_string(&rig.config).unwrap().replace(
            "keepalive = \"5s\"\n",
            &format!("keepalive = \"5s\"\nusername = \"s1\"\npassword = \"{password}\"\n"),
        );
        std::fs::write(&rig.config, text).unwrap();
    };
    with("wrong");
    let mut gw = rig.start_gateway();
    let log = fails_and_retries(&mut gw, 3);
    assert!(log.contains("NotAuthorized"), "{log}");
    if mqtt == Mqtt::V5 {
        // MQTT 5's CONNACK reason code, named with its number.
        assert!(
            log.contains("the broker refused the connection: NotAuthorized (0x87)"),
            "{log}"
        );
    }

    with("store-secret");
    let _gw = rig.start_gateway();
    scanner.scan("WITH-PASSWORD").unwrap();
    hq.wait_for(LONG, "the code", |h| {
        h.scanned_payloads() == ["WITH-PASSWORD"]
    });
}

on_both_protocols!(username_and_password_are_checked_by_the_broker);
