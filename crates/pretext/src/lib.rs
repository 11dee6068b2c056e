//! selfsup-pretext: pretext tasks, whose labels come from the images
//! themselves, as [`Objective`]s of `selfsup-objective` (re-exported here
//! with the pretraining loop, [`pretrain_with`]).
//!
//! [`Rotation`] (Gidaris et al., 2018, "RotNet"): every image of a batch
//! is shown at 0, 90, 180 and 270 degrees (counter-clockwise) with labels
//! 0..3, and a linear head on the backbone's features predicts which.
//! [`Jigsaw`] (Noroozi & Favaro, 2016): tiles of a grid over the image are
//! shown in one of a fixed set of orders, and a linear head on the tiles'
//! concatenated features predicts which order ([`jigsaw`]).
//! [`Mae`] (He et al., 2021): a ViT encoder sees a quarter of an image's
//! patches and a light decoder reconstructs the rest ([`mae`]).
//! [`Inpaint`] (after Xie et al., 2022, "SimMIM"): a convolutional
//! encoder sees images with patches blanked out and a per-position linear
//! head predicts their pixels ([`inpaint`]).
//! [`Colorization`] (Zhang et al., 2016): the encoder sees lightness only
//! and predicts quantised ab colour classes with class rebalancing
//! ([`colorization`]).
//!
//! ```
//! use selfsup_pretext::rotation_batch;
//! let (px, y) = rotation_batch(&[1, 2, 3, 4], (1, 2, 2));
//! assert_eq!(y, vec![0, 1, 2, 3]);
//! assert_eq!(&px[4..8], &[2, 4, 1, 3]);
//! ```

use candle_core::{Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use selfsup_augment::{rotate90, Image};
use selfsup_backbones::{Backbone, BackboneConfig};
use selfsup_core::{Error, Normalization, Result};
use selfsup_data::{batch, Dataset};
use std::sync::Arc;

mod calls;
pub mod colorization;
pub mod inpaint;
pub mod jigsaw;
pub mod mae;
pub use colorization::{Colorization, ColorizationConfig};
pub use inpaint::{Inpaint, InpaintConfig};
pub use jigsaw::Jigsaw;
pub use mae::{Mae, MaeConfig};

pub use selfsup_objective::{
    classification_loss, evaluate_objective, pretrain_with, Hooks, Monitor, Objective,
    ObjectiveBuilder, ObjectiveContext, PretrainConfig, Pretrained, Unlabeled,
};

/// Pretext names accepted by [`build_objective`].
pub const NAMES: [&str; 5] = ["rotation", "jigsaw", "mae", "inpaint", "colorization"];

/// The pretext tasks that reconstruct pixels (their objectives answer
/// [`Objective::reconstruction`], and runs draw a reconstruction figure).
pub const RECONSTRUCTS: [&str; 3] = ["mae", "inpaint", "colorization"];

/// The settings of the pretext tasks that have any beyond their schedule.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PretextSettings {
    /// Masked autoencoding.
    pub mae: MaeConfig,
    /// Masked-patch inpainting.
    pub inpaint: InpaintConfig,
    /// Colorization.
    pub colorization: ColorizationConfig,
}

/// Builds a named objective for the run `ctx` with default settings (see
/// [`build_objective_with`]).
pub fn build_objective(
    name: &str,
    ctx: &ObjectiveContext,
    vb: VarBuilder,
) -> Result<Box<dyn Objective>> {
    build_objective_with(name, &PretextSettings::default(), ctx, vb)
}

/// Builds a named objective for the run `ctx` (its head reads the
/// backbone's `ctx.feature_dim` features; jigsaw's puzzles are sized for
/// `ctx.image_shape`; mae needs a ViT backbone).
pub fn build_objective_with(
    name: &str,
    settings: &PretextSettings,
    ctx: &ObjectiveContext,
    vb: VarBuilder,
) -> Result<Box<dyn Objective>> {
    match name {
        "mae" => Ok(Box::new(Mae::new(settings.mae.clone(), ctx, vb)?)),
        "inpaint" => Ok(Box::new(Inpaint::for_context(
            settings.inpaint.clone(),
            ctx,
            vb,
        )?)),
        "colorization" => Ok(Box::new(Colorization::for_context(
            settings.colorization.clone(),
            ctx,
            vb,
        )?)),
        "rotation" => Ok(Box::new(Rotation::new(ctx.feature_dim, vb)?)),
        "jigsaw" => Ok(Box::new(Jigsaw::new(
            ctx.feature_dim,
            ctx.image_shape,
            ctx.seed,
            vb,
        )?)),
        other => Err(Error::invalid(
            "--pretext",
            format!("unknown pretext {other:?}; available: {}", NAMES.join(", ")),
        )),
    }
}

/// All four rotations of each image, image-major: image i at k*90 degrees is
/// entry `4*i + k`, with label k.
pub fn rotation_batch(pixels: &[u8], shape: (usize, usize, usize)) -> (Vec<u8>, Vec<u32>) {
    let (c, h, w) = shape;
    let per = c * h * w;
    let mut out = Vec::with_capacity(pixels.len() * 4);
    let mut labels = Vec::with_capacity(pixels.len() / per * 4);
    for img in pixels.chunks_exact(per) {
        let img = Image::new(c, h, w, img.to_vec());
        for k in 0..4 {
            out.extend_from_slice(&rotate90(&img, k).data);
            labels.push(k as u32);
        }
    }
    (out, labels)
}

/// Predict the rotation (0/90/180/270 degrees) of an image.
pub struct Rotation {
    head: Linear,
    device: Device,
}

impl Rotation {
    /// A linear 4-way head on `feature_dim` features.
    pub fn new(feature_dim: usize, vb: VarBuilder) -> Result<Self> {
        let device = vb.device().clone();
        Ok(Self {
            head: candle_nn::linear(feature_dim, 4, vb)?,
            device,
        })
    }
}

impl Objective for Rotation {
    fn name(&self) -> &'static str {
        "rotation"
    }
    fn head_outputs(&self) -> usize {
        4
    }
    fn loss(
        &self,
        backbone: &dyn Backbone,
        pixels: &[u8],
        shape: (usize, usize, usize),
        norm: &Normalization,
        train: bool,
    ) -> Result<(Tensor, f64, usize)> {
        let (px, y) = rotation_batch(pixels, shape);
        let x = batch::to_tensor(&px, shape, norm, &self.device)?;
        let labels = Tensor::from_vec(y.clone(), y.len(), &self.device)?;
        let logits = self.head.forward(&backbone.forward_t(&x, train)?)?;
        let (loss, acc) = classification_loss(&logits, &labels)?;
        Ok((loss, acc, y.len()))
    }
}

/// Pretrains `backbone_cfg` with the built-in objective `cfg.method` on the
/// images `pool` of `ds` (their labels are never read).
pub fn pretrain(
    cfg: &PretrainConfig,
    backbone_cfg: &BackboneConfig,
    ds: &Dataset,
    pool: &[usize],
    norm: &Normalization,
    device: &Device,
    quiet: bool,
) -> Result<Pretrained> {
    let build = |ctx: &ObjectiveContext, vb: VarBuilder| build_objective(&cfg.method, ctx, vb);
    pretrain_with(
        cfg,
        Arc::new(backbone_cfg.clone()),
        Unlabeled { ds, pool, norm },
        device,
        quiet,
        &build,
        Hooks::default(),
    )
}

/// What the objectives' tests train on: eight Fashion-MNIST images, their
/// normalisation, and a small ConvNet under `backbone.` of a fresh map.
#[cfg(test)]
pub(crate) mod tiny {
    use super::*;
    use candle_nn::VarMap;
    use selfsup_backbones::checkpoint::BACKBONE_PREFIX;
    use selfsup_core::params;

    /// The images, their normalisation, the map, its builder, the ConvNet's
    /// config and the ConvNet.
    pub(crate) type Setup = (
        Dataset,
        Normalization,
        VarMap,
        VarBuilder<'static>,
        BackboneConfig,
        Box<dyn Backbone>,
    );

    pub(crate) fn setup() -> Setup {
        let pair = selfsup_data::load("fashion-mnist").unwrap();
        let ds = pair.train.take(8);
        let norm = selfsup_data::batch::fit_normalization(&ds, &(0..8).collect::<Vec<_>>());
        let map = VarMap::new();
        let vb = params::seeded_var_builder(&map, 0, &Device::Cpu);
        let cfg = BackboneConfig::ConvNet {
            in_channels: 1,
            widths: vec![16, 32],
            convs_per_stage: 1,
        };
        let backbone = cfg.build(vb.pp(BACKBONE_PREFIX)).unwrap();
        (ds, norm, map, vb, cfg, backbone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfsup_backbones::checkpoint::HEAD_PREFIX;
    use selfsup_core::train::LrSchedule;
    use selfsup_core::train::Trainer;

    #[test]
    fn rotation_batch_layout_and_labels() {
        let img: Vec<u8> = (0..9).collect();
        let two: Vec<u8> = img
            .iter()
            .chain(img.iter().map(|v| v + 100).collect::<Vec<_>>().iter())
            .copied()
            .collect();
        let (px, y) = rotation_batch(&two, (1, 3, 3));
        assert_eq!(y, vec![0, 1, 2, 3, 0, 1, 2, 3]);
        assert_eq!(&px[..9], &img[..], "label 0 is the original");
        let src = Image::new(1, 3, 3, img.clone());
        for k in 0..4 {
            assert_eq!(&px[9 * k..9 * (k + 1)], &rotate90(&src, k).data[..]);
        }
        assert_eq!(px[36], 100, "second image follows the first's four views");
    }

    #[test]
    fn loss_falls_on_a_tiny_batch() {
        let (ds, norm, map, vb, cfg, backbone) = crate::tiny::setup();
        let ctx = ObjectiveContext {
            backbone: Arc::new(cfg.clone()),
            feature_dim: backbone.feature_dim(),
            online: map.clone(),
            seed: 0,
            device: Device::Cpu,
            image_shape: ds.image_shape(),
        };
        let obj = build_objective("rotation", &ctx, vb.pp(HEAD_PREFIX)).unwrap();
        let mut tr =
            Trainer::new(map.all_vars(), LrSchedule::new(1e-2, 0, 60), 0.0, "test").unwrap();
        let loss = || {
            obj.loss(
                backbone.as_ref(),
                ds.pixels(),
                ds.image_shape(),
                &norm,
                true,
            )
            .unwrap()
        };
        let (first, _, seen) = loss();
        assert_eq!(seen, 32);
        let first = first.to_scalar::<f32>().unwrap();
        for _ in 0..60 {
            tr.step(&loss().0).unwrap();
        }
        let (last, acc, _) = loss();
        let last = last.to_scalar::<f32>().unwrap();
        assert!(last < first * 0.7, "loss {first} -> {last}");
        assert!(acc > 0.5, "rotation accuracy on the memorised batch {acc}");
        assert!(build_objective("nope", &ctx, vb.pp("x")).is_err());
    }
}
