//! The pretraining stage: one method, one seed, on the unlabeled pool.

use super::context::Stage;
use super::data::pretrain_pool;
use crate::backbones::checkpoint::{self as ckpt, StageConfig};
use crate::core::report::PretrainSummary;
use crate::core::train::EpochCheckpoint;
use crate::core::train::FitReport;
use crate::core::Result;
use crate::data::split;
use crate::finetune;
use crate::methods;
use crate::pretext::{self, PretrainConfig};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Whose labels a pretraining must not see: the labeled split of
/// `max_k` per class for every seed in `seeds`.
#[derive(Debug, Clone, Copy)]
pub struct Excluded<'a> {
    /// The largest label budget.
    pub max_k: usize,
    /// The seeds whose splits are kept out of the pool.
    pub seeds: &'a [u64],
}

/// What a pretraining stage did: its summary row and full training history.
pub struct PretrainOutcome {
    /// The report row.
    pub summary: PretrainSummary,
    /// Per-epoch and per-step losses.
    pub history: FitReport,
}

/// The `metrics` of a pretraining stage's config.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PretrainMetrics {
    /// Held-out pretext loss of the kept epoch.
    #[serde(deserialize_with = "null_as_nan")]
    pub val_loss: f64,
    /// Held-out pretext accuracy (NaN, written as null, where the pretext
    /// has none).
    #[serde(deserialize_with = "null_as_nan")]
    pub val_accuracy: f64,
    /// Epochs trained.
    pub epochs_run: usize,
    /// The epoch whose weights were kept (1-based).
    pub best_epoch: usize,
    /// Mean training loss per epoch.
    pub train_loss: Vec<f64>,
    /// Held-out loss per epoch.
    pub val_loss_per_epoch: Vec<f64>,
    /// Training throughput.
    pub images_per_s: f64,
    /// Wall time.
    pub seconds: f64,
    /// Size of the pool it learned from.
    pub unlabeled_images: usize,
    /// The kNN monitor's accuracy after each epoch (empty when off).
    #[serde(default)]
    pub knn_monitor: Vec<f64>,
    /// Loss of every step.
    #[serde(default)]
    pub step_loss: Vec<f32>,
}

/// JSON has no NaN: serde_json writes it as null, and this reads it back.
fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

impl PretrainMetrics {
    /// The training history these metrics hold.
    pub fn history(&self) -> FitReport {
        FitReport {
            epochs_run: self.epochs_run,
            train_loss: self.train_loss.clone(),
            step_loss: self.step_loss.clone(),
            // Not kept in config.json; metrics.csv has it.
            step_lr: Vec::new(),
            val_loss: self.val_loss_per_epoch.clone(),
            best_epoch: self.best_epoch,
            seconds: self.seconds,
            images_per_s: self.images_per_s,
        }
    }
}

/// Each stage's training history ([`crate::core::train::metrics_csv`]).
pub const METRICS_FILE: &str = "metrics.csv";

/// Pretrains `method` under `seed` on the pool that keeps out the labels of
/// `excluded`, and writes the stage directory `dir`. The whole training
/// state is kept in [`super::progress_dir`] (see [`Stage::progress`]); with `resume`, a
/// state an interrupted run of the same settings left there is continued
/// (and ends with the numbers of an uninterrupted run).
pub fn pretrain_stage(
    ctx: &Stage,
    method: &str,
    excluded: Excluded,
    seed: u64,
    dir: &Path,
    resume: bool,
) -> Result<PretrainOutcome> {
    let spec = ctx.spec;
    let (source, pool) = pretrain_pool(
        ctx.prep,
        excluded.max_k,
        excluded.seeds,
        seed,
        spec.split.unlabeled_cap(),
    )?;
    let cfg = spec.pretrain_config(method, seed, ctx.shape())?;
    let key = pretrain_stage_config(
        ctx,
        method,
        &cfg,
        excluded,
        seed,
        None,
        serde_json::Value::Null,
    );
    let progress = ctx.progress(dir, &key, resume)?;
    let view = spec.methods.get(method)?;
    let (siamese, settings) = (view.siamese, view.pretext);
    let build = |octx: &pretext::ObjectiveContext, vb: candle_nn::VarBuilder| {
        methods::build_with(method, &siamese, &settings, octx, vb)
    };
    // kNN monitor: leave-one-out accuracy on this seed's K labeled images.
    let train = &ctx.prep.pair.train;
    let labels = ctx.labels();
    let labeled = split::stratified(labels, excluded.max_k, seed)?.labeled;
    let labeled_y: Vec<u32> = labeled.iter().map(|&i| labels[i]).collect();
    let monitor = |enc: &dyn crate::backbones::Backbone| -> Result<f64> {
        let x = finetune::extract_features(
            enc,
            train,
            &labeled,
            &ctx.prep.norm,
            spec.training.eval_batch,
            ctx.device,
        )?;
        finetune::knn_leave_one_out(&x, &labeled_y, train.num_classes(), 5)
    };
    let pre = pretext::pretrain_with(
        &cfg,
        std::sync::Arc::new(ctx.backbone.clone()),
        pretext::Unlabeled {
            ds: source,
            pool: &pool,
            norm: &ctx.prep.norm,
        },
        ctx.device,
        ctx.quiet,
        &build,
        pretext::Hooks {
            monitor: spec
                .pretrain
                .knn_monitor
                .then_some(&monitor as pretext::Monitor),
            checkpoint: progress.as_ref().map(|p| p as &dyn EpochCheckpoint),
        },
    )?;
    let metrics = PretrainMetrics {
        val_loss: pre.val_loss,
        val_accuracy: pre.val_accuracy,
        epochs_run: pre.report.epochs_run,
        best_epoch: pre.report.best_epoch,
        train_loss: pre.report.train_loss.clone(),
        val_loss_per_epoch: pre.report.val_loss.clone(),
        images_per_s: pre.report.images_per_s,
        seconds: pre.report.seconds,
        unlabeled_images: pool.len(),
        knn_monitor: pre.monitor.clone(),
        step_loss: pre.report.step_loss.clone(),
    };
    let sc = pretrain_stage_config(
        ctx,
        method,
        &cfg,
        excluded,
        seed,
        Some(pre.objective.head_outputs()),
        serde_json::to_value(&metrics).expect("metrics serialise"),
    );
    // The finished stage replaces the directory, its progress included.
    ckpt::save(dir, &pre.map, &sc)?;
    crate::core::train::write_metrics_csv(
        &dir.join(METRICS_FILE),
        &pre.report,
        &[("knn_monitor", &pre.monitor)],
    )?;
    if !ctx.quiet {
        crate::core::progress::line(format!(
            "pretrain {method} seed {seed}: {} epochs, held-out {method} accuracy {:.1}%, {:.0} img/s -> {}",
            pre.report.epochs_run,
            100.0 * pre.val_accuracy,
            pre.report.images_per_s,
            dir.display()
        ));
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
pub(super) fn pretrain_stage_config(
    ctx: &Stage,
    method: &str,
    cfg: &PretrainConfig,
    excluded: Excluded,
    seed: u64,
    head_outputs: Option<usize>,
    metrics: serde_json::Value,
) -> StageConfig {
    let recipe_json = serde_json::json!({
        "pretrain": cfg,
        "labels_excluded_per_class": excluded.max_k,
        "labels_excluded_for_seeds": excluded.seeds,
    });
    let mut sc = ctx.config("pretrain", method, seed, head_outputs, recipe_json, metrics);
    if let Some(all) = &ctx.prep.all_classes {
        sc.dataset = all.name.clone();
    }
    sc
}
