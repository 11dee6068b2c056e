//! Masked-patch inpainting for convolutional backbones, after SimMIM (Xie
//! et al., 2022): random `m x m` patches of each input are replaced by a
//! learned per-channel mask value, the backbone encodes the whole image,
//! and a light head — one linear map per position of the last feature
//! map, unfolded into the `s x s` pixels that position covers (s the
//! backbone's output stride) — predicts the pixels. The loss is the mean
//! absolute error over the masked pixels only, in the normalised input
//! space.
//!
//! The objective's accuracy is, as for [`crate::mae`], the share of masked
//! patches whose squared error is below the patch's own variance.

use crate::mae::patch_mask;
use candle_core::{DType, Device, Tensor};
use candle_nn::init::Init;
use candle_nn::VarBuilder;
use selfsup_backbones::{patchify, Backbone};
use selfsup_core::{Error, Normalization, Result};
use selfsup_data::batch;
use selfsup_kernels::nn::{xavier_uniform, Dense};
use selfsup_objective::{Objective, ObjectiveContext};
use serde::{Deserialize, Serialize};

/// Inpainting's knobs (the `[methods.inpaint]` section without its
/// schedule).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InpaintConfig {
    /// Side of the square mask patches, in pixels.
    pub mask_patch: usize,
    /// Share of each image's patches masked.
    pub mask_ratio: f64,
}

impl Default for InpaintConfig {
    fn default() -> Self {
        Self {
            mask_patch: 4,
            mask_ratio: 0.5,
        }
    }
}

impl InpaintConfig {
    /// Checks the values, naming the spec field of a bad one.
    pub fn validate(&self) -> Result<()> {
        if !(self.mask_ratio > 0.0 && self.mask_ratio < 1.0) {
            return Err(Error::invalid(
                "methods.inpaint.mask_ratio",
                format!("{}: must lie strictly between 0 and 1", self.mask_ratio),
            ));
        }
        if self.mask_patch == 0 {
            return Err(Error::invalid(
                "methods.inpaint.mask_patch",
                "must be at least 1 pixel",
            ));
        }
        Ok(())
    }
}

/// The inpainting objective: the mask value and the pixel head.
pub struct Inpaint {
    cfg: InpaintConfig,
    mask_value: Tensor,
    head: Dense,
    stride: usize,
    channels: usize,
    seed: u64,
    calls: crate::calls::Calls,
    device: Device,
}

/// Per-pixel masks of a batch: 1 on masked patches, 0 elsewhere, (B, 1,
/// H, W); and the masked patches of each image.
struct PixelMask {
    tensor: Tensor,
    masked: Vec<Vec<usize>>,
    grid: (usize, usize),
}

impl Inpaint {
    /// The head for `ctx`'s backbone, whose last feature map has
    /// `map_channels` channels at output stride `stride` (measured by the
    /// caller on one image): `mask_value` (C) and `pixels.*` under `vb`.
    pub fn new(
        cfg: InpaintConfig,
        ctx: &ObjectiveContext,
        map_channels: usize,
        stride: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        cfg.validate()?;
        let c = ctx.image_shape.0;
        let out = c * stride * stride;
        Ok(Self {
            mask_value: vb.get_with_hints(c, "mask_value", Init::Const(0.0))?,
            head: Dense::new(
                map_channels,
                out,
                xavier_uniform(map_channels, out),
                vb.pp("pixels"),
            )?,
            stride,
            channels: c,
            seed: ctx.seed,
            calls: crate::calls::Calls::default(),
            device: ctx.device.clone(),
            cfg,
        })
    }

    /// Builds the objective for `ctx`, probing the backbone (built under a
    /// throw-away map) for its feature map's channels and stride. An error
    /// names a backbone without a feature map (the ViT: use mae).
    pub fn for_context(cfg: InpaintConfig, ctx: &ObjectiveContext, vb: VarBuilder) -> Result<Self> {
        let (channels, mh) = probe_feature_map(ctx, "inpaint")?;
        Self::new(cfg, ctx, channels, ctx.image_shape.1 / mh.max(1), vb)
    }

    /// Seeded patch masks for `b` images of `h x w`.
    fn pixel_mask(&self, seed: u64, b: usize, h: usize, w: usize) -> Result<PixelMask> {
        let m = self.cfg.mask_patch;
        let (gh, gw) = (h / m, w / m);
        if gh * gw < 2 {
            return Err(Error::invalid(
                "methods.inpaint.mask_patch",
                format!("{m}-pixel patches leave fewer than two patches in a {h}x{w} image"),
            ));
        }
        let mut data = vec![0f32; b * h * w];
        let mut masked = Vec::with_capacity(b);
        for i in 0..b {
            let pm = patch_mask(seed, i as u64, gh * gw, self.cfg.mask_ratio);
            for &p in &pm.masked {
                let (r, c) = (p / gw, p % gw);
                for y in r * m..(r + 1) * m {
                    data[i * h * w + y * w + c * m..][..m].fill(1.0);
                }
            }
            masked.push(pm.masked);
        }
        Ok(PixelMask {
            tensor: Tensor::from_vec(data, (b, 1, h, w), &self.device)?,
            masked,
            grid: (gh, gw),
        })
    }

    /// The predicted image (B, C, h·s, w·s) of `x` with its `mask`ed
    /// pixels replaced by the mask value.
    fn predict(
        &self,
        backbone: &dyn Backbone,
        x: &Tensor,
        mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let fill = self.mask_value.reshape((1, self.channels, 1, 1))?;
        let keep = (1.0 - mask)?;
        let shown = (x.broadcast_mul(&keep)? + mask.broadcast_mul(&fill)?)?;
        let Some(map) = backbone.feature_map(&shown, train)? else {
            return Err(Error::invalid(
                "--pretext",
                "inpaint needs a backbone with a convolutional feature map",
            ));
        };
        let (b, cm, mh, mw) = map.dims4()?;
        let (s, c) = (self.stride, self.channels);
        let per = self
            .head
            .forward(&map.permute((0, 2, 3, 1))?.reshape((b, mh * mw, cm))?)?;
        let img = per
            .reshape(vec![b, mh, mw, c, s, s])?
            .permute([0, 3, 1, 4, 2, 5])?
            .reshape((b, c, mh * s, mw * s))?;
        Ok(img)
    }

    /// Masked input, inpainted image (visible pixels kept, masked ones
    /// predicted) and original for images `x` (normalised input space),
    /// masks drawn under `seed`; all cropped to the predicted area.
    pub fn figure_rows(
        &self,
        backbone: &dyn Backbone,
        x: &Tensor,
        seed: u64,
    ) -> Result<[Tensor; 3]> {
        let (b, _, h, w) = x.dims4()?;
        let mask = self.pixel_mask(seed, b, h, w)?;
        let pred = self.predict(backbone, x, &mask.tensor, false)?;
        let (ph, pw) = (pred.dim(2)?.min(h), pred.dim(3)?.min(w));
        let crop = |t: &Tensor| t.narrow(2, 0, ph)?.narrow(3, 0, pw);
        let (m, x, pred) = (crop(&mask.tensor)?, crop(x)?, crop(&pred)?);
        let blank = x.broadcast_mul(&(1.0 - &m)?)?;
        let filled = (&blank + pred.broadcast_mul(&m)?)?;
        Ok([blank, filled, x])
    }
}

/// The channels and height of the last feature map of `ctx`'s backbone
/// (built under a throw-away map, run on one blank image on the CPU); an
/// error naming `method` and the backbone when it has no feature map.
pub(crate) fn probe_feature_map(ctx: &ObjectiveContext, method: &str) -> Result<(usize, usize)> {
    let probe_map = candle_nn::VarMap::new();
    let probe_vb = VarBuilder::from_varmap(&probe_map, DType::F32, &Device::Cpu);
    let net = ctx.backbone.build_backbone(probe_vb)?;
    let (c, h, w) = ctx.image_shape;
    let x = Tensor::zeros((1, c, h, w), DType::F32, &Device::Cpu)?;
    let Some(map) = net.feature_map(&x, false)? else {
        return Err(Error::invalid(
            "--pretext",
            format!(
                "{method} predicts from a convolutional feature map, which {} does not \
                 have; for --backbone vit use --pretext mae",
                ctx.backbone.backbone_name()
            ),
        ));
    };
    let (_, channels, mh, _) = map.dims4()?;
    Ok((channels, mh))
}

/// Share of masked patches (fully inside the predicted area) whose squared
/// error is below the patch's own variance; `pred` and `target` are
/// (B, C, ph, pw).
fn better_than_mean(pred: &Tensor, target: &Tensor, mask: &PixelMask, m: usize) -> Result<f64> {
    let (pr, tr) = (patchify(pred, m)?, patchify(target, m)?);
    let (_, n, _) = pr.dims3()?;
    let (gh, gw) = (pred.dim(2)? / m, pred.dim(3)? / m);
    let rows: Vec<u32> = mask
        .masked
        .iter()
        .enumerate()
        .flat_map(|(i, masked)| {
            masked.iter().filter_map(move |&p| {
                let (r, c) = (p / mask.grid.1, p % mask.grid.1);
                (r < gh && c < gw).then_some((i * n + r * gw + c) as u32)
            })
        })
        .collect();
    if rows.is_empty() {
        return Ok(0.0);
    }
    let rows = Tensor::new(rows, pred.device())?;
    crate::mae::better_than_mean(
        &crate::mae::masked_rows(&pr, &rows)?,
        &crate::mae::masked_rows(&tr, &rows)?,
    )
}

impl Objective for Inpaint {
    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        self.calls.state()
    }
    fn restore_state(&self, saved: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        self.calls.restore(saved)
    }
    fn name(&self) -> &'static str {
        "inpaint"
    }
    fn head_outputs(&self) -> usize {
        self.channels * self.stride * self.stride
    }
    fn reconstruction(
        &self,
        backbone: &dyn Backbone,
        x: &Tensor,
        _norm: &Normalization,
        seed: u64,
    ) -> Result<Option<[Tensor; 3]>> {
        self.figure_rows(backbone, x, seed).map(Some)
    }
    fn loss(
        &self,
        backbone: &dyn Backbone,
        pixels: &[u8],
        shape: (usize, usize, usize),
        norm: &Normalization,
        train: bool,
    ) -> Result<(Tensor, f64, usize)> {
        let seed = self.calls.draw_seed(self.seed, "inpaint", train, pixels);
        let x = batch::to_tensor(pixels, shape, norm, &self.device)?;
        let (b, _, h, w) = x.dims4()?;
        let mask = self.pixel_mask(seed, b, h, w)?;
        let pred = self.predict(backbone, &x, &mask.tensor, train)?;
        let (ph, pw) = (pred.dim(2)?.min(h), pred.dim(3)?.min(w));
        let pred = pred.narrow(2, 0, ph)?.narrow(3, 0, pw)?;
        let target = x.narrow(2, 0, ph)?.narrow(3, 0, pw)?;
        let m = mask.tensor.narrow(2, 0, ph)?.narrow(3, 0, pw)?;
        let masked_values = (m.sum_all()?.to_scalar::<f32>()? as f64 * shape.0 as f64).max(1.0);
        let loss = ((&pred - &target)?.abs()?.broadcast_mul(&m)?.sum_all()? / masked_values)?;
        let acc = better_than_mean(&pred, &target, &mask, self.cfg.mask_patch)?;
        Ok((loss, acc, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfsup_backbones::checkpoint::HEAD_PREFIX;
    use selfsup_backbones::BackboneConfig;
    use selfsup_core::params::{abs_sum, trainable_vars};
    use selfsup_core::train::{LrSchedule, Trainer};
    use std::sync::Arc;

    fn context(
        cfg: BackboneConfig,
        map: &candle_nn::VarMap,
        dim: usize,
        shape: (usize, usize, usize),
    ) -> ObjectiveContext {
        ObjectiveContext {
            backbone: Arc::new(cfg),
            feature_dim: dim,
            online: map.clone(),
            seed: 4,
            device: Device::Cpu,
            image_shape: shape,
        }
    }

    #[test]
    fn masks_cover_whole_patches_and_repeat_per_seed() {
        let (ds, _, map, vb, cfg, backbone) = crate::tiny::setup();
        let ctx = context(cfg, &map, backbone.feature_dim(), ds.image_shape());
        let obj = Inpaint::for_context(InpaintConfig::default(), &ctx, vb.pp(HEAD_PREFIX)).unwrap();
        assert_eq!(obj.stride, 2, "two ConvNet stages: 28 -> 14");
        let a = obj.pixel_mask(9, 2, 28, 28).unwrap();
        let b = obj.pixel_mask(9, 2, 28, 28).unwrap();
        assert_eq!(a.masked, b.masked);
        assert_ne!(a.masked, obj.pixel_mask(10, 2, 28, 28).unwrap().masked);
        assert_eq!(a.masked[0].len(), 24, "half of 49 patches, rounded");
        let px = a.tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(px.iter().filter(|&&v| v == 1.0).count(), 2 * 24 * 16);
        // Patch p covers rows 4(p/7).., columns 4(p%7)..
        let p = a.masked[1][0];
        let (r, c) = (4 * (p / 7), 4 * (p % 7));
        assert_eq!(px[28 * 28 + (r + 3) * 28 + c + 3], 1.0);
    }

    #[test]
    fn better_than_mean_counts_masked_whole_patches_by_hand() {
        // One 1-channel 4x6 image, 2x2 patches on a 2x3 grid (patch p at
        // rows 2(p/3).., columns 2(p%3)..); the prediction is 5 pixels
        // wide, so patch 2 (columns 4-5) is not fully predicted.
        let target: Vec<f32> = (0..24).map(|v| (v * v % 7) as f32).collect();
        let mut pred = target.clone();
        for (r, c) in [(2, 0), (2, 1), (3, 0), (3, 1)] {
            pred[r * 6 + c] += 10.0; // patch 3: far worse than its mean
        }
        let t = |v: &[f32]| {
            Tensor::from_vec(v.to_vec(), (1, 1, 4, 6), &Device::Cpu)
                .unwrap()
                .narrow(3, 0, 5)
                .unwrap()
        };
        let mask = |masked: Vec<usize>| PixelMask {
            tensor: Tensor::zeros((1, 1, 4, 6), DType::F32, &Device::Cpu).unwrap(),
            masked: vec![masked],
            grid: (2, 3),
        };
        let acc = |m: Vec<usize>| better_than_mean(&t(&pred), &t(&target), &mask(m), 2).unwrap();
        assert_eq!(acc(vec![0, 3]), 0.5, "patch 0 exact, patch 3 worse");
        assert_eq!(acc(vec![0, 1, 2]), 1.0, "patch 2 is skipped");
        assert_eq!(acc(vec![2]), 0.0, "nothing counted");
    }

    #[test]
    fn every_parameter_gets_a_gradient_and_the_loss_falls() {
        let (ds, norm, map, vb, cfg, backbone) = crate::tiny::setup();
        let ctx = context(cfg, &map, backbone.feature_dim(), ds.image_shape());
        let obj = Inpaint::for_context(InpaintConfig::default(), &ctx, vb.pp(HEAD_PREFIX)).unwrap();
        let loss = |train| {
            obj.loss(
                backbone.as_ref(),
                ds.pixels(),
                ds.image_shape(),
                &norm,
                train,
            )
            .unwrap()
        };
        let (first, _, seen) = loss(true);
        assert_eq!(seen, 8);
        let grads = first.backward().unwrap();
        for (name, v) in trainable_vars(&map) {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{name} has no gradient"));
            assert!(abs_sum(g).unwrap() > 0.0, "{name} has a zero gradient");
        }
        let before = loss(false).0.to_scalar::<f32>().unwrap();
        let mut tr =
            Trainer::new(map.all_vars(), LrSchedule::new(3e-3, 0, 60), 0.0, "test").unwrap();
        for _ in 0..60 {
            tr.step(&loss(true).0).unwrap();
        }
        let (after, acc, _) = loss(false);
        let after = after.to_scalar::<f32>().unwrap();
        assert!(after < before * 0.8, "held-out loss {before} -> {after}");
        assert!(acc > 0.0);
        assert_eq!(
            loss(false).0.to_scalar::<f32>().unwrap(),
            after,
            "fixed held-out masks"
        );
    }

    #[test]
    fn the_loss_reads_masked_pixels_only_and_figures_keep_the_rest() {
        let (ds, norm, map, vb, cfg, backbone) = crate::tiny::setup();
        let ctx = context(cfg, &map, backbone.feature_dim(), ds.image_shape());
        let obj = Inpaint::for_context(InpaintConfig::default(), &ctx, vb.pp(HEAD_PREFIX)).unwrap();
        let x = batch::to_tensor(ds.pixels(), ds.image_shape(), &norm, &Device::Cpu).unwrap();
        let [blank, filled, orig] = obj.figure_rows(backbone.as_ref(), &x, 2).unwrap();
        let mask = obj.pixel_mask(2, 8, 28, 28).unwrap().tensor;
        let keep = (1.0 - &mask).unwrap();
        let diff = |a: &Tensor, b: &Tensor, w: &Tensor| {
            abs_sum(&(a - b).unwrap().broadcast_mul(w).unwrap()).unwrap()
        };
        assert_eq!(diff(&filled, &orig, &keep), 0.0, "visible pixels kept");
        assert_eq!(abs_sum(&blank.broadcast_mul(&mask).unwrap()).unwrap(), 0.0);
        assert!(diff(&filled, &orig, &mask) > 0.0, "masked pixels predicted");
    }

    #[test]
    fn resnet18_and_mobilenetv2_inpaint_at_their_own_stride() {
        let (ds, norm, _, _, _, _) = crate::tiny::setup();
        let configs = [
            BackboneConfig::ResNet18 {
                in_channels: 1,
                base_width: 4,
            },
            BackboneConfig::MobileNetV2 {
                in_channels: 1,
                width_multiplier: 0.25,
            },
        ];
        for cfg in configs {
            let map = candle_nn::VarMap::new();
            let vb = selfsup_core::params::seeded_var_builder(&map, 0, &Device::Cpu);
            let backbone = cfg.build(vb.pp("backbone")).unwrap();
            let ctx = context(cfg.clone(), &map, backbone.feature_dim(), ds.image_shape());
            let obj =
                Inpaint::for_context(InpaintConfig::default(), &ctx, vb.pp(HEAD_PREFIX)).unwrap();
            // 28 -> 14 -> 7 -> 4: each position covers 7x7 pixels.
            assert_eq!(obj.stride, 7, "{}", cfg.name());
            let (loss, _, n) = obj
                .loss(
                    backbone.as_ref(),
                    ds.pixels(),
                    ds.image_shape(),
                    &norm,
                    true,
                )
                .unwrap();
            assert_eq!(n, 8);
            let grads = loss.backward().unwrap();
            for (name, v) in trainable_vars(&map) {
                let g = grads.get(v.as_tensor());
                assert!(g.is_some_and(|g| abs_sum(g).unwrap() > 0.0), "{name}");
            }
        }
    }

    #[test]
    fn a_vit_is_refused_by_name() {
        let map = candle_nn::VarMap::new();
        let vb = selfsup_core::params::seeded_var_builder(&map, 0, &Device::Cpu);
        let cfg = BackboneConfig::from_name("vit", 1).unwrap();
        let ctx = context(cfg, &map, 128, (1, 28, 28));
        let e = Inpaint::for_context(InpaintConfig::default(), &ctx, vb)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("vit") && e.contains("mae"), "{e}");
    }
}
