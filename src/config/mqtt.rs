//! `[mqtt]` and `[uplink]`: the HQ broker session and how batches are published on it.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{brokers, host, Validator};
use crate::uplink::settings::{MqttConfig, TlsConfig, UplinkConfig};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMqtt {
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
}

impl Default for RawUplink {
    fn default() -> Self {
        RawUplink {
            batch_max_events: default_batch_events(),
            batch_max_bytes: default_batch_bytes(),
            inflight: default_inflight(),
            backoff_min: default_backoff_min(),
            backoff_max: default_backoff_max(),
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
        UplinkConfig {
            batch_max_events: u.batch_max_events,
            batch_max_bytes: u.batch_max_bytes,
            inflight: u.inflight,
            backoff_min: u.backoff_min,
            backoff_max: u.backoff_max,
        }
    }
}
