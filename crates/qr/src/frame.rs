//! Camera frames in, one owned working plane out.
//!
//! A [`GrayFrame`] borrows the caller's 8-bit luma buffer (a V4L2 Y plane, an `image::GrayImage`,
//! …); nothing is copied until `Plane::from_frame` crops the region of interest and downscales
//! it once. Every pass of the cascade then reads that one plane, so grayscale conversion, cropping
//! and resampling happen once per frame, not once per pass.

use image::GrayImage;
use thiserror::Error;

/// A rectangle in frame pixels (`x`, `y` = top-left corner).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Rect {
    /// The part of `self` inside a `width` × `height` frame, or `None` when nothing is left.
    pub fn clamp_to(&self, width: u32, height: u32) -> Option<Rect> {
        let x0 = self.x.min(width);
        let y0 = self.y.min(height);
        let x1 = self.x.saturating_add(self.width).min(width);
        let y1 = self.y.saturating_add(self.height).min(height);
        (x1 > x0 && y1 > y0).then(|| Rect {
            x: x0,
            y: y0,
            width: x1 - x0,
            height: y1 - y0,
        })
    }
}

/// Why a buffer cannot be read as a frame. The caller should drop the frame (and count it):
/// these are bugs or format mismatches upstream, never a transient condition.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// The buffer is shorter than `stride × (height − 1) + width` bytes.
    #[error("frame buffer has {got} bytes, {width}x{height} (stride {stride}) needs {needed}")]
    ShortBuffer {
        got: usize,
        needed: usize,
        width: u32,
        height: u32,
        stride: usize,
    },
    /// A row stride smaller than the width cannot describe an image.
    #[error("stride {stride} is smaller than width {width}")]
    StrideTooSmall { stride: usize, width: u32 },
}

/// A borrowed 8-bit grayscale frame (0 = black). Width or height 0 is allowed: it decodes to
/// nothing.
#[derive(Debug, Clone, Copy)]
pub struct GrayFrame<'a> {
    data: &'a [u8],
    width: u32,
    height: u32,
    stride: usize,
}

impl<'a> GrayFrame<'a> {
    /// A tightly packed frame (`stride == width`).
    pub fn new(data: &'a [u8], width: u32, height: u32) -> Result<Self, FrameError> {
        Self::with_stride(data, width, height, width as usize)
    }

    /// A frame whose rows are `stride` bytes apart (camera buffers often pad rows).
    pub fn with_stride(
        data: &'a [u8],
        width: u32,
        height: u32,
        stride: usize,
    ) -> Result<Self, FrameError> {
        if stride < width as usize {
            return Err(FrameError::StrideTooSmall { stride, width });
        }
        let needed = if width == 0 || height == 0 {
            0
        } else {
            // Checked: a forged header must give an error, not an overflow.
            (height as usize - 1)
                .checked_mul(stride)
                .and_then(|n| n.checked_add(width as usize))
                .unwrap_or(usize::MAX)
        };
        if data.len() < needed {
            return Err(FrameError::ShortBuffer {
                got: data.len(),
                needed,
                width,
                height,
                stride,
            });
        }
        Ok(GrayFrame {
            data,
            width,
            height,
            stride,
        })
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    fn row(&self, y: usize) -> &'a [u8] {
        let start = y * self.stride;
        &self.data[start..start + self.width as usize]
    }
}

impl<'a> From<&'a GrayImage> for GrayFrame<'a> {
    fn from(img: &'a GrayImage) -> Self {
        // An ImageBuffer always holds width × height samples, so the checks cannot fail.
        GrayFrame {
            data: img.as_raw(),
            width: img.width(),
            height: img.height(),
            stride: img.width() as usize,
        }
    }
}

/// Converts packed RGB8 to luma (ITU-R BT.601 weights, integer arithmetic) once, for cameras that
/// deliver RGB. Prefer the camera's Y plane when it has one: then no conversion is needed at all.
pub fn rgb8_to_gray(rgb: &[u8], width: u32, height: u32) -> Result<GrayImage, FrameError> {
    // Saturating: a forged size must give an error, not an overflow.
    let needed = (width as usize)
        .saturating_mul(height as usize)
        .saturating_mul(3);
    if rgb.len() < needed {
        return Err(FrameError::ShortBuffer {
            got: rgb.len(),
            needed,
            width,
            height,
            stride: width as usize * 3,
        });
    }
    let luma: Vec<u8> = rgb[..needed]
        .chunks_exact(3)
        .map(|p| ((77 * p[0] as u32 + 150 * p[1] as u32 + 29 * p[2] as u32 + 128) >> 8) as u8)
        .collect();
    // The length matches by construction.
    Ok(GrayImage::from_raw(width, height, luma).unwrap_or_default())
}

/// An owned grayscale working buffer, tightly packed.
#[derive(Debug, Clone)]
pub(crate) struct Plane {
    pub w: usize,
    pub h: usize,
    pub px: Vec<u8>,
}

impl Plane {
    /// Crops `roi` out of `frame` and area-averages it down to `out_w` × `out_h` (which must not
    /// exceed the crop). Area averaging, unlike point sampling, keeps thin modules from vanishing
    /// or aliasing when a large frame is shrunk.
    pub fn from_frame(frame: &GrayFrame<'_>, roi: Rect, out_w: usize, out_h: usize) -> Plane {
        let (cw, ch) = (roi.width as usize, roi.height as usize);
        let (ox, oy) = (roi.x as usize, roi.y as usize);
        if out_w == cw && out_h == ch {
            let mut px = Vec::with_capacity(cw * ch);
            for y in 0..ch {
                px.extend_from_slice(&frame.row(oy + y)[ox..ox + cw]);
            }
            return Plane { w: cw, h: ch, px };
        }
        // Horizontal pass into u16 column sums per output column, then vertical averaging.
        let xb = bounds(cw, out_w);
        let yb = bounds(ch, out_h);
        let mut px = Vec::with_capacity(out_w * out_h);
        let mut acc = vec![0u32; out_w];
        let mut cnt_rows = 0u32;
        let mut yo = 0;
        for y in 0..ch {
            let row = &frame.row(oy + y)[ox..ox + cw];
            for (a, &(x0, x1)) in acc.iter_mut().zip(&xb) {
                let s: u32 = row[x0..x1].iter().map(|&v| v as u32).sum();
                // Scaled to a per-pixel mean ×16 to keep precision without overflow.
                *a += s * 16 / (x1 - x0) as u32;
            }
            cnt_rows += 1;
            if y + 1 == yb[yo].1 {
                px.extend(
                    acc.iter()
                        .map(|&a| ((a + cnt_rows * 8) / (cnt_rows * 16)) as u8),
                );
                acc.fill(0);
                cnt_rows = 0;
                yo += 1;
                if yo == out_h {
                    break;
                }
            }
        }
        Plane {
            w: out_w,
            h: out_h,
            px,
        }
    }

    /// Bilinear resize to `nw` × `nh` (pixel centres aligned). Used to enlarge codes whose
    /// modules are only a few pixels, where rqrr's run-length finder test and capstone corners
    /// have too few pixels to be precise.
    pub fn resize_bilinear(&self, nw: usize, nh: usize) -> Plane {
        let (w, h) = (self.w, self.h);
        let (fx_scale, fy_scale) = (w as f32 / nw as f32, h as f32 / nh as f32);
        // Per output column: the two source columns and the weight of the right one (16.16).
        let cols: Vec<(usize, usize, u32)> = (0..nw)
            .map(|nx| {
                let fx = ((nx as f32 + 0.5) * fx_scale - 0.5).max(0.0);
                let x0 = (fx as usize).min(w - 1);
                (x0, (x0 + 1).min(w - 1), ((fx - x0 as f32) * 256.0) as u32)
            })
            .collect();
        let mut px = vec![0u8; nw * nh];
        for (ny, out) in px.chunks_exact_mut(nw).enumerate() {
            let fy = ((ny as f32 + 0.5) * fy_scale - 0.5).max(0.0);
            let y0 = (fy as usize).min(h - 1);
            let y1 = (y0 + 1).min(h - 1);
            let wy = ((fy - y0 as f32) * 256.0) as u32;
            let (r0, r1) = (&self.px[y0 * w..y0 * w + w], &self.px[y1 * w..y1 * w + w]);
            for (o, &(x0, x1, wx)) in out.iter_mut().zip(&cols) {
                let top = r0[x0] as u32 * (256 - wx) + r0[x1] as u32 * wx;
                let bot = r1[x0] as u32 * (256 - wx) + r1[x1] as u32 * wx;
                *o = ((top * (256 - wy) + bot * wy + (1 << 15)) >> 16) as u8;
            }
        }
        Plane { w: nw, h: nh, px }
    }
}

/// For each of `n_out` output cells, the half-open input range `[start, end)` it averages; every
/// range is non-empty and together they cover `0..n_in` (requires `n_out <= n_in`).
fn bounds(n_in: usize, n_out: usize) -> Vec<(usize, usize)> {
    (0..n_out)
        .map(|i| {
            let a = i * n_in / n_out;
            let b = ((i + 1) * n_in / n_out).max(a + 1);
            (a, b)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_buffer_is_an_error() {
        assert!(matches!(
            GrayFrame::new(&[0; 5], 3, 2),
            Err(FrameError::ShortBuffer { needed: 6, .. })
        ));
        assert!(GrayFrame::new(&[], 0, 0).is_ok());
        assert!(GrayFrame::with_stride(&[0; 8], 3, 2, 5).is_ok());
        assert!(GrayFrame::with_stride(&[0; 8], 3, 2, 2).is_err());
        assert!(GrayFrame::with_stride(&[0; 8], 3, u32::MAX, usize::MAX).is_err());
    }

    #[test]
    fn roi_is_clamped() {
        let r = Rect {
            x: 5,
            y: 5,
            width: 100,
            height: 100,
        };
        assert_eq!(
            r.clamp_to(10, 8),
            Some(Rect {
                x: 5,
                y: 5,
                width: 5,
                height: 3
            })
        );
        assert_eq!(r.clamp_to(5, 100), None);
    }

    #[test]
    fn downscale_averages_areas() {
        let data: Vec<u8> = (0..16).map(|i| if i % 2 == 0 { 0 } else { 200 }).collect();
        let f = GrayFrame::new(&data, 4, 4).unwrap();
        let full = Rect {
            x: 0,
            y: 0,
            width: 4,
            height: 4,
        };
        let p = Plane::from_frame(&f, full, 2, 2);
        assert_eq!(p.px, vec![100; 4]);
        let p = Plane::from_frame(&f, full, 3, 1);
        assert_eq!(p.px.len(), 3);
    }
}
