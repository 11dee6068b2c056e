//! ResNet-18 with the CIFAR stem.

use crate::layers::*;
use crate::Backbone;
use candle_core::Tensor;
use candle_nn::VarBuilder;
use selfsup_core::{Error, Result};
use selfsup_kernels::Activation;

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
        let skip = match &self.shortcut {
            Some(s) => s.forward(x, train, Activation::Identity)?,
            None => x.clone(),
        };
        self.b.forward_residual(&h, &skip, train, Activation::Relu)
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

impl ResNet18 {
    /// The last stage's output (B, 8·width, H/8, W/8), before pooling.
    fn last_map(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        check_input(x, self.in_channels)?;
        let mut h = self.stem.forward(x, train, Activation::Relu)?;
        for b in &self.blocks {
            h = b.forward(&h, train)?;
        }
        Ok(h)
    }
}

impl Backbone for ResNet18 {
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
