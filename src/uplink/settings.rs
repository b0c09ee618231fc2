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

#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Never empty: `host` (+ `port`), or a cluster's `brokers`, tried in turn on each failed
    /// connect or lost connection (`uplink::brokers`).
    pub brokers: Vec<BrokerAddr>,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keepalive: Duration,
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
