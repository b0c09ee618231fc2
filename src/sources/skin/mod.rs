//! Skin analyzer source: the SKN1 line protocol over serial (docs/protocols.md §4). The I/O shell
//! around the pure codec in [`skn1`]: reads the port on its own thread, turns lines into
//! readings or throttled error reports, drops a `model` + `seq` seen within 24 h, and reopens
//! the port after an unplug with capped backoff.
//!
//! The de-duplication survives a restart: each reading's key (`skin/seen/{device}/{model}/
//! {seq}` → first sighting, ms) is written by the link in the same transaction as its event
//! ([`seen_state`]), and loaded here when the source starts. So after a crash either both the
//! event and its key are stored, or neither is and a resend is accepted.

pub mod settings;
pub mod skn1;

pub use settings::SkinConfig;

use std::io::{self, Read};
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, warn};

use self::skn1::{LineReader, SeqDeduper, SkinReading};
use super::throttle::ErrorThrottle;
use super::{serve_serial_port, DeviceState, Ended, Observation, ReadingSink, SourceError};
use crate::clock::unix_ms;
use crate::outbox::{OutboxHandle, StateWrite};

/// Analyzers write a result at once; a line with no byte for this long is a fragment. Counted
/// from the last byte, so a 16 KiB line at 9600 baud (17 s) is still whole.
const PARTIAL_LINE_TIMEOUT: Duration = Duration::from_secs(1);
/// At most one error report per device per second (as for scanners, docs/protocols.md §1).
const ERROR_REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// How often persisted de-duplication keys past the window are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// The status `reason` for a line the port closed on or that stopped mid-way.
const PARTIAL: &str = "partial";

use crate::outbox::keys::skin_seen_prefix as seen_prefix;
use crate::shutdown::Shutdown;

/// The state written with a reading's event so its `model` + `seq` is still known after a
/// restart (`None` when the reading has no `seq`: it cannot repeat).
pub fn seen_state(device: &str, reading: &SkinReading, at: SystemTime) -> Option<StateWrite> {
    let seq = reading.seq?;
    let key = crate::outbox::keys::skin_seen(device, &reading.model, seq);
    Some((key, Some(unix_ms(at).to_string().into_bytes())))
}

pub struct SkinSource {
    config: SkinConfig,
    sink: ReadingSink,
    outbox: OutboxHandle,
    stop: Shutdown,
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
    pub fn new(
        config: SkinConfig,
        sink: ReadingSink,
        outbox: OutboxHandle,
        stop: Shutdown,
    ) -> Self {
        SkinSource {
            config,
            sink,
            outbox,
            stop,
        }
    }

    /// Runs until stopped or the pipeline closes. Blocking: call on a dedicated thread.
    pub fn run(self) -> Result<(), SourceError> {
        let mut seen = self.load_seen();
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
                    if last_prune.elapsed() >= PRUNE_EVERY {
                        *last_prune = Instant::now();
                        self.prune_seen();
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

    /// The persisted sightings still within the window; older ones are deleted.
    fn load_seen(&self) -> SeqDeduper {
        let mut seen = SeqDeduper::default();
        let entries = match self.outbox.state_blocking(&seen_prefix(self.sink.device())) {
            Ok(e) => e,
            Err(e) => {
                // Not fatal: the worst case is one duplicate of a reading resent right now.
                warn!(device = self.sink.device(), error = %e, "cannot load the skin de-duplication state");
                return seen;
            }
        };
        let now = unix_ms(SystemTime::now());
        let (live, stale) = split_seen(self.sink.device(), entries, now);
        for (model, seq, at) in live {
            seen.is_new(&model, seq, at);
        }
        self.delete_keys(stale);
        debug!(
            device = self.sink.device(),
            loaded = seen.len(),
            "skin de-duplication state loaded"
        );
        seen
    }

    /// Deletes persisted sightings past the window (the deduper forgets them by itself).
    fn prune_seen(&self) {
        match self.outbox.state_blocking(&seen_prefix(self.sink.device())) {
            Ok(entries) => {
                let now = unix_ms(SystemTime::now());
                let (_, stale) = split_seen(self.sink.device(), entries, now);
                self.delete_keys(stale);
            }
            Err(e) => {
                warn!(device = self.sink.device(), error = %e, "cannot prune the skin de-duplication state")
            }
        }
    }

    fn delete_keys(&self, keys: Vec<String>) {
        for key in keys {
            if let Err(e) = self.outbox.put_state_blocking(key, None) {
                warn!(device = self.sink.device(), error = %e, "cannot delete a stale de-duplication key");
                return;
            }
        }
    }
}

/// Persisted sightings → the live ones `(model, seq, first_ms)` in time order, and the keys
/// of stale or unreadable ones.
fn split_seen(
    device: &str,
    entries: Vec<(String, Vec<u8>)>,
    now_ms: u64,
) -> (Vec<(String, u64, u64)>, Vec<String>) {
    let prefix = seen_prefix(device);
    let mut live = Vec::new();
    let mut stale = Vec::new();
    for (key, value) in entries {
        let parsed = key
            .strip_prefix(&prefix)
            .and_then(|rest| rest.rsplit_once('/'))
            .and_then(|(model, seq)| Some((model.to_owned(), seq.parse::<u64>().ok()?)))
            .zip(
                std::str::from_utf8(&value)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok()),
            );
        match parsed {
            Some(((model, seq), at)) if now_ms.saturating_sub(at) < skn1::DEDUP_WINDOW_MS => {
                live.push((model, seq, at))
            }
            _ => stale.push(key),
        }
    }
    live.sort_by_key(|&(_, _, at)| at);
    (live, stale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(model: &str, seq: Option<u64>) -> SkinReading {
        SkinReading {
            model: model.into(),
            seq,
            device_time: None,
            measures: [("moisture".to_string(), 40.0)].into(),
            extra: Default::default(),
            skin_type: None,
        }
    }

    #[test]
    fn seen_state_round_trips_through_split() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(5_000);
        let (key, value) = seen_state("skin-1", &reading("AX/200", Some(7)), at).unwrap();
        assert_eq!(key, "skin/seen/skin-1/AX/200/7");
        let entries = vec![(key.clone(), value.unwrap())];
        let (live, stale) = split_seen("skin-1", entries.clone(), 6_000);
        assert_eq!(live, vec![("AX/200".to_string(), 7, 5_000)]);
        assert!(stale.is_empty());
        let (live, stale) = split_seen("skin-1", entries, 5_000 + skn1::DEDUP_WINDOW_MS);
        assert!(live.is_empty());
        assert_eq!(stale, vec![key]);
        assert!(seen_state("skin-1", &reading("AX", None), at).is_none());
    }

    #[test]
    fn unreadable_state_is_stale_not_fatal() {
        let entries = vec![
            ("skin/seen/d/M/x".to_string(), b"1".to_vec()),
            ("skin/seen/d/M/3".to_string(), b"soon".to_vec()),
        ];
        let (live, stale) = split_seen("d", entries, 10);
        assert!(live.is_empty());
        assert_eq!(stale.len(), 2);
    }
}
