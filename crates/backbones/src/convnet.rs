//! The small VGG-style ConvNet.

use crate::layers::*;
use crate::Backbone;
use candle_core::Tensor;
use candle_nn::VarBuilder;
use selfsup_core::{Error, Result};
use selfsup_kernels::Activation;

/// A small VGG-style network: per stage a 3x3 conv, BatchNorm and ReLU,
/// with a 2x2 max-pool between stages. The features are the globally
/// average-pooled outputs of *every* stage, concatenated (D = sum of the
/// widths): pretext tasks such as rotation make the last stage specific to
/// the pretext, while the middle stages carry the transferable features
/// (Gidaris et al., 2018; Kolesnikov et al., 2019).
pub struct ConvNet {
    stages: Vec<Vec<ConvBn>>,
    in_channels: usize,
    dim: usize,
}

impl ConvNet {
    /// Builds the network; parameters are `stages.{i}.{j}.conv.weight`,
    /// `stages.{i}.{j}.bn.*` for layer j of stage i.
    pub fn new(
        in_channels: usize,
        widths: &[usize],
        convs_per_stage: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        if widths.is_empty() || convs_per_stage == 0 {
            return Err(Error::invalid(
                "backbone",
                "convnet needs at least one stage width and one conv per stage",
            ));
        }
        let mut stages = Vec::new();
        let mut cin = in_channels;
        for (i, &w) in widths.iter().enumerate() {
            let mut layers = Vec::new();
            for j in 0..convs_per_stage {
                let vb = vb.pp(format!("stages.{i}.{j}"));
                layers.push(ConvBn::new(cin, w, 3, 1, vb, "conv", "bn")?);
                cin = w;
            }
            stages.push(layers);
        }
        Ok(Self {
            stages,
            in_channels,
            dim: widths.iter().sum(),
        })
    }
}

impl Backbone for ConvNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        check_input(x, self.in_channels)?;
        let mut h = x.clone();
        let mut pooled = Vec::with_capacity(self.stages.len());
        for (i, layers) in self.stages.iter().enumerate() {
            for l in layers {
                h = l.forward(&h, train, Activation::Relu)?;
            }
            pooled.push(global_avg_pool(&h)?);
            if i + 1 < self.stages.len() && h.dim(2)? >= 2 {
                h = max_pool2(&h)?;
            }
        }
        Ok(Tensor::cat(&pooled, 1)?)
    }

    fn feature_dim(&self) -> usize {
        self.dim
    }
}
