//! Whether the wall clock can be trusted. Event `time`s are the gateway's clock; a board without
//! a real-time clock boots in the past until NTP reaches it, and a clock can be stepped (back or
//! forward) when synchronisation resumes. Ordering never depends on it (`seq` does that); HQ
//! learns from each event's `clocksync` whether its `time` came from a synchronised clock.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

/// Where the answer comes from (`[clock] sync` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockSync {
    /// Ask the kernel (`adjtimex`): synchronised while an NTP client (chrony,
    /// systemd-timesyncd, ntpd) keeps it in sync.
    #[default]
    Kernel,
    /// The clock is kept right by means the kernel does not know of (a GPS or PTP daemon that
    /// steps it): always synchronised.
    AssumeSynced,
    /// Never synchronised (a box known to have no time source).
    AssumeUnsynced,
}

/// The process's answer source; set once at start, read by every new event.
///
/// Global on purpose: every event built anywhere (sources' readings, the link's visits, the
/// outbox's eviction notices) stamps `clocksync`, and the answer is the host's, one per
/// process. Threading a handle through every constructor that may create an event would
/// carry the same value everywhere for nothing.
static MODE: AtomicU8 = AtomicU8::new(ClockSync::Kernel as u8);

pub fn set_mode(mode: ClockSync) {
    MODE.store(mode as u8, Ordering::Relaxed);
}

/// The answer source set at start.
pub fn mode() -> ClockSync {
    match MODE.load(Ordering::Relaxed) {
        m if m == ClockSync::AssumeSynced as u8 => ClockSync::AssumeSynced,
        m if m == ClockSync::AssumeUnsynced as u8 => ClockSync::AssumeUnsynced,
        _ => ClockSync::Kernel,
    }
}

/// True when the wall clock is synchronised now (within [`ASK_EVERY`]). An unanswerable kernel
/// (not Linux, a sandbox refusing the call) counts as not synchronised: the flag claims only
/// what is known.
pub fn synced() -> bool {
    match mode() {
        ClockSync::AssumeSynced => true,
        ClockSync::AssumeUnsynced => false,
        ClockSync::Kernel => kernel_synced_recently(),
    }
}

/// How long the kernel's answer is reused. Every event asks (its `clocksync`); one `adjtimex`
/// per event was 13% of a worker's CPU at saturation, while the answer changes when NTP
/// gains or loses its sources, seconds apart at the very least.
pub const ASK_EVERY: Duration = Duration::from_secs(1);

/// The kernel's last answer, and when it was given: milliseconds since [`since`]'s origin,
/// plus one (0: never asked).
static KERNEL_SYNCED: AtomicBool = AtomicBool::new(false);
static ASKED_AT_MS: AtomicU64 = AtomicU64::new(0);

/// A monotonic origin for [`ASKED_AT_MS`] (a wall-clock step must not freeze the cache).
fn since() -> Duration {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed()
}

/// The kernel's answer, asked at most once per [`ASK_EVERY`]. Two threads may both ask at
/// the edge of a period; both store the same kind of answer, so no lock is needed.
fn kernel_synced_recently() -> bool {
    let now = since().as_millis() as u64 + 1;
    let asked = ASKED_AT_MS.load(Ordering::Acquire);
    if asked != 0 && now - asked.min(now) < ASK_EVERY.as_millis() as u64 {
        return KERNEL_SYNCED.load(Ordering::Relaxed);
    }
    let synced = kernel_synced().unwrap_or(false);
    KERNEL_SYNCED.store(synced, Ordering::Relaxed);
    ASKED_AT_MS.store(now, Ordering::Release);
    synced
}

/// Milliseconds since the Unix epoch; 0 for a clock set before 1970. The unit of the
/// de-duplication keys, receipts and visits kept in the outbox's state table.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn kernel_synced() -> Option<bool> {
    kernel_reading().map(|(synced, _)| synced)
}

/// The kernel's view: synchronised, and its estimated error in microseconds (`adjtimex` with
/// no modes only reads; no privilege needed). `None` when the kernel cannot be asked.
#[cfg(target_os = "linux")]
fn kernel_reading() -> Option<(bool, i64)> {
    // SAFETY: a zeroed `timex` with `modes == 0` is a valid read-only request; the kernel
    // fills the struct and returns the clock state.
    let mut t: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut t) };
    (state >= 0).then(|| (kernel_state_is_synced(state, t.status), t.esterror as i64))
}

#[cfg(not(target_os = "linux"))]
fn kernel_reading() -> Option<(bool, i64)> {
    None
}

/// `adjtimex`'s answer read as "synchronised": not `TIME_ERROR`, and `STA_UNSYNC` clear.
#[cfg(target_os = "linux")]
fn kernel_state_is_synced(state: i32, status: i32) -> bool {
    state != libc::TIME_ERROR && status & libc::STA_UNSYNC == 0
}

/// The clock as the status page, `/status.json` and the verdict show it. The same answer as each
/// event's `clocksync`: the kernel's (adjtimex(2) without changes, allowed to any user: whichever
/// NTP client disciplines the clock clears `STA_UNSYNC` when it is), unless `[clock] sync` says
/// otherwise.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Clock {
    /// `None` when the kernel could not be asked.
    pub synchronized: Option<bool>,
    /// The kernel's estimated error, in microseconds (meaningful when synchronized).
    pub estimated_error_us: Option<i64>,
}

impl Clock {
    /// As the events see it: `[clock] sync` decides whether the kernel is asked, so the page
    /// never calls a clock unsynchronized that the events call synchronized.
    pub fn read() -> Clock {
        match mode() {
            ClockSync::AssumeSynced => Clock {
                synchronized: Some(true),
                estimated_error_us: None,
            },
            ClockSync::AssumeUnsynced => Clock {
                synchronized: Some(false),
                estimated_error_us: None,
            },
            ClockSync::Kernel => match kernel_reading() {
                Some((synced, esterror)) => Clock {
                    synchronized: Some(synced),
                    estimated_error_us: synced.then_some(esterror),
                },
                None => Clock {
                    synchronized: None,
                    estimated_error_us: None,
                },
            },
        }
    }

    pub fn summary(&self) -> String {
        match (self.synchronized, self.estimated_error_us) {
            (Some(true), Some(us)) if us >= 1000 => {
                format!("synchronized (within about {} ms)", us / 1000)
            }
            (Some(true), _) => "synchronized".into(),
            (Some(false), _) => {
                "NOT synchronized: event times and token checks may be off (check NTP)".into()
            }
            (None, _) => "unknown (cannot ask the kernel)".into(),
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn kernel_states() {
        assert!(kernel_state_is_synced(libc::TIME_OK, 0));
        assert!(kernel_state_is_synced(libc::TIME_INS, libc::STA_PLL));
        assert!(!kernel_state_is_synced(libc::TIME_ERROR, 0));
        assert!(!kernel_state_is_synced(libc::TIME_OK, libc::STA_UNSYNC));
        // The kernel answers here, whatever it says.
        assert!(kernel_synced().is_some());
    }

    #[test]
    fn the_kernel_answer_is_reused_within_a_period() {
        let first = kernel_synced_recently();
        let asked = ASKED_AT_MS.load(Ordering::Acquire);
        assert_ne!(asked, 0, "the first call asks the kernel");
        for _ in 0..1000 {
            assert_eq!(kernel_synced_recently(), first);
        }
        // Asked again only once a period has passed (another test may have asked meanwhile,
        // never more than once per period).
        let again = ASKED_AT_MS.load(Ordering::Acquire);
        assert!(again == asked || again >= asked + ASK_EVERY.as_millis() as u64);
    }
}
