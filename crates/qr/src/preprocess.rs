//! Image operations the cascade runs before handing a plane to rqrr.
//!
//! Each one targets a known gap of rqrr's own binarizer, which compares every pixel with a
//! horizontal running mean over width/8 pixels and calls it black when it is 5 % below:
//! - [`adaptive_threshold`]: a 2-D local mean (integral image) instead of a 1-D row mean, so a
//!   glare blob, a vignette or a light gradient does not swallow whole rows of modules; its
//!   inverted form gives light-on-dark codes the dark-on-light binary image rqrr needs;
//! - [`contrast_stretch`]: rqrr's 5 % margin is relative to the absolute level, so a code with
//!   dark = 110 and light = 140 sits close to it; stretching to the full range restores the margin;
//! - [`noise_level`] and [`box3`]: sensor noise turns into speckle that breaks finder runs.

use crate::frame::Plane;

/// Summed-area table with one padding row and column, `(w + 1) × (h + 1)`.
///
/// Sums are `u32` with wrapping arithmetic: the total of a large frame may overflow, but any box
/// sum we read (at most `255 × window area`) fits, and modular arithmetic gives it exactly.
pub(crate) struct Integral {
    w: usize,
    sums: Vec<u32>,
}

impl Integral {
    pub fn new(p: &Plane) -> Integral {
        let (w, h) = (p.w, p.h);
        let stride = w + 1;
        let mut sums = vec![0u32; stride * (h + 1)];
        for y in 0..h {
            let mut row_sum = 0u32;
            let src = &p.px[y * w..y * w + w];
            for x in 0..w {
                row_sum = row_sum.wrapping_add(src[x] as u32);
                sums[(y + 1) * stride + x + 1] = sums[y * stride + x + 1].wrapping_add(row_sum);
            }
        }
        Integral { w, sums }
    }

    /// Sum and pixel count of the `(2r+1)²` box around (x, y), clipped to the `h` rows and the
    /// width of the plane.
    fn box_around(&self, x: usize, y: usize, r: usize, h: usize) -> (u32, u32) {
        let (x0, x1) = (x.saturating_sub(r), (x + r + 1).min(self.w));
        let (y0, y1) = (y.saturating_sub(r), (y + r + 1).min(h));
        let s = self.w + 1;
        let sum = self.sums[y1 * s + x1]
            .wrapping_sub(self.sums[y0 * s + x1])
            .wrapping_sub(self.sums[y1 * s + x0])
            .wrapping_add(self.sums[y0 * s + x0]);
        (sum, ((x1 - x0) * (y1 - y0)) as u32)
    }

    /// Sum over the box `[x0, x1) × [y0, y1)`.
    #[cfg(test)]
    fn box_sum(&self, x0: usize, y0: usize, x1: usize, y1: usize) -> u32 {
        let s = self.w + 1;
        self.sums[y1 * s + x1]
            .wrapping_sub(self.sums[y0 * s + x1])
            .wrapping_sub(self.sums[y1 * s + x0])
            .wrapping_add(self.sums[y0 * s + x0])
    }
}

/// Side of the local-mean window for a `w` × `h` plane.
///
/// The window must be wider than the largest solid area of a code (the 3 × 3-module finder
/// centre): inside a window that is all black the mean is black and the centre would turn white.
/// A window a sixth of the short side wide (radius 1/12) covers a finder centre of any code that
/// fits the frame at up to ~9 px/module, while staying local enough to follow glare. The cap
/// keeps box sums within `u32` and the mean local on large frames.
pub(crate) fn window_radius(w: usize, h: usize) -> usize {
    (w.min(h) / 12).clamp(6, 64)
}

/// How [`adaptive_threshold`] binarizes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Threshold {
    /// Radius of the local-mean window (see [`window_radius`]).
    pub radius: usize,
    /// The smallest difference from the local mean (grey levels) that counts as dark: above the
    /// sensor noise, so flat areas stay white instead of turning into speckle that floods the
    /// census and rqrr with fake finder runs. See [`min_delta`].
    pub min_delta: u32,
    /// Black means *lighter* than the local mean: the binary image of the negative, from the
    /// same integral image (light-on-dark codes).
    pub invert: bool,
}

/// Binarizes `p` against its local mean: a pixel is black (`true`) when it is darker than the
/// mean of the `(2r+1)²` window around it by more than `max(min_delta, 4 % of the mean)`.
///
/// The raw pixel is compared, not a smoothed one: averaging even 3×3 pixels before the
/// comparison rounds the finder corners rqrr fits its perspective to, and measured worse on the
/// bench corpus, noise class included.
///
/// The absolute floor keeps flat areas white (see [`Threshold::min_delta`]); the relative part
/// mirrors rqrr's own 5 % rule on bright areas.
pub(crate) fn adaptive_threshold(p: &Plane, ii: &Integral, t: Threshold) -> Vec<bool> {
    if t.invert {
        threshold_rows::<true>(p, ii, t.radius, t.min_delta)
    } else {
        threshold_rows::<false>(p, ii, t.radius, t.min_delta)
    }
}

/// The per-pixel loop of [`adaptive_threshold`], monomorphized per polarity so the hot loop has
/// no branch on it. Integer only; sums fit `u32` (≤ 255 · 129² with the radius cap of 64).
fn threshold_rows<const INVERT: bool>(
    p: &Plane,
    ii: &Integral,
    r: usize,
    min_delta: u32,
) -> Vec<bool> {
    // 4 % of the mean as ×41 >> 10 (4.004 %): no division per pixel.
    const REL_MUL: u32 = 41;
    let (w, h) = (p.w, p.h);
    let stride = ii.w + 1;
    debug_assert_eq!(ii.w, w, "integral of another plane");
    let mut out = vec![false; w * h];
    // Per column: the window's [x0, x1) bounds, clamped at the edges.
    let cols: Vec<(usize, usize)> = (0..w)
        .map(|x| (x.saturating_sub(r), (x + r + 1).min(w)))
        .collect();
    for y in 0..h {
        let (y0, y1) = (y.saturating_sub(r), (y + r + 1).min(h));
        let top = &ii.sums[y0 * stride..y0 * stride + stride];
        let bot = &ii.sums[y1 * stride..y1 * stride + stride];
        let rows = (y1 - y0) as u32;
        let src = &p.px[y * w..y * w + w];
        let dst = &mut out[y * w..y * w + w];
        for ((o, &v), &(x0, x1)) in dst.iter_mut().zip(src).zip(&cols) {
            let n = (x1 - x0) as u32 * rows;
            let sum = bot[x1]
                .wrapping_sub(top[x1])
                .wrapping_sub(bot[x0])
                .wrapping_add(top[x0]);
            // Compare v with sum / n ± delta, multiplied through by n.
            let v = v as u32 * n;
            *o = if INVERT {
                // The negative's mean level is 255·n − sum.
                let delta = (((255 * n - sum) as u64 * REL_MUL as u64) >> 10) as u32;
                v > sum + delta.max(min_delta * n)
            } else {
                let delta = ((sum as u64 * REL_MUL as u64) >> 10) as u32;
                v + delta.max(min_delta * n) < sum
            };
        }
    }
    out
}

/// Whether the `(2rs+1)²` box around (x, y) is darker than the mean of the `(2r+1)²` window
/// (with `invert`: lighter), with no margin. For sampling module centres of a located grid:
/// there the only question is which side of the local mean a module is on, and the margin
/// [`adaptive_threshold`] needs against speckle in flat areas would turn low-contrast light
/// modules dark; the small box averages sensor noise out of the sample.
pub(crate) fn is_dark_module(
    p: &Plane,
    ii: &Integral,
    (r, rs): (usize, usize),
    invert: bool,
    (x, y): (usize, usize),
) -> bool {
    let (sum, n) = ii.box_around(x, y, r, p.h);
    let (v, ns) = ii.box_around(x, y, rs, p.h);
    // v / ns against sum / n, cross-multiplied (u64: both products reach 255 · 129² · 9).
    let (v, sum) = (v as u64 * n as u64, sum as u64 * ns as u64);
    if invert { v > sum } else { v < sum }
}

/// Sensor-noise estimate (grey levels, ≈ σ of Gaussian noise): the median absolute difference
/// of horizontal neighbours on every fourth row. Edges are a small minority of pixel pairs, so
/// the median sees only the noise; for Gaussian noise it is 0.95 σ.
pub(crate) fn noise_level(p: &Plane) -> u8 {
    let mut hist = [0usize; 256];
    let mut n = 0;
    for y in (0..p.h).step_by(4) {
        let row = &p.px[y * p.w..y * p.w + p.w];
        for pair in row.windows(2) {
            hist[pair[0].abs_diff(pair[1]) as usize] += 1;
            n += 1;
        }
    }
    percentile(&hist, n / 2)
}

/// The threshold floor for a plane of the given [`noise_level`]: twice the noise (≈ 2 σ keeps
/// 95 % of flat pixels white), and never under 4 grey levels.
pub(crate) fn min_delta(noise: u8) -> u32 {
    (2 * noise as u32).max(4)
}

/// 3×3 box mean (edges clamped). Applied to noisy frames only: it cuts noise σ by 3, which keeps
/// speckle out of the binary image, at the price of slightly rounder finder corners.
pub(crate) fn box3(p: &Plane) -> Plane {
    let (w, h) = (p.w, p.h);
    // Horizontal sums of three, then vertical sums of three of those.
    let mut hs = vec![0u16; w * h];
    for y in 0..h {
        let row = &p.px[y * w..y * w + w];
        for x in 0..w {
            let (a, b) = (x.saturating_sub(1), (x + 1).min(w - 1));
            hs[y * w + x] = row[a] as u16 + row[x] as u16 + row[b] as u16;
        }
    }
    let mut px = vec![0u8; w * h];
    for y in 0..h {
        let (a, b) = (y.saturating_sub(1), (y + 1).min(h - 1));
        for x in 0..w {
            let s = hs[a * w + x] + hs[y * w + x] + hs[b * w + x];
            px[y * w + x] = ((s + 4) / 9) as u8;
        }
    }
    Plane { w, h, px }
}

/// Linear stretch so the 1st and 99th percentiles map to 0 and 255. Returns `None` when the plane
/// already spans most of the range (the pass would repeat the plain one) or is flat (nothing to
/// find).
pub(crate) fn contrast_stretch(p: &Plane) -> Option<Plane> {
    let mut hist = [0usize; 256];
    for &v in &p.px {
        hist[v as usize] += 1;
    }
    let n = p.px.len();
    let cut = n / 100;
    let lo = percentile(&hist, cut);
    let hi = percentile(&hist, n.saturating_sub(cut + 1));
    let span = hi.saturating_sub(lo);
    if !(8..=160).contains(&span) {
        return None;
    }
    let mut lut = [0u8; 256];
    for (v, o) in lut.iter_mut().enumerate() {
        let s = (v as i32 - lo as i32) * 255 / span as i32;
        *o = s.clamp(0, 255) as u8;
    }
    Some(Plane {
        w: p.w,
        h: p.h,
        px: p.px.iter().map(|&v| lut[v as usize]).collect(),
    })
}

/// The value at rank `k` (0-based) of the histogram's samples.
fn percentile(hist: &[usize; 256], k: usize) -> u8 {
    let mut seen = 0;
    for (v, &c) in hist.iter().enumerate() {
        seen += c;
        if seen > k {
            return v as u8;
        }
    }
    255
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plane(w: usize, h: usize, mut f: impl FnMut(usize, usize) -> u8) -> Plane {
        let mut px = Vec::with_capacity(w * h);
        for y in 0..h {
            for x in 0..w {
                px.push(f(x, y));
            }
        }
        Plane { w, h, px }
    }

    #[test]
    fn integral_box_sums_match_direct_sums() {
        let p = plane(7, 5, |x, y| (x * 31 + y * 17) as u8);
        let ii = Integral::new(&p);
        let direct: u32 = (1..4)
            .flat_map(|y| (2..6).map(move |x| (x, y)))
            .map(|(x, y)| p.px[y * 7 + x] as u32)
            .sum();
        assert_eq!(ii.box_sum(2, 1, 6, 4), direct);
    }

    #[test]
    fn adaptive_threshold_follows_a_gradient() {
        // A dark bar on a background that brightens left to right; a global threshold would
        // call the whole left half black.
        let p = plane(200, 40, |x, y| {
            let bg = 60 + x as u32 * 190 / 200;
            if (18..22).contains(&y) {
                (bg * 6 / 10) as u8
            } else {
                bg as u8
            }
        });
        let ii = Integral::new(&p);
        let t = Threshold {
            radius: 8,
            min_delta: 4,
            invert: false,
        };
        let bin = adaptive_threshold(&p, &ii, t);
        assert!(bin[20 * 200 + 10] && bin[20 * 200 + 190]);
        assert!(!bin[5 * 200 + 10] && !bin[35 * 200 + 190]);
    }

    #[test]
    fn noise_level_tracks_noise_not_edges() {
        let mut s = 1u32;
        let mut rnd = move || {
            s = s.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (s >> 16) % 41
        };
        // Big 8-px blocks (edges) with ±20 uniform noise (σ ≈ 11.8).
        let noisy = plane(160, 80, |x, _| {
            (if x / 8 % 2 == 0 { 60 } else { 180 }) + rnd() as u8 - 20
        });
        let clean = plane(160, 80, |x, _| if x / 8 % 2 == 0 { 60 } else { 180 });
        assert_eq!(noise_level(&clean), 0);
        assert!(
            (8..=18).contains(&noise_level(&noisy)),
            "{}",
            noise_level(&noisy)
        );
        assert!(noise_level(&box3(&noisy)) < 8);
    }

    #[test]
    fn stretch_skips_full_range_and_flat_planes() {
        assert!(contrast_stretch(&plane(10, 10, |x, _| (x * 28) as u8)).is_none());
        assert!(contrast_stretch(&plane(10, 10, |_, _| 128)).is_none());
        let s = contrast_stretch(&plane(10, 10, |x, _| 110 + (x * 3) as u8)).unwrap();
        assert_eq!((s.px[0], s.px[9]), (0, 255));
    }
}
