//! phygate-hq: HQ's side of phygate. The fleet's events flow one way:
//!
//! ```text
//! stores ─MQTT─► broker ─$share/{group}─► consumer ─Delivery─► writer ─► journey store (SQLite)
//!                        ◄── PUBACK once committed ──┘            │ dedupe (gateway, id)
//!                                                                 │ seq accounting → lost
//! ```
//!
//! - [`config`]: `hq.toml` → validated [`config::Config`].
//! - [`consumer`]: the MQTT 5 session (persistent, shared subscription, manual acks).
//! - [`ingest`]: a message → checked events (or parked ones, with the reason). Pure.
//! - [`writer`]: the journey store's only owner; group commits, then settles each message.
//! - [`seq`]: per gateway `seq` accounting: holes, announced evictions, losses. Pure.
//! - [`journey`]: each identified user's stage, visit and latest diagnosis. Pure.
//! - [`store`]: the [`store::JourneyStore`] trait and its SQLite implementation.
//! - [`metrics`] and [`status`]: the counters and the `/metrics`, `/healthz` endpoint.
//! - [`run`]: the wiring of all of the above, and the ordered shutdown.

pub mod config;
pub mod consumer;
pub mod ingest;
pub mod journey;
pub mod metrics;
pub mod run;
pub mod seq;
pub mod status;
pub mod store;
pub mod writer;
