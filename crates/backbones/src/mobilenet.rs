//! MobileNetV2 with CIFAR strides.

use crate::layers::*;
use crate::Backbone;
use candle_core::Tensor;
use candle_nn::VarBuilder;
use selfsup_core::{Error, Result};
use selfsup_kernels::Activation;
use selfsup_kernels::Conv2dParams;

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
            dw: ConvBn::with_params(
                hidden,
                hidden,
                3,
                Conv2dParams {
                    stride,
                    padding: 1,
                    groups: hidden,
                },
                vb.pp("dw"),
                "conv",
                "bn",
            )?,
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
        if self.skip {
            self.project
                .forward_residual(&h, x, train, Activation::Identity)
        } else {
            self.project.forward(&h, train, Activation::Identity)
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

impl MobileNetV2 {
    /// The last 1x1 convolution's output, before pooling.
    fn last_map(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        check_input(x, self.in_channels)?;
        let mut h = self.stem.forward(x, train, Activation::Relu6)?;
        for b in &self.blocks {
            h = b.forward(&h, train)?;
        }
        self.last.forward(&h, train, Activation::Relu6)
    }
}

impl Backbone for MobileNetV2 {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        global_avg_pool(&self.last_map(x, train)?)
    }

    fn feature_map(&self, x: &Tensor, train: bool) -> Result<Option<Tensor>> {
        self.last_map(x, train).map(Some)
    }

    fn feature_dim(&self) -> usize {
        self.dim
    }
}
