//! The semi-supervised stages: self-distillation and FixMatch, both
//! learning from the unlabeled images beside the K labeled ones.

use super::context::Stage;
use super::data::unlabeled_pool;
use super::transfer::save_classifier_stage;
use crate::core::{metrics, Result};
use crate::data::split;
use crate::finetune;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The `metrics` of a `distill` stage's config.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DistillMetrics {
    /// Mean training loss per epoch.
    pub train_loss: Vec<f64>,
    /// Wall time.
    pub seconds: f64,
    /// Epochs trained.
    pub epochs_run: usize,
    /// Training throughput.
    pub images_per_s: f64,
    /// Unlabeled images the teacher labeled.
    pub unlabeled_images: usize,
    /// How often the teacher's label was right (read after training).
    pub pseudo_label_accuracy: f64,
}

/// The `metrics` of a `fixmatch` stage's config.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FixMatchMetrics {
    /// Mean training loss per epoch.
    pub train_loss: Vec<f64>,
    /// Wall time.
    pub seconds: f64,
    /// Epochs trained.
    pub epochs_run: usize,
    /// Training throughput.
    pub images_per_s: f64,
    /// Size of the unlabeled pool.
    pub unlabeled_images: usize,
    /// Share of unlabeled images above the confidence threshold, per epoch.
    pub mask_rate: Vec<f64>,
}

/// Which classifier a semi-supervised stage trains: one method's, for one
/// seed and K.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Target<'a> {
    /// The method (or `scratch`).
    pub method: &'a str,
    /// Labeled images per class.
    pub k: usize,
    /// The seed.
    pub seed: u64,
}

/// The seed's K labeled images and the unlabeled pool the semi-supervised
/// protocols learn from: every other training image, capped by
/// `split.unlabeled`.
fn semi_supervised_split(ctx: &Stage, k: usize, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    let labeled = split::stratified(ctx.labels(), k, seed)?.labeled;
    let cap = ctx.spec.split.unlabeled_cap();
    let pool = unlabeled_pool(&ctx.prep.pair.train, k, &[seed], seed, cap)?;
    Ok((labeled, pool))
}

/// The `distill` protocol: `teacher` (saved in `teacher_dir`) gives soft
/// labels to the unlabeled pool and a copy of it trains on them with the K
/// labeled images mixed in ([`finetune::distill`]). Writes the student to
/// `dir`.
pub fn distill_stage(
    ctx: &Stage,
    t: Target,
    teacher: &finetune::Classifier,
    teacher_dir: &Path,
    dir: &Path,
) -> Result<finetune::Classifier> {
    let (labeled, pool) = semi_supervised_split(ctx, t.k, t.seed)?;
    let cfg = ctx.spec.distill_config(t.seed, ctx.shape())?;
    let (student, _) = finetune::load_classifier(teacher_dir, ctx.device)?;
    let progress = ctx.progress(dir, &("distill", t, &cfg), ctx.resume)?;
    let (student, pseudo) = finetune::distill(
        &cfg,
        teacher,
        student,
        ctx.images(&labeled, &pool),
        ctx.run(&format!("distill/{}", t.method), progress.as_ref()),
    )?;
    // Diagnostics only, after training: how often the teacher's label was
    // right on the images it labeled. The pool already excludes this seed's
    // labeled images, so distill kept all of it, in order.
    let labels = ctx.labels();
    let truth: Vec<u32> = pool.iter().map(|&i| labels[i]).collect();
    let pseudo_label_accuracy = metrics::accuracy(&pseudo, &truth);
    let metrics = serde_json::to_value(DistillMetrics {
        train_loss: student.report.train_loss.clone(),
        seconds: student.report.seconds,
        epochs_run: student.report.epochs_run,
        images_per_s: student.report.images_per_s,
        unlabeled_images: pseudo.len(),
        pseudo_label_accuracy,
    })
    .expect("metrics serialise");
    let recipe_json = serde_json::json!({
        "protocol": "distill",
        "labels_per_class": t.k,
        "teacher": teacher_dir.display().to_string(),
        "distill": cfg,
    });
    save_classifier_stage(ctx, t.method, t.seed, dir, &student, recipe_json, metrics)?;
    tracing::info!(
        method = t.method,
        seed = t.seed,
        k = t.k,
        pseudo_label_accuracy,
        "distilled on the teacher's labels of {} unlabeled images",
        pseudo.len()
    );
    Ok(student)
}

/// The `fixmatch` protocol: a copy of the classifier in `init_dir` trains
/// on the K labeled images and, with its own confident predictions as
/// labels, on the unlabeled pool ([`finetune::fixmatch`]). Writes the
/// result to `dir`.
pub fn fixmatch_stage(
    ctx: &Stage,
    t: Target,
    init_dir: &Path,
    dir: &Path,
) -> Result<finetune::Classifier> {
    let (labeled, pool) = semi_supervised_split(ctx, t.k, t.seed)?;
    let cfg = ctx.spec.fixmatch_config(t.seed, ctx.shape())?;
    let (start, _) = finetune::load_classifier(init_dir, ctx.device)?;
    let progress = ctx.progress(dir, &("fixmatch", t, &cfg), ctx.resume)?;
    let (cls, stats) = finetune::fixmatch(
        &cfg,
        start,
        ctx.images(&labeled, &pool),
        ctx.run(&format!("fixmatch/{}", t.method), progress.as_ref()),
    )?;
    let metrics = serde_json::to_value(FixMatchMetrics {
        train_loss: cls.report.train_loss.clone(),
        seconds: cls.report.seconds,
        epochs_run: cls.report.epochs_run,
        images_per_s: cls.report.images_per_s,
        unlabeled_images: pool.len(),
        mask_rate: stats.mask_rate,
    })
    .expect("metrics serialise");
    let recipe_json = serde_json::json!({
        "protocol": "fixmatch",
        "labels_per_class": t.k,
        "init": init_dir.display().to_string(),
        "fixmatch": cfg,
    });
    save_classifier_stage(ctx, t.method, t.seed, dir, &cls, recipe_json, metrics)?;
    Ok(cls)
}
