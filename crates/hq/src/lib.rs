//! phygate-hq: HQ's side of phygate. The fleet's events flow one way:
//!
//! ```text
//! stores ─MQTT─► broker ─$share/{group}─► consumer ─Delivery─► writer ─► journey store (SQLite)
//!          (or NATS ─JetStream, durable─► jetstream ─┘)           │
//!                        ◄── PUBACK / ack once committed ─┘       │ dedupe (gateway, id)
//!                                                                 │ seq accounting → lost
//!                                   journey engines ◄─HTTP─ sinks ◄─ cursor per sink (events.n)
//! ```
//!
//! - [`config`]: `hq.toml` → validated [`config::Config`].
//! - [`input`]: `[input]`, which of the two inputs below feeds the writer.
//! - [`consumer`]: the MQTT 5 session (persistent, shared subscription, manual acks).
//! - [`jetstream`]: or a NATS JetStream stream and its one durable pull consumer shared by
//!   every worker, acked after commit.
//! - [`ingest`]: a message → checked events (or parked ones, with the reason). Pure.
//! - [`writer`]: the journey store's only owner; group commits, then settles each message.
//! - [`seq`]: per gateway `seq` accounting: holes, announced evictions, losses. Pure.
//! - [`journey`]: each identified user's stage, visit and latest diagnosis. Pure.
//! - [`store`]: the [`store::JourneyStore`] and [`store::SinkLedger`] traits and their SQLite
//!   implementation.
//! - [`sink`]: Braze and Amplitude, each fed from its durable cursor, never twice unannounced.
//! - [`metrics`] and [`status`]: the counters and the `/metrics`, `/healthz` endpoint.
//! - [`run`]: the wiring of all of the above, and the ordered shutdown.

pub mod config;
pub mod consumer;
pub mod ingest;
pub mod input;
pub mod jetstream;
pub mod journey;
pub mod metrics;
pub mod run;
pub mod seq;
pub mod sink;
pub mod status;
pub mod store;
pub mod writer;
