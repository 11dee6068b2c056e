//! selfsup-finetune turns an encoder and K labeled images per class into a
//! classifier, with the four protocols of the few-label literature:
//!
//! - [`train_classifier`] with `init = None`: **scratch**, the same network
//!   from random weights, same augmentation and epoch budget;
//! - [`train_classifier`] with a checkpoint: **finetune**, every weight
//!   trained from the pretrained backbone under a new head;
//! - [`linear_probe`]: a logistic-regression head on frozen features;
//! - [`knn`]: cosine k-nearest neighbours on frozen features, with k chosen
//!   by leave-one-out accuracy on the labeled images (never the test set).
//!
//! **Invariant:** this crate never imports an objective crate. It works on
//! checkpoints (`selfsup_backbones::checkpoint`), so any pretraining method
//! that writes one can be transferred.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Linear, VarMap};
use selfsup_augment::{apply_batch, CropFlip};
use selfsup_backbones::checkpoint::{self, BACKBONE_PREFIX, HEAD_PREFIX};
use selfsup_backbones::{Backbone, BackboneConfig};
use selfsup_core::train::{fit, fit_prefetched, FitConfig, FitReport};
use selfsup_core::{params, Error, Normalization, Result};
use selfsup_data::{batch, Dataset};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Transfer settings shared by all protocols.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferConfig {
    /// Fine-tune / scratch optimisation (fixed epochs: with K labels there
    /// is no label to spare for early stopping).
    pub fit: FitConfig,
    /// Augmentation for fine-tune and scratch.
    pub augment: CropFlip,
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
}

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
        let feats = extract_features(
            self.backbone.as_ref(),
            ds,
            indices,
            norm,
            batch_size,
            device,
        )?;
        Ok(self
            .head
            .forward(&feats)?
            .argmax(D::Minus1)?
            .to_vec1::<u32>()?)
    }
}

/// Trains backbone + new head on the `labeled` images of `train`. With
/// `init`, the backbone starts from that stage directory's weights (and its
/// config must match `backbone_cfg`); without, from seeded random weights.
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
    let (map, backbone) = match init {
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
    let report = fit_prefetched(
        &cfg.fit,
        stage,
        labeled.len(),
        vars,
        &map,
        quiet,
        |items, step| {
            let idx: Vec<usize> = items.iter().map(|&i| labeled[i]).collect();
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
        None,
    )?;
    Ok(Classifier {
        map,
        backbone,
        head,
        report,
    })
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
    let device = train_x.device();
    let (mean, std) = standardiser(train_x)?;
    let norm = |x: &Tensor| -> Result<Tensor> {
        Ok(x.broadcast_sub(&mean)?.broadcast_div(&std)?.detach())
    };
    let (tx, vx) = (norm(train_x)?, norm(test_x)?);
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
    Ok(head.forward(&vx)?.argmax(D::Minus1)?.to_vec1::<u32>()?)
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
            augment: CropFlip::NONE,
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
    fn linear_probe_learns_blobs() {
        let (tr, ty) = blobs(6, 0.0);
        let (te, ey) = blobs(5, 0.3);
        let pred = linear_probe(&cfg(), &tr, &ty, &te, 3).unwrap();
        assert_eq!(selfsup_core::metrics::accuracy(&pred, &ey), 1.0);
    }
}
