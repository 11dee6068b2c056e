//! The `pixel-knn` score: how far an image lies, in (normalised, lightly
//! blurred) pixel space, from its nearest normal training images. No
//! network is involved, so it errs differently from the learned scores — on
//! Fashion-MNIST it separates shirts from T-shirts and pullovers better
//! than the features of a rotation-prediction network do. A Gaussian blur
//! of about one pixel first makes the distance forgive a pixel's shift of
//! an edge (on the one-class Fashion-MNIST development split, mean AUROC
//! 0.919 unblurred, 0.936 with sigma 1; docs/anomaly.md).

use candle_core::{Device, Tensor};
use selfsup_core::{Normalization, Result};
use selfsup_data::batch;
use std::borrow::Cow;

/// Query images compared with the normal set per matrix product.
const QUERY_CHUNK: usize = 1024;

/// At most this many normal images are kept (evenly strided when there are
/// more): bounds the memory (50,000 RGB 32x32 rows are 614 MB) and the
/// scoring time on large normal sets such as CelebA's.
pub const MAX_NORMAL: usize = 50_000;

/// The normal training images as flattened, normalised, blurred pixel rows.
pub struct PixelNeighbours {
    /// (N, P) rows.
    normal: Tensor,
    /// Squared L2 norm of each normal row, (1, N).
    normal_sq: Tensor,
    norm: Normalization,
    shape: (usize, usize, usize),
    /// Standard deviation (pixels) of the Gaussian blur; 0 = none.
    sigma: f64,
}

impl PixelNeighbours {
    /// Stores `pixels` (raw bytes of N images of `shape`; at most
    /// [`MAX_NORMAL`] of them, evenly strided) normalised by `norm` and
    /// blurred by a Gaussian of standard deviation `sigma` pixels (0 = no
    /// blur).
    pub fn new(
        pixels: &[u8],
        shape: (usize, usize, usize),
        norm: &Normalization,
        sigma: f64,
        device: &Device,
    ) -> Result<Self> {
        let per = shape.0 * shape.1 * shape.2;
        let n = pixels.len() / per;
        if n > MAX_NORMAL {
            tracing::info!(
                "pixel-knn compares with {MAX_NORMAL} of the {n} normal images (strided)"
            );
        }
        let kept = at_most(pixels, per, MAX_NORMAL);
        let normal = rows(&kept, (shape, sigma), norm, device)?;
        let normal_sq = normal.sqr()?.sum(1)?.unsqueeze(0)?;
        Ok(Self {
            normal,
            normal_sq,
            norm: norm.clone(),
            shape,
            sigma,
        })
    }

    /// Mean Euclidean distance of each image of `pixels` to its `k` nearest
    /// normal images (`k` clamped to the normal set's size).
    pub fn distances(&self, pixels: &[u8], k: usize) -> Result<Vec<f64>> {
        let per = self.shape.0 * self.shape.1 * self.shape.2;
        let k = k.clamp(1, self.normal.dim(0)?.max(1));
        let mut out = Vec::with_capacity(pixels.len() / per);
        for chunk in pixels.chunks(QUERY_CHUNK * per) {
            let q = rows(
                chunk,
                (self.shape, self.sigma),
                &self.norm,
                self.normal.device(),
            )?;
            let q_sq = q.sqr()?.sum_keepdim(1)?;
            // |q - n|^2 = |q|^2 + |n|^2 - 2 q.n
            let d2 = (q.matmul(&self.normal.t()?)? * -2.0)?
                .broadcast_add(&q_sq)?
                .broadcast_add(&self.normal_sq)?;
            let d2: Vec<Vec<f32>> = d2.to_device(&Device::Cpu)?.to_vec2()?;
            out.extend(d2.into_iter().map(|row| mean_of_smallest(row, k)));
        }
        Ok(out)
    }
}

/// At most `max` of the images of `per` bytes each in `pixels`, evenly
/// strided (all of them, borrowed, when there are no more).
fn at_most(pixels: &[u8], per: usize, max: usize) -> Cow<'_, [u8]> {
    let n = pixels.len() / per;
    if n <= max {
        return Cow::Borrowed(pixels);
    }
    Cow::Owned(
        crate::protocol::strided(n, max)
            .into_iter()
            .flat_map(|i| &pixels[i * per..(i + 1) * per])
            .copied()
            .collect(),
    )
}

/// The images as (N, P) normalised rows, each channel blurred by a
/// Gaussian of standard deviation `sigma`.
fn rows(
    pixels: &[u8],
    (shape, sigma): ((usize, usize, usize), f64),
    norm: &Normalization,
    device: &Device,
) -> Result<Tensor> {
    let x = batch::to_tensor(pixels, shape, norm, &Device::Cpu)?;
    let n = x.dim(0)?;
    let mut data = x.flatten_all()?.to_vec1::<f32>()?;
    if sigma > 0.0 {
        let kernel = gaussian_kernel(sigma);
        for plane in data.chunks_exact_mut(shape.1 * shape.2) {
            blur_plane(plane, (shape.1, shape.2), &kernel);
        }
    }
    Ok(Tensor::from_vec(
        data,
        (n, shape.0 * shape.1 * shape.2),
        device,
    )?)
}

/// A normalised Gaussian of standard deviation `sigma`, radius
/// ceil(3 sigma).
fn gaussian_kernel(sigma: f64) -> Vec<f32> {
    let r = (3.0 * sigma).ceil() as i64;
    let w: Vec<f64> = (-r..=r)
        .map(|i| (-((i * i) as f64) / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f64 = w.iter().sum();
    w.iter().map(|v| (v / total) as f32).collect()
}

/// Blurs one (h, w) plane in place: the 1-D `kernel` along rows, then
/// along columns, borders replicated.
fn blur_plane(plane: &mut [f32], (h, w): (usize, usize), kernel: &[f32]) {
    let r = (kernel.len() / 2) as isize;
    let at = |i: isize, len: usize| i.clamp(0, len as isize - 1) as usize;
    let mut tmp = vec![0f32; plane.len()];
    for y in 0..h {
        for x in 0..w {
            tmp[y * w + x] = kernel
                .iter()
                .enumerate()
                .map(|(k, &c)| c * plane[y * w + at(x as isize + k as isize - r, w)])
                .sum();
        }
    }
    for y in 0..h {
        for x in 0..w {
            plane[y * w + x] = kernel
                .iter()
                .enumerate()
                .map(|(k, &c)| c * tmp[at(y as isize + k as isize - r, h) * w + x])
                .sum();
        }
    }
}

/// Mean of the square roots of the `k` smallest squared distances (each
/// clamped at 0 against rounding).
fn mean_of_smallest(mut d2: Vec<f32>, k: usize) -> f64 {
    d2.select_nth_unstable_by(k - 1, |a, b| a.total_cmp(b));
    d2[..k]
        .iter()
        .map(|&v| f64::from(v.max(0.0)).sqrt())
        .sum::<f64>()
        / k as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_average_the_k_nearest_normal_images() {
        // 1x1x2 "images"; identity normalisation (mean 0, std 1/255 ->
        // values are the raw bytes).
        let norm = Normalization {
            mean: vec![0.0],
            std: vec![1.0 / 255.0],
        };
        let shape = (1, 1, 2);
        let normal = [0u8, 0, 3, 4, 6, 8];
        let nb = PixelNeighbours::new(&normal, shape, &norm, 0.0, &Device::Cpu).unwrap();
        // Query (0,0): distances 0, 5, 10. Query (3,0): 3, 4, sqrt(73).
        let d1 = nb.distances(&[0, 0, 3, 0], 1).unwrap();
        let d2 = nb.distances(&[0, 0, 3, 0], 2).unwrap();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-4;
        assert!(close(d1[0], 0.0) && close(d1[1], 3.0), "{d1:?}");
        assert!(close(d2[0], 2.5) && close(d2[1], 3.5), "{d2:?}");
        // k beyond the normal set averages all of it.
        let all = nb.distances(&[0, 0], 9).unwrap();
        assert!(close(all[0], 5.0), "{all:?}");
    }

    #[test]
    fn large_normal_sets_are_strided_down() {
        // Five 2-byte images.
        let px = [0u8, 0, 1, 1, 2, 2, 3, 3, 4, 4];
        assert_eq!(&*at_most(&px, 2, 5), &px[..]);
        assert_eq!(&*at_most(&px, 2, 2), &[0, 0, 2, 2]);
        assert!(matches!(at_most(&px, 2, 9), Cow::Borrowed(_)));
    }

    #[test]
    fn the_blur_spreads_an_impulse_by_the_gaussian_and_keeps_a_constant() {
        let k = gaussian_kernel(1.0);
        assert_eq!(k.len(), 7);
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        // exp(-1/2) / (1 + 2 exp(-1/2) + 2 exp(-2) + 2 exp(-9/2)).
        let e = |x: f64| (-x).exp();
        let centre = 1.0 / (1.0 + 2.0 * e(0.5) + 2.0 * e(2.0) + 2.0 * e(4.5));
        assert!((f64::from(k[3]) - centre).abs() < 1e-6, "{k:?}");
        assert!((f64::from(k[4]) - centre * e(0.5)).abs() < 1e-6);
        // A centred impulse in a 9x9 plane becomes the outer product.
        let mut plane = vec![0f32; 81];
        plane[4 * 9 + 4] = 1.0;
        blur_plane(&mut plane, (9, 9), &k);
        for (y, row) in plane.chunks(9).enumerate() {
            for (x, &v) in row.iter().enumerate() {
                let want = match (y.abs_diff(4), x.abs_diff(4)) {
                    (dy, dx) if dy <= 3 && dx <= 3 => k[3 + dy] * k[3 + dx],
                    _ => 0.0,
                };
                assert!((v - want).abs() < 1e-7, "({y},{x}): {v} vs {want}");
            }
        }
        // Replicated borders keep a constant plane constant.
        let mut flat = vec![2.5f32; 20];
        blur_plane(&mut flat, (4, 5), &k);
        assert!(flat.iter().all(|&v| (v - 2.5).abs() < 1e-6), "{flat:?}");
    }
}
