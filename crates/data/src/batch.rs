//! From `u8` images to normalised `f32` tensors (the only place the
//! conversion happens).

use crate::dataset::Dataset;
use candle_core::{Device, Tensor};
pub use selfsup_core::Normalization;
use selfsup_core::Result;

/// Per-channel statistics of the images at `indices` (no labels involved).
pub fn fit_normalization(ds: &Dataset, indices: &[usize]) -> Normalization {
    let (c, h, w) = ds.image_shape();
    let plane = h * w;
    let mut sum = vec![0f64; c];
    let mut sq = vec![0f64; c];
    for &i in indices {
        let img = ds.image(i);
        for ch in 0..c {
            for &p in &img[ch * plane..(ch + 1) * plane] {
                let v = f64::from(p) / 255.0;
                sum[ch] += v;
                sq[ch] += v * v;
            }
        }
    }
    let n = (indices.len() * plane).max(1) as f64;
    let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
    let std = sq
        .iter()
        .zip(&mean)
        .map(|(q, &m)| ((q / n - f64::from(m).powi(2)).max(1e-8).sqrt() as f32).max(1e-3))
        .collect();
    Normalization { mean, std }
}

/// Converts `n` contiguous (C, H, W) `u8` images to a normalised
/// (n, C, H, W) `f32` tensor.
pub fn to_tensor(
    pixels: &[u8],
    shape: (usize, usize, usize),
    norm: &Normalization,
    device: &Device,
) -> Result<Tensor> {
    let (c, h, w) = shape;
    let plane = h * w;
    let per = c * plane;
    let n = pixels.len() / per;
    let scale: Vec<f32> = norm.std.iter().map(|s| 1.0 / (255.0 * s)).collect();
    let shift: Vec<f32> = norm
        .mean
        .iter()
        .zip(&norm.std)
        .map(|(m, s)| m / s)
        .collect();
    let data: Vec<f32> = pixels
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let ch = (i % per) / plane;
            f32::from(p) * scale[ch] - shift[ch]
        })
        .collect();
    Ok(Tensor::from_vec(data, (n, c, h, w), device)?)
}

/// The inverse of [`to_tensor`]: a normalised (n, C, H, W) tensor (any
/// device or float dtype) back to contiguous `u8` images, rounded and
/// clamped to 0..=255.
pub fn to_pixels(x: &Tensor, norm: &Normalization) -> Result<Vec<u8>> {
    let (_, c, h, w) = x.dims4()?;
    let v: Vec<f32> = x
        .to_device(&Device::Cpu)?
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let plane = h * w;
    Ok(v.iter()
        .enumerate()
        .map(|(k, &px)| {
            let ch = (k / plane) % c;
            ((px * norm.std[ch] + norm.mean[ch]) * 255.0)
                .round()
                .clamp(0.0, 255.0) as u8
        })
        .collect())
}

/// The images at `indices` of `ds` as one normalised tensor.
pub fn gather(
    ds: &Dataset,
    indices: &[usize],
    norm: &Normalization,
    device: &Device,
) -> Result<Tensor> {
    to_tensor(&ds.pixels_of(indices), ds.image_shape(), norm, device)
}

/// The labels at `indices` as a `u32` tensor. Panics if `ds` is unlabeled.
pub fn labels(ds: &Dataset, indices: &[usize], device: &Device) -> Result<Tensor> {
    let y = ds.labels().expect("labels() on an unlabeled dataset");
    let v: Vec<u32> = indices.iter().map(|&i| y[i]).collect();
    Ok(Tensor::from_vec(v, indices.len(), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_pixels_inverts_to_tensor_per_channel() {
        let norm = Normalization {
            mean: vec![0.2, 0.5],
            std: vec![0.3, 0.1],
        };
        let pixels: Vec<u8> = vec![
            0, 7, 128, 255, 3, 90, 200, 254, 1, 2, 3, 4, 250, 251, 252, 253,
        ];
        let x = to_tensor(&pixels, (2, 2, 2), &norm, &Device::Cpu).unwrap();
        assert_eq!(x.dims(), &[2, 2, 2, 2]);
        assert_eq!(to_pixels(&x, &norm).unwrap(), pixels);
        let far = (x * 100.0).unwrap();
        let clamped = to_pixels(&far, &norm).unwrap();
        assert_eq!((clamped[0], clamped[3]), (0, 255));
    }

    #[test]
    fn normalisation_centres_and_scales() {
        let ds = Dataset::new(
            vec![0, 255, 0, 255, 100, 100, 100, 100],
            (2, 1, 2, 2),
            None,
            vec![],
        )
        .unwrap();
        let norm = fit_normalization(&ds, &[0]);
        assert!((norm.mean[0] - 0.5).abs() < 1e-6 && (norm.std[0] - 0.5).abs() < 1e-6);
        let t = gather(&ds, &[0], &norm, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[1, 1, 2, 2]);
        assert_eq!(
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![-1.0, 1.0, -1.0, 1.0]
        );
    }
}
