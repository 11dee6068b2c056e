//! The strong, view-making transforms of contrastive learning (SimCLR and
//! kin): random resized crop, colour jitter, random grayscale, Gaussian
//! blur, solarize, random zoom and random contrast.
//!
//! Each works on a `u8` [`Image`] through an `f32` copy and rounds back,
//! clamping to `0..=255`. Each is the identity at zero strength (probability
//! 0, or a range that admits only the neutral value), and a pure function of
//! the image and the RNG's draws.

use crate::{Image, Transform};
use rand::Rng as _;
use selfsup_core::rng::Rng;
use serde::{Deserialize, Serialize};

fn to_f32(img: &Image) -> Vec<f32> {
    img.data.iter().map(|&v| f32::from(v)).collect()
}

fn to_u8(c: usize, h: usize, w: usize, px: &[f32]) -> Image {
    Image::new(
        c,
        h,
        w,
        px.iter()
            .map(|&v| v.round().clamp(0.0, 255.0) as u8)
            .collect(),
    )
}

/// Uniform draw in `[lo, hi]` that does not touch the RNG when the range is a
/// single point (so zero strength never shifts later draws' meaning).
fn uniform(rng: &mut Rng, range: [f32; 2]) -> f32 {
    let [lo, hi] = range;
    if hi > lo {
        rng.random_range(lo..=hi)
    } else {
        lo
    }
}

fn happens(rng: &mut Rng, p: f32) -> bool {
    if p <= 0.0 {
        false
    } else if p >= 1.0 {
        true
    } else {
        rng.random_bool(f64::from(p))
    }
}

/// Bilinear sample of one plane at real coordinates (pixel centres at
/// integers); outside the plane reads `fill`.
fn bilinear(plane: &[f32], h: usize, w: usize, y: f32, x: f32, fill: f32) -> f32 {
    if y < -0.5 || x < -0.5 || y > h as f32 - 0.5 || x > w as f32 - 0.5 {
        return fill;
    }
    let y = y.clamp(0.0, (h - 1) as f32);
    let x = x.clamp(0.0, (w - 1) as f32);
    let (y0, x0) = (y.floor() as usize, x.floor() as usize);
    let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
    let (fy, fx) = (y - y0 as f32, x - x0 as f32);
    let top = plane[y0 * w + x0] * (1.0 - fx) + plane[y0 * w + x1] * fx;
    let bottom = plane[y1 * w + x0] * (1.0 - fx) + plane[y1 * w + x1] * fx;
    top * (1.0 - fy) + bottom * fy
}

/// Resamples the window (`top`, `left`, `ch` x `cw`, real-valued) of `img`
/// to the image's own size, bilinearly; pixels that fall outside the image
/// read `fill`.
pub fn resample_window(img: &Image, top: f32, left: f32, ch: f32, cw: f32, fill: f32) -> Image {
    let (c, h, w) = (img.c, img.h, img.w);
    let src = to_f32(img);
    let mut out = vec![0f32; src.len()];
    let (sy, sx) = (ch / h as f32, cw / w as f32);
    for p in 0..c {
        let plane = &src[p * h * w..(p + 1) * h * w];
        for y in 0..h {
            let yy = top + (y as f32 + 0.5) * sy - 0.5;
            for x in 0..w {
                let xx = left + (x as f32 + 0.5) * sx - 0.5;
                out[(p * h + y) * w + x] = bilinear(plane, h, w, yy, xx, fill);
            }
        }
    }
    to_u8(c, h, w, &out)
}

/// Random resized crop (Szegedy et al., 2015; the SimCLR crop): a window
/// covering a `scale` fraction of the area with aspect ratio (w/h) drawn
/// log-uniformly from `ratio`, resized back to the full image size.
/// `scale = [1, 1]`, `ratio = [1, 1]` is the identity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RandomResizedCrop {
    /// Range of the crop's area as a fraction of the image's.
    pub scale: [f32; 2],
    /// Range of the crop's aspect ratio (width / height).
    pub ratio: [f32; 2],
}

impl RandomResizedCrop {
    /// The crop window (top, left, height, width) in pixels, always inside
    /// the image. Falls back to the whole image after 10 failed draws.
    pub fn window(&self, h: usize, w: usize, rng: &mut Rng) -> (f32, f32, f32, f32) {
        let area = (h * w) as f32;
        let log_ratio = [self.ratio[0].ln(), self.ratio[1].ln()];
        for _ in 0..10 {
            let target = area * uniform(rng, self.scale);
            let ar = uniform(rng, log_ratio).exp();
            let cw = (target * ar).sqrt().round();
            let ch = (target / ar).sqrt().round();
            if cw >= 1.0 && ch >= 1.0 && cw <= w as f32 && ch <= h as f32 {
                let top = rng.random_range(0..=(h - ch as usize)) as f32;
                let left = rng.random_range(0..=(w - cw as usize)) as f32;
                return (top, left, ch, cw);
            }
        }
        (0.0, 0.0, h as f32, w as f32)
    }
}

impl Transform for RandomResizedCrop {
    fn apply(&self, img: &Image, rng: &mut Rng) -> Image {
        let (top, left, ch, cw) = self.window(img.h, img.w, rng);
        if ch as usize == img.h && cw as usize == img.w {
            return img.clone();
        }
        resample_window(img, top, left, ch, cw, 0.0)
    }
}

/// Random zoom about the centre by a factor drawn from `factor`: above 1
/// zooms in (the border is cut), below 1 zooms out (the border is filled
/// with black). `[1, 1]` is the identity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RandomZoom {
    /// Range of the zoom factor.
    pub factor: [f32; 2],
}

impl Transform for RandomZoom {
    fn apply(&self, img: &Image, rng: &mut Rng) -> Image {
        let z = uniform(rng, self.factor).max(1e-3);
        if z == 1.0 {
            return img.clone();
        }
        let (ch, cw) = (img.h as f32 / z, img.w as f32 / z);
        let top = (img.h as f32 - ch) / 2.0;
        let left = (img.w as f32 - cw) / 2.0;
        resample_window(img, top, left, ch, cw, 0.0)
    }
}

/// Horizontal flip with probability `p`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RandomFlip {
    /// Probability of flipping.
    pub p: f32,
}

impl Transform for RandomFlip {
    fn apply(&self, img: &Image, rng: &mut Rng) -> Image {
        if happens(rng, self.p) {
            crate::hflip(img)
        } else {
            img.clone()
        }
    }
}

/// ITU-R BT.601 luma of pixel `i` of a 3-channel image in planar layout.
fn luma(px: &[f32], plane: usize, i: usize) -> f32 {
    0.299 * px[i] + 0.587 * px[plane + i] + 0.114 * px[2 * plane + i]
}

/// Colour jitter (the SimCLR "colour distortion"): with probability `p`,
/// brightness, contrast, saturation and hue factors drawn from
/// `[1 - s, 1 + s]` (hue: a rotation of up to `hue` turns) and applied in
/// that order. Saturation and hue need colour, so they leave 1-channel
/// images alone; brightness and contrast apply to any channel count.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ColorJitter {
    /// Brightness strength (factor range `[1 - b, 1 + b]`).
    pub brightness: f32,
    /// Contrast strength (blend with the mean gray level).
    pub contrast: f32,
    /// Saturation strength (blend with the pixel's gray level).
    pub saturation: f32,
    /// Hue strength in turns, at most 0.5.
    pub hue: f32,
    /// Probability of jittering at all.
    pub p: f32,
}

/// The factors one application of [`ColorJitter`] drew.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JitterFactors {
    /// Multiplies every value.
    pub brightness: f32,
    /// Blend with the mean gray level (1: unchanged, 0: flat).
    pub contrast: f32,
    /// Blend with each pixel's gray level (1: unchanged, 0: gray).
    pub saturation: f32,
    /// Hue rotation in turns.
    pub hue: f32,
}

/// Applies drawn jitter `f` to `img`: brightness, contrast, then (colour
/// images only) saturation and hue, clamping to `0..=255` after each.
pub fn color_jitter(img: &Image, f: JitterFactors) -> Image {
    let (c, h, w) = (img.c, img.h, img.w);
    let plane = h * w;
    let mut px = to_f32(img);
    let clamp = |v: f32| v.clamp(0.0, 255.0);
    if f.brightness != 1.0 {
        px.iter_mut().for_each(|v| *v = clamp(*v * f.brightness));
    }
    if f.contrast != 1.0 {
        let mean = if c == 3 {
            (0..plane).map(|i| luma(&px, plane, i)).sum::<f32>() / plane as f32
        } else {
            px.iter().sum::<f32>() / px.len() as f32
        };
        px.iter_mut()
            .for_each(|v| *v = clamp(mean + (*v - mean) * f.contrast));
    }
    if c == 3 {
        if f.saturation != 1.0 {
            for i in 0..plane {
                let g = luma(&px, plane, i);
                for ch in 0..3 {
                    let v = &mut px[ch * plane + i];
                    *v = clamp(g + (*v - g) * f.saturation);
                }
            }
        }
        if f.hue != 0.0 {
            rotate_hue(&mut px, plane, f.hue);
        }
    }
    to_u8(c, h, w, &px)
}

impl Transform for ColorJitter {
    fn apply(&self, img: &Image, rng: &mut Rng) -> Image {
        if !happens(rng, self.p) {
            return img.clone();
        }
        let brightness = uniform(rng, [1.0 - self.brightness, 1.0 + self.brightness]).max(0.0);
        let contrast = uniform(rng, [1.0 - self.contrast, 1.0 + self.contrast]).max(0.0);
        // Saturation and hue are drawn for colour images only.
        let (saturation, hue) = if img.c == 3 {
            let s = uniform(rng, [1.0 - self.saturation, 1.0 + self.saturation]).max(0.0);
            (s, uniform(rng, [-self.hue.min(0.5), self.hue.min(0.5)]))
        } else {
            (1.0, 0.0)
        };
        let f = JitterFactors {
            brightness,
            contrast,
            saturation,
            hue,
        };
        color_jitter(img, f)
    }
}

/// Rotates hue by `turn` turns in YIQ space (luma kept, chroma rotated).
fn rotate_hue(px: &mut [f32], plane: usize, turn: f32) {
    let (sin, cos) = (turn * std::f32::consts::TAU).sin_cos();
    for i in 0..plane {
        let (r, g, b) = (px[i], px[plane + i], px[2 * plane + i]);
        let y = 0.299 * r + 0.587 * g + 0.114 * b;
        let iq_i = 0.596 * r - 0.274 * g - 0.322 * b;
        let iq_q = 0.211 * r - 0.523 * g + 0.312 * b;
        let (ni, nq) = (iq_i * cos - iq_q * sin, iq_i * sin + iq_q * cos);
        px[i] = (y + 0.956 * ni + 0.621 * nq).clamp(0.0, 255.0);
        px[plane + i] = (y - 0.272 * ni - 0.647 * nq).clamp(0.0, 255.0);
        px[2 * plane + i] = (y - 1.106 * ni + 1.703 * nq).clamp(0.0, 255.0);
    }
}

/// Converts a colour image to gray (all channels set to the luma) with
/// probability `p`; a 1-channel image is already gray and comes back as is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RandomGrayscale {
    /// Probability of dropping colour.
    pub p: f32,
}

impl Transform for RandomGrayscale {
    fn apply(&self, img: &Image, rng: &mut Rng) -> Image {
        if !happens(rng, self.p) || img.c != 3 {
            return img.clone();
        }
        let plane = img.h * img.w;
        let px = to_f32(img);
        let mut out = px.clone();
        for i in 0..plane {
            let g = luma(&px, plane, i);
            for ch in 0..3 {
                out[ch * plane + i] = g;
            }
        }
        to_u8(3, img.h, img.w, &out)
    }
}

/// Gaussian blur with probability `p` and sigma drawn from `sigma` (pixels);
/// the separable kernel spans ±3 sigma, edges reflect.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GaussianBlur {
    /// Range of the standard deviation in pixels.
    pub sigma: [f32; 2],
    /// Probability of blurring.
    pub p: f32,
}

/// Reflects an index into `0..n` (`-1` -> `1`, `n` -> `n - 2`).
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let m = i.rem_euclid(period);
    (if m < n { m } else { period - m }) as usize
}

/// Blurs every channel of `img` with a Gaussian of standard deviation
/// `sigma` pixels (no-op for `sigma <= 0`).
pub fn gaussian_blur(img: &Image, sigma: f32) -> Image {
    if sigma <= 0.0 {
        return img.clone();
    }
    let radius = (3.0 * sigma).ceil().max(1.0) as isize;
    let mut kernel: Vec<f32> = (-radius..=radius)
        .map(|d| (-(d * d) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= total);
    let (c, h, w) = (img.c, img.h, img.w);
    let src = to_f32(img);
    let mut tmp = vec![0f32; src.len()];
    let mut out = vec![0f32; src.len()];
    for p in 0..c {
        let o = p * h * w;
        for y in 0..h {
            for x in 0..w {
                tmp[o + y * w + x] = kernel
                    .iter()
                    .enumerate()
                    .map(|(j, k)| k * src[o + y * w + reflect(x as isize + j as isize - radius, w)])
                    .sum();
            }
        }
        for y in 0..h {
            for x in 0..w {
                out[o + y * w + x] = kernel
                    .iter()
                    .enumerate()
                    .map(|(j, k)| k * tmp[o + reflect(y as isize + j as isize - radius, h) * w + x])
                    .sum();
            }
        }
    }
    to_u8(c, h, w, &out)
}

impl Transform for GaussianBlur {
    fn apply(&self, img: &Image, rng: &mut Rng) -> Image {
        if !happens(rng, self.p) {
            return img.clone();
        }
        gaussian_blur(img, uniform(rng, self.sigma))
    }
}

/// Solarize (BYOL's augmentation): with probability `p`, every pixel at or
/// above `threshold` is inverted (`255 - v`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Solarize {
    /// Pixels at or above this value are inverted.
    pub threshold: u8,
    /// Probability of solarizing.
    pub p: f32,
}

impl Transform for Solarize {
    fn apply(&self, img: &Image, rng: &mut Rng) -> Image {
        if !happens(rng, self.p) {
            return img.clone();
        }
        let data = img
            .data
            .iter()
            .map(|&v| if v >= self.threshold { 255 - v } else { v })
            .collect();
        Image::new(img.c, img.h, img.w, data)
    }
}

/// Random contrast (per channel): each channel is blended with its own mean
/// by a factor drawn from `[1 - factor, 1 + factor]`, one draw per image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RandomContrast {
    /// Strength; 0 is the identity.
    pub factor: f32,
}

impl Transform for RandomContrast {
    fn apply(&self, img: &Image, rng: &mut Rng) -> Image {
        let k = uniform(rng, [1.0 - self.factor, 1.0 + self.factor]).max(0.0);
        if k == 1.0 {
            return img.clone();
        }
        let plane = img.h * img.w;
        let mut px = to_f32(img);
        for ch in px.chunks_exact_mut(plane) {
            let mean = ch.iter().sum::<f32>() / plane as f32;
            ch.iter_mut()
                .for_each(|v| *v = (mean + (*v - mean) * k).clamp(0.0, 255.0));
        }
        to_u8(img.c, img.h, img.w, &px)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{apply_views, Op, Pipeline};
    use selfsup_core::rng;

    /// A textured test image: gradients plus a bright square.
    fn sample(c: usize, h: usize, w: usize) -> Image {
        let mut data = Vec::with_capacity(c * h * w);
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let square = (h / 4..h / 2).contains(&y) && (w / 3..2 * w / 3).contains(&x);
                    let v = if square {
                        250
                    } else {
                        (x * 9 + y * 5 + ch * 40) % 200
                    };
                    data.push(v as u8);
                }
            }
        }
        Image::new(c, h, w, data)
    }

    /// Every op at full strength and at zero strength.
    fn strong_and_zero() -> Vec<(Op, Op)> {
        vec![
            (
                Op::ResizedCrop(RandomResizedCrop {
                    scale: [0.08, 1.0],
                    ratio: [0.75, 1.333],
                }),
                Op::ResizedCrop(RandomResizedCrop {
                    scale: [1.0, 1.0],
                    ratio: [1.0, 1.0],
                }),
            ),
            (
                Op::Zoom(RandomZoom { factor: [0.7, 1.4] }),
                Op::Zoom(RandomZoom { factor: [1.0, 1.0] }),
            ),
            (
                Op::Flip(RandomFlip { p: 1.0 }),
                Op::Flip(RandomFlip { p: 0.0 }),
            ),
            (
                Op::ColorJitter(ColorJitter {
                    brightness: 0.8,
                    contrast: 0.8,
                    saturation: 0.8,
                    hue: 0.4,
                    p: 1.0,
                }),
                Op::ColorJitter(ColorJitter {
                    brightness: 0.0,
                    contrast: 0.0,
                    saturation: 0.0,
                    hue: 0.0,
                    p: 1.0,
                }),
            ),
            (
                Op::Grayscale(RandomGrayscale { p: 1.0 }),
                Op::Grayscale(RandomGrayscale { p: 0.0 }),
            ),
            (
                Op::Blur(GaussianBlur {
                    sigma: [0.5, 2.0],
                    p: 1.0,
                }),
                Op::Blur(GaussianBlur {
                    sigma: [0.0, 0.0],
                    p: 1.0,
                }),
            ),
            (
                Op::Solarize(Solarize {
                    threshold: 128,
                    p: 1.0,
                }),
                Op::Solarize(Solarize {
                    threshold: 128,
                    p: 0.0,
                }),
            ),
            (
                Op::Contrast(RandomContrast { factor: 0.9 }),
                Op::Contrast(RandomContrast { factor: 0.0 }),
            ),
        ]
    }

    #[test]
    fn zero_strength_is_the_identity() {
        for (c, size) in [(1, 28), (3, 32), (3, 9)] {
            let img = sample(c, size, size);
            for (_, zero) in strong_and_zero() {
                for s in 0..5 {
                    let out = zero.apply(&img, &mut rng::stream_at(s, "t", 0));
                    assert_eq!(out, img, "{zero:?} at zero strength changed the image");
                }
            }
        }
    }

    #[test]
    fn outputs_keep_the_shape_and_change_the_image() {
        for (c, size) in [(1, 28), (3, 32), (3, 9)] {
            let img = sample(c, size, size);
            for (strong, _) in strong_and_zero() {
                let mut changed = false;
                for s in 0..8 {
                    let out = strong.apply(&img, &mut rng::stream_at(s, "t", 0));
                    assert_eq!((out.c, out.h, out.w), (c, size, size), "{strong:?}");
                    assert_eq!(out.data.len(), img.data.len());
                    changed |= out != img;
                }
                // Grayscale leaves gray images alone; everything else moves.
                let gray_noop = c == 1 && matches!(strong, Op::Grayscale(_));
                assert_eq!(changed, !gray_noop, "{strong:?} on {c}x{size}x{size}");
            }
        }
    }

    #[test]
    fn same_seed_same_output_different_seed_different_output() {
        let img = sample(3, 32, 32);
        for p in [Pipeline::simclr_cifar(), Pipeline::simclr_mnist()] {
            let a = p.apply(&img, &mut rng::stream_at(7, "t", 1));
            assert_eq!(a, p.apply(&img, &mut rng::stream_at(7, "t", 1)));
            let others: Vec<Image> = (8..12)
                .map(|s| p.apply(&img, &mut rng::stream_at(s, "t", 1)))
                .collect();
            assert!(others.iter().any(|o| *o != a), "seed has no effect");
        }
    }

    #[test]
    fn crop_windows_stay_inside_the_image() {
        let t = RandomResizedCrop {
            scale: [0.05, 1.0],
            ratio: [0.3, 3.0],
        };
        let mut r = rng::stream(3, "t");
        for (h, w) in [(28, 28), (32, 32), (8, 13)] {
            for _ in 0..500 {
                let (top, left, ch, cw) = t.window(h, w, &mut r);
                assert!(ch >= 1.0 && cw >= 1.0);
                assert!(top >= 0.0 && left >= 0.0);
                assert!(top + ch <= h as f32 && left + cw <= w as f32);
            }
        }
    }

    #[test]
    fn crop_of_a_constant_image_is_constant_and_zoom_out_pads_black() {
        let flat = Image::new(1, 16, 16, vec![77; 256]);
        let t = RandomResizedCrop {
            scale: [0.1, 0.5],
            ratio: [0.5, 2.0],
        };
        for s in 0..10 {
            assert_eq!(t.apply(&flat, &mut rng::stream_at(s, "t", 0)), flat);
        }
        let out = RandomZoom { factor: [0.5, 0.5] }.apply(&flat, &mut rng::stream(0, "t"));
        assert_eq!(out.data[0], 0, "the corner is border fill");
        assert_eq!(out.data[8 * 16 + 8], 77, "the centre is the image");
        let zin = RandomZoom { factor: [2.0, 2.0] }.apply(&flat, &mut rng::stream(0, "t"));
        assert_eq!(zin, flat, "zooming into a flat image leaves it flat");
    }

    #[test]
    fn colour_ops_do_what_they_say() {
        let img = sample(3, 8, 8);
        let gray = RandomGrayscale { p: 1.0 }.apply(&img, &mut rng::stream(0, "t"));
        assert_eq!(&gray.data[..64], &gray.data[64..128]);
        assert_eq!(&gray.data[..64], &gray.data[128..]);
        let sol = Solarize {
            threshold: 128,
            p: 1.0,
        }
        .apply(&img, &mut rng::stream(0, "t"));
        for (a, b) in img.data.iter().zip(&sol.data) {
            assert_eq!(*b, if *a >= 128 { 255 - a } else { *a });
        }
        // Contrast scales deviations from each channel's mean and keeps the mean.
        let mid = Image::new(1, 8, 8, (0..64).map(|i| 96 + (i % 8) as u8 * 8).collect());
        let mean = |d: &[u8]| d.iter().map(|&v| f64::from(v)).sum::<f64>() / d.len() as f64;
        let spread = |d: &[u8]| d.iter().max().unwrap() - d.iter().min().unwrap();
        let mut r = rng::stream(0, "t");
        let mut spreads = Vec::new();
        for _ in 0..20 {
            let out = RandomContrast { factor: 0.5 }.apply(&mid, &mut r);
            assert!((mean(&out.data) - mean(&mid.data)).abs() < 1.0);
            spreads.push(spread(&out.data));
        }
        assert!(spreads.iter().any(|&s| s < spread(&mid.data)));
        assert!(spreads.iter().any(|&s| s > spread(&mid.data)));
        let blurred = gaussian_blur(&Image::new(1, 8, 8, vec![100; 64]), 1.5);
        assert!(
            blurred.data.iter().all(|&v| v == 100),
            "blur keeps a flat image"
        );
        let dot = {
            let mut d = vec![0u8; 81];
            d[40] = 255;
            Image::new(1, 9, 9, d)
        };
        let spread = gaussian_blur(&dot, 1.0);
        assert!(spread.data[40] < 255 && spread.data[41] > 0 && spread.data[39] == spread.data[41]);
    }

    #[test]
    fn views_are_view_major_deterministic_and_distinct() {
        let imgs: Vec<u8> = (0..3).flat_map(|_| sample(1, 12, 12).data).collect();
        let p = Pipeline::simclr_mnist();
        let a = apply_views(&p, &imgs, (1, 12, 12), 1, 0, 2);
        assert_eq!(a.len(), 2 * imgs.len());
        assert_eq!(a, apply_views(&p, &imgs, (1, 12, 12), 1, 0, 2));
        assert_ne!(
            &a[..144],
            &a[3 * 144..4 * 144],
            "two views of image 0 differ"
        );
        let none = apply_views(&Pipeline::default(), &imgs, (1, 12, 12), 1, 0, 2);
        assert_eq!(&none[..imgs.len()], &imgs[..]);
        assert_eq!(&none[imgs.len()..], &imgs[..]);
    }
}
