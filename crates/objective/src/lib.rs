//! selfsup-objective is the seam every pretraining method plugs into. An
//! [`Objective`] owns its head and turns a batch of `u8` images into a
//! loss; [`pretrain_with`] runs any objective over an unlabeled pool with
//! early stopping on the same objective's loss on held-out unlabeled
//! images, so no task label is ever read. The pretext tasks
//! (`selfsup-pretext`) and the two-view methods (`selfsup-contrastive`)
//! both implement it, and neither depends on the other; a method of your
//! own needs only this crate.
//!
//! The encoder comes from a [`BuildBackbone`]: the built-in
//! [`selfsup_backbones::BackboneConfig`], or any network of your own.

use candle_core::{Device, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use selfsup_augment::{apply_batch, apply_views, CropFlip, Pipeline};
use selfsup_backbones::checkpoint::{BACKBONE_PREFIX, HEAD_PREFIX};
use selfsup_backbones::{Backbone, BuildBackbone};
use selfsup_core::train::{
    fit_prefetched, EpochCheckpoint, FitConfig, FitReport, FitRun, Saved, WithMeta,
};
use selfsup_core::{params, Error, Normalization, Result};
use selfsup_data::{split, Dataset};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

/// A self-supervised objective: a head on the backbone plus a loss built
/// from unlabeled images.
pub trait Objective: Send + Sync {
    /// Method name as it appears in reports (`rotation`).
    fn name(&self) -> &'static str;
    /// Number of outputs of the head.
    fn head_outputs(&self) -> usize;
    /// Augmented views per source image the loss expects. With more than
    /// one, [`pretrain_with`] hands [`Objective::loss`] `views * n` images,
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
    /// State kept outside the optimised variables (a momentum network, a
    /// queue of keys), for mid-training checkpoints.
    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }
    /// Restores what [`Objective::state`] returned.
    fn restore_state(&self, _saved: &HashMap<String, Tensor>) -> Result<()> {
        Ok(())
    }
    /// For objectives that reconstruct pixels: the input as the encoder saw
    /// it, the reconstruction and the original, each (B, C, H', W') in the
    /// normalised input space, of images `x` (normalised with `norm`),
    /// masks drawn under `seed` — what the run's reconstruction figure
    /// shows. `None` for every other objective.
    fn reconstruction(
        &self,
        _backbone: &dyn Backbone,
        _x: &Tensor,
        _norm: &Normalization,
        _seed: u64,
    ) -> Result<Option<[Tensor; 3]>> {
        Ok(None)
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
    /// What builds the backbone (momentum encoders build a copy).
    pub backbone: Arc<dyn BuildBackbone>,
    /// The backbone's feature dimension.
    pub feature_dim: usize,
    /// All online variables (`backbone.*`, and `head.*` as they are made).
    pub online: VarMap,
    /// The run's seed.
    pub seed: u64,
    /// Where tensors live.
    pub device: Device,
    /// (channels, height, width) of the images the objective will see.
    pub image_shape: (usize, usize, usize),
}

/// Builds an objective from its context and a `VarBuilder` under `head.`.
pub type ObjectiveBuilder<'a> =
    &'a (dyn Fn(&ObjectiveContext, VarBuilder) -> Result<Box<dyn Objective>> + Sync);

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

/// Unlabeled images: the images `pool` of `ds` (labels never read),
/// normalised with `norm`.
#[derive(Clone, Copy)]
pub struct Unlabeled<'a> {
    /// The dataset.
    pub ds: &'a Dataset,
    /// Which of its images.
    pub pool: &'a [usize],
    /// The input normalisation.
    pub norm: &'a Normalization,
}

/// Mean objective loss and accuracy over the images `data`, eval mode.
/// Multi-view objectives get views from `view_augment` drawn under a fixed
/// seed; single-view ones get the plain images.
pub fn evaluate_objective(
    objective: &dyn Objective,
    backbone: &dyn Backbone,
    data: Unlabeled,
    batch_size: usize,
    view_augment: &Pipeline,
    seed: u64,
) -> Result<(f64, f64)> {
    let Unlabeled {
        ds,
        pool: indices,
        norm,
    } = data;
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

/// What may watch or keep a pretraining run besides the loop itself.
#[derive(Default, Clone, Copy)]
pub struct Hooks<'a> {
    /// Runs after every epoch (its values are reported, never used to
    /// choose anything).
    pub monitor: Option<Monitor<'a>>,
    /// Keeps the state after every epoch and continues from what a killed
    /// run left (with the objective's own state and the monitor's history).
    pub checkpoint: Option<&'a dyn EpochCheckpoint>,
}

/// An [`EpochCheckpoint`] that also keeps the objective's state (a
/// momentum network, a queue of keys).
struct WithObjective<'a> {
    inner: &'a dyn EpochCheckpoint,
    objective: &'a dyn Objective,
}

impl EpochCheckpoint for WithObjective<'_> {
    fn load(&self) -> Result<Option<Saved>> {
        let Some(saved) = self.inner.load()? else {
            return Ok(None);
        };
        let prefix = "objective.";
        let own: HashMap<String, Tensor> = saved
            .tensors
            .iter()
            .filter_map(|(k, t)| k.strip_prefix(prefix).map(|k| (k.to_string(), t.clone())))
            .collect();
        self.objective.restore_state(&own)?;
        Ok(Some(saved))
    }

    fn save(&self, mut saved: Saved) -> Result<()> {
        for (k, t) in self.objective.state()? {
            saved.tensors.insert(format!("objective.{k}"), t);
        }
        self.inner.save(saved)
    }

    fn due(&self, epochs_done: usize) -> bool {
        self.inner.due(epochs_done)
    }
}

/// Pretrains the backbone `backbone` builds with the objective `build`
/// makes, on the unlabeled images `data`. Early stopping uses the
/// objective's own loss on held-out unlabeled images; `hooks` may add a
/// per-epoch monitor and mid-training checkpoints.
pub fn pretrain_with(
    cfg: &PretrainConfig,
    backbone: Arc<dyn BuildBackbone>,
    data: Unlabeled,
    device: &Device,
    quiet: bool,
    build: ObjectiveBuilder,
    hooks: Hooks,
) -> Result<Pretrained> {
    let Unlabeled { ds, pool, norm } = data;
    let monitor = hooks.monitor;
    let backbone_builder = backbone;
    if pool.len() < 2 {
        return Err(Error::invalid(
            "unlabeled pool",
            "pretraining needs at least 2 unlabeled images",
        ));
    }
    let seed = cfg.fit.seed;
    let map = VarMap::new();
    let vb = params::seeded_var_builder(&map, seed, device);
    let backbone = backbone_builder.build_backbone(vb.pp(BACKBONE_PREFIX))?;
    let ctx = ObjectiveContext {
        backbone: backbone_builder.clone(),
        feature_dim: backbone.feature_dim(),
        online: map.clone(),
        seed,
        device: device.clone(),
        image_shape: ds.image_shape(),
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
            Unlabeled {
                ds,
                pool: &val_idx,
                norm,
            },
            eval_batch,
            &cfg.view_augment,
            seed,
        )
    };
    let monitored = RefCell::new(Vec::new());
    let mut validate = || -> Result<f64> {
        if let Some(m) = monitor {
            let v = m(backbone.as_ref())?;
            if !quiet {
                selfsup_core::progress::line(format!(
                    "pretrain/{}: epoch {} kNN monitor {:.1}%",
                    cfg.method,
                    monitored.borrow().len() + 1,
                    100.0 * v
                ));
            }
            monitored.borrow_mut().push(v);
        }
        Ok(held_out()?.0)
    };
    // The monitor's history rides along with the loop's state, and the
    // objective's own tensors with both.
    let with_monitor = hooks.checkpoint.map(|inner| WithMeta {
        inner,
        key: "monitor",
        state: &monitored,
    });
    let checkpoint = with_monitor.as_ref().map(|inner| WithObjective {
        inner,
        objective: objective.as_ref(),
    });
    let mut fit_cfg = cfg.fit.clone();
    // Losses over the pairs of a batch need every batch full, and can do
    // nothing with a last batch of one image.
    let (n, b) = (train_idx.len(), fit_cfg.batch_size.max(1));
    fit_cfg.drop_last |= views > 1 && (n >= 2 * b || (n > b && n % b == 1));
    let total = (train_idx.len() / fit_cfg.batch_size.max(1)).max(1) * fit_cfg.epochs;
    let report = fit_prefetched(
        FitRun {
            cfg: &fit_cfg,
            stage: &format!("pretrain/{}", cfg.method),
            n_items: train_idx.len(),
            vars: params::trainable_vars(&map)
                .into_iter()
                .map(|(_, v)| v)
                .collect(),
            map: &map,
            quiet,
            checkpoint: checkpoint.as_ref().map(|c| c as &dyn EpochCheckpoint),
        },
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
    tracing::debug!(
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
        monitor: monitored.into_inner(),
    })
}
