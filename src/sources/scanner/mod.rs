//! Serial barcode / QR scanner source (docs/protocols.md §1): reads lines from a serial port on its
//! own thread, turns them into codes or throttled error reports, and reopens the port after an
//! unplug with capped backoff.

pub mod framing;
pub mod settings;

pub use settings::ScannerConfig;

pub use framing::{
    decode_line, symbology, Framing, Line, LineSplitter, Rejection, ScannedCode, Terminator,
};

use std::io::{self, Read};
use std::time::{Duration, Instant};

use tracing::debug;

use super::repeat::RepeatFilter;
use super::throttle::ErrorThrottle;
use super::{serve_serial_port, DeviceState, Ended, Observation, ReadingSink, SourceError};
use crate::shutdown::Shutdown;

/// Scanners send a line at once; a line still unterminated after this is a fragment.
const PARTIAL_LINE_TIMEOUT: Duration = Duration::from_secs(1);
/// At most one error report per device per second (docs/protocols.md §1).
const ERROR_REPORT_INTERVAL: Duration = Duration::from_secs(1);

pub struct ScannerSource {
    config: ScannerConfig,
    sink: ReadingSink,
    stop: Shutdown,
}

impl ScannerSource {
    pub fn new(config: ScannerConfig, sink: ReadingSink, stop: Shutdown) -> Self {
        ScannerSource { config, sink, stop }
    }

    /// Runs until stopped or the pipeline closes. Blocking: call on a dedicated thread.
    pub fn run(self) -> Result<(), SourceError> {
        let (path, baud) = (self.config.port.clone(), self.config.baud);
        serve_serial_port(&self.sink, &self.stop, &path, baud, |port| {
            self.read_port(port)
        })
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
                            let reason = format!("no code for {}", crate::words::duration(after));
                            self.sink.status(DeviceState::Silent, reason, None)?;
                        }
                    }
                }
                Err(e) => {
                    if let Some(why) = splitter.discard_partial() {
                        self.reject(&mut throttle, why, now)?;
                    }
                    self.sink
                        .error_report(throttle.due(now + ERROR_REPORT_INTERVAL))?;
                    return Ok(Ended::Lost(e));
                }
            }
            self.sink.error_report(throttle.due(now))?;
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
        self.sink.error_report(throttle.record(why.reason(), now))
    }
}
