//! phygate: the store edge gateway. Data flows one way:
//!
//! ```text
//! devices ─► sources ─Reading─► link ─Event─► outbox (SQLite) ─batch─► uplink (MQTT QoS 1) ─► HQ
//! ```
//!
//! - [`config`]: TOML → raw structs → validated [`config::Config`]; every error names file, line
//!   and field. Each stage's settings are plain values defined next to the stage (`settings.rs`);
//!   the config validates into them and the wiring hands each stage its own, so no stage imports
//!   `config`. HQ's stored config and its precedence over the local file: `config::hq`.
//! - [`station`]: a station's id, role and direction, shared by config, sources, link and events.
//! - [`sources`]: one module per device kind; each owns its port and emits [`sources::Reading`]s.
//!   Cameras decode QR frames on their own thread with the `phygate_qr` crate. Shared by the
//!   kinds: one port-supervision loop (`supervise.rs`: open, serve, report down, back off,
//!   reopen), the repeat window (`repeat.rs`) and the error-report throttle (`throttle.rs`).
//! - [`ingest`]: the local HTTP listener network devices push to (people counters, tablet skin
//!   analyzers); answers `202` only once the post's events are durable.
//! - [`link`]: readings → journey [`event::Event`]s; identity is attached here.
//! - [`event`]: the CloudEvents 1.0 envelope and each event type's data.
//! - [`downlink`]: HQ → store messages (keys, members, commands, config), checked before use, on
//!   their own persistent MQTT session, acknowledged to the broker only once applied and committed;
//!   HQ's configs go to the reloader (`daemon::reload`), applied like a SIGHUP reload.
//! - [`outbox`]: the only owner of SQLite; durable group-committed append, batches, acks, quota;
//!   every saved-state key format (`outbox::keys`).
//! - [`replay`]: HQ's `replay` command: the outbox's rows of a seq range (kept for
//!   `[outbox] replay_window` after their PUBACK) handed to the uplink to publish again.
//! - [`uplink`]: publishes batches over MQTT QoS 1; deletes rows only on PUBACK. The in-flight
//!   book (packet id → rows, resend from the oldest after CONNACK, hold after a refused
//!   PUBACK) is pure state in `uplink/book.rs`; `uplink/mod.rs` is the session around it.
//! - [`mqtt`]: the thin MQTT shell under both sessions: rumqttc's 3.1.1 or v5 client as
//!   `[mqtt] protocol` says, one event type for both, the broker's reason codes named
//!   (`mqtt::reason`), the brokers of a cluster tried in turn (`mqtt::brokers`).
//! - [`daemon`]: the wiring of all of the above (each stage built whole from its own settings and
//!   saved state, nothing set after it runs), config reloads (SIGHUP, HQ's config), and the
//!   device controls (gate unlocks by station) handed to whoever acts on devices.
//! - [`shutdown`]: the one shutdown signal, and the flow order the gateway drains in after it.
//! - [`status`]: the staff page, `/status.json`, `/metrics`, `/healthz`; systemd notify and
//!   watchdog; the logger.
//! - [`clock`]: whether the wall clock is synchronised (each event's `clocksync`, the status
//!   page's clock card; the only file that asks the kernel), and `unix_ms`.
//! - [`backoff`]: capped, jittered exponential backoff (port reopens, MQTT reconnects).
//! - [`settle`]: manual MQTT acknowledgements in arrival order (downlink; HQ's consumer too).
//! - [`metrics`]: process-wide counters for the status view.
//! - [`words`]: durations and sizes in words for people (page, CLI, device reasons).
//! - `sim`: device simulators on pseudo-terminals, for tests and the demo (feature `sim`, on by
//!   default, off in the store's package).
//! - `demo`: the one-command demo (simulated store, local broker, HQ view; feature `sim`).
//! - [`cli`]: the command line's definition (also rendered as the package's man pages and shell
//!   completions by `crates/gen`) and the token tools.

pub mod backoff;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
#[cfg(feature = "sim")]
pub mod demo;
pub mod downlink;
pub mod event;
pub mod ingest;
pub mod link;
pub mod metrics;
pub mod mqtt;
pub mod outbox;
pub mod replay;
pub mod settle;
pub mod shutdown;
#[cfg(feature = "sim")]
pub mod sim;
pub mod sources;
pub mod station;
pub mod status;
pub mod uplink;
pub mod words;
