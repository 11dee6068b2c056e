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

impl ConvNet {
    /// Every stage's output (before the max-pool that follows it).
    fn stage_maps(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        check_input(x, self.in_channels)?;
        let mut h = x.clone();
        let mut maps = Vec::with_capacity(self.stages.len());
        for (i, layers) in self.stages.iter().enumerate() {
            if i > 0 && h.dim(2)? >= 2 {
                h = max_pool2(&h)?;
            }
            for l in layers {
                h = l.forward(&h, train, Activation::Relu)?;
            }
            maps.push(h.clone());
        }
        Ok(maps)
    }
}

impl Backbone for ConvNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let pooled = self
            .stage_maps(x, train)?
            .iter()
            .map(global_avg_pool)
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&pooled, 1)?)
    }

    fn feature_map(&self, x: &Tensor, train: bool) -> Result<Option<Tensor>> {
        Ok(self.stage_maps(x, train)?.pop())
    }

    fn feature_dim(&self) -> usize {
        self.dim
    }
}
