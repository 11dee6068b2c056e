//! Masked autoencoding (He et al., 2021, "MAE") on the [`Vit`] backbone:
//! each image's patches are shuffled by a seeded permutation, the encoder
//! sees only the first `(1 - mask_ratio)·N` of them, and a light decoder
//! (its own width, fixed sine-cosine positions, a learned mask token in
//! place of every hidden patch, a few transformer blocks) predicts the
//! pixels of every patch. The loss is the mean squared error over the
//! *masked* patches only, against pixels normalised per patch
//! (`norm_pix_loss`, MAE's default) or the input pixels.
//!
//! The objective's accuracy is the share of masked patches reconstructed
//! closer than the patch's own mean value (per-patch error below the
//! patch's variance), so a decoder that learned nothing scores about 0.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::init::Init;
use candle_nn::VarBuilder;
use rand::seq::SliceRandom;
use selfsup_backbones::{sincos_2d, Backbone, Block, Vit};
use selfsup_core::{rng, Error, Normalization, Result};
use selfsup_data::batch;
use selfsup_kernels::nn::{add_tail, xavier_uniform, Dense, LayerNorm};
use selfsup_objective::{Objective, ObjectiveContext};
use serde::{Deserialize, Serialize};

/// MAE's knobs (the `[methods.mae]` section without its schedule).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaeConfig {
    /// Share of each image's patches hidden from the encoder.
    pub mask_ratio: f64,
    /// Decoder token width (a multiple of 4 and of `decoder_heads`).
    pub decoder_dim: usize,
    /// Decoder transformer blocks.
    pub decoder_depth: usize,
    /// Decoder attention heads.
    pub decoder_heads: usize,
    /// Predict pixels normalised per patch (mean 0, variance 1).
    pub norm_pix_loss: bool,
}

impl Default for MaeConfig {
    fn default() -> Self {
        Self {
            mask_ratio: 0.75,
            decoder_dim: 64,
            decoder_depth: 2,
            decoder_heads: 4,
            norm_pix_loss: true,
        }
    }
}

impl MaeConfig {
    /// Checks the values, naming the spec field of a bad one.
    pub fn validate(&self) -> Result<()> {
        if !(self.mask_ratio > 0.0 && self.mask_ratio < 1.0) {
            return Err(Error::invalid(
                "methods.mae.mask_ratio",
                format!("{}: must lie strictly between 0 and 1", self.mask_ratio),
            ));
        }
        let (d, h) = (self.decoder_dim, self.decoder_heads);
        if d == 0 || h == 0 || d % 4 != 0 || d % h != 0 || self.decoder_depth == 0 {
            return Err(Error::invalid(
                "methods.mae",
                format!(
                    "decoder_dim {d} must be a positive multiple of 4 and of decoder_heads \
                     {h}, and decoder_depth at least 1"
                ),
            ));
        }
        Ok(())
    }
}

/// Which patches of one image the encoder sees and which it must fill in,
/// each list ascending.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchMask {
    /// Visible patch indices.
    pub visible: Vec<usize>,
    /// Masked patch indices.
    pub masked: Vec<usize>,
}

/// Visible patches per image: `round(n · (1 - ratio))`, at least 1 and at
/// most n - 1.
pub fn visible_count(n: usize, ratio: f64) -> usize {
    ((n as f64 * (1.0 - ratio)).round() as usize).clamp(1, n.saturating_sub(1).max(1))
}

/// The mask of image `index` under `seed`: a seeded shuffle of `0..n`,
/// the first [`visible_count`] visible.
pub fn patch_mask(seed: u64, index: u64, n: usize, ratio: f64) -> PatchMask {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng::stream_at(seed, "mae-mask", index));
    let keep = visible_count(n, ratio);
    let mut visible = order[..keep].to_vec();
    let mut masked = order[keep..].to_vec();
    visible.sort_unstable();
    masked.sort_unstable();
    PatchMask { visible, masked }
}

/// Mean squared error of `pred` against `target` (both (B, N, P)) over
/// the flat patch rows `masked` (indices into B·N) only.
pub fn masked_mse(pred: &Tensor, target: &Tensor, masked: &Tensor) -> Result<Tensor> {
    rows_mse(&masked_rows(pred, masked)?, &masked_rows(target, masked)?)
}

/// The patch rows `masked` (indices into B·N) of patches (B, N, P), as
/// (M, P).
pub(crate) fn masked_rows(t: &Tensor, masked: &Tensor) -> Result<Tensor> {
    let (b, n, p) = t.dims3()?;
    Ok(t.reshape((b * n, p))?.index_select(masked, 0)?)
}

/// Mean squared error between two sets of patch rows.
fn rows_mse(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    Ok((pred - target)?.sqr()?.mean_all()?)
}

/// Pixels normalised per patch over its last dimension (mean 0, variance
/// 1, MAE's epsilon 1e-6).
pub fn normalize_patches(t: &Tensor) -> Result<Tensor> {
    let (mean, spread) = patch_stats(t)?;
    Ok(t.broadcast_sub(&mean)?.broadcast_div(&spread)?)
}

/// Each patch's mean and spread sqrt(variance + 1e-6) over its last
/// dimension, kept as (.., 1): what [`normalize_patches`] divides out and
/// a figure multiplies back in.
fn patch_stats(t: &Tensor) -> Result<(Tensor, Tensor)> {
    let mean = t.mean_keepdim(D::Minus1)?;
    let var = t.broadcast_sub(&mean)?.sqr()?.mean_keepdim(D::Minus1)?;
    Ok((mean, (var + 1e-6)?.sqrt()?))
}

/// The MAE objective: decoder and loss; the encoder is the backbone.
pub struct Mae {
    cfg: MaeConfig,
    decoder_embed: Dense,
    mask_token: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
    pred: Dense,
    seed: u64,
    calls: crate::calls::Calls,
    device: Device,
}

/// The masks of one batch as index tensors.
struct BatchMask {
    /// Flat rows (B·N) of the visible patches, image-major.
    visible: Tensor,
    /// Flat rows (B·N) of the masked patches, image-major.
    masked: Tensor,
    /// For each flat row (B·N), its row in [visible decoded tokens; mask token].
    fill: Tensor,
    /// Visible patches per image.
    keep: usize,
}

impl Mae {
    /// The decoder for a ViT of `ctx`'s backbone (an error naming the
    /// backbone for any other): `decoder_embed.*`, `mask_token`,
    /// `decoder_blocks.{i}.*`, `decoder_norm.*`, `decoder_pred.*` under `vb`.
    pub fn new(cfg: MaeConfig, ctx: &ObjectiveContext, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let Some(patch) = ctx.backbone.vit_patch_size() else {
            return Err(Error::invalid(
                "--pretext",
                format!(
                    "mae reconstructs ViT patches and needs --backbone vit, not {}; \
                     for convolutional backbones use --pretext inpaint",
                    ctx.backbone.backbone_name()
                ),
            ));
        };
        let (enc, dd) = (ctx.feature_dim, cfg.decoder_dim);
        let pdim = ctx.image_shape.0 * patch * patch;
        let blocks = (0..cfg.decoder_depth)
            .map(|i| {
                Block::new(
                    dd,
                    cfg.decoder_heads,
                    4 * dd,
                    vb.pp(format!("decoder_blocks.{i}")),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let token_init = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        Ok(Self {
            decoder_embed: Dense::new(enc, dd, xavier_uniform(enc, dd), vb.pp("decoder_embed"))?,
            mask_token: vb.get_with_hints(dd, "mask_token", token_init)?,
            blocks,
            norm: LayerNorm::new(dd, selfsup_backbones::VIT_LN_EPS, vb.pp("decoder_norm"))?,
            pred: Dense::new(dd, pdim, xavier_uniform(dd, pdim), vb.pp("decoder_pred"))?,
            seed: ctx.seed,
            calls: crate::calls::Calls::default(),
            device: ctx.device.clone(),
            cfg,
        })
    }

    /// The masks of `b` images of `n` patches under `seed`.
    fn batch_mask(&self, seed: u64, b: usize, n: usize) -> Result<BatchMask> {
        let keep = visible_count(n, self.cfg.mask_ratio);
        let mut visible = Vec::with_capacity(b * keep);
        let mut masked = Vec::with_capacity(b * (n - keep));
        let mut fill = vec![(b * keep) as u32; b * n];
        for i in 0..b {
            let m = patch_mask(seed, i as u64, n, self.cfg.mask_ratio);
            for (rank, &p) in m.visible.iter().enumerate() {
                visible.push((i * n + p) as u32);
                fill[i * n + p] = (i * keep + rank) as u32;
            }
            masked.extend(m.masked.iter().map(|&p| (i * n + p) as u32));
        }
        let t = |v: Vec<u32>| -> Result<Tensor> {
            let len = v.len();
            Ok(Tensor::from_vec(v, len, &Device::Cpu)?.to_device(&self.device)?)
        };
        Ok(BatchMask {
            visible: t(visible)?,
            masked: t(masked)?,
            fill: t(fill)?,
            keep,
        })
    }

    /// Predicted patches (B, N, C·p·p) of images `x` under `mask`.
    fn reconstruct(&self, vit: &Vit, x: &Tensor, mask: &BatchMask) -> Result<Tensor> {
        let (b, _, h, w) = x.dims4()?;
        let (gh, gw) = vit.grid(h, w);
        let n = gh * gw;
        let tokens = vit.tokens(x)?;
        let d = tokens.dim(2)?;
        let visible = tokens
            .reshape((b * n, d))?
            .index_select(&mask.visible, 0)?
            .reshape((b, mask.keep, d))?;
        let latent = vit.encode(&visible)?;
        let dd = self.cfg.decoder_dim;
        let y = self
            .decoder_embed
            .forward(&latent)?
            .reshape((b * mask.keep, dd))?;
        let rows = Tensor::cat(&[y, self.mask_token.reshape((1, dd))?], 0)?;
        let full = rows.index_select(&mask.fill, 0)?.reshape((b, n, dd))?;
        let mut z = add_tail(&full, &sincos_2d(gh, gw, dd, x.device())?)?;
        for blk in &self.blocks {
            z = blk.forward(&z)?;
        }
        Ok(self.pred.forward(&self.norm.forward(&z)?)?)
    }

    /// The loss of normalised images `x` under masks drawn from `seed`,
    /// and the masked patches' predicted and target rows (image-major,
    /// `n - keep` per image), selected once for every use.
    fn forward_loss(&self, vit: &Vit, x: &Tensor, seed: u64) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, _, h, w) = x.dims4()?;
        let (gh, gw) = vit.grid(h, w);
        let mask = self.batch_mask(seed, b, gh * gw)?;
        let pred = masked_rows(&self.reconstruct(vit, x, &mask)?, &mask.masked)?;
        let target = masked_rows(&self.target(vit, x)?, &mask.masked)?;
        let loss = rows_mse(&pred, &target)?;
        Ok((loss, pred, target))
    }

    /// The MAE loss of normalised images `x` (B, C, H, W) already on the
    /// device, masks drawn from `seed` (what the bench times).
    pub fn loss_of(&self, backbone: &dyn Backbone, x: &Tensor, seed: u64) -> Result<Tensor> {
        Ok(self.forward_loss(require_vit(backbone)?, x, seed)?.0)
    }

    /// Each image's mean squared error over its masked patches (against
    /// the loss target), for normalised images `x` under masks drawn from
    /// `seed`: a reconstruction-error anomaly score.
    pub fn per_image_error(
        &self,
        backbone: &dyn Backbone,
        x: &Tensor,
        seed: u64,
    ) -> Result<Vec<f64>> {
        let vit = require_vit(backbone)?;
        let (_, pred, target) = self.forward_loss(vit, x, seed)?;
        let per_row: Vec<f32> = (pred - target)?
            .sqr()?
            .mean(1)?
            .to_device(&Device::Cpu)?
            .to_vec1()?;
        let hidden = per_row.len() / x.dim(0)?.max(1);
        Ok(per_row
            .chunks_exact(hidden.max(1))
            .map(|c| c.iter().map(|&v| f64::from(v)).sum::<f64>() / c.len() as f64)
            .collect())
    }

    /// The loss target of images `x`: their patches, normalised per patch
    /// when `norm_pix_loss`.
    fn target(&self, vit: &Vit, x: &Tensor) -> Result<Tensor> {
        let t = vit.patchify(x)?;
        if self.cfg.norm_pix_loss {
            normalize_patches(&t)
        } else {
            Ok(t)
        }
    }

    /// Masked input, reconstruction and original of images `x` as images
    /// (B, C, H', W') in the normalised input space, masks drawn under
    /// `seed`: the masked patches are zero in the first, the
    /// reconstruction keeps the visible patches and fills the masked ones
    /// with predictions (de-normalised with each original patch's mean and
    /// spread when `norm_pix_loss`).
    pub fn figure_rows(
        &self,
        backbone: &dyn Backbone,
        x: &Tensor,
        seed: u64,
    ) -> Result<[Tensor; 3]> {
        let vit = require_vit(backbone)?;
        let (b, _, h, w) = x.dims4()?;
        let grid = vit.grid(h, w);
        let n = grid.0 * grid.1;
        let mask = self.batch_mask(seed, b, n)?;
        let patches = vit.patchify(x)?;
        let mut pred = self.reconstruct(vit, x, &mask)?;
        if self.cfg.norm_pix_loss {
            let (mean, spread) = patch_stats(&patches)?;
            pred = pred.broadcast_mul(&spread)?.broadcast_add(&mean)?;
        }
        let hidden = Tensor::zeros(b * n, DType::F32, x.device())?
            .index_add(
                &mask.visible,
                &Tensor::ones(b * mask.keep, DType::F32, x.device())?,
                0,
            )?
            .reshape((b, n, 1))?;
        let shown = patches.broadcast_mul(&hidden)?;
        let filled = (&shown + pred.broadcast_mul(&(1.0 - &hidden)?)?)?;
        Ok([
            vit.unpatchify(&shown, grid)?,
            vit.unpatchify(&filled, grid)?,
            vit.unpatchify(&patches, grid)?,
        ])
    }
}

/// The backbone as a ViT, or an error saying MAE needs one.
fn require_vit(backbone: &dyn Backbone) -> Result<&Vit> {
    backbone.as_vit().ok_or_else(|| {
        Error::invalid(
            "--pretext",
            "mae needs --backbone vit (this backbone has no patch tokens)",
        )
    })
}

/// Share of patch rows (M, P) whose squared error is below the target
/// patch's variance: how often a prediction beats filling the patch with
/// its true mean.
pub(crate) fn better_than_mean(pr: &Tensor, tr: &Tensor) -> Result<f64> {
    let err = (pr - tr)?.sqr()?.mean(1)?;
    let mean = tr.mean_keepdim(1)?;
    let var = tr.broadcast_sub(&mean)?.sqr()?.mean(1)?;
    let wins = err
        .lt(&var)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok(f64::from(wins) / pr.dim(0)?.max(1) as f64)
}

impl Objective for Mae {
    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        self.calls.state()
    }
    fn restore_state(&self, saved: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        self.calls.restore(saved)
    }
    fn name(&self) -> &'static str {
        "mae"
    }
    fn head_outputs(&self) -> usize {
        self.pred.bias.dim(0).unwrap_or(0)
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
        let vit = require_vit(backbone)?;
        let seed = self.calls.draw_seed(self.seed, "mae", train, pixels);
        let x = batch::to_tensor(pixels, shape, norm, &self.device)?;
        let (loss, pred, target) = self.forward_loss(vit, &x, seed)?;
        let acc = better_than_mean(&pred, &target)?;
        Ok((loss, acc, x.dim(0)?))
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

    fn vit_cfg() -> BackboneConfig {
        BackboneConfig::Vit {
            in_channels: 1,
            patch_size: 4,
            dim: 16,
            depth: 1,
            heads: 2,
            mlp_ratio: 2.0,
        }
    }

    /// Eight Fashion-MNIST images, a small ViT and MAE's decoder.
    fn setup() -> (
        selfsup_data::Dataset,
        Normalization,
        VarMap,
        Box<dyn Backbone>,
        Mae,
    ) {
        let (ds, norm, _, _, _, _) = crate::tiny::setup();
        let map = VarMap::new();
        let vb = seeded_var_builder(&map, 0, &Device::Cpu);
        let cfg = vit_cfg();
        let backbone = cfg.build(vb.pp(BACKBONE_PREFIX)).unwrap();
        let ctx = ObjectiveContext {
            backbone: Arc::new(cfg),
            feature_dim: backbone.feature_dim(),
            online: map.clone(),
            seed: 3,
            device: Device::Cpu,
            image_shape: ds.image_shape(),
        };
        let cfg = MaeConfig {
            decoder_dim: 8,
            decoder_depth: 1,
            decoder_heads: 2,
            ..MaeConfig::default()
        };
        let mae = Mae::new(cfg, &ctx, vb.pp(HEAD_PREFIX)).unwrap();
        (ds, norm, map, backbone, mae)
    }

    #[test]
    fn masks_are_deterministic_per_seed_and_split_the_patches() {
        let a = patch_mask(7, 2, 49, 0.75);
        assert_eq!(a, patch_mask(7, 2, 49, 0.75));
        assert_ne!(a, patch_mask(8, 2, 49, 0.75));
        assert_ne!(a, patch_mask(7, 3, 49, 0.75));
        assert_eq!(a.visible.len(), 12);
        assert_eq!(a.masked.len(), 37);
        let mut all: Vec<usize> = a.visible.iter().chain(&a.masked).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..49).collect::<Vec<_>>());
        assert_eq!(visible_count(4, 0.99), 1, "at least one visible");
        assert_eq!(visible_count(4, 0.01), 3, "at least one masked");
    }

    #[test]
    fn the_loss_ignores_visible_patches() {
        let dev = Device::Cpu;
        let pred = Tensor::zeros((2, 3, 4), DType::F32, &dev).unwrap();
        let target = Tensor::ones((2, 3, 4), DType::F32, &dev).unwrap();
        // Rows 1 and 3 masked (image 0 patch 1, image 1 patch 0).
        let masked = Tensor::new(&[1u32, 3], &dev).unwrap();
        let base = masked_mse(&pred, &target, &masked).unwrap();
        assert_eq!(base.to_scalar::<f32>().unwrap(), 1.0);
        // Changing a visible row's prediction changes nothing...
        let mut v = vec![0f32; 24];
        v[0..4].fill(5.0);
        let moved = Tensor::from_vec(v.clone(), (2, 3, 4), &dev).unwrap();
        let same = masked_mse(&moved, &target, &masked).unwrap();
        assert_eq!(same.to_scalar::<f32>().unwrap(), 1.0);
        // ...a masked row's does.
        v[4..8].fill(1.0);
        let moved = Tensor::from_vec(v, (2, 3, 4), &dev).unwrap();
        let half = masked_mse(&moved, &target, &masked).unwrap();
        assert_eq!(half.to_scalar::<f32>().unwrap(), 0.5);
    }

    #[test]
    fn every_parameter_gets_a_gradient_and_the_loss_falls() {
        let (ds, norm, map, backbone, mae) = setup();
        let loss = || {
            mae.loss(
                backbone.as_ref(),
                ds.pixels(),
                ds.image_shape(),
                &norm,
                true,
            )
            .unwrap()
        };
        let (first, _, seen) = loss();
        assert_eq!(seen, 8);
        let grads = first.backward().unwrap();
        for (name, v) in trainable_vars(&map) {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{name} has no gradient"));
            assert!(abs_sum(g).unwrap() > 0.0, "{name} has a zero gradient");
        }
        let first = first.to_scalar::<f32>().unwrap();
        let mut tr =
            Trainer::new(map.all_vars(), LrSchedule::new(3e-3, 0, 80), 0.0, "test").unwrap();
        for _ in 0..80 {
            tr.step(&loss().0).unwrap();
        }
        let held = mae
            .loss(
                backbone.as_ref(),
                ds.pixels(),
                ds.image_shape(),
                &norm,
                false,
            )
            .unwrap();
        let last = held.0.to_scalar::<f32>().unwrap();
        assert!(last < first * 0.8, "loss {first} -> {last}");
        assert!(held.1 > 0.0, "some masked patches beat their mean");
    }

    #[test]
    fn held_out_masks_repeat_and_figures_keep_visible_patches() {
        let (ds, norm, _, backbone, mae) = setup();
        let f = || {
            mae.loss(
                backbone.as_ref(),
                ds.pixels(),
                ds.image_shape(),
                &norm,
                false,
            )
            .unwrap()
            .0
            .to_scalar::<f32>()
            .unwrap()
        };
        assert_eq!(f(), f(), "the same held-out batch, the same masks");
        let x = batch::to_tensor(ds.pixels(), ds.image_shape(), &norm, &Device::Cpu).unwrap();
        let [shown, filled, orig] = mae.figure_rows(backbone.as_ref(), &x, 1).unwrap();
        assert_eq!(orig.dims(), &[8, 1, 28, 28]);
        let vit = backbone.as_vit().unwrap();
        let m = patch_mask(1, 0, 49, 0.75);
        let (p_shown, p_filled, p_orig) = (
            vit.patchify(&shown).unwrap(),
            vit.patchify(&filled).unwrap(),
            vit.patchify(&orig).unwrap(),
        );
        let row =
            |t: &Tensor, i: usize| t.get(0).unwrap().get(i).unwrap().to_vec1::<f32>().unwrap();
        for &i in &m.visible {
            assert_eq!(row(&p_filled, i), row(&p_orig, i), "visible patch {i} kept");
        }
        for &i in &m.masked {
            assert!(
                row(&p_shown, i).iter().all(|&v| v == 0.0),
                "masked {i} blank"
            );
        }
    }

    #[test]
    fn per_image_errors_average_each_images_masked_patches() {
        let (ds, norm, _, backbone, mae) = setup();
        let x = batch::to_tensor(ds.pixels(), ds.image_shape(), &norm, &Device::Cpu).unwrap();
        let e = mae.per_image_error(backbone.as_ref(), &x, 5).unwrap();
        assert_eq!(e.len(), 8);
        assert!(e.iter().all(|v| v.is_finite() && *v > 0.0));
        assert_eq!(e, mae.per_image_error(backbone.as_ref(), &x, 5).unwrap());
        // Their mean is the batch loss (every image masks as many patches).
        let loss = mae.loss_of(backbone.as_ref(), &x, 5).unwrap();
        let mean = e.iter().sum::<f64>() / 8.0;
        assert!((mean - f64::from(loss.to_scalar::<f32>().unwrap())).abs() < 1e-5);
        // Image 2 alone has the same error as inside the batch (under its mask).
        let one = mae
            .per_image_error(backbone.as_ref(), &x.narrow(0, 0, 3).unwrap(), 5)
            .unwrap();
        assert!((one[2] - e[2]).abs() < 1e-5);
    }

    #[test]
    fn mae_refuses_a_convolutional_backbone_by_name() {
        let (_, _, map, vb, cfg, backbone) = crate::tiny::setup();
        let ctx = ObjectiveContext {
            backbone: Arc::new(cfg),
            feature_dim: backbone.feature_dim(),
            online: map,
            seed: 0,
            device: Device::Cpu,
            image_shape: (1, 28, 28),
        };
        let e = Mae::new(MaeConfig::default(), &ctx, vb.pp(HEAD_PREFIX))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--backbone vit") && e.contains("convnet"), "{e}");
        let bad = MaeConfig {
            mask_ratio: 1.0,
            ..MaeConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("mask_ratio"));
    }
}
