//! The figures of a run: each method's pretraining loss and learning-rate
//! curves and a 2-D map of its test embedding, labelled with class names.

use super::context::Stage;
use crate::core::train::FitReport;
use crate::core::{Error, Result};
use crate::finetune;
use crate::plot::{colour, panels_png, scatter_png, Panel, Series, Tsne};
use std::path::Path;
use std::str::FromStr;

/// How the embedding figure maps features to two dimensions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Projection {
    /// The first two principal components (fast, linear).
    #[default]
    Pca,
    /// Exact t-SNE (perplexity 30): shows clusters, costs seconds per figure.
    Tsne,
}

impl Projection {
    /// The name `--embedding` takes.
    pub fn name(self) -> &'static str {
        match self {
            Projection::Pca => "pca",
            Projection::Tsne => "tsne",
        }
    }

    fn axes(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Projection::Pca => ("PCA", "principal component 1", "principal component 2"),
            Projection::Tsne => ("t-SNE", "t-SNE 1", "t-SNE 2"),
        }
    }
}

impl FromStr for Projection {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "pca" => Ok(Projection::Pca),
            "tsne" | "t-sne" => Ok(Projection::Tsne),
            other => Err(Error::invalid(
                "embedding",
                format!("unknown projection `{other}` (pca or tsne)"),
            )),
        }
    }
}

/// Draws a pretraining run's curves: the loss of every step, its epoch
/// means and the held-out loss after each epoch, and under them the
/// learning rate of every step (when the history has it).
pub fn loss_figure(history: &FitReport, method: &str, path: &Path) -> Result<()> {
    let epochs = history.epochs_run.max(1);
    let per_epoch = (history.step_loss.len() / epochs).max(1) as f64;
    let at_steps = |v: &mut dyn Iterator<Item = f64>| -> Vec<[f64; 2]> {
        v.enumerate()
            .map(|(i, y)| [(i + 1) as f64 / per_epoch, y])
            .collect()
    };
    let at_epochs = |v: &[f64]| -> Vec<[f64; 2]> {
        v.iter()
            .enumerate()
            .map(|(e, &l)| [(e + 1) as f64, l])
            .collect()
    };
    let loss = Panel {
        y_name: "loss",
        series: vec![
            Series {
                label: "train loss (step)",
                points: at_steps(&mut history.step_loss.iter().map(|&l| f64::from(l))),
                rgb: [170, 200, 230],
                thick: 1,
            },
            Series {
                label: "train loss (epoch mean)",
                points: at_epochs(&history.train_loss),
                rgb: colour(0),
                thick: 3,
            },
            Series {
                label: "held-out loss",
                points: at_epochs(&history.val_loss),
                rgb: colour(1),
                thick: 3,
            },
        ],
        weight: 2,
        y_range: None,
        legend_lower_right: false,
    };
    let mut panels = vec![loss];
    if !history.step_lr.is_empty() {
        panels.push(Panel {
            y_name: "learning rate",
            series: vec![Series {
                label: "learning rate",
                points: at_steps(&mut history.step_lr.iter().copied()),
                rgb: colour(2),
                thick: 2,
            }],
            weight: 1,
            y_range: None,
            legend_lower_right: false,
        });
    }
    let height = if panels.len() == 2 { 780 } else { 560 };
    let title = format!("{method}: pretraining");
    panels_png(path, &panels, &title, "epoch", height)
}

/// Draws the encoder's features of (up to) the first `max_points` test
/// images in two dimensions, coloured and labelled by class.
pub fn embedding_figure(
    ctx: &Stage,
    encoder: &dyn crate::backbones::Backbone,
    method: &str,
    (max_points, projection): (usize, Projection),
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
    let points = match projection {
        Projection::Pca => crate::plot::pca2(&flat, n, d),
        Projection::Tsne => {
            let cfg = Tsne {
                perplexity: Tsne::default().perplexity.min((n.max(2) - 1) as f64 / 3.0),
                ..Tsne::default()
            };
            crate::plot::tsne2(&flat, n, d, &cfg)?
        }
    };
    let labels = test.labels().expect("prepared datasets have labels");
    let classes: Vec<u32> = idx.iter().map(|&i| labels[i]).collect();
    let (name, x_axis, y_axis) = projection.axes();
    scatter_png(
        path,
        &points,
        &classes,
        test.class_names(),
        &format!("{method}: test embedding ({name}, {n} images)"),
        (x_axis, y_axis),
    )
}

/// Test images shown in a reconstruction figure.
const RECONSTRUCTED: usize = 8;

/// For a method that reconstructs pixels (mae, inpaint): the first test
/// images as the encoder saw them, reconstructed and original, one row
/// each, from the pretrained encoder and head in `checkpoint`. `Ok(false)`
/// (nothing written) for every other method.
pub fn reconstruction_figure(
    ctx: &Stage,
    method: &str,
    (checkpoint, seed): (&Path, u64),
    path: &Path,
) -> Result<bool> {
    if !crate::pretext::RECONSTRUCTS.contains(&method) {
        return Ok(false);
    }
    let enc = crate::backbones::checkpoint::load(checkpoint, seed, ctx.device)?;
    let view = ctx.spec.methods.get(method)?;
    let test = &ctx.prep.pair.test;
    let octx = crate::pretext::ObjectiveContext {
        backbone: std::sync::Arc::new(enc.config.backbone.clone()),
        feature_dim: enc.backbone.feature_dim(),
        online: enc.map.clone(),
        seed,
        device: ctx.device.clone(),
        image_shape: test.image_shape(),
    };
    let vb = crate::core::params::seeded_var_builder(&enc.map, seed, ctx.device);
    let head = crate::backbones::checkpoint::HEAD_PREFIX;
    let objective =
        crate::methods::build_with(method, &view.siamese, &view.pretext, &octx, vb.pp(head))?;
    let weights = checkpoint.join(crate::core::checkpoint::WEIGHTS_FILE);
    crate::core::checkpoint::load_into(&enc.map, &weights, head, true)?;
    let n = test.len().min(RECONSTRUCTED);
    let idx: Vec<usize> = (0..n).collect();
    let x = crate::data::batch::to_tensor(
        &test.pixels_of(&idx),
        test.image_shape(),
        &ctx.prep.norm,
        ctx.device,
    )?;
    let Some(rows) = objective.reconstruction(enc.backbone.as_ref(), &x, &ctx.prep.norm, seed)?
    else {
        return Ok(false);
    };
    let labels = if method == "colorization" {
        ["encoder input", "predicted colour", "original"]
    } else {
        ["encoder input", "reconstruction", "original"]
    };
    let mut grid = Vec::with_capacity(3);
    let mut shape = (0, 0, 0);
    for (label, t) in labels.iter().zip(&rows) {
        let (_, c, h, w) = t.dims4()?;
        shape = (c, h, w);
        grid.push(crate::plot::ImageRow {
            label: label.to_string(),
            images: crate::data::batch::to_pixels(t, &ctx.prep.norm)?
                .chunks(c * h * w)
                .map(<[u8]>::to_vec)
                .collect(),
        });
    }
    let title = match method {
        "colorization" => format!("{method}: test images (the encoder sees the gray row)"),
        _ => format!("{method}: test images (masked patches shown at the mean)"),
    };
    crate::plot::image_grid_png(path, &title, &grid, shape, 4)?;
    Ok(true)
}
