//! `[mqtt]` and `[uplink]`: the HQ broker session and how batches are published on it.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{brokers, host, Validator};
use crate::uplink::settings::{MqttConfig, Protocol, TlsConfig, UplinkConfig};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMqtt {
    /// `"3.1.1"` (the default) or `"5"`.
    protocol: Option<toml::Value>,
    /// MQTT 5 only (see [`MqttConfig::session_expiry`]).
    #[serde(default, with = "humantime_serde")]
    session_expiry: Option<Duration>,
    host: Option<String>,
    port: Option<u16>,
    /// A cluster's nodes, `"host:port"` each, instead of `host` and `port`.
    brokers: Option<Vec<String>>,
    client_id: Option<String>,
    username: Option<String>,
    password: Option<String>,
    #[serde(default = "default_keepalive", with = "humantime_serde")]
    keepalive: Duration,
    tls: Option<RawTls>,
}

fn default_keepalive() -> Duration {
    Duration::from_secs(30)
}

/// A week: a store closed over a long weekend, or waiting days for a replacement gateway,
/// still finds HQ's commands, member deltas and keys when it is back. Beyond it the broker
/// may drop the session; the retained keys and config come again anyway.
pub const DEFAULT_SESSION_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// `protocol = "3.1.1"` or `"5"` (a bare `5` or `"5.0"` too: people write it so); `None`
/// when it is something else.
fn protocol(value: Option<&toml::Value>) -> Option<Protocol> {
    match value {
        None => Some(Protocol::V311),
        Some(toml::Value::String(s)) => match s.trim() {
            "3.1.1" => Some(Protocol::V311),
            "5" | "5.0" => Some(Protocol::V5),
            _ => None,
        },
        Some(toml::Value::Integer(5)) => Some(Protocol::V5),
        Some(_) => None,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: PathBuf,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUplink {
    #[serde(default = "default_batch_events")]
    batch_max_events: usize,
    #[serde(default = "default_batch_bytes")]
    batch_max_bytes: usize,
    #[serde(default = "default_inflight")]
    inflight: usize,
    #[serde(default = "default_backoff_min", with = "humantime_serde")]
    backoff_min: Duration,
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    backoff_max: Duration,
    #[serde(default = "default_ack_timeout", with = "humantime_serde")]
    ack_timeout: Duration,
}

impl Default for RawUplink {
    fn default() -> Self {
        RawUplink {
            batch_max_events: default_batch_events(),
            batch_max_bytes: default_batch_bytes(),
            inflight: default_inflight(),
            backoff_min: default_backoff_min(),
            backoff_max: default_backoff_max(),
            ack_timeout: default_ack_timeout(),
        }
    }
}

fn default_batch_events() -> usize {
    500
}
/// 256 KiB keeps a batch well under every broker's default packet limit.
fn default_batch_bytes() -> usize {
    256 * 1024
}
fn default_inflight() -> usize {
    8
}
fn default_backoff_min() -> Duration {
    Duration::from_millis(500)
}
/// A fleet reconnecting after an outage spreads over up to a minute.
fn default_backoff_max() -> Duration {
    Duration::from_secs(60)
}
/// Any PUBACK resets the wait, so a slow link that acknowledges batch by batch never hits it:
/// 256 KiB at 64 kbit/s takes ~33 s.
fn default_ack_timeout() -> Duration {
    Duration::from_secs(60)
}

impl Validator<'_> {
    /// `tenant` and `gateway` (when valid) name the default client id.
    pub(super) fn mqtt(
        &mut self,
        m: RawMqtt,
        tenant: Option<&str>,
        gateway: Option<&str>,
    ) -> MqttConfig {
        let client_id = m.client_id.clone().unwrap_or_else(|| {
            format!(
                "phygate-{}-{}",
                tenant.unwrap_or_default(),
                gateway.unwrap_or_default()
            )
        });
        let brokers = brokers::addresses(m.host, m.port, m.brokers).unwrap_or_else(|problems| {
            for (key, message) in problems {
                self.problem(key, message);
            }
            Vec::new()
        });
        if !(Duration::from_secs(5)..=Duration::from_secs(65_535)).contains(&m.keepalive) {
            self.problem("mqtt.keepalive", "must be between 5s and 65535s");
        }
        if client_id.is_empty() || client_id.len() > 128 {
            self.problem("mqtt.client_id", "must be 1-128 characters");
        }
        let protocol = protocol(m.protocol.as_ref()).unwrap_or_else(|| {
            self.problem(
                "mqtt.protocol",
                "must be \"3.1.1\" (the default) or \"5\" (MQTT 5)",
            );
            Protocol::V311
        });
        let session_expiry = match (protocol, m.session_expiry) {
            (Protocol::V311, Some(_)) => {
                self.problem(
                    "mqtt.session_expiry",
                    "is an MQTT 5 setting (protocol = \"5\"); with 3.1.1 the broker decides how long a session lives (mosquitto: persistent_client_expiration)",
                );
                DEFAULT_SESSION_EXPIRY
            }
            (_, Some(d)) if d < Duration::from_secs(60) || d.as_secs() >= u64::from(u32::MAX) => {
                self.problem(
                    "mqtt.session_expiry",
                    "must be between 1m and 136 years (MQTT 5 counts it in seconds, 32 bits)",
                );
                DEFAULT_SESSION_EXPIRY
            }
            (_, Some(d)) => d,
            (_, None) => DEFAULT_SESSION_EXPIRY,
        };
        if m.password.is_some() && m.username.is_none() {
            self.problem("mqtt.password", "a password needs a username");
        }
        let tls = m.tls.map(|t| TlsConfig {
            ca: self.path(t.ca),
            cert: t.cert.map(|p| self.path(p)),
            key: t.key.map(|p| self.path(p)),
        });
        if let Some(t) = &tls {
            if t.cert.is_some() != t.key.is_some() {
                self.problem(
                    "mqtt.tls",
                    "a client certificate needs its key, and a key its certificate",
                );
            }
            for (key, message) in host::tls_problems(t) {
                self.problem(format!("mqtt.tls.{key}"), message);
            }
        }
        MqttConfig {
            protocol,
            session_expiry,
            brokers,
            client_id,
            username: m.username,
            password: m.password,
            keepalive: m.keepalive,
            tls,
        }
    }

    pub(super) fn uplink(&mut self, u: RawUplink) -> UplinkConfig {
        if !(1..=10_000).contains(&u.batch_max_events) {
            self.problem("uplink.batch_max_events", "must be 1-10000");
        }
        if !(1024..=16 * 1024 * 1024).contains(&u.batch_max_bytes) {
            self.problem("uplink.batch_max_bytes", "must be 1 KiB - 16 MiB");
        }
        if !(1..=64).contains(&u.inflight) {
            self.problem("uplink.inflight", "must be 1-64");
        }
        if u.backoff_min.is_zero() || u.backoff_min > u.backoff_max {
            self.problem(
                "uplink.backoff_min",
                "must be above zero and not above backoff_max",
            );
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&u.ack_timeout) {
            self.problem("uplink.ack_timeout", "must be 1s - 1h");
        }
        UplinkConfig {
            batch_max_events: u.batch_max_events,
            batch_max_bytes: u.batch_max_bytes,
            inflight: u.inflight,
            backoff_min: u.backoff_min,
            backoff_max: u.backoff_max,
            ack_timeout: u.ack_timeout,
        }
    }
}
