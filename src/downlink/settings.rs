//! What the downlink session is given, built by the wiring from the validated config: plain
//! values.

use std::time::Duration;

use crate::uplink::settings::MqttConfig;

#[derive(Debug, Clone)]
pub struct DownlinkSettings {
    /// The broker session, as the uplink's; the downlink connects under its own client id.
    pub mqtt: MqttConfig,
    pub tenant: String,
    pub store: String,
    /// Reconnect backoff bounds, as the uplink's (`[uplink] backoff_min`/`backoff_max`).
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}
