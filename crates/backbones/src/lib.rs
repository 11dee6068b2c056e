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
//!
//! Every convolution goes through [`selfsup_kernels`], so the backbones train
//! with its fast gradients and depthwise kernel unless `--kernels stock`.
//!
//! BatchNorm uses batch statistics and updates its running averages when
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

use candle_core::{ModuleT, Tensor, Var};
use candle_nn::{batch_norm, BatchNorm, VarBuilder};
use selfsup_core::{Error, Result};
use selfsup_kernels::{
    add_relu, batch_norm_train, conv2d_default, default_kernels, fused_supported, fusion_enabled,
    Activation, Conv2dParams, Kernels,
};
use serde::{Deserialize, Serialize};

/// An encoder from images (B, C, H, W) to features (B, D).
pub trait Backbone: Send + Sync {
    /// Features of a batch; `train` selects BatchNorm's mode.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor>;
    /// D, the feature dimension.
    fn feature_dim(&self) -> usize;
}

/// Anything that builds an encoder under a `VarBuilder`: the built-in
/// [`BackboneConfig`], or a network of your own. Pretraining builds the
/// online encoder with it, and momentum methods a second copy.
pub trait BuildBackbone: Send + Sync {
    /// A fresh encoder whose variables live under `vb`.
    fn build_backbone(&self, vb: VarBuilder) -> Result<Box<dyn Backbone>>;
}

impl BuildBackbone for BackboneConfig {
    fn build_backbone(&self, vb: VarBuilder) -> Result<Box<dyn Backbone>> {
        self.build(vb)
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
}

/// Backbone names accepted by [`BackboneConfig::from_name`].
pub const NAMES: [&str; 3] = ["convnet", "resnet18", "mobilenetv2"];

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
            other => Err(Error::invalid(
                "--backbone",
                format!(
                    "unknown backbone {other:?}; choose one of: {}",
                    NAMES.join(", ")
                ),
            )),
        }
    }

    /// Short name (`convnet`, `resnet18`, `mobilenetv2`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::ConvNet { .. } => "convnet",
            Self::ResNet18 { .. } => "resnet18",
            Self::MobileNetV2 { .. } => "mobilenetv2",
        }
    }

    /// Input channels.
    pub fn in_channels(&self) -> usize {
        match self {
            Self::ConvNet { in_channels, .. }
            | Self::ResNet18 { in_channels, .. }
            | Self::MobileNetV2 { in_channels, .. } => *in_channels,
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
        }
    }
}

fn one() -> usize {
    1
}

fn check_input(x: &Tensor, in_channels: usize) -> Result<()> {
    let dims = x.dims();
    let ok = dims.len() == 4 && dims[1] == in_channels && dims[2] == dims[3] && dims[2] >= 8;
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "input",
            format!("backbone expects (B, {in_channels}, S, S) with S >= 8, got {dims:?}"),
        ))
    }
}

/// A bias-free convolution through [`selfsup_kernels`] (fast gradients and
/// depthwise kernels unless `--kernels stock`). Its weight is `weight`,
/// Kaiming-normal initialised like `candle_nn::conv2d_no_bias`.
struct Conv {
    weight: Tensor,
    params: Conv2dParams,
}

impl Conv {
    fn new(cin: usize, cout: usize, k: usize, p: Conv2dParams, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(
            (cout, cin / p.groups, k, k),
            "weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        Ok(Self { weight, params: p })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(conv2d_default(x, &self.weight, self.params)?)
    }
}

/// Convolution (padding k / 2) + BatchNorm + activation.
struct ConvBn {
    conv: Conv,
    bn: BatchNorm,
}

impl ConvBn {
    fn new(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        vb: VarBuilder,
        conv: &str,
        bn: &str,
    ) -> Result<Self> {
        Self::grouped(cin, cout, k, stride, 1, vb, conv, bn)
    }

    #[allow(clippy::too_many_arguments)]
    fn grouped(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        groups: usize,
        vb: VarBuilder,
        conv: &str,
        bn: &str,
    ) -> Result<Self> {
        let p = Conv2dParams {
            stride,
            padding: k / 2,
            groups,
        };
        Ok(Self {
            conv: Conv::new(cin, cout, k, p, vb.pp(conv))?,
            bn: batch_norm(cout, 1e-5, vb.pp(bn))?,
        })
    }

    /// conv, BatchNorm, then `act`. In training mode with the fast kernels
    /// on the CPU, BatchNorm and the activation are one fused op
    /// ([`selfsup_kernels::batch_norm_train`]) and the running averages are
    /// updated here exactly as `candle_nn::BatchNorm` does; otherwise
    /// Candle's BatchNorm and activation ops run.
    fn forward(&self, x: &Tensor, train: bool, act: Activation) -> Result<Tensor> {
        let h = self.conv.forward(x)?;
        if train && fusion_enabled() && fused_supported(&h) {
            if let Some((gamma, beta)) = self.bn.weight_and_bias() {
                let (y, stats) = batch_norm_train(&h, gamma, beta, self.bn.eps(), act)?;
                let m = self.bn.momentum();
                let unbias = stats.count as f64 / (stats.count.max(2) - 1) as f64;
                // The BatchNorm keeps its running statistics as variables:
                // `from_tensor` of a variable shares its storage.
                let rm = Var::from_tensor(self.bn.running_mean())?;
                let rv = Var::from_tensor(self.bn.running_var())?;
                let c = stats.mean.len();
                let mean = Tensor::from_vec(stats.mean, c, h.device())?;
                let var = Tensor::from_vec(stats.var, c, h.device())?;
                rm.set(&((rm.as_tensor() * (1.0 - m))? + (mean * m)?)?)?;
                rv.set(&((rv.as_tensor() * (1.0 - m))? + (var * (m * unbias))?)?)?;
                return Ok(y);
            }
        }
        let y = self.bn.forward_t(&h, train)?;
        Ok(match act {
            Activation::Identity => y,
            Activation::Relu => y.relu()?,
            Activation::Relu6 => relu6(&y)?,
        })
    }
}

/// `relu(a + b)`: one fused op where [`ConvBn::forward`] would fuse, else
/// Candle's add and ReLU.
fn residual_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if fusion_enabled() && fused_supported(a) && a.dims() == b.dims() {
        Ok(add_relu(a, b)?)
    } else {
        Ok((a + b)?.relu()?)
    }
}

/// 2x2 max-pool, first dropping an odd last row/column (Candle's max-pool
/// backward is only correct for sizes divisible by the kernel). With the
/// fast kernels on the CPU it is `selfsup_kernels::max_pool2`, one pass
/// each way with the same gradient as Candle's.
fn max_pool2(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let x = if h % 2 == 1 || w % 2 == 1 {
        x.narrow(2, 0, h - h % 2)?.narrow(3, 0, w - w % 2)?
    } else {
        x.clone()
    };
    if default_kernels() == Kernels::Fast {
        Ok(selfsup_kernels::max_pool2(&x)?)
    } else {
        Ok(x.max_pool2d(2)?)
    }
}

/// Global average pool: (B, C, H, W) -> (B, C); with the fast kernels its
/// backward pass is `selfsup_kernels::global_avg_pool`'s single pass.
fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    if default_kernels() == Kernels::Fast {
        Ok(selfsup_kernels::global_avg_pool(x)?)
    } else {
        Ok(x.mean(3)?.mean(2)?)
    }
}

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

/// The basic residual block of ResNet-18.
struct BasicBlock {
    a: ConvBn,
    b: ConvBn,
    shortcut: Option<ConvBn>,
}

impl BasicBlock {
    fn new(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let shortcut = if stride != 1 || cin != cout {
            Some(ConvBn::new(
                cin,
                cout,
                1,
                stride,
                vb.pp("downsample"),
                "0",
                "1",
            )?)
        } else {
            None
        };
        Ok(Self {
            a: ConvBn::new(cin, cout, 3, stride, vb.clone(), "conv1", "bn1")?,
            b: ConvBn::new(cout, cout, 3, 1, vb, "conv2", "bn2")?,
            shortcut,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.a.forward(x, train, Activation::Relu)?;
        let h = self.b.forward(&h, train, Activation::Identity)?;
        let skip = match &self.shortcut {
            Some(s) => s.forward(x, train, Activation::Identity)?,
            None => x.clone(),
        };
        residual_relu(&h, &skip)
    }
}

/// ResNet-18 with the CIFAR stem: 3x3 stride-1 conv, no max-pool, four
/// stages of two basic blocks (stride 2 at stages 2-4), global average pool.
/// Parameter names follow torchvision (`conv1`, `bn1`, `layer1.0.conv1`, ...).
pub struct ResNet18 {
    stem: ConvBn,
    blocks: Vec<BasicBlock>,
    in_channels: usize,
    dim: usize,
}

impl ResNet18 {
    /// Builds the network.
    pub fn new(in_channels: usize, base_width: usize, vb: VarBuilder) -> Result<Self> {
        if base_width == 0 {
            return Err(Error::invalid(
                "backbone",
                "resnet18 base_width must be positive",
            ));
        }
        let stem = ConvBn::new(in_channels, base_width, 3, 1, vb.clone(), "conv1", "bn1")?;
        let mut blocks = Vec::new();
        let mut cin = base_width;
        for stage in 0..4 {
            let cout = base_width << stage;
            for b in 0..2 {
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                blocks.push(BasicBlock::new(
                    cin,
                    cout,
                    stride,
                    vb.pp(format!("layer{}.{b}", stage + 1)),
                )?);
                cin = cout;
            }
        }
        Ok(Self {
            stem,
            blocks,
            in_channels,
            dim: cin,
        })
    }
}

impl Backbone for ResNet18 {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        check_input(x, self.in_channels)?;
        let mut h = self.stem.forward(x, train, Activation::Relu)?;
        for b in &self.blocks {
            h = b.forward(&h, train)?;
        }
        global_avg_pool(&h)
    }

    fn feature_dim(&self) -> usize {
        self.dim
    }
}

/// Rounds `v` to a multiple of 8 no more than 10 % below it (the channel
/// rounding of the MobileNet papers).
fn make_divisible(v: f64) -> usize {
    let r = ((v + 4.0) as usize / 8 * 8).max(8);
    if (r as f64) < 0.9 * v {
        r + 8
    } else {
        r
    }
}

fn relu6(x: &Tensor) -> Result<Tensor> {
    Ok(x.relu()?.minimum(6f32)?)
}

/// MobileNetV2's inverted residual: 1x1 expansion (ReLU6), 3x3 depthwise
/// (ReLU6), linear 1x1 projection; identity skip when shapes allow.
struct InvertedResidual {
    expand: Option<ConvBn>,
    dw: ConvBn,
    project: ConvBn,
    skip: bool,
}

impl InvertedResidual {
    fn new(cin: usize, cout: usize, stride: usize, t: usize, vb: VarBuilder) -> Result<Self> {
        let hidden = cin * t;
        let expand = if t == 1 {
            None
        } else {
            Some(ConvBn::new(
                cin,
                hidden,
                1,
                1,
                vb.pp("expand"),
                "conv",
                "bn",
            )?)
        };
        Ok(Self {
            expand,
            dw: ConvBn::grouped(hidden, hidden, 3, stride, hidden, vb.pp("dw"), "conv", "bn")?,
            project: ConvBn::new(hidden, cout, 1, 1, vb.pp("project"), "conv", "bn")?,
            skip: stride == 1 && cin == cout,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = match &self.expand {
            Some(e) => e.forward(x, train, Activation::Relu6)?,
            None => x.clone(),
        };
        let h = self.dw.forward(&h, train, Activation::Relu6)?;
        let h = self.project.forward(&h, train, Activation::Identity)?;
        if self.skip {
            Ok((h + x)?)
        } else {
            Ok(h)
        }
    }
}

/// MobileNetV2 (Sandler et al., 2018) for small images: a 3x3 stride-1 stem,
/// seventeen inverted residual blocks (expansion 6, strides 2 at the 32-,
/// 64- and 160-channel stages, so 32x32 inputs end at 4x4), a 1x1 conv to
/// 1280 channels and global average pooling. `width_multiplier` scales the
/// channels (rounded to multiples of 8; the last layer never shrinks below
/// 1280). Parameters: `stem.*`, `blocks.{i}.{expand,dw,project}.*`, `last.*`.
pub struct MobileNetV2 {
    stem: ConvBn,
    blocks: Vec<InvertedResidual>,
    last: ConvBn,
    in_channels: usize,
    dim: usize,
}

impl MobileNetV2 {
    /// (expansion t, channels c, repeats n, first stride s) per stage.
    const STAGES: [(usize, usize, usize, usize); 7] = [
        (1, 16, 1, 1),
        (6, 24, 2, 1),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ];

    /// Builds the network.
    pub fn new(in_channels: usize, width_multiplier: f64, vb: VarBuilder) -> Result<Self> {
        if !(width_multiplier.is_finite() && width_multiplier > 0.0) {
            return Err(Error::invalid(
                "backbone",
                format!("mobilenetv2 width multiplier must be positive, got {width_multiplier}"),
            ));
        }
        let stem_c = make_divisible(32.0 * width_multiplier);
        let stem = ConvBn::new(in_channels, stem_c, 3, 1, vb.pp("stem"), "conv", "bn")?;
        let mut blocks = Vec::new();
        let mut cin = stem_c;
        for (t, c, n, s) in Self::STAGES {
            let cout = make_divisible(c as f64 * width_multiplier);
            for r in 0..n {
                let stride = if r == 0 { s } else { 1 };
                let vb = vb.pp(format!("blocks.{}", blocks.len()));
                blocks.push(InvertedResidual::new(cin, cout, stride, t, vb)?);
                cin = cout;
            }
        }
        let dim = make_divisible(1280.0 * width_multiplier.max(1.0));
        let last = ConvBn::new(cin, dim, 1, 1, vb.pp("last"), "conv", "bn")?;
        Ok(Self {
            stem,
            blocks,
            last,
            in_channels,
            dim,
        })
    }
}

impl Backbone for MobileNetV2 {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        check_input(x, self.in_channels)?;
        let mut h = self.stem.forward(x, train, Activation::Relu6)?;
        for b in &self.blocks {
            h = b.forward(&h, train)?;
        }
        global_avg_pool(&self.last.forward(&h, train, Activation::Relu6)?)
    }

    fn feature_dim(&self) -> usize {
        self.dim
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
