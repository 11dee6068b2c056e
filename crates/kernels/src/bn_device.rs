//! The public face of the fused CUDA ops ([`batch_norm_train_cuda`],
//! [`cuda_fused_supported`]): available in every build, an error without
//! the `cuda` feature.

use crate::Activation;
use candle_core::{DType, Result, Tensor};

/// Whether the fused CUDA ops ([`batch_norm_train_cuda`], and
/// [`crate::add_relu`] on a GPU) can run on `x`: an f32 tensor of rank 2 or
/// more on a CUDA device, in a build with the `cuda` feature.
pub fn cuda_fused_supported(x: &Tensor) -> bool {
    cfg!(feature = "cuda") && x.device().is_cuda() && x.dtype() == DType::F32 && x.rank() >= 2
}

/// Per-channel statistics of the batch a [`batch_norm_train_cuda`] call
/// normalised with, left on the device (no copy to the host in a training
/// step).
#[derive(Debug, Clone)]
pub struct DeviceStats {
    /// Mean over batch and spatial positions, (C).
    pub mean: Tensor,
    /// Biased variance (divided by the number of values), (C).
    pub var: Tensor,
    /// Values per channel (batch x spatial positions).
    pub count: usize,
}

impl DeviceStats {
    /// The mean and variance rows of the fused ops' (3, C) statistics
    /// (mean, biased variance, inverse standard deviation).
    #[cfg(feature = "cuda")]
    fn from_rows(stats: &Tensor, count: usize) -> Result<Self> {
        Ok(Self {
            mean: stats.get(0)?,
            var: stats.get(1)?,
            count,
        })
    }
}

/// Training-mode batch normalisation of `x` (N, C, ...) with per-channel
/// scale `gamma` and shift `beta`, then `act`, on CUDA: the counterpart of
/// [`crate::batch_norm_train`], differentiable in `x`, `gamma` and `beta`,
/// three kernel launches forward and three backward.
pub fn batch_norm_train_cuda(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    act: Activation,
) -> Result<(Tensor, DeviceStats)> {
    if !cuda_fused_supported(x) {
        candle_core::bail!(
            "fused CUDA batch norm runs on a GPU in f32 on (N, C, ...) tensors (a `cuda` build), got {:?} {:?} on {:?}",
            x.dtype(),
            x.dims(),
            x.device().location()
        );
    }
    let c = x.dim(1)?;
    let op = "fused CUDA batch norm";
    crate::batchnorm::check_scale_shift(op, c, "channels in the input", (gamma, beta))?;
    let count = x.elem_count() / c.max(1);
    run(x, gamma, beta, eps, act, count)
}

#[cfg(feature = "cuda")]
fn run(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    act: Activation,
    count: usize,
) -> Result<(Tensor, DeviceStats)> {
    let (y, stats) = crate::cuda_fused::batch_norm_train(x, gamma, beta, eps, act)?;
    Ok((y, DeviceStats::from_rows(&stats, count)?))
}

#[cfg(not(feature = "cuda"))]
fn run(
    _: &Tensor,
    _: &Tensor,
    _: &Tensor,
    _: f64,
    _: Activation,
    _: usize,
) -> Result<(Tensor, DeviceStats)> {
    candle_core::bail!("fused CUDA batch norm needs a build with the `cuda` feature")
}

/// Whether [`conv_bn_train_cuda`] runs on `x` and `w` with `p`: f32 on one
/// GPU (a `cuda` build), 4-D, and a dense (groups 1) or depthwise (groups =
/// channels, square kernel) convolution.
pub fn fused_conv_bn_cuda_supported(x: &Tensor, w: &Tensor, p: crate::Conv2dParams) -> bool {
    let (Ok((_, cin, _, _)), Ok((cout, cin_g, kh, kw))) = (x.dims4(), w.dims4()) else {
        return false;
    };
    let depthwise = p.groups == cin && cin_g == 1 && cout == cin && kh == kw;
    cuda_fused_supported(x)
        && w.dtype() == DType::F32
        && x.device().same_device(w.device())
        && (p.groups == 1 || depthwise)
}

/// Training-mode `act(BatchNorm(conv2d(x, w)) + residual)` on CUDA (no sum
/// when `residual` is `None`), differentiable in `x`, `w`, `gamma`, `beta`
/// and the residual: the counterpart of [`crate::conv_bn_train`], whose
/// convolution output (and sum) never enters Candle's gradient store.
/// Returns the output and the batch statistics, on the device. Runs where
/// [`fused_conv_bn_cuda_supported`] holds; the residual has the output's
/// shape.
pub fn conv_bn_train_cuda(
    x: &Tensor,
    w: &Tensor,
    (gamma, beta): (&Tensor, &Tensor),
    residual: Option<&Tensor>,
    p: crate::Conv2dParams,
    (eps, act): (f64, Activation),
) -> Result<(Tensor, DeviceStats)> {
    if !fused_conv_bn_cuda_supported(x, w, p) {
        candle_core::bail!(
            "fused CUDA conv + batch norm runs on one GPU in f32 with a dense or depthwise convolution (a `cuda` build), got {:?} {:?} and {:?} {:?} on {:?}, groups {}",
            x.dtype(),
            x.dims(),
            w.dtype(),
            w.dims(),
            x.device().location(),
            p.groups
        );
    }
    let geo = crate::conv_geometry(x, w, p)?;
    let op = "fused CUDA conv + batch norm";
    crate::batchnorm::check_scale_shift(op, geo.cout, "output channels", (gamma, beta))?;
    let count = geo.n * geo.ho * geo.wo;
    conv_bn_run(
        x,
        w,
        (gamma, beta, residual),
        geo,
        p.groups,
        (eps, act),
        count,
    )
}

#[cfg(feature = "cuda")]
fn conv_bn_run(
    x: &Tensor,
    w: &Tensor,
    (gamma, beta, residual): (&Tensor, &Tensor, Option<&Tensor>),
    geo: crate::cpu_conv::Geo,
    groups: usize,
    (eps, act): (f64, Activation),
    count: usize,
) -> Result<(Tensor, DeviceStats)> {
    use crate::cuda_fused::conv_bn::{self, ConvKind};
    let kind = if groups == 1 || crate::depthwise_cudnn() {
        ConvKind::Cudnn(geo, groups)
    } else {
        ConvKind::Depthwise(crate::depthwise::Geometry {
            h: geo.h,
            w: geo.w,
            ho: geo.ho,
            wo: geo.wo,
            k: geo.kh,
            s: geo.stride,
            p: geo.pad,
        })
    };
    let (y, stats) = conv_bn::conv_bn_train(x, w, (gamma, beta), residual, kind, (eps, act))?;
    Ok((y, DeviceStats::from_rows(&stats, count)?))
}

#[cfg(not(feature = "cuda"))]
fn conv_bn_run(
    _: &Tensor,
    _: &Tensor,
    _: (&Tensor, &Tensor, Option<&Tensor>),
    _: crate::cpu_conv::Geo,
    _: usize,
    _: (f64, Activation),
    _: usize,
) -> Result<(Tensor, DeviceStats)> {
    candle_core::bail!("fused CUDA conv + batch norm needs a build with the `cuda` feature")
}

/// In place on CUDA: `running = running · keep + value · take`, one kernel
/// launch (a BatchNorm's running statistics; Candle's tensor ops take six
/// launches and a copy). Both are f32 vectors of one length on one GPU.
pub fn ema_update_cuda(running: &Tensor, value: &Tensor, keep: f64, take: f64) -> Result<()> {
    let ok = cfg!(feature = "cuda")
        && running.device().is_cuda()
        && running.device().same_device(value.device())
        && running.dtype() == DType::F32
        && value.dtype() == DType::F32
        && running.elem_count() == value.elem_count();
    if !ok {
        candle_core::bail!(
            "moving average on CUDA: two f32 tensors of one length on one GPU, got {:?} {:?} on {:?} and {:?} {:?} on {:?}",
            running.dtype(),
            running.dims(),
            running.device().location(),
            value.dtype(),
            value.dims(),
            value.device().location()
        );
    }
    ema_run(running, value, keep, take)
}

#[cfg(feature = "cuda")]
fn ema_run(running: &Tensor, value: &Tensor, keep: f64, take: f64) -> Result<()> {
    let op = crate::cuda_fused::Ema {
        keep: keep as f32,
        take: take as f32,
    };
    running.inplace_op2(&value.contiguous()?, &op)
}

#[cfg(not(feature = "cuda"))]
fn ema_run(_: &Tensor, _: &Tensor, _: f64, _: f64) -> Result<()> {
    candle_core::bail!("moving average on CUDA needs a build with the `cuda` feature")
}
