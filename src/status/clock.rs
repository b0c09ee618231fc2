//! Is the gateway's clock synchronized? Event `time`s and token expiry checks rest on it. Read
//! from the kernel (adjtimex(2) without changes, allowed to any user): whichever NTP client
//! disciplines the clock (systemd-timesyncd, chrony, ntpd) clears `STA_UNSYNC` when it is.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Clock {
    /// `None` when the kernel could not be asked.
    pub synchronized: Option<bool>,
    /// The kernel's estimated error, in microseconds (meaningful when synchronized).
    pub estimated_error_us: Option<i64>,
}

impl Clock {
    pub fn read() -> Clock {
        // SAFETY: adjtimex with `modes = 0` only reads; `t` is a zeroed, owned timex.
        let mut t: libc::timex = unsafe { std::mem::zeroed() };
        let state = unsafe { libc::adjtimex(&mut t) };
        if state < 0 {
            return Clock {
                synchronized: None,
                estimated_error_us: None,
            };
        }
        let synced = state != libc::TIME_ERROR && t.status & libc::STA_UNSYNC == 0;
        Clock {
            synchronized: Some(synced),
            estimated_error_us: synced.then_some(t.esterror as i64),
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
