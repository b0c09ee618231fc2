//! The MQTT session's settings, as the config validates them (`[mqtt]`, `[uplink]`): plain
//! values, shared by the uplink and the downlink sessions.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// One broker to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for BrokerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Which MQTT the store speaks (`[mqtt] protocol`). Both sessions use the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1.1, the default: every broker speaks it (NATS's MQTT listener only this).
    V311,
    /// MQTT 5: the broker's reason codes (a refused publish says so), a session expiry for
    /// the downlink's persistent session, the batch's content type as a property.
    V5,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::V311 => "MQTT 3.1.1",
            Protocol::V5 => "MQTT 5",
        })
    }
}

#[derive(Debug, Clone)]
pub struct MqttConfig {
    pub protocol: Protocol,
    /// Never empty: `host` (+ `port`), or a cluster's `brokers`, tried in turn on each failed
    /// connect or lost connection (`mqtt::brokers`).
    pub brokers: Vec<BrokerAddr>,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keepalive: Duration,
    /// MQTT 5 only: how long the broker keeps the downlink's session (its subscriptions and
    /// the messages queued for it) after the store disconnects. 3.1.1 has no such field: the
    /// broker's own setting decides (mosquitto: `persistent_client_expiration`, default never).
    pub session_expiry: Duration,
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct UplinkConfig {
    pub batch_max_events: usize,
    pub batch_max_bytes: usize,
    /// Batches published and not yet acknowledged at once.
    pub inflight: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// With publishes in flight and the connection up, the longest wait for any PUBACK before
    /// the connection is dropped and the unacknowledged rows are sent again on a new one.
    pub ack_timeout: Duration,
}

/// Everything the uplink is given: the session, the batching, and where it publishes.
#[derive(Debug, Clone)]
pub struct UplinkSettings {
    pub mqtt: MqttConfig,
    pub batching: UplinkConfig,
    /// Where batches go (`…/events`).
    pub events_topic: String,
    /// The retained online/offline status (and the last will).
    pub status_topic: String,
    pub gateway: String,
}
