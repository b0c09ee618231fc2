//! The fleet at HQ's scale on one machine: [`sim`] runs N store gateways with the edge's own
//! outbox and uplink code; [`bench`] runs the whole chain (broker, consumers, journey engines)
//! around it, with faults, and prints the verdict and each process's CPU and memory.
//!
//! - [`mix`]: a store's traffic (gate passes, app-token scans, skin diagnoses).
//! - [`engines`]: Braze- and Amplitude-like servers that count repeats per event.
//! - [`procs`]: the consumer processes and the per-process meters; [`procstat`]: /proc.

pub mod bench;
pub mod engines;
pub mod mix;
pub mod procs;
pub mod procstat;
pub mod sim;
