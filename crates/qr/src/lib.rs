//! phygate's QR decoding pipeline (store camera → token text).
//!
//! Modules, in flow order:
//! - [`frame`]: borrows the camera's luma buffer ([`GrayFrame`]), checks its size, and makes the
//!   one owned working plane (ROI crop + area downscale) every pass reads.
//! - `screen`: the cheap first look at every frame: confirmed finder candidates on a block-wise
//!   threshold, grouped into the regions where a code can be. A frame without any stops here;
//!   everything below runs per region.
//! - `preprocess`: image operations in front of rqrr: noise estimate and 3×3 smoothing,
//!   integral-image local-mean threshold, contrast stretch; `frame` also has the bilinear upscale.
//! - `finder`: a census of 1:1:3:1:1 finder candidates on a region's binary image; it gates the
//!   rqrr calls, places the upscaled region and finds a second code.
//! - `grid`: census finder triples as affine grids, decoded by rqrr's decoder (the triples
//!   rqrr's own grouping rejects); a grid that fails is sampled again the way blur needs.
//! - `perspective`: the projective map of a tilted code's grid, through its alignment pattern.
//! - `scan`: the calls into rqrr (panics contained).
//! - `work`: the frame's base plane, one region's state (a light-on-dark region is decoded
//!   from its negative) and each pass's preprocessing.
//! - [`decode`]: [`QrDecoder`], the cascade order, the stop rule and the time budget, measured
//!   on [`clock`] (the thread's CPU time).
//! - `corpus` (feature `bench`): a seeded generator of damaged test frames for `qrbench`.

pub mod clock;
pub mod decode;
mod finder;
pub mod frame;
mod grid;
mod perspective;
mod preprocess;
mod scan;
mod screen;
mod work;

#[cfg(feature = "bench")]
pub mod corpus;

pub use decode::{DecodeConfig, DecodeReport, DecodedCode, Pass, QrDecoder};
pub use frame::{FrameError, GrayFrame, Rect, rgb8_to_gray};
