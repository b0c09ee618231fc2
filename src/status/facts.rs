//! The report's parts that the verdict judges: each device as shown, the HQ link, the outbox.
//! Plain values, so the verdict and the report both depend on them and not on each other.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::board::DeviceView;
use super::rfc3339;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Device {
    #[serde(flatten)]
    pub view: DeviceView,
    /// The gateway is down while this device is not connected (`[status] required`).
    pub required: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hq {
    pub broker: String,
    pub connected: bool,
    #[serde(with = "rfc3339")]
    pub since: SystemTime,
    pub reconnects: u64,
    pub last_error: Option<String>,
    #[serde(default, with = "rfc3339::option")]
    pub last_error_at: Option<SystemTime>,
    /// The broker refuses the events (MQTT 5 PUBACK reason code, e.g. an ACL denial), since
    /// when; cleared by the next batch it takes. The events stay in the outbox meanwhile.
    #[serde(default)]
    pub refused: Option<String>,
    #[serde(default, with = "rfc3339::option")]
    pub refused_since: Option<SystemTime>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outbox {
    pub answering: bool,
    pub writable: bool,
    /// Events waiting for HQ's acknowledgement.
    pub depth: Option<u64>,
    pub bytes: Option<u64>,
    /// `[outbox] max_bytes`: past it the oldest events are dropped.
    pub quota_bytes: u64,
    /// Event time of the oldest event not yet acknowledged.
    #[serde(default, with = "rfc3339::option")]
    pub oldest_unsent: Option<SystemTime>,
    pub evicted_total: u64,
}
