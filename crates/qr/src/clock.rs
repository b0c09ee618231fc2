//! The clock the per-frame budget is measured on: the decoding thread's CPU time.
//!
//! Wall-clock time counts whatever else the machine runs: on a loaded Pi (or a shared CI box)
//! the same frame would run fewer passes, and decode or not, depending on the neighbours. CPU
//! time counts only the cascade's own work, so a frame gets the same passes, and the same
//! result, on a busy machine as on an idle one; the camera loop bounds wall-clock latency
//! anyway by dropping frames it cannot keep up with. Where the thread clock is unavailable
//! (non-Unix), the wall clock stands in.

use std::time::{Duration, Instant};

/// CPU time consumed by the calling thread so far, if the platform has a thread clock.
pub fn thread_cpu_time() -> Option<Duration> {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec that outlives the call; clock_gettime
        // writes only to it. CLOCK_THREAD_CPUTIME_ID is POSIX.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Measures a span of this thread's work (see the module doc).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stopwatch {
    cpu: Option<Duration>,
    wall: Instant,
}

impl Stopwatch {
    pub fn start() -> Stopwatch {
        Stopwatch {
            cpu: thread_cpu_time(),
            wall: Instant::now(),
        }
    }

    pub fn elapsed(&self) -> Duration {
        match (self.cpu, thread_cpu_time()) {
            (Some(start), Some(now)) => now.saturating_sub(start),
            _ => self.wall.elapsed(),
        }
    }
}
