//! phygate-hq's JetStream input against a nats-server that lets no one in anonymously: a real
//! single-node nats-server with JetStream, (a) with a user and password, (b) with TLS that
//! requires a client certificate of the test CA, (c) with a user NKey. HQ with the right
//! settings stores what is published on the events subjects; HQ with a wrong password, no
//! client certificate or another NKey says why in its log and stores nothing, although the
//! stream holds events it could have taken.

mod common;

use std::path::Path;
use std::time::Duration;

use common::certs::TestCa;
use common::nats::{publish_events, Account, NatsServer, Operator};
use common::{wait_for, Hq};

const WAIT: Duration = Duration::from_secs(60);
const EVENTS: u64 = 20;

/// The `[input]` table for `port`: a one-node stream, and `security` (its TLS and login keys).
fn input(scheme: &str, port: u16, security: &str) -> String {
    format!(
        "[input]\nkind = \"jetstream\"\nservers = [\"{scheme}://127.0.0.1:{port}\"]\n\
         replicas = 1\nack_wait = \"5s\"\n{security}"
    )
}

/// Runs one case: `right` HQ says `security=` `says` in its log, attaches (creating the stream
/// and the durable) and stops; `publisher` fills the stream; `wrong` HQ is refused with
/// `refusal` in its log and stores nothing; `right` HQ, started again, stores every event once.
async fn refused_then_consumed(
    dir: &Path,
    (right, says): (&str, &str),
    wrong: &str,
    refusal: &[&str],
    publisher: async_nats::Client,
) {
    let tables = "[store]\npath = \"hq.db\"\n";
    let mut hq = Hq::start_input(&dir.join("hq"), right, "30s", tables);
    assert!(
        hq.log().contains(&format!("security={says}")),
        "{}",
        hq.log()
    );
    assert!(hq.terminate(), "SIGTERM exits cleanly:\n{}", hq.log());

    publish_events(&publisher, "s1", EVENTS).await;

    let mut refused = Hq::configure(&dir.join("hq-wrong"), wrong, "30s", tables);
    refused.spawn();
    wait_for(WAIT, "NATS's refusal in HQ's log", || {
        let log = refused.log();
        log.contains("could not connect to NATS") && refusal.iter().all(|r| log.contains(r))
    });
    let log = refused.log();
    assert!(
        !log.contains("consuming from JetStream"),
        "a refused HQ attached:\n{log}"
    );
    assert!(
        refused.stored("s1", "gw1").is_empty(),
        "a refused HQ stored events"
    );
    assert!(refused.terminate(), "SIGTERM exits cleanly while refused");

    hq.restart();
    wait_for(WAIT, "every event at HQ", || {
        hq.stored("s1", "gw1").len() as u64 == EVENTS
    });
    assert!(hq.stored("s1", "gw1").values().all(|&n| n == 1));
    // Acked after commit: the work-queue stream lets go of every message (an ack the server
    // refused would leave them in it).
    let js = async_nats::jetstream::new(publisher);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut stream = js.get_stream("PHYGATE_EVENTS").await.unwrap();
        let left = stream.info().await.unwrap().state.messages;
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} messages never acked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(hq.terminate(), "SIGTERM exits cleanly:\n{}", hq.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hq_logs_in_with_a_username_and_password_and_a_wrong_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let Some(nats) = NatsServer::start(
        &dir.path().join("nats"),
        // HQ's user with only the permissions docs/fleet.md gives it: the JetStream API, its
        // acks, and replies to its inbox.
        "authorization { users = [\n\
         { user: hq, password: s3cret, permissions: { publish: [\"$JS.API.>\", \"$JS.ACK.PHYGATE_EVENTS.>\"], subscribe: [\"_INBOX.>\"] } },\n\
         { user: edge, password: edge-pw } ] }\n",
    ) else {
        return;
    };
    std::fs::write(dir.path().join("right.password"), "s3cret\n").unwrap();
    std::fs::write(dir.path().join("wrong.password"), "not-it\n").unwrap();
    let login = |file: &str| {
        let path = dir.path().join(file);
        format!(
            "username = \"hq\"\npassword_file = \"{}\"\n",
            path.display()
        )
    };
    let publisher =
        async_nats::ConnectOptions::with_user_and_password("edge".into(), "edge-pw".into())
            .connect(format!("127.0.0.1:{}", nats.port))
            .await
            .unwrap();
    refused_then_consumed(
        dir.path(),
        (
            &input("nats", nats.port, &login("right.password")),
            "no tls unless the server asks, user hq",
        ),
        &input("nats", nats.port, &login("wrong.password")),
        &["authorization violation", "user hq"],
        publisher,
    )
    .await;
    let log = std::fs::read_to_string(dir.path().join("hq/hq.log")).unwrap();
    for secret in ["s3cret", "not-it"] {
        assert!(!log.contains(secret), "the password is in the log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hq_connects_over_tls_with_a_client_certificate_and_without_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let (server_cert, server_key) = ca.issue("nats");
    let Some(nats) = NatsServer::start(
        &dir.path().join("nats"),
        &format!(
            "tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", verify: true }}\n",
            server_cert.display(),
            server_key.display(),
            ca.file.display()
        ),
    ) else {
        return;
    };
    let (cert, key) = ca.issue("hq");
    let with_cert = format!(
        "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        ca.file.display(),
        cert.display(),
        key.display()
    );
    let without_cert = format!("ca_file = \"{}\"\n", ca.file.display());
    let (edge_cert, edge_key) = ca.issue("edge");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let publisher = async_nats::ConnectOptions::new()
        .add_root_certificates(ca.file.clone())
        .add_client_certificate(edge_cert, edge_key)
        .connect(format!("tls://127.0.0.1:{}", nats.port))
        .await
        .unwrap();
    refused_then_consumed(
        dir.path(),
        // tls:// in one, ca_file alone in the other: both require TLS.
        (
            &input("tls", nats.port, &with_cert),
            "tls, client certificate, anonymous",
        ),
        &input("nats", nats.port, &without_cert),
        // The server's alert through rustls (BadCertificate or CertificateRequired, by TLS
        // version).
        &["security=tls, anonymous", "received fatal alert"],
        publisher,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hq_logs_in_with_a_user_nkey_and_an_unknown_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (hq_key, stranger, edge) = (
        nkeys::KeyPair::new_user(),
        nkeys::KeyPair::new_user(),
        nkeys::KeyPair::new_user(),
    );
    let Some(nats) = NatsServer::start(
        &dir.path().join("nats"),
        &format!(
            "authorization {{ users = [ {{ nkey: {} }}, {{ nkey: {} }} ] }}\n",
            hq_key.public_key(),
            edge.public_key()
        ),
    ) else {
        return;
    };
    let seed_file = |name: &str, key: &nkeys::KeyPair| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{}\n", key.seed().unwrap())).unwrap();
        format!("nkey_file = \"{}\"\n", path.display())
    };
    let publisher = async_nats::ConnectOptions::with_nkey(edge.seed().unwrap())
        .connect(format!("127.0.0.1:{}", nats.port))
        .await
        .unwrap();
    refused_then_consumed(
        dir.path(),
        (
            &input("nats", nats.port, &seed_file("hq.nk", &hq_key)),
            &format!(
                "no tls unless the server asks, nkey {}",
                hq_key.public_key()
            ),
        ),
        &input("nats", nats.port, &seed_file("stranger.nk", &stranger)),
        &["authorization violation", &stranger.public_key()],
        publisher,
    )
    .await;
    let log = std::fs::read_to_string(dir.path().join("hq/hq.log")).unwrap();
    assert!(
        !log.contains(&hq_key.seed().unwrap()),
        "the seed is in the log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hq_logs_in_with_a_creds_file_on_an_operator_mode_server_and_a_strangers_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let operator = Operator::new();
    let (fleet, elsewhere) = (operator.account(), Operator::new().account());
    let Some(nats) = NatsServer::start(
        &dir.path().join("nats"),
        &operator.server_settings(&[&fleet]),
    ) else {
        return;
    };
    let creds_file = |name: &str, account: &Account| {
        let path = dir.path().join(name);
        std::fs::write(&path, account.user_creds()).unwrap();
        path
    };
    let (right, stranger) = (
        creds_file("hq.creds", &fleet),
        creds_file("stranger.creds", &elsewhere),
    );
    let publisher = async_nats::ConnectOptions::with_credentials(&fleet.user_creds())
        .unwrap()
        .connect(format!("127.0.0.1:{}", nats.port))
        .await
        .unwrap();
    let keys = |path: &Path| format!("creds_file = \"{}\"\n", path.display());
    refused_then_consumed(
        dir.path(),
        (
            &input("nats", nats.port, &keys(&right)),
            &format!("no tls unless the server asks, creds {}", right.display()),
        ),
        &input("nats", nats.port, &keys(&stranger)),
        &["authorization violation", "stranger.creds"],
        publisher,
    )
    .await;
}

/// A login revoked while HQ runs (the user removed from the server's config, reloaded): the
/// server drops HQ's connection, and each reconnect it refuses is a warning in HQ's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_revoked_under_a_running_hq_shows_in_its_log_at_each_refused_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let users = |hq: &str| {
        format!("authorization {{ users = [ {hq}{{ user: edge, password: edge-pw }} ] }}\n")
    };
    let Some(nats) = NatsServer::start(
        &dir.path().join("nats"),
        &users("{ user: hq, password: s3cret }, "),
    ) else {
        return;
    };
    std::fs::write(dir.path().join("nats.password"), "s3cret\n").unwrap();
    let hq = Hq::start_input(
        &dir.path().join("hq"),
        &input(
            "nats",
            nats.port,
            &format!(
                "username = \"hq\"\npassword_file = \"{}\"\n",
                dir.path().join("nats.password").display()
            ),
        ),
        "30s",
        "[store]\npath = \"hq.db\"\n",
    );
    nats.reload(&users(""));
    wait_for(WAIT, "a refused reconnect in HQ's log", || {
        hq.log().lines().any(|l| {
            l.contains("WARN")
                && l.contains("NATS connection")
                && l.contains("authorization violation")
        })
    });
}
