//! A cheap census of finder-pattern candidates on a binary image, in both polarities.
//!
//! rqrr finds capstones by the same 1:1:3:1:1 row test, then flood-fills and fits every
//! candidate triple (two perspective fits per triple: the costly part). One scan of run lengths
//! along rows and columns here tells the cascade, before it pays for rqrr:
//! - where the finders are, precisely enough ([`refine`]) to sample a grid from three of them
//!   ([`crate::grid`]);
//! - whether a binary image can still hold an unread code (no plausible triple: rqrr is
//!   skipped), and whether a second code is in the frame;
//! - whether a light-on-dark code is present (candidates of the inverted polarity);
//! - where the code is and how large its modules are, so the upscaled pass enlarges only that
//!   region, by the factor that brings modules to a size rqrr handles well.

/// A cluster of line hits: one probable finder pattern. Coordinates are plane pixels measured
/// from pixel edges (the centre of pixel (0, 0) is (0.5, 0.5)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Candidate {
    pub x: f32,
    pub y: f32,
    /// Estimated module size in pixels.
    pub module: f32,
    /// Light-on-dark (the pattern starts with a light run).
    pub inverted: bool,
    /// Lines (rows plus columns) that matched; a real finder matches on about three modules'
    /// worth of rows and as many columns.
    pub rows: u32,
}

impl Candidate {
    /// Matched on lines spanning half a finder's 3-module core or more. Data modules form short
    /// 1:1:3:1:1 runs too, but rarely on more than a line or two; real finders match on ~3
    /// modules of rows and of columns, less when blurred or rotated.
    pub fn is_strong(&self) -> bool {
        self.rows as f32 >= 1.5 * self.module
    }
}

/// Line hits are merged into a candidate when their centres are this many modules apart or less.
const MERGE_MODULES: f32 = 1.5;

/// Scans every row and every column of `bin` (`true` = black) for 1:1:3:1:1 runs of either
/// polarity and clusters the hits. Columns matter where something dark touches a finder from
/// the side (a sleeve, a phone edge): its row runs are then too long, its column runs are not.
/// Candidates with fewer than two lines are dropped as noise.
///
/// `exact` selects the run test: rqrr's (truncating, stricter at 3–4 px per module, so fewer
/// data-area look-alikes) for the base-resolution passes, the exact one for the upscaled pass,
/// which runs only on frames the others failed and where modules are 6–9 px.
pub(crate) fn census(bin: &[bool], w: usize, h: usize, exact: bool) -> Vec<Candidate> {
    let mut out = scan_lines(bin, w, h, exact);
    // Columns as the rows of the transposed image: one strided copy, then the same fast scan.
    let mut transposed = vec![false; w * h];
    for (y, row) in bin.chunks_exact(w.max(1)).take(h).enumerate() {
        for (x, &v) in row.iter().enumerate() {
            transposed[x * h + y] = v;
        }
    }
    // Column hits come back with (along, line) = (y, x).
    for c in scan_lines(&transposed, h, w, exact) {
        let c = Candidate {
            x: c.y,
            y: c.x,
            ..c
        };
        let same = out.iter_mut().find(|o| {
            o.inverted == c.inverted
                && (o.x - c.x).abs().max((o.y - c.y).abs())
                    <= MERGE_MODULES * o.module.max(c.module)
        });
        match same {
            Some(o) => {
                let (a, b) = (o.rows as f32, c.rows as f32);
                o.x = (o.x * a + c.x * b) / (a + b);
                o.y = (o.y * a + c.y * b) / (a + b);
                o.module = (o.module * a + c.module * b) / (a + b);
                o.rows += c.rows;
            }
            None => out.push(c),
        }
    }
    out.retain(|c| c.rows >= 2);
    out
}

/// The row scan of [`census`] over the `lines` rows of `len` pixels of `bin`; candidates in
/// (along the row, row) coordinates, both measured from pixel edges. Single-line hits are
/// dropped here already: they are the bulk of the hits on a noisy image.
fn scan_lines(bin: &[bool], len: usize, lines: usize, exact: bool) -> Vec<Candidate> {
    let test = if exact {
        is_finder_run_exact
    } else {
        is_finder_run
    };
    let mut open: Vec<Candidate> = Vec::new();
    let mut last_line: Vec<usize> = Vec::new();
    // Indices of the clusters that the current line can still extend (hit within 2 lines).
    let mut active: Vec<usize> = Vec::new();
    let mut runs: Vec<(usize, bool)> = Vec::with_capacity(len / 2 + 1); // (length, colour)
    for (line, row) in bin.chunks_exact(len.max(1)).take(lines).enumerate() {
        active.retain(|&i| last_line[i] + 2 >= line);
        runs.clear();
        let mut start = 0;
        for i in 1..=row.len() {
            if i == row.len() || row[i] != row[start] {
                runs.push((i - start, row[start]));
                start = i;
            }
        }
        let mut pos = 0;
        for i in 0..runs.len() {
            if i + 5 <= runs.len() {
                let r: [usize; 5] = std::array::from_fn(|k| runs[i + k].0);
                if test(&r) {
                    let module = r.iter().sum::<usize>() as f32 / 7.0;
                    let along = (pos + r[0] + r[1]) as f32 + r[2] as f32 / 2.0;
                    let hit = Hit {
                        along,
                        line,
                        module,
                        inverted: !runs[i].1,
                    };
                    merge(&mut open, &mut last_line, &mut active, hit);
                }
            }
            pos += runs[i].0;
        }
    }
    open.retain(|c| c.rows >= 2);
    open
}

/// One line's 1:1:3:1:1 match.
struct Hit {
    along: f32,
    line: usize,
    module: f32,
    inverted: bool,
}

/// Re-measures a candidate's centre across its finder: the centre of the 3-module core run of
/// the vertical 1:1:3:1:1 pattern through the candidate, then the same horizontally through the
/// new row. The census' row-hit average is biased when noise or blur breaks the pattern on some
/// rows of one side only, and a grid sampled from three finder centres inherits the error
/// multiplied by the code's size over the finders' distance.
///
/// Also says whether both cross-checks found the pattern: a candidate that is 1:1:3:1:1 across
/// as well as along is a finder even when it matched on few lines (a finder rotated by ~45°
/// matches the line test on few lines only).
///
/// `flip` reads `bin` negated (an inverted candidate checked on the normal binary image).
pub(crate) fn refine(
    bin: &[bool],
    w: usize,
    h: usize,
    c: &Candidate,
    flip: bool,
) -> (Candidate, bool) {
    let reach = (5.0 * c.module).ceil() as usize + 2;
    let mut out = *c;
    let (x, y) = (c.x.round() as usize, c.y.round() as usize);
    if x >= w || y >= h {
        return (out, false);
    }
    let column = |i: usize| bin[i * w + x] != flip;
    let vertical = core_centre(column, y, reach, h);
    if let Some(cy) = vertical {
        out.y = cy;
    }
    let y = (out.y.round() as usize).min(h - 1);
    let row = |i: usize| bin[y * w + i] != flip;
    let horizontal = core_centre(row, x, reach, w);
    if let Some(cx) = horizontal {
        out.x = cx;
    }
    (out, vertical.is_some() && horizontal.is_some())
}

/// Along a line (`dark(i)` for `i` in `0..len`), the centre of the core run of a 1:1:3:1:1
/// pattern whose core contains position `at`, searching `reach` pixels either side.
pub(crate) fn core_centre(
    dark: impl Fn(usize) -> bool,
    at: usize,
    reach: usize,
    len: usize,
) -> Option<f32> {
    core_centre_with(dark, (at, reach, len), is_finder_run_exact)
}

/// [`core_centre`] with the run test `fits` (see [`is_finder_run_quantized`]).
pub(crate) fn core_centre_with(
    dark: impl Fn(usize) -> bool,
    (at, reach, len): (usize, usize, usize),
    fits: fn(&[usize; 5]) -> bool,
) -> Option<f32> {
    if !dark(at) {
        return None;
    }
    // Walk out from `at`: the core run, then the four runs beyond it on each side.
    let lo = at.saturating_sub(reach);
    let hi = (at + reach).min(len - 1);
    let run_end = |from: usize, step: isize, colour: bool| {
        let mut i = from as isize;
        while (lo as isize..=hi as isize).contains(&(i + step))
            && dark((i + step) as usize) == colour
        {
            i += step;
        }
        i as usize
    };
    let (c0, c1) = (run_end(at, -1, true), run_end(at, 1, true));
    let core = c1 - c0 + 1;
    let side = |start: usize, step: isize| -> Option<[usize; 2]> {
        let first = start as isize + step;
        if !(lo as isize..=hi as isize).contains(&first) {
            return None;
        }
        let e1 = run_end(first as usize, step, false);
        let n1 = e1.abs_diff(first as usize) + 1;
        let second = e1 as isize + step;
        if !(lo as isize..=hi as isize).contains(&second) {
            return None;
        }
        let e2 = run_end(second as usize, step, true);
        Some([n1, e2.abs_diff(second as usize) + 1])
    };
    let (l, r) = (side(c0, -1)?, side(c1, 1)?);
    fits(&[l[1], l[0], core, r[0], r[1]]).then_some((c0 + c1) as f32 / 2.0 + 0.5)
}

/// rqrr's own test, integer mean included: each 1-run within ±¾ of the mean 1-run, the 3-run
/// within 3×mean ± ¾mean, with the mean truncated to whole pixels. Used for the census scan:
/// the truncation makes it stricter at small module sizes, which keeps the data area's
/// look-alikes down (the untruncated test lets ~3× as many through).
fn is_finder_run(r: &[usize; 5]) -> bool {
    let avg = (r[0] + r[1] + r[3] + r[4]) / 4;
    if avg == 0 {
        return false;
    }
    let err = avg * 3 / 4;
    r.iter()
        .zip([1, 1, 3, 1, 1])
        .all(|(&len, k)| len + err >= k * avg && len <= k * avg + err)
}

/// The same tolerance on 4× the lengths, without the truncation, for the cross-check of a
/// candidate already found: truncation rejects real finders at 3–4 px per module (runs
/// 4,3,12,3,5 have a mean of 3.75, truncated to 3, which allows a core of 11 at most).
pub(crate) fn is_finder_run_exact(r: &[usize; 5]) -> bool {
    fits_ratio(r, 0)
}

/// The ratio test of [`is_finder_run_exact`] with `slack4` (4 × pixels) more tolerance per run.
fn fits_ratio(r: &[usize; 5], slack4: usize) -> bool {
    let sum4 = r[0] + r[1] + r[3] + r[4]; // 4 × the mean 1-run
    if sum4 == 0 {
        return false;
    }
    let err4 = sum4 * 3 / 4 + slack4; // 4 × ¾ mean
    r.iter()
        .zip([1, 1, 3, 1, 1])
        .all(|(&len, k)| 4 * len + err4 >= k * sum4 && 4 * len <= k * sum4 + err4)
}

/// Below this mean 1-run (in [`is_finder_run_exact`]'s units, 4 × pixels: under 3 px) a run is
/// whole pixels standing for a fractional width, and with the edges blurred each end may
/// fall a pixel either way.
const QUANTIZED_SUM4: usize = 12;

/// [`is_finder_run_exact`] with one pixel more tolerance on every run when the runs are
/// under 3 px: at 1.8 px per module a sharp finder reads 2,1,6,2,1 on some lines (core 6 px
/// against a 1-run mean of 1.5), which the ratio test rejects. It admits many more data-area
/// and text look-alikes, so the screen asks more lines of a candidate found this way.
pub(crate) fn is_finder_run_quantized(r: &[usize; 5]) -> bool {
    if !is_quantized(r) {
        return is_finder_run_exact(r);
    }
    // A 3-module core is 3 px or more at 1 px per module or more, and no code with smaller
    // modules decodes; 1,1,2,1,1 runs are all over small text.
    r[2] >= MIN_QUANTIZED_CORE && fits_ratio(r, 4)
}

/// The shortest core run [`is_finder_run_quantized`] accepts (px).
const MIN_QUANTIZED_CORE: usize = 3;

/// Whether [`is_finder_run_quantized`] is more tolerant than [`is_finder_run_exact`] on `r`.
pub(crate) fn is_quantized(r: &[usize; 5]) -> bool {
    r[0] + r[1] + r[3] + r[4] < QUANTIZED_SUM4
}

fn merge(open: &mut Vec<Candidate>, last_line: &mut Vec<usize>, active: &mut Vec<usize>, hit: Hit) {
    for &i in active.iter() {
        let (c, last) = (&mut open[i], &mut last_line[i]);
        let close = (c.x - hit.along).abs() <= MERGE_MODULES * c.module.max(hit.module);
        if c.inverted == hit.inverted && close && *last != hit.line {
            let n = c.rows as f32;
            c.x = (c.x * n + hit.along) / (n + 1.0);
            c.module = (c.module * n + hit.module) / (n + 1.0);
            c.y = (c.y * n + hit.line as f32 + 0.5) / (n + 1.0);
            c.rows += 1;
            *last = hit.line;
            return;
        }
    }
    active.push(open.len());
    open.push(Candidate {
        x: hit.along,
        y: hit.line as f32 + 0.5,
        module: hit.module,
        inverted: hit.inverted,
        rows: 1,
    });
    last_line.push(hit.line);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 7×7-module finder at `scale` px/module, light-on-dark when `inverted`.
    fn finder_image(scale: usize, inverted: bool) -> (Vec<bool>, usize, usize) {
        let n = 11 * scale;
        let mut bin = vec![inverted; n * n];
        for my in 0..7 {
            for mx in 0..7 {
                let ring = mx == 0 || my == 0 || mx == 6 || my == 6;
                let core = (2..5).contains(&mx) && (2..5).contains(&my);
                if ring || core {
                    for y in 0..scale {
                        for x in 0..scale {
                            bin[((my + 2) * scale + y) * n + (mx + 2) * scale + x] = !inverted;
                        }
                    }
                }
            }
        }
        (bin, n, n)
    }

    #[test]
    fn finds_one_finder_per_polarity() {
        for inverted in [false, true] {
            let (bin, w, h) = finder_image(4, inverted);
            let c = census(&bin, w, h, false);
            let hits: Vec<_> = c.iter().filter(|c| c.inverted == inverted).collect();
            assert_eq!(hits.len(), 1, "{c:?}");
            assert!((hits[0].module - 4.0).abs() < 0.5);
            assert!((hits[0].x - 22.0).abs() < 1.0 && (hits[0].y - 22.0).abs() < 2.0);
        }
    }

    #[test]
    fn refine_recentres_a_biased_candidate() {
        let (bin, w, h) = finder_image(4, false);
        // True centre (22, 22) in pixel-centre terms is 21.5 + 0.5; start 3 px off vertically.
        let c = Candidate {
            x: 22.0,
            y: 19.0,
            module: 4.0,
            inverted: false,
            rows: 5,
        };
        let (r, checked) = refine(&bin, w, h, &c, false);
        assert!(checked);
        assert!(
            (r.y - 22.0).abs() < 0.6 && (r.x - 22.0).abs() < 0.6,
            "{r:?}"
        );
    }

    #[test]
    fn the_quantized_run_test_adds_a_pixel_only_under_three_pixels() {
        // A sharp finder at 1.8 px per module on a line where the core reads long.
        assert!(!is_finder_run_exact(&[2, 1, 6, 2, 1]));
        assert!(is_finder_run_quantized(&[2, 1, 6, 2, 1]));
        // Runs of 3 px and more: the same test as the exact one.
        for r in [
            [3, 3, 9, 3, 3],
            [3, 4, 13, 3, 3],
            [4, 3, 12, 3, 5],
            [3, 3, 5, 3, 3],
        ] {
            assert_eq!(
                is_finder_run_quantized(&r),
                is_finder_run_exact(&r),
                "{r:?}"
            );
        }
        // Small text's 1,1,2,1,1 and equal stripes stay out.
        assert!(!is_finder_run_quantized(&[1, 1, 2, 1, 1]));
        assert!(!is_finder_run_quantized(&[2, 2, 2, 2, 2]));
        assert!(is_finder_run_quantized(&[1, 1, 3, 1, 1]));
    }

    #[test]
    fn flat_and_striped_images_have_no_candidates() {
        assert!(census(&[false; 100], 10, 10, false).is_empty());
        // Equal stripes are 1:1:1:1:1, not 1:1:3:1:1.
        let stripes: Vec<bool> = (0..400).map(|i| (i % 20) / 2 % 2 == 0).collect();
        assert!(census(&stripes, 20, 20, true).is_empty());
    }
}
