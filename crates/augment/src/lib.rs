//! selfsup-augment transforms `u8` images in (C, H, W) layout: exact
//! 90-degree rotations (the rotation pretext's labels), horizontal flips and
//! padded random crops, and the strong view-making transforms of contrastive
//! learning in [`ops`] (random resized crop, colour jitter, grayscale, blur,
//! solarize, zoom, contrast). Every transform maps one image and a seeded
//! RNG to one image; a [`Pipeline`] chains them (serialisable, with SimCLR
//! presets at CIFAR and MNIST scale), and [`apply_batch`] / [`apply_views`]
//! run one over a batch on all cores.
//!
//! Design choice: every sample of every step draws from its own RNG stream
//! (`seed`, step, sample index), so a batch is augmented in parallel on all
//! cores and still comes out bit-identical for the same seed.
//!
//! ```
//! use selfsup_augment::{rotate90, Image};
//! let img = Image::new(1, 2, 2, vec![1, 2, 3, 4]);
//! assert_eq!(rotate90(&img, 1).data, vec![2, 4, 1, 3]);
//! assert_eq!(rotate90(&rotate90(&img, 1), 3), img);
//! ```

pub mod ops;
mod pipeline;

pub use pipeline::{Op, Pipeline};

use rand::Rng as _;
use rayon::prelude::*;
use selfsup_core::rng::{self, Rng};
use serde::{Deserialize, Serialize};

/// One `u8` image in (C, H, W) layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Channels.
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Pixels, `c * h * w` of them.
    pub data: Vec<u8>,
}

impl Image {
    /// Wraps pixels; panics if the length does not match the shape.
    pub fn new(c: usize, h: usize, w: usize, data: Vec<u8>) -> Self {
        assert_eq!(
            data.len(),
            c * h * w,
            "pixel count does not match {c}x{h}x{w}"
        );
        Self { c, h, w, data }
    }
}

/// Rotates counter-clockwise by `k * 90` degrees (k taken mod 4).
pub fn rotate90(img: &Image, k: usize) -> Image {
    let (c, h, w) = (img.c, img.h, img.w);
    let k = k % 4;
    if k == 0 {
        return img.clone();
    }
    let (oh, ow) = if k % 2 == 1 { (w, h) } else { (h, w) };
    let mut out = vec![0u8; img.data.len()];
    for ch in 0..c {
        let src = &img.data[ch * h * w..(ch + 1) * h * w];
        let dst = &mut out[ch * oh * ow..(ch + 1) * oh * ow];
        for y in 0..oh {
            for x in 0..ow {
                // Source pixel for output (y, x) under a counter-clockwise turn.
                let (sy, sx) = match k {
                    1 => (x, w - 1 - y),
                    2 => (h - 1 - y, w - 1 - x),
                    _ => (h - 1 - x, y),
                };
                dst[y * ow + x] = src[sy * w + sx];
            }
        }
    }
    Image::new(c, oh, ow, out)
}

/// Mirrors left-right.
pub fn hflip(img: &Image) -> Image {
    let mut out = img.data.clone();
    for row in out.chunks_exact_mut(img.w) {
        row.reverse();
    }
    Image::new(img.c, img.h, img.w, out)
}

/// Pads by `pad` zero pixels on every side and cuts an `h x w` window at
/// (`dy`, `dx`) in padded coordinates (`0..=2*pad`).
pub fn shifted_crop(img: &Image, pad: usize, dy: usize, dx: usize) -> Image {
    let (c, h, w) = (img.c, img.h, img.w);
    let mut out = vec![0u8; img.data.len()];
    for ch in 0..c {
        for y in 0..h {
            let sy = (y + dy) as isize - pad as isize;
            if sy < 0 || sy >= h as isize {
                continue;
            }
            for x in 0..w {
                let sx = (x + dx) as isize - pad as isize;
                if sx >= 0 && sx < w as isize {
                    out[(ch * h + y) * w + x] = img.data[(ch * h + sy as usize) * w + sx as usize];
                }
            }
        }
    }
    Image::new(c, h, w, out)
}

/// A random image transform; `apply` must be a pure function of the image
/// and the RNG's draws.
pub trait Transform: Send + Sync {
    /// Transforms one image.
    fn apply(&self, img: &Image, rng: &mut Rng) -> Image;
}

/// The standard light augmentation for small images: random padded crop and
/// random horizontal flip. Zero strength (`pad = 0`, `flip = false`) is the
/// identity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CropFlip {
    /// Padding of the random crop in pixels.
    pub pad: usize,
    /// Whether to flip left-right with probability 1/2.
    pub flip: bool,
}

impl CropFlip {
    /// No augmentation.
    pub const NONE: CropFlip = CropFlip {
        pad: 0,
        flip: false,
    };
}

impl Transform for CropFlip {
    fn apply(&self, img: &Image, rng: &mut Rng) -> Image {
        let mut out = if self.pad > 0 {
            let dy = rng.random_range(0..=2 * self.pad);
            let dx = rng.random_range(0..=2 * self.pad);
            shifted_crop(img, self.pad, dy, dx)
        } else {
            img.clone()
        };
        if self.flip && rng.random_bool(0.5) {
            out = hflip(&out);
        }
        out
    }
}

/// Applies `t` to `n` contiguous images of shape `shape`, in parallel; the
/// RNG of sample `i` is derived from (`seed`, `step`, `i`).
pub fn apply_batch<T: Transform + ?Sized>(
    t: &T,
    pixels: &[u8],
    shape: (usize, usize, usize),
    seed: u64,
    step: u64,
) -> Vec<u8> {
    let (c, h, w) = shape;
    let per = c * h * w;
    let out: Vec<Vec<u8>> = pixels
        .par_chunks_exact(per)
        .enumerate()
        .map(|(i, px)| {
            let mut r = rng::stream_at(seed, "augment", (step << 24) ^ i as u64);
            t.apply(&Image::new(c, h, w, px.to_vec()), &mut r).data
        })
        .collect();
    out.concat()
}

/// `views` independently augmented copies of `n` contiguous images,
/// view-major: view `v` of image `i` is image `v * n + i` of the result.
/// Sample (`step`, `v`, `i`) draws from its own stream, so the result does
/// not depend on the number of threads.
pub fn apply_views<T: Transform + ?Sized>(
    t: &T,
    pixels: &[u8],
    shape: (usize, usize, usize),
    seed: u64,
    step: u64,
    views: usize,
) -> Vec<u8> {
    let (c, h, w) = shape;
    let per = c * h * w;
    let n = pixels.len() / per;
    let out: Vec<Vec<u8>> = (0..views * n)
        .into_par_iter()
        .map(|j| {
            let (v, i) = (j / n, j % n);
            let mut r = rng::stream_at(seed, &format!("view{v}"), (step << 24) ^ i as u64);
            let img = Image::new(c, h, w, pixels[i * per..(i + 1) * per].to_vec());
            t.apply(&img, &mut r).data
        })
        .collect();
    out.concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(c: usize, h: usize, w: usize) -> Image {
        Image::new(
            c,
            h,
            w,
            (0..c * h * w).map(|i| (i * 7 % 256) as u8).collect(),
        )
    }

    #[test]
    fn four_rotations_are_distinct_and_compose_to_identity() {
        let img = ramp(3, 5, 5);
        let rots: Vec<Image> = (0..4).map(|k| rotate90(&img, k)).collect();
        for a in 0..4 {
            for b in a + 1..4 {
                assert_ne!(rots[a], rots[b], "rotations {a} and {b} coincide");
            }
        }
        for k in 0..4 {
            assert_eq!(rotate90(&rotate90(&img, k), 4 - k), img);
        }
        assert_eq!(rotate90(&rotate90(&img, 1), 1), rotate90(&img, 2));
    }

    #[test]
    fn label_k_is_k_quarter_turns_counter_clockwise() {
        // 1 2
        // 3 4
        let img = Image::new(1, 2, 2, vec![1, 2, 3, 4]);
        assert_eq!(rotate90(&img, 1).data, vec![2, 4, 1, 3]);
        assert_eq!(rotate90(&img, 2).data, vec![4, 3, 2, 1]);
        assert_eq!(rotate90(&img, 3).data, vec![3, 1, 4, 2]);
        // the top-left corner moves to the bottom-left after 90 degrees
        let mut corner = vec![0u8; 9];
        corner[0] = 9;
        let r = rotate90(&Image::new(1, 3, 3, corner), 1);
        assert_eq!(r.data[6], 9);
    }

    #[test]
    fn non_square_rotation_swaps_dims() {
        let img = ramp(2, 3, 5);
        let r = rotate90(&img, 1);
        assert_eq!((r.h, r.w), (5, 3));
        assert_eq!(rotate90(&r, 3), img);
    }

    #[test]
    fn flip_and_crop_properties() {
        let img = ramp(1, 6, 6);
        assert_eq!(hflip(&hflip(&img)), img);
        assert_eq!(
            shifted_crop(&img, 2, 2, 2),
            img,
            "centred crop is the identity"
        );
        let moved = shifted_crop(&img, 2, 0, 0);
        assert_eq!(moved.data[0], 0, "shifted-in border is zero");
        assert_eq!(moved.data[2 * 6 + 2], img.data[0]);
        let mut r = rng::stream(0, "t");
        assert_eq!(
            CropFlip::NONE.apply(&img, &mut r),
            img,
            "zero strength is identity"
        );
    }

    #[test]
    fn batch_is_deterministic_and_in_bounds() {
        let imgs: Vec<u8> = (0..4).flat_map(|_| ramp(1, 8, 8).data).collect();
        let t = CropFlip { pad: 2, flip: true };
        let a = apply_batch(&t, &imgs, (1, 8, 8), 5, 0);
        assert_eq!(a.len(), imgs.len());
        assert_eq!(a, apply_batch(&t, &imgs, (1, 8, 8), 5, 0));
        assert_ne!(a, apply_batch(&t, &imgs, (1, 8, 8), 5, 1));
        assert_ne!(&a[..64], &a[64..128], "samples draw different crops");
    }
}
