//! The projection (and prediction) MLP of the two-view methods.

use crate::SiameseConfig;
use candle_core::{ModuleT, Tensor};
use candle_nn::{BatchNorm, Linear, Module, VarBuilder};
use selfsup_core::{Error, Result};

/// A multi-layer perceptron: `hidden` layers of Linear (+ BatchNorm) + ReLU,
/// then a Linear. Parameters `{prefix}.{i}.weight`, `{prefix}.bn{i}.*`.
pub struct Mlp {
    layers: Vec<Linear>,
    norms: Vec<Option<BatchNorm>>,
}

impl Mlp {
    /// Widths `dims` = [input, hidden..., output].
    pub fn new(dims: &[usize], batch_norm: bool, vb: VarBuilder) -> Result<Self> {
        if dims.len() < 2 {
            return Err(Error::invalid("mlp", "needs at least input and output"));
        }
        let mut layers = Vec::new();
        let mut norms = Vec::new();
        for i in 0..dims.len() - 1 {
            let last = i + 2 == dims.len();
            layers.push(candle_nn::linear(
                dims[i],
                dims[i + 1],
                vb.pp(i.to_string()),
            )?);
            norms.push(if batch_norm && !last {
                Some(candle_nn::batch_norm(
                    dims[i + 1],
                    candle_nn::BatchNormConfig::default(),
                    vb.pp(format!("bn{i}")),
                )?)
            } else {
                None
            });
        }
        Ok(Self { layers, norms })
    }

    /// Forward; `train` picks BatchNorm's mode.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = x.clone();
        let n = self.layers.len();
        for (i, (l, bn)) in self.layers.iter().zip(&self.norms).enumerate() {
            h = l.forward(&h)?;
            if let Some(bn) = bn {
                h = bn.forward_t(&h, train)?;
            }
            if i + 1 < n {
                h = h.relu()?;
            }
        }
        Ok(h)
    }
}

pub(crate) fn projector_dims(feature_dim: usize, cfg: &SiameseConfig) -> Vec<usize> {
    let mut dims = vec![feature_dim];
    dims.extend(std::iter::repeat_n(cfg.proj_hidden, cfg.proj_layers.max(1)));
    dims.push(cfg.proj_dim);
    dims
}
