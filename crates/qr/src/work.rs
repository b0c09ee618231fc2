//! Per-frame state of the cascade ([`Work`]): the base plane, the shared local-mean binary image
//! and finder census, and each pass's preprocessing. The order and the budget are
//! [`crate::decode`]'s; the rqrr calls are [`crate::scan`]'s.

use crate::decode::{DecodeConfig, DecodedCode, Pass};
use crate::finder::{Candidate, census, refine};
use crate::frame::{GrayFrame, Plane, Rect};
use crate::grid::{Probe, has_plausible_triple};
use crate::preprocess::{
    Integral, Threshold, adaptive_threshold, box3, contrast_stretch, is_dark_module, min_delta,
    noise_level, window_radius,
};
use crate::scan::{Found, MIN_FINDERS, scan_census_then_rqrr, scan_gray};
use crate::screen::{self, Region};

/// The largest plane the upscaled pass builds (pixels). 2× a 1280×960 working frame is 4.9 MP;
/// beyond that the pass would take seconds on a Pi, far outside any sensible frame budget.
const MAX_UPSCALED_PIXELS: usize = 5_000_000;

/// The frame as every region sees it: the ROI, downscaled once, smoothed when noisy.
pub(crate) struct Base<'f> {
    frame: GrayFrame<'f>,
    roi: Rect,
    pub plane: Plane,
    /// Threshold floor for this frame's noise (see [`Threshold::min_delta`]).
    pub min_delta: u32,
    /// The plane was smoothed for noise: weak census candidates are mostly residual speckle.
    noisy: bool,
}

/// Per-region working state: the region's plane and what passes share.
pub(crate) struct Work<'f> {
    frame: GrayFrame<'f>,
    /// The frame pixels `base` covers.
    roi: Rect,
    base: Plane,
    min_delta: u32,
    /// The local-mean window radius of the whole frame's plane: a region is thresholded as
    /// it would be in the frame (a window sized by the region would shrink with it).
    radius: usize,
    noisy: bool,
    /// The screen's finder candidates in this region (region pixels): measured on every line
    /// through the finder and cross-checked, they locate a blurred code's finders where the
    /// census' stricter run test on the local-mean binary image misses them.
    screened: Vec<Candidate>,
    /// `base` is the negative of the frame (a light-on-dark code); the upscaled pass negates
    /// the frame pixels it reads too.
    invert: bool,
    /// Local-mean binarization of `base` and its finder census, built by the first pass that
    /// needs them and shared by the adaptive and upscaled passes.
    shared: Option<Shared>,
    /// Frame boxes of the codes decoded so far.
    found: Vec<Rect>,
}

struct Shared {
    integral: Integral,
    binary: Vec<bool>,
    census: Vec<Candidate>,
}

impl Shared {
    /// Candidates of one polarity.
    fn finders(&self, inverted: bool) -> impl Iterator<Item = &Candidate> {
        self.census.iter().filter(move |c| c.inverted == inverted)
    }
}

/// The shared binarization of `base`, computed on first use.
fn shared<'s>(
    base: &Plane,
    (radius, min_delta): (usize, u32),
    slot: &'s mut Option<Shared>,
) -> &'s Shared {
    slot.get_or_insert_with(|| {
        let integral = Integral::new(base);
        let t = Threshold {
            radius,
            min_delta,
            invert: false,
        };
        let binary = adaptive_threshold(base, &integral, t);
        let census = census(&binary, base.w, base.h, false);
        Shared {
            integral,
            binary,
            census,
        }
    })
}

/// Noise level (see [`noise_level`]) from which the base plane is smoothed before any pass:
/// around σ 6 speckle starts to break finder runs and floods the census with fake candidates.
/// A camera in good light sits at 1–3.
const NOISY: u8 = 6;

impl<'f> Base<'f> {
    pub(crate) fn new(frame: GrayFrame<'f>, cfg: &DecodeConfig) -> Option<Self> {
        let full = Rect {
            x: 0,
            y: 0,
            width: frame.width(),
            height: frame.height(),
        };
        let roi = cfg
            .roi
            .unwrap_or(full)
            .clamp_to(frame.width(), frame.height())?;
        // A QR code is at least 21 modules plus quiet zone; below that nothing can decode.
        if roi.width < 21 || roi.height < 21 {
            return None;
        }
        let (w, h) = fit(roi.width, roi.height, cfg.max_side);
        let mut plane = Plane::from_frame(&frame, roi, w, h);
        let mut noise = noise_level(&plane);
        let noisy = noise >= NOISY;
        if noisy {
            plane = box3(&plane);
            noise = noise_level(&plane);
        }
        Some(Base {
            frame,
            roi,
            plane,
            min_delta: min_delta(noise),
            noisy,
        })
    }

    /// The regions worth decoding (see [`crate::screen`]); none on most frames.
    pub(crate) fn regions(&self) -> Vec<Region> {
        let p = &self.plane;
        let cands = screen::candidates(p, window_radius(p.w, p.h), self.min_delta, !self.noisy);
        screen::regions(cands, p.w, p.h)
    }

    /// The working state of one screened region (see [`crate::screen`]).
    pub(crate) fn region(&self, r: &Region) -> Option<Work<'f>> {
        let (w, h) = (r.x1 - r.x0, r.y1 - r.y0);
        if w < 21 || h < 21 {
            return None;
        }
        let mut px = Vec::with_capacity(w * h);
        for row in self.plane.px.chunks_exact(self.plane.w).skip(r.y0).take(h) {
            px.extend_from_slice(&row[r.x0..r.x1]);
        }
        let mut base = Plane { w, h, px };
        if r.inverted {
            negate(&mut base);
        }
        let (sx, sy) = (
            self.roi.width as f32 / self.plane.w as f32,
            self.roi.height as f32 / self.plane.h as f32,
        );
        let roi = Rect {
            x: self.roi.x + (r.x0 as f32 * sx) as u32,
            y: self.roi.y + (r.y0 as f32 * sy) as u32,
            width: ((w as f32 * sx) as u32).max(1),
            height: ((h as f32 * sy) as u32).max(1),
        }
        .clamp_to(self.frame.width(), self.frame.height())?;
        // The screen's finders, in region pixels and the region's polarity.
        let screened = r
            .finders
            .iter()
            .map(|c| Candidate {
                x: c.x - r.x0 as f32,
                y: c.y - r.y0 as f32,
                inverted: false,
                ..*c
            })
            .collect();
        Some(Work {
            frame: self.frame,
            roi,
            base,
            screened,
            min_delta: self.min_delta,
            radius: window_radius(self.plane.w, self.plane.h),
            noisy: self.noisy,
            invert: r.inverted,
            shared: None,
            found: Vec::new(),
        })
    }
}

/// Replaces every pixel by its negative.
fn negate(p: &mut Plane) {
    p.px.iter_mut().for_each(|v| *v = 255 - *v);
}

impl<'f> Work<'f> {
    fn shared(&mut self) -> &Shared {
        shared(&self.base, (self.radius, self.min_delta), &mut self.shared)
    }

    /// Whether the base plane was smoothed for sensor noise.
    pub(crate) fn noisy(&self) -> bool {
        self.noisy
    }

    /// Records the codes decoded so far: later passes look for codes elsewhere.
    pub(crate) fn note_found(&mut self, codes: &[DecodedCode]) {
        self.found = codes.iter().map(|c| c.bbox).collect();
    }

    /// Census candidates outside every code decoded so far.
    fn uncovered(&mut self) -> Vec<Candidate> {
        let census = self.shared().census.clone();
        self.outside_found(&census)
    }

    /// The candidates of `cands` outside every code decoded so far (2 modules of slack for
    /// the centre error).
    fn outside_found(&self, cands: &[Candidate]) -> Vec<Candidate> {
        let (sx, sy) = (
            self.roi.width as f32 / self.base.w as f32,
            self.roi.height as f32 / self.base.h as f32,
        );
        let (rx, ry) = (self.roi.x as f32, self.roi.y as f32);
        cands
            .iter()
            .filter(|c| {
                let (x, y) = (rx + c.x * sx, ry + c.y * sy);
                let pad = 2.0 * c.module * sx;
                !self.found.iter().any(|b| {
                    x + pad >= b.x as f32
                        && y + pad >= b.y as f32
                        && x - pad <= (b.x + b.width) as f32
                        && y - pad <= (b.y + b.height) as f32
                })
            })
            .copied()
            .collect()
    }

    /// Whether the census shows a plausible finder triple outside the codes decoded so far: a
    /// second code the passes so far could not read, worth the rest of the cascade. Weak
    /// candidates count too when the cross-check confirms them (a blurred second code often
    /// shows only short finder hits), except on a noisy frame, where they are mostly speckle.
    pub(crate) fn more_codes_visible(&mut self) -> bool {
        let noisy = self.noisy;
        let (w, h) = (self.base.w, self.base.h);
        let uncovered = self.uncovered();
        let bin = &self.shared().binary;
        let uncovered: Vec<Candidate> = uncovered
            .into_iter()
            .filter(|c| c.is_strong() || (!noisy && refine(bin, w, h, c, c.inverted).1))
            .collect();
        // One polarity at a time: a code's three finders share it.
        [false, true].into_iter().any(|inv| {
            let one: Vec<Candidate> = uncovered
                .iter()
                .filter(|c| c.inverted == inv)
                .copied()
                .collect();
            has_plausible_triple(&one)
        })
    }

    /// Census candidates of one polarity that count for gating a pass: all of them, or on a
    /// noisy frame only the strong ones (weak ones there are mostly residual speckle, and rqrr
    /// on a speckled image is at its slowest).
    fn gate(&mut self, inverted: bool) -> usize {
        let noisy = self.noisy;
        self.shared()
            .finders(inverted)
            .filter(|c| !noisy || c.is_strong())
            .count()
    }

    /// Runs one pass; `None` when the pass does not apply to this frame.
    pub(crate) fn run(&mut self, pass: Pass) -> Option<Vec<DecodedCode>> {
        let (w, h) = (self.base.w, self.base.h);
        let found = match pass {
            Pass::Plain => {
                if self.gate(false) < MIN_FINDERS {
                    return None;
                }
                scan_gray(&self.base)
            }
            Pass::Adaptive => {
                let sh = shared(&self.base, (self.radius, self.min_delta), &mut self.shared);
                let r = self.radius;
                let dark = |x, y, p: Probe| {
                    let r = (p.window_r.unwrap_or(r), p.box_r);
                    is_dark_module(&self.base, &sh.integral, r, false, (x, y))
                };
                // The screen's finders first, then census candidates not already among them.
                let mut pool = self.screened.clone();
                pool.extend(sh.census.iter().filter(|c| {
                    !self.screened.iter().any(|s| {
                        (s.x - c.x).abs().max((s.y - c.y).abs()) <= 2.0 * s.module.max(c.module)
                    })
                }));
                scan_census_then_rqrr(w, h, &sh.binary, &pool, false, dark)
            }
            Pass::Stretched => scan_gray(&contrast_stretch(&self.base)?),
            Pass::Upscaled => {
                let (rect, big) = self.upscaled()?;
                let ii = Integral::new(&big);
                let t = Threshold {
                    radius: window_radius(big.w, big.h),
                    min_delta: self.min_delta,
                    invert: false,
                };
                let bin = adaptive_threshold(&big, &ii, t);
                // The screen's finders, mapped into the enlarged plane, then the census'.
                let (sx, sy) = (
                    self.roi.width as f32 / w as f32,
                    self.roi.height as f32 / h as f32,
                );
                let (kx, ky) = (
                    big.w as f32 / rect.width as f32,
                    big.h as f32 / rect.height as f32,
                );
                let mut cands: Vec<Candidate> = self
                    .screened
                    .iter()
                    .map(|c| Candidate {
                        x: (self.roi.x as f32 + c.x * sx - rect.x as f32) * kx,
                        y: (self.roi.y as f32 + c.y * sy - rect.y as f32) * ky,
                        module: c.module * sx * kx,
                        ..*c
                    })
                    .filter(|c| (0.0..big.w as f32).contains(&c.x))
                    .filter(|c| (0.0..big.h as f32).contains(&c.y))
                    .collect();
                let screened = cands.len();
                for c in census(&bin, big.w, big.h, true) {
                    let near = |s: &Candidate| {
                        (s.x - c.x).abs().max((s.y - c.y).abs()) <= 2.0 * s.module.max(c.module)
                    };
                    if !cands[..screened].iter().any(near) {
                        cands.push(c);
                    }
                }
                let dark = |x, y, p: Probe| {
                    let r = (p.window_r.unwrap_or(t.radius), p.box_r);
                    is_dark_module(&big, &ii, r, false, (x, y))
                };
                let found = scan_census_then_rqrr(big.w, big.h, &bin, &cands, false, dark);
                let mut codes = to_frame_coords(found, rect, big.w, big.h, &self.frame, pass);
                codes.iter_mut().for_each(|c| c.inverted = self.invert);
                return Some(codes);
            }
        };
        let mut codes = to_frame_coords(found, self.roi, w, h, &self.frame, pass);
        codes.iter_mut().for_each(|c| c.inverted = self.invert);
        Some(codes)
    }

    /// The region the upscaled pass reads (frame coordinates) and its enlarged plane.
    ///
    /// With finder candidates, only the area around them is enlarged, by the factor that brings
    /// their modules to [`TARGET_MODULE_PX`]; without, the whole base plane is doubled (a code
    /// too small for the census at base resolution).
    fn upscaled(&mut self) -> Option<(Rect, Plane)> {
        let (rect, nw, nh) = self.plan_upscale()?;
        let mut plane = if rect.width as usize >= nw && rect.height as usize >= nh {
            Plane::from_frame(&self.frame, rect, nw, nh)
        } else {
            let crop =
                Plane::from_frame(&self.frame, rect, rect.width as usize, rect.height as usize);
            crop.resize_bilinear(nw, nh)
        };
        if self.invert {
            negate(&mut plane);
        }
        Some((rect, plane))
    }

    /// Cost of `pass` relative to the first pass, to predict whether it fits in the budget. The
    /// base-resolution passes each cost one binarization plus one scan of the same plane; the
    /// upscaled one scales with the pixels it will scan.
    pub(crate) fn relative_cost(&mut self, pass: Pass) -> f32 {
        match pass {
            Pass::Upscaled => match self.plan_upscale() {
                Some((_, nw, nh)) => (nw * nh) as f32 / (self.base.w * self.base.h) as f32,
                None => 0.0,
            },
            _ => 1.0,
        }
    }

    /// Whether the census' candidates (see [`Work::upscale_candidates`]) have modules under
    /// [`SMALL_MODULE_PX`].
    pub(crate) fn small_modules(&mut self) -> bool {
        let cands = self.upscale_candidates();
        median_module(&cands).is_some_and(|m| m < SMALL_MODULE_PX)
    }

    /// The candidates that place and size the code for the upscaled pass: the screen's finders
    /// when it saw three or more, and the census' strong ones; when there are none, all of the
    /// census' if at least three (a small or blurred code shows only short finder hits, and
    /// its data area more of them). The screen's count because the census' run test on the
    /// binary image misses finders of 1–2 px modules that the screen, testing every line
    /// against block levels, confirmed: without them the enlarged area was cut to the finders
    /// the census saw and could leave the third one out.
    fn upscale_candidates(&mut self) -> Vec<Candidate> {
        // Only where no code was read yet: after the first code of a frame, the second one.
        let weak: Vec<Candidate> = self
            .uncovered()
            .into_iter()
            .filter(|c| !c.inverted)
            .collect();
        let mut strong = self.outside_found(&self.screened);
        if strong.len() < MIN_FINDERS {
            // A pair or a lone finder places nothing the census' own do not.
            strong.clear();
        }
        for c in weak.iter().filter(|c| c.is_strong()) {
            let near = |s: &Candidate| {
                (s.x - c.x).abs().max((s.y - c.y).abs()) <= 2.0 * s.module.max(c.module)
            };
            if !strong.iter().any(near) {
                strong.push(*c);
            }
        }
        if !strong.is_empty() {
            return strong;
        }
        if weak.len() >= MIN_FINDERS {
            weak
        } else {
            Vec::new()
        }
    }

    /// The frame region the upscaled pass reads and the size it enlarges it to.
    fn plan_upscale(&mut self) -> Option<(Rect, usize, usize)> {
        let (bw, bh) = (self.base.w as f32, self.base.h as f32);
        let cands = self.upscale_candidates();
        let strong = cands.iter().all(|c| c.is_strong());
        let (x0, y0, x1, y1, factor) = if let Some(module) = median_module(&cands) {
            let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
            for (x, y) in finder_hull_points(&cands) {
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            }
            // From a finder centre to the code's edge is 3.5 modules plus the 4-module quiet
            // zone; with fewer than three finders seen, the code may extend further.
            let margin = if strong && cands.len() >= MIN_FINDERS {
                MARGIN_MODULES * module
            } else {
                (x1 - x0).max(y1 - y0) + MAX_REACH_MODULES * module
            };
            // Without strong finders the region is wide (see the margin): stay at 2×.
            let f = if strong {
                (TARGET_MODULE_PX / module).clamp(MIN_UPSCALE, MAX_UPSCALE)
            } else {
                MIN_UPSCALE
            };
            (
                (x0 - margin).max(0.0),
                (y0 - margin).max(0.0),
                (x1 + margin).min(bw),
                (y1 + margin).min(bh),
                f,
            )
        } else {
            (0.0, 0.0, bw, bh, 2.0)
        };
        let (rw, rh) = (x1 - x0, y1 - y0);
        // Shrink the factor rather than exceed the pixel cap.
        let factor = factor.min((MAX_UPSCALED_PIXELS as f32 / (rw * rh).max(1.0)).sqrt());
        let (nw, nh) = ((rw * factor) as usize, (rh * factor) as usize);
        if nw < 21 || nh < 21 {
            return None;
        }
        // The region in frame pixels: the camera's own pixels hold more detail than the base
        // when the frame was downscaled.
        let (sx, sy) = (self.roi.width as f32 / bw, self.roi.height as f32 / bh);
        let rect = Rect {
            x: self.roi.x + (x0 * sx) as u32,
            y: self.roi.y + (y0 * sy) as u32,
            width: ((rw * sx) as u32).max(1),
            height: ((rh * sy) as u32).max(1),
        }
        .clamp_to(self.frame.width(), self.frame.height())?;
        Some((rect, nw, nh))
    }
}

/// The median module size of `cands`, if any.
fn median_module(cands: &[Candidate]) -> Option<f32> {
    let mut modules: Vec<f32> = cands.iter().map(|c| c.module).collect();
    modules.sort_by(f32::total_cmp);
    modules.get(modules.len() / 2).copied()
}

/// Points whose bounding box holds every code the finder candidates can belong to: the
/// candidates, the fourth corner `b + c − a` of every triple (a code rotated by 45° reaches far
/// outside the box of its three finders), and for every pair the other two corners of the square
/// it is the diagonal of (two finders seen, the third missing). Many candidates (clutter): no
/// bound.
fn finder_hull_points(cands: &[Candidate]) -> Vec<(f32, f32)> {
    const MAX_FOR_TRIPLES: usize = 8;
    let mut pts: Vec<(f32, f32)> = cands.iter().map(|c| (c.x, c.y)).collect();
    if cands.len() > MAX_FOR_TRIPLES {
        return pts;
    }
    for (i, a) in cands.iter().enumerate() {
        for (j, b) in cands.iter().enumerate().skip(i + 1) {
            let (mx, my) = ((a.x + b.x) / 2.0, (a.y + b.y) / 2.0);
            let (hx, hy) = ((b.x - a.x) / 2.0, (b.y - a.y) / 2.0);
            pts.push((mx - hy, my + hx));
            pts.push((mx + hy, my - hx));
            for (k, c) in cands.iter().enumerate() {
                if k != i && k != j {
                    pts.push((a.x + b.x - c.x, a.y + b.y - c.y));
                }
            }
        }
    }
    pts
}

/// Module size (px) the upscaled pass aims for: rqrr's capstone corners are integer pixels, and
/// its neighbour test extrapolates a capstone's local perspective ~8× across a version 10 code,
/// so corner error must be small against the capstone.
const TARGET_MODULE_PX: f32 = 8.0;
/// Below this module size (px) the base-resolution passes rarely read a code and the
/// upscaled pass is tried second.
const SMALL_MODULE_PX: f32 = 3.0;
/// The upscale factor's range: below 2× the pass would mostly repeat the base passes; above 3×
/// bilinear edges get so soft that the threshold wobbles, and the plane grows with the square.
const MIN_UPSCALE: f32 = 2.0;
const MAX_UPSCALE: f32 = 3.0;
/// From a finder centre to the code's edge: 3.5 modules, plus the 4-module quiet zone, plus one
/// for the census' centre error.
const MARGIN_MODULES: f32 = 9.0;
/// With fewer than three finders seen, the code may reach this far past them (a version 12
/// code is 65 modules wide; JWTs of docs/protocols.md §5 need version 10–12 at ECC M).
const MAX_REACH_MODULES: f32 = 70.0;

/// Maps codes found on a `pw` × `ph` plane covering `rect` of the frame back to frame pixels.
fn to_frame_coords(
    found: Found,
    rect: Rect,
    pw: usize,
    ph: usize,
    frame: &GrayFrame<'_>,
    pass: Pass,
) -> Vec<DecodedCode> {
    let sx = rect.width as f32 / pw as f32;
    let sy = rect.height as f32 / ph as f32;
    let (fw, fh) = (frame.width() as f32, frame.height() as f32);
    let mut out: Vec<DecodedCode> = Vec::with_capacity(found.len());
    for (text, pts) in found {
        if out.iter().any(|c| c.text == text) {
            continue; // The same code found twice (e.g. two grids over one symbol).
        }
        let corners = pts.map(|p| {
            (
                rect.x as f32 + (p.0 + 0.5) * sx - 0.5,
                rect.y as f32 + (p.1 + 0.5) * sy - 0.5,
            )
        });
        let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
        for (x, y) in corners {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
        let (x0, y0) = (x0.clamp(0.0, fw) as u32, y0.clamp(0.0, fh) as u32);
        let (x1, y1) = (
            x1.clamp(0.0, fw).ceil() as u32,
            y1.clamp(0.0, fh).ceil() as u32,
        );
        let bbox = Rect {
            x: x0,
            y: y0,
            width: x1.saturating_sub(x0),
            height: y1.saturating_sub(y0),
        };
        out.push(DecodedCode {
            text,
            corners,
            bbox,
            pass,
            inverted: false,
        });
    }
    out
}

/// Scales `w` × `h` down (never up) so the longer side is at most `max_side`.
fn fit(w: u32, h: u32, max_side: u32) -> (usize, usize) {
    let long = w.max(h);
    if long <= max_side {
        return (w as usize, h as usize);
    }
    let scale = |v: u32| ((v as u64 * max_side as u64 / long as u64) as usize).max(1);
    (scale(w), scale(h))
}

#[cfg(test)]
mod tests;
