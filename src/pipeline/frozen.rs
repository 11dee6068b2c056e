//! The frozen-feature protocols: a linear probe and kNN on the encoder's
//! features of the K labeled images, scored on the test set.

use super::context::Stage;
use crate::core::{metrics, Result};
use crate::data::split;
use crate::finetune;
use candle_core::Tensor;

/// An encoder's features of the seed's K labeled images and of the test set.
pub struct FrozenFeatures {
    /// Features of the labeled images.
    pub train_x: Tensor,
    /// Their labels.
    pub train_y: Vec<u32>,
    /// Features of the test images.
    pub test_x: Tensor,
}

impl FrozenFeatures {
    /// Extracts them with `encoder` for the seed's K-shot split.
    pub fn extract(
        ctx: &Stage,
        encoder: &dyn crate::backbones::Backbone,
        k: usize,
        seed: u64,
    ) -> Result<Self> {
        let (train, test) = (&ctx.prep.pair.train, &ctx.prep.pair.test);
        let labels = ctx.labels();
        let sp = split::stratified(labels, k, seed)?;
        let batch = ctx.spec.training.eval_batch;
        let train_x = finetune::extract_features(
            encoder,
            train,
            &sp.labeled,
            &ctx.prep.norm,
            batch,
            ctx.device,
        )?;
        let test_idx: Vec<usize> = (0..test.len()).collect();
        let test_x = finetune::extract_features(
            encoder,
            test,
            &test_idx,
            &ctx.prep.norm,
            batch,
            ctx.device,
        )?;
        Ok(Self {
            train_x,
            train_y: sp.labeled.iter().map(|&i| labels[i]).collect(),
            test_x,
        })
    }

    /// Test accuracy of the linear probe.
    pub fn linear(&self, ctx: &Stage, seed: u64) -> Result<f64> {
        let cfg = ctx.spec.transfer_config(seed, ctx.shape())?;
        let classes = ctx.prep.pair.train.num_classes();
        let pred =
            finetune::linear_probe(&cfg, &self.train_x, &self.train_y, &self.test_x, classes)?;
        Ok(metrics::accuracy(&pred, test_labels(ctx)))
    }

    /// Test accuracy of kNN and the k that leave-one-out chose.
    pub fn knn(&self, ctx: &Stage) -> Result<(f64, usize)> {
        let classes = ctx.prep.pair.train.num_classes();
        let (pred, chosen) = finetune::knn(
            &self.train_x,
            &self.train_y,
            &self.test_x,
            classes,
            &ctx.spec.protocols.knn.ks,
            ctx.spec.protocols.knn.weighting(),
        )?;
        Ok((metrics::accuracy(&pred, test_labels(ctx)), chosen))
    }
}

fn test_labels<'a>(ctx: &Stage<'a>) -> &'a [u32] {
    ctx.prep
        .pair
        .test
        .labels()
        .expect("prepared datasets have labels")
}

/// Test accuracy of the linear probe and kNN on a frozen encoder with the
/// seed's K-shot split: (linear accuracy, kNN accuracy, chosen k).
pub fn frozen_protocols(
    ctx: &Stage,
    encoder: &dyn crate::backbones::Backbone,
    k: usize,
    seed: u64,
) -> Result<(f64, f64, usize)> {
    let f = FrozenFeatures::extract(ctx, encoder, k, seed)?;
    let (knn, chosen) = f.knn(ctx)?;
    Ok((f.linear(ctx, seed)?, knn, chosen))
}
