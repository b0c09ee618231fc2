//! `hq.toml`: parsed into raw structs (unknown keys refused), then validated into [`Config`],
//! which the rest of the program trusts. Every error names the file, and the line and key
//! when the TOML parser knows them.
//!
//! ```toml
//! [input]
//! kind = "mqtt"                # or "jetstream": see `input` for its keys
//!
//! [mqtt]                       # the MQTT input
//! host = "127.0.0.1"
//! port = 1883
//! client_id = "phygate-hq-1"   # stable: the broker keeps the session under it
//! group = "journey"            # the share group: consumers of one group split the stream
//! session_expiry = "1d"        # how long the broker keeps the session while we are away
//! keepalive = "30s"
//! receive_maximum = 2048       # unacknowledged messages the broker may send us at once
//! max_packet_bytes = 16777216
//! # ca_file = "/etc/phygate/broker-ca.pem"   # TLS: the CA of the broker's certificate
//! # cert_file = "/etc/phygate/hq.pem"        # a client certificate, with its key
//! # key_file = "/etc/phygate/hq.key"
//! # username = "hq"
//! # password_file = "/etc/phygate/mqtt.password"   # or password_env = "PHYGATE_HQ_MQTT_PASSWORD"
//!
//! [store]
//! kind = "sqlite"              # the default; or "postgres" (below)
//! path = "hq.db"               # SQLite, created if missing
//! synchronous = "full"         # or "normal"
//!
//! # [store]                    # several consumers sharing a group share one PostgreSQL
//! # kind = "postgres"
//! # url = "postgresql://phygate@db.hq:5432/journey"   # no password in the URL
//! # password_file = "/etc/phygate/pg.password"        # or password_env = "PGPASSWORD"
//!
//! [loss]
//! grace = "60s"                # how long a seq hole may wait for late events
//!
//! [repair]                     # ask stores to replay holes: see `repair::config`
//! after = "10s"
//!
//! [status]
//! listen = "127.0.0.1:9480"    # /metrics and /healthz; omit the table for none
//!
//! [[sink]]                     # zero or more journey engines: see `sink::config`
//! name = "braze"
//! kind = "braze"
//! url = "https://rest.iad-01.braze.com"
//! api_key_env = "BRAZE_API_KEY"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::input::{Input, RawInput};
use crate::mqtt_security::{RawSecurity, Security};
use crate::sink::config::{RawSink, Secret, SinkConfig};
use crate::store::sqlite::Synchronous;

#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    pub file: PathBuf,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the events come from: the MQTT shared subscription or a JetStream consumer.
    pub input: Input,
    pub store: StoreConfig,
    pub loss_grace: Duration,
    pub status: Option<SocketAddr>,
    /// The journey engines, each with its own cursor ([`crate::sink`]).
    pub sinks: Vec<SinkConfig>,
    /// Replay requests for holes ([`crate::repair`]); `None`: holes only wait for the grace.
    pub repair: Option<crate::repair::RepairConfig>,
}

#[derive(Debug, Clone)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub group: String,
    pub session_expiry: Duration,
    pub keepalive: Duration,
    pub receive_maximum: u16,
    pub max_packet_bytes: u32,
    /// TLS and login, also used by the repairer's replay requests ([`crate::repair`]).
    pub security: Security,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub backend: StoreBackend,
}

#[derive(Debug, Clone)]
pub enum StoreBackend {
    Sqlite {
        path: PathBuf,
        synchronous: Synchronous,
    },
    Postgres(PgConfig),
}

/// Where the PostgreSQL journey store is. The password is kept apart from the URL, read from
/// a file or the environment, so that it shows in no process list, log or `check-config`.
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// A libpq-style URL without a password.
    pub url: String,
    pub password: Option<Secret>,
}

impl StoreConfig {
    /// For log lines: the file, or the URL (which holds no password).
    pub fn describe(&self) -> String {
        match &self.backend {
            StoreBackend::Sqlite { path, .. } => path.display().to_string(),
            StoreBackend::Postgres(pg) => pg.url.clone(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    input: Option<RawInput>,
    mqtt: Option<RawMqtt>,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    loss: RawLoss,
    status: Option<RawStatus>,
    #[serde(default)]
    sink: Vec<RawSink>,
    repair: Option<crate::repair::config::RawRepair>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    #[serde(default = "default_host")]
    host: String,
    #[serde(default = "default_port")]
    port: u16,
    #[serde(default = "default_client_id")]
    client_id: String,
    #[serde(default = "default_group")]
    group: String,
    #[serde(default = "default_session_expiry", with = "humantime_serde")]
    session_expiry: Duration,
    #[serde(default = "default_keepalive", with = "humantime_serde")]
    keepalive: Duration,
    #[serde(default = "default_receive_maximum")]
    receive_maximum: u16,
    #[serde(default = "default_max_packet")]
    max_packet_bytes: u32,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    kind: Option<String>,
    path: Option<PathBuf>,
    synchronous: Option<String>,
    url: Option<String>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoss {
    #[serde(default = "default_grace", with = "humantime_serde")]
    grace: Duration,
}

impl Default for RawLoss {
    fn default() -> Self {
        RawLoss {
            grace: default_grace(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatus {
    listen: String,
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    1883
}
fn default_client_id() -> String {
    "phygate-hq".into()
}
fn default_group() -> String {
    "journey".into()
}
fn default_session_expiry() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_keepalive() -> Duration {
    Duration::from_secs(30)
}
/// Two commit groups (`writer::MAX_GROUP`): one full group can arrive while the previous one
/// commits. (The PUBACKs go out only after a commit, so with one group's worth the broker
/// sent nothing while the writer committed: the fleet benchmark's consumers idled on it.)
fn default_receive_maximum() -> u16 {
    2048
}
/// A gateway's largest batch is far below this (`[uplink] batch_max_bytes`).
fn default_max_packet() -> u32 {
    16 * 1024 * 1024
}
fn default_store_path() -> PathBuf {
    "hq.db".into()
}
/// A minute: far more than a batch takes between two consumers of a group, short enough
/// for an alarm.
fn default_grace() -> Duration {
    Duration::from_secs(60)
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            message: format!("cannot read the file: {e}"),
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`; `path` names the file in errors and anchors a relative
    /// store path.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError {
            file: path.to_owned(),
            message,
        };
        let raw: Raw = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let mut problems = Vec::new();
        let base = path.parent().unwrap_or(Path::new("."));
        let mqtt = raw.mqtt.map(|m| mqtt(m, base, &mut problems));
        let input = crate::input::validate(raw.input, mqtt, base, &mut problems);
        let status = match raw.status {
            None => None,
            Some(s) => match s.listen.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(e) => {
                    problems.push(format!(
                        "status.listen {:?}: {e} (e.g. \"127.0.0.1:9480\")",
                        s.listen
                    ));
                    None
                }
            },
        };
        let store = validate_store(raw.store, base, &mut problems);
        let sinks = crate::sink::config::validate(raw.sink, base, &mut problems);
        let repair = crate::repair::config::validate(
            raw.repair,
            input.as_ref(),
            raw.loss.grace,
            base,
            &mut problems,
        );
        let (Some(input), true) = (input, problems.is_empty()) else {
            return Err(err(problems.join("\n  ")));
        };
        Ok(Config {
            input,
            store,
            loss_grace: raw.loss.grace,
            status,
            sinks,
            repair,
        })
    }
}

/// A secret from exactly one of a file (relative to `base`) or an environment variable,
/// trimmed; `Ok(None)` when neither is given. `at` names the table in errors.
pub(crate) fn read_secret(
    file: Option<&Path>,
    env: Option<&str>,
    base: &Path,
    at: &str,
) -> Result<Option<Secret>, String> {
    let text = match (file, env) {
        (None, None) => return Ok(None),
        (Some(file), None) => {
            let path = base.join(file);
            std::fs::read_to_string(&path).map_err(|e| format!("{at}: {}: {e}", path.display()))?
        }
        (None, Some(var)) => std::env::var(var).map_err(|_| format!("{at}: ${var} is not set"))?,
        (Some(_), Some(_)) => {
            return Err(format!(
                "{at}: exactly one of the file or the environment variable"
            ))
        }
    };
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("{at}: the secret is empty"));
    }
    Ok(Some(Secret(text.to_owned())))
}

/// `path` (relative to `base`) resolved, with a problem pushed when it cannot be opened now:
/// a missing certificate is an error at start, not at the first connection. `key` names the
/// config key in the message.
pub(crate) fn readable_file(
    base: &Path,
    key: &str,
    path: Option<PathBuf>,
    problems: &mut Vec<String>,
) -> Option<PathBuf> {
    let path = base.join(path?);
    if let Err(e) = std::fs::File::open(&path) {
        problems.push(format!("{key}: {}: {e}", path.display()));
    }
    Some(path)
}

fn validate_store(raw: RawStore, base: &Path, problems: &mut Vec<String>) -> StoreConfig {
    let kind = raw.kind.as_deref().unwrap_or("sqlite");
    let sqlite_keys = raw.path.is_some() || raw.synchronous.is_some();
    let pg_keys = raw.url.is_some() || raw.password_file.is_some() || raw.password_env.is_some();
    let backend = match kind {
        "postgres" => {
            if sqlite_keys {
                problems.push(
                    "store: path and synchronous are SQLite's; kind = \"postgres\" takes url"
                        .into(),
                );
            }
            let url = raw.url.unwrap_or_default();
            match url.parse::<::postgres::Config>() {
                Ok(c) if c.get_password().is_some() => problems.push(
                    "store.url: holds a password; put it in password_file or password_env".into(),
                ),
                Ok(_) => {}
                Err(e) => problems.push(format!(
                    "store.url {url:?}: {e} (e.g. \"postgresql://phygate@127.0.0.1:5432/journey\")"
                )),
            }
            let password = read_secret(
                raw.password_file.as_deref(),
                raw.password_env.as_deref(),
                base,
                "store.password",
            )
            .unwrap_or_else(|e| {
                problems.push(e);
                None
            });
            StoreBackend::Postgres(PgConfig { url, password })
        }
        other => {
            if other != "sqlite" {
                problems.push(format!("store.kind {other:?}: \"sqlite\" or \"postgres\""));
            }
            if pg_keys {
                problems.push(
                    "store: url and password_* are PostgreSQL's; set kind = \"postgres\"".into(),
                );
            }
            let synchronous = match raw.synchronous.as_deref().unwrap_or("full") {
                "full" => Synchronous::Full,
                "normal" => Synchronous::Normal,
                other => {
                    problems.push(format!(
                        "store.synchronous {other:?}: \"full\" or \"normal\""
                    ));
                    Synchronous::Full
                }
            };
            StoreBackend::Sqlite {
                path: base.join(raw.path.unwrap_or_else(default_store_path)),
                synchronous,
            }
        }
    };
    StoreConfig { backend }
}

/// Checks `[mqtt]`, pushing what is wrong onto `problems`.
fn mqtt(m: RawMqtt, base: &Path, problems: &mut Vec<String>) -> MqttConfig {
    if m.group.is_empty() || m.group.contains(['/', '+', '#']) {
        problems.push(format!(
            "mqtt.group {:?}: must be non-empty, without '/', '+' or '#'",
            m.group
        ));
    }
    if m.client_id.is_empty() {
        problems.push(
            "mqtt.client_id: must not be empty (the broker keeps the session under it)".into(),
        );
    }
    if m.host.is_empty() {
        problems.push("mqtt.host: must not be empty".into());
    }
    let expiry = m.session_expiry.as_secs();
    if expiry == 0 || expiry > u32::MAX as u64 {
        problems.push(format!(
            "mqtt.session_expiry: {expiry} s; between 1 s and {} s, or the broker forgets what it queued for us",
            u32::MAX
        ));
    }
    if m.keepalive < Duration::from_secs(1) || m.keepalive > Duration::from_secs(u16::MAX as u64) {
        problems.push("mqtt.keepalive: between 1 s and 65535 s".into());
    }
    if m.receive_maximum == 0 {
        problems.push("mqtt.receive_maximum: at least 1".into());
    }
    let security = RawSecurity {
        ca_file: m.ca_file,
        cert_file: m.cert_file,
        key_file: m.key_file,
        username: m.username,
        password_file: m.password_file,
        password_env: m.password_env,
    }
    .validate(base, "mqtt", problems);
    MqttConfig {
        host: m.host,
        port: m.port,
        client_id: m.client_id,
        group: m.group,
        session_expiry: m.session_expiry,
        keepalive: m.keepalive,
        receive_maximum: m.receive_maximum,
        max_packet_bytes: m.max_packet_bytes,
        security,
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
