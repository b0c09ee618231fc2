//! The decode cascade: rqrr behind a sequence of preprocessing passes, within a time budget.
//!
//! # Per frame, once
//!
//! The frame is cropped to the ROI and area-downscaled to `max_side` ([`crate::frame`]); its
//! sensor noise is estimated, and a noisy frame (σ ≳ 6) is smoothed 3×3 so speckle neither
//! breaks finder runs nor floods the census. Then the screen (`screen`) looks for confirmed
//! finder candidates and groups them into regions: most of a store camera's frames hold no
//! code, and such a frame ends here (~1 ms at 640×480, ~4 ms at 1280×720 on the bench
//! machine). Everything below runs once per region, on the region alone; a light-on-dark
//! region is negated first, so the whole cascade reads dark-mode codes.
//!
//! # Per region
//!
//! A local-mean threshold (integral image) of the region and a finder census of the binary
//! image (`finder`) are built on first use and shared by the passes.
//!
//! # Cascade order, and why
//!
//! Each pass closes one known gap of rqrr; they run most-likely-and-cheapest first:
//!
//! 1. [`Pass::Adaptive`]: the shared local-mean binary image. rqrr's own binarizer compares
//!    each pixel with a running mean along its row, which smears over glare, gradients and low
//!    contrast; a box mean does not. The census' finder triples (strong, or confirmed by a
//!    cross-check across the line) are read first as affine grids decoded by rqrr's decoder
//!    (`grid`), a tilted code's as a projective grid through its alignment pattern
//!    (`perspective`): rqrr's grouping rejects valid triples
//!    of version 8+ codes (it extrapolates one capstone's 4 integer corners ~8× across the
//!    code), and its perspective fit, run twice per triple, is the most expensive step of the
//!    whole pipeline. rqrr's full detector then runs only while a plausible triple remains
//!    unread (a code neither grid reads), see `scan`. It reads more of every damage class than pass
//!    2, at a fraction of its cost, so it goes first.
//! 2. [`Pass::Plain`]: rqrr's own binarizer. Its results flip on one-pixel differences of the
//!    binary image, so a second, different binarization recovers part of pass 1's misses
//!    (motion blur especially). Skipped when the census saw no three finder candidates (strong
//!    ones on a noisy frame).
//! 3. [`Pass::Stretched`]: a 1–99 % percentile stretch of the region, then rqrr's binarizer,
//!    whose 5 % margin is relative to the absolute level and fails on flat, low-contrast codes.
//!    Regional, so a dark phone bezel or a bright shop around the code does not decide it.
//!    Skipped (free) when the region already spans most of the range.
//! 4. [`Pass::Upscaled`]: bilinear 2–3× (aiming at 8 px/module) of the region the census
//!    places the code in (the whole plane when it saw nothing), local-mean threshold, census
//!    and rqrr again. It reads codes under ~2–3 px/module and more of the version 8+ triples:
//!    enlarged, capstone corners are precise enough. It scans the most pixels, so it runs last,
//!    unless the census shows small modules (< 3 px) after pass 1, or the frame is noisy: then
//!    it runs second, since it is the pass that reads such frames.
//!
//! # When the cascade stops
//!
//! After a pass that decoded something, unless the census still shows a plausible finder triple
//! outside every decoded code: a second code is visibly in the frame, and the remaining passes
//! run to read it too (codes are deduplicated by text). This is the "first successful pass"
//! rule, with one exception so that two codes in a frame come back together.
//!
//! # Time budget
//!
//! The first pass always runs (a zero budget means "pass 1 only"). Before each later pass the
//! cascade predicts its cost as the first pass's measured cost times the pass's relative size
//! (1 for base-resolution passes, pixels scanned / base pixels for the upscaled one), and skips
//! it when elapsed + predicted would reach the budget; a cheaper pass further down may still
//! run. A pass is never cut short in the middle, so the budget is overrun by at most one
//! misprediction. The clock is the decoding thread's CPU time ([`crate::clock`]), so a frame
//! runs the same passes, and decodes the same, however loaded the machine is.
//!
//! # Panics
//!
//! rqrr asserts on some degenerate finder groups (e.g. a perspective that maps out of `i32`,
//! WanzenBug/rqrr#54). Every rqrr call is wrapped in `catch_unwind`, and a panicking call counts
//! as "found nothing". This needs the default `panic = "unwind"`; with `panic = "abort"` such a
//! frame would abort the process. Our own code checks every size that comes from the caller.

use std::time::Duration;

use crate::clock::Stopwatch;
use crate::frame::{GrayFrame, Rect};
use crate::work::{Base, Work};

/// The smallest working side we downscale to: below this no QR code is readable anyway.
const MIN_MAX_SIDE: u32 = 64;

/// Decoder settings. Validated once in [`QrDecoder::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeConfig {
    /// Only this part of the frame is searched (clamped to the frame). Fixed cameras should set
    /// it: it is the cheapest speed-up there is.
    pub roi: Option<Rect>,
    /// The (ROI) image is area-downscaled so its longer side is at most this many pixels. Values
    /// below 64 are raised to 64.
    pub max_side: u32,
    /// Soft per-frame budget of the decoding thread's CPU time for the whole cascade (see the
    /// module doc). Size it with `qrbench` on the target: the bench corpus needs ~150 ms of an
    /// x86 core per frame in the worst classes for the rates reported there.
    pub budget: Duration,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        DecodeConfig {
            roi: None,
            max_side: 1280,
            budget: Duration::from_millis(150),
        }
    }
}

/// One stage of the cascade, in the default order (the upscaled pass moves up to second on
/// frames with small modules or noise; see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pass {
    /// Local-mean threshold (integral image): census finder triples as affine grids, then rqrr's
    /// detector while a plausible triple is left.
    Adaptive,
    /// rqrr's own row-mean binarizer.
    Plain,
    /// Percentile contrast stretch, then rqrr's binarizer; low-contrast frames only.
    Stretched,
    /// 2–3× bilinear upscale of the census region, local-mean threshold.
    Upscaled,
}

impl Pass {
    /// The default order (see the module doc for why this order).
    pub const CASCADE: [Pass; 4] = [Pass::Adaptive, Pass::Plain, Pass::Stretched, Pass::Upscaled];
}

/// A decoded QR code, in frame coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedCode {
    pub text: String,
    /// Corners top-left, top-right, bottom-right, bottom-left of the code in its own orientation,
    /// as `(x, y)` frame pixels (rqrr's grid bounds, or the census grid's corners).
    pub corners: [(f32, f32); 4],
    /// The axis-aligned box around `corners`, clamped to the frame.
    pub bbox: Rect,
    /// The pass that decoded it (for metrics: which gap of rqrr this frame needed).
    pub pass: Pass,
    /// Light-on-dark: decoded from the negative of its region.
    pub inverted: bool,
}

/// What [`QrDecoder::decode_report`] did: the codes, and which passes ran.
#[derive(Debug, Clone, Default)]
pub struct DecodeReport {
    pub codes: Vec<DecodedCode>,
    pub passes_run: Vec<Pass>,
}

/// A QR decoder for one camera. Holds no per-frame state, so one instance can serve a camera
/// thread for its lifetime. Decoding is blocking CPU work: run it on a dedicated thread or
/// `spawn_blocking`, never on an async worker.
#[derive(Debug, Clone)]
pub struct QrDecoder {
    cfg: DecodeConfig,
}

impl QrDecoder {
    pub fn new(mut cfg: DecodeConfig) -> Self {
        cfg.max_side = cfg.max_side.max(MIN_MAX_SIDE);
        QrDecoder { cfg }
    }

    pub fn config(&self) -> &DecodeConfig {
        &self.cfg
    }

    /// Decodes every distinct code of the frame (see the module doc for when the cascade
    /// stops). Never panics; an empty or tiny frame gives an empty vector.
    pub fn decode<'a>(&self, frame: impl Into<GrayFrame<'a>>) -> Vec<DecodedCode> {
        self.decode_report(frame).codes
    }

    /// Runs one pass alone in every screened region, ignoring the budget; `None` when it
    /// applies to none. For diagnostics and `qrbench`'s per-pass table, not for the camera loop.
    pub fn run_pass<'a>(
        &self,
        frame: impl Into<GrayFrame<'a>>,
        pass: Pass,
    ) -> Option<Vec<DecodedCode>> {
        let base = Base::new(frame.into(), &self.cfg)?;
        let mut out: Option<Vec<DecodedCode>> = None;
        for region in base.regions() {
            if let Some(codes) = base.region(&region).and_then(|mut w| w.run(pass)) {
                out.get_or_insert_default().extend(codes);
            }
        }
        out
    }

    /// [`decode`](Self::decode), also telling which passes ran (once per region).
    pub fn decode_report<'a>(&self, frame: impl Into<GrayFrame<'a>>) -> DecodeReport {
        let start = Stopwatch::start();
        let mut report = DecodeReport::default();
        let Some(base) = Base::new(frame.into(), &self.cfg) else {
            return report;
        };
        for region in base.regions() {
            if let Some(mut work) = base.region(&region) {
                self.cascade(&mut work, &start, &mut report);
            }
        }
        report
    }

    /// The cascade on one region (see the module doc).
    fn cascade(&self, work: &mut Work<'_>, start: &Stopwatch, report: &mut DecodeReport) {
        let region_start = start.elapsed();
        // Cost of the first pass: the unit the other passes' costs are predicted in.
        let mut unit: Option<Duration> = None;
        let mut order = Pass::CASCADE.to_vec();
        let mut next = 0;
        let mut codes: Vec<DecodedCode> = Vec::new();
        while let Some(&pass) = order.get(next) {
            next += 1;
            if let Some(unit) = unit
                && start.elapsed() + unit.mul_f32(work.relative_cost(pass)) >= self.cfg.budget
            {
                continue; // A cheaper pass further down may still fit.
            }
            let Some(found) = work.run(pass) else {
                continue; // Not applicable to this region (e.g. nothing to stretch).
            };
            report.passes_run.push(pass);
            unit.get_or_insert_with(|| start.elapsed().saturating_sub(region_start));
            for code in found {
                if !codes.iter().any(|c| c.text == code.text) {
                    codes.push(code);
                }
            }
            work.note_found(&codes);
            if !codes.is_empty() && !work.more_codes_visible() {
                break;
            }
            if next == 1 && (work.small_modules() || work.noisy()) {
                // The census sees finders of a code too small for the base-resolution passes,
                // or the frame is noisy (its base plane was smoothed, which costs detail the
                // camera pixels still have): the upscaled pass is the one that reads such
                // frames, so it goes next.
                order.retain(|p| *p != Pass::Upscaled);
                order.insert(1, Pass::Upscaled);
            }
        }
        for code in codes {
            if !report.codes.iter().any(|c| c.text == code.text) {
                report.codes.push(code);
            }
        }
    }
}
