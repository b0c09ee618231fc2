//! `v4l2:/dev/videoN`: real capture through nokhwa's V4L2 backend (feature `camera`).

use std::io;
use std::path::PathBuf;

use image::GrayImage;
use nokhwa::pixel_format::LumaFormat;
use nokhwa::utils::{CameraIndex, RequestedFormat, RequestedFormatType};
use nokhwa::Camera;

use super::{BadFrame, Feed, Frame};

/// A V4L2 device, opened on first poll and again after it is lost (an unplug).
pub struct V4l2Feed {
    path: PathBuf,
    camera: Option<Camera>,
}

impl V4l2Feed {
    pub fn new(path: PathBuf) -> Self {
        V4l2Feed { path, camera: None }
    }

    /// nokhwa names V4L2 devices by index: `/dev/videoN` (or a udev symlink to it) is N.
    fn index(&self) -> io::Result<u32> {
        let real = std::fs::canonicalize(&self.path)?;
        real.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("video"))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} is not a /dev/videoN device", real.display()),
                )
            })
    }

    fn open(&mut self) -> io::Result<&mut Camera> {
        if self.camera.is_none() {
            let index = CameraIndex::Index(self.index()?);
            let format =
                RequestedFormat::new::<LumaFormat>(RequestedFormatType::AbsoluteHighestResolution);
            let mut camera = Camera::new(index, format).map_err(io::Error::other)?;
            camera.open_stream().map_err(io::Error::other)?;
            self.camera = Some(camera);
        }
        Ok(self.camera.as_mut().expect("opened above"))
    }
}

impl Feed for V4l2Feed {
    fn poll(&mut self) -> io::Result<Vec<Frame>> {
        let camera = self.open()?;
        let buffer = match camera.frame() {
            Ok(b) => b,
            Err(e) => {
                // Lost (unplugged, or the driver failed): reopen on the next poll.
                self.camera = None;
                return Err(io::Error::other(e));
            }
        };
        let frame = buffer
            .decode_image::<LumaFormat>()
            .map_err(|e| e.to_string())
            .and_then(|img| {
                let (w, h) = (img.width(), img.height());
                GrayImage::from_raw(w, h, img.into_raw()).ok_or_else(|| "short buffer".into())
            })
            .map_err(|detail| BadFrame {
                reason: "bad_frame",
                detail,
            });
        Ok(vec![frame])
    }
}
