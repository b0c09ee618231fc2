//! Whether the wall clock can be trusted. Event `time`s are the gateway's clock; a board without
//! a real-time clock boots in the past until NTP reaches it, and a clock can be stepped (back or
//! forward) when synchronisation resumes. Ordering never depends on it (`seq` does that); HQ
//! learns from each event's `clocksync` whether its `time` came from a synchronised clock.

use std::sync::atomic::{AtomicU8, Ordering};

use serde::Deserialize;

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

/// True when the wall clock is synchronised now. An unanswerable kernel (not Linux, a sandbox
/// refusing the call) counts as not synchronised: the flag claims only what is known.
pub fn synced() -> bool {
    match mode() {
        ClockSync::AssumeSynced => true,
        ClockSync::AssumeUnsynced => false,
        ClockSync::Kernel => kernel_synced().unwrap_or(false),
    }
}

fn kernel_synced() -> Option<bool> {
    kernel_reading().map(|(synced, _)| synced)
}

/// The kernel's view: synchronised, and its estimated error in microseconds (`adjtimex` with
/// no modes only reads; no privilege needed). `None` when the kernel cannot be asked.
#[cfg(target_os = "linux")]
pub fn kernel_reading() -> Option<(bool, i64)> {
    // SAFETY: a zeroed `timex` with `modes == 0` is a valid read-only request; the kernel
    // fills the struct and returns the clock state.
    let mut t: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut t) };
    (state >= 0).then(|| (kernel_state_is_synced(state, t.status), t.esterror as i64))
}

#[cfg(not(target_os = "linux"))]
pub fn kernel_reading() -> Option<(bool, i64)> {
    None
}

/// `adjtimex`'s answer read as "synchronised": not `TIME_ERROR`, and `STA_UNSYNC` clear.
#[cfg(target_os = "linux")]
pub fn kernel_state_is_synced(state: i32, status: i32) -> bool {
    state != libc::TIME_ERROR && status & libc::STA_UNSYNC == 0
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
}
