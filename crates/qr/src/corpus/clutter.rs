//! Code-free scenes: what a store camera sees most of the time. They measure what a frame costs
//! when there is nothing to read, and they must hold the structures that look most like finder
//! patterns to a row scan: shelf edges and product packaging (long edges, stripes), price labels
//! with text-like strokes and linear barcodes (bars of 1–4 modules, so 1:1:3:1:1 runs on every
//! row that crosses them), all over a lighting gradient with sensor noise.

use super::render::{Canvas, Rng};

/// A code-free `w` × `h` scene (before the camera's common blur and noise, which
/// [`super::generate`] adds to every frame).
pub fn scene(w: usize, h: usize, rng: &mut Rng) -> Canvas {
    let level = rng.range(100.0, 200.0);
    // A gradient with a few flat rectangles (the background of every corpus frame).
    let mut c = Canvas::scene(w, h, level, rng);
    shelves(&mut c, level, rng);
    for _ in 0..rng.below(4) + 1 {
        label(&mut c, rng);
    }
    // Some cameras are noisier than the common σ 2 (dim aisles, small sensors).
    let extra = rng.range(0.0, 6.0);
    c.noise(extra, rng);
    c
}

/// Shelf edges across the frame with product facings standing on them: boxes of one colour with
/// vertical packaging stripes and a darker print block.
fn shelves(c: &mut Canvas, level: f32, rng: &mut Rng) {
    let rows = 2 + rng.below(3);
    let pitch = c.h as f32 / rows as f32;
    for r in 0..rows {
        let edge = ((r as f32 + 1.0) * pitch - rng.range(8.0, 20.0)) as usize;
        let band = rng.range(6.0, 16.0) as usize;
        // The shelf lip (light) and its shadow (dark) just below.
        fill(c, 0, edge, c.w, edge + band, rng.range(level, 250.0));
        fill(
            c,
            0,
            edge + band,
            c.w,
            edge + band + 3,
            rng.range(10.0, 60.0),
        );
        let top = (edge as f32 - pitch * rng.range(0.5, 0.85)).max(0.0) as usize;
        let mut x = rng.below(20);
        while x < c.w {
            let bw = rng.range(25.0, 140.0) as usize;
            let v = rng.range(20.0, 240.0);
            let bt = top + rng.below((edge - top) / 3 + 1);
            fill(c, x, bt, x + bw, edge, v);
            // Packaging stripes.
            let mut sx = x + rng.below(6);
            while sx + 2 < x + bw && rng.below(3) > 0 {
                let sw = 1 + rng.below(6);
                fill(c, sx, bt, sx + sw, edge, rng.range(10.0, 250.0));
                sx += sw + 1 + rng.below(10);
            }
            // A print block with text.
            if rng.below(2) == 0 && bw > 20 {
                let (tx, ty) = (x + 3, bt + (edge - bt) / 3);
                text(c, tx, ty, bw.saturating_sub(6), rng.range(0.0, v), rng);
            }
            x += bw + rng.below(8);
        }
    }
}

/// A price label: a light card with lines of text and, often, a linear barcode.
fn label(c: &mut Canvas, rng: &mut Rng) {
    let (lw, lh) = (
        rng.range(70.0, 220.0) as usize,
        rng.range(40.0, 120.0) as usize,
    );
    let x0 = rng.below(c.w.saturating_sub(lw).max(1));
    let y0 = rng.below(c.h.saturating_sub(lh).max(1));
    let paper = rng.range(190.0, 250.0);
    fill(c, x0, y0, x0 + lw, y0 + lh, paper);
    let ink = rng.range(5.0, 70.0);
    let mut y = y0 + 4;
    let lines = 1 + rng.below(3);
    for _ in 0..lines {
        let size = text(c, x0 + 4, y, lw.saturating_sub(8), ink, rng);
        y += size + 3;
    }
    if rng.below(3) > 0 && y + 12 < y0 + lh {
        barcode(
            c,
            x0 + 6,
            y,
            lw.saturating_sub(12),
            y0 + lh - 3 - y,
            ink,
            rng,
        );
    }
}

/// One line of glyph-like strokes starting at (x, y), at most `width` wide; returns its height.
fn text(c: &mut Canvas, x: usize, y: usize, width: usize, ink: f32, rng: &mut Rng) -> usize {
    let size = 6 + rng.below(18);
    let stroke = (size as f32 * rng.range(0.1, 0.22)).max(1.0);
    let mut gx = x;
    while gx + size <= x + width {
        if rng.below(6) == 0 {
            gx += size; // a space between words
            continue;
        }
        let (s, fx, fy) = (size as f32, gx as f32, y as f32);
        let gw = s * rng.range(0.45, 0.8);
        for _ in 0..1 + rng.below(3) {
            // Strokes between points of the glyph box: stems, bars, diagonals, bowls' sides.
            let p = |rng: &mut Rng| {
                let ix = [0.0, 0.5, 1.0][rng.below(3)];
                let iy = [0.0, 0.5, 1.0][rng.below(3)];
                (fx + ix * gw, fy + iy * s)
            };
            let (a, b) = (p(rng), p(rng));
            segment(c, a, b, stroke, ink);
        }
        gx += gw as usize + 1 + (stroke as usize).max(1);
    }
    size
}

/// A linear barcode: bars and spaces of 1–4 modules (EAN-like), `module` 1–3 px.
fn barcode(
    c: &mut Canvas,
    x: usize,
    y: usize,
    width: usize,
    height: usize,
    ink: f32,
    rng: &mut Rng,
) {
    let module = 1 + rng.below(3);
    let mut bx = x;
    let mut dark = true;
    while bx + 4 * module < x + width {
        let bw = (1 + rng.below(4)) * module;
        if dark {
            fill(c, bx, y, bx + bw, y + height, ink);
        }
        bx += bw;
        dark = !dark;
    }
}

/// Fills `[x0, x1) × [y0, y1)` (clipped) with `v`.
fn fill(c: &mut Canvas, x0: usize, y0: usize, x1: usize, y1: usize, v: f32) {
    let (x1, y1) = (x1.min(c.w), y1.min(c.h));
    for y in y0.min(y1)..y1 {
        c.px[y * c.w + x0.min(x1)..y * c.w + x1].fill(v);
    }
}

/// A stroke of `width` px from `a` to `b` (pixels whose centre is within width/2 of the segment).
fn segment(c: &mut Canvas, a: (f32, f32), b: (f32, f32), width: f32, v: f32) {
    let r = width / 2.0;
    let (x0, x1) = (a.0.min(b.0) - r, a.0.max(b.0) + r);
    let (y0, y1) = (a.1.min(b.1) - r, a.1.max(b.1) + r);
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = (dx * dx + dy * dy).max(1e-6);
    for y in (y0.max(0.0) as usize)..(y1.ceil().max(0.0) as usize).min(c.h) {
        for x in (x0.max(0.0) as usize)..(x1.ceil().max(0.0) as usize).min(c.w) {
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            let t = (((px - a.0) * dx + (py - a.1) * dy) / len2).clamp(0.0, 1.0);
            let (qx, qy) = (a.0 + t * dx - px, a.1 + t * dy - py);
            if qx * qx + qy * qy <= r * r {
                c.px[y * c.w + x] = v;
            }
        }
    }
}
