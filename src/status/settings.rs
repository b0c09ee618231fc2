//! The operations side's settings, as the config validates them (`[status]`, `[log]`): plain
//! values; both can change on a reload without a restart.

use std::net::SocketAddr;

/// The local status listener: the staff page, `/status.json`, `/metrics`, `/healthz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusConfig {
    pub listen: SocketAddr,
    /// Devices `/healthz` requires up. Default: every device with a port of its own (serial,
    /// Modbus); devices that post over HTTP have no link state to check.
    pub required: Vec<String>,
}

/// The log filter, in `RUST_LOG` syntax (`info`, `phygate=debug,rumqttc=warn`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `None`: `RUST_LOG` from the environment, or `info`.
    pub level: Option<String>,
}

/// A configured device, as the status board lists it before its first word.
#[derive(Debug, Clone)]
pub struct BoardDevice {
    pub id: String,
    pub kind: &'static str,
    pub station: String,
}

/// What the status report names of the store, besides the live state.
#[derive(Debug, Clone)]
pub struct ReportSettings {
    pub store: String,
    pub gateway: String,
    /// The broker as people read it: `host:port`, ` (TLS)` when so.
    pub broker: String,
    /// The outbox quota, to show how full it is.
    pub quota_bytes: u64,
}

/// Everything the operations side is given at start.
#[derive(Debug, Clone)]
pub struct OpsSettings {
    pub log: LogConfig,
    pub status: StatusConfig,
    pub report: ReportSettings,
}
