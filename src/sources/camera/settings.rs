//! A camera's settings, as the config validates them (`kind = "camera"`): plain values.

use std::fmt;
use std::time::Duration;

use super::feed::CameraUrl;

/// The device kind, as the config and the status page name it.
pub const KIND: &str = "camera";

/// What the config reports for a `v4l2:` camera when this build cannot capture.
pub const NO_V4L2: &str = "v4l2: capture is not in this build; build phygate with `cargo build \
                           --release --features camera` (needs libclang for the V4L2 bindings)";

/// A validated camera.
#[derive(Debug, Clone)]
pub struct CameraConfig {
    pub url: CameraUrl,
    /// Frame period: how often a `file:` image is re-read, a `dir:` listed, a device read.
    pub interval: Duration,
    /// Only this part of the frame is searched.
    pub roi: Option<phygate_qr::Rect>,
    /// Frames are downscaled so their longer side is at most this.
    pub max_side: u32,
    /// Per-frame decode budget (the decoding thread's CPU time; see `phygate_qr::decode`).
    pub budget: Duration,
    /// A code seen again within this of its last sighting is the same sighting (sliding).
    pub dedupe_window: Duration,
    /// Report `silent` after this long without a code (None: a camera may see nothing).
    pub silent_after: Option<Duration>,
}

impl fmt::Display for CameraConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = crate::words::duration;
        write!(
            f,
            "camera on {}, a frame every {}, max side {} px, budget {}, dedupe {}",
            self.url,
            d(self.interval),
            self.max_side,
            d(self.budget),
            d(self.dedupe_window)
        )?;
        if let Some(r) = self.roi {
            write!(f, ", roi [{}, {}, {}, {}]", r.x, r.y, r.width, r.height)?;
        }
        if let Some(after) = self.silent_after {
            write!(f, ", silent after {}", d(after))?;
        }
        Ok(())
    }
}
