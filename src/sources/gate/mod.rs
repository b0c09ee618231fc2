//! Entry gate source: a turnstile through a Modbus RTU digital-I/O module (PROTOCOLS.md §3a).
//!
//! One thread per gate owns the RS-485 port. It reads holding 0–4 every `poll_interval`; between
//! polls it waits on its unlock queue, so an unlock goes on the wire as soon as the line is free
//! (after the exchange in progress and the inter-request gap), not at the next poll. What a poll
//! means (counting, resets, alarm, health) is decided by the pure [`GateTracker`]; the bytes are
//! [`modbus`]'s.
//!
//! Counting survives restarts and crashes: the baseline is read from the outbox's state at start,
//! and the link writes each new baseline in the same transaction as the `store.gate.passed` event
//! that counted it (or alone, when nothing was counted). The thread never writes SQLite.

pub mod modbus;
mod tracker;

pub use tracker::{reason_of, GateTracker, FAILS_BEFORE_DOWN};

use serde::{Deserialize, Serialize};

/// The device kind in status events.
pub const KIND: &str = "gate";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// PASS A: into the store.
    In,
    /// PASS B: out of the store.
    Out,
}

/// The module's two pass counters: the persisted baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    #[serde(rename = "in")]
    pub pass_in: u32,
    #[serde(rename = "out")]
    pub pass_out: u32,
}

impl Counters {
    pub fn get(&self, d: Direction) -> u32 {
        match d {
            Direction::In => self.pass_in,
            Direction::Out => self.pass_out,
        }
    }

    pub fn set(&mut self, d: Direction, v: u32) {
        match d {
            Direction::In => self.pass_in = v,
            Direction::Out => self.pass_out = v,
        }
    }

    /// The state value: small JSON, readable with the sqlite3 shell.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Counters> {
        serde_json::from_slice(bytes).ok()
    }
}

/// The outbox state key of a gate's baseline.
pub fn state_key(device: &str) -> String {
    format!("gate/{device}")
}
