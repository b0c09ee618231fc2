//! Drawing for the corpus: a float canvas, a QR symbol placed through a 3-D tilt and perspective
//! projection, and the camera damage (blur, motion, noise, glare). All randomness comes from the
//! caller's seeded [`Rng`], so a corpus is reproducible bit for bit.

use image::GrayImage;

/// SplitMix64: tiny, seedable, and good enough for test images (no `rand` dependency).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }

    /// Uniform integer in `[0, n)`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Standard normal (Box–Muller).
    pub fn gauss(&mut self) -> f32 {
        let u1 = self.range(1e-7, 1.0);
        let u2 = self.range(0.0, 1.0);
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }

    pub fn sign(&mut self) -> f32 {
        if self.next_u64() & 1 == 0 { 1.0 } else { -1.0 }
    }
}

/// A grayscale image in floating point (0 = black, 255 = white) while damage is applied.
#[derive(Debug, Clone)]
pub struct Canvas {
    pub w: usize,
    pub h: usize,
    pub px: Vec<f32>,
}

/// A QR symbol to draw: its module matrix and the two levels.
pub struct Symbol<'a> {
    pub modules: &'a [bool],
    pub n: usize,
    /// Quiet-zone width in modules drawn around the symbol (4 per the standard).
    pub quiet: usize,
    pub dark: f32,
    pub light: f32,
}

/// Where a symbol lands: centre, side length in pixels, in-plane rotation and tilt (radians).
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    pub cx: f32,
    pub cy: f32,
    pub side: f32,
    pub rotation: f32,
    pub tilt_x: f32,
    pub tilt_y: f32,
}

impl Canvas {
    /// A cluttered scene: a soft gradient around `level` with a few flat rectangles, so the
    /// decoders also have to reject non-code structure.
    pub fn scene(w: usize, h: usize, level: f32, rng: &mut Rng) -> Canvas {
        let (gx, gy) = (rng.range(-40.0, 40.0), rng.range(-40.0, 40.0));
        let mut px = Vec::with_capacity(w * h);
        for y in 0..h {
            for x in 0..w {
                px.push(
                    level + gx * (x as f32 / w as f32 - 0.5) + gy * (y as f32 / h as f32 - 0.5),
                );
            }
        }
        let mut c = Canvas { w, h, px };
        for _ in 0..rng.below(5) + 2 {
            let rw = rng.range(15.0, w as f32 / 4.0) as usize;
            let rh = rng.range(15.0, h as f32 / 4.0) as usize;
            let x0 = rng.below(w.saturating_sub(rw).max(1));
            let y0 = rng.below(h.saturating_sub(rh).max(1));
            let v = rng.range(level - 90.0, level + 40.0);
            for y in y0..(y0 + rh).min(h) {
                c.px[y * w + x0..y * w + (x0 + rw).min(w)].fill(v);
            }
        }
        c
    }

    /// Draws the symbol (quiet zone included) with 4×4 supersampling for realistic edges.
    pub fn draw(&mut self, sym: &Symbol<'_>, at: &Placement) {
        let total = (sym.n + 2 * sym.quiet) as f32;
        let corners = project(at);
        let Some(h) = Homography::unit_square_to(corners) else {
            return;
        };
        let Some(inv) = h.inverse() else {
            return;
        };
        let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
        for (x, y) in corners {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
        let clampx = |v: f32| (v.max(0.0) as usize).min(self.w);
        let clampy = |v: f32| (v.max(0.0) as usize).min(self.h);
        const SS: usize = 4;
        for y in clampy(y0.floor())..clampy(y1.ceil() + 1.0) {
            for x in clampx(x0.floor())..clampx(x1.ceil() + 1.0) {
                let (mut inside, mut acc) = (0usize, 0.0f32);
                for sy in 0..SS {
                    for sx in 0..SS {
                        let px = x as f32 + (sx as f32 + 0.5) / SS as f32;
                        let py = y as f32 + (sy as f32 + 0.5) / SS as f32;
                        let (u, v) = inv.map(px, py);
                        if !(0.0..1.0).contains(&u) || !(0.0..1.0).contains(&v) {
                            continue;
                        }
                        inside += 1;
                        let mx = (u * total) as isize - sym.quiet as isize;
                        let my = (v * total) as isize - sym.quiet as isize;
                        let n = sym.n as isize;
                        let dark = (0..n).contains(&mx)
                            && (0..n).contains(&my)
                            && sym.modules[(my * n + mx) as usize];
                        acc += if dark { sym.dark } else { sym.light };
                    }
                }
                if inside > 0 {
                    let cov = inside as f32 / (SS * SS) as f32;
                    let i = y * self.w + x;
                    self.px[i] = self.px[i] * (1.0 - cov) + acc / inside as f32 * cov;
                }
            }
        }
    }

    /// Separable Gaussian blur (optics, defocus).
    pub fn gaussian_blur(&mut self, sigma: f32) {
        if sigma <= 0.05 {
            return;
        }
        let r = (sigma * 3.0).ceil() as isize;
        let k: Vec<f32> = (-r..=r)
            .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
            .collect();
        let ks: f32 = k.iter().sum();
        let k: Vec<f32> = k.iter().map(|v| v / ks).collect();
        let (w, h) = (self.w as isize, self.h as isize);
        let mut tmp = vec![0.0f32; self.px.len()];
        for y in 0..h {
            for x in 0..w {
                let mut s = 0.0;
                for (j, kv) in k.iter().enumerate() {
                    let xx = (x + j as isize - r).clamp(0, w - 1);
                    s += kv * self.px[(y * w + xx) as usize];
                }
                tmp[(y * w + x) as usize] = s;
            }
        }
        for y in 0..h {
            for x in 0..w {
                let mut s = 0.0;
                for (j, kv) in k.iter().enumerate() {
                    let yy = (y + j as isize - r).clamp(0, h - 1);
                    s += kv * tmp[(yy * w + x) as usize];
                }
                self.px[(y * w + x) as usize] = s;
            }
        }
    }

    /// Linear motion blur of `len` pixels at `angle` (hand or phone moving during exposure).
    pub fn motion_blur(&mut self, len: f32, angle: f32) {
        let steps = (len * 2.0).ceil().max(2.0) as usize;
        let (dx, dy) = (angle.cos(), angle.sin());
        let src = self.px.clone();
        for y in 0..self.h {
            for x in 0..self.w {
                let mut s = 0.0;
                for i in 0..steps {
                    let t = (i as f32 / (steps - 1) as f32 - 0.5) * len;
                    s += bilinear(&src, self.w, self.h, x as f32 + t * dx, y as f32 + t * dy);
                }
                self.px[y * self.w + x] = s / steps as f32;
            }
        }
    }

    /// Additive Gaussian sensor noise.
    pub fn noise(&mut self, sigma: f32, rng: &mut Rng) {
        for v in &mut self.px {
            *v += sigma * rng.gauss();
        }
    }

    /// A bright specular blob (light reflected by a phone screen), saturating at white.
    pub fn glare(&mut self, cx: f32, cy: f32, radius: f32, strength: f32) {
        for y in 0..self.h {
            for x in 0..self.w {
                let d2 = (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2);
                self.px[y * self.w + x] += strength * (-d2 / (2.0 * radius * radius)).exp();
            }
        }
    }

    pub fn to_image(&self) -> GrayImage {
        let px = self
            .px
            .iter()
            .map(|v| v.round().clamp(0.0, 255.0) as u8)
            .collect();
        GrayImage::from_raw(self.w as u32, self.h as u32, px).expect("size matches by construction")
    }
}

fn bilinear(px: &[f32], w: usize, h: usize, x: f32, y: f32) -> f32 {
    let x = x.clamp(0.0, (w - 1) as f32);
    let y = y.clamp(0.0, (h - 1) as f32);
    let (x0, y0) = (x as usize, y as usize);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let top = px[y0 * w + x0] * (1.0 - fx) + px[y0 * w + x1] * fx;
    let bot = px[y1 * w + x0] * (1.0 - fx) + px[y1 * w + x1] * fx;
    top * (1.0 - fy) + bot * fy
}

/// Image positions of the symbol square's corners (top-left, top-right, bottom-right,
/// bottom-left): the square is rotated in-plane, tilted about its x and y axes in 3-D, and
/// projected by a pinhole camera whose focal length equals the viewing distance (so an untilted
/// code keeps its size). A 40° tilt thus shows real foreshortening, not just a skew.
pub fn project(at: &Placement) -> [(f32, f32); 4] {
    let half = at.side / 2.0;
    let (sr, cr) = at.rotation.sin_cos();
    let (sx, cx) = at.tilt_x.sin_cos();
    let (sy, cy) = at.tilt_y.sin_cos();
    let f = at.side * 2.5;
    [(-half, -half), (half, -half), (half, half), (-half, half)].map(|(x, y)| {
        let (x, y) = (x * cr - y * sr, x * sr + y * cr);
        let (y, z) = (y * cx, y * sx);
        let (x, z) = (x * cy + z * sy, -x * sy + z * cy);
        let s = f / (f + z);
        (at.cx + x * s, at.cy + y * s)
    })
}

/// A plane projective map, row-major 3×3.
#[derive(Debug, Clone, Copy)]
struct Homography([f32; 9]);

impl Homography {
    /// Maps the unit square (0,0),(1,0),(1,1),(0,1) to the quad `q` (Heckbert's closed form).
    fn unit_square_to(q: [(f32, f32); 4]) -> Option<Homography> {
        let [(x0, y0), (x1, y1), (x2, y2), (x3, y3)] = q;
        let (dx1, dx2, dx3) = (x1 - x2, x3 - x2, x0 - x1 + x2 - x3);
        let (dy1, dy2, dy3) = (y1 - y2, y3 - y2, y0 - y1 + y2 - y3);
        let den = dx1 * dy2 - dx2 * dy1;
        if den.abs() < 1e-9 {
            return None;
        }
        let g = (dx3 * dy2 - dx2 * dy3) / den;
        let h = (dx1 * dy3 - dx3 * dy1) / den;
        Some(Homography([
            x1 - x0 + g * x1,
            x3 - x0 + h * x3,
            x0,
            y1 - y0 + g * y1,
            y3 - y0 + h * y3,
            y0,
            g,
            h,
            1.0,
        ]))
    }

    fn inverse(&self) -> Option<Homography> {
        let [a, b, c, d, e, f, g, h, i] = self.0;
        let det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g);
        if det.abs() < 1e-12 {
            return None;
        }
        let m = [
            e * i - f * h,
            c * h - b * i,
            b * f - c * e,
            f * g - d * i,
            a * i - c * g,
            c * d - a * f,
            d * h - e * g,
            b * g - a * h,
            a * e - b * d,
        ];
        Some(Homography(m.map(|v| v / det)))
    }

    fn map(&self, x: f32, y: f32) -> (f32, f32) {
        let m = &self.0;
        let den = m[6] * x + m[7] * y + m[8];
        (
            (m[0] * x + m[1] * y + m[2]) / den,
            (m[3] * x + m[4] * y + m[5]) / den,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn homography_maps_corners_and_inverts() {
        let q = [(10.0, 20.0), (110.0, 25.0), (105.0, 130.0), (5.0, 120.0)];
        let h = Homography::unit_square_to(q).unwrap();
        for ((u, v), (x, y)) in [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]
            .into_iter()
            .zip(q)
        {
            let (mx, my) = h.map(u, v);
            assert!((mx - x).abs() < 1e-3 && (my - y).abs() < 1e-3);
            let (iu, iv) = h.inverse().unwrap().map(x, y);
            assert!((iu - u).abs() < 1e-4 && (iv - v).abs() < 1e-4);
        }
    }
}
