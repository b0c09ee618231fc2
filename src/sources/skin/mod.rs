//! Skin analyzer source: the SKN1 line protocol over serial (docs/protocols.md §4). The I/O shell
//! around the pure codec in [`skn1`]: reads the port on its own thread, turns lines into
//! readings or throttled error reports, drops a `model` + `seq` seen within 24 h, and reopens
//! the port after an unplug with capped backoff.
//!
//! The de-duplication survives a restart without the source touching the store: each reading's
//! sighting is saved by the link in the same transaction as its event, the wiring hands the
//! sightings still within the window to [`SkinSource::new`], and the source reports the ones it
//! forgets ([`Observation::SkinForgotten`]) so the link deletes them. So after a crash either
//! both the event and its sighting are stored, or neither is and a resend is accepted.

pub mod settings;
pub mod skn1;

pub use settings::SkinConfig;

use std::io::{self, Read};
use std::time::{Duration, Instant, SystemTime};

use tracing::debug;

use self::skn1::{LineReader, SeqDeduper};
use super::throttle::ErrorThrottle;
use super::{serve_serial_port, DeviceState, Ended, Observation, ReadingSink, SourceError};
use crate::clock::unix_ms;

/// Analyzers write a result at once; a line with no byte for this long is a fragment. Counted
/// from the last byte, so a 16 KiB line at 9600 baud (17 s) is still whole.
const PARTIAL_LINE_TIMEOUT: Duration = Duration::from_secs(1);
/// At most one error report per device per second (as for scanners, docs/protocols.md §1).
const ERROR_REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// How often the sightings that left the window are reported, for the link to delete.
const FORGET_EVERY: Duration = Duration::from_secs(3600);
/// Most forgotten sightings in one report: one report is one transaction, and a device that
/// read fast for a day does not stall the outbox with one huge commit.
const FORGOTTEN_CHUNK: usize = 1_000;
/// The status `reason` for a line the port closed on or that stopped mid-way.
const PARTIAL: &str = "partial";

use crate::shutdown::Shutdown;

/// A reading's `model` + `seq` first seen at `at_ms` (Unix ms), as saved with its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    pub model: String,
    pub seq: u64,
    pub at_ms: u64,
}

pub struct SkinSource {
    config: SkinConfig,
    sink: ReadingSink,
    stop: Shutdown,
    /// The saved sightings still within the window, oldest first (from the wiring).
    saved: Vec<Sighting>,
}

/// What one port session keeps between reads.
struct Session {
    lines: LineReader,
    throttle: ErrorThrottle,
    last_byte: Instant,
    last_reading: Instant,
    silent: bool,
}

impl SkinSource {
    /// `saved`: the sightings still within the de-duplication window, as saved before a
    /// restart (any order).
    pub fn new(
        config: SkinConfig,
        sink: ReadingSink,
        stop: Shutdown,
        mut saved: Vec<Sighting>,
    ) -> Self {
        saved.sort_by_key(|s| s.at_ms);
        SkinSource {
            config,
            sink,
            stop,
            saved,
        }
    }

    /// Runs until stopped or the pipeline closes. Blocking: call on a dedicated thread.
    pub fn run(self) -> Result<(), SourceError> {
        let mut seen = SeqDeduper::default();
        for s in &self.saved {
            seen.is_new(&s.model, s.seq, s.at_ms);
        }
        let mut last_prune = Instant::now();
        let (path, baud) = (self.config.port.clone(), self.config.baud);
        serve_serial_port(&self.sink, &self.stop, &path, baud, |port| {
            self.read_port(port, &mut seen, &mut last_prune)
        })
    }

    fn read_port(
        &self,
        mut port: Box<dyn serialport::SerialPort>,
        seen: &mut SeqDeduper,
        last_prune: &mut Instant,
    ) -> Result<Ended, SourceError> {
        let mut s = Session {
            lines: LineReader::new(),
            throttle: ErrorThrottle::new(ERROR_REPORT_INTERVAL),
            last_byte: Instant::now(),
            last_reading: Instant::now(),
            silent: false,
        };
        let mut buf = [0u8; 4096];
        loop {
            if self.stop.is_stopped() {
                return Ok(Ended::Stopped);
            }
            let now = Instant::now();
            match port.read(&mut buf) {
                Ok(0) => return Ok(Ended::Lost(io::Error::from(io::ErrorKind::UnexpectedEof))),
                Ok(n) => {
                    s.last_byte = now;
                    s.lines.push(&buf[..n]);
                    self.drain(&mut s, seen, now)?;
                }
                Err(e)
                    if e.kind() == io::ErrorKind::TimedOut
                        || e.kind() == io::ErrorKind::Interrupted =>
                {
                    if now.duration_since(s.last_byte) >= PARTIAL_LINE_TIMEOUT && s.lines.reset() {
                        self.reject(&mut s.throttle, PARTIAL, now)?;
                    }
                    self.check_silent(&mut s, now)?;
                    if last_prune.elapsed() >= FORGET_EVERY {
                        *last_prune = Instant::now();
                        self.report_forgotten(seen)?;
                    }
                }
                Err(e) => {
                    if s.lines.reset() {
                        self.reject(&mut s.throttle, PARTIAL, now)?;
                    }
                    // The port is gone: report what the throttle still holds now.
                    self.sink
                        .error_report(s.throttle.due(now + ERROR_REPORT_INTERVAL))?;
                    return Ok(Ended::Lost(e));
                }
            }
            self.sink.error_report(s.throttle.due(now))?;
        }
    }

    /// Hands on every complete line: new readings as observations, rejections as reports.
    fn drain(
        &self,
        s: &mut Session,
        seen: &mut SeqDeduper,
        now: Instant,
    ) -> Result<(), SourceError> {
        while let Some(line) = s.lines.next() {
            match line {
                Ok(reading) => {
                    s.last_reading = now;
                    if s.silent {
                        s.silent = false;
                        self.sink.status(DeviceState::Up, "reading again", None)?;
                    }
                    let at = SystemTime::now();
                    let new = match reading.seq {
                        Some(seq) => seen.is_new(&reading.model, seq, unix_ms(at)),
                        None => true,
                    };
                    if new {
                        self.sink.emit_at(at, Observation::Skin(reading))?;
                    } else {
                        debug!(device = self.sink.device(), model = %reading.model, seq = ?reading.seq, "repeated reading dropped");
                    }
                }
                Err(why) => {
                    debug!(device = self.sink.device(), reason = %why, "skin line rejected");
                    self.reject(&mut s.throttle, why.reason(), now)?;
                }
            }
        }
        Ok(())
    }

    fn check_silent(&self, s: &mut Session, now: Instant) -> Result<(), SourceError> {
        if let Some(after) = self.config.silent_after {
            if !s.silent && now.duration_since(s.last_reading) >= after {
                s.silent = true;
                let reason = format!("no reading for {}", crate::words::duration(after));
                self.sink.status(DeviceState::Silent, reason, None)?;
            }
        }
        Ok(())
    }

    fn reject(
        &self,
        throttle: &mut ErrorThrottle,
        reason: &'static str,
        now: Instant,
    ) -> Result<(), SourceError> {
        crate::metrics::SKIN_REJECTED.inc();
        self.sink.error_report(throttle.record(reason, now))
    }

    /// Reports the sightings that left the window (or the cap) since the last report: the link
    /// deletes their saved keys, which would otherwise pile up forever.
    fn report_forgotten(&self, seen: &mut SeqDeduper) -> Result<(), SourceError> {
        seen.forget_expired(unix_ms(SystemTime::now()));
        let forgotten = seen.take_forgotten();
        for chunk in forgotten.chunks(FORGOTTEN_CHUNK) {
            self.sink.emit(Observation::SkinForgotten(chunk.to_vec()))?;
        }
        Ok(())
    }
}
