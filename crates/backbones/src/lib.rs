//! selfsup-backbones holds the encoders: networks that map images
//! (B, C, H, W) to features (B, D). All implement [`Backbone`]; a
//! serialisable [`BackboneConfig`] names one and its hyper-parameters, so a
//! checkpoint's `config.json` can rebuild it.
//!
//! - [`ConvNet`]: a small VGG-style network (3x3 conv, BatchNorm, ReLU,
//!   2x2 max-pool between stages; features pooled from every stage). Sized
//!   for CPU runs.
//! - [`ResNet18`]: ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no
//!   max-pool).
//! - [`MobileNetV2`]: inverted residuals with depthwise convolutions and a
//!   width multiplier, CIFAR strides (stride 1 stem, first downsampling in
//!   the 32-channel stage).
//! - [`Vit`]: a small Vision Transformer (patch embedding, fixed sine-cosine
//!   positions, pre-LayerNorm blocks, mean-pooled tokens); the backbone of
//!   masked autoencoding, and trainable by every other method too.
//!
//! Every convolution goes through [`selfsup_kernels`], so the backbones train
//! with its fast gradients and depthwise kernel unless `--kernels stock`.
//!
//! In the convolutional networks, BatchNorm uses batch statistics and updates its running averages when
//! `train` is true, and the running averages when it is false. Inputs may have
//! 1 or 3 channels (any count, in fact) and any square size of at least 8.
//! Parameter names are stable (`stem.conv.weight`, `layer1.0.bn1.bias`, ...)
//! and all live under the `VarBuilder` prefix the caller gives.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use selfsup_backbones::BackboneConfig;
//! let map = candle_nn::VarMap::new();
//! let vb = selfsup_core::params::seeded_var_builder(&map, 0, &Device::Cpu);
//! let cfg = BackboneConfig::ConvNet { in_channels: 1, widths: vec![4, 8], convs_per_stage: 1 };
//! let net = cfg.build(vb.pp("backbone")).unwrap();
//! let x = Tensor::zeros((2, 1, 12, 12), candle_core::DType::F32, &Device::Cpu).unwrap();
//! assert_eq!(net.forward_t(&x, false).unwrap().dims(), &[2, 12]);
//! ```

pub mod checkpoint;
mod convnet;
mod layers;
mod mobilenet;
mod resnet;
mod vit;

pub use convnet::ConvNet;
pub use mobilenet::MobileNetV2;
pub use resnet::ResNet18;
pub use vit::{patchify, sincos_2d, Block, Vit, LN_EPS as VIT_LN_EPS};

use candle_core::Tensor;
use candle_nn::VarBuilder;
use selfsup_core::{Error, Result};
use serde::{Deserialize, Serialize};

fn one() -> usize {
    1
}

/// An encoder from images (B, C, H, W) to features (B, D).
pub trait Backbone: Send + Sync {
    /// Features of a batch; `train` selects BatchNorm's mode.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor>;
    /// D, the feature dimension.
    fn feature_dim(&self) -> usize;
    /// The last stage's feature map (B, C', h, w) before pooling, for dense
    /// pretext tasks (inpainting); `None` for a backbone without one.
    fn feature_map(&self, _x: &Tensor, _train: bool) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// The network as a [`Vit`], for objectives that need its tokens
    /// (masked autoencoding); `None` for every other backbone.
    fn as_vit(&self) -> Option<&Vit> {
        None
    }
}

/// Anything that builds an encoder under a `VarBuilder`: the built-in
/// [`BackboneConfig`], or a network of your own. Pretraining builds the
/// online encoder with it, and momentum methods a second copy.
pub trait BuildBackbone: Send + Sync {
    /// A fresh encoder whose variables live under `vb`.
    fn build_backbone(&self, vb: VarBuilder) -> Result<Box<dyn Backbone>>;
    /// The patch side when the encoder is a [`Vit`] (objectives that
    /// reconstruct patches size their heads with it); `None` otherwise.
    fn vit_patch_size(&self) -> Option<usize> {
        None
    }
    /// The backbone's short name, for error messages.
    fn backbone_name(&self) -> &str {
        "custom"
    }
}

impl BuildBackbone for BackboneConfig {
    fn build_backbone(&self, vb: VarBuilder) -> Result<Box<dyn Backbone>> {
        self.build(vb)
    }
    fn vit_patch_size(&self) -> Option<usize> {
        match self {
            Self::Vit { patch_size, .. } => Some(*patch_size),
            _ => None,
        }
    }
    fn backbone_name(&self) -> &str {
        self.name()
    }
}

/// Which backbone and its hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BackboneConfig {
    /// See [`ConvNet`].
    ConvNet {
        /// Input channels.
        in_channels: usize,
        /// Output channels of each stage (a 2x2 max-pool sits between stages).
        widths: Vec<usize>,
        /// 3x3 conv + BatchNorm + ReLU layers per stage.
        #[serde(default = "one")]
        convs_per_stage: usize,
    },
    /// See [`ResNet18`].
    ResNet18 {
        /// Input channels.
        in_channels: usize,
        /// Channels of the first stage (64 in the standard network); the
        /// stages use 1x, 2x, 4x, 8x this.
        base_width: usize,
    },
    /// See [`MobileNetV2`].
    #[serde(rename = "mobilenetv2")]
    MobileNetV2 {
        /// Input channels.
        in_channels: usize,
        /// Scales every layer's channels (1.0 is the standard network).
        width_multiplier: f64,
    },
    /// See [`Vit`].
    Vit {
        /// Input channels.
        in_channels: usize,
        /// Patch side in pixels.
        patch_size: usize,
        /// Token width (a multiple of 4 and of `heads`).
        dim: usize,
        /// Transformer blocks.
        depth: usize,
        /// Attention heads.
        heads: usize,
        /// MLP hidden units per token width.
        mlp_ratio: f64,
    },
}

/// Backbone names accepted by [`BackboneConfig::from_name`].
pub const NAMES: [&str; 4] = ["convnet", "resnet18", "mobilenetv2", "vit"];

impl BackboneConfig {
    /// The default configuration of a named backbone.
    pub fn from_name(name: &str, in_channels: usize) -> Result<Self> {
        match name {
            "convnet" => Ok(Self::ConvNet {
                in_channels,
                widths: vec![16, 32, 64],
                convs_per_stage: 2,
            }),
            "resnet18" => Ok(Self::ResNet18 {
                in_channels,
                base_width: 64,
            }),
            "mobilenetv2" => Ok(Self::MobileNetV2 {
                in_channels,
                width_multiplier: 1.0,
            }),
            "vit" => Ok(Self::Vit {
                in_channels,
                patch_size: 4,
                dim: 128,
                depth: 4,
                heads: 4,
                mlp_ratio: 4.0,
            }),
            other => Err(Error::invalid(
                "--backbone",
                format!(
                    "unknown backbone {other:?}; choose one of: {}",
                    NAMES.join(", ")
                ),
            )),
        }
    }

    /// Short name (`convnet`, `resnet18`, `mobilenetv2`, `vit`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::ConvNet { .. } => "convnet",
            Self::ResNet18 { .. } => "resnet18",
            Self::MobileNetV2 { .. } => "mobilenetv2",
            Self::Vit { .. } => "vit",
        }
    }

    /// Input channels.
    pub fn in_channels(&self) -> usize {
        match self {
            Self::ConvNet { in_channels, .. }
            | Self::ResNet18 { in_channels, .. }
            | Self::MobileNetV2 { in_channels, .. }
            | Self::Vit { in_channels, .. } => *in_channels,
        }
    }

    /// Builds the network with parameters from `vb`.
    pub fn build(&self, vb: VarBuilder) -> Result<Box<dyn Backbone>> {
        match self {
            Self::ConvNet {
                in_channels,
                widths,
                convs_per_stage,
            } => Ok(Box::new(ConvNet::new(
                *in_channels,
                widths,
                *convs_per_stage,
                vb,
            )?)),
            Self::ResNet18 {
                in_channels,
                base_width,
            } => Ok(Box::new(ResNet18::new(*in_channels, *base_width, vb)?)),
            Self::MobileNetV2 {
                in_channels,
                width_multiplier,
            } => Ok(Box::new(MobileNetV2::new(
                *in_channels,
                *width_multiplier,
                vb,
            )?)),
            Self::Vit {
                in_channels,
                patch_size,
                dim,
                depth,
                heads,
                mlp_ratio,
            } => Ok(Box::new(Vit::new(
                *in_channels,
                *patch_size,
                *dim,
                *depth,
                *heads,
                *mlp_ratio,
                vb,
            )?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use candle_nn::VarMap;
    use selfsup_core::params::{abs_sum, max_abs_diff, seeded_var_builder, trainable_vars};

    fn input(b: usize, c: usize, s: usize) -> Tensor {
        let n = b * c * s * s;
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        Tensor::from_vec(v, (b, c, s, s), &Device::Cpu).unwrap()
    }

    fn configs(c: usize) -> Vec<BackboneConfig> {
        vec![
            BackboneConfig::ConvNet {
                in_channels: c,
                widths: vec![4, 6, 8],
                convs_per_stage: 2,
            },
            BackboneConfig::ResNet18 {
                in_channels: c,
                base_width: 4,
            },
            BackboneConfig::MobileNetV2 {
                in_channels: c,
                width_multiplier: 0.25,
            },
            BackboneConfig::Vit {
                in_channels: c,
                patch_size: 4,
                dim: 8,
                depth: 2,
                heads: 2,
                mlp_ratio: 2.0,
            },
        ]
    }

    #[test]
    fn shapes_for_one_and_three_channels_and_odd_sizes() {
        for c in [1, 3] {
            for cfg in configs(c) {
                let map = VarMap::new();
                let net = cfg
                    .build(seeded_var_builder(&map, 0, &Device::Cpu))
                    .unwrap();
                for s in [8, 9, 28] {
                    let y = net.forward_t(&input(2, c, s), true).unwrap();
                    assert_eq!(y.dims(), &[2, net.feature_dim()], "{cfg:?} size {s}");
                }
                let e = net
                    .forward_t(&input(2, c, 7), false)
                    .err()
                    .unwrap()
                    .to_string();
                assert!(e.contains("S >= 8"), "{e}");
            }
        }
    }

    #[test]
    fn every_parameter_gets_a_nonzero_gradient() {
        for cfg in configs(3) {
            let map = VarMap::new();
            let net = cfg
                .build(seeded_var_builder(&map, 1, &Device::Cpu))
                .unwrap();
            let y = net.forward_t(&input(4, 3, 12), true).unwrap();
            // A non-symmetric loss so that BatchNorm's shift gets gradient too.
            let w = Tensor::arange(0f32, y.dim(1).unwrap() as f32, &Device::Cpu).unwrap();
            let loss = (y
                .sqr()
                .unwrap()
                .broadcast_mul(&w)
                .unwrap()
                .sum_all()
                .unwrap()
                + y.sum_all().unwrap())
            .unwrap();
            let grads = loss.backward().unwrap();
            let vars = trainable_vars(&map);
            assert!(!vars.is_empty());
            for (name, v) in vars {
                let g = grads
                    .get(v.as_tensor())
                    .unwrap_or_else(|| panic!("{}: {name} has no gradient", cfg.name()));
                let norm = abs_sum(g).unwrap();
                assert!(norm > 0.0, "{}: {name} has a zero gradient", cfg.name());
            }
        }
    }

    #[test]
    fn batchnorm_train_and_eval_differ_and_running_stats_update() {
        let map = VarMap::new();
        let cfg = BackboneConfig::ConvNet {
            in_channels: 1,
            widths: vec![4, 4],
            convs_per_stage: 1,
        };
        let net = cfg
            .build(seeded_var_builder(&map, 2, &Device::Cpu))
            .unwrap();
        let x = input(4, 1, 8).affine(3.0, 2.0).unwrap();
        let rm = |m: &VarMap| -> Vec<f32> {
            let d = m.data().lock().unwrap();
            let v: &Var = &d["stages.0.0.bn.running_mean"];
            v.as_tensor().to_vec1::<f32>().unwrap()
        };
        assert!(rm(&map).iter().all(|&v| v == 0.0));
        let eval0 = net.forward_t(&x, false).unwrap();
        assert!(
            rm(&map).iter().all(|&v| v == 0.0),
            "eval must not touch running stats"
        );
        let train = net.forward_t(&x, true).unwrap();
        assert!(
            rm(&map).iter().any(|&v| v != 0.0),
            "train must update running stats"
        );
        let diff = (train - &eval0)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff > 1e-3, "train and eval outputs should differ");
        // eval mode is a deterministic per-sample function: batch of 1 == row of batch
        let one = net.forward_t(&x.narrow(0, 1, 1).unwrap(), false).unwrap();
        let all = net.forward_t(&x, false).unwrap().narrow(0, 1, 1).unwrap();
        let d = max_abs_diff(&one, &all).unwrap();
        assert!(d < 1e-5);
    }

    #[test]
    fn unknown_backbone_is_named() {
        let e = BackboneConfig::from_name("vgg", 1).unwrap_err().to_string();
        assert!(
            e.contains("--backbone") && e.contains("vgg") && e.contains("resnet18"),
            "{e}"
        );
        assert_eq!(
            BackboneConfig::from_name("resnet18", 3).unwrap().name(),
            "resnet18"
        );
    }
}
