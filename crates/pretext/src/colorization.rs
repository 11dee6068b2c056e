//! Colorization (Zhang, Isola & Efros, 2016): the encoder sees only the
//! lightness of a colour image and predicts its colour as a distribution
//! over quantised ab bins of CIE Lab, with class rebalancing so that rare
//! saturated colours are not drowned by the many grayish pixels.
//!
//! - Input: each pixel's L (CIE Lab lightness) rendered back as the sRGB
//!   gray of that lightness in all three channels, then normalised like any
//!   input. The backbone keeps its three input channels, so it transfers
//!   to colour images unchanged: during pretraining the three channels are
//!   equal and the first convolution in effect learns one gray filter (the
//!   sum of its three), from which fine-tuning on colour starts.
//! - Target: the mean ab of the `s x s` pixels under each position of the
//!   backbone's last feature map (s its output stride), quantised to a grid
//!   of [`BIN`]-wide bins over [-110, 110)² ([`BINS`] classes).
//! - Head: one linear map per feature-map position to the bin logits.
//! - Loss: cross-entropy weighted per target bin by
//!   w ∝ 1 / ((1 - λ)·p̃ + λ/Q), p̃ the bin frequencies seen so far in
//!   training (smoothed over neighbouring bins), normalised so that the
//!   expected weight is 1; λ = [`ColorizationConfig::rebalance`].
//!
//! The objective's accuracy is top-1 bin accuracy per position.

use candle_core::{DType, Device, Tensor, D};
use selfsup_backbones::Backbone;
use selfsup_core::{Error, Normalization, Result};
use selfsup_data::batch;
use selfsup_kernels::nn::{xavier_uniform, Dense};
use selfsup_objective::{Objective, ObjectiveContext};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;

/// Width of one ab bin.
pub const BIN: f64 = 10.0;
/// Bins per ab axis: [-110, 110) in steps of [`BIN`].
pub const SIDE: usize = 22;
/// Colour classes: [`SIDE`]².
pub const BINS: usize = SIDE * SIDE;
/// The annealed-mean temperature of Zhang et al. for turning a bin
/// distribution into one colour.
pub const ANNEAL_T: f64 = 0.38;

/// Colorization's knobs (the `[methods.colorization]` section without its
/// schedule).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColorizationConfig {
    /// λ of the class rebalancing: 0 weighs bins by inverse frequency, 1
    /// not at all (Zhang et al. use 0.5).
    pub rebalance: f64,
}

impl Default for ColorizationConfig {
    fn default() -> Self {
        Self { rebalance: 0.5 }
    }
}

/// sRGB (bytes) to CIE Lab (D65 white), as (L, a, b).
pub fn srgb_to_lab(rgb: [u8; 3]) -> [f64; 3] {
    let lin = |c: u8| {
        let v = f64::from(c) / 255.0;
        if v <= 0.04045 {
            v / 12.92
        } else {
            ((v + 0.055) / 1.055).powf(2.4)
        }
    };
    let (r, g, b) = (lin(rgb[0]), lin(rgb[1]), lin(rgb[2]));
    let x = (0.412_456_4 * r + 0.357_576_1 * g + 0.180_437_5 * b) / 0.950_47;
    let y = 0.212_672_9 * r + 0.715_152_2 * g + 0.072_175 * b;
    let z = (0.019_333_9 * r + 0.119_192 * g + 0.950_304_1 * b) / 1.088_83;
    let f = |t: f64| {
        if t > 216.0 / 24389.0 {
            t.cbrt()
        } else {
            (24389.0 / 27.0 * t + 16.0) / 116.0
        }
    };
    let (fx, fy, fz) = (f(x), f(y), f(z));
    [116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)]
}

/// CIE Lab to sRGB bytes (out-of-gamut values clipped).
pub fn lab_to_srgb(lab: [f64; 3]) -> [u8; 3] {
    let fy = (lab[0] + 16.0) / 116.0;
    let (fx, fz) = (fy + lab[1] / 500.0, fy - lab[2] / 200.0);
    let inv = |f: f64| {
        let t = f * f * f;
        if t > 216.0 / 24389.0 {
            t
        } else {
            (116.0 * f - 16.0) * 27.0 / 24389.0
        }
    };
    let (x, y, z) = (inv(fx) * 0.950_47, inv(fy), inv(fz) * 1.088_83);
    let r = 3.240_454_2 * x - 1.537_138_5 * y - 0.498_531_4 * z;
    let g = -0.969_266 * x + 1.876_010_8 * y + 0.041_556 * z;
    let b = 0.055_643_4 * x - 0.204_025_9 * y + 1.057_225_2 * z;
    let gamma = |v: f64| {
        let v = v.clamp(0.0, 1.0);
        let s = if v <= 0.003_130_8 {
            12.92 * v
        } else {
            1.055 * v.powf(1.0 / 2.4) - 0.055
        };
        (s * 255.0).round() as u8
    };
    [gamma(r), gamma(g), gamma(b)]
}

/// The bin of an (a, b) pair (values outside [-110, 110) land in the edge
/// bins).
pub fn ab_bin(a: f64, b: f64) -> usize {
    let idx = |v: f64| (((v + 110.0) / BIN).floor().max(0.0) as usize).min(SIDE - 1);
    idx(a) * SIDE + idx(b)
}

/// The (a, b) centre of bin `q`.
pub fn bin_centre(q: usize) -> (f64, f64) {
    let c = |i: usize| -110.0 + (i as f64 + 0.5) * BIN;
    (c(q / SIDE), c(q % SIDE))
}

/// Lab planes of `n` RGB images (C = 3, H, W) in `pixels`: (L, a, b) per
/// pixel, image-major.
fn lab_planes(pixels: &[u8], (h, w): (usize, usize)) -> Vec<[f64; 3]> {
    let plane = h * w;
    pixels
        .chunks_exact(3 * plane)
        .flat_map(|img| {
            (0..plane).map(move |p| srgb_to_lab([img[p], img[plane + p], img[2 * plane + p]]))
        })
        .collect()
}

/// Gray renderings (3 equal channels) of Lab pixels' lightness.
fn gray_pixels(lab: &[[f64; 3]], (h, w): (usize, usize)) -> Vec<u8> {
    let plane = h * w;
    let mut out = Vec::with_capacity(lab.len() * 3);
    for img in lab.chunks_exact(plane) {
        let gray: Vec<u8> = img
            .iter()
            .map(|p| lab_to_srgb([p[0], 0.0, 0.0])[0])
            .collect();
        for _ in 0..3 {
            out.extend_from_slice(&gray);
        }
    }
    out
}

/// The mean ab of each `s x s` block under a `mh x mw` feature map, its
/// bin per position (image-major, row-major).
fn block_targets(
    lab: &[[f64; 3]],
    n: usize,
    (h, w): (usize, usize),
    (mh, mw, s): (usize, usize, usize),
) -> Vec<u32> {
    let mut out = Vec::with_capacity(n * mh * mw);
    for img in lab.chunks_exact(h * w).take(n) {
        for i in 0..mh {
            for j in 0..mw {
                let (mut a, mut b, mut k) = (0.0, 0.0, 0.0);
                for y in i * s..((i + 1) * s).min(h) {
                    for x in j * s..((j + 1) * s).min(w) {
                        a += img[y * w + x][1];
                        b += img[y * w + x][2];
                        k += 1.0;
                    }
                }
                let k: f64 = if k > 0.0 { k } else { 1.0 };
                out.push(ab_bin(a / k, b / k) as u32);
            }
        }
    }
    out
}

/// Class-rebalancing weights from bin counts: frequencies smoothed with
/// their 4 grid neighbours (weight 1/2 each side of the centre's 1), mixed
/// with the uniform distribution by `lambda`, inverted and normalised to an
/// expected weight of 1 under the smoothed frequencies.
pub fn rebalance_weights(counts: &[f64], lambda: f64) -> Vec<f64> {
    let total: f64 = counts.iter().sum::<f64>().max(1.0);
    let p: Vec<f64> = counts.iter().map(|c| c / total).collect();
    let mut smooth = vec![0.0; BINS];
    for (q, s) in smooth.iter_mut().enumerate() {
        let (i, j) = (q / SIDE, q % SIDE);
        let mut acc = p[q];
        let mut wsum = 1.0;
        for (di, dj) in [(-1i64, 0i64), (1, 0), (0, -1), (0, 1)] {
            let (ni, nj) = (i as i64 + di, j as i64 + dj);
            if (0..SIDE as i64).contains(&ni) && (0..SIDE as i64).contains(&nj) {
                acc += 0.5 * p[ni as usize * SIDE + nj as usize];
                wsum += 0.5;
            }
        }
        *s = acc / wsum;
    }
    let z: f64 = smooth.iter().sum::<f64>().max(f64::MIN_POSITIVE);
    let q = BINS as f64;
    let mut w: Vec<f64> = smooth
        .iter()
        .map(|s| 1.0 / ((1.0 - lambda) * s / z + lambda / q))
        .collect();
    let expect: f64 = smooth.iter().zip(&w).map(|(s, w)| s / z * w).sum();
    for v in &mut w {
        *v /= expect.max(f64::MIN_POSITIVE);
    }
    w
}

/// The colorization objective.
pub struct Colorization {
    cfg: ColorizationConfig,
    head: Dense,
    stride: usize,
    /// Target bin counts over the training batches so far.
    counts: Mutex<Vec<f64>>,
    device: Device,
}

impl Colorization {
    /// The head for `ctx`'s backbone, probed (under a throw-away map) for
    /// its last feature map's channels and stride; `pixels.*` under `vb`.
    /// An error for gray images or a backbone without a feature map.
    pub fn for_context(
        cfg: ColorizationConfig,
        ctx: &ObjectiveContext,
        vb: candle_nn::VarBuilder,
    ) -> Result<Self> {
        if !(0.0..=1.0).contains(&cfg.rebalance) {
            return Err(Error::invalid(
                "methods.colorization.rebalance",
                format!("{}: must lie in [0, 1]", cfg.rebalance),
            ));
        }
        let (c, h, _) = ctx.image_shape;
        if c != 3 {
            return Err(Error::invalid(
                "--pretext",
                format!("colorization predicts colour and needs 3-channel images, not {c}"),
            ));
        }
        let (channels, mh) = crate::inpaint::probe_feature_map(ctx, "colorization")?;
        Ok(Self {
            head: Dense::new(
                channels,
                BINS,
                xavier_uniform(channels, BINS),
                vb.pp("colours"),
            )?,
            stride: (h / mh.max(1)).max(1),
            counts: Mutex::new(vec![0.0; BINS]),
            device: ctx.device.clone(),
            cfg,
        })
    }

    /// Bin logits (B·h·w, [`BINS`]) of gray images `gray` and the map's
    /// (h, w).
    fn logits(
        &self,
        backbone: &dyn Backbone,
        gray: &Tensor,
        train: bool,
    ) -> Result<(Tensor, (usize, usize))> {
        let Some(map) = backbone.feature_map(gray, train)? else {
            return Err(Error::invalid(
                "--pretext",
                "colorization needs a backbone with a convolutional feature map",
            ));
        };
        let (b, c, mh, mw) = map.dims4()?;
        let flat = map.permute((0, 2, 3, 1))?.reshape((b * mh * mw, c))?;
        Ok((self.head.forward(&flat)?, (mh, mw)))
    }

    /// The rebalancing weight of every target, after counting the targets
    /// of a training batch.
    fn target_weights(&self, targets: &[u32], train: bool) -> Result<Vec<f32>> {
        let mut counts = self
            .counts
            .lock()
            .map_err(|_| Error::invalid("colorization", "bin counts poisoned"))?;
        if train {
            for &t in targets {
                counts[t as usize] += 1.0;
            }
        }
        let w = rebalance_weights(&counts, self.cfg.rebalance);
        Ok(targets.iter().map(|&t| w[t as usize] as f32).collect())
    }

    /// Gray input, predicted colour (annealed mean of the bins, at the
    /// feature map's resolution, with each pixel's own lightness) and
    /// original as normalised images, for a figure.
    pub fn figure_rows(
        &self,
        backbone: &dyn Backbone,
        x: &Tensor,
        norm: &Normalization,
    ) -> Result<[Tensor; 3]> {
        let (b, c, h, w) = x.dims4()?;
        let pixels = batch::to_pixels(x, norm)?;
        let lab = lab_planes(&pixels, (h, w));
        let gray = gray_pixels(&lab, (h, w));
        let gx = batch::to_tensor(&gray, (c, h, w), norm, &self.device)?;
        let (logits, (mh, mw)) = self.logits(backbone, &gx, false)?;
        let probs = candle_nn::ops::softmax(&(logits / ANNEAL_T)?, D::Minus1)?;
        let centres: Vec<f32> = (0..BINS)
            .flat_map(|q| {
                let (a, bb) = bin_centre(q);
                [a as f32, bb as f32]
            })
            .collect();
        let centres = Tensor::from_vec(centres, (BINS, 2), &self.device)?;
        let ab: Vec<Vec<f32>> = probs.matmul(&centres)?.to_device(&Device::Cpu)?.to_vec2()?;
        let s = self.stride;
        let mut out = Vec::with_capacity(pixels.len());
        for (i, img) in lab.chunks_exact(h * w).enumerate() {
            let mut planes = vec![vec![0u8; h * w]; 3];
            for y in 0..h {
                for xx in 0..w {
                    let (bi, bj) = ((y / s).min(mh - 1), (xx / s).min(mw - 1));
                    let p = &ab[(i * mh + bi) * mw + bj];
                    let rgb = lab_to_srgb([img[y * w + xx][0], f64::from(p[0]), f64::from(p[1])]);
                    for (ch, plane) in planes.iter_mut().enumerate() {
                        plane[y * w + xx] = rgb[ch];
                    }
                }
            }
            out.extend(planes.concat());
        }
        let pred = batch::to_tensor(&out, (c, h, w), norm, &self.device)?;
        debug_assert_eq!(pred.dim(0)?, b);
        Ok([gx, pred, x.clone()])
    }
}

impl Objective for Colorization {
    fn name(&self) -> &'static str {
        "colorization"
    }
    fn head_outputs(&self) -> usize {
        BINS
    }
    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let counts = self
            .counts
            .lock()
            .map_err(|_| Error::invalid("colorization", "bin counts poisoned"))?;
        let v: Vec<f32> = counts.iter().map(|&c| c as f32).collect();
        Ok(vec![(
            "bin_counts".into(),
            Tensor::from_vec(v, BINS, &Device::Cpu)?,
        )])
    }
    fn restore_state(&self, saved: &HashMap<String, Tensor>) -> Result<()> {
        if let Some(t) = saved.get("bin_counts") {
            let v: Vec<f32> = t.to_dtype(DType::F32)?.to_vec1()?;
            let mut counts = self
                .counts
                .lock()
                .map_err(|_| Error::invalid("colorization", "bin counts poisoned"))?;
            *counts = v.into_iter().map(f64::from).collect();
        }
        Ok(())
    }
    fn reconstruction(
        &self,
        backbone: &dyn Backbone,
        x: &Tensor,
        norm: &Normalization,
        _seed: u64,
    ) -> Result<Option<[Tensor; 3]>> {
        self.figure_rows(backbone, x, norm).map(Some)
    }
    fn loss(
        &self,
        backbone: &dyn Backbone,
        pixels: &[u8],
        shape: (usize, usize, usize),
        norm: &Normalization,
        train: bool,
    ) -> Result<(Tensor, f64, usize)> {
        let (c, h, w) = shape;
        let n = pixels.len() / (c * h * w);
        let lab = lab_planes(pixels, (h, w));
        let gray = batch::to_tensor(&gray_pixels(&lab, (h, w)), shape, norm, &self.device)?;
        let (logits, (mh, mw)) = self.logits(backbone, &gray, train)?;
        let targets = block_targets(&lab, n, (h, w), (mh, mw, self.stride));
        let weights = self.target_weights(&targets, train)?;
        let m = targets.len();
        let t = Tensor::from_vec(targets, (m, 1), &Device::Cpu)?.to_device(&self.device)?;
        let wt = Tensor::from_vec(weights, m, &Device::Cpu)?.to_device(&self.device)?;
        let nll = candle_nn::ops::log_softmax(&logits, D::Minus1)?
            .gather(&t, 1)?
            .squeeze(1)?
            .neg()?;
        let loss = ((&nll * &wt)?.sum_all()? / wt.sum_all()?)?;
        let pred = logits.argmax(D::Minus1)?;
        let hits = pred
            .eq(&t.squeeze(1)?)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()?;
        Ok((loss, f64::from(hits) / m.max(1) as f64, n))
    }
}

/// Colour images whose colour follows from shape and texture: the tests'
/// stand-in for a colour dataset.
#[cfg(test)]
pub(crate) mod shapes {
    /// `n` RGB images of `side` pixels: class `i % 3` is a red disc of
    /// vertical stripes, a green square of horizontal stripes or a blue
    /// checkerboard bar on a gray background, each shape's lightness varied
    /// per image (so lightness alone does not give the colour).
    pub(crate) fn images(n: usize, side: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n * 3 * side * side);
        for i in 0..n {
            let class = i % 3;
            let shade = 0.6 + 0.4 * ((i * 37 % 11) as f64 / 10.0);
            let c = side as f64 / 2.0 + (i % 5) as f64 - 2.0;
            let mut planes = vec![vec![128u8; side * side]; 3];
            for y in 0..side {
                for x in 0..side {
                    let (dx, dy) = (x as f64 - c, y as f64 - c);
                    let inside = match class {
                        0 => dx * dx + dy * dy < (side as f64 / 3.0).powi(2) && (x / 2) % 2 == 0,
                        1 => {
                            dx.abs() < side as f64 / 3.0
                                && dy.abs() < side as f64 / 3.0
                                && (y / 2) % 2 == 0
                        }
                        _ => dx.abs() < side as f64 / 3.0 && (x / 2 + y / 2) % 2 == 0,
                    };
                    if inside {
                        let rgb = [
                            [220.0, 30.0, 30.0],
                            [30.0, 200.0, 40.0],
                            [40.0, 60.0, 230.0],
                        ][class];
                        for ch in 0..3 {
                            planes[ch][y * side + x] = (rgb[ch] * shade) as u8;
                        }
                    }
                }
            }
            out.extend(planes.concat());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;
    use selfsup_backbones::checkpoint::{BACKBONE_PREFIX, HEAD_PREFIX};
    use selfsup_backbones::BackboneConfig;
    use selfsup_core::params::{abs_sum, seeded_var_builder, trainable_vars};
    use selfsup_core::train::{LrSchedule, Trainer};
    use std::sync::Arc;

    #[test]
    fn lab_round_trips_and_known_colours_have_known_coordinates() {
        let white = srgb_to_lab([255, 255, 255]);
        assert!((white[0] - 100.0).abs() < 1e-3 && white[1].abs() < 1e-3 && white[2].abs() < 1e-3);
        // sRGB red is L 53.24, a 80.09, b 67.20 (D65).
        let red = srgb_to_lab([255, 0, 0]);
        for (got, want) in red.iter().zip([53.24, 80.09, 67.20]) {
            assert!((got - want).abs() < 0.02, "{red:?}");
        }
        for rgb in [[0u8, 0, 0], [12, 200, 99], [255, 128, 3], [77, 77, 77]] {
            assert_eq!(lab_to_srgb(srgb_to_lab(rgb)), rgb);
        }
        assert_eq!(ab_bin(-110.0, -110.0), 0);
        assert_eq!(ab_bin(0.0, 0.0), 11 * SIDE + 11);
        assert_eq!(ab_bin(500.0, -500.0), (SIDE - 1) * SIDE);
        assert_eq!(bin_centre(ab_bin(3.0, -7.0)), (5.0, -5.0));
    }

    #[test]
    fn rebalancing_favours_rare_bins_with_unit_expected_weight() {
        let mut counts = vec![0.0; BINS];
        counts[ab_bin(0.0, 0.0)] = 900.0;
        counts[ab_bin(60.0, 60.0)] = 100.0;
        let w = rebalance_weights(&counts, 0.5);
        assert!(w[ab_bin(60.0, 60.0)] > 3.0 * w[ab_bin(0.0, 0.0)]);
        let uniform = rebalance_weights(&counts, 1.0);
        assert!(
            uniform.iter().all(|&v| (v - 1.0).abs() < 1e-9),
            "lambda 1: no rebalancing"
        );
    }

    /// 48 shape images, their normalisation, a small ConvNet and the
    /// objective.
    fn setup() -> (
        Vec<u8>,
        Normalization,
        VarMap,
        Box<dyn Backbone>,
        Colorization,
    ) {
        let pixels = shapes::images(48, 24);
        let norm = Normalization {
            mean: vec![0.5; 3],
            std: vec![0.25; 3],
        };
        let map = VarMap::new();
        let vb = seeded_var_builder(&map, 0, &Device::Cpu);
        let cfg = BackboneConfig::ConvNet {
            in_channels: 3,
            widths: vec![16, 32],
            convs_per_stage: 1,
        };
        let backbone = cfg.build(vb.pp(BACKBONE_PREFIX)).unwrap();
        let ctx = ObjectiveContext {
            backbone: Arc::new(cfg),
            feature_dim: backbone.feature_dim(),
            online: map.clone(),
            seed: 0,
            device: Device::Cpu,
            image_shape: (3, 24, 24),
        };
        let obj =
            Colorization::for_context(ColorizationConfig::default(), &ctx, vb.pp(HEAD_PREFIX))
                .unwrap();
        (pixels, norm, map, backbone, obj)
    }

    /// Mean squared ab error of predicted images against the originals.
    fn ab_error(pred: &[u8], orig: &[u8], side: usize) -> (f64, f64) {
        let (p, o) = (
            lab_planes(pred, (side, side)),
            lab_planes(orig, (side, side)),
        );
        let n = o.len() as f64;
        let mean_a = o.iter().map(|v| v[1]).sum::<f64>() / n;
        let mean_b = o.iter().map(|v| v[2]).sum::<f64>() / n;
        let err = p
            .iter()
            .zip(&o)
            .map(|(p, o)| (p[1] - o[1]).powi(2) + (p[2] - o[2]).powi(2))
            .sum::<f64>()
            / n;
        let base = o
            .iter()
            .map(|o| (mean_a - o[1]).powi(2) + (mean_b - o[2]).powi(2))
            .sum::<f64>()
            / n;
        (err, base)
    }

    #[test]
    fn colour_is_learned_from_shape_well_below_the_mean_colour() {
        let (pixels, norm, map, backbone, obj) = setup();
        let shape = (3, 24, 24);
        let loss = |train| {
            obj.loss(backbone.as_ref(), &pixels, shape, &norm, train)
                .unwrap()
        };
        let (first, _, seen) = loss(true);
        assert_eq!(seen, 48);
        let grads = first.backward().unwrap();
        for (name, v) in trainable_vars(&map) {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{name} has no gradient"));
            assert!(abs_sum(g).unwrap() > 0.0, "{name} has a zero gradient");
        }
        let mut tr =
            Trainer::new(map.all_vars(), LrSchedule::new(3e-3, 0, 300), 0.0, "test").unwrap();
        for _ in 0..300 {
            tr.step(&loss(true).0).unwrap();
        }
        let (after, acc, _) = loss(false);
        let after = f64::from(after.to_scalar::<f32>().unwrap());
        // The same weighted loss for the mean colour: every position predicts
        // the bins' frequencies over the whole set.
        let lab = lab_planes(&pixels, (24, 24));
        let stride = obj.stride;
        let side = 24 / stride;
        let targets = block_targets(&lab, 48, (24, 24), (side, side, stride));
        let w = rebalance_weights(&obj.counts.lock().unwrap(), 0.5);
        let mut freq = vec![0f64; BINS];
        targets
            .iter()
            .for_each(|&t| freq[t as usize] += 1.0 / targets.len() as f64);
        let (num, den) = targets.iter().fold((0.0, 0.0), |(n, d), &t| {
            let t = t as usize;
            (n - w[t] * freq[t].ln(), d + w[t])
        });
        let mean_colour = num / den;
        assert!(
            after < 0.5 * mean_colour,
            "loss {after} vs mean colour {mean_colour}"
        );
        assert!(acc > 0.8, "bin accuracy {acc}");
        let x = batch::to_tensor(&pixels, shape, &norm, &Device::Cpu).unwrap();
        let [gray, pred, orig] = obj.figure_rows(backbone.as_ref(), &x, &norm).unwrap();
        let (err, base) = ab_error(
            &batch::to_pixels(&pred, &norm).unwrap(),
            &batch::to_pixels(&orig, &norm).unwrap(),
            24,
        );
        assert!(err < 0.3 * base, "ab error {err} vs mean colour {base}");
        let g = batch::to_pixels(&gray, &norm).unwrap();
        let plane = 24 * 24;
        assert!(g[..plane] == g[plane..2 * plane], "the encoder sees gray");
    }

    #[test]
    fn gray_images_are_refused_and_counts_survive_a_checkpoint() {
        let (pixels, norm, _, backbone, obj) = setup();
        obj.loss(backbone.as_ref(), &pixels, (3, 24, 24), &norm, true)
            .unwrap();
        let saved: HashMap<String, Tensor> = obj.state().unwrap().into_iter().collect();
        let (_, _, map, _, fresh) = setup();
        fresh.restore_state(&saved).unwrap();
        assert_eq!(*fresh.counts.lock().unwrap(), *obj.counts.lock().unwrap());
        assert!(obj.counts.lock().unwrap().iter().sum::<f64>() > 0.0);
        let ctx = ObjectiveContext {
            backbone: Arc::new(BackboneConfig::from_name("convnet", 1).unwrap()),
            feature_dim: 112,
            online: map.clone(),
            seed: 0,
            device: Device::Cpu,
            image_shape: (1, 28, 28),
        };
        let vb = seeded_var_builder(&map, 0, &Device::Cpu);
        let e = Colorization::for_context(ColorizationConfig::default(), &ctx, vb)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("3-channel") && e.contains("not 1"), "{e}");
    }
}
