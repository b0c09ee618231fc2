//! What a poll means: pass counting with a persisted baseline, counter resets, the alarm input,
//! and the device's health (three failed polls in a row → down). Pure: the I/O shell feeds it
//! poll outcomes and the time, and emits the observations it returns, in order.

use std::time::{Duration, Instant};

use super::modbus::{AlarmTracker, CountOutcome, Edge, GateRegisters, ModbusError, PassCounter};
use super::{Counters, Direction, KIND};
use crate::sources::throttle::ErrorThrottle;
use crate::sources::{DeviceState, DeviceStatus, Observation};

/// docs/protocols.md §3a: three failed polls in a row mark the device down.
pub const FAILS_BEFORE_DOWN: u32 = 3;
/// Failed polls are reported like the scanner's rejections: at most one report per second per
/// device, with the count of what it stands for.
const ERROR_REPORT_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    /// Not polled successfully yet.
    Unknown,
    Up,
    Down,
}

pub struct GateTracker {
    pass_in: PassCounter,
    pass_out: PassCounter,
    alarm: AlarmTracker,
    health: Health,
    /// Failed polls since the last good one.
    failures: u32,
    errors: ErrorThrottle,
    silent_after: Option<Duration>,
    last_pass: Instant,
    silent: bool,
}

impl GateTracker {
    /// `baseline`: the counters persisted by the last run, if any. Without one the first good
    /// poll only sets it.
    pub fn new(
        baseline: Option<Counters>,
        max_plausible: u32,
        silent_after: Option<Duration>,
        now: Instant,
    ) -> Self {
        GateTracker {
            pass_in: PassCounter::new(baseline.map(|b| b.pass_in), max_plausible),
            pass_out: PassCounter::new(baseline.map(|b| b.pass_out), max_plausible),
            alarm: AlarmTracker::default(),
            health: Health::Unknown,
            failures: 0,
            errors: ErrorThrottle::new(ERROR_REPORT_INTERVAL),
            silent_after,
            last_pass: now,
            silent: false,
        }
    }

    /// The baseline once both counters have one.
    pub fn counters(&self) -> Option<Counters> {
        Some(Counters {
            pass_in: self.pass_in.last()?,
            pass_out: self.pass_out.last()?,
        })
    }

    /// A poll answered with the gate's registers.
    pub fn polled(&mut self, regs: &GateRegisters, now: Instant) -> Vec<Observation> {
        let mut out = Vec::new();
        self.failures = 0;
        match self.health {
            Health::Up => {}
            Health::Unknown => out.push(status(DeviceState::Up, "responding", None)),
            Health::Down => out.push(status(DeviceState::Up, "answering again", None)),
        }
        self.health = Health::Up;
        self.count(regs, now, &mut out);
        match self.alarm.update(regs.alarm) {
            Some(Edge::Rising) => out.push(status(DeviceState::Error, "alarm", None)),
            Some(Edge::Falling) => out.push(status(DeviceState::Up, "alarm cleared", None)),
            None => {}
        }
        out
    }

    /// Each `GatePassed` carries the baseline *as of having counted it* (the other direction
    /// still at its old value when it comes first), so whichever transactions the outbox groups
    /// them into, a crash between two of them neither loses nor repeats a passage.
    fn count(&mut self, regs: &GateRegisters, now: Instant, out: &mut Vec<Observation>) {
        let new = Counters {
            pass_in: regs.pass_in,
            pass_out: regs.pass_out,
        };
        let before = self.counters();
        let mut persisted = before.unwrap_or(new);
        let outcomes = [
            (Direction::In, self.pass_in.update(new.pass_in)),
            (Direction::Out, self.pass_out.update(new.pass_out)),
        ];
        if outcomes
            .iter()
            .any(|(_, o)| matches!(o, CountOutcome::Reset { .. }))
        {
            out.push(status(DeviceState::Error, "counter_reset", None));
        }
        for (direction, outcome) in outcomes {
            let count = match outcome {
                CountOutcome::Passed { count } | CountOutcome::Reset { count, .. } => count,
                CountOutcome::Baseline | CountOutcome::Unchanged => 0,
            };
            if count == 0 {
                continue;
            }
            if self.silent {
                self.silent = false;
                out.push(status(DeviceState::Up, "passing again", None));
            }
            self.last_pass = now;
            persisted.set(direction, new.get(direction));
            out.push(Observation::GatePassed {
                direction,
                count,
                counters: persisted,
            });
        }
        // First read, or a counter reset to zero: a new baseline that no event carries.
        if before.is_none() || persisted != new {
            out.push(Observation::GateBaseline(new));
        }
    }

    /// A poll that got no valid answer.
    pub fn failed(&mut self, error: &ModbusError, now: Instant) -> Vec<Observation> {
        crate::metrics::GATE_POLLS_FAILED.inc();
        let mut out = Vec::new();
        self.failures += 1;
        if let Some((reason, count)) = self.errors.record(reason_of(error), now) {
            out.push(status(DeviceState::Error, reason, Some(count)));
        }
        if self.failures >= FAILS_BEFORE_DOWN && self.health != Health::Down {
            self.health = Health::Down;
            let reason = format!(
                "{} failed polls in a row (last: {error}){}",
                self.failures,
                wire_hint(error)
            );
            out.push(status(DeviceState::Down, reason, None));
        }
        out
    }

    /// Time passing: held-back error reports, and `silent` when no one passed for a while.
    pub fn tick(&mut self, now: Instant) -> Vec<Observation> {
        let mut out = Vec::new();
        if let Some((reason, count)) = self.errors.due(now) {
            out.push(status(DeviceState::Error, reason, Some(count)));
        }
        if let Some(after) = self.silent_after {
            if self.health == Health::Up
                && !self.silent
                && now.saturating_duration_since(self.last_pass) >= after
            {
                self.silent = true;
                let reason = format!("no passage for {}", crate::words::duration(after));
                out.push(status(DeviceState::Silent, reason, None));
            }
        }
        out
    }

    /// The port is gone or cannot be opened: down, once per outage.
    pub fn down(&mut self, reason: String) -> Option<Observation> {
        self.failures = 0;
        if self.health == Health::Down {
            return None;
        }
        self.health = Health::Down;
        Some(status(DeviceState::Down, reason, None))
    }
}

/// What to check when the module does not answer, or answers garbled: nothing (or noise)
/// comes back when the unit address, the speed or the parity differ from the module's, or a
/// wire is loose or swapped. Other failures are the module's own words and need no hint.
fn wire_hint(error: &ModbusError) -> &'static str {
    match error {
        ModbusError::NoResponse
        | ModbusError::CrcMismatch { .. }
        | ModbusError::Truncated { .. }
        | ModbusError::WrongUnit { .. } => ": check unit address, baud, parity, wiring",
        _ => "",
    }
}

/// The `reason` of a failed poll's error report.
pub fn reason_of(error: &ModbusError) -> &'static str {
    use super::modbus::{
        EXC_ILLEGAL_DATA_ADDRESS, EXC_ILLEGAL_DATA_VALUE, EXC_ILLEGAL_FUNCTION,
        EXC_SERVER_DEVICE_FAILURE,
    };
    match error {
        ModbusError::NoResponse => "no_response",
        ModbusError::Truncated { .. } => "truncated",
        ModbusError::CrcMismatch { .. } => "crc_mismatch",
        ModbusError::Exception { code } => match *code {
            EXC_ILLEGAL_FUNCTION => "exception_illegal_function",
            EXC_ILLEGAL_DATA_ADDRESS => "exception_illegal_data_address",
            EXC_ILLEGAL_DATA_VALUE => "exception_illegal_data_value",
            EXC_SERVER_DEVICE_FAILURE => "exception_device_failure",
            _ => "exception",
        },
        ModbusError::WrongUnit { .. }
        | ModbusError::WrongFunction { .. }
        | ModbusError::LengthMismatch
        | ModbusError::EchoMismatch
        | ModbusError::TooFewRegisters { .. }
        | ModbusError::InvalidParameter(_)
        | ModbusError::Unsupported { .. } => "bad_frame",
    }
}

fn status(state: DeviceState, reason: impl Into<String>, count: Option<u64>) -> Observation {
    Observation::Status(DeviceStatus {
        kind: KIND,
        state,
        reason: reason.into(),
        count,
    })
}

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;
