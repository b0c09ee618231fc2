//! The host side of PN532 exchanges over HSU (docs/protocols.md §2): wake-up, command, ACK (resent
//! once when missing), response (NACKed once when damaged), each within its timeout. The frames
//! themselves come from the pure codec in `pn532`; this is the thin I/O shell around it.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use serialport::{ClearBuffer, SerialPort};
use tracing::debug;

use super::pn532::{self, FirmwareVersion, FrameError, PayloadError, Pn532Frame, Target};

/// §2: no ACK within 30 ms → resend once. Counted from the end of our write: at 115200 baud the
/// longest command here (wake-up included, 28 bytes) is on the wire in under 3 ms.
pub const ACK_TIMEOUT: Duration = Duration::from_millis(30);
/// §2: the default response timeout, counted from the ACK (or from our NACK).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_millis(100);
/// §2: InListPassiveTarget gets longer, the reader tries to activate a card (2 retries).
pub const POLL_TIMEOUT: Duration = Duration::from_millis(150);
/// A UART write without flow control does not block; one that does means the port is gone.
const WRITE_TIMEOUT: Duration = Duration::from_millis(200);
/// §2, RFConfiguration item 5: ATR retries ∞, PSL 1, passive activation 2, so "no card" is
/// the quick answer `4B 00` instead of an endless wait.
const MAX_RETRIES: (u8, u8, u8) = (0xFF, 0x01, 0x02);

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The port failed (unplugged): report the reader down, close the port, reopen it.
    #[error("port: {0}")]
    Io(#[from] io::Error),
    /// Neither the command nor its resend was ACKed: report, re-initialise.
    #[error("no ACK to command {0:#04x}, nor to its resend")]
    NoAck(u8),
    /// ACKed but unanswered: report, re-initialise.
    #[error("no response to command {code:#04x} within {ms} ms")]
    NoResponse { code: u8, ms: u128 },
    /// The response was damaged, NACKed, and damaged again: report, re-initialise.
    #[error("response to command {code:#04x} damaged twice: {error}")]
    Damaged { code: u8, error: FrameError },
    /// The PN532 answered with its application error frame: report, re-initialise.
    #[error("PN532 refused command {0:#04x} (application error frame)")]
    Refused(u8),
    /// A well-formed response we cannot use: report, re-initialise.
    #[error("bad response to command {code:#04x}: {error}")]
    Payload { code: u8, error: PayloadError },
    /// Something else answers on this port: report, keep re-initialising (it may be replaced).
    #[error("not a PN532: firmware reports IC {0:#04x}")]
    NotPn532(u8),
}

impl ExchangeError {
    fn payload(code: u8) -> impl FnOnce(PayloadError) -> ExchangeError {
        move |error| ExchangeError::Payload { code, error }
    }
}

/// One PN532 on one open port.
pub struct Host {
    port: Box<dyn SerialPort>,
    decoder: pn532::FrameDecoder,
    /// Send the wake-up preamble before the next command (after open and after any error).
    wake: bool,
    /// Decoder bytes already counted in the metric.
    discarded: u64,
}

impl Host {
    pub fn new(port: Box<dyn SerialPort>) -> Host {
        Host {
            port,
            decoder: pn532::FrameDecoder::new(),
            wake: true,
            discarded: 0,
        }
    }

    /// After an error: the next command is preceded by the HSU wake-up.
    pub fn wake_next(&mut self) {
        self.wake = true;
    }

    /// GetFirmwareVersion, checked to be a PN532 (IC 0x32).
    pub fn firmware_version(&mut self) -> Result<FirmwareVersion, ExchangeError> {
        let code = pn532::CMD_GET_FIRMWARE_VERSION;
        let frame = self.exchange(code, &pn532::get_firmware_version(), RESPONSE_TIMEOUT)?;
        let fw = pn532::parse_firmware_version(&frame).map_err(ExchangeError::payload(code))?;
        if !fw.is_pn532() {
            return Err(ExchangeError::NotPn532(fw.ic));
        }
        Ok(fw)
    }

    /// SAMConfiguration (normal mode) then RFConfiguration MaxRetries: the reader's set-up.
    pub fn configure(&mut self) -> Result<(), ExchangeError> {
        let code = pn532::CMD_SAM_CONFIGURATION;
        let frame = self.exchange(code, &pn532::sam_configuration(), RESPONSE_TIMEOUT)?;
        pn532::parse_empty_response(&frame, code).map_err(ExchangeError::payload(code))?;
        let code = pn532::CMD_RF_CONFIGURATION;
        let (atr, psl, activation) = MAX_RETRIES;
        let command = pn532::rf_configuration_max_retries(atr, psl, activation);
        let frame = self.exchange(code, &command, RESPONSE_TIMEOUT)?;
        pn532::parse_empty_response(&frame, code).map_err(ExchangeError::payload(code))
    }

    /// One poll: the card in the field, if any.
    pub fn in_list_passive_target(&mut self) -> Result<Option<Target>, ExchangeError> {
        let code = pn532::CMD_IN_LIST_PASSIVE_TARGET;
        let frame = self.exchange(code, &pn532::in_list_passive_target(), POLL_TIMEOUT)?;
        pn532::parse_in_list_passive_target(&frame).map_err(ExchangeError::payload(code))
    }

    /// InRelease of every target, so a card left in the field answers the next poll.
    pub fn in_release(&mut self) -> Result<(), ExchangeError> {
        let code = pn532::CMD_IN_RELEASE;
        let frame = self.exchange(code, &pn532::in_release(0), RESPONSE_TIMEOUT)?;
        pn532::parse_in_release(&frame).map_err(ExchangeError::payload(code))
    }

    /// An ACK from the host aborts the PN532's current command (on shutdown).
    pub fn abort(&mut self) -> io::Result<()> {
        self.send(&pn532::ACK)
    }

    /// Sends `command` (whose code is `code`) and returns its response frame.
    fn exchange(
        &mut self,
        code: u8,
        command: &[u8],
        timeout: Duration,
    ) -> Result<Pn532Frame, ExchangeError> {
        // The host leads every exchange: whatever arrived before this command answers nothing
        // we wait for (a late response, the answer to an earlier NACK, line noise).
        self.decoder.reset();
        self.port
            .clear(ClearBuffer::Input)
            .map_err(io::Error::from)?;
        let result = self.exchange_inner(code, command, timeout);
        let discarded = self.decoder.discarded();
        crate::metrics::NFC_BYTES_DISCARDED.add(discarded - self.discarded);
        self.discarded = discarded;
        result
    }

    fn exchange_inner(
        &mut self,
        code: u8,
        command: &[u8],
        timeout: Duration,
    ) -> Result<Pn532Frame, ExchangeError> {
        if self.wake {
            self.send(&[pn532::WAKEUP.as_slice(), command].concat())?;
            self.wake = false;
        } else {
            self.send(command)?;
        }
        if !self.await_ack()? {
            debug!(code, "PN532: no ACK within 30 ms, resending once");
            self.send(command)?;
            if !self.await_ack()? {
                return Err(ExchangeError::NoAck(code));
            }
        }
        let mut deadline = Instant::now() + timeout;
        let mut nacked = false;
        loop {
            let Some(item) = self.next_item(deadline)? else {
                return Err(ExchangeError::NoResponse {
                    code,
                    ms: timeout.as_millis(),
                });
            };
            match item {
                Ok(frame) if pn532::response_params(&frame, code).is_ok() => return Ok(frame),
                Ok(Pn532Frame::AppError) => return Err(ExchangeError::Refused(code)),
                // A repeated ACK or a stale response: not ours. (Never Debug a frame here, it
                // may hold a card's UID.)
                Ok(_) => debug!(code, "PN532: skipping a frame that is not the response"),
                Err(e) if e.is_checksum_error() && !nacked => {
                    debug!(code, error = %e, "PN532: damaged response, sending NACK");
                    nacked = true;
                    self.send(&pn532::NACK)?;
                    deadline = Instant::now() + timeout;
                }
                Err(error) if error.is_checksum_error() => {
                    return Err(ExchangeError::Damaged { code, error })
                }
                // Length or TFI nonsense: line noise the decoder has already skipped.
                Err(e) => debug!(code, error = %e, "PN532: skipping a malformed frame"),
            }
        }
    }

    /// Waits up to `ACK_TIMEOUT` for an ACK; anything else meanwhile is stale or noise.
    fn await_ack(&mut self) -> io::Result<bool> {
        let deadline = Instant::now() + ACK_TIMEOUT;
        while let Some(item) = self.next_item(deadline)? {
            if item == Ok(Pn532Frame::Ack) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The next decoded item, reading the port until `deadline`; None when it passed.
    fn next_item(
        &mut self,
        deadline: Instant,
    ) -> io::Result<Option<Result<Pn532Frame, FrameError>>> {
        let mut buf = [0u8; 512];
        loop {
            if let Some(item) = self.decoder.next() {
                return Ok(Some(item));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.port.set_timeout(left).map_err(io::Error::from)?;
            match self.port.read(&mut buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.decoder.push(&buf[..n]),
                Err(e)
                    if e.kind() == io::ErrorKind::TimedOut
                        || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.port
            .set_timeout(WRITE_TIMEOUT)
            .map_err(io::Error::from)?;
        self.port.write_all(bytes)
    }
}
