//! Serial barcode / QR scanner source (PROTOCOLS.md §1): reads lines from a serial port on its
//! own thread, turns them into codes or throttled error reports, and reopens the port after an
//! unplug with capped backoff.

mod framing;

pub use framing::{
    decode_line, symbology, ErrorThrottle, Framing, Line, LineSplitter, Rejection, RepeatFilter,
    ScannedCode, Terminator,
};

use std::io::{self, Read};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::{Backoff, DeviceState, Observation, ReadingSink, SourceError, StopFlag};
use crate::config::ScannerConfig;

/// How long a read blocks before the thread checks the stop flag and its timers.
const READ_TICK: Duration = Duration::from_millis(100);
/// Scanners send a line at once; a line still unterminated after this is a fragment.
const PARTIAL_LINE_TIMEOUT: Duration = Duration::from_secs(1);
/// At most one error report per device per second (PROTOCOLS.md §1).
const ERROR_REPORT_INTERVAL: Duration = Duration::from_secs(1);
const REOPEN_MIN: Duration = Duration::from_millis(200);
const REOPEN_MAX: Duration = Duration::from_secs(5);

pub struct ScannerSource {
    config: ScannerConfig,
    sink: ReadingSink,
    stop: StopFlag,
}

/// How a port session ended.
enum Ended {
    Stopped,
    Lost(io::Error),
}

impl ScannerSource {
    pub fn new(config: ScannerConfig, sink: ReadingSink, stop: StopFlag) -> Self {
        ScannerSource { config, sink, stop }
    }

    /// Runs until stopped or the pipeline closes. Blocking: call on a dedicated thread.
    pub fn run(self) -> Result<(), SourceError> {
        let mut backoff = Backoff::new(REOPEN_MIN, REOPEN_MAX);
        let mut reported_down: Option<String> = None;
        while !self.stop.is_stopped() {
            match self.open() {
                Ok(port) => {
                    info!(device = self.sink.device(), port = %self.config.port.display(), "scanner up");
                    self.sink.status(DeviceState::Up, "opened", None)?;
                    backoff.reset();
                    match self.read_port(port)? {
                        Ended::Stopped => break,
                        Ended::Lost(e) => {
                            warn!(device = self.sink.device(), error = %e, "scanner port lost");
                            let reason = format!("port lost: {e}");
                            self.sink.status(DeviceState::Down, &reason, None)?;
                            reported_down = Some(reason);
                        }
                    }
                }
                Err(e) => {
                    let reason = format!("cannot open {}: {e}", self.config.port.display());
                    // One report per outage, not one per retry.
                    if reported_down.is_none() {
                        warn!(device = self.sink.device(), "{reason}");
                        self.sink.status(DeviceState::Down, &reason, None)?;
                        reported_down = Some(reason);
                    } else {
                        debug!(device = self.sink.device(), "{reason}");
                    }
                }
            }
            if self.stop.sleep(backoff.next_delay()) {
                break;
            }
        }
        Ok(())
    }

    fn open(&self) -> serialport::Result<Box<dyn serialport::SerialPort>> {
        serialport::new(self.config.port.to_string_lossy(), self.config.baud)
            .timeout(READ_TICK)
            .open()
    }

    fn read_port(&self, mut port: Box<dyn serialport::SerialPort>) -> Result<Ended, SourceError> {
        let framing = &self.config.framing;
        let mut splitter = LineSplitter::new(framing);
        let mut repeats = RepeatFilter::new(self.config.dedupe_window);
        let mut throttle = ErrorThrottle::new(ERROR_REPORT_INTERVAL);
        let mut buf = [0u8; 4096];
        let mut lines = Vec::new();
        let mut last_byte = Instant::now();
        let mut last_code = Instant::now();
        let mut silent = false;
        loop {
            if self.stop.is_stopped() {
                return Ok(Ended::Stopped);
            }
            let now = Instant::now();
            match port.read(&mut buf) {
                Ok(0) => return Ok(Ended::Lost(io::Error::from(io::ErrorKind::UnexpectedEof))),
                Ok(n) => {
                    last_byte = now;
                    splitter.push(&buf[..n], &mut lines);
                    for line in lines.drain(..) {
                        let decoded = match line {
                            Line::Complete(bytes) => decode_line(framing, &bytes),
                            Line::TooLong => Err(Rejection::TooLong),
                        };
                        match decoded {
                            Ok(code) => {
                                last_code = now;
                                if silent {
                                    silent = false;
                                    self.sink.status(DeviceState::Up, "reading again", None)?;
                                }
                                if !repeats.is_repeat(&code.payload, now) {
                                    self.sink.emit(Observation::Code(code))?;
                                }
                            }
                            Err(why) => self.reject(&mut throttle, why, now)?,
                        }
                    }
                }
                Err(e)
                    if e.kind() == io::ErrorKind::TimedOut
                        || e.kind() == io::ErrorKind::Interrupted =>
                {
                    if now.duration_since(last_byte) >= PARTIAL_LINE_TIMEOUT {
                        if let Some(why) = splitter.discard_partial() {
                            self.reject(&mut throttle, why, now)?;
                        }
                    }
                    if let Some(after) = self.config.silent_after {
                        if !silent && now.duration_since(last_code) >= after {
                            silent = true;
                            let reason =
                                format!("no code for {}", humantime::format_duration(after));
                            self.sink.status(DeviceState::Silent, reason, None)?;
                        }
                    }
                }
                Err(e) => {
                    if let Some(why) = splitter.discard_partial() {
                        self.reject(&mut throttle, why, now)?;
                    }
                    self.flush_errors(&mut throttle, now + ERROR_REPORT_INTERVAL)?;
                    return Ok(Ended::Lost(e));
                }
            }
            self.flush_errors(&mut throttle, now)?;
        }
    }

    fn reject(
        &self,
        throttle: &mut ErrorThrottle,
        why: Rejection,
        now: Instant,
    ) -> Result<(), SourceError> {
        debug!(
            device = self.sink.device(),
            reason = why.reason(),
            "scanner line rejected"
        );
        crate::metrics::SCANNER_REJECTED.inc();
        match throttle.record(why.reason(), now) {
            Some((reason, count)) => self.sink.status(DeviceState::Error, reason, Some(count)),
            None => Ok(()),
        }
    }

    fn flush_errors(&self, throttle: &mut ErrorThrottle, now: Instant) -> Result<(), SourceError> {
        match throttle.due(now) {
            Some((reason, count)) => self.sink.status(DeviceState::Error, reason, Some(count)),
            None => Ok(()),
        }
    }
}
