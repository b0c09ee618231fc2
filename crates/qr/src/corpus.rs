//! Seeded corpus of damaged QR frames for `qrbench` (feature `bench`).
//!
//! Each [`Class`] is one kind of damage a store camera sees. [`generate`] renders sample `index`
//! of a class from a seed, so the same seed always gives the same PNGs; [`write_corpus`] writes
//! them with a manifest (`manifest.tsv`: file, class, then each expected text, TAB-separated —
//! payloads never contain TABs).

pub mod clutter;
pub mod render;

use std::fs;
use std::io::{self, BufRead, Write};
use std::path::Path;

use image::GrayImage;
use qrcode::{Color, EcLevel, QrCode};

pub use render::Rng;
use render::{Canvas, Placement, Symbol, project};

/// Frame size of every class except [`Class::Small720p`].
const W: usize = 640;
const H: usize = 480;
/// Quiet zone in modules (ISO/IEC 18004 asks for 4).
const QUIET: usize = 4;

/// One kind of damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Clean,
    Scale,
    Rotation,
    Perspective,
    GaussianBlur,
    MotionBlur,
    Noise,
    LowContrast,
    Glare,
    TwoCodes,
    Inverted,
    Small720p,
    /// 1.0–2.0 px per module.
    Tiny,
    /// Token codes (V9–V13) streaked over 0.8–1.5 modules.
    MotionToken,
    /// Gaussian blur of σ 0.25–0.45 module.
    GaussModule,
    /// Light-on-dark token codes (V9–V13), slightly soft.
    InvertedToken,
    /// A ~14-level code on a phone whose dark bezel, against a bright store, spans the frame's
    /// 1–99 % range over 180 levels.
    LowContrastBezel,
    /// Glare that saturates a disc of the data area to white; the finders survive.
    GlareData,
    /// Shelves, labels, text and barcodes, no code (640×480).
    NoCode,
    /// The same at 1280×720.
    NoCode720p,
}

impl Class {
    pub const ALL: [Class; 20] = [
        Class::Clean,
        Class::Scale,
        Class::Rotation,
        Class::Perspective,
        Class::GaussianBlur,
        Class::MotionBlur,
        Class::Noise,
        Class::LowContrast,
        Class::Glare,
        Class::TwoCodes,
        Class::Inverted,
        Class::Small720p,
        Class::Tiny,
        Class::MotionToken,
        Class::GaussModule,
        Class::InvertedToken,
        Class::LowContrastBezel,
        Class::GlareData,
        Class::NoCode,
        Class::NoCode720p,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Class::Clean => "clean",
            Class::Scale => "scale_1to4px",
            Class::Rotation => "rotation",
            Class::Perspective => "perspective",
            Class::GaussianBlur => "gauss_blur",
            Class::MotionBlur => "motion_blur",
            Class::Noise => "noise",
            Class::LowContrast => "low_contrast",
            Class::Glare => "glare",
            Class::TwoCodes => "two_codes",
            Class::Inverted => "inverted",
            Class::Small720p => "small_720p",
            Class::Tiny => "tiny_1to2px",
            Class::MotionToken => "motion_token",
            Class::GaussModule => "gauss_module",
            Class::InvertedToken => "inverted_token",
            Class::LowContrastBezel => "lowcontrast_bezel",
            Class::GlareData => "glare_data",
            Class::NoCode => "nocode_640x480",
            Class::NoCode720p => "nocode_720p",
        }
    }

    /// Frame size in pixels.
    pub fn size(self) -> (usize, usize) {
        match self {
            Class::Small720p | Class::NoCode720p => (1280, 720),
            _ => (W, H),
        }
    }

    /// Whether the class's frames hold no code (they measure rejection cost).
    pub fn code_free(self) -> bool {
        matches!(self, Class::NoCode | Class::NoCode720p)
    }

    /// Whether the class's codes are app tokens (versions 9–13 at ECC M), not the payload mix.
    fn tokens_only(self) -> bool {
        matches!(
            self,
            Class::MotionToken | Class::InvertedToken | Class::GlareData
        )
    }
}

/// One rendered frame and the texts a decoder should find in it.
pub struct Sample {
    pub image: GrayImage,
    pub texts: Vec<String>,
}

/// A manifest row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub file: String,
    pub class: String,
    pub texts: Vec<String>,
}

const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64_chars(rng: &mut Rng, n: usize) -> String {
    (0..n).map(|_| B64URL[rng.below(64)] as char).collect()
}

/// A compact-JWT-shaped string of 180–260 characters: the real EdDSA header of docs/protocols.md §5
/// (`{"alg":"EdDSA","typ":"JWT","kid":"k1"}`), a claims segment starting `eyJ`, and an 86-char
/// segment (the length of a base64url Ed25519 signature). Random base64url stands in for the
/// claims: the decoder sees the same byte-mode symbol either way.
pub fn jwt(rng: &mut Rng) -> String {
    const HEADER: &str = "eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCIsImtpZCI6ImsxIn0";
    let total = 180 + rng.below(81);
    let claims = total - HEADER.len() - 86 - 2;
    format!(
        "{HEADER}.eyJ{}.{}",
        b64_chars(rng, claims - 3),
        b64_chars(rng, 86)
    )
}

/// An EAN-13 (valid check digit) or a short store URL.
fn short_code(rng: &mut Rng) -> String {
    if rng.below(2) == 0 {
        let digits: Vec<u32> = (0..12).map(|_| rng.below(10) as u32).collect();
        let sum: u32 = digits
            .iter()
            .enumerate()
            .map(|(i, d)| if i % 2 == 0 { *d } else { 3 * d })
            .sum();
        let mut s: String = digits
            .iter()
            .map(|d| char::from_digit(*d, 10).unwrap_or('0'))
            .collect();
        s.push(char::from_digit((10 - sum % 10) % 10, 10).unwrap_or('0'));
        s
    } else {
        format!("https://app.example/s/{}", b64_chars(rng, 6))
    }
}

/// Payload kind `k % 3`: bare JWT, JWT in the app URL (docs/protocols.md §5), short code.
fn payload(k: usize, rng: &mut Rng) -> String {
    match k % 3 {
        0 => jwt(rng),
        1 => format!("https://app.example/e?t={}", jwt(rng)),
        _ => short_code(rng),
    }
}

/// Module matrix (`true` = dark) and side of `text` at ECC level M, the level phone apps use.
pub fn encode(text: &str) -> (Vec<bool>, usize) {
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M)
        .expect("payloads are far below QR capacity");
    let n = code.width();
    (
        code.to_colors()
            .into_iter()
            .map(|c| c == Color::Dark)
            .collect(),
        n,
    )
}

/// Pixels per module: `want`, reduced so a symbol of `n` modules (plus quiet zone) rotated by
/// `rotation` fits in `room` pixels.
fn fit_scale(want: f32, n: usize, room: f32, rotation: f32) -> f32 {
    let spread = rotation.sin().abs() + rotation.cos().abs();
    want.min(room / ((n + 2 * QUIET) as f32 * spread))
}

/// Renders sample `index` of `class`; the same `(class, index, seed)` gives the same frame.
pub fn generate(class: Class, index: usize, seed: u64) -> Sample {
    let mut rng = Rng::new(seed ^ ((class as u64 + 1) << 32) ^ index as u64);
    let (w, h) = class.size();
    if class.code_free() {
        let mut canvas = clutter::scene(w, h, &mut rng);
        return camera(&mut canvas, &mut rng, Vec::new());
    }
    // Token classes: a bare JWT (V9–V12) or the app URL around one (V11–V13).
    let kind = if class.tokens_only() {
        index % 2
    } else {
        index
    };
    let text = payload(kind, &mut rng);
    let (modules, n) = encode(&text);
    let mut texts = vec![text];
    let (mut dark, mut light) = (rng.range(15.0, 45.0), rng.range(215.0, 245.0));
    let mut scene_level = rng.range(140.0, 200.0);
    match class {
        Class::LowContrast => {
            light = rng.range(120.0, 180.0);
            dark = light - rng.range(15.0, 40.0);
            scene_level = light - 10.0;
        }
        Class::Inverted | Class::InvertedToken => {
            // Dark-mode app: light modules on a dark screen, a darker phone around it.
            std::mem::swap(&mut dark, &mut light);
            scene_level = rng.range(20.0, 90.0);
        }
        Class::LowContrastBezel => {
            light = rng.range(110.0, 170.0);
            dark = light - rng.range(12.0, 16.0);
            // A bright store: with the bezel, the frame spans well over 180 levels.
            scene_level = rng.range(205.0, 235.0);
        }
        _ => {}
    }
    let mut canvas = Canvas::scene(w, h, scene_level, &mut rng);
    let room = (w.min(h) as f32) * 0.92;
    let mut rotation = rng.range(-0.15, 0.15);
    let (mut tilt_x, mut tilt_y) = (0.0, 0.0);
    let mut scale = rng.range(3.5, 6.5);
    match class {
        Class::Scale => {
            // 1.0, 1.5, … 4.0 px/module, cycled, at a random sub-pixel offset.
            scale = 1.0 + (index % 7) as f32 * 0.5;
            rotation = rng.range(-0.05, 0.05);
        }
        Class::Rotation => rotation = rng.sign() * rng.range(0.1, 0.78),
        Class::Perspective => {
            tilt_x = rng.sign() * rng.range(0.35, 0.75);
            tilt_y = rng.sign() * rng.range(0.2, 0.6);
        }
        Class::Small720p => scale = rng.range(2.0, 3.0),
        Class::Tiny => {
            // 1.0, 1.1, … 2.0 px/module, cycled.
            scale = 1.0 + (index % 11) as f32 * 0.1;
            rotation = rng.range(-0.05, 0.05);
        }
        Class::InvertedToken => scale = rng.range(3.0, 6.0),
        // Streaks and blur hurt most where modules are few pixels: a phone held at arm's length.
        Class::MotionToken | Class::GaussModule => scale = rng.range(2.5, 5.0),
        Class::LowContrastBezel => rotation = rng.range(-0.05, 0.05),
        _ => {}
    }
    let sym = Symbol {
        modules: &modules,
        n,
        quiet: if matches!(class, Class::Inverted | Class::InvertedToken) {
            QUIET + 2
        } else {
            QUIET
        },
        dark,
        light,
    };
    if class == Class::TwoCodes {
        // Two codes side by side; the second is a different payload kind.
        let text2 = payload(index + 1 + rng.below(2), &mut rng);
        let (m2, n2) = encode(&text2);
        let half = w as f32 / 2.0;
        for (i, (m, nn)) in [(&modules, n), (&m2, n2)].into_iter().enumerate() {
            let rot = rng.range(-0.12, 0.12);
            let s = fit_scale(rng.range(3.0, 5.0), nn, half * 0.92, rot);
            let side = s * (nn + 2 * QUIET) as f32;
            let at = Placement {
                cx: half * (i as f32 + 0.5) + rng.range(-4.0, 4.0),
                cy: h as f32 / 2.0 + rng.range(-60.0, 60.0),
                side,
                rotation: rot,
                tilt_x: 0.0,
                tilt_y: 0.0,
            };
            canvas.draw(
                &Symbol {
                    modules: m,
                    n: nn,
                    ..sym
                },
                &at,
            );
        }
        texts.push(text2);
    } else {
        let scale = fit_scale(scale, n, room, rotation);
        let side = scale * (n + 2 * sym.quiet) as f32;
        let spread = (rotation.sin().abs() + rotation.cos().abs()) * side / 2.0 + 4.0;
        let at = Placement {
            cx: rng.range(spread, (w as f32 - spread).max(spread + 1.0)),
            cy: rng.range(spread, (h as f32 - spread).max(spread + 1.0)),
            side,
            rotation,
            tilt_x,
            tilt_y,
        };
        if class == Class::LowContrastBezel {
            phone(&mut canvas, &at, light, &mut rng);
        }
        canvas.draw(&sym, &at);
        apply_damage(class, &mut canvas, &at, scale, &mut rng);
    }
    camera(&mut canvas, &mut rng, texts)
}

/// Every frame goes through the same camera: slight optics blur and sensor noise.
fn camera(canvas: &mut Canvas, rng: &mut Rng, texts: Vec<String>) -> Sample {
    canvas.gaussian_blur(0.5);
    canvas.noise(2.0, rng);
    Sample {
        image: canvas.to_image(),
        texts,
    }
}

/// A phone around the code at `at`: its screen (at the code's light level) and a dark bezel.
fn phone(canvas: &mut Canvas, at: &Placement, screen: f32, rng: &mut Rng) {
    let (sw, sh) = (
        at.side * rng.range(1.05, 1.2),
        at.side * rng.range(1.3, 1.7),
    );
    let bezel = at.side * rng.range(0.06, 0.14);
    let level = rng.range(8.0, 25.0);
    // The code sits in the upper part of the screen, as apps show it.
    let top = at.cy - at.side * rng.range(0.55, 0.7);
    let rect = |c: &mut Canvas, x0: f32, y0: f32, x1: f32, y1: f32, v: f32| {
        let cx = |x: f32| (x.max(0.0) as usize).min(c.w);
        let cy = |y: f32| (y.max(0.0) as usize).min(c.h);
        for y in cy(y0)..cy(y1) {
            c.px[y * c.w + cx(x0)..y * c.w + cx(x1)].fill(v);
        }
    };
    let (x0, x1) = (at.cx - sw / 2.0, at.cx + sw / 2.0);
    rect(
        canvas,
        x0 - bezel,
        top - bezel,
        x1 + bezel,
        top + sh + bezel,
        level,
    );
    rect(canvas, x0, top, x1, top + sh, screen);
}

fn apply_damage(class: Class, canvas: &mut Canvas, at: &Placement, module: f32, rng: &mut Rng) {
    match class {
        Class::MotionToken => canvas.motion_blur(
            module * rng.range(0.8, 1.5),
            rng.range(0.0, std::f32::consts::PI),
        ),
        Class::GaussModule => canvas.gaussian_blur(module * rng.range(0.25, 0.45)),
        Class::InvertedToken => canvas.gaussian_blur(module * rng.range(0.1, 0.3)),
        Class::GlareData => {
            // Over the data area, between the finders (which sit in the outer ~16 % of the
            // symbol square with its quiet zone).
            let c = project(at);
            let (u, v) = (rng.range(0.4, 0.7), rng.range(0.4, 0.7));
            let x = c[0].0 + (c[1].0 - c[0].0) * u + (c[3].0 - c[0].0) * v;
            let y = c[0].1 + (c[1].1 - c[0].1) * u + (c[3].1 - c[0].1) * v;
            canvas.glare(
                x,
                y,
                at.side * rng.range(0.08, 0.16),
                rng.range(300.0, 500.0),
            );
        }
        Class::GaussianBlur => canvas.gaussian_blur(rng.range(1.0, 2.2)),
        Class::MotionBlur => {
            canvas.motion_blur(rng.range(4.0, 12.0), rng.range(0.0, std::f32::consts::PI))
        }
        Class::Noise => canvas.noise(rng.range(12.0, 30.0), rng),
        Class::Glare => {
            // A highlight somewhere over the symbol, a quarter to a half of its size.
            let c = project(at);
            let (u, v) = (rng.range(0.2, 0.8), rng.range(0.2, 0.8));
            let x = c[0].0 + (c[1].0 - c[0].0) * u + (c[3].0 - c[0].0) * v;
            let y = c[0].1 + (c[1].1 - c[0].1) * u + (c[3].1 - c[0].1) * v;
            canvas.glare(
                x,
                y,
                at.side * rng.range(0.12, 0.25),
                rng.range(120.0, 220.0),
            );
        }
        _ => {}
    }
}

/// Writes `per_class` samples of every class as PNGs plus `manifest.tsv` into `dir`.
pub fn write_corpus(dir: &Path, per_class: usize, seed: u64) -> io::Result<Vec<Entry>> {
    fs::create_dir_all(dir)?;
    let mut entries = Vec::new();
    for class in Class::ALL {
        for i in 0..per_class {
            let s = generate(class, i, seed);
            let file = format!("{}_{i:03}.png", class.name());
            s.image.save(dir.join(&file)).map_err(io::Error::other)?;
            entries.push(Entry {
                file,
                class: class.name().to_string(),
                texts: s.texts,
            });
        }
    }
    let mut m = io::BufWriter::new(fs::File::create(dir.join("manifest.tsv"))?);
    for e in &entries {
        writeln!(m, "{}\t{}\t{}", e.file, e.class, e.texts.join("\t"))?;
    }
    m.flush()?;
    Ok(entries)
}

/// Reads a manifest written by [`write_corpus`].
pub fn read_manifest(path: &Path) -> io::Result<Vec<Entry>> {
    let f = io::BufReader::new(fs::File::open(path)?);
    let mut out = Vec::new();
    for line in f.lines() {
        let line = line?;
        let mut parts = line.split('\t');
        let (Some(file), Some(class)) = (parts.next(), parts.next()) else {
            continue;
        };
        out.push(Entry {
            file: file.to_string(),
            class: class.to_string(),
            // A code-free frame's row ends in an empty field.
            texts: parts
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_payloads_in_range() {
        let a = generate(Class::Rotation, 3, 7);
        let b = generate(Class::Rotation, 3, 7);
        assert_eq!(a.image.as_raw(), b.image.as_raw());
        assert_eq!(a.texts, b.texts);
        let mut rng = Rng::new(1);
        for _ in 0..100 {
            let t = jwt(&mut rng);
            assert!((180..=260).contains(&t.len()), "{}", t.len());
            assert!(t.starts_with("eyJ") && t.split('.').count() == 3);
        }
    }
}
