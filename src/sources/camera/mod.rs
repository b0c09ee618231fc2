//! Camera QR source: frames from a `file:` image, a `dir:` of images or a V4L2 device
//! (feature `camera`), decoded on the source's own thread by [`phygate_qr::QrDecoder`]. Each
//! code is a [`ScannedCode`] like a scanner's (symbology `qr`), de-duplicated while it stays in
//! view with the scanner's sliding [`RepeatFilter`] (docs/protocols.md §1); unreadable images are
//! throttled `error` reports; a missing directory or device is `down` until it appears.

pub mod feed;
pub mod settings;
#[cfg(feature = "camera")]
mod v4l2;

pub use feed::{list_dir, CameraUrl, DirFrames, UrlError};
pub use settings::{CameraConfig, KIND, NO_V4L2};

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::GrayImage;
use phygate_qr::{DecodeConfig, QrDecoder};
use tracing::{debug, info, warn};

use super::repeat::RepeatFilter;
use super::scanner::ScannedCode;
use super::throttle::ErrorThrottle;
use super::{
    supervise, DeviceState, Ended, Observation, Outage, ReadingSink, SourceError, Supervised,
};
use crate::shutdown::Shutdown;

/// At most one error report per device per second, as for scanners (docs/protocols.md §1).
const ERROR_REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Larger images are refused before decoding: 16k × 16k luma is 256 MiB, more than a gateway
/// should spend on one frame, and no camera produces it.
const MAX_IMAGE_SIDE: u32 = 16_384;
const MAX_IMAGE_ALLOC: u64 = 256 * 1024 * 1024;

/// One frame as read: its luma plane, or why the bytes are not an image.
pub type Frame = Result<GrayImage, BadFrame>;

/// A frame that could not be read as an image (reported as a throttled `error`).
#[derive(Debug)]
pub struct BadFrame {
    pub reason: &'static str,
    pub detail: String,
}

/// A source of frames. `poll` returns the frames available now; an error means the file,
/// directory or device is gone (the camera is `down` until a later poll succeeds).
pub trait Feed {
    fn poll(&mut self) -> io::Result<Vec<Frame>>;
}

pub struct CameraSource {
    config: CameraConfig,
    sink: ReadingSink,
    stop: Shutdown,
}

impl CameraSource {
    pub fn new(config: CameraConfig, sink: ReadingSink, stop: Shutdown) -> Self {
        CameraSource { config, sink, stop }
    }

    /// Runs until stopped or the pipeline closes. Blocking (decoding is CPU work): call on a
    /// dedicated thread, never on the async runtime.
    pub fn run(self) -> Result<(), SourceError> {
        let feed: Box<dyn Feed> = match &self.config.url {
            CameraUrl::File(p) => Box::new(FileFeed(p.clone())),
            CameraUrl::Dir(p) => Box::new(DirFeed::new(p.clone())),
            #[cfg(feature = "camera")]
            CameraUrl::V4l2(p) => Box::new(v4l2::V4l2Feed::new(p.clone())),
            #[cfg(not(feature = "camera"))]
            CameraUrl::V4l2(_) => {
                // Config validation refuses this; kept so a config built in code cannot panic.
                warn!(device = self.sink.device(), "{NO_V4L2}");
                return self.sink.status(DeviceState::Down, NO_V4L2, None);
            }
        };
        let mut camera = Camera {
            sightings: Sightings::new(&self.config),
            source: &self,
            feed,
            polled_at: Instant::now(),
            down: false,
        };
        supervise(&mut camera, &self.stop)
    }

    fn emit_all(&self, out: Vec<Emit>) -> Result<(), SourceError> {
        for e in out {
            match e {
                Emit::Code(code) => self.sink.emit(Observation::Code(code))?,
                Emit::Status(state, reason, count) => self.sink.status(state, reason, count)?,
            }
        }
        Ok(())
    }
}

/// A camera's part in the supervision loop. A feed has no port to hold open: a poll that
/// succeeds after none did opens it, its frames are served first, and the next poll that fails
/// loses it.
struct Camera<'a> {
    source: &'a CameraSource,
    feed: Box<dyn Feed>,
    sightings: Sightings,
    /// When the last poll started: the interval runs from there.
    polled_at: Instant,
    /// `down` was reported and no poll has succeeded since.
    down: bool,
}

impl Supervised for Camera<'_> {
    /// The first poll's frames.
    type Port = Vec<Frame>;

    fn open(&mut self) -> io::Result<Self::Port> {
        self.polled_at = Instant::now();
        self.feed.poll()
    }

    fn opened(&mut self) -> Result<(), SourceError> {
        let s = self.source;
        info!(device = s.sink.device(), url = %s.config.url, "camera up");
        let reason = format!("reading {}", s.config.url);
        s.sink.status(DeviceState::Up, reason, None)?;
        self.sightings.restart(Instant::now());
        self.down = false;
        Ok(())
    }

    /// The poll → decode → wait loop.
    fn serve(&mut self, mut frames: Self::Port) -> Result<Ended, SourceError> {
        let s = self.source;
        loop {
            for frame in frames {
                if s.stop.is_stopped() {
                    break;
                }
                let out = self.sightings.frame(frame, Instant::now());
                s.emit_all(out)?;
            }
            let out = self.sightings.tick(Instant::now());
            s.emit_all(out)?;
            let wait = s.config.interval.saturating_sub(self.polled_at.elapsed());
            if s.stop.sleep(wait) {
                return Ok(Ended::Stopped);
            }
            frames = match self.open() {
                Ok(frames) => frames,
                Err(e) => return Ok(Ended::Lost(e)),
            };
        }
    }

    fn down(&mut self, outage: Outage) -> Result<(), SourceError> {
        // One report per outage, not one per retry.
        if self.down {
            return Ok(());
        }
        let s = self.source;
        let (Outage::CannotOpen(e) | Outage::Lost(e)) = outage;
        let reason = format!("cannot read {}: {e}", s.config.url);
        warn!(device = s.sink.device(), "{reason}");
        s.sink.status(DeviceState::Down, reason, None)?;
        self.down = true;
        Ok(())
    }
}

/// What the decoding of frames asks the source to emit.
#[derive(Debug, PartialEq)]
enum Emit {
    Code(ScannedCode),
    Status(DeviceState, String, Option<u64>),
}

/// Frames → codes, without I/O: decoding, the repeat window, throttled errors, silence.
struct Sightings {
    decoder: QrDecoder,
    repeats: RepeatFilter,
    throttle: ErrorThrottle,
    silent_after: Option<Duration>,
    last_code: Instant,
    silent: bool,
}

impl Sightings {
    fn new(c: &CameraConfig) -> Self {
        Sightings {
            decoder: QrDecoder::new(DecodeConfig {
                roi: c.roi,
                max_side: c.max_side,
                budget: c.budget,
            }),
            repeats: RepeatFilter::new(c.dedupe_window),
            throttle: ErrorThrottle::new(ERROR_REPORT_INTERVAL),
            silent_after: c.silent_after,
            last_code: Instant::now(),
            silent: false,
        }
    }

    /// The feed came (back) up: silence is counted from now.
    fn restart(&mut self, now: Instant) {
        self.last_code = now;
        self.silent = false;
    }

    fn frame(&mut self, frame: Frame, now: Instant) -> Vec<Emit> {
        let mut out = Vec::new();
        let image = match frame {
            Ok(image) => image,
            Err(bad) => {
                debug!(reason = bad.reason, detail = %bad.detail, "camera frame rejected");
                crate::metrics::CAMERA_REJECTED.inc();
                if let Some((reason, count)) = self.throttle.record(bad.reason, now) {
                    out.push(Emit::Status(DeviceState::Error, reason.into(), Some(count)));
                }
                return out;
            }
        };
        for code in self.decoder.decode(&image) {
            self.last_code = now;
            if self.silent {
                self.silent = false;
                out.push(Emit::Status(DeviceState::Up, "reading again".into(), None));
            }
            if !self.repeats.is_repeat(&code.text, now) {
                out.push(Emit::Code(ScannedCode {
                    payload: code.text,
                    symbology: "qr",
                    aim: None,
                }));
            }
        }
        out
    }

    /// Between frames: a held-back error report whose interval passed, or silence.
    fn tick(&mut self, now: Instant) -> Vec<Emit> {
        let mut out = Vec::new();
        if let Some((reason, count)) = self.throttle.due(now) {
            out.push(Emit::Status(DeviceState::Error, reason.into(), Some(count)));
        }
        if let Some(after) = self.silent_after {
            if !self.silent && now.duration_since(self.last_code) >= after {
                self.silent = true;
                let reason = format!("no code for {}", crate::words::duration(after));
                out.push(Emit::Status(DeviceState::Silent, reason, None));
            }
        }
        out
    }
}

/// Decodes an image file's bytes (PNG; the only format built in) to its luma plane, once.
pub fn decode_image(bytes: &[u8]) -> Frame {
    let bad = |e: image::ImageError| BadFrame {
        reason: "bad_image",
        detail: e.to_string(),
    };
    let mut reader = image::ImageReader::new(io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(e.into()))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_ALLOC);
    reader.limits(limits);
    Ok(reader.decode().map_err(bad)?.into_luma8())
}

fn read_frame(path: &Path) -> io::Result<Frame> {
    Ok(decode_image(&std::fs::read(path)?))
}

/// `file:` one image, re-read every interval (a code held in view). Missing: `down`.
struct FileFeed(PathBuf);

impl Feed for FileFeed {
    fn poll(&mut self) -> io::Result<Vec<Frame>> {
        Ok(vec![read_frame(&self.0)?])
    }
}

/// `dir:` each new file is one frame, in name order (see [`DirFrames`]). Missing: `down`.
struct DirFeed {
    dir: PathBuf,
    frames: DirFrames,
}

impl DirFeed {
    fn new(dir: PathBuf) -> Self {
        DirFeed {
            dir,
            frames: DirFrames::default(),
        }
    }
}

impl Feed for DirFeed {
    fn poll(&mut self) -> io::Result<Vec<Frame>> {
        let listing = list_dir(&self.dir)?;
        let mut frames = Vec::new();
        for name in self.frames.ready(&listing) {
            let path = self.dir.join(&name);
            match read_frame(&path) {
                Ok(frame) => {
                    if frame.is_err() {
                        warn!(file = %path.display(), "camera frame is not a readable image");
                    }
                    frames.push(frame);
                }
                // Taken away between the listing and the read: it was never a frame.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => frames.push(Err(BadFrame {
                    reason: "unreadable_file",
                    detail: format!("{}: {e}", path.display()),
                })),
            }
        }
        Ok(frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CameraConfig {
        CameraConfig {
            url: CameraUrl::Dir("/x".into()),
            interval: Duration::from_millis(100),
            roi: None,
            max_side: 1280,
            budget: Duration::from_millis(150),
            dedupe_window: Duration::from_millis(1500),
            silent_after: Some(Duration::from_secs(5)),
        }
    }

    fn qr(text: &str) -> GrayImage {
        crate::cli::token::qr_image(text, 4).unwrap()
    }

    fn codes(out: &[Emit]) -> Vec<&str> {
        out.iter()
            .filter_map(|e| match e {
                Emit::Code(c) => Some(c.payload.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_code_held_in_view_is_one_sighting() {
        let mut s = Sightings::new(&config());
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let out = s.frame(Ok(qr("4006381333931")), t0);
        assert_eq!(codes(&out), ["4006381333931"]);
        let Emit::Code(c) = &out[0] else { panic!() };
        assert_eq!((c.symbology, c.aim.as_deref()), ("qr", None));
        for i in 1..=30 {
            assert!(codes(&s.frame(Ok(qr("4006381333931")), t0 + ms(i * 100))).is_empty());
        }
        // Out of view for longer than the window: a new sighting.
        let later = t0 + ms(3000) + ms(1600);
        assert_eq!(codes(&s.frame(Ok(qr("4006381333931")), later)).len(), 1);
    }

    #[test]
    fn garbage_is_a_throttled_error_and_decoding_goes_on() {
        let mut s = Sightings::new(&config());
        let t0 = Instant::now();
        let bad = || decode_image(b"not a png at all");
        let out = s.frame(bad(), t0);
        assert_eq!(
            out,
            [Emit::Status(
                DeviceState::Error,
                "bad_image".into(),
                Some(1)
            )]
        );
        assert!(s.frame(bad(), t0 + Duration::from_millis(10)).is_empty());
        assert_eq!(codes(&s.frame(Ok(qr("next")), t0)), ["next"]);
        assert_eq!(
            s.tick(t0 + Duration::from_secs(1)),
            [Emit::Status(
                DeviceState::Error,
                "bad_image".into(),
                Some(1)
            )]
        );
    }

    #[test]
    fn png_bytes_decode_to_one_luma_plane() {
        let mut png = Vec::new();
        qr("hello")
            .write_to(&mut io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let image = decode_image(&png).unwrap();
        let mut s = Sightings::new(&config());
        assert_eq!(codes(&s.frame(Ok(image), Instant::now())), ["hello"]);
    }

    #[test]
    fn silence_is_reported_once_and_ends_with_a_code() {
        let mut s = Sightings::new(&config());
        let t0 = Instant::now();
        s.restart(t0);
        assert!(s.tick(t0 + Duration::from_secs(4)).is_empty());
        let out = s.tick(t0 + Duration::from_secs(5));
        assert!(matches!(
            &out[..],
            [Emit::Status(DeviceState::Silent, _, None)]
        ));
        assert!(s.tick(t0 + Duration::from_secs(9)).is_empty());
        let out = s.frame(Ok(qr("x")), t0 + Duration::from_secs(10));
        assert_eq!(
            out[0],
            Emit::Status(DeviceState::Up, "reading again".into(), None)
        );
    }
}
