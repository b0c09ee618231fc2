//! The first look at every frame: where could a code be? Most of a store camera's frames hold
//! none, so this must cost a small part of what decoding costs, and everything expensive runs
//! only in the regions it returns.
//!
//! One pass over the pixels sums 8×8 blocks; a box of blocks gives each block a local-mean
//! threshold (the block-wise form of [`crate::preprocess::adaptive_threshold`], with its margin:
//! ~1/60 of its cost, as no per-pixel window is summed). Every row is then scanned for
//! 1:1:3:1:1 runs of either polarity (a pixel more tolerant under 3 px per module, where
//! whole-pixel runs cannot show the ratio; candidates found so must match on more lines), and
//! each hit is cross-checked across (the column through its core, then the row through the new
//! centre; [`core_centre_with`]), so the stripes of a linear barcode or a shelf edge, which match along a row but not down a column, are dropped at once.
//! Confirmed hits cluster into finder candidates; two of one polarity and size at a finder
//! distance make a region (the code they can belong to, with its quiet zone), and regions of
//! one polarity that overlap merge.

use crate::finder::{
    Candidate, core_centre_with, is_finder_run_exact, is_finder_run_quantized, is_quantized,
};
use crate::frame::Plane;

/// Block side of the threshold map (pixels). Small against a finder (7 modules), large enough
/// that the map costs little next to the pixel pass.
const BLOCK: usize = 8;
/// Confirmed hits whose centres are this many modules apart belong to one candidate.
const MERGE_MODULES: f32 = 1.5;
/// A real finder is confirmed on ~5 lines per module of its row-measured size (rows and
/// columns through its 3-module core; ~2 when rotated by 45°, whose row-measured module is
/// √2 too large and whose lines cut the core shorter, fewer when blurred); look-alikes in
/// text, noise and data areas on a line or two per module, and on at most 4 lines even when
/// their modules are tiny.
const MIN_HITS_PER_MODULE: f32 = 1.2;
const MIN_HITS: f32 = 5.0;
/// Under 3 px per module the line test allows each run a pixel more
/// ([`is_finder_run_quantized`]), or finders of 1–2 px modules would match on too few lines to
/// be seen at all. That tolerance lets text and data-area look-alikes match on 5–7 lines, while
/// a real finder matches on nearly all of the ~6 per module through its core (8–11 at 1.5–1.8
/// px): a candidate that needed it must have this many lines per module.
const QUANTIZED_HITS_PER_MODULE: f32 = 5.0;
/// Finder centres of one code are 14 (version 1) to 170 (version 40) modules apart; a store
/// camera sees app tokens (versions 9–13: up to 62) and product codes. Pairs further apart
/// than this are not grouped, which keeps chance pairs of clutter from spanning the frame.
const MAX_PAIR_MODULES: f32 = 100.0;
/// From a finder centre to the end of the quiet zone: 3.5 modules, 4 of quiet zone, and 1.5
/// for the centre's error and the module size's.
const MARGIN_MODULES: f32 = 9.0;

/// A region of the plane to decode, and its polarity (light-on-dark codes are decoded from the
/// negative of their region).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Region {
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
    pub inverted: bool,
    /// The candidates that made it (plane pixels).
    pub finders: Vec<Candidate>,
}

impl Region {
    fn overlaps(&self, o: &Region) -> bool {
        self.x0 < o.x1 && o.x0 < self.x1 && self.y0 < o.y1 && o.y0 < self.y1
    }
}

/// Per-block "dark below" levels: a pixel is dark when it is under its block's level.
struct Levels {
    /// Blocks per row.
    bw: usize,
    below: Vec<u8>,
}

impl Levels {
    /// Where the 3×3 blocks around a block have contrast (max − min ≥ 4 × `min_delta`, well
    /// above the sensor noise), the level is their midpoint: no margin, so a blurred thin ring
    /// or a 14-level code still splits, and a dark bezel a few blocks away does not pull it.
    /// In flat areas (a finder's core when modules are large, a wall) it is the mean of the
    /// `(2·radius/BLOCK + 1)²` blocks around minus the margin of
    /// [`crate::preprocess::adaptive_threshold`], `max(min_delta, 4 % of the mean)`, so a
    /// dark flat area is dark and noise on a light one stays light.
    fn new(p: &Plane, radius: usize, min_delta: u32) -> Levels {
        let (bw, bh) = (p.w.div_ceil(BLOCK), p.h.div_ceil(BLOCK));
        let mut sums = vec![0u32; bw * bh];
        let mut counts = vec![0u32; bw * bh];
        let mut lo = vec![255u8; bw * bh];
        let mut hi = vec![0u8; bw * bh];
        // Column sums, minima and maxima over a block row (contiguous, so they vectorize),
        // folded into blocks of 8 columns at the block row's end.
        let (mut cs, mut cl, mut ch) = (vec![0u16; p.w], vec![255u8; p.w], vec![0u8; p.w]);
        for (by, rows) in p.px.chunks(BLOCK * p.w).enumerate() {
            cs.fill(0);
            cl.fill(255);
            ch.fill(0);
            for row in rows.chunks_exact(p.w) {
                for (((s, l), h), &v) in cs.iter_mut().zip(&mut cl).zip(&mut ch).zip(row) {
                    *s += v as u16;
                    *l = (*l).min(v);
                    *h = (*h).max(v);
                }
            }
            let n = (rows.len() / p.w) as u32;
            let at = by * bw;
            for (i, ((s, l), h)) in cs
                .chunks(BLOCK)
                .zip(cl.chunks(BLOCK))
                .zip(ch.chunks(BLOCK))
                .enumerate()
            {
                sums[at + i] = s.iter().map(|&v| v as u32).sum();
                counts[at + i] = n * s.len() as u32;
                lo[at + i] = l.iter().copied().min().unwrap_or(255);
                hi[at + i] = h.iter().copied().max().unwrap_or(0);
            }
        }
        // Summed-area tables over blocks, one padding row and column.
        let stride = bw + 1;
        let table = |v: &[u32]| {
            let mut t = vec![0u32; stride * (bh + 1)];
            for by in 0..bh {
                let mut acc = 0;
                for bx in 0..bw {
                    acc += v[by * bw + bx];
                    t[(by + 1) * stride + bx + 1] = t[by * stride + bx + 1] + acc;
                }
            }
            t
        };
        let (ts, tc) = (table(&sums), table(&counts));
        let r = (radius / BLOCK).max(1);
        let contrast = 4 * min_delta;
        let mut below = vec![0u8; bw * bh];
        for by in 0..bh {
            let (y0, y1) = (by.saturating_sub(r), (by + r + 1).min(bh));
            let (n0, n1) = (by.saturating_sub(1), (by + 2).min(bh));
            for bx in 0..bw {
                let (m0, m1) = (bx.saturating_sub(1), (bx + 2).min(bw));
                let (mut l, mut h) = (255u8, 0u8);
                for ny in n0..n1 {
                    for nx in m0..m1 {
                        (l, h) = (l.min(lo[ny * bw + nx]), h.max(hi[ny * bw + nx]));
                    }
                }
                below[by * bw + bx] = if (h - l) as u32 >= contrast {
                    (l as u32 + h as u32).div_ceil(2) as u8
                } else {
                    let (x0, x1) = (bx.saturating_sub(r), (bx + r + 1).min(bw));
                    let boxed = |t: &[u32]| {
                        t[y1 * stride + x1] + t[y0 * stride + x0]
                            - t[y0 * stride + x1]
                            - t[y1 * stride + x0]
                    };
                    let mean = boxed(&ts) / boxed(&tc).max(1);
                    let margin = ((mean * 41) >> 10).max(min_delta);
                    mean.saturating_sub(margin) as u8
                };
            }
        }
        Levels { bw, below }
    }

    fn dark(&self, p: &Plane, x: usize, y: usize) -> bool {
        p.px[y * p.w + x] < self.below[(y / BLOCK) * self.bw + x / BLOCK]
    }
}

/// The last five runs of one column, oldest first, and where the newest one ends.
#[derive(Clone, Copy, Default)]
struct ColumnRuns {
    runs: [usize; 5],
    /// Runs completed so far (saturating at 5: only whether the window is full matters).
    seen: usize,
    /// Row where the current run started.
    start: usize,
}

/// Finder candidates of `p` (both polarities). Each row, and each column (through per-column
/// run state updated row by row, so the pass stays row-major), is scanned for 1:1:3:1:1 runs.
/// A hit is cross-checked across ([`confirm`]); candidates keep the confirmed hits, and need
/// [`MIN_HITS_PER_MODULE`] of them per module, and [`MIN_HITS`]; those that needed the
/// quantized run test, [`QUANTIZED_HITS_PER_MODULE`]. `radius` is the local-mean window
/// radius, `min_delta` the threshold floor (see [`crate::preprocess::Threshold`]).
///
/// `quantized: false` keeps to the exact run test: on a frame smoothed for sensor noise, codes
/// of 1–2 px modules are blurred away, and the tolerant test only finds speckle.
pub(crate) fn candidates(
    p: &Plane,
    radius: usize,
    min_delta: u32,
    quantized: bool,
) -> Vec<Candidate> {
    let line_test = if quantized {
        is_finder_run_quantized
    } else {
        is_finder_run_exact
    };
    let (w, h) = (p.w, p.h);
    let mut out: Vec<Cluster> = Vec::new();
    if w < 7 || h < 7 {
        return Vec::new();
    }
    let levels = Levels::new(p, radius, min_delta);
    let mut thr = vec![0u8; w];
    // Dark pixels of the current and previous row as bit masks: transitions along the row and
    // changes from the row above are then a shift and an xor per 64 pixels.
    let words = w.div_ceil(64);
    let mut bytes = vec![0u8; words * 64];
    let mut dark = vec![0u64; words];
    let mut prev = vec![0u64; words];
    let mut cols = vec![ColumnRuns::default(); w];
    let mut runs: Vec<usize> = Vec::with_capacity(w / 2 + 1);
    for (y, row) in p.px.chunks_exact(w).enumerate() {
        if y % BLOCK == 0 {
            let line = &levels.below[(y / BLOCK) * levels.bw..(y / BLOCK + 1) * levels.bw];
            for (t, &l) in thr.chunks_mut(BLOCK).zip(line) {
                t.fill(l);
            }
        }
        for ((b, &v), &t) in bytes.iter_mut().zip(row).zip(&thr) {
            *b = (v < t) as u8;
        }
        for (m, chunk) in dark.iter_mut().zip(bytes.chunks(64)) {
            // Eight 0/1 bytes to eight bits at a time (the multiply gathers byte i's low bit
            // into bit 56 + i).
            *m = chunk.chunks(8).enumerate().fold(0u64, |m, (i, b)| {
                let mut le = [0u8; 8];
                le[..b.len()].copy_from_slice(b);
                let g = u64::from_le_bytes(le).wrapping_mul(0x0102_0408_1020_4080) >> 56;
                m | (g << (8 * i))
            });
        }
        let first_dark = dark[0] & 1 == 1;
        // Rows.
        runs.clear();
        let mut start = 0;
        let mut carry = dark[0] & 1;
        for (k, &m) in dark.iter().enumerate() {
            let mut edges = m ^ ((m << 1) | carry);
            carry = m >> 63;
            while edges != 0 {
                let x = k * 64 + edges.trailing_zeros() as usize;
                edges &= edges - 1;
                if x >= w {
                    break;
                }
                runs.push(x - start);
                start = x;
            }
        }
        runs.push(w - start);
        let mut pos = 0;
        for i in 0..runs.len().saturating_sub(4) {
            let r: [usize; 5] = std::array::from_fn(|k| runs[i + k]);
            if line_test(&r) {
                // Run i is dark on an even index when the row starts dark.
                let inverted = (i % 2 == 0) != first_dark;
                let cx = pos + r[0] + r[1] + r[2] / 2;
                let hit = (cx, y, r.iter().sum::<usize>() as f32 / 7.0, inverted);
                add_hit(&mut out, (p, &levels, quantized), &r, hit, false);
            }
            pos += runs[i];
        }
        // Columns: a run ends where the colour changes from the row above.
        for (k, (&m, &pm)) in dark.iter().zip(&prev).enumerate().filter(|_| y > 0) {
            let mut changed = m ^ pm;
            while changed != 0 {
                let x = k * 64 + changed.trailing_zeros() as usize;
                changed &= changed - 1;
                let c = &mut cols[x];
                c.runs.rotate_left(1);
                c.runs[4] = y - c.start;
                c.start = y;
                c.seen = (c.seen + 1).min(5);
                if c.seen == 5 && line_test(&c.runs) {
                    let r = c.runs;
                    let cy = y - r[4] - r[3] - r[2].div_ceil(2);
                    // The run that just ended, like the window's first, is light.
                    let inverted = (pm >> (x % 64)) & 1 == 0;
                    let hit = (x, cy, r.iter().sum::<usize>() as f32 / 7.0, inverted);
                    add_hit(&mut out, (p, &levels, quantized), &r, hit, true);
                }
            }
        }
        std::mem::swap(&mut dark, &mut prev);
    }
    out.into_iter()
        .filter(|k| {
            let (rows, exact, module) = (k.c.rows as f32, k.exact as f32, k.c.module);
            let min = (MIN_HITS_PER_MODULE * module).max(MIN_HITS);
            exact >= min || (rows >= min && rows >= QUANTIZED_HITS_PER_MODULE * module)
        })
        .map(|k| k.c)
        .collect()
}

/// A candidate being built, and how many of its hits passed the exact run test on all three
/// lines.
struct Cluster {
    c: Candidate,
    exact: u32,
}

/// Cross-checks a line hit with runs `r` and adds it to its cluster: with the exact run test
/// where it passes, else with the quantized one (see [`is_finder_run_quantized`]).
fn add_hit(
    out: &mut Vec<Cluster>,
    (p, levels, quantized): (&Plane, &Levels, bool),
    r: &[usize; 5],
    hit: (usize, usize, f32, bool),
    vertical: bool,
) {
    let exact = is_finder_run_exact(r)
        .then(|| confirm(p, levels, hit, vertical, is_finder_run_exact))
        .flatten();
    if let Some(c) = exact {
        merge(out, c, true);
    } else if quantized
        && is_quantized(r)
        && let Some(c) = confirm(p, levels, hit, vertical, is_finder_run_quantized)
    {
        merge(out, c, false);
    }
}

/// Cross-checks a line hit `(x, y, module, inverted)`: across the line through its core, then
/// along it through the new centre, both 1:1:3:1:1 of the same polarity. `vertical`: the hit
/// came from a column.
fn confirm(
    p: &Plane,
    levels: &Levels,
    (x, y, module, inverted): (usize, usize, f32, bool),
    vertical: bool,
    fits: fn(&[usize; 5]) -> bool,
) -> Option<Candidate> {
    let reach = (5.0 * module).ceil() as usize + 2;
    let across = |at: usize, from: usize| {
        if vertical {
            core_centre_with(
                |i| levels.dark(p, i, at) != inverted,
                (from, reach, p.w),
                fits,
            )
        } else {
            core_centre_with(
                |i| levels.dark(p, at, i) != inverted,
                (from, reach, p.h),
                fits,
            )
        }
    };
    let along = |at: usize, from: usize| {
        if vertical {
            core_centre_with(
                |i| levels.dark(p, at, i) != inverted,
                (from, reach, p.h),
                fits,
            )
        } else {
            core_centre_with(
                |i| levels.dark(p, i, at) != inverted,
                (from, reach, p.w),
                fits,
            )
        }
    };
    let (line, pos) = if vertical { (y, x) } else { (x, y) };
    let c_across = across(line, pos)?;
    let last = if vertical { p.w - 1 } else { p.h - 1 };
    let c_along = along((c_across as usize).min(last), line)?;
    let (cx, cy) = if vertical {
        (c_across, c_along)
    } else {
        (c_along, c_across)
    };
    Some(Candidate {
        x: cx,
        y: cy,
        module,
        inverted,
        rows: 1,
    })
}

fn merge(out: &mut Vec<Cluster>, c: Candidate, exact: bool) {
    let near = |o: &Candidate| {
        o.inverted == c.inverted
            && (o.x - c.x).abs().max((o.y - c.y).abs()) <= MERGE_MODULES * o.module.max(c.module)
    };
    match out.iter_mut().rev().find(|k| near(&k.c)) {
        Some(k) => {
            let o = &mut k.c;
            let n = o.rows as f32;
            o.x = (o.x * n + c.x) / (n + 1.0);
            o.y = (o.y * n + c.y) / (n + 1.0);
            o.module = (o.module * n + c.module) / (n + 1.0);
            o.rows += 1;
            k.exact += exact as u32;
        }
        None => out.push(Cluster {
            c,
            exact: exact as u32,
        }),
    }
}

/// Above this many candidates only the ones confirmed on most lines are grouped: pairing is
/// quadratic and triples cubic, and a frame with that many is clutter around any real finders.
const MAX_GROUPED: usize = 24;

/// The regions of a `w` × `h` plane where the candidates can form a code, with its quiet zone:
/// the box of every finder triple (right angle, similar legs and sizes) and its fourth corner;
/// then, for candidates in no triple (a finder lost to glare or blur), the box of every pair of
/// one polarity and similar size at a finder distance, large enough for any code the pair can
/// belong to (as two adjacent finders or as the diagonal pair).
pub(crate) fn regions(mut cands: Vec<Candidate>, w: usize, h: usize) -> Vec<Region> {
    cands.sort_by_key(|c| std::cmp::Reverse(c.rows));
    cands.truncate(MAX_GROUPED);
    let mut out: Vec<Region> = Vec::new();
    let mut used = vec![false; cands.len()];
    let clamp = |v: f32, max: usize| (v.max(0.0) as usize).min(max);
    let mut push = |pts: &[(f32, f32)], module: f32, inverted: bool| {
        let m = MARGIN_MODULES * module;
        let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
        for &(x, y) in pts {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
        let r = Region {
            x0: clamp(x0 - m, w),
            y0: clamp(y0 - m, h),
            x1: clamp(x1 + m + 1.0, w),
            y1: clamp(y1 + m + 1.0, h),
            inverted,
            finders: Vec::new(),
        };
        add(&mut out, r);
    };
    let n = cands.len();
    for i in 0..n {
        for j in 0..n {
            for k in j + 1..n {
                let (a, b, c) = (&cands[i], &cands[j], &cands[k]);
                if i == j || i == k || !triple(a, b, c) {
                    continue;
                }
                let d = (b.x + c.x - a.x, b.y + c.y - a.y);
                push(
                    &[(a.x, a.y), (b.x, b.y), (c.x, c.y), d],
                    max_module(&[a, b, c]),
                    a.inverted,
                );
                (used[i], used[j], used[k]) = (true, true, true);
            }
        }
    }
    for i in 0..n {
        for j in i + 1..n {
            let (a, b) = (&cands[i], &cands[j]);
            if used[i] || used[j] || !pair(a, b) {
                continue;
            }
            // The third finder is at a or b plus or minus the perpendicular (adjacent pair), or
            // at the midpoint plus or minus half of it (diagonal pair): the box of a, b and
            // a ± ⊥, b ± ⊥ holds both.
            let (px, py) = (-(b.y - a.y), b.x - a.x);
            let pts = [
                (a.x, a.y),
                (b.x, b.y),
                (a.x + px, a.y + py),
                (a.x - px, a.y - py),
                (b.x + px, b.y + py),
                (b.x - px, b.y - py),
            ];
            push(&pts, max_module(&[a, b]), a.inverted);
        }
    }
    for r in &mut out {
        r.finders = cands
            .iter()
            .filter(|c| {
                c.inverted == r.inverted
                    && (r.x0 as f32..r.x1 as f32).contains(&c.x)
                    && (r.y0 as f32..r.y1 as f32).contains(&c.y)
            })
            .copied()
            .collect();
    }
    out
}

fn max_module(cs: &[&Candidate]) -> f32 {
    cs.iter().map(|c| c.module).fold(0.0, f32::max)
}

/// Two finders of one code, possibly: one polarity, similar module sizes, a finder distance.
fn pair(a: &Candidate, b: &Candidate) -> bool {
    let (lo, hi) = (a.module.min(b.module), a.module.max(b.module));
    let d = (b.x - a.x).hypot(b.y - a.y);
    a.inverted == b.inverted && hi <= 1.6 * lo && d >= 10.0 * lo && d <= MAX_PAIR_MODULES * hi
}

/// Three finders of one code, `a` at the corner, tilt and perspective allowed: two legs that
/// are pairs, of similar length, at roughly a right angle.
fn triple(a: &Candidate, b: &Candidate, c: &Candidate) -> bool {
    if !(pair(a, b) && pair(a, c)) {
        return false;
    }
    let (ab, ac) = ((b.x - a.x, b.y - a.y), (c.x - a.x, c.y - a.y));
    let (lb, lc) = (ab.0.hypot(ab.1), ac.0.hypot(ac.1));
    let cos = (ab.0 * ac.0 + ab.1 * ac.1) / (lb * lc);
    lb.min(lc) / lb.max(lc) > 0.7 && cos.abs() < 0.35
}

/// Adds `r`, merging it with every region of its polarity it overlaps (repeatedly: a merged
/// box can reach further ones).
fn add(out: &mut Vec<Region>, mut r: Region) {
    while let Some(i) = out
        .iter()
        .position(|o| o.inverted == r.inverted && o.overlaps(&r))
    {
        let o = out.swap_remove(i);
        r = Region {
            x0: r.x0.min(o.x0),
            y0: r.y0.min(o.y0),
            x1: r.x1.max(o.x1),
            y1: r.y1.max(o.y1),
            inverted: r.inverted,
            finders: Vec::new(),
        };
    }
    out.push(r);
}
