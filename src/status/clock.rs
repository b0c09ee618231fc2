//! Is the gateway's clock synchronized? Event `time`s and token expiry checks rest on it. The
//! same answer as each event's `clocksync` ([`crate::clock`]): the kernel's (adjtimex(2)
//! without changes, allowed to any user: whichever NTP client disciplines the clock clears
//! `STA_UNSYNC` when it is), unless `[clock] sync` says otherwise.

use serde::{Deserialize, Serialize};

use crate::clock::ClockSync;

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
        match crate::clock::mode() {
            ClockSync::AssumeSynced => Clock {
                synchronized: Some(true),
                estimated_error_us: None,
            },
            ClockSync::AssumeUnsynced => Clock {
                synchronized: Some(false),
                estimated_error_us: None,
            },
            ClockSync::Kernel => match crate::clock::kernel_reading() {
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
