//! phygate's wire formats, shared by the store gateway (`phygate`) and HQ (`phygate-hq`) so the
//! two sides cannot drift. Plain data and string builders: no I/O, no async, no MQTT client.
//!
//! - [`envelope`]: the CloudEvents 1.0 structured-JSON envelope every event travels in, the
//!   event type names, and the time format (docs/events.md).
//! - [`topic`]: the MQTT topic names, both directions, and HQ's shared subscription.
//! - [`downlink`]: the HQ → store message bodies (members, commands) and their size caps
//!   (docs/downlink.md). The gateway's own checks on them stay in its `downlink` module.
//! - [`status`]: the gateway's retained status and its report to HQ (applied versions,
//!   devices in error, backlog).

pub mod downlink;
pub mod envelope;
pub mod status;
pub mod topic;
