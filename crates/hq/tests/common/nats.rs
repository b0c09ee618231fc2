//! One `nats-server` with JetStream on a free loopback port and the `settings` a test gives it
//! (who may connect: `authorization`, `tls`), and a NATS client that publishes event batches
//! to it as a store's gateway would: a JetStream publish, acknowledged once the stream holds it.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use phygate::event::Origin;
use phygate::sim::broker::{find_program, free_port};

pub struct NatsServer {
    pub port: u16,
    config: std::path::PathBuf,
    child: Child,
}

impl NatsServer {
    /// Starts the server with its config, store and log under `dir`; `None` (with the reason
    /// printed) where nats-server is not installed outside CI, as the cluster tests skip.
    pub fn start(dir: &Path, settings: &str) -> Option<NatsServer> {
        let Some(binary) = find_program("nats-server") else {
            assert!(std::env::var("CI").is_err(), "nats-server is not installed");
            eprintln!("skipped: nats-server is not installed (apt-get install nats-server)");
            return None;
        };
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port().unwrap();
        let config = dir.join("nats.conf");
        std::fs::write(&config, config_text(dir, port, settings)).unwrap();
        let log = std::fs::File::create(dir.join("nats.log")).unwrap();
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut server = NatsServer {
            port,
            config: config.clone(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = server.child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "nats-server did not listen on {port} ({exited:?}):\n{}",
                std::fs::read_to_string(dir.join("nats.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }
}

impl NatsServer {
    /// Rewrites the config with `settings` instead and has the running server reload it
    /// (SIGHUP): clients that no longer pass its authorization are disconnected.
    pub fn reload(&self, settings: &str) {
        let dir = self.config.parent().unwrap();
        std::fs::write(&self.config, config_text(dir, self.port, settings)).unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::SIGHUP,
        )
        .unwrap();
    }
}

fn config_text(dir: &Path, port: u16, settings: &str) -> String {
    format!(
        "server_name: single\nlisten: 127.0.0.1:{port}\n\
         jetstream {{ store_dir: \"{}\" }}\n{settings}",
        dir.join("jetstream").display()
    )
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes `count` batches of one anonymous scan each, seq 1..=count, from gateway `gw1` of
/// `store` (tenant [`super::TENANT`]) to its events subject, each acknowledged by the stream.
/// The events are the gateway's own serialisation ([`phygate::event::Event::to_json`]).
pub async fn publish_events(client: &async_nats::Client, store: &str, count: u64) {
    let js = async_nats::jetstream::new(client.clone());
    let subject = format!("phygate.v1.{}.{store}.events", super::TENANT);
    let origin = Origin {
        store: store.into(),
        gateway: "gw1".into(),
    };
    for seq in 1..=count {
        let batch = format!("[{}]", super::scan(40).to_json(&origin, seq));
        js.publish(subject.clone(), batch.into())
            .await
            .expect("publish")
            .await
            .expect("the stream's ack");
    }
}

/// A NATS operator for an operator-mode server (decentralised auth, the usual production
/// setup): it signs accounts, each account signs its users, and a user logs in with a `.creds`
/// file. The JWTs are what `nsc` writes (nats-io/jwt v2 claims, `ed25519-nkey` signatures),
/// made here so the test needs no `nsc`.
pub struct Operator {
    key: nkeys::KeyPair,
    /// The operator's JWT, for the server's `operator` setting.
    pub jwt: String,
}

/// An account of an [`Operator`]: its key signs its users.
pub struct Account {
    key: nkeys::KeyPair,
    /// The account's JWT, for the server's `resolver_preload`.
    pub jwt: String,
}

impl Operator {
    pub fn new() -> Operator {
        let key = nkeys::KeyPair::new_operator();
        let jwt = signed_jwt(&key, &key.public_key(), "operator", serde_json::json!({}));
        Operator { key, jwt }
    }

    /// An account with JetStream (unlimited storage) and no other limits.
    pub fn account(&self) -> Account {
        self.account_with(-1)
    }

    /// `storage`: its JetStream memory and disk limit in bytes (-1: unlimited, 0: none).
    fn account_with(&self, storage: i64) -> Account {
        let key = nkeys::KeyPair::new_account();
        let claims = serde_json::json!({
            "limits": {
                "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                "wildcards": true, "conn": -1, "leaf": -1,
                "mem_storage": storage, "disk_storage": storage, "streams": -1, "consumer": -1
            },
            "default_permissions": {"pub": {}, "sub": {}}
        });
        let jwt = signed_jwt(&self.key, &key.public_key(), "account", claims);
        Account { key, jwt }
    }

    /// The server settings that trust this operator and know `accounts`, with a system
    /// account of its own (JetStream needs one in operator mode).
    pub fn server_settings(&self, accounts: &[&Account]) -> String {
        let system = self.account_with(0);
        let preload: Vec<String> = accounts
            .iter()
            .chain([&&system])
            .map(|a| format!("{}: \"{}\"", a.key.public_key(), a.jwt))
            .collect();
        format!(
            "operator: \"{}\"\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{ {} }}\n",
            self.jwt,
            system.key.public_key(),
            preload.join(", ")
        )
    }
}

impl Account {
    /// A user of this account, as the text of its `.creds` file.
    pub fn user_creds(&self) -> String {
        let user = nkeys::KeyPair::new_user();
        let claims = serde_json::json!({
            "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1
        });
        let jwt = signed_jwt(&self.key, &user.public_key(), "user", claims);
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        )
    }
}

/// A JWT for `subject` of type `kind` with `nats` claims, signed by `issuer`.
fn signed_jwt(
    issuer: &nkeys::KeyPair,
    subject: &str,
    kind: &str,
    mut nats: serde_json::Value,
) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    nats["type"] = kind.into();
    nats["version"] = 2.into();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "jti": format!("{:032X}", fastrand::u128(..)),
        "iat": now,
        "iss": issuer.public_key(),
        "name": kind,
        "sub": subject,
        "nats": nats,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = issuer.sign(signing_input.as_bytes()).unwrap();
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}
