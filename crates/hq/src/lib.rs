//! phygate-hq: HQ's side of phygate. The fleet's events flow one way:
//!
//! ```text
//! stores ─MQTT─► broker ─$share/{group}─► consumer ─Delivery─► writer ─► journey store (SQLite | PostgreSQL)
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
//! - [`mqtt_security`]: TLS, client certificate and login for every MQTT connection HQ makes.
//! - [`nats_security`]: the same for the JetStream input's NATS connection (creds, NKey,
//!   user and password, or token).
//! - [`ingest`]: a message → checked events (or parked ones, with the reason). Pure.
//! - [`writer`]: the journey store's only owner; group commits, then settles each message.
//! - [`seq`]: per gateway `seq` accounting: holes, announced evictions, losses. Pure.
//! - [`journey`]: each identified user's stage, visit and latest diagnosis. Pure.
//! - [`store`]: the [`store::JourneyStore`] and [`store::SinkLedger`] traits, in SQLite (one
//!   consumer) and PostgreSQL (several consumers of one group: commit-ordered `n`, merged
//!   accounting, one consumer per sink).
//! - [`sink`]: Braze, Amplitude and a signed CloudEvents webhook, each fed from its durable
//!   cursor, never twice unannounced.
//! - [`metrics`] and [`status`]: the counters and the `/metrics`, `/healthz` endpoint.
//! - [`repair`]: replay requests for holes pending past `[repair] after`, published to the
//!   stores' commands topics; what a store no longer holds is declared lost at once.
//! - [`control`]: the engineer's fleet controls (keys, members, config, commands).
//! - [`fleet`]: every store's status, last event and losses (`stores`, `/stores`).
//! - [`run`]: the wiring of all of the above, and the ordered shutdown.
//! - [`fleetsim`]: the fleet simulator and the fleet benchmark (`fleet-sim`, `fleet-bench`).

pub mod config;
pub mod consumer;
pub mod control;
pub mod demo;
pub mod fleet;
pub mod fleet_metrics;
pub mod fleetsim;
pub mod ingest;
pub mod input;
pub mod jetstream;
pub mod journey;
pub mod metrics;
pub mod mqtt_security;
pub mod nats_security;
pub mod repair;
pub mod run;
pub mod seq;
pub mod sink;
pub mod status;
pub mod store;
pub mod writer;
