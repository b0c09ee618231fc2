//! Entry gate source: a turnstile through a Modbus RTU digital-I/O module (docs/protocols.md §3a).
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

pub mod control;
pub mod modbus;
pub mod settings;
mod tracker;

pub use control::{GateControl, GateError, GateRegistry, UnlockQueue, UnlockReceipt};
/// The device kind in status events.
pub use settings::{GateConfig, Parity, StopBits, KIND};
pub use tracker::{reason_of, GateTracker, FAILS_BEFORE_DOWN};

use std::io;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serialport::{ClearBuffer, SerialPort};
use tracing::{debug, info, warn};

use self::control::{UnlockRequest, Wake};
use self::modbus::{GateRegisters, ModbusError, Request, Response, ResponseReader};
use super::{supervise, Ended, Outage, ReadingSink, SourceError, Supervised};
use crate::shutdown::Shutdown;

/// PASS A is `In` (into the store), PASS B is `Out`.
pub use crate::sources::Direction;

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

pub struct GateSource {
    config: GateConfig,
    sink: ReadingSink,
    stop: Shutdown,
    /// The saved baseline, read by the wiring at each (re)start: new baselines travel with the
    /// readings, and the link saves them.
    baseline: Option<Counters>,
    unlocks: UnlockQueue,
}

impl GateSource {
    pub fn new(
        config: GateConfig,
        sink: ReadingSink,
        stop: Shutdown,
        baseline: Option<Counters>,
        unlocks: UnlockQueue,
    ) -> Self {
        GateSource {
            config,
            sink,
            stop,
            baseline,
            unlocks,
        }
    }

    /// Runs until stopped or the pipeline closes. Blocking: call on a dedicated thread.
    ///
    /// The baseline is read by the wiring once per run. A supervised restart after a panic
    /// reads it again while readings of the old run may still be on their way to the link; the
    /// supervisor's one-second pause lets them land first.
    pub fn run(self) -> Result<(), SourceError> {
        let baseline = self.baseline;
        info!(device = self.sink.device(), ?baseline, "gate baseline");
        let tracker = GateTracker::new(
            baseline,
            self.config.max_plausible,
            self.config.silent_after,
            Instant::now(),
        );
        supervise(
            &mut GatePort {
                source: &self,
                tracker,
            },
            &self.stop,
        )
    }

    fn open(&self) -> io::Result<Box<dyn SerialPort>> {
        let c = &self.config;
        Ok(serialport::new(c.port.to_string_lossy(), c.baud)
            .data_bits(serialport::DataBits::Eight)
            .parity(match c.parity {
                Parity::None => serialport::Parity::None,
                Parity::Even => serialport::Parity::Even,
                Parity::Odd => serialport::Parity::Odd,
            })
            .stop_bits(match c.stop_bits {
                StopBits::One => serialport::StopBits::One,
                StopBits::Two => serialport::StopBits::Two,
            })
            .timeout(c.timeout)
            .open()?)
    }

    /// Polls and unlocks on an open port until it fails or the source stops.
    fn serve(
        &self,
        mut port: Box<dyn SerialPort>,
        tracker: &mut GateTracker,
    ) -> Result<Ended, SourceError> {
        let c = &self.config;
        let poll = Request::read_holding(c.unit, c.first_register, modbus::GATE_REGISTER_COUNT)
            .expect("unit and register range are validated with the config");
        let mut next_poll = Instant::now();
        // Modbus needs silence between frames, and some modules a few ms more: no request
        // before this instant.
        let mut line_free_at = Instant::now();
        loop {
            for report in tracker.tick(Instant::now()) {
                self.sink.emit(report)?;
            }
            match self.unlocks.wait(next_poll, &self.stop) {
                Wake::Stop => return Ok(Ended::Stopped),
                Wake::Unlock(request) => {
                    if let Err(e) = self.unlock(&mut *port, request, &mut line_free_at) {
                        return Ok(Ended::Lost(e));
                    }
                }
                Wake::Due => {
                    // One interval after the last poll was due; after a stall (back-pressure),
                    // one poll now rather than a burst of catch-up polls.
                    next_poll = (next_poll + c.poll_interval).max(Instant::now());
                    sleep_until(line_free_at);
                    let answer = match exchange(&mut *port, &poll, c.timeout) {
                        Ok((_, answer)) => answer,
                        Err(e) => return Ok(Ended::Lost(e)),
                    };
                    line_free_at = Instant::now() + c.gap;
                    let now = Instant::now();
                    let reports = match answer.and_then(registers) {
                        Ok(regs) => tracker.polled(&regs, now),
                        Err(e) => {
                            debug!(device = self.sink.device(), error = %e, "gate poll failed");
                            tracker.failed(&e, now)
                        }
                    };
                    for report in reports {
                        self.sink.emit(report)?;
                    }
                }
            }
        }
    }

    /// Writes the unlock coil and answers the request with its receipt. `Err` only when the
    /// port itself failed.
    fn unlock(
        &self,
        port: &mut dyn SerialPort,
        request: UnlockRequest,
        line_free_at: &mut Instant,
    ) -> io::Result<()> {
        let device = self.sink.device();
        if request.abandoned() {
            debug!(device, "unlock abandoned by its caller before the write");
            return Ok(());
        }
        sleep_until(*line_free_at);
        if request.expired(Instant::now()) {
            let waited = request.requested.elapsed();
            warn!(device, ?waited, "unlock expired before the line was free");
            request.answer(Err(GateError::Expired {
                device: device.into(),
                waited,
            }));
            return Ok(());
        }
        let c = &self.config;
        let coil = Request::write_single_coil(c.unit, c.unlock_coil, true)
            .expect("unit is validated with the config");
        match exchange(port, &coil, c.timeout) {
            Ok((on_wire, echo)) => {
                *line_free_at = Instant::now() + c.gap;
                let receipt = control::UnlockReceipt {
                    requested: request.requested,
                    on_wire,
                    echo: echo.map(|_| ()),
                };
                match &receipt.echo {
                    Ok(()) => info!(device, latency = ?receipt.latency(), "gate unlocked"),
                    Err(e) => {
                        warn!(device, latency = ?receipt.latency(), error = %e, "unlock written, not confirmed")
                    }
                }
                request.answer(Ok(receipt));
                Ok(())
            }
            Err(e) => {
                request.answer(Err(GateError::Write {
                    device: device.into(),
                    error: e.to_string(),
                }));
                Err(e)
            }
        }
    }
}

/// A gate's part in the supervision loop: the tracker lives as long as the source, so a replug
/// keeps the counts; `up` is reported once the module answers a poll, not on open.
struct GatePort<'a> {
    source: &'a GateSource,
    tracker: GateTracker,
}

impl Supervised for GatePort<'_> {
    type Port = Box<dyn SerialPort>;

    fn open(&mut self) -> io::Result<Self::Port> {
        self.source.open()
    }

    fn opened(&mut self) -> Result<(), SourceError> {
        let s = self.source;
        info!(device = s.sink.device(), port = %s.config.port.display(), "gate port open");
        Ok(())
    }

    fn serve(&mut self, port: Self::Port) -> Result<Ended, SourceError> {
        self.source.serve(port, &mut self.tracker)
    }

    fn down(&mut self, outage: Outage) -> Result<(), SourceError> {
        let device = self.source.sink.device();
        let why = outage.reason(&self.source.config.port);
        // One report per outage, not one per retry: the tracker knows.
        match self.tracker.down(why.clone()) {
            Some(report) => {
                warn!(device, "{why}");
                self.source.sink.emit(report)
            }
            None => {
                debug!(device, "{why}");
                Ok(())
            }
        }
    }

    /// Unlocks asked for while the port is closed are refused at once, not held until it
    /// reopens: the customer has walked on by then.
    fn wait(&mut self, stop: &Shutdown, delay: Duration) -> bool {
        let reopen = Instant::now() + delay;
        loop {
            match self.source.unlocks.wait(reopen, stop) {
                Wake::Stop => return true,
                Wake::Due => return false,
                Wake::Unlock(r) => {
                    let device = self.source.sink.device();
                    warn!(device, "unlock refused: port closed");
                    r.answer(Err(GateError::NotConnected(device.into())));
                }
            }
        }
    }
}

fn registers(response: Response) -> Result<GateRegisters, ModbusError> {
    match response {
        Response::ReadHolding { registers } => GateRegisters::from_holding(&registers),
        Response::WriteSingleCoil { .. } => Err(ModbusError::LengthMismatch),
    }
}

fn sleep_until(t: Instant) {
    let left = t.saturating_duration_since(Instant::now());
    if !left.is_zero() {
        std::thread::sleep(left);
    }
}

/// One request and its answer: returns when the request went on the wire, and the parsed
/// response or why there is none. `Err` only when the port itself failed (unplugged).
fn exchange(
    port: &mut dyn SerialPort,
    request: &Request,
    timeout: Duration,
) -> io::Result<(Instant, Result<Response, ModbusError>)> {
    // Late bytes of an earlier answer (after a timeout) must not be read as this one's.
    port.clear(ClearBuffer::Input)?;
    port.set_timeout(timeout)?;
    port.write_all(&request.encode())?;
    // tcdrain: returns once the last byte has left the UART.
    port.flush()?;
    let on_wire = Instant::now();
    let deadline = on_wire + timeout;
    let mut reader = ResponseReader::new(*request);
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok((on_wire, Err(reader.timed_out())));
        }
        port.set_timeout(left)?;
        match port.read(&mut buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                if let Some(answer) = reader.push(&buf[..n]) {
                    return Ok((on_wire, answer));
                }
            }
            Err(e)
                if e.kind() == io::ErrorKind::TimedOut
                    || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
