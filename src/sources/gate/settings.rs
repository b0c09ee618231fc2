//! A gate's settings, as the config validates them (`kind = "gate"`): plain values.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::modbus::GATE_REGISTER_COUNT;

/// The device kind, as the config and the status page name it.
pub const KIND: &str = "gate";

/// A validated gate.
#[derive(Debug, Clone)]
pub struct GateConfig {
    pub port: PathBuf,
    pub baud: u32,
    pub parity: Parity,
    pub stop_bits: StopBits,
    /// Modbus unit address of the I/O module (1-247).
    pub unit: u8,
    /// Holding register of the block `in` (2), `out` (2), status (1).
    pub first_register: u16,
    /// The coil that pulses the unlock relay.
    pub unlock_coil: u16,
    pub poll_interval: Duration,
    /// How long to wait for an answer, from the request's last byte on the wire.
    pub timeout: Duration,
    /// Silence kept between an answer and the next request: the configured gap, at least the
    /// Modbus frame silence at this speed.
    pub gap: Duration,
    /// Passages per poll above which a counter jump is a module reset.
    pub max_plausible: u32,
    /// Report `silent` after this long without a passage (None: a quiet gate is fine).
    pub silent_after: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    #[default]
    None,
    Even,
    Odd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopBits {
    One,
    Two,
}

impl fmt::Display for GateConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parity = match self.parity {
            Parity::None => 'N',
            Parity::Even => 'E',
            Parity::Odd => 'O',
        };
        let stop = match self.stop_bits {
            StopBits::One => 1,
            StopBits::Two => 2,
        };
        let d = crate::words::duration;
        write!(
            f,
            "gate (Modbus RTU unit {}) on {} @ {} 8{parity}{stop}, holding {}-{}, unlock coil {}, \
             poll every {} (timeout {}, gap {}), reset above {} per poll",
            self.unit,
            self.port.display(),
            self.baud,
            self.first_register,
            u32::from(self.first_register) + u32::from(GATE_REGISTER_COUNT) - 1,
            self.unlock_coil,
            d(self.poll_interval),
            d(self.timeout),
            d(self.gap),
            self.max_plausible
        )?;
        if let Some(after) = self.silent_after {
            write!(f, ", silent after {}", d(after))?;
        }
        Ok(())
    }
}

/// Modbus over Serial Line v1.02 §2.5.1.1: frames are separated by 3.5 character times of
/// silence (11 bits a character); above 19200 baud a fixed 1.75 ms.
pub fn frame_silence(baud: u32) -> Duration {
    if baud > 19_200 {
        Duration::from_micros(1750)
    } else {
        Duration::from_micros(3_500 * 11 * 1_000 / u64::from(baud.max(1)))
    }
}
