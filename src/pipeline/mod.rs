//! The end-to-end pipeline: pretrain → transfer → evaluate, and the single
//! stages it is made of (also used by `cargo xtask pretrain | transfer |
//! evaluate`).
//!
//! Output layout under `out`:
//!
//! ```text
//! report.json, report.md
//! figures/<method>-loss.png, figures/<method>-embedding.png
//! pretrain-<method>/{model.safetensors, config.json}        (seed<s>/pretrain-<method> with pretrain_per_seed)
//! seed<s>/k<K>/<method>-finetune/{model.safetensors, config.json}
//! seed<s>/k<K>/<method>-lpft/{model.safetensors, config.json}      (unless lpft is off)
//! seed<s>/k<K>/<method>-distill/{model.safetensors, config.json}   (with distill_epochs > 0)
//! seed<s>/k<K>/<method>-fixmatch/{model.safetensors, config.json}  (with fixmatch_epochs > 0)
//! ```
//!
//! Label hygiene: the only labels read before the final evaluation are the
//! K per class of the seed's stratified split. Pretraining reads none (its
//! early stopping uses the pretext loss on held-out unlabeled images), the
//! kNN's k is chosen by leave-one-out on the K labeled images, and the test
//! set is touched only to compute the reported accuracies. The `distill`
//! protocol trains on the teacher's labels of the unlabeled images; their
//! true labels are read only afterwards, to report how often the teacher
//! was right (`pseudo_label_accuracy` in the stage's config.json). The
//! `fixmatch` protocol labels them with the model's own predictions and
//! never reads their true labels.

use crate::augment::{CropFlip, Pipeline};
use crate::backbones::checkpoint::{self as ckpt, StageConfig};
use crate::backbones::BackboneConfig;
use crate::contrastive::SiameseConfig;
use crate::core::report::{Figure, PretrainSummary, Report, ResultRow, StageTime};
use crate::core::train::FitConfig;
use crate::core::{fsutil, metrics, rng, Error, Normalization, Result};
use crate::data::{batch, split, Dataset, DatasetPair};
use crate::finetune::{self, DistillConfig, FixMatchConfig, TransferConfig};
use crate::methods;
use crate::pretext::{self, PretrainConfig};
use candle_core::Device;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Every tunable number of a run. The defaults are the recipe of
/// `cargo xtask pipeline` (sized for about 10 minutes on 2 CPU cores).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Recipe {
    /// Keep only these classes (by name, in this order) of the dataset;
    /// empty = all. Selected classes are relabelled 0..n.
    #[serde(default)]
    pub classes: Vec<String>,
    /// With `classes`: pretrain on the unlabeled training images of every
    /// class (the point of self-supervision: images of other classes are
    /// free data), not just the selected ones. The input normalisation is
    /// then fitted on all training images, for pretraining and transfer.
    pub pretrain_all_classes: bool,
    /// Convnet stage widths (ignored by other backbones).
    pub convnet_widths: Vec<usize>,
    /// Convnet 3x3 conv layers per stage.
    pub convnet_depth: usize,
    /// ResNet-18 base width (64 is the standard network).
    pub resnet_width: usize,
    /// MobileNetV2 width multiplier (1.0 is the standard network).
    pub mobilenet_width: f64,
    /// Maximum pretraining epochs (early stopping may end sooner).
    pub pretrain_epochs: usize,
    /// Source images per pretraining step (rotation shows each 4 times).
    pub pretrain_batch: usize,
    /// Peak pretraining learning rate.
    pub pretrain_lr: f64,
    /// Pretraining epochs without validation improvement before stopping.
    pub pretrain_patience: usize,
    /// At most this many unlabeled images are used for pretraining (`None`:
    /// the whole pool).
    pub unlabeled: Option<usize>,
    /// Fraction of the pool held out for the pretext validation loss.
    pub val_fraction: f64,
    /// Cap on held-out validation images.
    pub max_val: usize,
    /// Fine-tune / scratch epochs over the K labeled images.
    pub transfer_epochs: usize,
    /// Also run the `lpft` protocol for every method and scratch: linear
    /// probe, then fine-tune (the head starts from a logistic regression on
    /// the frozen features instead of random weights; same epochs, learning
    /// rate and augmentation as `finetune`).
    pub lpft: bool,
    /// Fine-tune / scratch batch size.
    pub transfer_batch: usize,
    /// Fine-tune / scratch learning rate.
    pub transfer_lr: f64,
    /// Fine-tune / scratch augmentation: `None` (or the preset
    /// `crop-flip`) is a padded random crop (`crop_pad`) and flip (`flip`);
    /// otherwise a preset name (e.g. `flip-zoom-contrast`) or an explicit
    /// pipeline.
    pub transfer_augment: Option<ViewAugment>,
    /// Fine-tune / scratch early stopping: hold out `transfer_val_fraction`
    /// of each class's labeled images and stop after this many epochs
    /// without improvement of their error rate (ties broken by
    /// cross-entropy), keeping the best epoch's weights; epochs inside the
    /// warmup do not count.
    /// `None` trains on every labeled image for all epochs.
    pub transfer_patience: Option<usize>,
    /// Fraction of the labeled images held out for `transfer_patience`.
    pub transfer_val_fraction: f64,
    /// AdamW weight decay everywhere but the linear probe.
    pub weight_decay: f64,
    /// Linear-probe optimiser steps (full batch).
    pub linear_steps: usize,
    /// Linear-probe learning rate.
    pub linear_lr: f64,
    /// Linear-probe weight decay.
    pub linear_weight_decay: f64,
    /// kNN candidate k values.
    pub knn_ks: Vec<usize>,
    /// Random-crop padding (pixels) for pretraining and transfer.
    pub crop_pad: usize,
    /// Random horizontal flips.
    pub flip: bool,
    /// Inference batch size.
    pub eval_batch: usize,
    /// Pretrain separately for every seed (independent runs, 3x the cost
    /// for 3 seeds) instead of once per run. When shared, the pretraining
    /// pool excludes every seed's labeled images and the seeds vary the
    /// split, the transfer initialisation and training.
    pub pretrain_per_seed: bool,
    /// Maximum pretraining epochs of the two-view methods (simclr, byol,
    /// ...), which learn more slowly per epoch than rotation.
    pub contrastive_epochs: usize,
    /// Source images per two-view step (each is seen twice).
    pub contrastive_batch: usize,
    /// Peak learning rate of the two-view methods.
    pub contrastive_lr: f64,
    /// Early-stopping patience of the two-view methods (their held-out loss
    /// is measured on fixed views).
    pub contrastive_patience: usize,
    /// Projector, temperatures, momentum, queue, loss weights.
    pub siamese: SiameseConfig,
    /// View augmentation of the two-view methods: `auto` (the SimCLR preset
    /// for the image size: `simclr-mnist` for gray images up to 28 pixels,
    /// else `simclr-cifar`), a preset name, or the pipeline itself.
    pub view_augment: ViewAugment,
    /// After every pretraining epoch, report the leave-one-out kNN accuracy
    /// of the encoder's features on the seed's K labeled images.
    pub knn_monitor: bool,
    /// Epochs of the `distill` protocol (0 = off): each method's fine-tuned
    /// classifier labels the unlabeled images with soft labels and a copy
    /// of it trains on them (SimCLR v2's self-distillation; scratch gets
    /// the same treatment, so the comparison stays fair).
    pub distill_epochs: usize,
    /// Distillation batch size.
    pub distill_batch: usize,
    /// Distillation peak learning rate.
    pub distill_lr: f64,
    /// Softmax temperature of the teacher's soft labels and of the
    /// student's logits.
    pub distill_temperature: f64,
    /// Share of each distillation epoch made of the K labeled images (with
    /// their true labels, repeated to reach it).
    pub distill_labeled_share: f64,
    /// Augmentation of the student's inputs (Noisy Student: the student
    /// learns under noise the teacher did not see): `None` uses the SimCLR
    /// view preset for the image size (as `view_augment`'s `auto`);
    /// otherwise a preset name (`crop-flip` is the fine-tune default) or a
    /// pipeline, as for `transfer_augment`.
    pub distill_augment: Option<ViewAugment>,
    /// Which classifier teaches the `distill` student: `finetune`, `lpft`
    /// (needs `lpft`), or `auto`: `lpft` for pretrained methods when it
    /// runs, else `finetune` (always `finetune` for scratch, whose random
    /// features make a poor probe).
    pub distill_teacher: String,
    /// Epochs (passes over the unlabeled images) of the `fixmatch`
    /// protocol (0 = off): semi-supervised training in which the classifier
    /// labels weak views of the unlabeled images itself, online, and learns
    /// strong views of the confident ones (Sohn et al. 2020). Scratch gets
    /// the same treatment.
    pub fixmatch_epochs: usize,
    /// Unlabeled images per `fixmatch` step.
    pub fixmatch_batch: usize,
    /// Labeled images per `fixmatch` step (drawn with replacement).
    pub fixmatch_labeled_batch: usize,
    /// `fixmatch` peak learning rate.
    pub fixmatch_lr: f64,
    /// Least confidence for an unlabeled image's own prediction to become
    /// its label in a step.
    pub fixmatch_threshold: f64,
    /// Weight of the unlabeled loss.
    pub fixmatch_unlabeled_weight: f64,
    /// The strong augmentation: `None` uses the SimCLR view preset for the
    /// image size; otherwise as `distill_augment`. The weak one is the
    /// fine-tune's (`transfer_augment`).
    pub fixmatch_augment: Option<ViewAugment>,
    /// Which classifier `fixmatch` starts from: `finetune`, `lpft` or
    /// `auto`, chosen as for `distill_teacher`.
    pub fixmatch_init: String,
    /// Distribution alignment of `fixmatch`'s pseudo-labels (see
    /// [`FixMatchConfig::distribution_alignment`]).
    pub fixmatch_align: bool,
    /// Also run the semi-supervised protocols (`distill`, `fixmatch`) for
    /// scratch (the default, so each method's semi-supervised figure has its
    /// from-scratch counterpart in the same report). Turning it off saves
    /// their cost when the scratch figures are already known; the report
    /// then compares against scratch's other protocols only.
    pub scratch_semi_supervised: bool,
}

/// How the two-view methods make their views.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ViewAugment {
    /// `auto` or a preset name (`simclr-mnist`, `simclr-cifar`, `none`).
    Preset(String),
    /// An explicit pipeline.
    Custom(Pipeline),
}

impl ViewAugment {
    /// The pipeline for images of `channels` x `size` x `size`.
    pub fn resolve(&self, channels: usize, size: usize) -> Result<Pipeline> {
        match self {
            ViewAugment::Custom(p) => Ok(p.clone()),
            ViewAugment::Preset(name) if name == "auto" => Ok(Pipeline::simclr_for(channels, size)),
            ViewAugment::Preset(name) => Pipeline::preset(name).ok_or_else(|| {
                Error::invalid(
                    "view_augment",
                    format!("unknown preset {name:?}; available: auto, simclr-mnist, simclr-cifar, none"),
                )
            }),
        }
    }
}

impl Default for Recipe {
    fn default() -> Self {
        Self {
            classes: Vec::new(),
            pretrain_all_classes: true,
            convnet_widths: vec![16, 32, 64],
            convnet_depth: 2,
            resnet_width: 64,
            mobilenet_width: 1.0,
            pretrain_epochs: 3,
            pretrain_batch: 64,
            pretrain_lr: 1e-3,
            pretrain_patience: 2,
            unlabeled: Some(4500),
            val_fraction: 0.05,
            max_val: 500,
            transfer_epochs: 60,
            lpft: true,
            transfer_batch: 32,
            transfer_lr: 1e-3,
            transfer_augment: None,
            transfer_patience: None,
            transfer_val_fraction: 0.1,
            weight_decay: 5e-4,
            linear_steps: 300,
            linear_lr: 0.01,
            linear_weight_decay: 1e-3,
            knn_ks: vec![1, 3, 5, 10, 20],
            crop_pad: 2,
            flip: true,
            eval_batch: 128,
            pretrain_per_seed: false,
            contrastive_epochs: 8,
            contrastive_batch: 256,
            contrastive_lr: 2e-3,
            contrastive_patience: 5,
            siamese: SiameseConfig::default(),
            view_augment: ViewAugment::Preset("auto".into()),
            knn_monitor: true,
            distill_epochs: 0,
            distill_batch: 128,
            distill_lr: 1e-3,
            distill_temperature: 1.0,
            distill_labeled_share: 0.25,
            distill_augment: None,
            distill_teacher: "auto".into(),
            fixmatch_epochs: 0,
            fixmatch_batch: 128,
            fixmatch_labeled_batch: 32,
            fixmatch_lr: 1e-3,
            fixmatch_threshold: 0.95,
            fixmatch_unlabeled_weight: 1.0,
            fixmatch_augment: None,
            fixmatch_init: "auto".into(),
            fixmatch_align: false,
            scratch_semi_supervised: true,
        }
    }
}

impl Recipe {
    fn augment(&self) -> CropFlip {
        CropFlip {
            pad: self.crop_pad,
            flip: self.flip,
        }
    }

    /// The backbone configuration for `name` with this recipe's sizes.
    pub fn backbone(&self, name: &str, in_channels: usize) -> Result<BackboneConfig> {
        Ok(match BackboneConfig::from_name(name, in_channels)? {
            BackboneConfig::ConvNet { in_channels, .. } => BackboneConfig::ConvNet {
                in_channels,
                widths: self.convnet_widths.clone(),
                convs_per_stage: self.convnet_depth,
            },
            BackboneConfig::ResNet18 { in_channels, .. } => BackboneConfig::ResNet18 {
                in_channels,
                base_width: self.resnet_width,
            },
            BackboneConfig::MobileNetV2 { in_channels, .. } => BackboneConfig::MobileNetV2 {
                in_channels,
                width_multiplier: self.mobilenet_width,
            },
        })
    }

    fn pretrain_config(
        &self,
        method: &str,
        seed: u64,
        shape: (usize, usize, usize),
    ) -> Result<PretrainConfig> {
        let two_view = methods::is_two_view(method);
        let pick = |a, b| if two_view { a } else { b };
        Ok(PretrainConfig {
            method: method.to_string(),
            fit: FitConfig {
                epochs: pick(self.contrastive_epochs, self.pretrain_epochs),
                batch_size: pick(self.contrastive_batch, self.pretrain_batch),
                lr: if two_view {
                    self.contrastive_lr
                } else {
                    self.pretrain_lr
                },
                weight_decay: self.weight_decay,
                warmup_fraction: 0.05,
                patience: Some(pick(self.contrastive_patience, self.pretrain_patience)),
                seed,
                drop_last: two_view,
            },
            val_fraction: self.val_fraction,
            max_val: self.max_val,
            augment: self.augment(),
            view_augment: if two_view {
                self.view_augment.resolve(shape.0, shape.1)?
            } else {
                Pipeline::default()
            },
        })
    }

    /// The protocol whose classifier teaches a distillation student
    /// (`finetune` or `lpft`), from `distill_teacher`; `pretrained` is
    /// false for scratch. Checking a recipe asks for a pretrained method,
    /// the case with the most to check.
    pub fn distill_teacher_for(&self, pretrained: bool) -> Result<&'static str> {
        self.start_protocol(&self.distill_teacher, "distill_teacher", pretrained)
    }

    /// The protocol whose classifier `fixmatch` starts from, from
    /// `fixmatch_init`, as [`Recipe::distill_teacher_for`].
    pub fn fixmatch_init_for(&self, pretrained: bool) -> Result<&'static str> {
        self.start_protocol(&self.fixmatch_init, "fixmatch_init", pretrained)
    }

    fn start_protocol(&self, choice: &str, field: &str, pretrained: bool) -> Result<&'static str> {
        match choice {
            "finetune" => Ok("finetune"),
            "lpft" if self.lpft => Ok("lpft"),
            "lpft" => Err(Error::invalid(
                field,
                "\"lpft\" needs the lpft protocol, which this recipe turns off",
            )),
            "auto" if self.lpft && pretrained => Ok("lpft"),
            "auto" => Ok("finetune"),
            other => Err(Error::invalid(
                field,
                format!("unknown choice {other:?}; available: auto, finetune, lpft"),
            )),
        }
    }

    /// The fine-tune / scratch augmentation.
    pub fn transfer_pipeline(&self) -> Result<Pipeline> {
        self.labeled_pipeline(&self.transfer_augment, "transfer_augment")
    }

    /// The distillation student's augmentation for images of `channels` x
    /// `size` x `size`.
    pub fn distill_pipeline(&self, channels: usize, size: usize) -> Result<Pipeline> {
        match &self.distill_augment {
            None => Ok(Pipeline::simclr_for(channels, size)),
            some => self.labeled_pipeline(some, "distill_augment"),
        }
    }

    fn labeled_pipeline(&self, choice: &Option<ViewAugment>, field: &str) -> Result<Pipeline> {
        match choice {
            None => Ok(Pipeline {
                ops: vec![crate::augment::Op::CropFlip(self.augment())],
            }),
            Some(ViewAugment::Preset(name)) if name == "crop-flip" => Ok(Pipeline {
                ops: vec![crate::augment::Op::CropFlip(self.augment())],
            }),
            Some(ViewAugment::Custom(p)) => Ok(p.clone()),
            Some(ViewAugment::Preset(name)) => Pipeline::preset(name).ok_or_else(|| {
                Error::invalid(
                    field,
                    format!(
                        "unknown preset {name:?}; available: crop-flip, {}",
                        Pipeline::PRESETS.join(", ")
                    ),
                )
            }),
        }
    }

    /// The `finetune` protocol's settings for `seed` (also those of the
    /// linear probe and kNN).
    pub fn transfer_config(&self, seed: u64) -> Result<TransferConfig> {
        Ok(TransferConfig {
            probe_init: false,
            fit: FitConfig {
                epochs: self.transfer_epochs,
                batch_size: self.transfer_batch,
                lr: self.transfer_lr,
                weight_decay: self.weight_decay,
                warmup_fraction: 0.1,
                patience: self.transfer_patience,
                seed,
                drop_last: false,
            },
            augment: self.transfer_pipeline()?,
            val_fraction: self.transfer_val_fraction,
            linear_steps: self.linear_steps,
            linear_lr: self.linear_lr,
            linear_weight_decay: self.linear_weight_decay,
            knn_ks: self.knn_ks.clone(),
            eval_batch: self.eval_batch,
        })
    }

    /// The `distill` protocol's settings for `seed` and images of `shape`
    /// (C, H, W).
    pub fn distill_config(&self, seed: u64, shape: (usize, usize, usize)) -> Result<DistillConfig> {
        Ok(DistillConfig {
            fit: FitConfig {
                epochs: self.distill_epochs,
                batch_size: self.distill_batch,
                lr: self.distill_lr,
                weight_decay: self.weight_decay,
                warmup_fraction: 0.05,
                patience: None,
                seed,
                drop_last: false,
            },
            augment: self.distill_pipeline(shape.0, shape.1)?,
            temperature: self.distill_temperature,
            labeled_share: self.distill_labeled_share,
            eval_batch: self.eval_batch,
        })
    }

    /// The `fixmatch` protocol's settings for `seed` and images of `shape`
    /// (C, H, W).
    pub fn fixmatch_config(
        &self,
        seed: u64,
        shape: (usize, usize, usize),
    ) -> Result<FixMatchConfig> {
        let strong = match &self.fixmatch_augment {
            None => Pipeline::simclr_for(shape.0, shape.1),
            some => self.labeled_pipeline(some, "fixmatch_augment")?,
        };
        Ok(FixMatchConfig {
            fit: FitConfig {
                epochs: self.fixmatch_epochs,
                batch_size: self.fixmatch_batch,
                lr: self.fixmatch_lr,
                weight_decay: self.weight_decay,
                warmup_fraction: 0.05,
                patience: None,
                seed,
                drop_last: false,
            },
            labeled_batch: self.fixmatch_labeled_batch,
            weak: self.transfer_pipeline()?,
            strong,
            threshold: self.fixmatch_threshold,
            unlabeled_weight: self.fixmatch_unlabeled_weight,
            eval_batch: self.eval_batch,
            distribution_alignment: self.fixmatch_align,
        })
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Dataset name or directory.
    pub dataset: String,
    /// Backbone name.
    pub backbone: String,
    /// Pretraining methods.
    pub pretext: Vec<String>,
    /// Label budgets K.
    pub labels_per_class: Vec<usize>,
    /// Seeds; each gets its own split, pretraining and transfer.
    pub seeds: Vec<u64>,
    /// The numbers.
    pub recipe: Recipe,
    /// Output directory.
    pub out: PathBuf,
    /// Compute device.
    pub device: Device,
    /// No progress bars.
    pub quiet: bool,
    /// Use only the first N training images (tests, quick looks).
    pub max_train: Option<usize>,
    /// Use only the first N test images (tests, quick looks).
    pub max_test: Option<usize>,
    /// Reuse each finished pretraining stage found in `out` whose settings
    /// match ([`reuse_pretraining`]) instead of training it again;
    /// transfer and evaluation always run.
    pub resume: bool,
}

/// A loaded dataset with its normalisation (fitted on training pixels, no
/// labels involved).
pub struct Prepared {
    /// Train and test sets.
    pub pair: DatasetPair,
    /// Input normalisation.
    pub norm: Normalization,
    /// With a class selection that pretrains on every class: the whole
    /// training set.
    pub all_classes: Option<AllClasses>,
}

/// The training set before a class selection, kept as the pretraining
/// source.
pub struct AllClasses {
    /// The dataset's name without the selection.
    pub name: String,
    /// Every training image.
    pub train: Dataset,
    /// For each image of the selected training set, its index in `train`.
    pub index: Vec<usize>,
}

/// Loads (and optionally truncates) a dataset.
pub fn prepare(
    dataset: &str,
    max_train: Option<usize>,
    max_test: Option<usize>,
) -> Result<Prepared> {
    let mut pair = crate::data::load(dataset)?;
    if let Some(n) = max_train {
        pair.train = pair.train.take(n);
    }
    if let Some(n) = max_test {
        pair.test = pair.test.take(n);
    }
    if pair.train.labels().is_none() || pair.test.labels().is_none() {
        return Err(Error::invalid(
            "--dataset",
            format!("{dataset} has no labels; transfer needs a labeled dataset"),
        ));
    }
    let (_, h, w) = pair.train.image_shape();
    if h != w || h < 8 {
        return Err(Error::invalid(
            "--dataset",
            format!("{dataset}: images are {h}x{w}; selfsup needs square images of at least 8x8"),
        ));
    }
    let all: Vec<usize> = (0..pair.train.len()).collect();
    let norm = batch::fit_normalization(&pair.train, &all);
    Ok(Prepared {
        pair,
        norm,
        all_classes: None,
    })
}

/// Keeps only the named classes of both splits (relabelled 0..n in the
/// given order); no-op when `classes` is empty. With `keep_all`, the whole
/// training set stays available as the pretraining source
/// ([`Prepared::all_classes`]) and the normalisation fitted on it is kept;
/// otherwise the normalisation is refitted on the selection.
pub fn select_classes(prep: Prepared, classes: &[String], keep_all: bool) -> Result<Prepared> {
    if classes.is_empty() {
        return Ok(prep);
    }
    let names = prep.pair.train.class_names();
    let map: Vec<usize> = classes
        .iter()
        .map(|c| {
            names.iter().position(|n| n == c).ok_or_else(|| {
                Error::invalid(
                    "--classes",
                    format!(
                        "{} has no class `{c}`; its classes include: {}",
                        prep.pair.name,
                        names
                            .iter()
                            .take(12)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
        })
        .collect::<Result<_>>()?;
    let pick = |ds: &Dataset| -> Result<(Dataset, Vec<usize>)> {
        let labels = ds.labels().expect("prepare checked labels");
        let idx: Vec<usize> = (0..ds.len())
            .filter(|&i| map.contains(&(labels[i] as usize)))
            .collect();
        let relabel = idx
            .iter()
            .map(|&i| map.iter().position(|&m| m == labels[i] as usize).unwrap() as u32)
            .collect();
        Ok((ds.subset(&idx).relabel(relabel, classes.to_vec())?, idx))
    };
    let (train, index) = pick(&prep.pair.train)?;
    let (test, _) = pick(&prep.pair.test)?;
    let pair = DatasetPair::new(
        format!("{}[{}]", prep.pair.name, classes.join(",")),
        train,
        test,
    )?;
    if keep_all {
        return Ok(Prepared {
            pair,
            norm: prep.norm,
            all_classes: Some(AllClasses {
                name: prep.pair.name,
                train: prep.pair.train,
                index,
            }),
        });
    }
    let all: Vec<usize> = (0..pair.train.len()).collect();
    let norm = batch::fit_normalization(&pair.train, &all);
    Ok(Prepared {
        pair,
        norm,
        all_classes: None,
    })
}

/// The pretraining pool: training images outside the labeled split (for
/// the largest K) of every seed in `exclude_seeds`, capped at `cap` by a
/// draw seeded with `seed`. No label is read except to build those splits.
pub fn unlabeled_pool(
    train: &Dataset,
    max_k: usize,
    exclude_seeds: &[u64],
    seed: u64,
    cap: Option<usize>,
) -> Result<Vec<usize>> {
    let labels = train
        .labels()
        .ok_or_else(|| Error::invalid("dataset", "no labels"))?;
    capped_pool(labels, None, train.len(), max_k, exclude_seeds, seed, cap)
}

/// The images of a set of `len` that are outside the labeled split (for
/// `max_k`) of every seed in `exclude_seeds`, capped at `cap` by a draw
/// seeded with `seed`, sorted. The splits are drawn from `labels`; `index`
/// maps their positions into the set (identity when `None`).
fn capped_pool(
    labels: &[u32],
    index: Option<&[usize]>,
    len: usize,
    max_k: usize,
    exclude_seeds: &[u64],
    seed: u64,
    cap: Option<usize>,
) -> Result<Vec<usize>> {
    let mut labeled = vec![false; len];
    for &s in exclude_seeds {
        for i in split::stratified(labels, max_k, s)?.labeled {
            labeled[index.map_or(i, |m| m[i])] = true;
        }
    }
    let mut pool: Vec<usize> = (0..len).filter(|&i| !labeled[i]).collect();
    if let Some(cap) = cap.filter(|&c| c < pool.len()) {
        pool.shuffle(&mut rng::stream(seed, "pool"));
        pool.truncate(cap);
        pool.sort_unstable();
    }
    Ok(pool)
}

/// The images pretraining draws from and the pool's indices into them.
/// Without [`Prepared::all_classes`] this is [`unlabeled_pool`] of the
/// training set; with it, every training image of every class except the
/// labeled splits (of the selected classes, for each seed in
/// `exclude_seeds`), capped the same way.
pub fn pretrain_pool<'a>(
    prep: &'a Prepared,
    max_k: usize,
    exclude_seeds: &[u64],
    seed: u64,
    cap: Option<usize>,
) -> Result<(&'a Dataset, Vec<usize>)> {
    let Some(all) = &prep.all_classes else {
        let train = &prep.pair.train;
        return Ok((
            train,
            unlabeled_pool(train, max_k, exclude_seeds, seed, cap)?,
        ));
    };
    let labels = prep
        .pair
        .train
        .labels()
        .expect("prepared datasets have labels");
    let pool = capped_pool(
        labels,
        Some(&all.index),
        all.train.len(),
        max_k,
        exclude_seeds,
        seed,
        cap,
    )?;
    Ok((&all.train, pool))
}

#[allow(clippy::too_many_arguments)]
fn stage_config(
    stage: &str,
    method: &str,
    backbone: &BackboneConfig,
    prep: &Prepared,
    seed: u64,
    head_outputs: Option<usize>,
    recipe: serde_json::Value,
    metrics: serde_json::Value,
) -> StageConfig {
    let (c, h, w) = prep.pair.train.image_shape();
    StageConfig {
        stage: stage.into(),
        method: method.into(),
        backbone: backbone.clone(),
        input_shape: [c, h, w],
        normalization: prep.norm.clone(),
        seed,
        dataset: prep.pair.name.clone(),
        head_outputs,
        recipe,
        metrics,
    }
}

/// What a pretraining stage did: its summary row and full training history.
pub struct PretrainOutcome {
    /// The report row.
    pub summary: PretrainSummary,
    /// Per-epoch and per-step losses.
    pub history: crate::core::train::FitReport,
}

/// Pretrains `method` under `seed` on the pool that excludes the labeled
/// images of every seed in `exclude_seeds`, and writes the stage directory
/// `dir`.
#[allow(clippy::too_many_arguments)]
pub fn pretrain_stage(
    prep: &Prepared,
    backbone: &BackboneConfig,
    method: &str,
    recipe: &Recipe,
    max_k: usize,
    exclude_seeds: &[u64],
    seed: u64,
    dir: &Path,
    device: &Device,
    quiet: bool,
) -> Result<PretrainOutcome> {
    let (source, pool) = pretrain_pool(prep, max_k, exclude_seeds, seed, recipe.unlabeled)?;
    let cfg = recipe.pretrain_config(method, seed, prep.pair.train.image_shape())?;
    let build = |ctx: &pretext::ObjectiveContext, vb: candle_nn::VarBuilder| {
        methods::build(method, &recipe.siamese, ctx, vb)
    };
    // kNN monitor: leave-one-out accuracy on this seed's K labeled images.
    let train = &prep.pair.train;
    let labels = train.labels().expect("prepared datasets have labels");
    let labeled = split::stratified(labels, max_k, seed)?.labeled;
    let labeled_y: Vec<u32> = labeled.iter().map(|&i| labels[i]).collect();
    let monitor = |enc: &dyn crate::backbones::Backbone| -> Result<f64> {
        let x = finetune::extract_features(
            enc,
            train,
            &labeled,
            &prep.norm,
            recipe.eval_batch,
            device,
        )?;
        finetune::knn_leave_one_out(&x, &labeled_y, train.num_classes(), 5)
    };
    let pre = pretext::pretrain_with(
        &cfg,
        backbone,
        source,
        &pool,
        &prep.norm,
        device,
        quiet,
        &build,
        recipe.knn_monitor.then_some(&monitor as pretext::Monitor),
    )?;
    let metrics = serde_json::json!({
        "val_loss": pre.val_loss,
        "val_accuracy": pre.val_accuracy,
        "epochs_run": pre.report.epochs_run,
        "best_epoch": pre.report.best_epoch,
        "train_loss": pre.report.train_loss,
        "val_loss_per_epoch": pre.report.val_loss,
        "images_per_s": pre.report.images_per_s,
        "seconds": pre.report.seconds,
        "unlabeled_images": pool.len(),
        "knn_monitor": pre.monitor,
        "step_loss": pre.report.step_loss,
    });
    let sc = pretrain_stage_config(
        prep,
        backbone,
        method,
        &cfg,
        max_k,
        exclude_seeds,
        seed,
        Some(pre.objective.head_outputs()),
        metrics,
    );
    ckpt::save(dir, &pre.map, &sc)?;
    if !quiet {
        eprintln!(
            "pretrain {method} seed {seed}: {} epochs, held-out {method} accuracy {:.1}%, {:.0} img/s -> {}",
            pre.report.epochs_run,
            100.0 * pre.val_accuracy,
            pre.report.images_per_s,
            dir.display()
        );
    }
    Ok(PretrainOutcome {
        summary: PretrainSummary {
            method: method.to_string(),
            seed,
            seconds: pre.report.seconds,
            epochs_run: pre.report.epochs_run,
            images_per_s: pre.report.images_per_s,
            val_loss: pre.val_loss,
            knn_monitor: pre.monitor.last().copied(),
            reused: false,
        },
        history: pre.report,
    })
}

/// The config.json of a pretraining stage (`metrics` aside, everything
/// that decides its weights).
#[allow(clippy::too_many_arguments)]
fn pretrain_stage_config(
    prep: &Prepared,
    backbone: &BackboneConfig,
    method: &str,
    cfg: &PretrainConfig,
    max_k: usize,
    exclude_seeds: &[u64],
    seed: u64,
    head_outputs: Option<usize>,
    metrics: serde_json::Value,
) -> StageConfig {
    let recipe_json = serde_json::json!({
        "pretrain": cfg,
        "labels_excluded_per_class": max_k,
        "labels_excluded_for_seeds": exclude_seeds,
    });
    let mut sc = stage_config(
        "pretrain",
        method,
        backbone,
        prep,
        seed,
        head_outputs,
        recipe_json,
        metrics,
    );
    if let Some(all) = &prep.all_classes {
        sc.dataset = all.name.clone();
    }
    sc
}

/// The first place where two JSON values differ, as a dotted path (`None`
/// when they are equal).
fn first_difference(a: &serde_json::Value, b: &serde_json::Value, path: &str) -> Option<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => first_difference(u, v, &sub),
                    _ => Some(sub),
                }
            })
        }
        _ if a == b => None,
        _ => Some(if path.is_empty() {
            "(root)".into()
        } else {
            path.into()
        }),
    }
}

/// With `--resume`: the finished pretraining stage in `dir`, if there is
/// one, as the outcome [`pretrain_stage`] would have returned. A stage
/// trained with other settings (recipe, dataset, backbone, seed, excluded
/// labels) is an error naming the first difference, never silently reused
/// or overwritten. `None` when `dir` holds no finished stage.
#[allow(clippy::too_many_arguments)]
pub fn reuse_pretraining(
    prep: &Prepared,
    backbone: &BackboneConfig,
    method: &str,
    recipe: &Recipe,
    max_k: usize,
    exclude_seeds: &[u64],
    seed: u64,
    dir: &Path,
) -> Result<Option<PretrainOutcome>> {
    use crate::core::checkpoint::{CONFIG_FILE, WEIGHTS_FILE};
    let config_path = dir.join(CONFIG_FILE);
    if !config_path.exists() || !dir.join(WEIGHTS_FILE).exists() {
        return Ok(None);
    }
    let saved: StageConfig = crate::core::checkpoint::read_config(dir)?;
    let cfg = recipe.pretrain_config(method, seed, prep.pair.train.image_shape())?;
    let want = pretrain_stage_config(
        prep,
        backbone,
        method,
        &cfg,
        max_k,
        exclude_seeds,
        seed,
        saved.head_outputs,
        serde_json::Value::Null,
    );
    // Both sides through the same serialise-parse path, so that float
    // fields compare as they were read from the file.
    let as_value = |c: &StageConfig| -> serde_json::Value {
        let text = serde_json::to_string(c).expect("a StageConfig serialises");
        let mut v: serde_json::Value =
            serde_json::from_str(&text).expect("serde_json reads its own output");
        v.as_object_mut().expect("a struct").remove("metrics");
        v
    };
    if let Some(field) = first_difference(&as_value(&saved), &as_value(&want), "") {
        return Err(Error::invalid(
            config_path.display().to_string(),
            format!(
                "--resume found a {method} pretraining trained with other settings ({field} differs); \
                 give another --out, or drop --resume to train it again"
            ),
        ));
    }
    let m = &saved.metrics;
    let history: crate::core::train::FitReport = serde_json::from_value(serde_json::json!({
        "epochs_run": m["epochs_run"],
        "train_loss": m["train_loss"],
        "step_loss": m["step_loss"],
        "val_loss": m["val_loss_per_epoch"],
        "best_epoch": m["best_epoch"],
        "seconds": m["seconds"],
        "images_per_s": m["images_per_s"],
    }))
    .map_err(|e| {
        Error::invalid(
            config_path.display().to_string(),
            format!("its metrics cannot be read back: {e}"),
        )
    })?;
    let knn_monitor = m["knn_monitor"]
        .as_array()
        .and_then(|a| a.last())
        .and_then(|v| v.as_f64());
    Ok(Some(PretrainOutcome {
        summary: PretrainSummary {
            method: method.to_string(),
            seed,
            seconds: history.seconds,
            epochs_run: history.epochs_run,
            images_per_s: history.images_per_s,
            val_loss: m["val_loss"].as_f64().unwrap_or(f64::NAN),
            knn_monitor,
            reused: true,
        },
        history,
    }))
}

/// Draws the training-loss curve of a pretraining run: the loss of every
/// step, its epoch means and the held-out loss after each epoch.
pub fn loss_figure(
    history: &crate::core::train::FitReport,
    method: &str,
    path: &Path,
) -> Result<()> {
    use crate::plot::{line_png, Series, PALETTE};
    let epochs = history.epochs_run.max(1);
    let per_epoch = (history.step_loss.len() / epochs).max(1) as f64;
    let steps: Vec<[f64; 2]> = history
        .step_loss
        .iter()
        .enumerate()
        .map(|(i, &l)| [(i + 1) as f64 / per_epoch, f64::from(l)])
        .collect();
    let at_epochs = |v: &[f64]| -> Vec<[f64; 2]> {
        v.iter()
            .enumerate()
            .map(|(e, &l)| [(e + 1) as f64, l])
            .collect()
    };
    let series = [
        Series {
            label: "train loss (step)",
            points: steps,
            rgb: [170, 200, 230],
            thick: 1,
        },
        Series {
            label: "train loss (epoch mean)",
            points: at_epochs(&history.train_loss),
            rgb: PALETTE[0],
            thick: 3,
        },
        Series {
            label: "held-out loss",
            points: at_epochs(&history.val_loss),
            rgb: PALETTE[1],
            thick: 3,
        },
    ];
    line_png(
        path,
        &series,
        &format!("{method}: pretraining loss"),
        "epoch",
        "loss",
    )
}

/// Draws the first two principal components of the encoder's features of
/// (up to) the first `max_points` test images, coloured by class.
pub fn embedding_figure(
    prep: &Prepared,
    encoder: &dyn crate::backbones::Backbone,
    recipe: &Recipe,
    device: &Device,
    method: &str,
    max_points: usize,
    path: &Path,
) -> Result<()> {
    let test = &prep.pair.test;
    let idx: Vec<usize> = (0..test.len().min(max_points)).collect();
    let x = finetune::extract_features(encoder, test, &idx, &prep.norm, recipe.eval_batch, device)?;
    let x = finetune::to_cpu_f32(&x)?;
    let (n, d) = x.dims2()?;
    let flat: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let points = crate::plot::pca2(&flat, n, d);
    let labels = test.labels().expect("prepared datasets have labels");
    let classes: Vec<u32> = idx.iter().map(|&i| labels[i]).collect();
    crate::plot::scatter_png(
        path,
        &points,
        &classes,
        &format!("{method}: test embedding (PCA)"),
    )
}

/// Fine-tunes (from `init`, or from scratch) on the seed's K-shot split and
/// writes the classifier to `dir`. With `probe_init` (the `lpft` protocol)
/// the head starts from a linear probe on the frozen features.
#[allow(clippy::too_many_arguments)]
pub fn transfer_stage(
    prep: &Prepared,
    backbone: &BackboneConfig,
    init: Option<&Path>,
    probe_init: bool,
    recipe: &Recipe,
    k: usize,
    seed: u64,
    dir: &Path,
    device: &Device,
    quiet: bool,
) -> Result<finetune::Classifier> {
    let labels = prep
        .pair
        .train
        .labels()
        .expect("prepared datasets have labels");
    let sp = split::stratified(labels, k, seed)?;
    let cfg = TransferConfig {
        probe_init,
        ..recipe.transfer_config(seed)?
    };
    let protocol = if probe_init { "lpft" } else { "finetune" };
    let method = match init {
        Some(d) => ckpt_method(d)?,
        None => "scratch".to_string(),
    };
    let stage = format!("{protocol}/{method}");
    let cls = finetune::train_classifier(
        &cfg,
        init,
        backbone,
        &prep.pair.train,
        &sp.labeled,
        &prep.norm,
        device,
        quiet,
        &stage,
    )?;
    let metrics = serde_json::json!({
        "train_loss": cls.report.train_loss,
        "seconds": cls.report.seconds,
        "epochs_run": cls.report.epochs_run,
        "val_error": cls.val_error,
        "val_cross_entropy": cls.val_cross_entropy,
        "val_score": cls.report.val_loss,
        "best_epoch": cls.report.best_epoch,
        "validation_images": cls.validation_images,
    });
    let recipe_json = serde_json::json!({
        "protocol": protocol,
        "labels_per_class": k,
        "init": init.map(|p| p.display().to_string()),
        "transfer": cfg,
    });
    save_classifier_stage(
        prep,
        backbone,
        &method,
        seed,
        dir,
        &cls,
        recipe_json,
        metrics,
    )?;
    Ok(cls)
}

/// Writes a trained classifier as a `transfer` stage directory `dir`.
#[allow(clippy::too_many_arguments)]
fn save_classifier_stage(
    prep: &Prepared,
    backbone: &BackboneConfig,
    method: &str,
    seed: u64,
    dir: &Path,
    cls: &finetune::Classifier,
    recipe_json: serde_json::Value,
    metrics: serde_json::Value,
) -> Result<()> {
    let sc = stage_config(
        "transfer",
        method,
        backbone,
        prep,
        seed,
        Some(prep.pair.train.num_classes()),
        recipe_json,
        metrics,
    );
    ckpt::save(dir, &cls.map, &sc)
}

/// The seed's K labeled images and the unlabeled pool the semi-supervised
/// protocols (`distill`, `fixmatch`) learn from: every other training
/// image, capped by `recipe.unlabeled`.
fn semi_supervised_split(
    train: &Dataset,
    recipe: &Recipe,
    k: usize,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>)> {
    let labels = train.labels().expect("prepared datasets have labels");
    let labeled = split::stratified(labels, k, seed)?.labeled;
    let pool = unlabeled_pool(train, k, &[seed], seed, recipe.unlabeled)?;
    Ok((labeled, pool))
}

/// The `distill` protocol for one method and seed: `teacher` (the
/// fine-tuned classifier, saved in `teacher_dir`) gives soft labels to the
/// unlabeled training images (outside this seed's K-shot split, capped by
/// `recipe.unlabeled`), and a copy of it trains on them with the K labeled
/// images mixed in ([`finetune::distill`]). Writes the student to `dir`.
#[allow(clippy::too_many_arguments)]
pub fn distill_stage(
    prep: &Prepared,
    backbone: &BackboneConfig,
    method: &str,
    teacher: &finetune::Classifier,
    teacher_dir: &Path,
    recipe: &Recipe,
    k: usize,
    seed: u64,
    dir: &Path,
    device: &Device,
    quiet: bool,
) -> Result<finetune::Classifier> {
    let train = &prep.pair.train;
    let labels = train.labels().expect("prepared datasets have labels");
    let (labeled, pool) = semi_supervised_split(train, recipe, k, seed)?;
    let cfg = recipe.distill_config(seed, train.image_shape())?;
    let (student, _) = finetune::load_classifier(teacher_dir, device)?;
    let (student, pseudo) = finetune::distill(
        &cfg,
        teacher,
        student,
        train,
        &labeled,
        &pool,
        &prep.norm,
        device,
        quiet,
        &format!("distill/{method}"),
    )?;
    // Diagnostics only, after training: how often the teacher's label was
    // right on the images it labeled. The pool already excludes this seed's
    // labeled images, so distill kept all of it, in order.
    let truth: Vec<u32> = pool.iter().map(|&i| labels[i]).collect();
    let pseudo_label_accuracy = metrics::accuracy(&pseudo, &truth);
    let metrics = serde_json::json!({
        "train_loss": student.report.train_loss,
        "seconds": student.report.seconds,
        "epochs_run": student.report.epochs_run,
        "images_per_s": student.report.images_per_s,
        "unlabeled_images": pseudo.len(),
        "pseudo_label_accuracy": pseudo_label_accuracy,
    });
    let recipe_json = serde_json::json!({
        "protocol": "distill",
        "labels_per_class": k,
        "teacher": teacher_dir.display().to_string(),
        "distill": cfg,
    });
    save_classifier_stage(
        prep,
        backbone,
        method,
        seed,
        dir,
        &student,
        recipe_json,
        metrics,
    )?;
    tracing::info!(
        method,
        seed,
        k,
        pseudo_label_accuracy,
        "distilled on the teacher's labels of {} unlabeled images",
        pseudo.len()
    );
    Ok(student)
}

/// The `fixmatch` protocol for one method and seed: a copy of the
/// classifier in `init_dir` trains on the seed's K labeled images and, with
/// its own confident predictions as labels, on the unlabeled pool
/// ([`finetune::fixmatch`]). Writes the result to `dir`.
#[allow(clippy::too_many_arguments)]
pub fn fixmatch_stage(
    prep: &Prepared,
    backbone: &BackboneConfig,
    method: &str,
    init_dir: &Path,
    recipe: &Recipe,
    k: usize,
    seed: u64,
    dir: &Path,
    device: &Device,
    quiet: bool,
) -> Result<finetune::Classifier> {
    let train = &prep.pair.train;
    let (labeled, pool) = semi_supervised_split(train, recipe, k, seed)?;
    let cfg = recipe.fixmatch_config(seed, train.image_shape())?;
    let (start, _) = finetune::load_classifier(init_dir, device)?;
    let (cls, stats) = finetune::fixmatch(
        &cfg,
        start,
        train,
        &labeled,
        &pool,
        &prep.norm,
        device,
        quiet,
        &format!("fixmatch/{method}"),
    )?;
    let metrics = serde_json::json!({
        "train_loss": cls.report.train_loss,
        "seconds": cls.report.seconds,
        "epochs_run": cls.report.epochs_run,
        "images_per_s": cls.report.images_per_s,
        "unlabeled_images": pool.len(),
        "mask_rate": stats.mask_rate,
    });
    let recipe_json = serde_json::json!({
        "protocol": "fixmatch",
        "labels_per_class": k,
        "init": init_dir.display().to_string(),
        "fixmatch": cfg,
    });
    save_classifier_stage(
        prep,
        backbone,
        method,
        seed,
        dir,
        &cls,
        recipe_json,
        metrics,
    )?;
    Ok(cls)
}

fn ckpt_method(dir: &Path) -> Result<String> {
    let cfg: StageConfig = crate::core::checkpoint::read_config(dir)?;
    Ok(cfg.method)
}

/// Test accuracy of linear probe and kNN on a frozen encoder, with the
/// seed's K-shot split. Returns (linear accuracy, kNN accuracy, chosen k).
pub fn frozen_protocols(
    prep: &Prepared,
    encoder: &dyn crate::backbones::Backbone,
    recipe: &Recipe,
    k: usize,
    seed: u64,
    device: &Device,
) -> Result<(f64, f64, usize)> {
    let train = &prep.pair.train;
    let test = &prep.pair.test;
    let labels = train.labels().expect("labels");
    let sp = split::stratified(labels, k, seed)?;
    let cfg = recipe.transfer_config(seed)?;
    let tr_x = finetune::extract_features(
        encoder,
        train,
        &sp.labeled,
        &prep.norm,
        recipe.eval_batch,
        device,
    )?;
    let tr_y: Vec<u32> = sp.labeled.iter().map(|&i| labels[i]).collect();
    let test_idx: Vec<usize> = (0..test.len()).collect();
    let te_x = finetune::extract_features(
        encoder,
        test,
        &test_idx,
        &prep.norm,
        recipe.eval_batch,
        device,
    )?;
    let te_y = test.labels().expect("labels");
    let classes = train.num_classes();
    let lin = finetune::linear_probe(&cfg, &tr_x, &tr_y, &te_x, classes)?;
    let (knn, chosen) = finetune::knn(&tr_x, &tr_y, &te_x, classes, &recipe.knn_ks)?;
    Ok((
        metrics::accuracy(&lin, te_y),
        metrics::accuracy(&knn, te_y),
        chosen,
    ))
}

/// Test accuracy of a classifier.
pub fn classifier_accuracy(
    prep: &Prepared,
    cls: &finetune::Classifier,
    recipe: &Recipe,
    device: &Device,
) -> Result<f64> {
    let test = &prep.pair.test;
    let idx: Vec<usize> = (0..test.len()).collect();
    let pred = cls.predict(test, &idx, &prep.norm, recipe.eval_batch, device)?;
    Ok(metrics::accuracy(&pred, test.labels().expect("labels")))
}

fn validate(opts: &PipelineOptions, prep: &Prepared) -> Result<BackboneConfig> {
    if opts.seeds.is_empty() {
        return Err(Error::invalid("--seeds", "give at least one seed"));
    }
    if opts.labels_per_class.is_empty() {
        return Err(Error::invalid(
            "--labels-per-class",
            "give at least one value",
        ));
    }
    for p in &opts.pretext {
        methods::check(p)?;
    }
    opts.recipe.view_augment.resolve(1, 28)?;
    let labeled_max = *opts.labels_per_class.iter().max().unwrap_or(&0);
    opts.recipe.transfer_pipeline()?;
    if opts.recipe.distill_epochs > 0 {
        opts.recipe
            .distill_config(0, prep.pair.train.image_shape())?
            .check()?;
        opts.recipe.distill_teacher_for(true)?;
    }
    if opts.recipe.fixmatch_epochs > 0 {
        let cfg = opts
            .recipe
            .fixmatch_config(0, prep.pair.train.image_shape())?;
        cfg.check()?;
        if cfg.fit.batch_size == 0 {
            return Err(Error::invalid("fixmatch_batch", "must be at least 1"));
        }
        opts.recipe.fixmatch_init_for(true)?;
    }
    if opts.recipe.transfer_patience.is_some() {
        // Checked here so that a run does not fail after pretraining.
        let labels: Vec<u32> = (0..prep.pair.train.num_classes() as u32)
            .flat_map(|c| std::iter::repeat_n(c, labeled_max))
            .collect();
        let all: Vec<usize> = (0..labels.len()).collect();
        finetune::holdout(&labels, &all, opts.recipe.transfer_val_fraction, 0)?;
    }
    let backbone = opts
        .recipe
        .backbone(&opts.backbone, prep.pair.train.image_shape().0)?;
    let max_k = *opts.labels_per_class.iter().max().expect("non-empty");
    // Checks K against the smallest class before anything is written.
    split::stratified(
        prep.pair.train.labels().expect("labels"),
        max_k,
        opts.seeds[0],
    )?;
    Ok(backbone)
}

/// Runs the whole pipeline and writes `report.json` and `report.md` into
/// `opts.out`. Every input is checked before anything is written.
pub fn run(opts: &PipelineOptions) -> Result<Report> {
    let t0 = Instant::now();
    let prep = select_classes(
        prepare(&opts.dataset, opts.max_train, opts.max_test)?,
        &opts.recipe.classes,
        opts.recipe.pretrain_all_classes,
    )?;
    let backbone = validate(opts, &prep)?;
    let mut times: BTreeMap<&'static str, f64> = BTreeMap::new();
    times.insert("load", t0.elapsed().as_secs_f64());
    let max_k = *opts.labels_per_class.iter().max().expect("validated");
    let mut results = Vec::new();
    let mut push = |method: &str, protocol: &str, k: usize, seed: u64, acc: f64, quiet: bool| {
        if !quiet {
            eprintln!(
                "  seed {seed} K={k} {method:>9} {protocol:<8} test accuracy {:.2}%",
                100.0 * acc
            );
        }
        results.push(ResultRow {
            method: method.into(),
            protocol: protocol.into(),
            labels_per_class: k,
            seed,
            test_accuracy: acc,
        });
    };
    let pretrain_dir = |seed: u64, method: &str| -> PathBuf {
        if opts.recipe.pretrain_per_seed {
            opts.out.join(format!("seed{seed}/pretrain-{method}"))
        } else {
            opts.out.join(format!("pretrain-{method}"))
        }
    };
    let mut pretraining = Vec::new();
    let mut figures = Vec::new();
    for (si, &seed) in opts.seeds.iter().enumerate() {
        let seed_dir = opts.out.join(format!("seed{seed}"));
        if opts.recipe.pretrain_per_seed || si == 0 {
            let exclude: &[u64] = if opts.recipe.pretrain_per_seed {
                std::slice::from_ref(&opts.seeds[si])
            } else {
                &opts.seeds
            };
            for method in &opts.pretext {
                let t = Instant::now();
                let dir = pretrain_dir(seed, method);
                let reused = if opts.resume {
                    reuse_pretraining(
                        &prep,
                        &backbone,
                        method,
                        &opts.recipe,
                        max_k,
                        exclude,
                        seed,
                        &dir,
                    )?
                } else {
                    None
                };
                let outcome = match reused {
                    Some(outcome) => {
                        tracing::info!(
                            method,
                            seed,
                            "reusing the finished pretraining in {}",
                            dir.display()
                        );
                        outcome
                    }
                    None => pretrain_stage(
                        &prep,
                        &backbone,
                        method,
                        &opts.recipe,
                        max_k,
                        exclude,
                        seed,
                        &dir,
                        &opts.device,
                        opts.quiet,
                    )?,
                };
                *times.entry("pretrain").or_default() += t.elapsed().as_secs_f64();
                if si == 0 {
                    let t = Instant::now();
                    let rel = format!("figures/{method}-loss.png");
                    loss_figure(&outcome.history, method, &opts.out.join(&rel))?;
                    figures.push(Figure {
                        method: method.clone(),
                        kind: "loss".into(),
                        path: rel,
                    });
                    let enc = ckpt::load(&pretrain_dir(seed, method), seed, &opts.device)?;
                    let rel = format!("figures/{method}-embedding.png");
                    embedding_figure(
                        &prep,
                        enc.backbone.as_ref(),
                        &opts.recipe,
                        &opts.device,
                        method,
                        2000,
                        &opts.out.join(&rel),
                    )?;
                    figures.push(Figure {
                        method: method.clone(),
                        kind: "embedding".into(),
                        path: rel,
                    });
                    *times.entry("figures").or_default() += t.elapsed().as_secs_f64();
                }
                pretraining.push(outcome.summary);
            }
        }
        for &k in &opts.labels_per_class {
            let k_dir = seed_dir.join(format!("k{k}"));
            let mut inits: Vec<(String, Option<PathBuf>)> = vec![("scratch".into(), None)];
            inits.extend(
                opts.pretext
                    .iter()
                    .map(|m| (m.clone(), Some(pretrain_dir(seed, m)))),
            );
            // `finetune`, then (unless turned off) `lpft`: the same
            // fine-tune with the head started from a linear probe.
            let protocols: &[(&str, bool)] = if opts.recipe.lpft {
                &[("finetune", false), ("lpft", true)]
            } else {
                &[("finetune", false)]
            };
            for (method, init) in inits {
                let mut teachers = Vec::new();
                for &(protocol, probe_init) in protocols {
                    let t = Instant::now();
                    let cls = transfer_stage(
                        &prep,
                        &backbone,
                        init.as_deref(),
                        probe_init,
                        &opts.recipe,
                        k,
                        seed,
                        &k_dir.join(format!("{method}-{protocol}")),
                        &opts.device,
                        opts.quiet,
                    )?;
                    *times.entry("transfer").or_default() += t.elapsed().as_secs_f64();
                    let t = Instant::now();
                    let acc = classifier_accuracy(&prep, &cls, &opts.recipe, &opts.device)?;
                    push(&method, protocol, k, seed, acc, opts.quiet);
                    *times.entry("evaluate").or_default() += t.elapsed().as_secs_f64();
                    teachers.push((protocol, cls));
                }
                // Scratch's semi-supervised runs can be turned off.
                let semi = init.is_some() || opts.recipe.scratch_semi_supervised;
                if semi && opts.recipe.distill_epochs > 0 {
                    let t = Instant::now();
                    let protocol = opts.recipe.distill_teacher_for(init.is_some())?;
                    let teacher = &teachers
                        .iter()
                        .find(|(p, _)| *p == protocol)
                        .expect("the teacher's protocol ran")
                        .1;
                    let student = distill_stage(
                        &prep,
                        &backbone,
                        &method,
                        teacher,
                        &k_dir.join(format!("{method}-{protocol}")),
                        &opts.recipe,
                        k,
                        seed,
                        &k_dir.join(format!("{method}-distill")),
                        &opts.device,
                        opts.quiet,
                    )?;
                    *times.entry("distill").or_default() += t.elapsed().as_secs_f64();
                    let acc = classifier_accuracy(&prep, &student, &opts.recipe, &opts.device)?;
                    push(&method, "distill", k, seed, acc, opts.quiet);
                }
                if semi && opts.recipe.fixmatch_epochs > 0 {
                    let t = Instant::now();
                    let protocol = opts.recipe.fixmatch_init_for(init.is_some())?;
                    let cls = fixmatch_stage(
                        &prep,
                        &backbone,
                        &method,
                        &k_dir.join(format!("{method}-{protocol}")),
                        &opts.recipe,
                        k,
                        seed,
                        &k_dir.join(format!("{method}-fixmatch")),
                        &opts.device,
                        opts.quiet,
                    )?;
                    *times.entry("fixmatch").or_default() += t.elapsed().as_secs_f64();
                    let acc = classifier_accuracy(&prep, &cls, &opts.recipe, &opts.device)?;
                    push(&method, "fixmatch", k, seed, acc, opts.quiet);
                }
                let t = Instant::now();
                // Frozen protocols: the pretrained encoder, or for scratch the
                // randomly initialised one (a random-features baseline).
                let encoder = match &init {
                    Some(dir) => ckpt::load(dir, seed, &opts.device)?.backbone,
                    None => {
                        let map = candle_nn::VarMap::new();
                        let vb = crate::core::params::seeded_var_builder(&map, seed, &opts.device);
                        backbone.build(vb.pp(ckpt::BACKBONE_PREFIX))?
                    }
                };
                let (lin, knn, chosen) =
                    frozen_protocols(&prep, encoder.as_ref(), &opts.recipe, k, seed, &opts.device)?;
                tracing::info!(
                    method,
                    seed,
                    k,
                    chosen_k = chosen,
                    "kNN k chosen by leave-one-out on the labeled images"
                );
                push(&method, "linear", k, seed, lin, opts.quiet);
                push(&method, "knn", k, seed, knn, opts.quiet);
                *times.entry("evaluate").or_default() += t.elapsed().as_secs_f64();
            }
        }
    }
    let summary = Report::summarise(&results);
    let mut report = Report {
        dataset: prep.pair.name.clone(),
        backbone: backbone.name().to_string(),
        seeds: opts.seeds.clone(),
        labels_per_class: opts.labels_per_class.clone(),
        pretext: opts.pretext.clone(),
        results,
        summary,
        gains: Vec::new(),
        stages: times
            .into_iter()
            .map(|(name, seconds)| StageTime {
                name: name.into(),
                seconds,
            })
            .collect(),
        total_seconds: t0.elapsed().as_secs_f64(),
        threads: rayon_threads(),
        config: serde_json::json!({
            "recipe": opts.recipe,
            "backbone": backbone,
            "device": format!("{:?}", opts.device),
            "max_train": opts.max_train,
            "max_test": opts.max_test,
            "train_images": prep.pair.train.len(),
            "test_images": prep.pair.test.len(),
        }),
        pretraining,
        figures,
    };
    report.gains = report.gains();
    fsutil::write_json_atomic(&opts.out.join("report.json"), &report)?;
    fsutil::write_atomic(&opts.out.join("report.md"), report.to_markdown().as_bytes())?;
    Ok(report)
}

/// Compute threads Candle's CPU kernels use.
pub fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
