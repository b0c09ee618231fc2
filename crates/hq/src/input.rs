//! `[input]`: where the fleet's events come from. `kind = "mqtt"` (the default) is the MQTT 5
//! shared subscription of [`crate::consumer`], configured by `[mqtt]`; `kind = "jetstream"` is
//! a NATS JetStream stream read through one durable pull consumer shared by every phygate-hq
//! ([`crate::jetstream`]), for a NATS cluster, whose MQTT side has no `$share`.
//!
//! ```toml
//! [input]
//! kind = "jetstream"
//! servers = ["nats://nats-1:4222", "nats://nats-2:4222", "nats://nats-3:4222"]
//! stream = "PHYGATE_EVENTS"     # created if missing, capturing phygate.v1.*.*.events
//! durable = "phygate-hq"        # the one consumer every phygate-hq shares
//! replicas = 3                  # of the stream (and so of the consumer)
//! ack_wait = "30s"              # a message not acked by then goes to another worker
//! max_ack_pending = 256         # messages out to all workers, not yet acked
//! # TLS (required when any of these is set, or a server is written tls://):
//! # ca_file = "/etc/phygate/nats-ca.pem"    # the CA of the servers' certificates
//! # cert_file = "/etc/phygate/hq.pem"       # a client certificate, with its key
//! # key_file = "/etc/phygate/hq.key"
//! # tls_required = true                     # TLS with the system's roots
//! # One way to log in, secrets from files or the environment only:
//! # creds_file = "/etc/phygate/hq.creds"    # user JWT + NKey seed (operator mode)
//! # nkey_file = "/etc/phygate/hq.nk"        # or a user NKey seed
//! # username = "hq"                         # or a user and password
//! # password_file = "/etc/phygate/nats.password"   # or password_env = "PHYGATE_HQ_NATS_PASSWORD"
//! # token_file = "/etc/phygate/nats.token"  # or token_env: a token
//! ```
//!
//! The TLS and login keys are read by [`crate::nats_security`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::MqttConfig;
use crate::nats_security::{NatsSecurity, RawNatsSecurity};

/// The validated input.
#[derive(Debug, Clone)]
pub enum Input {
    Mqtt(MqttConfig),
    JetStream(JetStreamConfig),
}

impl Input {
    /// How many messages may be out to this worker and unacknowledged: what its queue to the
    /// writer must hold.
    pub fn in_flight(&self) -> usize {
        match self {
            Input::Mqtt(m) => m.receive_maximum as usize,
            Input::JetStream(j) => j.max_ack_pending as usize,
        }
    }

    /// How long after this worker stops the broker may still hold messages for it (and only
    /// for it): the loss rule counts its lag until then (`crate::seq`, "The group's lag").
    /// MQTT: the session expiry (mosquitto queues a shared subscription's messages for an
    /// absent member's session and gives them to no one else). JetStream: `ack_wait`, after
    /// which what it had unacknowledged goes to the other workers.
    pub fn holds(&self) -> Duration {
        match self {
            Input::Mqtt(m) => m.session_expiry,
            Input::JetStream(j) => j.ack_wait,
        }
    }

    /// This worker's name in the group's beats: the MQTT client id (its session's name);
    /// JetStream workers share one durable, so the host and process name it.
    pub fn member_id(&self) -> String {
        match self {
            Input::Mqtt(m) => m.client_id.clone(),
            Input::JetStream(j) => {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
                format!("{}@{}:{}", j.durable, host.trim(), std::process::id())
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct JetStreamConfig {
    pub servers: Vec<async_nats::ServerAddr>,
    pub stream: String,
    pub durable: String,
    pub replicas: usize,
    pub ack_wait: Duration,
    pub max_ack_pending: u32,
    /// TLS and login for the NATS connection.
    pub security: NatsSecurity,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInput {
    #[serde(default = "default_kind")]
    kind: String,
    #[serde(default)]
    servers: Vec<String>,
    #[serde(default = "default_stream")]
    stream: String,
    #[serde(default = "default_durable")]
    durable: String,
    #[serde(default = "default_replicas")]
    replicas: usize,
    #[serde(default = "default_ack_wait", with = "humantime_serde")]
    ack_wait: Duration,
    #[serde(default = "default_max_ack_pending")]
    max_ack_pending: u32,
    creds_file: Option<PathBuf>,
    nkey_file: Option<PathBuf>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
    token_file: Option<PathBuf>,
    token_env: Option<String>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    tls_required: Option<bool>,
}

impl RawInput {
    /// The TLS and login keys, taken out of the table.
    fn take_security(&mut self) -> RawNatsSecurity {
        RawNatsSecurity {
            creds_file: self.creds_file.take(),
            nkey_file: self.nkey_file.take(),
            username: self.username.take(),
            password_file: self.password_file.take(),
            password_env: self.password_env.take(),
            token_file: self.token_file.take(),
            token_env: self.token_env.take(),
            ca_file: self.ca_file.take(),
            cert_file: self.cert_file.take(),
            key_file: self.key_file.take(),
            tls_required: self.tls_required.take(),
        }
    }
}

fn default_kind() -> String {
    "mqtt".into()
}
fn default_stream() -> String {
    "PHYGATE_EVENTS".into()
}
fn default_durable() -> String {
    "phygate-hq".into()
}
/// Three: one node of a three-node cluster may die without the stream losing a message or
/// stopping (a quorum of two remains).
fn default_replicas() -> usize {
    3
}
/// Far above a commit group's time; a worker killed mid-batch hands its messages on after it.
fn default_ack_wait() -> Duration {
    Duration::from_secs(30)
}
/// As `[mqtt] receive_maximum`: enough to keep a commit group full while the last commits.
fn default_max_ack_pending() -> u32 {
    256
}

/// Which input `raw` names; the MQTT one takes its settings from `[mqtt]` (`mqtt`, absent
/// when the file has no `[mqtt]` table). `base`: the config's directory, for relative files.
pub(crate) fn validate(
    mut raw: Option<RawInput>,
    mqtt: Option<MqttConfig>,
    base: &Path,
    problems: &mut Vec<String>,
) -> Option<Input> {
    let kind = raw.as_ref().map_or("mqtt".into(), |r| r.kind.clone());
    match kind.as_str() {
        "mqtt" => {
            // An engineer who put the broker's login here would otherwise connect without it.
            if let Some(keys) = raw.as_mut().map(|r| r.take_security().keys_set()) {
                if !keys.is_empty() {
                    problems.push(format!(
                        "input: {} are the JetStream input's; the MQTT input's TLS and login go in [mqtt]",
                        keys.join(", ")
                    ));
                }
            }
            match mqtt {
                Some(m) => Some(Input::Mqtt(m)),
                None => {
                    problems.push("mqtt: the [mqtt] table is required when input.kind = \"mqtt\" (the default)".into());
                    None
                }
            }
        }
        "jetstream" => raw.and_then(|r| jetstream(r, base, problems)),
        other => {
            problems.push(format!(
                "input.kind {other:?}: \"mqtt\" (shared subscription) or \"jetstream\" (NATS)"
            ));
            None
        }
    }
}

fn jetstream(mut r: RawInput, base: &Path, problems: &mut Vec<String>) -> Option<Input> {
    let before = problems.len();
    if r.servers.is_empty() {
        problems.push(
            "input.servers: list the NATS servers, e.g. [\"nats://nats-1:4222\", \"nats://nats-2:4222\"]"
                .into(),
        );
    }
    let mut servers = Vec::new();
    for (i, s) in r.servers.iter().enumerate() {
        match s.parse::<async_nats::ServerAddr>() {
            // Not shown: the address is the secret.
            Ok(a) if a.has_user_pass() => problems.push(format!(
                "input.servers[{i}]: holds a login; use username and password_file, or token_file"
            )),
            Ok(a) => servers.push(a),
            Err(e) => problems.push(format!("input.servers[{i}] {s:?}: {e}")),
        }
    }
    let tls_scheme = servers.iter().any(async_nats::ServerAddr::tls_required);
    let security = r.take_security().validate(base, tls_scheme, problems);
    for (key, name) in [("input.stream", &r.stream), ("input.durable", &r.durable)] {
        if name.is_empty() || name.contains(['.', '*', '>', ' ', '\t', '/', '\\']) {
            problems.push(format!(
                "{key} {name:?}: must be non-empty, without '.', '*', '>', '/', '\\' or spaces"
            ));
        }
    }
    if !(1..=5).contains(&r.replicas) {
        problems.push(format!(
            "input.replicas {}: 1 to 5 (JetStream's limit)",
            r.replicas
        ));
    }
    if r.ack_wait < Duration::from_secs(1) {
        problems.push("input.ack_wait: at least 1 s".into());
    }
    if r.max_ack_pending == 0 || r.max_ack_pending > u16::MAX as u32 {
        problems.push("input.max_ack_pending: 1 to 65535".into());
    }
    (problems.len() == before).then_some(Input::JetStream(JetStreamConfig {
        servers,
        stream: r.stream,
        durable: r.durable,
        replicas: r.replicas,
        ack_wait: r.ack_wait,
        max_ack_pending: r.max_ack_pending,
        security,
    }))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;
    use crate::input::Input;
    use crate::nats_security::{Login, NatsSecurity};

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/phygate/hq.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_jetstream_input_needs_no_mqtt_table_and_takes_the_defaults() {
        let c =
            parse("[input]\nkind = \"jetstream\"\nservers = [\"nats://n1:4222\", \"n2:4222\"]\n")
                .unwrap();
        let Input::JetStream(j) = &c.input else {
            panic!("{:?}", c.input)
        };
        assert_eq!(j.servers.len(), 2);
        assert_eq!(
            (j.stream.as_str(), j.durable.as_str()),
            ("PHYGATE_EVENTS", "phygate-hq")
        );
        assert_eq!(j.replicas, 3);
        assert_eq!(c.input.in_flight(), 256);
    }

    #[test]
    fn every_bad_jetstream_value_is_reported_at_once() {
        let e = parse(
            "[input]\nkind = \"jetstream\"\nstream = \"a.b\"\ndurable = \"\"\nreplicas = 7\n\
             ack_wait = \"10ms\"\nmax_ack_pending = 0\n",
        )
        .unwrap_err();
        for key in [
            "input.servers",
            "input.stream",
            "input.durable",
            "input.replicas",
            "input.ack_wait",
            "input.max_ack_pending",
        ] {
            assert!(e.contains(key), "{key} missing from {e}");
        }
    }

    /// `[input]` for a JetStream input with `keys`, read as `dir/hq.toml`.
    fn parse_in(dir: &Path, keys: &str) -> Result<Config, String> {
        let text = format!("[input]\nkind = \"jetstream\"\nservers = [\"nats://n1:4222\"]\n{keys}");
        Config::parse(&text, &dir.join("hq.toml")).map_err(|e| e.to_string())
    }

    fn security(c: &Config) -> &NatsSecurity {
        match &c.input {
            Input::JetStream(j) => &j.security,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn jetstream_tls_and_login_files_are_read_next_to_the_config_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "hq.pem", "hq.key"] {
            std::fs::write(dir.path().join(f), "pem").unwrap();
        }
        std::fs::write(dir.path().join("nats.password"), "s3cret\n").unwrap();
        let c = parse_in(
            dir.path(),
            "ca_file = \"ca.pem\"\ncert_file = \"hq.pem\"\nkey_file = \"hq.key\"\n\
             username = \"hq\"\npassword_file = \"nats.password\"\n",
        )
        .unwrap();
        let s = security(&c);
        let tls = s.tls.as_ref().expect("ca_file means TLS");
        assert_eq!(tls.ca.as_deref(), Some(dir.path().join("ca.pem").as_path()));
        assert!(
            matches!(&s.login, Login::User { name, password } if name == "hq" && password.0 == "s3cret")
        );
        assert_eq!(s.describe(), "tls, client certificate, user hq");
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "the config display would show it"
        );
    }

    #[test]
    fn jetstream_without_security_keys_is_anonymous_and_tls_only_if_asked() {
        let dir = tempfile::tempdir().unwrap();
        let c = parse_in(dir.path(), "").unwrap();
        assert!(security(&c).tls.is_none() && matches!(security(&c).login, Login::Anonymous));
        assert_eq!(
            security(&c).describe(),
            "no tls unless the server asks, anonymous"
        );
        // tls_required alone: TLS with the system's roots; a tls:// server means the same.
        let c = parse_in(dir.path(), "tls_required = true\ntoken_env = \"PATH\"\n").unwrap();
        assert!(security(&c).tls.as_ref().is_some_and(|t| t.ca.is_none()));
        assert_eq!(security(&c).describe(), "tls, token");
        let text =
            "[input]\nkind = \"jetstream\"\nservers = [\"nats://n1:4222\", \"tls://n2:4222\"]\n";
        let c = Config::parse(text, &dir.path().join("hq.toml")).unwrap();
        assert!(security(&c).tls.is_some(), "one tls:// server: TLS for all");
    }

    #[test]
    fn jetstream_nkey_and_creds_files_are_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let user = nkeys::KeyPair::new_user();
        std::fs::write(dir.path().join("hq.nk"), user.seed().unwrap()).unwrap();
        let c = parse_in(dir.path(), "nkey_file = \"hq.nk\"\n").unwrap();
        assert_eq!(
            security(&c).describe(),
            format!("no tls unless the server asks, nkey {}", user.public_key())
        );
        assert!(!format!("{c:?}").contains(&user.seed().unwrap()));

        // A .creds file as nsc writes it: the user JWT, then the seed that signs for it. Its
        // last line end matters: read through the trimming secret reader, this file was
        // refused ("cannot parse nkey from the credentials file").
        let creds = format!(
            "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.c2ln\n\
             ------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n{}\n\
             ------END USER NKEY SEED------\n",
            user.seed().unwrap()
        );
        std::fs::write(dir.path().join("hq.creds"), creds).unwrap();
        let c = parse_in(dir.path(), "creds_file = \"hq.creds\"\n").unwrap();
        assert!(
            matches!(&security(&c).login, Login::Creds { file, .. } if file == &dir.path().join("hq.creds"))
        );

        // An account seed, a file that is no seed, a creds file without its JWT, a missing one.
        std::fs::write(
            dir.path().join("account.nk"),
            nkeys::KeyPair::new_account().seed().unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join("junk"), "hello\n").unwrap();
        for (keys, needle) in [
            (
                "nkey_file = \"account.nk\"",
                "a Account seed; a client logs in with a user seed",
            ),
            ("nkey_file = \"junk\"", "input.nkey_file: "),
            ("creds_file = \"junk\"", "cannot parse user JWT"),
            (
                "creds_file = \"nowhere.creds\"",
                "nowhere.creds: No such file",
            ),
        ] {
            let e = parse_in(dir.path(), &format!("{keys}\n")).unwrap_err();
            assert!(e.contains(needle), "{needle:?} not in {e}");
            assert!(
                e.contains(&dir.path().display().to_string()),
                "the path is named: {e}"
            );
        }
    }

    #[test]
    fn every_bad_jetstream_security_combination_is_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hq.pem"), "pem").unwrap();
        let text = "[input]\nkind = \"jetstream\"\n\
             servers = [\"tls://n1:4222\", \"nats://hq:hunter2@n2:4222\"]\n\
             tls_required = false\nca_file = \"nowhere.pem\"\ncert_file = \"hq.pem\"\n\
             creds_file = \"hq.creds\"\nusername = \"hq\"\ntoken_env = \"PATH\"\n";
        let e = Config::parse(text, &dir.path().join("hq.toml"))
            .unwrap_err()
            .to_string();
        for needle in [
            "input.servers[1]: holds a login",
            "input.tls_required = false",
            "input.ca_file: ",
            "nowhere.pem",
            "cert_file and key_file go together",
            "creds_file and username/password and token are set; log in one way only",
        ] {
            assert!(e.contains(needle), "{needle:?} not in {e}");
        }
        assert!(
            !e.contains("hunter2"),
            "a password in a server URL is not repeated: {e}"
        );

        for (keys, needle) in [
            ("username = \"hq\"", "input.username: needs its password"),
            (
                "password_env = \"PATH\"",
                "input: a password needs a username",
            ),
            (
                "username = \"\"\npassword_env = \"PATH\"",
                "input.username: must not be empty",
            ),
            (
                "username = \"hq\"\npassword_env = \"PATH\"\npassword_file = \"pw\"",
                "input.password: exactly one",
            ),
            (
                "token_env = \"PHYGATE_HQ_TEST_UNSET_VARIABLE\"",
                "input.token: $PHYGATE_HQ_TEST_UNSET_VARIABLE is not set",
            ),
        ] {
            let e = parse_in(dir.path(), &format!("{keys}\n")).unwrap_err();
            assert!(e.contains(needle), "{needle:?} not in {e}");
        }
    }

    #[test]
    fn jetstream_security_keys_under_an_mqtt_input_are_refused() {
        let e = parse("[input]\nca_file = \"ca.pem\"\nusername = \"hq\"\n[mqtt]\n").unwrap_err();
        assert!(
            e.contains("input: username, ca_file are the JetStream input's"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_kind_or_a_missing_mqtt_table_is_refused() {
        let e = parse("[input]\nkind = \"kafka\"\n").unwrap_err();
        assert!(e.contains("input.kind \"kafka\""), "{e}");
        let e = parse("[store]\npath = \"hq.db\"\n").unwrap_err();
        assert!(e.contains("[mqtt] table is required"), "{e}");
    }
}
