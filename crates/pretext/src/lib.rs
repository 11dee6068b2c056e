//! selfsup-pretext pretrains an encoder on tasks whose labels come from the
//! images themselves. An [`Objective`] owns its head and turns a batch of
//! `u8` images into a loss; [`pretrain`] runs any objective over an unlabeled
//! pool with early stopping on the same objective's loss on held-out
//! unlabeled images, so no task label is ever read.
//!
//! The first task is [`Rotation`] (Gidaris et al., 2018, "RotNet"): every
//! image of a batch is shown at 0, 90, 180 and 270 degrees (counter-clockwise)
//! with labels 0..3, and a linear head on the backbone's features predicts
//! which.
//!
//! ```
//! use selfsup_pretext::rotation_batch;
//! let (px, y) = rotation_batch(&[1, 2, 3, 4], (1, 2, 2));
//! assert_eq!(y, vec![0, 1, 2, 3]);
//! assert_eq!(&px[4..8], &[2, 4, 1, 3]);
//! ```

use candle_core::{Device, Module, Tensor, D};
use candle_nn::{Linear, VarBuilder, VarMap};
use selfsup_augment::{apply_batch, apply_views, rotate90, CropFlip, Image, Pipeline};
use selfsup_backbones::checkpoint::{BACKBONE_PREFIX, HEAD_PREFIX};
use selfsup_backbones::{Backbone, BackboneConfig};
use selfsup_core::train::{fit_prefetched, FitConfig, FitReport};
use selfsup_core::{params, Error, Normalization, Result};
use selfsup_data::{batch, split, Dataset};
use serde::{Deserialize, Serialize};

/// Pretext names accepted by [`build_objective`].
pub const NAMES: [&str; 1] = ["rotation"];

/// A self-supervised objective: a head on the backbone plus a loss built
/// from unlabeled images.
pub trait Objective: Send + Sync {
    /// Method name as it appears in reports (`rotation`).
    fn name(&self) -> &'static str;
    /// Number of outputs of the head.
    fn head_outputs(&self) -> usize;
    /// Augmented views per source image the loss expects. With more than
    /// one, [`pretrain`] hands [`Objective::loss`] `views * n` images,
    /// view-major (all first views, then all second views, ...), made by
    /// [`PretrainConfig::view_augment`]; with one, the images after
    /// [`PretrainConfig::augment`].
    fn views(&self) -> usize {
        1
    }
    /// Called before the forward pass of every training step with the step
    /// number and the total (momentum encoders update their targets here,
    /// from the online weights the previous step left).
    fn before_step(&self, _step: u64, _total: u64) -> Result<()> {
        Ok(())
    }
    /// Loss, pretext accuracy, and the number of images the backbone saw,
    /// for contiguous `u8` images of `shape`.
    fn loss(
        &self,
        backbone: &dyn Backbone,
        pixels: &[u8],
        shape: (usize, usize, usize),
        norm: &Normalization,
        train: bool,
    ) -> Result<(Tensor, f64, usize)>;
}

/// What an objective may need to know when it is built.
#[derive(Clone)]
pub struct ObjectiveContext {
    /// The backbone's configuration (momentum encoders build a copy).
    pub backbone: BackboneConfig,
    /// The backbone's feature dimension.
    pub feature_dim: usize,
    /// All online variables (`backbone.*`, and `head.*` as they are made).
    pub online: VarMap,
    /// The run's seed.
    pub seed: u64,
    /// Where tensors live.
    pub device: Device,
}

/// Builds an objective from its context and a `VarBuilder` under `head.`.
pub type ObjectiveBuilder<'a> =
    &'a (dyn Fn(&ObjectiveContext, VarBuilder) -> Result<Box<dyn Objective>> + Sync);

/// Builds a named objective whose head reads `feature_dim` features.
pub fn build_objective(
    name: &str,
    feature_dim: usize,
    vb: VarBuilder,
) -> Result<Box<dyn Objective>> {
    match name {
        "rotation" => Ok(Box::new(Rotation::new(feature_dim, vb)?)),
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

/// Mean cross-entropy and accuracy of `logits` against `labels`.
pub fn classification_loss(logits: &Tensor, labels: &Tensor) -> Result<(Tensor, f64)> {
    let loss = candle_nn::loss::cross_entropy(logits, labels)?;
    let pred = logits.argmax(D::Minus1)?;
    let correct = pred
        .eq(labels)?
        .to_dtype(candle_core::DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok((loss, f64::from(correct) / labels.dim(0)? as f64))
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

/// How to pretrain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainConfig {
    /// Objective name (`rotation`).
    pub method: String,
    /// Optimisation settings (`batch_size` counts source images, before
    /// the objective multiplies them).
    pub fit: FitConfig,
    /// Fraction of the unlabeled pool held out for the validation loss.
    pub val_fraction: f64,
    /// Cap on held-out images (validation costs a forward pass each epoch).
    pub max_val: usize,
    /// Augmentation applied before a single-view objective.
    pub augment: CropFlip,
    /// Augmentation that makes each view of a multi-view objective.
    #[serde(default)]
    pub view_augment: Pipeline,
}

/// A pretrained encoder and its objective.
pub struct Pretrained {
    /// All variables (`backbone.*` and `head.*`).
    pub map: VarMap,
    /// The encoder.
    pub backbone: Box<dyn Backbone>,
    /// The objective with its head.
    pub objective: Box<dyn Objective>,
    /// The training history.
    pub report: FitReport,
    /// Objective accuracy on the held-out images at the end.
    pub val_accuracy: f64,
    /// Objective loss on the held-out images at the end.
    pub val_loss: f64,
    /// The monitor's value after each epoch (empty without a monitor).
    pub monitor: Vec<f64>,
}

/// A per-epoch probe of the encoder during pretraining (e.g. kNN accuracy
/// on the labeled images); it only reads, never trains.
pub type Monitor<'a> = &'a (dyn Fn(&dyn Backbone) -> Result<f64> + Sync);

/// Step number under which held-out views are drawn: fixed, so the
/// validation loss of every epoch sees the same views.
const VALIDATION_STEP: u64 = 1 << 38;

/// Mean objective loss and accuracy over `indices` of `ds`, eval mode.
/// Multi-view objectives get views from `view_augment` drawn under a fixed
/// seed; single-view ones get the plain images.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_objective(
    objective: &dyn Objective,
    backbone: &dyn Backbone,
    ds: &Dataset,
    indices: &[usize],
    norm: &Normalization,
    batch_size: usize,
    view_augment: &Pipeline,
    seed: u64,
) -> Result<(f64, f64)> {
    let (mut loss, mut acc, mut n) = (0.0, 0.0, 0usize);
    let shape = ds.image_shape();
    for (k, chunk) in indices.chunks(batch_size.max(1)).enumerate() {
        if chunk.len() < 2 && objective.views() > 1 {
            continue; // a contrastive loss needs a partner in the batch
        }
        let mut px = ds.pixels_of(chunk);
        if objective.views() > 1 {
            px = apply_views(
                view_augment,
                &px,
                shape,
                seed,
                VALIDATION_STEP + k as u64,
                objective.views(),
            );
        }
        let (l, a, _) = objective.loss(backbone, &px, shape, norm, false)?;
        loss += f64::from(l.to_scalar::<f32>()?) * chunk.len() as f64;
        acc += a * chunk.len() as f64;
        n += chunk.len();
    }
    Ok((loss / n.max(1) as f64, acc / n.max(1) as f64))
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
    let build =
        |ctx: &ObjectiveContext, vb: VarBuilder| build_objective(&cfg.method, ctx.feature_dim, vb);
    pretrain_with(
        cfg,
        backbone_cfg,
        ds,
        pool,
        norm,
        device,
        quiet,
        &build,
        None,
    )
}

/// Pretrains `backbone_cfg` with the objective `build` makes, on the images
/// `pool` of `ds` (their labels are never read). `monitor`, if given, runs
/// after every epoch; early stopping uses the objective's own loss on
/// held-out unlabeled images.
#[allow(clippy::too_many_arguments)]
pub fn pretrain_with(
    cfg: &PretrainConfig,
    backbone_cfg: &BackboneConfig,
    ds: &Dataset,
    pool: &[usize],
    norm: &Normalization,
    device: &Device,
    quiet: bool,
    build: ObjectiveBuilder,
    monitor: Option<Monitor>,
) -> Result<Pretrained> {
    if pool.len() < 2 {
        return Err(Error::invalid(
            "unlabeled pool",
            "pretraining needs at least 2 unlabeled images",
        ));
    }
    let seed = cfg.fit.seed;
    let map = VarMap::new();
    let vb = params::seeded_var_builder(&map, seed, device);
    let backbone = backbone_cfg.build(vb.pp(BACKBONE_PREFIX))?;
    let ctx = ObjectiveContext {
        backbone: backbone_cfg.clone(),
        feature_dim: backbone.feature_dim(),
        online: map.clone(),
        seed,
        device: device.clone(),
    };
    let objective = build(&ctx, vb.pp(HEAD_PREFIX))?;
    let views = objective.views();
    let (train_idx, mut val_idx) = split::holdout(pool, cfg.val_fraction, seed);
    val_idx.truncate(cfg.max_val.max(1));
    let shape = ds.image_shape();
    let eval_batch = cfg.fit.batch_size.max(64);
    // (loss, accuracy) of the objective on the held-out unlabeled images.
    let held_out = || {
        evaluate_objective(
            objective.as_ref(),
            backbone.as_ref(),
            ds,
            &val_idx,
            norm,
            eval_batch,
            &cfg.view_augment,
            seed,
        )
    };
    let mut monitored = Vec::new();
    let mut validate = || -> Result<f64> {
        if let Some(m) = monitor {
            let v = m(backbone.as_ref())?;
            if !quiet {
                eprintln!(
                    "pretrain/{}: epoch {} kNN monitor {:.1}%",
                    cfg.method,
                    monitored.len() + 1,
                    100.0 * v
                );
            }
            monitored.push(v);
        }
        Ok(held_out()?.0)
    };
    let mut fit_cfg = cfg.fit.clone();
    // Losses over the pairs of a batch need every batch full.
    fit_cfg.drop_last |= views > 1 && train_idx.len() >= 2 * fit_cfg.batch_size;
    let total = (train_idx.len() / fit_cfg.batch_size.max(1)).max(1) * fit_cfg.epochs;
    let report = fit_prefetched(
        &fit_cfg,
        &format!("pretrain/{}", cfg.method),
        train_idx.len(),
        params::trainable_vars(&map)
            .into_iter()
            .map(|(_, v)| v)
            .collect(),
        &map,
        quiet,
        |batch_items, step| {
            let idx: Vec<usize> = batch_items.iter().map(|&i| train_idx[i]).collect();
            let px = ds.pixels_of(&idx);
            Ok(if views > 1 {
                apply_views(&cfg.view_augment, &px, shape, seed, step, views)
            } else {
                apply_batch(&cfg.augment, &px, shape, seed, step)
            })
        },
        |px: Vec<u8>, step| {
            objective.before_step(step, total as u64)?;
            let (loss, _, images) = objective.loss(backbone.as_ref(), &px, shape, norm, true)?;
            Ok((loss, images))
        },
        Some(&mut validate),
    )?;
    let (val_loss, val_accuracy) = held_out()?;
    tracing::info!(
        method = cfg.method,
        val_loss,
        val_accuracy,
        "pretraining done"
    );
    Ok(Pretrained {
        map,
        backbone,
        objective,
        report,
        val_accuracy,
        val_loss,
        monitor: monitored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let obj = build_objective("rotation", backbone.feature_dim(), vb.pp(HEAD_PREFIX)).unwrap();
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
        assert!(build_objective("jigsaw", 4, vb.pp("x")).is_err());
    }
}
