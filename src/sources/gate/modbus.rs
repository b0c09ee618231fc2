//! Modbus RTU for the turnstile's RS-485 I/O module (docs/protocols.md §3a): CRC-16/MODBUS, the two
//! requests the gateway sends (fn 03 read holding, fn 05 write single coil), response parsing
//! incl. exceptions, an incremental response reader, the device side for simulators, and the
//! pure counting rules (pass-counter deltas, register map, alarm edges). No I/O, no clock.

use std::collections::VecDeque;
use thiserror::Error;

pub const FN_READ_HOLDING: u8 = 0x03;
pub const FN_WRITE_SINGLE_COIL: u8 = 0x05;
const EXCEPTION_BIT: u8 = 0x80;
/// Modbus Application Protocol §6.3: at most 125 registers per read (250 data bytes).
pub const MAX_READ_REGISTERS: u16 = 125;

pub const EXC_ILLEGAL_FUNCTION: u8 = 0x01;
pub const EXC_ILLEGAL_DATA_ADDRESS: u8 = 0x02;
pub const EXC_ILLEGAL_DATA_VALUE: u8 = 0x03;
pub const EXC_SERVER_DEVICE_FAILURE: u8 = 0x04;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ModbusError {
    /// Damaged on the wire: report; the poll failed (three in a row mark the device down).
    #[error("CRC mismatch (computed {computed:#06x}, received {received:#06x})")]
    CrcMismatch { computed: u16, received: u16 },
    /// The module refused the request: report the code; retrying rarely helps.
    #[error("exception response, code {code:#04x}")]
    Exception { code: u8 },
    #[error("response from unit {got}, expected {expected}")]
    WrongUnit { expected: u8, got: u8 },
    #[error("response function {got:#04x}, expected {expected:#04x}")]
    WrongFunction { expected: u8, got: u8 },
    /// Fewer bytes than the frame needs: a timeout cut it short.
    #[error("frame truncated ({got} of {needed} bytes)")]
    Truncated { got: usize, needed: usize },
    /// Nothing arrived before the timeout.
    #[error("no response")]
    NoResponse,
    #[error("frame length or byte count does not match the request")]
    LengthMismatch,
    /// A write-coil response that does not echo the request.
    #[error("response does not echo the request")]
    EchoMismatch,
    #[error("need {needed} holding registers, got {got}")]
    TooFewRegisters { got: usize, needed: usize },
    /// Builder argument outside what Modbus allows (unit 1–247, quantity 1–125).
    #[error("invalid request parameter: {0}")]
    InvalidParameter(&'static str),
    /// Device side: a request the simulated module refuses. Answer with
    /// `exception_response(unit, function, exception)`.
    #[error("unsupported request fn {function:#04x} to unit {unit}: exception {exception}")]
    Unsupported {
        unit: u8,
        function: u8,
        exception: u8,
    },
}

/// CRC-16/MODBUS: reflected poly 0xA001, init 0xFFFF; goes on the wire low byte first.
pub fn crc16(data: &[u8]) -> u16 {
    data.iter().fold(0xFFFF, |mut crc, b| {
        crc ^= u16::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
        crc
    })
}

fn with_crc(mut frame: Vec<u8>) -> Vec<u8> {
    let crc = crc16(&frame);
    frame.extend_from_slice(&crc.to_le_bytes());
    frame
}

/// Checks the trailing CRC and returns the frame without it.
fn strip_crc(frame: &[u8]) -> Result<&[u8], ModbusError> {
    let Some((body, crc)) = frame.split_last_chunk::<2>() else {
        return Err(ModbusError::Truncated {
            got: frame.len(),
            needed: 4,
        });
    };
    let (computed, received) = (crc16(body), u16::from_le_bytes(*crc));
    if computed != received {
        return Err(ModbusError::CrcMismatch { computed, received });
    }
    Ok(body)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    ReadHolding { unit: u8, start: u16, quantity: u16 },
    WriteSingleCoil { unit: u8, address: u16, on: bool },
}

fn check_unit(unit: u8) -> Result<(), ModbusError> {
    // 0 is broadcast (no answer, so no poll), 248–255 are reserved.
    match unit {
        1..=247 => Ok(()),
        _ => Err(ModbusError::InvalidParameter("unit must be 1-247")),
    }
}

impl Request {
    pub fn read_holding(unit: u8, start: u16, quantity: u16) -> Result<Self, ModbusError> {
        check_unit(unit)?;
        if !(1..=MAX_READ_REGISTERS).contains(&quantity) {
            return Err(ModbusError::InvalidParameter("quantity must be 1-125"));
        }
        Ok(Self::ReadHolding {
            unit,
            start,
            quantity,
        })
    }

    pub fn write_single_coil(unit: u8, address: u16, on: bool) -> Result<Self, ModbusError> {
        check_unit(unit)?;
        Ok(Self::WriteSingleCoil { unit, address, on })
    }

    pub fn unit(&self) -> u8 {
        match self {
            Self::ReadHolding { unit, .. } | Self::WriteSingleCoil { unit, .. } => *unit,
        }
    }

    pub fn function(&self) -> u8 {
        match self {
            Self::ReadHolding { .. } => FN_READ_HOLDING,
            Self::WriteSingleCoil { .. } => FN_WRITE_SINGLE_COIL,
        }
    }

    /// The RTU frame, CRC included.
    pub fn encode(&self) -> Vec<u8> {
        let (a, b) = match *self {
            Self::ReadHolding {
                start, quantity, ..
            } => (start, quantity),
            Self::WriteSingleCoil { address, on, .. } => (address, if on { 0xFF00 } else { 0 }),
        };
        let [a0, a1] = a.to_be_bytes();
        let [b0, b1] = b.to_be_bytes();
        with_crc(vec![self.unit(), self.function(), a0, a1, b0, b1])
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    ReadHolding { registers: Vec<u16> },
    WriteSingleCoil { address: u16, on: bool },
}

/// Parses a complete response frame to `req` (CRC first, then addressing, then content).
pub fn parse_response(req: &Request, frame: &[u8]) -> Result<Response, ModbusError> {
    let body = strip_crc(frame)?;
    let &[unit, function, ref data @ ..] = body else {
        return Err(ModbusError::Truncated {
            got: frame.len(),
            needed: 5,
        });
    };
    if unit != req.unit() {
        return Err(ModbusError::WrongUnit {
            expected: req.unit(),
            got: unit,
        });
    }
    if function == req.function() | EXCEPTION_BIT {
        return match data {
            &[code] => Err(ModbusError::Exception { code }),
            _ => Err(ModbusError::LengthMismatch),
        };
    }
    if function != req.function() {
        let expected = req.function();
        return Err(ModbusError::WrongFunction {
            expected,
            got: function,
        });
    }
    match *req {
        Request::ReadHolding { quantity, .. } => {
            let (&count, regs) = data.split_first().ok_or(ModbusError::LengthMismatch)?;
            let want = usize::from(quantity) * 2;
            if usize::from(count) != want || regs.len() != want {
                return Err(ModbusError::LengthMismatch);
            }
            let registers = regs
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            Ok(Response::ReadHolding { registers })
        }
        Request::WriteSingleCoil { address, on, .. } => {
            if data.len() != 4 {
                return Err(ModbusError::LengthMismatch);
            }
            if data != &req.encode()[2..6] {
                return Err(ModbusError::EchoMismatch);
            }
            Ok(Response::WriteSingleCoil { address, on })
        }
    }
}

/// Reads one response to `req` from a byte stream. RTU frames are delimited by silence, which
/// the I/O shell owns; this reader instead knows the frame length from the function code and
/// byte count, so it answers as soon as the last byte is in. Bytes before the unit address
/// (line noise when the RS-485 driver turns around) are skipped.
#[derive(Debug)]
pub struct ResponseReader {
    req: Request,
    buf: Vec<u8>,
    skipped: usize,
    done: bool,
}

impl ResponseReader {
    pub fn new(req: Request) -> Self {
        Self {
            req,
            buf: Vec::new(),
            skipped: 0,
            done: false,
        }
    }

    /// Noise bytes skipped before the response started.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// Feeds bytes; returns the outcome once, when the frame is complete or cannot be one.
    /// Bytes after that are ignored (the next request gets a new reader).
    pub fn push(&mut self, data: &[u8]) -> Option<Result<Response, ModbusError>> {
        for &b in data {
            if self.done {
                return None;
            }
            if self.buf.is_empty() && b != self.req.unit() {
                self.skipped += 1;
                continue;
            }
            self.buf.push(b);
            match self.expected_len() {
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
                Ok(Some(n)) if self.buf.len() >= n => {
                    self.done = true;
                    return Some(parse_response(&self.req, &self.buf));
                }
                Ok(_) => {}
            }
        }
        None
    }

    /// Total frame length once the header says it (byte count is a u8, so at most 260).
    pub fn expected_len(&self) -> Result<Option<usize>, ModbusError> {
        let Some(&function) = self.buf.get(1) else {
            return Ok(None);
        };
        let f = self.req.function();
        if function == f | EXCEPTION_BIT {
            return Ok(Some(5));
        }
        match (function == f, self.req) {
            (false, _) => Err(ModbusError::WrongFunction {
                expected: f,
                got: function,
            }),
            (true, Request::ReadHolding { .. }) => {
                Ok(self.buf.get(2).map(|&count| 5 + usize::from(count)))
            }
            (true, Request::WriteSingleCoil { .. }) => Ok(Some(8)),
        }
    }

    /// The error to report when the timeout expires before `push` produced an outcome.
    pub fn timed_out(&self) -> ModbusError {
        match self.expected_len() {
            _ if self.buf.is_empty() => ModbusError::NoResponse,
            Err(e) => e,
            Ok(n) => ModbusError::Truncated {
                got: self.buf.len(),
                needed: n.unwrap_or(5),
            },
        }
    }
}

// ---- Device side (simulators) ----

/// Parses a complete request frame as a module would. `Unsupported` carries the exception
/// to answer with; other errors (CRC, truncation) get no answer, as on a real bus.
pub fn parse_request(frame: &[u8]) -> Result<Request, ModbusError> {
    let body = strip_crc(frame)?;
    let &[unit, function, ref data @ ..] = body else {
        return Err(ModbusError::Truncated {
            got: frame.len(),
            needed: 8,
        });
    };
    let unsupported = |exception| ModbusError::Unsupported {
        unit,
        function,
        exception,
    };
    let &[a0, a1, b0, b1] = data else {
        return Err(unsupported(EXC_ILLEGAL_FUNCTION));
    };
    let (a, b) = (u16::from_be_bytes([a0, a1]), u16::from_be_bytes([b0, b1]));
    match (function, b) {
        (FN_READ_HOLDING, 1..=MAX_READ_REGISTERS) => Ok(Request::ReadHolding {
            unit,
            start: a,
            quantity: b,
        }),
        (FN_WRITE_SINGLE_COIL, 0xFF00 | 0x0000) => Ok(Request::WriteSingleCoil {
            unit,
            address: a,
            on: b == 0xFF00,
        }),
        (FN_READ_HOLDING | FN_WRITE_SINGLE_COIL, _) => Err(unsupported(EXC_ILLEGAL_DATA_VALUE)),
        _ => Err(unsupported(EXC_ILLEGAL_FUNCTION)),
    }
}

/// Splits a module's input stream into requests. Functions 1–6 all have 8-byte requests;
/// any other function code cannot be framed without silence timing, so the buffer is dropped.
#[derive(Debug, Default)]
pub struct RequestReader {
    buf: Vec<u8>,
    out: VecDeque<Result<Request, ModbusError>>,
}

impl RequestReader {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, data: &[u8]) {
        for &b in data {
            self.buf.push(b);
            match self.buf.as_slice() {
                &[unit, function] if !(1..=6).contains(&function) => {
                    let e = ModbusError::Unsupported {
                        unit,
                        function,
                        exception: EXC_ILLEGAL_FUNCTION,
                    };
                    self.out.push_back(Err(e));
                    self.buf.clear();
                }
                frame if frame.len() == 8 => {
                    self.out.push_back(parse_request(frame));
                    self.buf.clear();
                }
                _ => {}
            }
        }
    }

    /// Drops a partial request (call after a silence longer than 3.5 characters).
    pub fn reset(&mut self) {
        self.buf.clear();
    }

    #[allow(clippy::should_implement_trait)] // mirrors the other decoders' push/next shape
    pub fn next(&mut self) -> Option<Result<Request, ModbusError>> {
        self.out.pop_front()
    }
}

/// The response frame a module sends for `response` (at most 125 registers).
pub fn encode_response(unit: u8, response: &Response) -> Result<Vec<u8>, ModbusError> {
    match response {
        Response::ReadHolding { registers } => {
            let count = u8::try_from(registers.len() * 2)
                .ok()
                .filter(|c| *c <= 250)
                .ok_or(ModbusError::InvalidParameter("at most 125 registers"))?;
            let mut f = vec![unit, FN_READ_HOLDING, count];
            f.extend(registers.iter().flat_map(|r| r.to_be_bytes()));
            Ok(with_crc(f))
        }
        // A coil write is answered by echoing the request.
        &Response::WriteSingleCoil { address, on } => {
            Ok(Request::WriteSingleCoil { unit, address, on }.encode())
        }
    }
}

pub fn exception_response(unit: u8, function: u8, code: u8) -> Vec<u8> {
    with_crc(vec![unit, function | EXCEPTION_BIT, code])
}

// ---- Counting rules ----

/// Default plausible maximum of passages per poll per counter; above it is a module reset.
pub const DEFAULT_MAX_PLAUSIBLE: u32 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountOutcome {
    /// First read without a persisted baseline: sets it, counts nothing.
    Baseline,
    Unchanged,
    Passed {
        count: u32,
    },
    /// The module restarted its counter: report `counter_reset` and count `count` (= the new
    /// value) as the passages since the reset.
    Reset {
        previous: u32,
        count: u32,
    },
}

/// One monotonic pass counter (wraps at 2³²). Persist `last()` after every poll so a gateway
/// restart counts from the persisted baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassCounter {
    last: Option<u32>,
    max_plausible: u32,
}

impl Default for PassCounter {
    fn default() -> Self {
        Self::new(None, DEFAULT_MAX_PLAUSIBLE)
    }
}

impl PassCounter {
    pub fn new(baseline: Option<u32>, max_plausible: u32) -> Self {
        Self {
            last: baseline,
            max_plausible,
        }
    }

    pub fn last(&self) -> Option<u32> {
        self.last
    }

    pub fn update(&mut self, new: u32) -> CountOutcome {
        let Some(last) = self.last.replace(new) else {
            return CountOutcome::Baseline;
        };
        match new.wrapping_sub(last) {
            0 => CountOutcome::Unchanged,
            d if d <= self.max_plausible => CountOutcome::Passed { count: d },
            _ => CountOutcome::Reset {
                previous: last,
                count: new,
            },
        }
    }
}

/// Holding registers 0–4 of the default map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateRegisters {
    pub pass_in: u32,
    pub pass_out: u32,
    pub passage_in_progress: bool,
    pub alarm: bool,
}

pub const GATE_REGISTER_COUNT: u16 = 5;

impl GateRegisters {
    /// Decodes registers read from holding 0 (u32 high word first; status bits in 4).
    pub fn from_holding(regs: &[u16]) -> Result<Self, ModbusError> {
        let &[in_hi, in_lo, out_hi, out_lo, status, ..] = regs else {
            return Err(ModbusError::TooFewRegisters {
                got: regs.len(),
                needed: 5,
            });
        };
        Ok(Self {
            pass_in: u32::from(in_hi) << 16 | u32::from(in_lo),
            pass_out: u32::from(out_hi) << 16 | u32::from(out_lo),
            passage_in_progress: status & 0b01 != 0,
            alarm: status & 0b10 != 0,
        })
    }

    /// The inverse, for simulators.
    pub fn to_holding(&self) -> [u16; 5] {
        let status = u16::from(self.passage_in_progress) | u16::from(self.alarm) << 1;
        let w = |v: u32| [(v >> 16) as u16, v as u16];
        let ([a, b], [c, d]) = (w(self.pass_in), w(self.pass_out));
        [a, b, c, d, status]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    /// Alarm input went on: `store.device.status` error, reason `alarm`.
    Rising,
    /// Alarm cleared: `store.device.status` ok.
    Falling,
}

/// Alarm edge detector. Starts from "no alarm", so an alarm already on at the first poll is
/// reported rather than silently taken as the normal state.
#[derive(Debug, Default, Clone, Copy)]
pub struct AlarmTracker {
    on: bool,
}

impl AlarmTracker {
    pub fn update(&mut self, alarm: bool) -> Option<Edge> {
        let was = std::mem::replace(&mut self.on, alarm);
        match (was, alarm) {
            (false, true) => Some(Edge::Rising),
            (true, false) => Some(Edge::Falling),
            _ => None,
        }
    }
}

#[cfg(test)]
#[path = "modbus_tests.rs"]
mod tests;
