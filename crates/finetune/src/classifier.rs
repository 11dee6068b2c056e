//! Classifiers on an encoder: training one on the K labeled images
//! (scratch, finetune, LP-FT), loading one, and the helpers the other
//! protocols share (features, BatchNorm re-estimation).

use crate::frozen::fit_linear_head;
use crate::{Images, StageRun};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Linear, VarMap};
use selfsup_augment::{apply_batch, Pipeline};
use selfsup_backbones::checkpoint::{self, BACKBONE_PREFIX, HEAD_PREFIX};
use selfsup_backbones::{Backbone, BackboneConfig};
use selfsup_core::train::{
    fit_prefetched, EpochCheckpoint, FitConfig, FitReport, FitRun, WithMeta,
};
use selfsup_core::{params, rng, Error, Normalization, Result};
use selfsup_data::{batch, Dataset};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
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
    let batch_size = batch_size.max(1);
    let bar =
        selfsup_core::progress::eval_bar(indices.len().div_ceil(batch_size) as u64, "features");
    for chunk in indices.chunks(batch_size) {
        bar.inc(1);
        let x = batch::gather(ds, chunk, norm, device)?;
        // Detach: the parameters are variables, so each output would keep its
        // whole autograd graph (every activation) alive until the end.
        parts.push(backbone.forward_t(&x, false)?.detach());
    }
    bar.finish_and_clear();
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
pub fn train_classifier(
    cfg: &TransferConfig,
    init: Option<&Path>,
    backbone_cfg: &BackboneConfig,
    data: Images,
    run: StageRun,
) -> Result<Classifier> {
    let Images {
        train,
        labeled,
        norm,
        ..
    } = data;
    let StageRun {
        device,
        quiet,
        stage,
        checkpoint,
    } = run;
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
    // The per-epoch history lives beside the loop's own state, so that a
    // continued run reports the epochs before the interruption too.
    let history: RefCell<Vec<(f64, f64)>> = RefCell::default();
    let store = checkpoint.map(|inner| WithMeta {
        inner,
        key: "val_history",
        state: &history,
    });
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
        history.borrow_mut().push((error, loss));
        Ok(error + VAL_LOSS_WEIGHT * loss)
    };
    let report = fit_prefetched(
        FitRun {
            cfg: &cfg.fit,
            stage,
            n_items: fit_idx.len(),
            vars,
            map: &map,
            quiet,
            checkpoint: store.as_ref().map(|s| s as &dyn EpochCheckpoint),
        },
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
    let history = history.into_inner();
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
