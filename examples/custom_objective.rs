//! A pretext task of your own: predict whether an image was mirrored.
//! It implements `Objective` and trains with the pipeline's loop and the
//! spec's ConvNet; nothing in selfsup knows about it.
//!
//! Run: `cargo run --release --example custom_objective`

use candle_core::{Device, Module, Tensor};
use candle_nn::{linear, Linear, VarBuilder};
use selfsup::augment::{hflip, Image};
use selfsup::backbones::Backbone;
use selfsup::core::{Normalization, Result};
use selfsup::objective::{
    classification_loss, pretrain_with, Hooks, Objective, ObjectiveContext, Unlabeled,
};
use selfsup::spec::Experiment;
use std::sync::Arc;

/// Each image is shown as it is (label 0) and mirrored (label 1).
struct FlipPrediction {
    head: Linear,
    device: Device,
}

impl Objective for FlipPrediction {
    fn name(&self) -> &'static str {
        "flip"
    }

    fn head_outputs(&self) -> usize {
        2
    }

    fn loss(
        &self,
        backbone: &dyn Backbone,
        pixels: &[u8],
        shape: (usize, usize, usize),
        norm: &Normalization,
        train: bool,
    ) -> Result<(Tensor, f64, usize)> {
        let (c, h, w) = shape;
        let (mut px, mut labels) = (Vec::with_capacity(2 * pixels.len()), Vec::new());
        for img in pixels.chunks_exact(c * h * w) {
            px.extend_from_slice(img);
            px.extend(hflip(&Image::new(c, h, w, img.to_vec())).data);
            labels.extend([0u32, 1]);
        }
        let x = selfsup::data::batch::to_tensor(&px, shape, norm, &self.device)?;
        let logits = self.head.forward(&backbone.forward_t(&x, train)?)?;
        let n = labels.len();
        let (loss, acc) =
            classification_loss(&logits, &Tensor::from_vec(labels, n, &self.device)?)?;
        Ok((loss, acc, n))
    }
}

fn main() -> Result<()> {
    let train = selfsup::data::load("fashion-mnist")?.train.take(1024);
    let pool: Vec<usize> = (0..train.len()).collect();
    let norm = selfsup::data::batch::fit_normalization(&train, &pool);
    let spec = Experiment::default();
    let mut cfg = spec.pretrain_config("rotation", 0, train.image_shape())?;
    cfg.method = "flip".into();
    cfg.augment.flip = false; // the task is the flip; random flips would hide it
    let build = |ctx: &ObjectiveContext, vb: VarBuilder| -> Result<Box<dyn Objective>> {
        Ok(Box::new(FlipPrediction {
            head: linear(ctx.feature_dim, 2, vb)?,
            device: ctx.device.clone(),
        }))
    };
    let data = Unlabeled {
        ds: &train,
        pool: &pool,
        norm: &norm,
    };
    let backbone = Arc::new(spec.backbone_config(1));
    let out = pretrain_with(
        &cfg,
        backbone,
        data,
        &Device::Cpu,
        false,
        &build,
        Hooks::default(),
    )?;
    println!(
        "flip prediction: {} epochs, held-out accuracy {:.1}%",
        out.report.epochs_run,
        100.0 * out.val_accuracy
    );
    Ok(())
}
