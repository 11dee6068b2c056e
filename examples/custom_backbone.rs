//! A backbone written outside selfsup's crates, pretrained by rotation
//! prediction and by SimCLR through the same loop the pipeline uses.
//!
//! Run: `cargo run --release --example custom_backbone`

use candle_core::{Device, Module, Tensor};
use candle_nn::{conv2d, linear, Conv2d, Conv2dConfig, Linear, VarBuilder};
use selfsup::backbones::{Backbone, BuildBackbone};
use selfsup::core::Result;
use selfsup::objective::{pretrain_with, Hooks, ObjectiveContext, Unlabeled};
use selfsup::spec::Experiment;
use std::sync::Arc;

/// Two strided 3x3 convolutions (28x28 -> 7x7) and a dense layer, with
/// ReLUs. It keeps the layout (no global pooling), which rotation needs.
struct TinyNet {
    c1: Conv2d,
    c2: Conv2d,
    fc: Linear,
}

impl Backbone for TinyNet {
    fn forward_t(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        let x = self.c1.forward(x)?.relu()?;
        let x = self.c2.forward(&x)?.relu()?.flatten_from(1)?;
        Ok(self.fc.forward(&x)?.relu()?)
    }

    fn feature_dim(&self) -> usize {
        64
    }
}

/// Builds a [`TinyNet`] for 28x28 gray images (momentum methods build a
/// second one).
struct TinyNetBuilder;

impl BuildBackbone for TinyNetBuilder {
    fn build_backbone(&self, vb: VarBuilder) -> Result<Box<dyn Backbone>> {
        let cfg = Conv2dConfig {
            stride: 2,
            padding: 1,
            ..Default::default()
        };
        Ok(Box::new(TinyNet {
            c1: conv2d(1, 16, 3, cfg, vb.pp("c1"))?,
            c2: conv2d(16, 16, 3, cfg, vb.pp("c2"))?,
            fc: linear(16 * 7 * 7, 64, vb.pp("fc"))?,
        }))
    }
}

fn main() -> Result<()> {
    let train = selfsup::data::load("fashion-mnist")?.train.take(1024);
    let pool: Vec<usize> = (0..train.len()).collect();
    let norm = selfsup::data::batch::fit_normalization(&train, &pool);
    // The spec supplies each method's schedule, augmentation and settings.
    let mut spec = Experiment::default();
    spec.methods.rotation.epochs = 3;
    (spec.methods.simclr.epochs, spec.methods.simclr.batch) = (2, 128);
    for method in ["rotation", "simclr"] {
        let cfg = spec.pretrain_config(method, 0, train.image_shape())?;
        let settings = spec.methods.get(method)?.siamese;
        let build = |ctx: &ObjectiveContext, vb: VarBuilder| {
            selfsup::methods::build(method, &settings, ctx, vb)
        };
        let data = Unlabeled {
            ds: &train,
            pool: &pool,
            norm: &norm,
        };
        let out = pretrain_with(
            &cfg,
            Arc::new(TinyNetBuilder),
            data,
            &Device::Cpu,
            false,
            &build,
            Hooks::default(),
        )?;
        println!(
            "{method}: {} epochs, held-out loss {:.3}, pretext accuracy {:.1}%",
            out.report.epochs_run,
            out.val_loss,
            100.0 * out.val_accuracy
        );
    }
    Ok(())
}
