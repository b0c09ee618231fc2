use std::time::Duration;

use image::GrayImage;

use super::*;

/// A 400×400 light frame with 7×7-module finder patterns (4 px modules) whose top-left corners
/// are at `at`.
fn finders_frame(at: &[(u32, u32)]) -> GrayImage {
    let mut img = GrayImage::from_pixel(400, 400, image::Luma([220]));
    for &(fx, fy) in at {
        for my in 0..7 {
            for mx in 0..7 {
                let ring = mx == 0 || my == 0 || mx == 6 || my == 6;
                let core = (2..5).contains(&mx) && (2..5).contains(&my);
                if ring || core {
                    for p in 0..16 {
                        img.put_pixel(fx + mx * 4 + p % 4, fy + my * 4 + p / 4, image::Luma([30]));
                    }
                }
            }
        }
    }
    img
}

fn finder(x: f32, y: f32) -> Candidate {
    Candidate {
        x,
        y,
        module: 4.0,
        inverted: false,
        rows: 12,
    }
}

#[test]
fn the_upscaled_area_holds_every_finder_the_screen_saw() {
    // The census sees two finders of the code and a look-alike inside it (the third finder of
    // a 1–2 px/module code is often lost to its run test); the screen saw the real triple,
    // whose top-right finder is at (244, 44).
    let img = finders_frame(&[(30, 30), (30, 230), (100, 200)]);
    let cfg = DecodeConfig {
        roi: None,
        max_side: 1280,
        budget: Duration::from_secs(60),
    };
    let base = Base::new(GrayFrame::from(&img), &cfg).unwrap();
    let region = Region {
        x0: 0,
        y0: 0,
        x1: 400,
        y1: 400,
        inverted: false,
        finders: vec![finder(44.0, 44.0), finder(44.0, 244.0), finder(244.0, 44.0)],
    };
    let mut work = base.region(&region).unwrap();
    assert_eq!(
        work.shared()
            .census
            .iter()
            .filter(|c| c.is_strong())
            .count(),
        3,
        "{:?}",
        work.shared().census
    );
    let (rect, _, _) = work.plan_upscale().unwrap();
    for (x, y) in [(44, 44), (44, 244), (244, 44)] {
        assert!(
            (rect.x..rect.x + rect.width).contains(&(x + 14))
                && (rect.y..rect.y + rect.height).contains(&(y + 14)),
            "{rect:?} misses the finder at ({x}, {y})"
        );
    }
}
