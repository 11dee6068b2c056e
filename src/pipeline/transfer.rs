//! Supervised transfer stages: fine-tune (from a pretraining or from
//! scratch, optionally after a linear probe), and a classifier's test
//! accuracy.

use super::context::Stage;
use crate::backbones::checkpoint::{self as ckpt, StageConfig};
use crate::core::{metrics, Result};
use crate::data::split;
use crate::finetune::{self, TransferConfig};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The `metrics` of a `finetune` or `lpft` stage's config.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferMetrics {
    /// Mean training loss per epoch.
    pub train_loss: Vec<f64>,
    /// Wall time.
    pub seconds: f64,
    /// Epochs trained.
    pub epochs_run: usize,
    /// Error rate on the held-out labeled images per epoch (empty without
    /// early stopping).
    pub val_error: Vec<f64>,
    /// Cross-entropy on them per epoch.
    pub val_cross_entropy: Vec<f64>,
    /// The score early stopping minimised per epoch.
    pub val_score: Vec<f64>,
    /// The epoch whose weights were kept (0: the last).
    pub best_epoch: usize,
    /// How many labeled images were held out.
    pub validation_images: usize,
}

/// Fine-tunes (from the pretraining in `init`, or from scratch) on the
/// seed's K-shot split and writes the classifier to `dir`. With
/// `probe_init` (the `lpft` protocol) the head starts from a linear probe
/// on the frozen features.
pub fn transfer_stage(
    ctx: &Stage,
    init: Option<&Path>,
    probe_init: bool,
    k: usize,
    seed: u64,
    dir: &Path,
) -> Result<finetune::Classifier> {
    let sp = split::stratified(ctx.labels(), k, seed)?;
    let cfg = TransferConfig {
        probe_init,
        ..ctx.spec.transfer_config(seed, ctx.shape())?
    };
    let protocol = if probe_init { "lpft" } else { "finetune" };
    let method = match init {
        Some(d) => checkpoint_method(d)?,
        None => "scratch".to_string(),
    };
    let key = (protocol, &method, seed, k, &cfg);
    let progress = ctx.progress(dir, &key, ctx.resume)?;
    let cls = finetune::train_classifier(
        &cfg,
        init,
        ctx.backbone,
        ctx.images(&sp.labeled, &[]),
        ctx.run(&format!("{protocol}/{method}"), progress.as_ref()),
    )?;
    let metrics = TransferMetrics {
        train_loss: cls.report.train_loss.clone(),
        seconds: cls.report.seconds,
        epochs_run: cls.report.epochs_run,
        val_error: cls.val_error.clone(),
        val_cross_entropy: cls.val_cross_entropy.clone(),
        val_score: cls.report.val_loss.clone(),
        best_epoch: cls.report.best_epoch,
        validation_images: cls.validation_images,
    };
    let recipe_json = serde_json::json!({
        "protocol": protocol,
        "labels_per_class": k,
        "init": init.map(|p| p.display().to_string()),
        "transfer": cfg,
    });
    let metrics = serde_json::to_value(metrics).expect("metrics serialise");
    save_classifier_stage(ctx, &method, seed, dir, &cls, recipe_json, metrics)?;
    Ok(cls)
}

/// Writes a trained classifier as a `transfer` stage directory `dir`.
pub(super) fn save_classifier_stage(
    ctx: &Stage,
    method: &str,
    seed: u64,
    dir: &Path,
    cls: &finetune::Classifier,
    recipe_json: serde_json::Value,
    metrics: serde_json::Value,
) -> Result<()> {
    let classes = ctx.prep.pair.train.num_classes();
    let sc = ctx.config(
        "transfer",
        method,
        seed,
        Some(classes),
        recipe_json,
        metrics,
    );
    ckpt::save(dir, &cls.map, &sc)?;
    crate::core::train::write_metrics_csv(
        &dir.join(super::pretrain::METRICS_FILE),
        &cls.report,
        &[
            ("val_error", &cls.val_error),
            ("val_cross_entropy", &cls.val_cross_entropy),
        ],
    )
}

/// The method a stage directory was trained with.
fn checkpoint_method(dir: &Path) -> Result<String> {
    let cfg: StageConfig = crate::core::checkpoint::read_config(dir)?;
    Ok(cfg.method)
}

/// Test accuracy of a classifier.
pub fn classifier_accuracy(ctx: &Stage, cls: &finetune::Classifier) -> Result<f64> {
    let test = &ctx.prep.pair.test;
    let idx: Vec<usize> = (0..test.len()).collect();
    let pred = cls.predict(
        test,
        &idx,
        &ctx.prep.norm,
        ctx.spec.training.eval_batch,
        ctx.device,
    )?;
    Ok(metrics::accuracy(&pred, test.labels().expect("labels")))
}
