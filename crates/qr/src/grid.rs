//! Grid sampling from census finder triples: the fallback for triples rqrr rejects.
//!
//! rqrr groups capstones with a neighbour test that maps the other finders through one
//! capstone's local perspective, fitted to its four integer corners. Across a version 10+ code
//! that fit is extrapolated ~8× and a one-pixel corner error is enough to reject a perfect triple
//! (rqrr then reports nothing, not even a grid). The census ([`crate::finder`]) measures finder
//! *centres*, averaged over many lines and re-measured across them ([`crate::finder::refine`]),
//! which are far more precise than corners. Here three of them forming a right isosceles
//! triangle define an affine grid; its modules are sampled against the local mean (a small box
//! per sample point, majority of five points per module) and handed to rqrr's own decoder
//! (format check, Reed–Solomon, data modes), so what comes out is exactly as trustworthy as an
//! rqrr decode. Grid sizes are tried nearest-first around the estimate from the finder distance
//! over the module size; at each size a grid that fails is sampled once more the way a blurred
//! code needs ([`Sampling::Blurred`]).
//!
//! Affine is enough for frontal codes. A triple that fails it, or whose legs or finder sizes
//! show a tilt, is read through a projective map fixed by its alignment pattern
//! ([`crate::perspective`]); codes neither reads keep rqrr's own perspective fit.

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::finder::Candidate;
use crate::perspective::{Projective, find_alignment};

/// Decoded text and its corners (top-left, top-right, bottom-right, bottom-left) in plane
/// pixels.
pub(crate) type GridCode = (String, [(f32, f32); 4]);

/// Above this many strong candidates the frame is clutter, not codes: triples grow cubically.
pub(crate) const MAX_GRID_CANDIDATES: usize = 12;
/// Decode attempts (grid sizes, each sampled both ways) per call, so a pathological frame cannot
/// take more than a few ms here: eight triples' worth of [`Triple::sizes`].
const MAX_ATTEMPTS: usize = 40;

/// One sample point's question to the caller's `dark` test: is the mean of the `(2 box_r + 1)²`
/// box around the point below the mean of the `(2 window_r + 1)²` window around it (for the
/// polarity at hand)? `window_r: None` is the pass's own window, sized for the whole frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Probe {
    pub box_r: usize,
    pub window_r: Option<usize>,
}

/// How a grid's modules are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sampling {
    /// Majority of five points (centre and ±¼ module) against the pass's wide local mean: one
    /// speckle pixel or a quarter-module error of the affine grid does not flip a module.
    Vote,
    /// The centre alone against the mean of a window [`BLURRED_WINDOW_MODULES`] in radius.
    /// Gaussian blur of σ ≈ 0.3–0.5 module leaves a lone light module among dark ones only a
    /// few levels above the midpoint of the two, at its centre only (its ±¼ points fall below),
    /// while a wide window's mean follows the dark share of a whole area (finders, quiet zone,
    /// the scene) rather than that midpoint: voting against it read ~100 of the 4,225 modules
    /// of a blurred version 12 code wrong, nearly all of them light modules among dark ones;
    /// this read 15. Tried only where `Vote` failed, since on sharp, noisy codes the vote is
    /// the safer read.
    Blurred,
}

/// The loosest triple [`Triple::new`] accepts: legs' length ratio above this, the cosine of
/// their angle below the next, finder sizes within the last ratio (those of
/// [`has_plausible_triple`], which sends such triples to rqrr's detector otherwise).
const SKEWED_LEG_RATIO: f32 = 0.7;
const SKEWED_COS: f32 = 0.35;
const SKEWED_MODULE_RATIO: f32 = 1.8;

/// Radius (modules) of [`Sampling::Blurred`]'s window: the smallest that still holds both
/// colours around almost any module (a 3.5-module window), so its mean sits near the local
/// midpoint.
const BLURRED_WINDOW_MODULES: f32 = 1.25;

/// Decodes every code whose three finders are among `cands` (one polarity, already filtered).
/// `dark(x, y, probe)` says whether plane pixel (x, y) is on a dark module (see [`Probe`]).
pub(crate) fn decode_from_finders(
    cands: &[Candidate],
    w: usize,
    h: usize,
    dark: impl Fn(usize, usize, Probe) -> bool,
) -> Vec<GridCode> {
    let mut out = Vec::new();
    if cands.len() < 3 || cands.len() > MAX_GRID_CANDIDATES {
        return out;
    }
    // Frontal triples first: a tilted one is tried after them, so the looser triples it
    // admits (two codes side by side make some) cannot use up the attempts of a frontal code.
    let mut triples: Vec<([usize; 3], Triple)> = Vec::new();
    for (ia, a) in cands.iter().enumerate() {
        for (ib, b) in cands.iter().enumerate() {
            for (ic, c) in cands.iter().enumerate().skip(ib + 1) {
                if ia != ib
                    && ia != ic
                    && let Some(tri) = Triple::new(a, b, c)
                {
                    triples.push(([ia, ib, ic], tri));
                }
            }
        }
    }
    triples.sort_by_key(|(_, tri)| tri.skewed);
    let mut used = vec![false; cands.len()];
    let mut attempts = 0;
    for (ids, tri) in &triples {
        if ids.iter().any(|&i| used[i]) {
            continue;
        }
        for n in tri.sizes() {
            if attempts == MAX_ATTEMPTS {
                return out;
            }
            attempts += 1;
            let read = |map: &Map| {
                tri.decode(n, map, (w, h), &dark, Sampling::Vote)
                    .or_else(|| tri.decode(n, map, (w, h), &dark, Sampling::Blurred))
            };
            // A skewed triple is a tilted code: the affine grid cannot fit it.
            let code = (!tri.skewed)
                .then(|| read(&Map::Affine))
                .flatten()
                .or_else(|| tri.projective(n, (w, h), &dark).and_then(|m| read(&m)));
            if let Some(code) = code {
                out.push(code);
                ids.iter().for_each(|&i| used[i] = true);
                break;
            }
        }
    }
    out
}

/// Whether some three of `cands` could be the finders of one code, tilt allowed (up to ~45°):
/// two legs of similar length at roughly a right angle, finders of similar size, legs at least
/// 12 modules long (14 in a version 1 code). Used to decide whether rqrr's expensive detector is worth running. Above
/// `MAX_PLAUSIBLE` candidates (sensor noise, or the data area of an unread code) only those
/// matched on three rows or more are considered: noise speckle rarely lines up over three rows.
pub(crate) fn has_plausible_triple(cands: &[Candidate]) -> bool {
    const MAX_PLAUSIBLE: usize = 40;
    let strong: Vec<Candidate>;
    let cands = if cands.len() > MAX_PLAUSIBLE {
        strong = cands.iter().filter(|c| c.rows >= 3).copied().collect();
        if strong.len() > MAX_PLAUSIBLE {
            return true; // Cannot tell cheaply: let rqrr look.
        }
        &strong[..]
    } else {
        cands
    };
    let plausible = |a: &Candidate, b: &Candidate, c: &Candidate| {
        let (ab, ac) = ((b.x - a.x, b.y - a.y), (c.x - a.x, c.y - a.y));
        let (lb, lc) = (ab.0.hypot(ab.1), ac.0.hypot(ac.1));
        let m = a.module.max(b.module).max(c.module);
        let m_min = a.module.min(b.module).min(c.module);
        let cos = (ab.0 * ac.0 + ab.1 * ac.1) / (lb * lc);
        m <= 1.6 * m_min
            && lb.min(lc) >= 12.0 * m_min
            && lb.min(lc) / lb.max(lc) > 0.7
            && cos.abs() < 0.35
    };
    cands.iter().enumerate().any(|(ia, a)| {
        cands.iter().enumerate().any(|(ib, b)| {
            ib != ia
                && cands
                    .iter()
                    .enumerate()
                    .skip(ib + 1)
                    .any(|(ic, c)| ic != ia && plausible(a, b, c))
        })
    })
}

/// How a grid's module coordinates map to plane pixels.
enum Map {
    /// Through the three finder centres (a frontal code).
    Affine,
    /// Through them and the alignment pattern (a tilted code, see [`crate::perspective`]).
    Projective(Projective),
}

/// Three finder centres in code order: `a` top-left, `b` top-right, `c` bottom-left.
struct Triple {
    a: (f32, f32),
    ab: (f32, f32),
    ac: (f32, f32),
    /// Module size (px) corrected for rotation.
    module: f32,
    /// Legs of unequal length or off a right angle beyond what a frontal code shows: a code
    /// seen at an angle, read only through a projective map.
    skewed: bool,
    /// Module sizes of the top-right and bottom-left finders over the top-left one's: under
    /// perspective the code's far edges are shorter, and the module vectors at the open corner
    /// follow the edges that lead there (see [`Triple::projective`]).
    scale_b: f32,
    scale_c: f32,
}

impl Triple {
    /// `a` as the corner finder, `p`/`q` the other two in either order; `None` unless they form
    /// a right isosceles triangle of finders of one size, within what a tilt (~40°) bends.
    /// Beyond what a frontal code shows the triple is `skewed`.
    fn new(a: &Candidate, p: &Candidate, q: &Candidate) -> Option<Triple> {
        let (mut b, mut c) = (p, q);
        let v = |o: &Candidate| (o.x - a.x, o.y - a.y);
        let (mut ab, mut ac) = (v(b), v(c));
        // Image y points down: top-right × bottom-left is positive for an unmirrored code.
        if ab.0 * ac.1 - ab.1 * ac.0 < 0.0 {
            std::mem::swap(&mut b, &mut c);
            std::mem::swap(&mut ab, &mut ac);
        }
        let (lb, lc) = (ab.0.hypot(ab.1), ac.0.hypot(ac.1));
        let cos = (ab.0 * ac.0 + ab.1 * ac.1) / (lb * lc);
        let ratio = lb.min(lc) / lb.max(lc);
        if !(ratio > SKEWED_LEG_RATIO && cos.abs() < SKEWED_COS) {
            return None;
        }
        let runs = [a.module, b.module, c.module];
        let (lo, hi) = (
            runs.iter().copied().fold(f32::MAX, f32::min),
            runs.iter().copied().fold(0.0, f32::max),
        );
        // Perspective also makes the near finders look larger than the far ones.
        let skewed = !(ratio > 0.85 && cos.abs() < 0.2 && hi <= 1.5 * lo);
        if hi > SKEWED_MODULE_RATIO * lo {
            return None;
        }

        // The census measures modules along rows; a finder rotated by θ is 1/max(|cos θ|, |sin θ|)
        // wider along a row.
        let theta = ab.1.atan2(ab.0);
        let module = (runs.iter().sum::<f32>() / 3.0) * theta.cos().abs().max(theta.sin().abs());
        // Finder centres are 3.5 modules in from the edges, so at least 14 modules apart.
        if module <= 0.0 || (lb + lc) / 2.0 < 14.0 * module * 0.7 {
            return None;
        }
        Some(Triple {
            a: (a.x, a.y),
            ab,
            ac,
            module,
            skewed,
            scale_b: (b.module / a.module).clamp(0.5, 2.0),
            scale_c: (c.module / a.module).clamp(0.5, 2.0),
        })
    }

    /// The projective map of the size-`n` grid through its bottom-right alignment pattern;
    /// `None` for version 1 (no alignment pattern), when none is found, or when a triple that
    /// is not skewed has it within a module of its affine grid's prediction.
    fn projective(
        &self,
        n: usize,
        (w, h): (usize, usize),
        dark: &impl Fn(usize, usize, Probe) -> bool,
    ) -> Option<Map> {
        if n < 25 {
            return None;
        }
        let span = (n - 7) as f32;
        // Across the code along the bottom edge, modules are as large as at the bottom-left
        // finder; down it along the right edge, as at the top-right one.
        let (sb, sc) = (self.scale_b, self.scale_c);
        let (u, v) = (
            (sc * self.ab.0 / span, sc * self.ab.1 / span),
            (sb * self.ac.0 / span, sb * self.ac.1 / span),
        );
        // The alignment pattern's centre is 6.5 modules in from the open corner: reached from
        // the top-left finder down then across, and across then down, each leg at its scale.
        let (nf, c) = (n as f32, n as f32 - 6.5);
        let t = (c - 3.5) / span;
        let (ab, ac) = (self.ab, self.ac);
        let predicted = (
            self.a.0 + t * (ab.0 * (1.0 + sc) + ac.0 * (1.0 + sb)) / 2.0,
            self.a.1 + t * (ab.1 * (1.0 + sc) + ac.1 * (1.0 + sb)) / 2.0,
        );
        let probe = Probe {
            box_r: (self.module / 6.0) as usize,
            window_r: None,
        };
        let dark_at = |x: f32, y: f32| {
            x >= 0.0
                && y >= 0.0
                && (x as usize) < w
                && (y as usize) < h
                && dark(x as usize, y as usize, probe)
        };
        let found = find_alignment(predicted, u, v, dark_at)?;
        let affine = self.at(n, &Map::Affine, c, c);
        if !self.skewed && (found.0 - affine.0).hypot(found.1 - affine.1) < self.module {
            // The pattern is where the affine grid, already tried, put it: the projective grid
            // would be the same one.
            return None;
        }
        let (b, cc) = (
            (self.a.0 + self.ab.0, self.a.1 + self.ab.1),
            (self.a.0 + self.ac.0, self.a.1 + self.ac.1),
        );
        let modules = [(3.5, 3.5), (nf - 3.5, 3.5), (c, c), (3.5, nf - 3.5)];
        Projective::between(modules, [self.a, b, found, cc]).map(Map::Projective)
    }

    /// Candidate grid sizes, nearest to the estimate first (±2 versions: the module estimate is
    /// only as good as the run lengths, and at 1–2 px per module, where one pixel more or less
    /// per run is 10 % of it, ±1 version missed the true size of codes read at ±2). A wrong
    /// size costs one timing-pattern check.
    fn sizes(&self) -> Vec<usize> {
        let d = (self.ab.0.hypot(self.ab.1) + self.ac.0.hypot(self.ac.1)) / 2.0;
        let n_est = d / self.module + 7.0;
        let v_est = ((n_est - 17.0) / 4.0).round() as i32;
        [v_est, v_est - 1, v_est + 1, v_est - 2, v_est + 2]
            .into_iter()
            .filter(|v| (1..=40).contains(v))
            .map(|v| 17 + 4 * v as usize)
            .collect()
    }

    /// Plane position of module coordinate (mx, my) for a grid of size `n`.
    fn at(&self, n: usize, map: &Map, mx: f32, my: f32) -> (f32, f32) {
        if let Map::Projective(p) = map {
            return p.map(mx, my);
        }
        let span = (n - 7) as f32;
        let (u, v) = ((mx - 3.5) / span, (my - 3.5) / span);
        (
            self.a.0 + u * self.ab.0 + v * self.ac.0,
            self.a.1 + u * self.ab.1 + v * self.ac.1,
        )
    }

    /// Samples the grid of size `n` the `mode` way and decodes it.
    fn decode(
        &self,
        n: usize,
        map: &Map,
        (w, h): (usize, usize),
        dark: &impl Fn(usize, usize, Probe) -> bool,
        mode: Sampling,
    ) -> Option<GridCode> {
        let probe = Probe {
            // Each sample averages a box a third of a module wide: noise averages out, the box
            // stays inside the module even with a quarter-module offset.
            box_r: (self.module / 6.0) as usize,
            window_r: match mode {
                Sampling::Vote => None,
                Sampling::Blurred => {
                    Some(((BLURRED_WINDOW_MODULES * self.module).round() as usize).max(2))
                }
            },
        };
        let dark_at = |mx: f32, my: f32| {
            let (px, py) = self.at(n, map, mx, my);
            px >= 0.0
                && py >= 0.0
                && (px as usize) < w
                && (py as usize) < h
                && dark(px as usize, py as usize, probe)
        };
        // Majority of five points per module (centre and ±0.25 module): one speckle pixel or a
        // quarter-module error in the affine estimate does not flip the module.
        let sample = |x: usize, y: usize| {
            let (cx, cy) = (x as f32 + 0.5, y as f32 + 0.5);
            if mode == Sampling::Blurred {
                return dark_at(cx, cy);
            }
            let votes = [
                (0.0, 0.0),
                (-0.25, 0.0),
                (0.25, 0.0),
                (0.0, -0.25),
                (0.0, 0.25),
            ]
            .iter()
            .filter(|(dx, dy)| dark_at(cx + dx, cy + dy))
            .count();
            votes >= 3
        };
        // Timing patterns first: they cost 2(n − 16) samples, while Reed–Solomon over a wrong
        // grid (a wrong size, or a triple of data-area look-alikes) is the most expensive step
        // of a failed attempt.
        let timing = (8..n - 8)
            .filter(|&i| sample(i, 6) == (i % 2 == 0) && sample(6, i) == (i % 2 == 0))
            .count();
        if timing * 4 < (n - 16) * 3 {
            return None;
        }
        let grid = rqrr::SimpleGrid::from_func(n, sample);
        // rqrr's decoder asserts on some inconsistent inputs; treat a panic as "no code".
        let r = catch_unwind(AssertUnwindSafe(|| rqrr::Grid::new(grid).decode())).ok()?;
        let (_, text) = r.ok()?;
        let nf = n as f32;
        let corners =
            [(0.0, 0.0), (nf, 0.0), (nf, nf), (0.0, nf)].map(|(x, y)| self.at(n, map, x, y));
        Some((text, corners))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Plane;
    use crate::preprocess::{Integral, is_dark_module, window_radius};
    use qrcode::{Color, QrCode};

    #[test]
    fn decodes_a_rotated_code_from_its_finder_centres() {
        let code = QrCode::new("https://app.example/s/Ab12Cd").unwrap();
        let n = code.width();
        let colors = code.to_colors();
        let (m, theta) = (5.0f32, 0.3f32);
        let (s, c) = theta.sin_cos();
        // Module (x, y) centre → plane, rotated by θ about (150, 150).
        let place = |x: f32, y: f32| {
            let (dx, dy) = ((x - n as f32 / 2.0) * m, (y - n as f32 / 2.0) * m);
            (150.0 + dx * c - dy * s, 150.0 + dx * s + dy * c)
        };
        let finder = |x: f32, y: f32| {
            let (px, py) = place(x, y);
            Candidate {
                x: px,
                y: py,
                module: m / c.max(s),
                inverted: false,
                rows: 20,
            }
        };
        let cands = [
            finder(3.5, 3.5),
            finder(n as f32 - 3.5, 3.5),
            finder(3.5, n as f32 - 3.5),
        ];
        // Inverse mapping for the pixel test.
        let dark = |px: usize, py: usize, _: Probe| {
            let (dx, dy) = (px as f32 + 0.5 - 150.0, py as f32 + 0.5 - 150.0);
            let (x, y) = (
                (dx * c + dy * s) / m + n as f32 / 2.0,
                (-dx * s + dy * c) / m + n as f32 / 2.0,
            );
            x >= 0.0
                && y >= 0.0
                && (x as usize) < n
                && (y as usize) < n
                && colors[y as usize * n + x as usize] == Color::Dark
        };
        let found = decode_from_finders(&cands, 300, 300, dark);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "https://app.example/s/Ab12Cd");
    }

    /// A code of `n` modules at `m` px/module, rotated by `theta` about (150, 150), blurred
    /// with a Gaussian of `sigma` modules, as a plane (dark 30, light 220), and its finder
    /// centres as the census would report them.
    fn blurred_code(text: &str, m: f32, theta: f32, sigma: f32) -> (Plane, [Candidate; 3]) {
        let code = QrCode::new(text).unwrap();
        let n = code.width();
        let colors = code.to_colors();
        let (s, c) = theta.sin_cos();
        let half = n as f32 / 2.0;
        let (w, h) = (300usize, 300usize);
        // 4×4 supersampled coverage of dark modules per pixel.
        let mut cover = vec![0f32; w * h];
        for py in 0..h {
            for px in 0..w {
                let mut dark = 0;
                for k in 0..16 {
                    let (dx, dy) = (
                        px as f32 + (k % 4) as f32 / 4.0 + 0.125 - 150.0,
                        py as f32 + (k / 4) as f32 / 4.0 + 0.125 - 150.0,
                    );
                    let (x, y) = ((dx * c + dy * s) / m + half, (-dx * s + dy * c) / m + half);
                    if x >= 0.0
                        && y >= 0.0
                        && (x as usize) < n
                        && (y as usize) < n
                        && colors[y as usize * n + x as usize] == Color::Dark
                    {
                        dark += 1;
                    }
                }
                cover[py * w + px] = dark as f32 / 16.0;
            }
        }
        // Separable Gaussian blur, σ in pixels.
        let sp = sigma * m;
        let r = (3.0 * sp).ceil() as isize;
        let k: Vec<f32> = (-r..=r)
            .map(|i| (-(i * i) as f32 / (2.0 * sp * sp)).exp())
            .collect();
        let ks: f32 = k.iter().sum();
        let pass = |src: &[f32], horizontal: bool| -> Vec<f32> {
            let mut out = vec![0f32; w * h];
            for y in 0..h as isize {
                for x in 0..w as isize {
                    let mut acc = 0.0;
                    for (i, kv) in (-r..=r).zip(&k) {
                        let (sx, sy) = if horizontal { (x + i, y) } else { (x, y + i) };
                        let (sx, sy) = (sx.clamp(0, w as isize - 1), sy.clamp(0, h as isize - 1));
                        acc += kv * src[sy as usize * w + sx as usize];
                    }
                    out[y as usize * w + x as usize] = acc / ks;
                }
            }
            out
        };
        let blurred = pass(&pass(&cover, true), false);
        let px = blurred
            .iter()
            .map(|&d| (220.0 - 190.0 * d).round() as u8)
            .collect();
        let finder = |x: f32, y: f32| {
            let (dx, dy) = ((x - half) * m, (y - half) * m);
            Candidate {
                x: 150.0 + dx * c - dy * s,
                y: 150.0 + dx * s + dy * c,
                module: m / c.abs().max(s.abs()),
                inverted: false,
                rows: 20,
            }
        };
        let nf = n as f32;
        (
            Plane { w, h, px },
            [
                finder(3.5, 3.5),
                finder(nf - 3.5, 3.5),
                finder(3.5, nf - 3.5),
            ],
        )
    }

    #[test]
    fn blurred_sampling_reads_codes_the_vote_misreads() {
        // A version 8 code at 3.5 px/module, blurred by 0.45 module (the worst the bench's
        // classes use): voting against the wide local mean reads isolated light modules dark.
        let text = "https://app.example/e?t=eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ0b2tlbi0xMjM0NTY3ODkwIiwiZXhwIjoxNzAwMDAwMDAwfQ.c2lnbmF0dXJl";
        let (p, cands) = blurred_code(text, 3.5, 0.12, 0.45);
        let ii = Integral::new(&p);
        let wide = window_radius(p.w, p.h);
        let dark = |x: usize, y: usize, pr: Probe| {
            is_dark_module(
                &p,
                &ii,
                (pr.window_r.unwrap_or(wide), pr.box_r),
                false,
                (x, y),
            )
        };
        let tri = Triple::new(&cands[0], &cands[1], &cands[2]).unwrap();
        let n = QrCode::new(text).unwrap().width();
        assert!(tri.sizes().contains(&n));
        let read = |mode| {
            tri.decode(n, &Map::Affine, (p.w, p.h), &dark, mode)
                .map(|c| c.0)
        };
        assert_eq!(read(Sampling::Blurred).as_deref(), Some(text));
        assert_eq!(read(Sampling::Vote), None);
        // And the whole search (vote first, then blurred) finds it.
        let found = decode_from_finders(&cands, p.w, p.h, dark);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, text);
    }

    #[test]
    fn grid_sizes_are_tried_nearest_first_within_two_versions() {
        // Finder centres 50 modules apart at 4 px/module: 57 modules, version 10.
        let f = |x: f32, y: f32| Candidate {
            x,
            y,
            module: 4.0,
            inverted: false,
            rows: 12,
        };
        let tri = Triple::new(&f(20.0, 20.0), &f(220.0, 20.0), &f(20.0, 220.0)).unwrap();
        assert_eq!(tri.sizes(), [57, 53, 61, 49, 65]);
        // Version 2 near the bottom: no size below version 1.
        let tri = Triple::new(&f(20.0, 20.0), &f(92.0, 20.0), &f(20.0, 92.0)).unwrap();
        assert_eq!(tri.sizes(), [25, 21, 29, 33]);
    }
}
