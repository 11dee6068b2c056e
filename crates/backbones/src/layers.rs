//! The building blocks every backbone shares: convolution through
//! selfsup-kernels, conv + BatchNorm + activation (fused on the CPU),
//! residual add + ReLU, max-pool and global average pooling.

use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::{batch_norm, BatchNorm, VarBuilder};
use selfsup_core::{Error, Result};
use selfsup_kernels::{
    add_relu, batch_norm_eval, batch_norm_train, batch_norm_train_cuda, conv2d_default,
    conv_bn_train, conv_bn_train_cuda, cuda_fused_supported, default_kernels, ema_update_cuda,
    fused_conv_bn_cuda_supported, fused_conv_bn_supported, fused_supported, fusion_enabled,
    Activation, Conv2dParams, Kernels,
};

pub(crate) fn check_input(x: &Tensor, in_channels: usize) -> Result<()> {
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
pub(crate) struct Conv {
    weight: Tensor,
    params: Conv2dParams,
}

impl Conv {
    pub(crate) fn new(
        cin: usize,
        cout: usize,
        k: usize,
        p: Conv2dParams,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get_with_hints(
            (cout, cin / p.groups, k, k),
            "weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        Ok(Self { weight, params: p })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(conv2d_default(x, &self.weight, self.params)?)
    }
}

/// Convolution (padding k / 2) + BatchNorm + activation.
pub(crate) struct ConvBn {
    conv: Conv,
    bn: BatchNorm,
}

impl ConvBn {
    pub(crate) fn new(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        vb: VarBuilder,
        conv: &str,
        bn: &str,
    ) -> Result<Self> {
        let p = Conv2dParams {
            stride,
            padding: k / 2,
            groups: 1,
        };
        Self::with_params(cin, cout, k, p, vb, conv, bn)
    }

    /// With explicit stride, padding and groups (depthwise convolutions).
    pub(crate) fn with_params(
        cin: usize,
        cout: usize,
        k: usize,
        p: Conv2dParams,
        vb: VarBuilder,
        conv: &str,
        bn: &str,
    ) -> Result<Self> {
        Ok(Self {
            conv: Conv::new(cin, cout, k, p, vb.pp(conv))?,
            bn: batch_norm(cout, 1e-5, vb.pp(bn))?,
        })
    }

    /// conv, BatchNorm, then `act`. In training mode with the fast kernels
    /// on the CPU, a dense convolution, its BatchNorm and the activation are
    /// one op ([`selfsup_kernels::conv_bn_train`]); any other convolution
    /// is followed by the fused BatchNorm + activation
    /// ([`selfsup_kernels::batch_norm_train`]). On a GPU a dense or
    /// depthwise convolution, its BatchNorm and activation are the fused
    /// CUDA op ([`selfsup_kernels::conv_bn_train_cuda`]); others get the
    /// fused BatchNorm ([`selfsup_kernels::batch_norm_train_cuda`]). Either
    /// way the running
    /// averages are updated here exactly as `candle_nn::BatchNorm` does;
    /// otherwise Candle's BatchNorm and activation ops run.
    pub(crate) fn forward(&self, x: &Tensor, train: bool, act: Activation) -> Result<Tensor> {
        if train && fusion_enabled() {
            if let Some((gamma, beta)) = self.bn.weight_and_bias() {
                let (w, p) = (&self.conv.weight, self.conv.params);
                if fused_conv_bn_supported(x, w, p) {
                    let (y, stats) = conv_bn_train(x, w, gamma, beta, p, self.bn.eps(), act)?;
                    self.update_running(&stats, x.device())?;
                    return Ok(y);
                }
                if fused_conv_bn_cuda_supported(x, w, p) {
                    let ea = (self.bn.eps(), act);
                    let (y, s) = conv_bn_train_cuda(x, w, (gamma, beta), None, p, ea)?;
                    self.update_running_with(&s.mean, &s.var, s.count)?;
                    return Ok(y);
                }
            }
        }
        let h = self.conv.forward(x)?;
        if train && fusion_enabled() && fused_supported(&h) {
            if let Some((gamma, beta)) = self.bn.weight_and_bias() {
                let (y, stats) = batch_norm_train(&h, gamma, beta, self.bn.eps(), act)?;
                self.update_running(&stats, h.device())?;
                return Ok(y);
            }
        }
        if train && fusion_enabled() && cuda_fused_supported(&h) {
            if let Some((gamma, beta)) = self.bn.weight_and_bias() {
                let (y, s) = batch_norm_train_cuda(&h, gamma, beta, self.bn.eps(), act)?;
                self.update_running_with(&s.mean, &s.var, s.count)?;
                return Ok(y);
            }
        }
        if !train && fusion_enabled() && fused_supported(&h) {
            if let Some((gamma, beta)) = self.bn.weight_and_bias() {
                let stats = (self.bn.running_mean(), self.bn.running_var());
                return Ok(batch_norm_eval(
                    &h,
                    stats,
                    (gamma, beta),
                    self.bn.eps(),
                    act,
                )?);
            }
        }
        let y = self.bn.forward_t(&h, train)?;
        Ok(match act {
            Activation::Identity => y,
            Activation::Relu => y.relu()?,
            Activation::Relu6 => relu6(&y)?,
        })
    }

    /// `act(conv, BatchNorm, + residual)`: ResNet's `relu(bn(conv(x)) +
    /// skip)` (`act` ReLU) and MobileNetV2's `bn(conv(x)) + x` (identity).
    /// In training mode on a GPU the sum is inside the fused CUDA op
    /// ([`selfsup_kernels::conv_bn_train_cuda`]); elsewhere it is
    /// [`Self::forward`] without activation, then [`residual_relu`] (ReLU)
    /// or Candle's add (identity).
    pub(crate) fn forward_residual(
        &self,
        x: &Tensor,
        residual: &Tensor,
        train: bool,
        act: Activation,
    ) -> Result<Tensor> {
        let (w, p) = (&self.conv.weight, self.conv.params);
        let fused = train && fusion_enabled() && fused_conv_bn_cuda_supported(x, w, p);
        if let (true, Some((gamma, beta))) = (fused, self.bn.weight_and_bias()) {
            let ea = (self.bn.eps(), act);
            let (y, s) = conv_bn_train_cuda(x, w, (gamma, beta), Some(residual), p, ea)?;
            self.update_running_with(&s.mean, &s.var, s.count)?;
            return Ok(y);
        }
        let h = self.forward(x, train, Activation::Identity)?;
        match act {
            Activation::Identity => Ok((h + residual)?),
            Activation::Relu => residual_relu(&h, residual),
            Activation::Relu6 => relu6(&(h + residual)?),
        }
    }

    /// The running mean and variance moved towards a batch's statistics by
    /// the BatchNorm's momentum (the variance unbiased), as
    /// `candle_nn::BatchNorm` does in training mode.
    fn update_running(&self, stats: &selfsup_kernels::BatchStats, device: &Device) -> Result<()> {
        let c = stats.mean.len();
        let mean = Tensor::from_vec(stats.mean.clone(), c, device)?;
        let var = Tensor::from_vec(stats.var.clone(), c, device)?;
        self.update_running_with(&mean, &var, stats.count)
    }

    /// [`Self::update_running`] from the batch's mean and biased variance
    /// as tensors on the BatchNorm's device, over `count` values each.
    fn update_running_with(&self, mean: &Tensor, var: &Tensor, count: usize) -> Result<()> {
        let m = self.bn.momentum();
        let unbias = count as f64 / (count.max(2) - 1) as f64;
        let f32s = [mean, var, self.bn.running_mean(), self.bn.running_var()]
            .iter()
            .all(|t| t.dtype() == DType::F32);
        if mean.device().is_cuda() && f32s {
            // One in-place kernel each instead of six ops and a copy.
            ema_update_cuda(self.bn.running_mean(), mean, 1.0 - m, m)?;
            ema_update_cuda(self.bn.running_var(), var, 1.0 - m, m * unbias)?;
            return Ok(());
        }
        // The BatchNorm keeps its running statistics as variables:
        // `from_tensor` of a variable shares its storage.
        let rm = Var::from_tensor(self.bn.running_mean())?;
        let rv = Var::from_tensor(self.bn.running_var())?;
        rm.set(&(rm.as_tensor().affine(1.0 - m, 0.0)? + mean.affine(m, 0.0)?)?)?;
        rv.set(&(rv.as_tensor().affine(1.0 - m, 0.0)? + var.affine(m * unbias, 0.0)?)?)?;
        Ok(())
    }
}

/// `relu(a + b)`: one fused op where [`ConvBn::forward`] would fuse (the
/// CPU or a GPU), else Candle's add and ReLU.
pub(crate) fn residual_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let fusable = fused_supported(a) || cuda_fused_supported(a);
    if fusion_enabled() && fusable && a.dims() == b.dims() && a.device().same_device(b.device()) {
        Ok(add_relu(a, b)?)
    } else {
        Ok((a + b)?.relu()?)
    }
}

/// 2x2 max-pool, first dropping an odd last row/column (Candle's max-pool
/// backward is only correct for sizes divisible by the kernel). With the
/// fast kernels on the CPU it is `selfsup_kernels::max_pool2`, one pass
/// each way with the same gradient as Candle's.
pub(crate) fn max_pool2(x: &Tensor) -> Result<Tensor> {
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
pub(crate) fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    if default_kernels() == Kernels::Fast {
        Ok(selfsup_kernels::global_avg_pool(x)?)
    } else {
        Ok(x.mean(3)?.mean(2)?)
    }
}

pub(crate) fn relu6(x: &Tensor) -> Result<Tensor> {
    Ok(x.relu()?.minimum(6f32)?)
}
