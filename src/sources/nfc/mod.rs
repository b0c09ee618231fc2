//! NFC reader source: NXP PN532 over HSU (docs/protocols.md §2). The frames are the pure codec in
//! [`pn532`]; the exchange rules (wake-up, ACK and resend, NACK, timeouts) are `host`; this
//! module runs the reader's life on its own thread: open the port, initialise the reader, poll
//! it, turn sightings into taps, re-initialise it when it errs and reopen it when unplugged.

mod host;
pub mod pn532;
pub mod settings;

pub use settings::NfcConfig;

pub use pn532::CardType;

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use self::host::{ExchangeError, Host};
use self::pn532::TapTracker;
use super::{
    supervise, DeviceState, Ended, Observation, Outage, ReadingSink, SourceError, Supervised,
};
use crate::backoff::Backoff;
use crate::shutdown::Shutdown;

/// Re-initialisation while the reader keeps failing (§2: capped backoff). The first retry is
/// quick: most failures are one lost frame.
const REINIT_MIN: Duration = Duration::from_millis(100);
const REINIT_MAX: Duration = Duration::from_secs(5);

/// A card's UID as read. It identifies a person's card, so it stays in memory: events carry
/// only its keyed hash (docs/protocols.md §6), and `Debug` shows only its length so that it cannot
/// reach a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct CardUid(Vec<u8>);

impl CardUid {
    pub fn new(bytes: Vec<u8>) -> Self {
        CardUid(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for CardUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CardUid({} bytes)", self.0.len())
    }
}

/// A card newly tapped on a reader (the tap rule of §2 already applied).
#[derive(Debug, Clone)]
pub struct NfcTap {
    pub uid: CardUid,
    pub card_type: CardType,
    /// SEL_RES as read; the event shows it for an `unknown` card type.
    pub sel_res: u8,
    /// 4 bytes starting `08`: random per activation, so no identity (never hashed or mapped).
    pub random_uid: bool,
}

impl NfcTap {
    pub fn new(uid: Vec<u8>, sel_res: u8) -> Self {
        let target = pn532::Target::new([0, 0], sel_res, uid, None);
        Self::from(target)
    }
}

impl From<pn532::Target> for NfcTap {
    fn from(t: pn532::Target) -> Self {
        NfcTap {
            random_uid: t.is_random_uid(),
            card_type: t.card_type,
            sel_res: t.sel_res,
            uid: CardUid(t.uid),
        }
    }
}

/// What HQ was last told about the reader, so that each change is reported once, not once per
/// retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Told {
    Nothing,
    Up,
    Down,
    Error,
    Silent,
}

/// Why a step of the reader's life did not complete.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// The reader or its port failed: re-initialise, or reopen when the port is gone.
    #[error(transparent)]
    Reader(#[from] ExchangeError),
    /// The pipeline is gone (shutdown): stop.
    #[error(transparent)]
    Pipeline(#[from] SourceError),
}

pub struct NfcSource {
    config: NfcConfig,
    sink: ReadingSink,
    stop: Shutdown,
}

/// A reader's part in the supervision loop: `up` is reported once the reader answers its
/// initialisation, not when the port opens.
struct Reader<'a> {
    source: &'a NfcSource,
    taps: TapTracker,
    told: Told,
}

impl Supervised for Reader<'_> {
    type Port = Box<dyn serialport::SerialPort>;

    fn open(&mut self) -> io::Result<Self::Port> {
        let c = &self.source.config;
        Ok(serialport::new(c.port.to_string_lossy(), c.baud)
            .timeout(host::RESPONSE_TIMEOUT)
            .open()?)
    }

    fn opened(&mut self) -> Result<(), SourceError> {
        let s = self.source;
        debug!(device = s.sink.device(), port = %s.config.port.display(), "nfc port open");
        Ok(())
    }

    fn serve(&mut self, port: Self::Port) -> Result<Ended, SourceError> {
        self.source
            .session(Host::new(port), &mut self.taps, &mut self.told)
    }

    fn down(&mut self, outage: Outage) -> Result<(), SourceError> {
        let s = self.source;
        let reason = outage.reason(&s.config.port);
        match &outage {
            Outage::Lost(e) => warn!(device = s.sink.device(), error = %e, "nfc reader port lost"),
            // One report per outage, not one per retry (`tell` says each change once).
            Outage::CannotOpen(_) if self.told != Told::Down => {
                warn!(device = s.sink.device(), "{reason}")
            }
            Outage::CannotOpen(_) => {}
        }
        s.tell(&mut self.told, DeviceState::Down, reason)
    }
}

impl NfcSource {
    pub fn new(config: NfcConfig, sink: ReadingSink, stop: Shutdown) -> Self {
        NfcSource { config, sink, stop }
    }

    /// Runs until stopped or the pipeline closes. Blocking: call on a dedicated thread.
    pub fn run(self) -> Result<(), SourceError> {
        let mut reader = Reader {
            source: &self,
            // One tracker for the reader's life: a card held through a quick replug is one tap.
            taps: TapTracker::default(),
            told: Told::Nothing,
        };
        supervise(&mut reader, &self.stop)
    }

    /// One open port: initialise, poll every interval, re-initialise after failures with
    /// capped backoff, until the port is lost or the source stops.
    fn session(
        &self,
        mut host: Host,
        taps: &mut TapTracker,
        told: &mut Told,
    ) -> Result<Ended, SourceError> {
        let mut retry = Backoff::new(REINIT_MIN, REINIT_MAX);
        // GetFirmwareVersion once per open port; §2's re-initialisation is SAM + RF only.
        let mut firmware = None;
        let mut ready = false;
        let mut last_tap = Instant::now();
        while !self.stop.is_stopped() {
            let started = Instant::now();
            let step = if ready {
                self.poll(&mut host, taps, told, &mut last_tap)
            } else {
                self.initialise(&mut host, &mut firmware, told)
            };
            let delay = match step {
                Ok(()) => {
                    if !ready {
                        ready = true;
                        retry.reset();
                        last_tap = Instant::now();
                    }
                    let next = started + self.config.poll_interval;
                    next.saturating_duration_since(Instant::now())
                }
                Err(Failure::Pipeline(e)) => return Err(e),
                Err(Failure::Reader(ExchangeError::Io(e))) => return Ok(Ended::Lost(e)),
                Err(Failure::Reader(e)) => {
                    crate::metrics::NFC_FAILURES.inc();
                    if *told == Told::Error {
                        debug!(device = self.sink.device(), error = %e, "nfc reader still erring");
                    } else {
                        warn!(device = self.sink.device(), error = %e, "nfc reader erring; re-initialising");
                    }
                    self.tell(told, DeviceState::Error, e.to_string())?;
                    host.wake_next();
                    ready = false;
                    retry.next_delay()
                }
            };
            self.stop.sleep(delay);
        }
        if let Err(e) = host.abort() {
            debug!(device = self.sink.device(), error = %e, "nfc: cannot send the abort ACK");
        }
        Ok(Ended::Stopped)
    }

    /// (Re-)initialises the reader and reports it up.
    fn initialise(
        &self,
        host: &mut Host,
        firmware: &mut Option<pn532::FirmwareVersion>,
        told: &mut Told,
    ) -> Result<(), Failure> {
        let fw = match *firmware {
            Some(fw) => fw,
            None => *firmware.insert(host.firmware_version()?),
        };
        host.configure()?;
        let how = if *told == Told::Error {
            "recovered"
        } else {
            "ready"
        };
        info!(
            device = self.sink.device(),
            version = fw.ver,
            revision = fw.rev,
            "nfc reader {how}"
        );
        let reason = format!("{how}: PN532 v{}.{}", fw.ver, fw.rev);
        Ok(self.tell(told, DeviceState::Up, reason)?)
    }

    /// One poll cycle: InListPassiveTarget, the tap rule, InRelease after a card.
    fn poll(
        &self,
        host: &mut Host,
        taps: &mut TapTracker,
        told: &mut Told,
        last_tap: &mut Instant,
    ) -> Result<(), Failure> {
        let Some(target) = host.in_list_passive_target()? else {
            return Ok(self.check_silent(told, *last_tap)?);
        };
        let now = Instant::now();
        if taps.observe(&target.uid, now) {
            *last_tap = now;
            if *told == Told::Silent {
                self.tell(told, DeviceState::Up, "tapped again")?;
            }
            let tap = NfcTap::from(target);
            debug!(
                device = self.sink.device(),
                card_type = tap.card_type.as_str(),
                uid_len = tap.uid.as_bytes().len(),
                "nfc tap"
            );
            self.sink.emit(Observation::NfcTap(tap))?;
        }
        // Deselect, so the card answers the next poll while it stays in the field.
        Ok(host.in_release()?)
    }

    fn check_silent(&self, told: &mut Told, last_tap: Instant) -> Result<(), SourceError> {
        match self.config.silent_after {
            Some(after) if *told == Told::Up && last_tap.elapsed() >= after => {
                let reason = format!("no tap for {}", crate::words::duration(after));
                self.tell(told, DeviceState::Silent, reason)
            }
            _ => Ok(()),
        }
    }

    /// Reports `state` unless it is what was last reported.
    fn tell(
        &self,
        told: &mut Told,
        state: DeviceState,
        reason: impl Into<String>,
    ) -> Result<(), SourceError> {
        let now = match state {
            DeviceState::Up => Told::Up,
            DeviceState::Down => Told::Down,
            DeviceState::Error => Told::Error,
            DeviceState::Silent => Told::Silent,
        };
        if *told == now {
            return Ok(());
        }
        *told = now;
        self.sink.status(state, reason, None)
    }
}

// Against the PN532 simulator (feature `sim`, on by default).
#[cfg(all(test, feature = "sim"))]
mod tests;
