//! The link's identity settings, as the config validates them (`[identity]`, `[[stage]]`): plain
//! values.

use std::time::Duration;

/// How readings are linked to app users (docs/protocols.md §5–6).
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// The tenant's NFC card key; taps carry no card hash until it is known (config or HQ).
    pub card_key: Option<[u8; 32]>,
    /// Token public keys from config; HQ may add more on the keys topic.
    pub keys: super::jwks::KeySet,
    /// Clock-skew allowance for token `iat`/`exp`.
    pub token_skew: Duration,
    /// How long an identification at a station links that station's anonymous readings.
    pub session_window: Duration,
    /// A visit with no sighting of its user for this long ends (`end_reason: idle`).
    pub visit_idle: Duration,
    /// The journey-stage rule table (`[[stage]]`, or the built-in one).
    pub stages: super::stage::StageRules,
}

/// Everything the journey rules are given.
#[derive(Debug, Clone)]
pub struct JourneySettings {
    pub tenant: String,
    pub store: String,
    pub identity: IdentityConfig,
    pub stations: Vec<crate::station::Station>,
}
