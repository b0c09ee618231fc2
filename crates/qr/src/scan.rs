//! The calls into rqrr: its detector (own or our binarization, panics contained) and the
//! census-first decode of a binary image.

use std::panic::{AssertUnwindSafe, catch_unwind};

use rqrr::PreparedImage;

use crate::finder::{Candidate, refine};
use crate::frame::Plane;
use crate::grid::{MAX_GRID_CANDIDATES, Probe, decode_from_finders, has_plausible_triple};

/// rqrr needs three finder patterns; with fewer candidates in the census it cannot find a grid,
/// so a pass that would call it is skipped.
pub(crate) const MIN_FINDERS: usize = 3;

/// Decoded texts with their corners (top-left, top-right, bottom-right, bottom-left in the
/// code's orientation) in pixels of the plane that was scanned.
pub(crate) type Found = Vec<(String, [(f32, f32); 4])>;

/// Decodes a binary image (`true` = dark modules of the polarity at hand) in two steps
/// (`dark(x, y, probe)` samples a module centre for step 1, see [`crate::grid`]):
///
/// 1. the census' finder triples (strong or cross-checked, centres refined), sampled as affine
///    grids and decoded by rqrr's decoder
///    ([`crate::grid`]): well under a millisecond, and it reads the triples rqrr's neighbour test
///    rejects;
/// 2. rqrr's full detector, only while the census candidates outside what step 1 read still hold
///    a plausible finder triple (a tilted code, whose perspective an affine grid cannot follow,
///    or finders too weak to be strong). Its perspective fit is the most expensive step of the
///    whole cascade, so it runs only where a code can still be.
pub(crate) fn scan_census_then_rqrr(
    w: usize,
    h: usize,
    bin: &[bool],
    census: &[Candidate],
    inverted: bool,
    dark: impl Fn(usize, usize, Probe) -> bool,
) -> Found {
    // Strong candidates, plus weak ones that the cross-check confirms: finders, with their
    // centres re-measured. Data-area look-alikes and clutter rarely pass both.
    let mut real: Vec<Candidate> = census
        .iter()
        .filter(|c| c.inverted == inverted)
        .filter_map(|c| {
            let (r, checked) = refine(bin, w, h, c, false);
            (c.is_strong() || checked).then_some(r)
        })
        .collect();
    // Real finders match on the most lines; keep the pairing's cubic cost bounded.
    real.sort_by_key(|c| std::cmp::Reverse(c.rows));
    let pool = &real[..real.len().min(MAX_GRID_CANDIDATES)];
    let mut found = decode_from_finders(pool, w, h, dark);
    let left: Vec<Candidate> = real
        .iter()
        .filter(|c| {
            !found
                .iter()
                .any(|(_, q)| near_quad(q, c.x, c.y, 2.0 * c.module))
        })
        .copied()
        .collect();
    if has_plausible_triple(&left) {
        // rqrr scans for dark-on-light finders: the inverted image is already flipped here.
        for code in scan_binary(w, h, bin) {
            if !found.iter().any(|(t, _)| *t == code.0) {
                found.push(code);
            }
        }
    }
    found
}

/// Whether (x, y) lies within `pad` of the bounding box of quad `q`.
fn near_quad(q: &[(f32, f32); 4], x: f32, y: f32, pad: f32) -> bool {
    let (x0, x1) = q
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = q
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    x + pad >= x0 && x - pad <= x1 && y + pad >= y0 && y - pad <= y1
}

/// Detects and decodes every grid of a `PreparedImage` (a macro because rqrr does not export the
/// buffer type its `prepare_from_*` constructors return, so no function can name it).
macro_rules! detect_and_decode {
    ($img:expr) => {{
        let mut img = $img;
        img.detect_grids()
            .into_iter()
            // Grids that fail Reed-Solomon or are not UTF-8 are dropped: tokens are ASCII, and a
            // lossy conversion would hand the verifier a string that was never in the code.
            .filter_map(|g| {
                let corners = g.bounds.map(|p| (p.x as f32, p.y as f32));
                g.decode().ok().map(|(_, text)| (text, corners))
            })
            .collect()
    }};
}

/// rqrr with its own binarizer.
pub(crate) fn scan_gray(p: &Plane) -> Found {
    guarded(|| {
        let img = PreparedImage::prepare_from_greyscale(p.w, p.h, |x, y| p.px[y * p.w + x]);
        detect_and_decode!(img)
    })
}

/// rqrr on a binary image we made (`true` = black).
fn scan_binary(w: usize, h: usize, bin: &[bool]) -> Found {
    guarded(|| {
        let img = PreparedImage::prepare_from_bitmap(w, h, |x, y| bin[y * w + x]);
        detect_and_decode!(img)
    })
}

/// Converts an rqrr panic into "nothing found".
fn guarded(scan: impl FnOnce() -> Found) -> Found {
    catch_unwind(AssertUnwindSafe(scan)).unwrap_or_default()
}
