//! selfsup-finetune turns an encoder and K labeled images per class into a
//! classifier, with the protocols of the few-label literature:
//!
//! - [`train_classifier`] with `init = None`: **scratch**, the same network
//!   from random weights, same augmentation and epoch budget;
//! - [`train_classifier`] with a checkpoint: **finetune**, every weight
//!   trained from the pretrained backbone under a new head;
//! - [`linear_probe`]: a logistic-regression head on frozen features;
//! - [`knn`]: cosine k-nearest neighbours on frozen features, with k chosen
//!   by leave-one-out accuracy on the labeled images (never the test set);
//! - [`distill`]: a fine-tuned classifier labels the unlabeled images with
//!   soft labels and a copy of it trains on them under strong augmentation
//!   (SimCLR v2's self-distillation, with Noisy Student's noise).
//!
//! **Invariant:** this crate never imports an objective crate. It works on
//! checkpoints (`selfsup_backbones::checkpoint`), so any pretraining method
//! that writes one can be transferred.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Linear, VarMap};
use selfsup_augment::{apply_batch, Pipeline};
use selfsup_backbones::checkpoint::{self, BACKBONE_PREFIX, HEAD_PREFIX};
use selfsup_backbones::{Backbone, BackboneConfig};
use selfsup_core::train::{fit, fit_prefetched, FitConfig, FitReport};
use selfsup_core::{params, rng, Error, Normalization, Result};
use selfsup_data::{batch, Dataset};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Transfer settings shared by all protocols.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferConfig {
    /// Fine-tune / scratch optimisation. Without `fit.patience` every
    /// labeled image trains for all epochs (with K labels per class there is
    /// rarely one to spare); with it, `val_fraction` of them are held out
    /// and training stops when their loss stops improving (the best epoch's
    /// weights are kept).
    pub fit: FitConfig,
    /// Augmentation for fine-tune and scratch.
    pub augment: Pipeline,
    /// LP-FT (Kumar et al., 2022, "Fine-tuning can distort pretrained
    /// features"): before fine-tuning, fit the head as a linear probe
    /// ([`fit_linear_head`]) on the frozen encoder's features of the
    /// training images, so the first steps do not bend good features to
    /// fit a random head. Off: the head starts from seeded random weights.
    #[serde(default)]
    pub probe_init: bool,
    /// Fraction of each class's labeled images held out for early stopping
    /// (used only with `fit.patience`).
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    /// Linear probe: full-batch optimiser steps.
    pub linear_steps: usize,
    /// Linear probe: learning rate.
    pub linear_lr: f64,
    /// Linear probe: weight decay.
    pub linear_weight_decay: f64,
    /// kNN: candidate values of k.
    pub knn_ks: Vec<usize>,
    /// Batch size for inference.
    pub eval_batch: usize,
}

fn default_val_fraction() -> f64 {
    0.1
}

/// Splits `labeled` (indices into a dataset with `labels`) into training
/// and held-out images: of each class, `fraction` (rounded, at least one
/// and never all) is held out, drawn with `seed`. Both lists are sorted.
/// Fails when a class has fewer than two labeled images.
pub fn holdout(
    labels: &[u32],
    labeled: &[usize],
    fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>)> {
    use rand::seq::SliceRandom;
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(Error::invalid(
            "transfer_val_fraction",
            format!("must lie strictly between 0 and 1, got {fraction}"),
        ));
    }
    let mut by_class: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
    for &i in labeled {
        by_class.entry(labels[i]).or_default().push(i);
    }
    let (mut fit, mut val) = (Vec::new(), Vec::new());
    for (class, mut idx) in by_class {
        if idx.len() < 2 {
            return Err(Error::invalid(
                "transfer early stopping",
                format!(
                    "class {class} has {} labeled image(s); holding one out for validation needs at least 2",
                    idx.len()
                ),
            ));
        }
        idx.shuffle(&mut rng::stream_at(
            seed,
            "transfer-holdout",
            u64::from(class),
        ));
        let n_val = ((idx.len() as f64 * fraction).round() as usize).clamp(1, idx.len() - 1);
        val.extend_from_slice(&idx[..n_val]);
        fit.extend_from_slice(&idx[n_val..]);
    }
    fit.sort_unstable();
    val.sort_unstable();
    Ok((fit, val))
}

/// Backbone features of the images at `indices`, eval mode, (N, D).
pub fn extract_features(
    backbone: &dyn Backbone,
    ds: &Dataset,
    indices: &[usize],
    norm: &Normalization,
    batch_size: usize,
    device: &Device,
) -> Result<Tensor> {
    let mut parts = Vec::new();
    for chunk in indices.chunks(batch_size.max(1)) {
        let x = batch::gather(ds, chunk, norm, device)?;
        // Detach: the parameters are variables, so each output would keep its
        // whole autograd graph (every activation) alive until the end.
        parts.push(backbone.forward_t(&x, false)?.detach());
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// A backbone with a linear classification head.
pub struct Classifier {
    /// All variables.
    pub map: VarMap,
    /// The encoder.
    pub backbone: Box<dyn Backbone>,
    /// The head.
    pub head: Linear,
    /// Training history.
    pub report: FitReport,
    /// Labeled images held out for early stopping (0 without it).
    pub validation_images: usize,
    /// Held-out error rate after each epoch (empty without early stopping).
    pub val_error: Vec<f64>,
    /// Held-out cross-entropy after each epoch (empty without early
    /// stopping). `report.val_loss` holds the score early stopping
    /// minimised: error + [`VAL_LOSS_WEIGHT`] x cross-entropy.
    pub val_cross_entropy: Vec<f64>,
}

/// Weight of the held-out cross-entropy in the early-stopping score (it
/// only breaks ties between epochs with the same error rate).
pub const VAL_LOSS_WEIGHT: f64 = 1e-3;

impl Classifier {
    /// Predicted classes of the images at `indices`.
    pub fn predict(
        &self,
        ds: &Dataset,
        indices: &[usize],
        norm: &Normalization,
        batch_size: usize,
        device: &Device,
    ) -> Result<Vec<u32>> {
        Ok(self
            .logits(ds, indices, norm, batch_size, device)?
            .argmax(D::Minus1)?
            .to_vec1::<u32>()?)
    }

    /// Class logits (N, C) of the images at `indices` (eval mode).
    pub fn logits(
        &self,
        ds: &Dataset,
        indices: &[usize],
        norm: &Normalization,
        batch_size: usize,
        device: &Device,
    ) -> Result<Tensor> {
        let feats = extract_features(
            self.backbone.as_ref(),
            ds,
            indices,
            norm,
            batch_size,
            device,
        )?;
        Ok(self.head.forward(&feats)?)
    }
}

/// Trains backbone + new head on the `labeled` images of `train`. With
/// `init`, the backbone starts from that stage directory's weights (and its
/// config must match `backbone_cfg`); without, from seeded random weights.
/// With `cfg.fit.patience`, a stratified `cfg.val_fraction` of `labeled` is
/// held out ([`holdout`]): its error rate after every epoch (ties broken by
/// cross-entropy) drives early stopping and picks the weights returned.
#[allow(clippy::too_many_arguments)]
pub fn train_classifier(
    cfg: &TransferConfig,
    init: Option<&Path>,
    backbone_cfg: &BackboneConfig,
    train: &Dataset,
    labeled: &[usize],
    norm: &Normalization,
    device: &Device,
    quiet: bool,
    stage: &str,
) -> Result<Classifier> {
    let seed = cfg.fit.seed;
    let (mut map, backbone) = match init {
        Some(dir) => {
            let enc = checkpoint::load(dir, seed, device)?;
            if &enc.config.backbone != backbone_cfg {
                return Err(Error::format(
                    dir.join("config.json"),
                    format!(
                        "checkpoint backbone {:?} differs from the requested {:?}",
                        enc.config.backbone, backbone_cfg
                    ),
                ));
            }
            (enc.map, enc.backbone)
        }
        None => {
            let map = VarMap::new();
            let b = backbone_cfg
                .build(params::seeded_var_builder(&map, seed, device).pp(BACKBONE_PREFIX))?;
            (map, b)
        }
    };
    let classes = train.num_classes();
    let head = candle_nn::linear(
        backbone.feature_dim(),
        classes,
        params::seeded_var_builder(&map, seed ^ 0x4ead, device).pp(HEAD_PREFIX),
    )?;
    let labels = train
        .labels()
        .ok_or_else(|| Error::invalid("dataset", "transfer needs labels"))?;
    let shape = train.image_shape();
    let vars = params::trainable_vars(&map)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let (fit_idx, val_idx) = if cfg.fit.patience.is_some() {
        holdout(labels, labeled, cfg.val_fraction, seed)?
    } else {
        (labeled.to_vec(), Vec::new())
    };
    if cfg.probe_init {
        let x = extract_features(
            backbone.as_ref(),
            train,
            &fit_idx,
            norm,
            cfg.eval_batch,
            device,
        )?;
        let y: Vec<u32> = fit_idx.iter().map(|&i| labels[i]).collect();
        let (w, b) = fit_linear_head(cfg, &x, &y, classes)?;
        map.set_one(format!("{HEAD_PREFIX}.weight"), w)?;
        map.set_one(format!("{HEAD_PREFIX}.bias"), b)?;
    }
    // Early stopping monitors the held-out error rate, ties broken by the
    // cross-entropy: on a few dozen images the loss alone prefers a timid,
    // barely trained model over a confident one that classifies better.
    let mut history: Vec<(f64, f64)> = Vec::new();
    let val_y: Vec<u32> = val_idx.iter().map(|&i| labels[i]).collect();
    let mut validate = || -> Result<f64> {
        let feats = extract_features(
            backbone.as_ref(),
            train,
            &val_idx,
            norm,
            cfg.eval_batch,
            device,
        )?;
        let logits = head.forward(&feats)?;
        let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let wrong = pred.iter().zip(&val_y).filter(|(p, t)| p != t).count();
        let y = Tensor::from_vec(val_y.clone(), val_y.len(), device)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
        let loss = f64::from(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?);
        let error = wrong as f64 / val_y.len().max(1) as f64;
        history.push((error, loss));
        Ok(error + VAL_LOSS_WEIGHT * loss)
    };
    let report = fit_prefetched(
        &cfg.fit,
        stage,
        fit_idx.len(),
        vars,
        &map,
        quiet,
        |items, step| {
            let idx: Vec<usize> = items.iter().map(|&i| fit_idx[i]).collect();
            let px = apply_batch(&cfg.augment, &train.pixels_of(&idx), shape, seed, step);
            let y: Vec<u32> = idx.iter().map(|&i| labels[i]).collect();
            Ok((px, y))
        },
        |(px, y): (Vec<u8>, Vec<u32>), _| {
            let n = y.len();
            let x = batch::to_tensor(&px, shape, norm, device)?;
            let y = Tensor::from_vec(y, n, device)?;
            let logits = head.forward(&backbone.forward_t(&x, true)?)?;
            Ok((candle_nn::loss::cross_entropy(&logits, &y)?, n))
        },
        (!val_idx.is_empty()).then_some(&mut validate as &mut dyn FnMut() -> Result<f64>),
    )?;
    Ok(Classifier {
        validation_images: val_idx.len(),
        val_error: history.iter().map(|h| h.0).collect(),
        val_cross_entropy: history.iter().map(|h| h.1).collect(),
        map,
        backbone,
        head,
        report,
    })
}

/// Settings of [`distill`], SimCLR v2's third step: the fine-tuned
/// classifier (the teacher) labels the unlabeled images with its softened
/// class probabilities and a student trains on them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistillConfig {
    /// Optimisation of the student; `epochs` count passes over the
    /// unlabeled images (plus the repeated labeled ones).
    pub fit: FitConfig,
    /// Augmentation of the student's inputs (the teacher sees them plain).
    pub augment: Pipeline,
    /// Softmax temperature of both the teacher's targets and the student's
    /// logits in the distillation loss.
    pub temperature: f64,
    /// Share of each epoch's items that are labeled images (with their
    /// true, one-hot labels); the K labeled images are repeated to reach it.
    /// 0 trains on the teacher's labels alone.
    pub labeled_share: f64,
    /// Batch size for the teacher's inference.
    pub eval_batch: usize,
}

impl DistillConfig {
    /// Fails on a temperature that is not a positive number or a labeled
    /// share outside [0, 1).
    pub fn check(&self) -> Result<()> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(Error::invalid(
                "distill_temperature",
                format!("must be a positive number, got {}", self.temperature),
            ));
        }
        if !(0.0..1.0).contains(&self.labeled_share) {
            return Err(Error::invalid(
                "distill_labeled_share",
                format!("must lie in [0, 1), got {}", self.labeled_share),
            ));
        }
        Ok(())
    }
}

/// The teacher's softened class probabilities for the images at `indices`
/// (eval mode, no augmentation): softmax(logits / `temperature`), (N, C).
pub fn teacher_probabilities(
    teacher: &Classifier,
    ds: &Dataset,
    indices: &[usize],
    norm: &Normalization,
    temperature: f64,
    batch_size: usize,
    device: &Device,
) -> Result<Tensor> {
    let logits = (teacher.logits(ds, indices, norm, batch_size, device)? / temperature)?;
    Ok(candle_nn::ops::softmax(&logits, D::Minus1)?.detach())
}

/// Cross-entropy of `logits` (N, C) against target distributions `targets`
/// (N, C), both at `temperature`: mean over rows of
/// -sum_c targets[c] * log softmax(logits / temperature)[c].
pub fn soft_cross_entropy(logits: &Tensor, targets: &Tensor, temperature: f64) -> Result<Tensor> {
    let log_p = candle_nn::ops::log_softmax(&(logits / temperature)?, D::Minus1)?;
    Ok((targets * log_p)?.sum(D::Minus1)?.mean_all()?.neg()?)
}

/// Self-distillation on unlabeled images (SimCLR v2's "pretrain, fine-tune,
/// distill"): `teacher` gives every image of `unlabeled` a soft label
/// ([`teacher_probabilities`]); `student` (usually a copy of the teacher)
/// trains on those images under `cfg.augment` against the soft labels
/// ([`soft_cross_entropy`]), with the `labeled` images mixed in under
/// their true labels. Labeled images found in `unlabeled` are dropped from
/// it. The images' labels in `train` are read only for `labeled`.
///
/// After training, the student's BatchNorm averages are re-estimated on the
/// clean unlabeled images ([`reestimate_batchnorm`]).
///
/// Returns the trained student and the teacher's predicted class for each
/// image of `unlabeled` (in its order, after the drop), for diagnostics.
#[allow(clippy::too_many_arguments)]
pub fn distill(
    cfg: &DistillConfig,
    teacher: &Classifier,
    student: Classifier,
    train: &Dataset,
    labeled: &[usize],
    unlabeled: &[usize],
    norm: &Normalization,
    device: &Device,
    quiet: bool,
    stage: &str,
) -> Result<(Classifier, Vec<u32>)> {
    cfg.check()?;
    let labels = train.labels().ok_or_else(|| {
        Error::invalid("dataset", "distillation needs the labeled images' labels")
    })?;
    let unlabeled = without_labeled(unlabeled, labeled, stage)?;
    let classes = train.num_classes();
    let probs = teacher_probabilities(
        teacher,
        train,
        &unlabeled,
        norm,
        cfg.temperature,
        cfg.eval_batch,
        device,
    )?;
    let pseudo = probs.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let mut targets: Vec<f32> = to_cpu_f32(&probs)?.flatten_all()?.to_vec1()?;
    let mut images = unlabeled.clone();
    if cfg.labeled_share > 0.0 && !labeled.is_empty() {
        let wanted = cfg.labeled_share / (1.0 - cfg.labeled_share) * unlabeled.len() as f64;
        let repeats = (wanted / labeled.len() as f64).round().max(1.0) as usize;
        for _ in 0..repeats {
            for &i in labeled {
                images.push(i);
                targets.extend((0..classes).map(|c| f32::from(c as u32 == labels[i])));
            }
        }
    }
    let shape = train.image_shape();
    let seed = cfg.fit.seed;
    let vars = params::trainable_vars(&student.map)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let (backbone, head) = (&student.backbone, &student.head);
    let report = fit_prefetched(
        &cfg.fit,
        stage,
        images.len(),
        vars,
        &student.map,
        quiet,
        |items, step| {
            let idx: Vec<usize> = items.iter().map(|&i| images[i]).collect();
            let px = apply_batch(&cfg.augment, &train.pixels_of(&idx), shape, seed, step);
            let t: Vec<f32> = items
                .iter()
                .flat_map(|&i| targets[i * classes..(i + 1) * classes].iter().copied())
                .collect();
            Ok((px, t))
        },
        |(px, t): (Vec<u8>, Vec<f32>), _| {
            let n = t.len() / classes;
            let x = batch::to_tensor(&px, shape, norm, device)?;
            let t = Tensor::from_vec(t, (n, classes), device)?;
            let logits = head.forward(&backbone.forward_t(&x, true)?)?;
            Ok((soft_cross_entropy(&logits, &t, cfg.temperature)?, n))
        },
        None,
    )?;
    // The student's BatchNorm averages were accumulated on strongly
    // augmented images; test images are clean. Re-estimate them on the clean
    // unlabeled images (one pass: with momentum 0.1 the old averages keep a
    // weight of 0.9^batches, under 1e-3 from 66 batches on).
    reestimate_batchnorm(
        backbone.as_ref(),
        train,
        &unlabeled,
        norm,
        cfg.eval_batch,
        device,
    )?;
    Ok((Classifier { report, ..student }, pseudo))
}

/// `unlabeled` less any image of `labeled` (in order); an error naming
/// `stage` when nothing is left.
fn without_labeled(unlabeled: &[usize], labeled: &[usize], stage: &str) -> Result<Vec<usize>> {
    let is_labeled: std::collections::HashSet<usize> = labeled.iter().copied().collect();
    let left: Vec<usize> = unlabeled
        .iter()
        .copied()
        .filter(|i| !is_labeled.contains(i))
        .collect();
    if left.is_empty() {
        return Err(Error::invalid(
            stage,
            "no unlabeled images left once the labeled ones are dropped",
        ));
    }
    Ok(left)
}

/// Settings of [`fixmatch`]: semi-supervised fine-tuning in which the model
/// labels the unlabeled images itself, online (Sohn et al. 2020, FixMatch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FixMatchConfig {
    /// Optimisation; `epochs` count passes over the unlabeled images and
    /// `batch_size` is the number of unlabeled images per step.
    pub fit: FitConfig,
    /// Labeled images per step (drawn with replacement, weakly augmented).
    pub labeled_batch: usize,
    /// Weak augmentation: labeled images and the views that are labeled.
    pub weak: Pipeline,
    /// Strong augmentation: the views that learn from those labels.
    pub strong: Pipeline,
    /// Least confidence (top softmax probability on the weak view) for an
    /// unlabeled image to count in a step.
    pub threshold: f64,
    /// Weight of the unlabeled loss against the labeled cross-entropy.
    pub unlabeled_weight: f64,
    /// Batch size of the BatchNorm re-estimation after training.
    pub eval_batch: usize,
    /// Distribution alignment (Berthelot et al., ReMixMatch, 2020): before
    /// thresholding, each weak-view prediction is multiplied by the class
    /// distribution of the labeled images over a running average of the
    /// model's weak-view predictions ([`DistributionAlignment`]) and
    /// renormalised, so that a model drifting towards a few classes has its
    /// pseudo-labels pulled back to the labeled images' class balance.
    #[serde(default)]
    pub distribution_alignment: bool,
}

/// Momentum of the running average of predictions that
/// [`DistributionAlignment`] divides by (about the last 100 steps).
pub const ALIGNMENT_MOMENTUM: f64 = 0.99;

/// The state of distribution alignment: the target class distribution and
/// a running average of the model's predicted one.
#[derive(Debug, Clone)]
pub struct DistributionAlignment {
    target: Vec<f64>,
    running: Option<Vec<f64>>,
    momentum: f64,
}

impl DistributionAlignment {
    /// Aligns to the class distribution of `labels` over `classes` classes.
    pub fn new(labels: &[u32], classes: usize, momentum: f64) -> Self {
        let mut target = vec![0.0; classes];
        for &y in labels {
            if let Some(t) = target.get_mut(y as usize) {
                *t += 1.0;
            }
        }
        let n = target.iter().sum::<f64>().max(1.0);
        target.iter_mut().for_each(|t| *t /= n);
        Self {
            target,
            running: None,
            momentum,
        }
    }

    /// Folds the batch's mean prediction into the running average (the
    /// first batch starts it), then returns every row of `probs`
    /// multiplied by target / running and renormalised to sum to 1.
    pub fn align(&mut self, probs: &[Vec<f32>]) -> Vec<Vec<f32>> {
        let k = self.target.len();
        if probs.is_empty() {
            return Vec::new();
        }
        let mut mean = vec![0.0f64; k];
        for row in probs {
            for (m, &p) in mean.iter_mut().zip(row) {
                *m += f64::from(p) / probs.len() as f64;
            }
        }
        let running = match self.running.take() {
            None => mean,
            Some(r) => r
                .iter()
                .zip(&mean)
                .map(|(r, m)| self.momentum * r + (1.0 - self.momentum) * m)
                .collect(),
        };
        let scale: Vec<f64> = self
            .target
            .iter()
            .zip(&running)
            .map(|(t, r)| t / r.max(1e-6))
            .collect();
        self.running = Some(running);
        probs
            .iter()
            .map(|row| {
                let w: Vec<f64> = row
                    .iter()
                    .zip(&scale)
                    .map(|(&p, s)| f64::from(p) * s)
                    .collect();
                let sum = w.iter().sum::<f64>();
                if sum > 0.0 {
                    w.iter().map(|v| (v / sum) as f32).collect()
                } else {
                    row.clone()
                }
            })
            .collect()
    }
}

impl FixMatchConfig {
    /// Fails on a threshold outside [0, 1], a negative or non-finite
    /// weight, or an empty labeled batch.
    pub fn check(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(Error::invalid(
                "fixmatch_threshold",
                format!("must lie in [0, 1], got {}", self.threshold),
            ));
        }
        if !(self.unlabeled_weight >= 0.0 && self.unlabeled_weight.is_finite()) {
            return Err(Error::invalid(
                "fixmatch_unlabeled_weight",
                format!("must be a number >= 0, got {}", self.unlabeled_weight),
            ));
        }
        if self.labeled_batch == 0 {
            return Err(Error::invalid(
                "fixmatch_labeled_batch",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// What [`fixmatch`] measured besides the losses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FixMatchStats {
    /// Share of unlabeled images over the threshold, per epoch.
    pub mask_rate: Vec<f64>,
}

/// FixMatch-style semi-supervised training of `student` (usually a
/// fine-tuned classifier): every step takes `cfg.fit.batch_size` unlabeled
/// images and `cfg.labeled_batch` labeled ones; the model's own prediction
/// on a weak view of each unlabeled image becomes its hard label where the
/// model is at least `cfg.threshold` confident, and a strong view of it is
/// trained towards that label. Loss: cross-entropy on the labeled images +
/// `cfg.unlabeled_weight` x the masked cross-entropy on the strong views
/// (averaged over all unlabeled images of the step). The three parts go
/// through the network as one batch, so BatchNorm sees them together.
/// Labeled images found in `unlabeled` are dropped from it; the images'
/// labels in `train` are read only for `labeled`. BatchNorm averages are
/// re-estimated on the clean unlabeled images at the end.
#[allow(clippy::too_many_arguments)]
pub fn fixmatch(
    cfg: &FixMatchConfig,
    student: Classifier,
    train: &Dataset,
    labeled: &[usize],
    unlabeled: &[usize],
    norm: &Normalization,
    device: &Device,
    quiet: bool,
    stage: &str,
) -> Result<(Classifier, FixMatchStats)> {
    use rand::Rng as _;
    cfg.check()?;
    let labels = train.labels().ok_or_else(|| {
        Error::invalid(
            "dataset",
            "semi-supervised training needs the labeled images' labels",
        )
    })?;
    if labeled.is_empty() {
        return Err(Error::invalid(stage, "no labeled images"));
    }
    let unlabeled = without_labeled(unlabeled, labeled, stage)?;
    let shape = train.image_shape();
    let seed = cfg.fit.seed;
    let vars = params::trainable_vars(&student.map)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let (backbone, head) = (&student.backbone, &student.head);
    let per_epoch = cfg.fit.steps_per_epoch(unlabeled.len());
    let (mut masked, mut seen) = (vec![0.0f64; cfg.fit.epochs], vec![0.0f64; cfg.fit.epochs]);
    let mut alignment: Option<DistributionAlignment> = None;
    let report = fit_prefetched(
        &cfg.fit,
        stage,
        unlabeled.len(),
        vars,
        &student.map,
        quiet,
        |items, step| {
            let mut r = rng::stream_at(seed, "fixmatch-labeled", step);
            let lab: Vec<usize> = (0..cfg.labeled_batch)
                .map(|_| labeled[r.random_range(0..labeled.len())])
                .collect();
            let y: Vec<u32> = lab.iter().map(|&i| labels[i]).collect();
            let xl = apply_batch(&cfg.weak, &train.pixels_of(&lab), shape, seed, step);
            let idx: Vec<usize> = items.iter().map(|&i| unlabeled[i]).collect();
            let px = train.pixels_of(&idx);
            let weak = apply_batch(
                &cfg.weak,
                &px,
                shape,
                rng::derive_seed(seed, "weak", 0),
                step,
            );
            let strong = apply_batch(
                &cfg.strong,
                &px,
                shape,
                rng::derive_seed(seed, "strong", 0),
                step,
            );
            Ok((xl, y, weak, strong))
        },
        |(xl, y, weak, strong): (Vec<u8>, Vec<u32>, Vec<u8>, Vec<u8>), step| {
            let (nl, nu) = (y.len(), weak.len() / (shape.0 * shape.1 * shape.2));
            let x = Tensor::cat(
                &[
                    batch::to_tensor(&xl, shape, norm, device)?,
                    batch::to_tensor(&weak, shape, norm, device)?,
                    batch::to_tensor(&strong, shape, norm, device)?,
                ],
                0,
            )?;
            let logits = head.forward(&backbone.forward_t(&x, true)?)?;
            let y = Tensor::new(y.as_slice(), device)?;
            let sup = candle_nn::loss::cross_entropy(&logits.narrow(0, 0, nl)?, &y)?;
            let mut probs =
                candle_nn::ops::softmax(&logits.narrow(0, nl, nu)?.detach(), D::Minus1)?;
            if cfg.distribution_alignment {
                let classes = probs.dim(1)?;
                let da = alignment.get_or_insert_with(|| {
                    let y: Vec<u32> = labeled.iter().map(|&i| labels[i]).collect();
                    DistributionAlignment::new(&y, classes, ALIGNMENT_MOMENTUM)
                });
                let rows = da.align(&probs.to_dtype(DType::F32)?.to_vec2::<f32>()?);
                let flat: Vec<f32> = rows.into_iter().flatten().collect();
                probs = Tensor::from_vec(flat, (nu, classes), device)?.to_dtype(probs.dtype())?;
            }
            let conf = probs.max(D::Minus1)?;
            let pseudo = probs.argmax(D::Minus1)?;
            let mask = conf.ge(cfg.threshold)?.to_dtype(DType::F32)?;
            let log_p = candle_nn::ops::log_softmax(&logits.narrow(0, nl + nu, nu)?, D::Minus1)?;
            let nll = log_p.gather(&pseudo.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
            let unsup = ((nll * &mask)?.sum_all()? / nu as f64)?;
            let epoch = (step as usize / per_epoch).min(cfg.fit.epochs - 1);
            masked[epoch] += f64::from(mask.sum_all()?.to_scalar::<f32>()?);
            seen[epoch] += nu as f64;
            let loss = (sup + (unsup * cfg.unlabeled_weight)?)?;
            Ok((loss, nl + 2 * nu))
        },
        None,
    )?;
    reestimate_batchnorm(
        backbone.as_ref(),
        train,
        &unlabeled,
        norm,
        cfg.eval_batch,
        device,
    )?;
    let mask_rate = masked
        .iter()
        .zip(&seen)
        .take(report.epochs_run)
        .map(|(m, n)| m / n.max(1.0))
        .collect();
    Ok((
        Classifier { report, ..student },
        FixMatchStats { mask_rate },
    ))
}

/// Runs the images at `indices` (no augmentation) through `backbone` in
/// training mode without an optimiser step, once, so that its BatchNorm
/// running averages move to those images' statistics; the weights do not
/// change. Used after training on inputs that differ from test inputs.
pub fn reestimate_batchnorm(
    backbone: &dyn Backbone,
    ds: &Dataset,
    indices: &[usize],
    norm: &Normalization,
    batch_size: usize,
    device: &Device,
) -> Result<()> {
    for chunk in indices.chunks(batch_size.max(2)) {
        // A batch of one has no variance to measure.
        if chunk.len() < 2 {
            continue;
        }
        let x = batch::gather(ds, chunk, norm, device)?;
        backbone.forward_t(&x, true)?;
    }
    Ok(())
}

/// Column mean and std of `x` (N, D), for standardising features.
fn standardiser(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let mean = x.mean_keepdim(0)?;
    let std = (x.broadcast_sub(&mean)?.sqr()?.mean_keepdim(0)? + 1e-6)?.sqrt()?;
    Ok((mean, std))
}

/// Logistic regression on frozen features: trains on (`train_x`,
/// `train_y`), predicts `test_x`. Features are standardised with the
/// training features' statistics.
pub fn linear_probe(
    cfg: &TransferConfig,
    train_x: &Tensor,
    train_y: &[u32],
    test_x: &Tensor,
    classes: usize,
) -> Result<Vec<u32>> {
    let (w, b) = fit_linear_head(cfg, train_x, train_y, classes)?;
    Ok(Linear::new(w, Some(b))
        .forward(test_x)?
        .argmax(D::Minus1)?
        .to_vec1::<u32>()?)
}

/// Logistic regression on frozen features, as weight (C, D) and bias (C)
/// acting on the raw features (the standardisation folded in).
pub fn fit_linear_head(
    cfg: &TransferConfig,
    train_x: &Tensor,
    train_y: &[u32],
    classes: usize,
) -> Result<(Tensor, Tensor)> {
    let device = train_x.device();
    let (mean, std) = standardiser(train_x)?;
    let norm = |x: &Tensor| -> Result<Tensor> {
        Ok(x.broadcast_sub(&mean)?.broadcast_div(&std)?.detach())
    };
    let tx = norm(train_x)?;
    let map = VarMap::new();
    let head = candle_nn::linear(
        tx.dim(1)?,
        classes,
        params::seeded_var_builder(&map, cfg.fit.seed ^ 0x11ea, device),
    )?;
    let y = Tensor::from_vec(train_y.to_vec(), train_y.len(), device)?;
    let fit_cfg = FitConfig {
        epochs: cfg.linear_steps,
        batch_size: train_y.len(),
        lr: cfg.linear_lr,
        weight_decay: cfg.linear_weight_decay,
        warmup_fraction: 0.0,
        patience: None,
        seed: cfg.fit.seed,
        drop_last: false,
    };
    fit(
        &fit_cfg,
        "linear probe",
        train_y.len(),
        map.all_vars(),
        &map,
        true,
        |_, _| {
            Ok((
                candle_nn::loss::cross_entropy(&head.forward(&tx)?, &y)?,
                train_y.len(),
            ))
        },
        None,
    )?;
    let w = head.weight().broadcast_div(&std)?;
    let b = (head.bias().expect("linear has a bias") - w.matmul(&mean.t()?)?.squeeze(1)?)?;
    Ok((w.detach(), b.detach()))
}

fn l2_normalise(x: &Tensor) -> Result<Tensor> {
    let n = (x.sqr()?.sum_keepdim(1)? + 1e-12)?.sqrt()?;
    Ok(x.broadcast_div(&n)?)
}

/// Votes of the `k` most similar references for each query (similarity-
/// weighted); `exclude_self` skips the query's own index (leave-one-out).
fn knn_vote(
    sim: &[Vec<f32>],
    ref_y: &[u32],
    k: usize,
    classes: usize,
    exclude_self: bool,
) -> Vec<u32> {
    sim.iter()
        .enumerate()
        .map(|(q, row)| {
            let mut order: Vec<usize> = (0..row.len())
                .filter(|&j| !(exclude_self && j == q))
                .collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            let mut votes = vec![0f32; classes];
            for &j in order.iter().take(k) {
                votes[ref_y[j] as usize] += 1.0 + row[j];
            }
            votes
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
                .map_or(0, |(c, _)| c as u32)
        })
        .collect()
}

/// Leave-one-out accuracy of cosine `k`-NN on (`x`, `y`): each sample is
/// classified by the others (a label-cheap monitor of feature quality).
pub fn knn_leave_one_out(x: &Tensor, y: &[u32], classes: usize, k: usize) -> Result<f64> {
    let x = l2_normalise(&to_cpu_f32(x)?)?;
    let sim: Vec<Vec<f32>> = x.matmul(&x.t()?)?.to_vec2()?;
    let k = k.clamp(1, y.len().saturating_sub(1).max(1));
    let pred = knn_vote(&sim, y, k, classes, true);
    Ok(selfsup_core::metrics::accuracy(&pred, y))
}

/// Cosine kNN. Chooses k among `ks` by leave-one-out accuracy on the
/// training features (ties go to the smaller k), then predicts `test_x`.
/// Returns the predictions and the chosen k.
pub fn knn(
    train_x: &Tensor,
    train_y: &[u32],
    test_x: &Tensor,
    classes: usize,
    ks: &[usize],
) -> Result<(Vec<u32>, usize)> {
    let tr = l2_normalise(train_x)?;
    let te = l2_normalise(test_x)?;
    let self_sim: Vec<Vec<f32>> = tr.matmul(&tr.t()?)?.to_vec2()?;
    let n = train_y.len();
    let mut candidates: Vec<usize> = ks.iter().copied().filter(|&k| k >= 1 && k < n).collect();
    if candidates.is_empty() {
        candidates.push(1);
    }
    let mut best = (f64::NEG_INFINITY, candidates[0]);
    for &k in &candidates {
        let pred = knn_vote(&self_sim, train_y, k, classes, true);
        let acc = selfsup_core::metrics::accuracy(&pred, train_y);
        if acc > best.0 {
            best = (acc, k);
        }
    }
    let k = best.1;
    let mut preds = Vec::with_capacity(te.dim(0)?);
    // Chunk the test set to bound the similarity matrix's memory.
    for start in (0..te.dim(0)?).step_by(2048) {
        let len = 2048.min(te.dim(0)? - start);
        let sim: Vec<Vec<f32>> = te.narrow(0, start, len)?.matmul(&tr.t()?)?.to_vec2()?;
        preds.extend(knn_vote(&sim, train_y, k, classes, false));
    }
    Ok((preds, k))
}

/// Converts a tensor of features to f32 on the CPU (for reports and tests).
pub fn to_cpu_f32(x: &Tensor) -> Result<Tensor> {
    Ok(x.to_device(&Device::Cpu)?.to_dtype(DType::F32)?)
}

/// Rebuilds a classifier (backbone + head) saved by a transfer stage.
pub fn load_classifier(
    dir: &Path,
    device: &Device,
) -> Result<(Classifier, checkpoint::StageConfig)> {
    let enc = checkpoint::load(dir, 0, device)?;
    let outputs = enc.config.head_outputs.ok_or_else(|| {
        Error::format(dir.join("config.json"), "not a classifier checkpoint (no head_outputs); evaluate it with --protocol linear or knn")
    })?;
    let head = candle_nn::linear(
        enc.backbone.feature_dim(),
        outputs,
        params::seeded_var_builder(&enc.map, 0, device).pp(HEAD_PREFIX),
    )?;
    selfsup_core::checkpoint::load_into(
        &enc.map,
        &dir.join(selfsup_core::checkpoint::WEIGHTS_FILE),
        HEAD_PREFIX,
        true,
    )?;
    Ok((
        Classifier {
            map: enc.map,
            backbone: enc.backbone,
            head,
            report: FitReport::default(),
            validation_images: 0,
            val_error: Vec::new(),
            val_cross_entropy: Vec::new(),
        },
        enc.config,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs(n_per: usize, shift: f32) -> (Tensor, Vec<u32>) {
        let mut v = Vec::new();
        let mut y = Vec::new();
        for c in 0..3u32 {
            for i in 0..n_per {
                let jitter = ((i * 7919 + c as usize * 31) % 17) as f32 / 17.0 - 0.5;
                let mut row = vec![jitter * 0.3; 4];
                row[c as usize] += 2.0 + shift;
                v.extend(row);
                y.push(c);
            }
        }
        (
            Tensor::from_vec(v, (3 * n_per, 4), &Device::Cpu).unwrap(),
            y,
        )
    }

    fn cfg() -> TransferConfig {
        TransferConfig {
            fit: FitConfig {
                epochs: 1,
                batch_size: 8,
                lr: 1e-3,
                weight_decay: 0.0,
                warmup_fraction: 0.0,
                patience: None,
                seed: 0,
                drop_last: false,
            },
            augment: Pipeline::default(),
            probe_init: false,
            val_fraction: 0.1,
            linear_steps: 100,
            linear_lr: 0.05,
            linear_weight_decay: 1e-4,
            knn_ks: vec![1, 3, 5, 50],
            eval_batch: 64,
        }
    }

    #[test]
    fn knn_separates_blobs_and_picks_k_without_test_labels() {
        let (tr, ty) = blobs(6, 0.0);
        let (te, ey) = blobs(5, 0.3);
        let (pred, k) = knn(&tr, &ty, &te, 3, &[1, 3, 5, 50]).unwrap();
        assert_eq!(selfsup_core::metrics::accuracy(&pred, &ey), 1.0);
        assert!(k < 18, "k must be below the number of labeled points");
    }

    #[test]
    fn knn_vote_leave_one_out_skips_self() {
        // two points of different classes, each nearest to itself
        let sim = vec![vec![1.0, 0.1], vec![0.1, 1.0]];
        assert_eq!(knn_vote(&sim, &[0, 1], 1, 2, false), vec![0, 1]);
        assert_eq!(knn_vote(&sim, &[0, 1], 1, 2, true), vec![1, 0]);
    }

    #[test]
    fn holdout_is_stratified_disjoint_and_seeded() {
        // 3 classes with 10, 4 and 2 labeled images among 40.
        let labels: Vec<u32> = (0..40).map(|i| (i % 4) as u32).collect();
        let labeled: Vec<usize> = (0..40)
            .filter(|&i| match labels[i] {
                0 => true,
                1 => i < 16,
                2 => i < 8,
                _ => false,
            })
            .collect();
        let (fit, val) = holdout(&labels, &labeled, 0.2, 3).unwrap();
        let count = |v: &[usize], c: u32| v.iter().filter(|&&i| labels[i] == c).count();
        // round(0.2 n) clamped to [1, n - 1]
        assert_eq!([count(&val, 0), count(&val, 1), count(&val, 2)], [2, 1, 1]);
        assert_eq!(fit.len() + val.len(), labeled.len());
        assert!(val.iter().all(|i| !fit.contains(i) && labeled.contains(i)));
        assert_eq!(
            (fit.clone(), val.clone()),
            holdout(&labels, &labeled, 0.2, 3).unwrap()
        );
        let other: Vec<_> = (0..8)
            .map(|s| holdout(&labels, &labeled, 0.2, s).unwrap().1)
            .collect();
        assert!(
            other.iter().any(|v| v != &val),
            "the seed must change the draw"
        );

        let one = [0usize, 1, 4, 8];
        let e = holdout(&labels, &one, 0.2, 0).unwrap_err().to_string();
        assert!(e.contains("class 1") && e.contains("at least 2"), "{e}");
        assert!(holdout(&labels, &labeled, 1.0, 0).is_err());
    }

    #[test]
    fn soft_cross_entropy_matches_hand_values() {
        let dev = Device::Cpu;
        // log softmax([0, ln 3]) = [ln 1/4, ln 3/4]
        let logits = Tensor::new(&[[0f32, 3f32.ln()]], &dev).unwrap();
        let even = Tensor::new(&[[0.5f32, 0.5]], &dev).unwrap();
        let got = soft_cross_entropy(&logits, &even, 1.0).unwrap();
        let want = -0.5 * (0.25f32.ln() + 0.75f32.ln());
        assert!((got.to_scalar::<f32>().unwrap() - want).abs() < 1e-6);
        // the temperature divides the logits: twice the logits at T = 2 is the same
        let doubled = (&logits * 2.0).unwrap();
        let got2 = soft_cross_entropy(&doubled, &even, 2.0).unwrap();
        assert!((got2.to_scalar::<f32>().unwrap() - want).abs() < 1e-6);
        // one-hot targets at T = 1: the ordinary cross-entropy
        let logits = Tensor::new(&[[1f32, -2.0, 0.5], [0.0, 0.3, 2.0]], &dev).unwrap();
        let onehot = Tensor::new(&[[0f32, 1.0, 0.0], [0.0, 0.0, 1.0]], &dev).unwrap();
        let y = Tensor::new(&[1u32, 2], &dev).unwrap();
        let hard = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
        let soft = soft_cross_entropy(&logits, &onehot, 1.0).unwrap();
        assert!((hard.to_scalar::<f32>().unwrap() - soft.to_scalar::<f32>().unwrap()).abs() < 1e-6);
    }

    /// 8x8 gray images: class 0 has a bright top half, class 1 a bright
    /// bottom half, with a little texture.
    fn halves(n: usize) -> Dataset {
        let mut px = Vec::with_capacity(n * 64);
        let mut y = Vec::with_capacity(n);
        for i in 0..n {
            let c = (i % 2) as u32;
            for r in 0..8 {
                for col in 0..8 {
                    let bright = (r < 4) == (c == 0);
                    let noise = ((i * 131 + r * 17 + col * 7) % 40) as u8;
                    px.push(if bright { 180 + noise } else { 20 + noise });
                }
            }
            y.push(c);
        }
        Dataset::new(
            px,
            (n, 1, 8, 8),
            Some(y),
            vec!["top".into(), "bottom".into()],
        )
        .unwrap()
    }

    /// `halves(n)`, its normalisation over every image, and a tiny ConvNet.
    fn tiny_task(n: usize) -> (Dataset, Normalization, BackboneConfig) {
        let ds = halves(n);
        let all: Vec<usize> = (0..n).collect();
        let norm = batch::fit_normalization(&ds, &all);
        let bb = BackboneConfig::ConvNet {
            in_channels: 1,
            widths: vec![4, 8],
            convs_per_stage: 1,
        };
        (ds, norm, bb)
    }

    #[test]
    fn linear_head_folds_the_standardisation_into_its_weights() {
        // Blobs far from the origin at a large scale: a head applied to the
        // raw features is right only if the training statistics are folded
        // into it.
        let (tr, ty) = blobs(6, 0.0);
        let far = ((tr * 50.0).unwrap() + 1000.0).unwrap();
        let (w, b) = fit_linear_head(&cfg(), &far, &ty, 3).unwrap();
        assert_eq!(w.dims(), &[3, 4]);
        assert_eq!(b.dims(), &[3]);
        let pred: Vec<u32> = far
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap()
            .argmax(D::Minus1)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(pred, ty);
        assert_eq!(linear_probe(&cfg(), &far, &ty, &far, 3).unwrap(), ty);
    }

    #[test]
    fn probe_init_starts_the_head_from_the_linear_probe() {
        let dev = Device::Cpu;
        let (ds, norm, bb) = tiny_task(32);
        let labeled: Vec<usize> = (0..12).collect();
        let mut c = cfg();
        c.fit.lr = 0.0; // nothing moves: the head is what initialisation left
        c.probe_init = true;
        let cls = train_classifier(&c, None, &bb, &ds, &labeled, &norm, &dev, true, "p").unwrap();
        // The same seeded backbone, probed by hand.
        let map = VarMap::new();
        let b0 = bb
            .build(params::seeded_var_builder(&map, c.fit.seed, &dev).pp(BACKBONE_PREFIX))
            .unwrap();
        let x = extract_features(b0.as_ref(), &ds, &labeled, &norm, 64, &dev).unwrap();
        let y: Vec<u32> = labeled.iter().map(|&i| ds.labels().unwrap()[i]).collect();
        let (w, b) = fit_linear_head(&c, &x, &y, 2).unwrap();
        let diff = |a: &Tensor, b: &Tensor| params::max_abs_diff(a, b).unwrap();
        assert!(diff(cls.head.weight(), &w) < 1e-5);
        assert!(diff(cls.head.bias().unwrap(), &b) < 1e-5);
        // Without it the head keeps its random initialisation.
        c.probe_init = false;
        let plain = train_classifier(&c, None, &bb, &ds, &labeled, &norm, &dev, true, "f").unwrap();
        assert!(diff(plain.head.weight(), &w) > 1e-2);
    }

    #[test]
    fn distill_trains_the_student_towards_the_teacher() {
        let dev = Device::Cpu;
        let (ds, norm, bb) = tiny_task(64);
        let labeled: Vec<usize> = (0..8).collect();
        let mut tcfg = cfg();
        tcfg.fit.epochs = 30;
        tcfg.fit.lr = 1e-2;
        let teacher =
            train_classifier(&tcfg, None, &bb, &ds, &labeled, &norm, &dev, true, "t").unwrap();
        // a barely trained student from other random weights
        tcfg.fit.epochs = 1;
        tcfg.fit.lr = 1e-5;
        tcfg.fit.seed = 9;
        let student =
            train_classifier(&tcfg, None, &bb, &ds, &labeled, &norm, &dev, true, "s").unwrap();
        let dcfg = DistillConfig {
            fit: FitConfig {
                epochs: 8,
                batch_size: 16,
                lr: 1e-2,
                ..cfg().fit
            },
            augment: Pipeline::default(),
            temperature: 1.0,
            labeled_share: 0.2,
            eval_batch: 32,
        };
        // the pool overlaps the labeled images: they must be dropped from it
        let pool: Vec<usize> = (4..64).collect();
        let (student, pseudo) = distill(
            &dcfg, &teacher, student, &ds, &labeled, &pool, &norm, &dev, true, "d",
        )
        .unwrap();
        assert_eq!(pseudo.len(), 56, "labeled images 4..8 leave the pool");
        let unl: Vec<usize> = (8..64).collect();
        let taught = teacher.predict(&ds, &unl, &norm, 32, &dev).unwrap();
        assert_eq!(
            pseudo, taught,
            "pseudo-labels are the teacher's predictions"
        );
        let learned = student.predict(&ds, &unl, &norm, 32, &dev).unwrap();
        let agree = learned.iter().zip(&taught).filter(|(a, b)| a == b).count();
        assert!(agree >= 50, "student agrees with the teacher on {agree}/56");
        let loss = &student.report.train_loss;
        assert_eq!(loss.len(), 8);
        assert!(loss[7] < loss[0], "distillation loss must fall: {loss:?}");

        let teacher2 =
            train_classifier(&cfg(), None, &bb, &ds, &labeled, &norm, &dev, true, "t").unwrap();
        let mut bad = dcfg.clone();
        bad.temperature = 0.0;
        let e = distill(
            &bad, &teacher, teacher2, &ds, &labeled, &pool, &norm, &dev, true, "d",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("distill_temperature"), "{e}");
    }

    #[test]
    fn distribution_alignment_pulls_predictions_to_the_labeled_balance() {
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
        // balanced labels; a model that favours class 0
        let mut da = DistributionAlignment::new(&[0, 1, 0, 1], 2, 0.99);
        let out = da.align(&[vec![0.9, 0.1], vec![0.7, 0.3]]);
        // running mean (0.8, 0.2): weights (0.5/0.8, 0.5/0.2), renormalised
        assert!(close(&out[0], &[0.5625 / 0.8125, 0.25 / 0.8125]), "{out:?}");
        assert!(close(&out[1], &[0.4375 / 1.1875, 0.75 / 1.1875]), "{out:?}");
        for row in &out {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        // the running average moves slowly: the next uniform batch is still
        // pushed away from class 0
        let out = da.align(&[vec![0.5, 0.5]]);
        let r0 = 0.99 * 0.8 + 0.01 * 0.5;
        let w = [0.5 * 0.5 / r0, 0.5 * 0.5 / (1.0 - r0)];
        let want = [w[0] / (w[0] + w[1]), w[1] / (w[0] + w[1])];
        assert!(close(&out[0], &[want[0] as f32, want[1] as f32]), "{out:?}");
        // predictions already in the labeled balance are left as they are
        let mut da = DistributionAlignment::new(&[0, 1], 2, 0.99);
        let rows = vec![vec![0.6, 0.4], vec![0.4, 0.6]];
        let out = da.align(&rows);
        assert!(
            close(&out[0], &rows[0]) && close(&out[1], &rows[1]),
            "{out:?}"
        );
        // the target follows the labeled images' classes (3 of class 1)
        let mut da = DistributionAlignment::new(&[1, 1, 1, 0], 2, 0.99);
        let out = da.align(&[vec![0.5, 0.5]]);
        assert!(close(&out[0], &[0.25, 0.75]), "{out:?}");
    }

    #[test]
    fn fixmatch_masks_by_confidence_learns_the_task_and_checks_its_settings() {
        let dev = Device::Cpu;
        let (ds, norm, bb) = tiny_task(64);
        let labeled: Vec<usize> = (0..8).collect();
        // a barely trained start: near-uniform predictions
        let mut tcfg = cfg();
        tcfg.fit.epochs = 1;
        tcfg.fit.lr = 1e-5;
        let start =
            || train_classifier(&tcfg, None, &bb, &ds, &labeled, &norm, &dev, true, "s").unwrap();
        let fcfg = FixMatchConfig {
            fit: FitConfig {
                epochs: 8,
                batch_size: 16,
                lr: 1e-2,
                ..cfg().fit
            },
            labeled_batch: 8,
            weak: Pipeline::default(),
            strong: Pipeline::default(),
            threshold: 0.0,
            unlabeled_weight: 1.0,
            eval_batch: 32,
            distribution_alignment: false,
        };
        // the pool overlaps the labeled images: they are dropped from it
        let pool: Vec<usize> = (4..64).collect();
        let unl: Vec<usize> = (8..64).collect();
        let fm = |c: &FixMatchConfig| {
            fixmatch(c, start(), &ds, &labeled, &pool, &norm, &dev, true, "fm").unwrap()
        };
        // Threshold 0: every unlabeled image counts in every epoch.
        let (_, stats) = fm(&fcfg);
        assert_eq!(stats.mask_rate, vec![1.0; 8]);
        // Threshold 1: a near-uniform start is never that sure, so the
        // first epoch's unlabeled images all fall under it.
        let (_, stats) = fm(&FixMatchConfig {
            threshold: 1.0,
            ..fcfg.clone()
        });
        assert_eq!(stats.mask_rate[0], 0.0, "{:?}", stats.mask_rate);
        assert!(stats.mask_rate.iter().all(|m| (0.0..=1.0).contains(m)));
        // The usual threshold, plain and with distribution alignment: the
        // labeled images teach the task, and the unlabeled ones join as the
        // model grows sure of them.
        let truth = ds.labels().unwrap();
        for align in [false, true] {
            let (student, stats) = fm(&FixMatchConfig {
                threshold: 0.95,
                distribution_alignment: align,
                ..fcfg.clone()
            });
            assert_eq!(student.report.train_loss.len(), 8);
            assert!(
                stats.mask_rate[7] > stats.mask_rate[0],
                "align {align}: {:?}",
                stats.mask_rate
            );
            let p = student.predict(&ds, &unl, &norm, 32, &dev).unwrap();
            let right = p.iter().zip(&unl).filter(|(p, &i)| **p == truth[i]).count();
            assert!(right >= 50, "align {align}: {right}/56 right");
        }

        let bad = |c: FixMatchConfig, pool: &[usize]| {
            fixmatch(&c, start(), &ds, &labeled, pool, &norm, &dev, true, "fm")
                .err()
                .unwrap()
                .to_string()
        };
        let e = bad(
            FixMatchConfig {
                threshold: 1.5,
                ..fcfg.clone()
            },
            &pool,
        );
        assert!(e.contains("fixmatch_threshold"), "{e}");
        let e = bad(
            FixMatchConfig {
                labeled_batch: 0,
                ..fcfg.clone()
            },
            &pool,
        );
        assert!(e.contains("fixmatch_labeled_batch"), "{e}");
        let e = bad(fcfg.clone(), &labeled);
        assert!(e.contains("no unlabeled images left"), "{e}");
    }

    #[test]
    fn reestimating_batchnorm_makes_eval_mode_match_batch_statistics() {
        let dev = Device::Cpu;
        let (ds, norm, bb_cfg) = tiny_task(32);
        let all: Vec<usize> = (0..32).collect();
        let map = VarMap::new();
        let bb = bb_cfg
            .build(params::seeded_var_builder(&map, 0, &dev))
            .unwrap();
        let x = batch::gather(&ds, &all, &norm, &dev).unwrap();
        let train_mode = bb.forward_t(&x, true).unwrap().detach();
        let before = bb.forward_t(&x, false).unwrap();
        let weights: Vec<(String, Tensor)> = params::trainable_vars(&map)
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().copy().unwrap()))
            .collect();
        // One pass moves the averages 10 %; 80 passes over the same batch
        // leave 0.9^80 < 3e-4 of the initial (0, 1).
        for _ in 0..80 {
            reestimate_batchnorm(bb.as_ref(), &ds, &all, &norm, 32, &dev).unwrap();
        }
        let after = bb.forward_t(&x, false).unwrap();
        let gap_before = params::max_abs_diff(&before, &train_mode).unwrap();
        let gap_after = params::max_abs_diff(&after, &train_mode).unwrap();
        assert!(
            gap_before > 0.05,
            "initial averages already fit: {gap_before}"
        );
        assert!(gap_after < 0.02, "eval vs batch statistics: {gap_after}");
        for (name, w) in weights {
            let now = map.data().lock().unwrap()[&name]
                .as_tensor()
                .copy()
                .unwrap();
            assert_eq!(
                params::max_abs_diff(&w, &now).unwrap(),
                0.0,
                "{name} changed"
            );
        }
    }

    #[test]
    fn linear_probe_learns_blobs() {
        let (tr, ty) = blobs(6, 0.0);
        let (te, ey) = blobs(5, 0.3);
        let pred = linear_probe(&cfg(), &tr, &ty, &te, 3).unwrap();
        assert_eq!(selfsup_core::metrics::accuracy(&pred, &ey), 1.0);
    }
}
