//! The fleet at HQ's scale on one machine: [`sim`] runs N store gateways with the edge's own
//! outbox and uplink code; [`bench`] runs the whole chain (broker, consumers, journey engines)
//! around it, with faults, and prints the verdict and each process's CPU and memory.
//!
//! - [`commands`]: the stores' answers to HQ's `replay` commands (one session for the fleet).
//! - [`mix`]: a store's traffic (gate passes, app-token scans, skin diagnoses).
//! - [`engines`]: Braze- and Amplitude-like servers that count repeats per event.
//! - [`procs`]: the consumer processes and the per-process meters; [`procstat`]: /proc.
//! - [`brokers`]: mosquitto or the three-node NATS cluster; [`reconnects`]: the stores' reconnect
//!   spread after a node kill, from the sim's log.
//! - [`pgserver`]: a throwaway PostgreSQL for `--store postgres` (and the tests).
//! - [`journey`]: HQ's side as the bench reads it: events stored, sinks done, losses.

pub mod bench;
pub mod brokers;
pub mod commands;
pub mod engines;
mod journey;
pub mod mix;
pub mod pgserver;
pub mod procs;
pub mod procstat;
pub mod reconnects;
pub mod sim;
