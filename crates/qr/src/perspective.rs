//! Projective grids for codes seen at an angle: the fourth point and the map through it.
//!
//! Three finder centres fix an affine grid ([`crate::grid`]), which is exact for a frontal code
//! only. A code tilted away from the camera needs a projective map, and that needs a fourth
//! point: the bottom-right alignment pattern that every code of version 2 and up has, 3 modules
//! in from the corner the finders leave open. [`find_alignment`] looks for it around where
//! the affine grid puts it; [`Projective::between`] then maps the four module positions onto
//! the four plane points. Until this existed, tilted codes went to rqrr's own detector, whose
//! perspective fit (a grid-wide fitness search, run per finder triple) made them the most
//! expensive class of the bench.

/// A plane projective map (3×3 matrix, row-major, last entry 1 after normalisation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Projective {
    m: [f64; 9],
}

impl Projective {
    /// The map taking `src[i]` to `dst[i]`; the points go round each quadrilateral (corner
    /// order top-left, top-right, bottom-right, bottom-left). `None` when either is degenerate
    /// (three points on a line).
    pub fn between(src: [(f32, f32); 4], dst: [(f32, f32); 4]) -> Option<Projective> {
        let to_src = square_to_quad(src)?;
        let to_dst = square_to_quad(dst)?;
        Some(Projective {
            m: mul(&to_dst, &adjugate(&to_src)),
        })
    }

    /// The image of (x, y).
    pub fn map(&self, x: f32, y: f32) -> (f32, f32) {
        let (x, y) = (x as f64, y as f64);
        let m = &self.m;
        let w = m[6] * x + m[7] * y + m[8];
        (
            ((m[0] * x + m[1] * y + m[2]) / w) as f32,
            ((m[3] * x + m[4] * y + m[5]) / w) as f32,
        )
    }
}

/// The map of the unit square's corners (0,0), (1,0), (1,1), (0,1) onto `q` (Heckbert's
/// closed form).
fn square_to_quad(q: [(f32, f32); 4]) -> Option<[f64; 9]> {
    let [(x0, y0), (x1, y1), (x2, y2), (x3, y3)] = q.map(|(x, y)| (x as f64, y as f64));
    let (sx, sy) = (x0 - x1 + x2 - x3, y0 - y1 + y2 - y3);
    let (dx1, dx2, dy1, dy2) = (x1 - x2, x3 - x2, y1 - y2, y3 - y2);
    let den = dx1 * dy2 - dx2 * dy1;
    if den.abs() < 1e-9 {
        return None;
    }
    let g = (sx * dy2 - dx2 * sy) / den;
    let h = (dx1 * sy - sx * dy1) / den;
    Some([
        x1 - x0 + g * x1,
        x3 - x0 + h * x3,
        x0,
        y1 - y0 + g * y1,
        y3 - y0 + h * y3,
        y0,
        g,
        h,
        1.0,
    ])
}

/// The adjugate: the inverse up to a scale factor, which a projective map does not see.
fn adjugate(m: &[f64; 9]) -> [f64; 9] {
    [
        m[4] * m[8] - m[5] * m[7],
        m[2] * m[7] - m[1] * m[8],
        m[1] * m[5] - m[2] * m[4],
        m[5] * m[6] - m[3] * m[8],
        m[0] * m[8] - m[2] * m[6],
        m[2] * m[3] - m[0] * m[5],
        m[3] * m[7] - m[4] * m[6],
        m[1] * m[6] - m[0] * m[7],
        m[0] * m[4] - m[1] * m[3],
    ]
}

fn mul(a: &[f64; 9], b: &[f64; 9]) -> [f64; 9] {
    std::array::from_fn(|i| {
        let (r, c) = (i / 3, i % 3);
        (0..3).map(|k| a[r * 3 + k] * b[k * 3 + c]).sum()
    })
}

/// How far from the affine prediction the alignment pattern is looked for, in modules. A code
/// tilted by ~40° (the bench's strongest) moves it 3–4 modules.
const SEARCH_MODULES: i32 = 5;
/// The modules of the pattern that are read: the centre, the light ring around it and the
/// dark ring's four mid-sides (its corners, 2.8 modules out, are the first to fall off when
/// the affine module vectors are a little off in scale or angle, as under perspective).
const PATTERN: [(i32, i32); 13] = [
    (0, 0),
    (-1, -1),
    (0, -1),
    (1, -1),
    (-1, 0),
    (1, 0),
    (-1, 1),
    (0, 1),
    (1, 1),
    (0, -2),
    (-2, 0),
    (2, 0),
    (0, 2),
];
/// Of those, this many may read wrong (blur, a module of noise).
const MAX_MISMATCHES: usize = 1;

/// The centre of the alignment pattern (5×5 modules: dark ring, light ring, dark centre; read
/// at [`PATTERN`]) near
/// `predicted`, searched in half-module steps along the module vectors `u` and `v` (plane
/// pixels per module across and down the code). `dark(x, y)` reads the plane. The positions
/// that match best are averaged, so the centre is found to about a quarter module.
pub(crate) fn find_alignment(
    predicted: (f32, f32),
    u: (f32, f32),
    v: (f32, f32),
    dark: impl Fn(f32, f32) -> bool,
) -> Option<(f32, f32)> {
    let at = |p: (f32, f32), i: f32, j: f32| (p.0 + i * u.0 + j * v.0, p.1 + i * u.1 + j * v.1);
    // Mismatches of the pattern centred on `p`, counting stops once it is over the limit.
    let mismatches = |p: (f32, f32)| {
        let mut bad = 0;
        for &(i, j) in &PATTERN {
            let ring1 = i.abs().max(j.abs()) == 1;
            let (x, y) = at(p, i as f32, j as f32);
            if dark(x, y) == ring1 {
                bad += 1;
                if bad > MAX_MISMATCHES {
                    return bad;
                }
            }
        }
        bad
    };
    let mut best = MAX_MISMATCHES + 1;
    let mut hits: Vec<(f32, f32)> = Vec::new();
    let steps = 2 * SEARCH_MODULES;
    for j in -steps..=steps {
        for i in -steps..=steps {
            let p = at(predicted, i as f32 / 2.0, j as f32 / 2.0);
            let bad = mismatches(p);
            if bad < best {
                best = bad;
                hits.clear();
            }
            if bad == best && bad <= MAX_MISMATCHES {
                hits.push(p);
            }
        }
    }
    // Matches of one pattern lie within a module of each other; keep those near the first.
    let first = *hits.first()?;
    let module = u.0.hypot(u.1).max(v.0.hypot(v.1));
    let near: Vec<&(f32, f32)> = hits
        .iter()
        .filter(|p| (p.0 - first.0).hypot(p.1 - first.1) <= 1.5 * module)
        .collect();
    let n = near.len() as f32;
    Some((
        near.iter().map(|p| p.0).sum::<f32>() / n,
        near.iter().map(|p| p.1).sum::<f32>() / n,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finder::Candidate;
    use crate::grid::{Probe, decode_from_finders};
    use qrcode::{Color, QrCode};

    #[test]
    fn decodes_a_tilted_code_through_its_alignment_pattern() {
        let text = "https://app.example/e?t=eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ0b2tlbi0xMjM0NTY3ODkwIn0.c2ln";
        let code = QrCode::new(text).unwrap();
        let n = code.width();
        let colors = code.to_colors();
        let nf = n as f32;
        // The code's corners on the plane: its bottom edge nearer the camera, turned a little.
        let corners = [(60.0, 50.0), (230.0, 62.0), (262.0, 262.0), (40.0, 245.0)];
        let square = [(0.0, 0.0), (nf, 0.0), (nf, nf), (0.0, nf)];
        let to_plane = Projective::between(square, corners).unwrap();
        let to_code = Projective::between(corners, square).unwrap();
        let dark = |px: usize, py: usize, _: Probe| {
            let (x, y) = to_code.map(px as f32 + 0.5, py as f32 + 0.5);
            x >= 0.0
                && y >= 0.0
                && (x as usize) < n
                && (y as usize) < n
                && colors[y as usize * n + x as usize] == Color::Dark
        };
        let finder = |x: f32, y: f32| {
            let (cx, cy) = to_plane.map(x, y);
            let (l, r) = (to_plane.map(x - 0.5, y), to_plane.map(x + 0.5, y));
            Candidate {
                x: cx,
                y: cy,
                module: (r.0 - l.0).hypot(r.1 - l.1),
                inverted: false,
                rows: 20,
            }
        };
        let cands = [
            finder(3.5, 3.5),
            finder(nf - 3.5, 3.5),
            finder(3.5, nf - 3.5),
        ];
        // Before the projective map these finders gave no grid (the affine one misses the far
        // modules), and the code went to rqrr's detector.
        let found = decode_from_finders(&cands, 300, 300, dark);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, text);
    }

    #[test]
    fn the_map_takes_each_source_corner_to_its_destination() {
        let src = [(3.5, 3.5), (21.5, 3.5), (18.5, 18.5), (3.5, 21.5)];
        let dst = [(100.0, 80.0), (190.0, 95.0), (170.0, 170.0), (95.0, 185.0)];
        let p = Projective::between(src, dst).unwrap();
        for (s, d) in src.iter().zip(&dst) {
            let (x, y) = p.map(s.0, s.1);
            assert!(
                (x - d.0).abs() < 1e-3 && (y - d.1).abs() < 1e-3,
                "{s:?} → {x},{y}"
            );
        }
        // Collinear corners have no map.
        let line = [(0.0, 0.0), (1.0, 1.0), (2.0, 2.0), (3.0, 3.0)];
        assert!(Projective::between(src, line).is_none());
    }

    #[test]
    fn finds_an_alignment_pattern_off_the_prediction() {
        // A pattern of 4 px modules centred on (62, 57) in a checkerboard of data, sought from
        // (50, 50).
        let (cx, cy, m) = (62.0f32, 57.0f32, 4.0f32);
        let dark = |x: f32, y: f32| {
            let (i, j) = (((x - cx) / m).round() as i32, ((y - cy) / m).round() as i32);
            if i.abs() <= 2 && j.abs() <= 2 {
                i.abs().max(j.abs()) != 1
            } else {
                (i + j) % 2 == 0
            }
        };
        let (x, y) = find_alignment((50.0, 50.0), (m, 0.0), (0.0, m), dark).unwrap();
        assert!((x - cx).abs() <= 1.0 && (y - cy).abs() <= 1.0, "{x},{y}");
        // Nothing like it: no centre.
        assert!(find_alignment((50.0, 50.0), (m, 0.0), (0.0, m), |_, _| false).is_none());
    }
}
