//! The figures of a run: each method's pretraining loss curve and the PCA
//! of its test embedding.

use super::context::Stage;
use crate::core::train::FitReport;
use crate::core::Result;
use crate::finetune;
use std::path::Path;

/// Draws the training-loss curve of a pretraining run: the loss of every
/// step, its epoch means and the held-out loss after each epoch.
pub fn loss_figure(history: &FitReport, method: &str, path: &Path) -> Result<()> {
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
    ctx: &Stage,
    encoder: &dyn crate::backbones::Backbone,
    method: &str,
    max_points: usize,
    path: &Path,
) -> Result<()> {
    let test = &ctx.prep.pair.test;
    let idx: Vec<usize> = (0..test.len().min(max_points)).collect();
    let x = finetune::extract_features(
        encoder,
        test,
        &idx,
        &ctx.prep.norm,
        ctx.spec.training.eval_batch,
        ctx.device,
    )?;
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
