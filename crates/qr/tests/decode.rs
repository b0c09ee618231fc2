//! End-to-end tests of the cascade on rendered codes and on garbage.

use std::time::Duration;

use image::GrayImage;
use phygate_qr::{DecodeConfig, GrayFrame, Pass, QrDecoder, Rect};
use proptest::prelude::*;
use qrcode::{Color, EcLevel, QrCode};

const JWT: &str = "eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCIsImtpZCI6ImsxIn0.\
eyJzdWIiOiJ1LTQyIiwiYXVkIjoidDEiLCJpYXQiOjE3OTUwMDAwMDAsImV4cCI6MTc5NTAwMDMwMCwianRpIjoiYWJjZGVmZ2hpamtsbW5vcCJ9.\
Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYg";

/// An ample budget: these tests check what the cascade can read, not how fast (a debug build is
/// ~20× slower than the release build the default budget is sized for).
const AMPLE: Duration = Duration::from_secs(60);

fn decoder() -> QrDecoder {
    QrDecoder::new(DecodeConfig {
        budget: AMPLE,
        ..DecodeConfig::default()
    })
}

/// Draws `text` as a QR code (4-module quiet zone) at `scale` px/module with its top-left
/// quiet-zone corner at (`x`, `y`), dark = `dark`, light = `light`.
fn draw(img: &mut GrayImage, text: &str, x: u32, y: u32, scale: u32, dark: u8, light: u8) {
    let code = QrCode::with_error_correction_level(text, EcLevel::M).unwrap();
    let n = code.width() as u32;
    let colors = code.to_colors();
    for my in 0..n + 8 {
        for mx in 0..n + 8 {
            let inside = (4..n + 4).contains(&mx) && (4..n + 4).contains(&my);
            let is_dark = inside && colors[((my - 4) * n + mx - 4) as usize] == Color::Dark;
            for py in 0..scale {
                for px in 0..scale {
                    let (ix, iy) = (x + mx * scale + px, y + my * scale + py);
                    if ix < img.width() && iy < img.height() {
                        img.put_pixel(ix, iy, image::Luma([if is_dark { dark } else { light }]));
                    }
                }
            }
        }
    }
}

fn frame_with(text: &str, scale: u32, dark: u8, light: u8, bg: u8) -> GrayImage {
    let mut img = GrayImage::from_pixel(640, 480, image::Luma([bg]));
    draw(&mut img, text, 40, 30, scale, dark, light);
    img
}

#[test]
fn decodes_a_clean_jwt_code() {
    let img = frame_with(JWT, 5, 20, 235, 160);
    let codes = decoder().decode(&img);
    assert_eq!(codes.len(), 1, "{codes:?}");
    assert_eq!(codes[0].text, JWT);
    // The code spans x 60..~385 (quiet zone excluded); the box must lie on it.
    let b = codes[0].bbox;
    assert!(
        b.x >= 50 && b.x <= 70 && b.width > 250 && b.width < 340,
        "{b:?}"
    );
}

#[test]
fn decodes_a_jwt_code_at_under_two_pixels_per_module() {
    // Drawn at 7 px/module and averaged down by 4: 1.75 px/module, modules straddling pixels,
    // as a camera sees a phone at arm's length.
    let mut big = GrayImage::from_pixel(620, 620, image::Luma([160]));
    draw(&mut big, JWT, 20, 20, 7, 20, 235);
    let img = image::imageops::resize(&big, 155, 155, image::imageops::FilterType::Triangle);
    let mut frame = GrayImage::from_pixel(640, 480, image::Luma([160]));
    image::imageops::overlay(&mut frame, &img, 200, 150);
    let codes = decoder().decode(&frame);
    assert_eq!(codes.len(), 1, "{codes:?}");
    assert_eq!(codes[0].text, JWT);
}

#[test]
fn decodes_an_inverted_code_from_the_negative_of_its_region() {
    let img = frame_with("https://app.example/s/Ab12Cd", 6, 230, 25, 15);
    let report = decoder().decode_report(&img);
    assert_eq!(report.codes.len(), 1, "{report:?}");
    assert_eq!(report.codes[0].text, "https://app.example/s/Ab12Cd");
    assert!(report.codes[0].inverted);
    assert_eq!(report.codes[0].pass, Pass::Adaptive);
}

#[test]
fn decodes_both_codes_of_a_frame() {
    let mut img = GrayImage::from_pixel(640, 480, image::Luma([170]));
    draw(&mut img, "4006381333931", 20, 100, 7, 20, 235);
    draw(&mut img, "https://app.example/s/Zz9", 350, 120, 7, 20, 235);
    let mut texts: Vec<String> = decoder().decode(&img).into_iter().map(|c| c.text).collect();
    texts.sort();
    assert_eq!(texts, ["4006381333931", "https://app.example/s/Zz9"]);
}

#[test]
fn roi_limits_the_search_and_coordinates_stay_in_frame_pixels() {
    let mut img = GrayImage::from_pixel(640, 480, image::Luma([170]));
    draw(&mut img, "4006381333931", 360, 200, 6, 20, 235);
    let roi = Rect {
        x: 320,
        y: 160,
        width: 320,
        height: 320,
    };
    let dec = QrDecoder::new(DecodeConfig {
        roi: Some(roi),
        budget: AMPLE,
        ..DecodeConfig::default()
    });
    let codes = dec.decode(&img);
    assert_eq!(codes.len(), 1);
    let b = codes[0].bbox;
    assert!(b.x >= 380 && b.y >= 220 && b.x + b.width <= 540, "{b:?}");
    let elsewhere = Rect {
        x: 0,
        y: 0,
        width: 320,
        height: 480,
    };
    let dec = QrDecoder::new(DecodeConfig {
        roi: Some(elsewhere),
        budget: AMPLE,
        ..DecodeConfig::default()
    });
    assert!(dec.decode(&img).is_empty());
}

#[test]
fn downscaled_frames_report_camera_coordinates() {
    let mut img = GrayImage::from_pixel(1920, 1440, image::Luma([170]));
    draw(&mut img, "4006381333931", 600, 400, 16, 20, 235);
    let dec = QrDecoder::new(DecodeConfig {
        max_side: 640,
        budget: AMPLE,
        ..DecodeConfig::default()
    });
    let codes = dec.decode(&img);
    assert_eq!(codes.len(), 1);
    let b = codes[0].bbox;
    // Code modules span 664..1000 in both axes at 16 px/module.
    assert!(
        (640..700).contains(&b.x) && (1000..1050).contains(&(b.x + b.width)),
        "{b:?}"
    );
}

#[test]
fn degenerate_frames_decode_to_nothing() {
    let dec = decoder();
    assert!(dec.decode(GrayFrame::new(&[], 0, 0).unwrap()).is_empty());
    assert!(dec.decode(GrayFrame::new(&[7], 1, 1).unwrap()).is_empty());
    assert!(
        dec.decode(GrayFrame::new(&[0; 5000], 5000, 1).unwrap())
            .is_empty()
    );
    let huge = GrayImage::from_pixel(6000, 4000, image::Luma([200]));
    assert!(dec.decode(&huge).is_empty());
    assert!(GrayFrame::new(&[0; 10], 4, 4).is_err());
}

/// A code whose finders survive and whose data area is noise: the screen finds a region, and
/// no pass decodes, so only the budget stops the cascade.
fn unreadable_code() -> GrayImage {
    let mut img = frame_with(JWT, 5, 20, 235, 160);
    let noise = noise_frame(200, 200, 3);
    for y in 130..330 {
        for x in 140..340 {
            let v = if noise.get_pixel(x - 140, y - 130).0[0] < 128 {
                20
            } else {
                235
            };
            img.put_pixel(x, y, image::Luma([v]));
        }
    }
    img
}

#[test]
fn a_zero_budget_runs_the_first_pass_only() {
    let img = unreadable_code();
    let dec = QrDecoder::new(DecodeConfig {
        budget: Duration::ZERO,
        ..DecodeConfig::default()
    });
    assert_eq!(dec.decode_report(&img).passes_run, [Pass::Adaptive]);
    let dec = QrDecoder::new(DecodeConfig {
        budget: AMPLE,
        ..DecodeConfig::default()
    });
    let passes = dec.decode_report(&img).passes_run;
    assert!(
        passes.len() >= 3,
        "an ample budget runs the applicable passes: {passes:?}"
    );
}

/// Issue 14: a frame with no finder pattern must not pay for the cascade (a store camera's
/// frames are mostly code-free).
#[test]
fn a_code_free_frame_runs_no_pass() {
    let dec = decoder();
    for img in [
        noise_frame(1280, 720, 1),
        GrayImage::from_fn(1280, 720, |x, y| image::Luma([(x / 5 + y / 3) as u8])),
    ] {
        let report = dec.decode_report(&img);
        assert!(report.passes_run.is_empty(), "{:?}", report.passes_run);
        assert!(report.codes.is_empty());
    }
}

#[test]
fn a_decoded_frame_stops_the_cascade() {
    let img = frame_with(JWT, 5, 20, 235, 160);
    let dec = QrDecoder::new(DecodeConfig {
        budget: AMPLE,
        ..DecodeConfig::default()
    });
    let report = dec.decode_report(&img);
    assert_eq!(report.passes_run, [Pass::Adaptive]);
    assert_eq!(report.codes.len(), 1);
}

fn noise_frame(w: u32, h: u32, seed: u64) -> GrayImage {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    GrayImage::from_fn(w, h, |_, _| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        image::Luma([(s >> 56) as u8])
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random small frames (noise, flat, blocky) never panic and never produce a code.
    #[test]
    fn garbage_frames_decode_to_nothing(
        w in 0u32..96,
        h in 0u32..96,
        block in 1u32..9,
        seed in any::<u64>(),
    ) {
        let noise = noise_frame(w.max(1), h.max(1), seed);
        let px: Vec<u8> = (0..w * h)
            .map(|i| {
                let (x, y) = ((i % w.max(1)) / block, (i / w.max(1)) / block);
                noise.get_pixel(x % w.max(1), y % h.max(1)).0[0]
            })
            .collect();
        let frame = GrayFrame::new(&px, w, h).unwrap();
        prop_assert!(decoder().decode(frame).is_empty());
    }
}

/// `text` drawn at `big_scale` px/module, averaged down by `shrink` and blurred as by a
/// camera's optics (σ 0.5 px): modules of `big_scale / shrink` px straddling pixels.
fn small_code_frame(text: &str, big_scale: u32, shrink: u32) -> GrayImage {
    let n = QrCode::with_error_correction_level(text, EcLevel::M)
        .unwrap()
        .width() as u32;
    let side = (n + 8) * big_scale + 40;
    let mut big = GrayImage::from_pixel(side, side, image::Luma([160]));
    draw(&mut big, text, 20, 20, big_scale, 25, 230);
    let small = image::imageops::resize(
        &big,
        side / shrink,
        side / shrink,
        image::imageops::FilterType::Triangle,
    );
    let mut frame = GrayImage::from_pixel(640, 480, image::Luma([160]));
    image::imageops::overlay(&mut frame, &small, 230, 170);
    image::imageops::blur(&frame, 0.5)
}

#[test]
fn decodes_codes_at_1_75_px_per_module_behind_camera_blur() {
    // At 1.75 px per module behind σ 0.5 px of blur the finders read 2,1,6,2,1 on some lines,
    // which the exact 1:1:3:1:1 test rejects: before the quantized run test the screen saw
    // fewer than two of them and no pass ran on either frame.
    for text in [JWT, "https://app.example/s/Ab12Cd"] {
        let codes = decoder().decode(&small_code_frame(text, 7, 4));
        assert_eq!(codes.len(), 1, "{text}: {codes:?}");
        assert_eq!(codes[0].text, text);
    }
}

/// Frame 7 of the bench corpus's two-codes class, seed 3 (`qrbench --seed 3`): two codes side
/// by side, slightly turned. Their finders make loose triples across the codes (tilted-looking,
/// read only through a projective grid); tried before the frontal triples, they used up the
/// grid's decode attempts, the second code fell to rqrr and the upscaled pass, and the frame
/// cost ~10× its share. Needs the corpus generator: `cargo test --features bench`.
#[cfg(feature = "bench")]
#[test]
fn two_codes_side_by_side_are_both_read_by_the_first_pass() {
    use phygate_qr::corpus::{Class, generate};
    let sample = generate(Class::TwoCodes, 7, 3);
    let report = decoder().decode_report(&sample.image);
    let mut texts: Vec<&str> = report.codes.iter().map(|c| c.text.as_str()).collect();
    texts.sort();
    let mut expected: Vec<&str> = sample.texts.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(texts, expected);
    assert_eq!(report.passes_run, [Pass::Adaptive], "{report:?}");
}
