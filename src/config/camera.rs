//! `kind = "camera"`: a camera read for QR codes (the URL forms are in `sources::camera`).

use std::time::Duration;

use serde::Deserialize;

use super::{DeviceConfig, DeviceKind, Validator};
use crate::sources::camera::feed::CameraUrl;
use crate::sources::camera::settings::CameraConfig;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCamera {
    id: String,
    station: String,
    url: String,
    #[serde(default = "default_interval", with = "humantime_serde")]
    interval: Duration,
    #[serde(default)]
    roi: Option<[u32; 4]>,
    #[serde(default = "default_max_side")]
    max_side: u32,
    #[serde(default = "default_budget", with = "humantime_serde")]
    budget: Duration,
    #[serde(default = "super::serial::default_dedupe", with = "humantime_serde")]
    dedupe_window: Duration,
    #[serde(default, with = "humantime_serde")]
    silent_after: Option<Duration>,
}

/// 10 frames a second: a code shown to the camera is read well within the time it is held.
fn default_interval() -> Duration {
    Duration::from_millis(100)
}
/// `phygate_qr::DecodeConfig`'s defaults (sized with `qrbench`).
fn default_max_side() -> u32 {
    1280
}
fn default_budget() -> Duration {
    Duration::from_millis(150)
}

impl Validator<'_> {
    pub(super) fn camera(&mut self, i: usize, c: RawCamera) -> DeviceConfig {
        let at = |f: &str| format!("device[{i}].{f}");
        let url = match CameraUrl::parse(&c.url) {
            Ok(u) => u,
            Err(e) => {
                self.problem(at("url"), e.to_string());
                CameraUrl::Dir(Default::default())
            }
        };
        #[cfg(not(feature = "camera"))]
        if matches!(url, CameraUrl::V4l2(_)) {
            self.problem(at("url"), crate::sources::camera::settings::NO_V4L2);
        }
        let ms = Duration::from_millis;
        if !(ms(10)..=ms(60_000)).contains(&c.interval) {
            self.problem(at("interval"), "must be between 10ms and 60s");
        }
        let roi = c.roi.map(|[x, y, width, height]| phygate_qr::Rect {
            x,
            y,
            width,
            height,
        });
        if roi.is_some_and(|r| r.width == 0 || r.height == 0) {
            self.problem(at("roi"), "[x, y, w, h] needs a width and a height above 0");
        }
        if !(64..=16_384).contains(&c.max_side) {
            self.problem(at("max_side"), "must be 64-16384 pixels");
        }
        if c.budget > ms(5_000) {
            self.problem(at("budget"), "must be at most 5s");
        }
        if c.dedupe_window > Duration::from_secs(60) {
            self.problem(at("dedupe_window"), "must be at most 60s");
        }
        if c.silent_after.is_some_and(|d| d < Duration::from_secs(1)) {
            self.problem(at("silent_after"), "must be at least 1s");
        }
        DeviceConfig {
            id: c.id,
            station: c.station,
            kind: DeviceKind::Camera(CameraConfig {
                url,
                interval: c.interval,
                roi,
                max_side: c.max_side,
                budget: c.budget,
                dedupe_window: c.dedupe_window,
                silent_after: c.silent_after,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;
    use std::path::Path;

    fn config(device: &str) -> String {
        format!(
            r#"tenant = "acme"
store = "s1"

[[station]]
id = "kiosk"
role = "kiosk"

[[device]]
kind = "camera"
id = "cam-1"
station = "kiosk"
{device}

[mqtt]
host = "127.0.0.1"
"#
        )
    }

    fn camera(c: &Config) -> &CameraConfig {
        match &c.devices[0].kind {
            DeviceKind::Camera(c) => c,
            other => panic!("not a camera: {other:?}"),
        }
    }

    #[test]
    fn camera_validates_with_defaults_and_shows_in_check_config() {
        let c = Config::parse(
            &config("url = \"dir:/var/lib/phygate/frames\""),
            Path::new("x"),
        )
        .unwrap();
        let cam = camera(&c);
        assert_eq!(cam.url, CameraUrl::Dir("/var/lib/phygate/frames".into()));
        assert_eq!(
            (cam.interval, cam.max_side, cam.budget, cam.dedupe_window),
            (
                Duration::from_millis(100),
                1280,
                Duration::from_millis(150),
                Duration::from_millis(1500)
            )
        );
        assert_eq!((cam.roi, cam.silent_after), (None, None));
        let shown = c.to_string();
        assert!(
            shown.contains("device cam-1 at station kiosk: camera on dir:/var/lib/phygate/frames"),
            "{shown}"
        );
    }

    #[test]
    fn camera_fields_are_checked() {
        let text = config(
            "url = \"rtsp://cam\"\ninterval = \"1ms\"\nroi = [0, 0, 0, 10]\nmax_side = 8\n\
             budget = \"10s\"\ndedupe_window = \"2m\"\nsilent_after = \"10ms\"",
        );
        let e = Config::parse(&text, Path::new("x")).unwrap_err();
        let fields: Vec<&str> = e.problems.iter().map(|p| p.field.as_str()).collect();
        for f in [
            "url",
            "interval",
            "roi",
            "max_side",
            "budget",
            "dedupe_window",
            "silent_after",
        ] {
            assert!(
                fields.contains(&format!("device[0].{f}").as_str()),
                "{f}: {fields:?}"
            );
        }
        let e = Config::parse(&config("url = \"dir:/x\"\nfps = 3"), Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("fps"), "{e}");
    }

    #[test]
    fn roi_is_x_y_w_h() {
        let c = Config::parse(
            &config("url = \"file:/x.png\"\nroi = [10, 20, 300, 400]"),
            Path::new("x"),
        )
        .unwrap();
        let r = camera(&c).roi.unwrap();
        assert_eq!((r.x, r.y, r.width, r.height), (10, 20, 300, 400));
    }

    #[cfg(not(feature = "camera"))]
    #[test]
    fn v4l2_without_the_feature_says_how_to_build_it() {
        let e = Config::parse(&config("url = \"v4l2:/dev/video0\""), Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("--features camera"), "{e}");
    }
}
