//! selfsup-kernels: the convolution every selfsup backbone trains with, and
//! the CPU transformer ops its text BERT trains with.
//!
//! Candle 0.11.1's own `conv2d` is correct in the forward pass but slow or
//! wrong to train with in three places (see `../shared/CANDLE-NOTES.md`):
//!
//! - the input gradient goes through `conv_transpose2d`, a direct loop on the
//!   CPU and a naive kernel on CUDA;
//! - that gradient has the wrong shape for a stride-2 convolution of a
//!   non-square input (the output padding is computed from the height only);
//! - a grouped convolution is split into one convolution per group, so a
//!   depthwise layer with C channels launches C tiny convolutions.
//!
//! [`conv2d`] with [`Kernels::Fast`] replaces them:
//!
//! - dense convolutions on the CPU (f32) are this crate's own im2col + GEMM
//!   (the `gemm` crate Candle also uses) for the forward pass and both
//!   gradients, built straight from the NCHW layout and parallel over groups
//!   of images (`cpu_conv`);
//! - on CUDA (f32, a `cuda` build) dense and depthwise convolutions are
//!   cuDNN calls in all three directions, an algorithm chosen once per
//!   shape and one workspace reused ([`set_conv_tf32`],
//!   [`set_conv_algo_search`], [`set_depthwise_cudnn`]);
//! - elsewhere (other dtypes) the forward pass is Candle's and the
//!   input gradient a stride-1 convolution of the zero-dilated output
//!   gradient with the flipped, transposed kernel (im2col + GEMM), computed
//!   for each spatial dimension's own output padding;
//! - depthwise convolutions (f32) are direct kernels with their own
//!   gradients: multithreaded loops on the CPU, CUDA kernels (compiled at
//!   first use with NVRTC) on the GPU where cuDNN's are turned off, one
//!   launch per layer.
//!
//! [`Kernels::Stock`] calls Candle's ops unchanged, for comparison
//! (`--kernels stock`).
//!
//! On the CPU the crate also fuses what surrounds the convolutions in a
//! training step: [`batch_norm_train`] (training-mode BatchNorm with its
//! ReLU/ReLU6 in one pass forward and two backward, instead of Candle's
//! chain of ten single-threaded ops), [`conv_bn_train`] (a dense
//! convolution, its BatchNorm and activation as one op, whose BatchNorm
//! gradient is formed inside the convolution's backward pass instead of as
//! a full-size tensor in between), [`add_relu`] (a residual sum and
//! its ReLU), [`max_pool2`] (2x2 max-pooling with Candle's gradient, one
//! pass each way) and [`AdamW`] (Candle's optimizer with its update fused
//! into one in-place pass per parameter, bit-identical results).
//!
//! On CUDA the same fusions are GPU kernels compiled at first use with
//! NVRTC: [`conv_bn_train_cuda`] (convolution, BatchNorm, activation and
//! optionally a residual sum as one op, statistics left on the device),
//! [`batch_norm_train_cuda`], [`add_relu`], [`ema_update_cuda`] (running
//! averages in place) and [`AdamW`]'s step.
//!
//! For the text side's BERT the crate has the transformer's CPU ops with
//! their backward passes, which Candle lacks or builds from many single
//! passes: [`linear`] (one GEMM forward into the bias rows, two backward),
//! [`layer_norm`] (over the last dimension, one pass each way),
//! [`add_bias`] (a bias or position table added over the leading
//! dimensions, summed back in one vectorised pass),
//! [`attention`] (multi-head attention read from and written to the
//! (B, T, H) projections, one op in place of about fourteen),
//! [`scaled_softmax`] (attention scores scaled, plus the padding mask,
//! normalised), [`gelu_erf`] (the exact GELU, with vectorised `erf` and
//! `exp` from [`math`]), [`cross_entropy`] (the loss over a vocabulary,
//! one pass each way) and [`dropout`] (its mask a hash of a seed and the
//! element index: reproducible, recomputed backward instead of stored).
//!
//! Every CPU loop here runs at the widest SIMD the CPU has, chosen at run
//! time ([`simd`]: AVX-512, AVX2 + FMA or the SSE2 baseline), with the same
//! results on every path. The GEMM (the `gemm` crate) picks its own
//! kernels at run time, AVX-512 ones included (the `avx512-gemm` feature,
//! on by default).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use selfsup_kernels::{conv2d, Conv2dParams, Kernels};
//! let x = Tensor::ones((2, 3, 9, 7), candle_core::DType::F32, &Device::Cpu).unwrap();
//! let w = Tensor::ones((4, 3, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
//! let y = conv2d(&x, &w, Conv2dParams { stride: 2, padding: 1, groups: 1 }, Kernels::Fast).unwrap();
//! assert_eq!(y.dims(), &[2, 4, 5, 4]);
//! ```

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

pub mod adamw;
mod add_bias;
mod attention;
mod batchnorm;
mod bn_device;
mod bn_eval;
mod conv_bn;
mod cpu_conv;
mod cross_entropy;
#[cfg(feature = "cuda")]
mod cuda_fused;
#[cfg(feature = "cuda")]
mod cudnn_conv;
#[cfg(feature = "cuda")]
mod cudnn_find;
mod depthwise;
mod dropout;
mod gelu;
mod layer_norm;
mod linear;
pub mod math;
pub mod nn;
mod pool;
pub mod simd;
mod softmax;

pub use adamw::AdamW;
pub use add_bias::add_bias;
pub use attention::attention;
pub use batchnorm::{add_relu, batch_norm_train, fused_supported, Activation, BatchStats};
pub use bn_device::{
    batch_norm_train_cuda, conv_bn_train_cuda, cuda_fused_supported, ema_update_cuda,
    fused_conv_bn_cuda_supported, DeviceStats,
};
pub use bn_eval::batch_norm_eval;
pub use conv_bn::{conv_bn_train, fused_conv_bn_supported};
pub use cross_entropy::cross_entropy;
pub use dropout::{dropout, dropout_mask};
pub use gelu::gelu_erf;
pub use layer_norm::layer_norm;
pub use linear::linear;
pub use pool::{global_avg_pool, max_pool2};
pub use softmax::scaled_softmax;

/// Which implementation of the convolution ops to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernels {
    /// Candle's own `conv2d` and its backward pass.
    Stock,
    /// This crate's gradients and depthwise convolution (the default).
    Fast,
}

impl Kernels {
    /// `stock` or `fast`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Stock => "stock",
            Self::Fast => "fast",
        }
    }
}

impl std::str::FromStr for Kernels {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "stock" => Ok(Self::Stock),
            "fast" => Ok(Self::Fast),
            other => Err(format!("unknown kernels {other:?}; expected stock or fast")),
        }
    }
}

static DEFAULT: AtomicU8 = AtomicU8::new(1);

/// Sets the process-wide implementation used by [`conv2d_default`] (the
/// backbones' convolutions). Command-line tools set it from `--kernels`.
pub fn set_default(k: Kernels) {
    DEFAULT.store(
        match k {
            Kernels::Stock => 0,
            Kernels::Fast => 1,
        },
        Ordering::Relaxed,
    );
}

/// The process-wide implementation (fast unless [`set_default`] changed it).
pub fn default_kernels() -> Kernels {
    if DEFAULT.load(Ordering::Relaxed) == 0 {
        Kernels::Stock
    } else {
        Kernels::Fast
    }
}

static FUSION: AtomicBool = AtomicBool::new(true);

/// Turns the fused ops ([`batch_norm_train`], [`add_relu`]) on or off for the
/// backbones' fast path, process-wide (on by default). Off, the fast kernels
/// keep their convolutions and use Candle's BatchNorm and activations: for
/// tests that isolate the fusion, and for measuring what it saves.
pub fn set_fusion(enabled: bool) {
    FUSION.store(enabled, Ordering::Relaxed);
}

/// Whether the backbones fuse BatchNorm and activations: [`set_fusion`] left
/// it on and the process-wide kernels are [`Kernels::Fast`].
pub fn fusion_enabled() -> bool {
    FUSION.load(Ordering::Relaxed) && default_kernels() == Kernels::Fast
}

static CONV_TF32: AtomicBool = AtomicBool::new(true);

/// Allows or forbids TF32 tensor-core math in the cuDNN convolutions
/// (CUDA, f32), process-wide. Allowed by default, as PyTorch allows it for
/// its cuDNN convolutions (`torch.backends.cudnn.allow_tf32`); forbidden,
/// they compute in strict f32 (`--precision fp32`).
pub fn set_conv_tf32(allowed: bool) {
    CONV_TF32.store(allowed, Ordering::Relaxed);
}

/// Whether the cuDNN convolutions may use TF32 ([`set_conv_tf32`]).
pub fn conv_tf32() -> bool {
    CONV_TF32.load(Ordering::Relaxed)
}

static CONV_ALGO_MEASURED: AtomicBool = AtomicBool::new(false);

/// How the cuDNN convolutions pick an algorithm for a new shape,
/// process-wide: `false` (the default) takes cuDNN's heuristic pick
/// without timing (PyTorch's default, `cudnn.benchmark = False`); `true`
/// times every algorithm once on the shape and keeps the fastest
/// (`cudnn.benchmark = True`). On an H200 the timed search ran the
/// ResNet-18 step 1.6x faster in strict f32 (10,856 against 6,667
/// images/s) but slower with TF32 (15,491 against 17,095): see
/// docs/results/gpu-h200.
pub fn set_conv_algo_search(measured: bool) {
    CONV_ALGO_MEASURED.store(measured, Ordering::Relaxed);
}

/// Whether new convolution shapes get a timed algorithm search
/// ([`set_conv_algo_search`]).
pub fn conv_algo_measured() -> bool {
    CONV_ALGO_MEASURED.load(Ordering::Relaxed)
}

static DEPTHWISE_CUDNN: AtomicBool = AtomicBool::new(true);

/// Runs depthwise convolutions on CUDA through cuDNN (grouped
/// convolutions) instead of this crate's kernels, process-wide. On by
/// default: on an H200, MobileNetV2's training step ran at 9,850 images/s
/// with cuDNN's against 8,677 with this crate's kernels
/// (bench/results/h200-mobilenetv2-depthwise-cudnn.json). Off, for
/// measuring one against the other (the bench's `--depthwise kernels`).
pub fn set_depthwise_cudnn(on: bool) {
    DEPTHWISE_CUDNN.store(on, Ordering::Relaxed);
}

/// Whether depthwise convolutions on CUDA go through cuDNN
/// ([`set_depthwise_cudnn`]).
pub fn depthwise_cudnn() -> bool {
    DEPTHWISE_CUDNN.load(Ordering::Relaxed)
}

static FLOPS: AtomicU64 = AtomicU64::new(0);

/// Multiply-add FLOPs (2 per multiply-add) of every forward convolution run
/// by this crate since the last [`take_forward_flops`]; benchmarks use it to
/// report achieved GFLOP/s.
pub fn take_forward_flops() -> u64 {
    FLOPS.swap(0, Ordering::Relaxed)
}

/// Stride, symmetric zero padding and groups of a 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dParams {
    /// Step between output positions, both dimensions.
    pub stride: usize,
    /// Zeros added on every side.
    pub padding: usize,
    /// Channel groups (1: dense; = input channels: depthwise).
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Self {
            stride: 1,
            padding: 0,
            groups: 1,
        }
    }
}

fn out_size(n: usize, k: usize, p: Conv2dParams) -> Result<usize> {
    let padded = p.padding.checked_mul(2).and_then(|d| d.checked_add(n));
    match padded {
        Some(padded) if padded >= k && p.stride > 0 => Ok((padded - k) / p.stride + 1),
        _ => candle_core::bail!(
            "conv2d: input size {n} with padding {} is smaller than the kernel {k}, too large, or stride 0",
            p.padding
        ),
    }
}

/// The product of `dims`, or `None` where it overflows.
fn product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// The sizes of a convolution of `x` with `w`, checked: the groups
/// divide the channels, and the output and FLOP counts do not overflow
/// (the output and the im2col buffer are allocated from these sizes: a
/// product that overflows is an error, never a wrapped allocation). The
/// forward FLOPs are added to [`take_forward_flops`]'s count.
fn conv_geometry(x: &Tensor, w: &Tensor, p: Conv2dParams) -> Result<cpu_conv::Geo> {
    let (b, cin, h, wd) = x.dims4()?;
    let (cout, cin_g, kh, kw) = w.dims4()?;
    if p.groups == 0
        || cin % p.groups != 0
        || cin_g.checked_mul(p.groups) != Some(cin)
        || cout % p.groups != 0
    {
        candle_core::bail!(
            "conv2d: input has {cin} channels, kernel {:?} and groups {}",
            w.dims(),
            p.groups
        );
    }
    let (ho, wo) = (out_size(h, kh, p)?, out_size(wd, kw, p)?);
    let (Some(_), Some(flops)) = (
        product(&[b, cout, ho, wo]),
        product(&[2, b, cout, cin_g, kh, kw, ho, wo]),
    ) else {
        candle_core::bail!(
            "conv2d: input {:?} with kernel {:?}, padding {} and stride {} gives an output too large to index",
            x.dims(),
            w.dims(),
            p.padding,
            p.stride
        );
    };
    FLOPS.fetch_add(flops as u64, Ordering::Relaxed);
    Ok(cpu_conv::Geo {
        n: b,
        cin,
        h,
        w: wd,
        cout,
        kh,
        kw,
        stride: p.stride,
        pad: p.padding,
        ho,
        wo,
    })
}

/// 2-D convolution of `x` (B, C_in, H, W) with `w` (C_out, C_in / groups,
/// kH, kW), no bias, using the implementation `k`.
pub fn conv2d(x: &Tensor, w: &Tensor, p: Conv2dParams, k: Kernels) -> Result<Tensor> {
    let geo = conv_geometry(x, w, p)?;
    let (cin, cin_g) = (geo.cin, geo.cin / p.groups);
    let (cout, kh, kw) = (geo.cout, geo.kh, geo.kw);
    let needs_grad = x.track_op() || w.track_op();
    match k {
        Kernels::Stock => x.conv2d(w, p.padding, p.stride, 1, p.groups),
        Kernels::Fast
            if p.groups == 1
                && x.device().is_cpu()
                && x.dtype() == DType::F32
                && w.dtype() == DType::F32 =>
        {
            x.contiguous()?
                .apply_op2(&w.contiguous()?, cpu_conv::Conv(geo))
        }
        #[cfg(feature = "cuda")]
        Kernels::Fast
            if p.groups == 1
                && x.device().is_cuda()
                && x.dtype() == DType::F32
                && w.dtype() == DType::F32 =>
        {
            x.contiguous()?
                .apply_op2(&w.contiguous()?, cudnn_conv::Op::forward(geo, 1))
        }
        #[cfg(feature = "cuda")]
        Kernels::Fast
            if p.groups == cin
                && cin_g == 1
                && x.device().is_cuda()
                && depthwise_cudnn()
                && x.dtype() == DType::F32
                && w.dtype() == DType::F32 =>
        {
            x.contiguous()?
                .apply_op2(&w.contiguous()?, cudnn_conv::Op::forward(geo, p.groups))
        }
        Kernels::Fast if p.groups == 1 => {
            let y = x.detach().conv2d(&w.detach(), p.padding, p.stride, 1, 1)?;
            if !needs_grad {
                return Ok(y);
            }
            x.apply_op3(
                w,
                &y,
                ConvGrad {
                    stride: p.stride,
                    padding: p.padding,
                },
            )
        }
        Kernels::Fast
            if p.groups == cin
                && cin_g == 1
                && cout == cin
                && kh == kw
                && x.dtype() == DType::F32
                && w.dtype() == DType::F32 =>
        {
            let geo = depthwise::Geometry {
                h: geo.h,
                w: geo.w,
                ho: geo.ho,
                wo: geo.wo,
                k: kh,
                s: p.stride,
                p: p.padding,
            };
            x.contiguous()?
                .apply_op2(&w.contiguous()?, depthwise::Forward(geo))
        }
        Kernels::Fast => x.conv2d(w, p.padding, p.stride, 1, p.groups),
    }
}

/// [`conv2d`] with the process-wide implementation ([`default_kernels`]).
pub fn conv2d_default(x: &Tensor, w: &Tensor, p: Conv2dParams) -> Result<Tensor> {
    conv2d(x, w, p, default_kernels())
}

/// `n` values written in parallel, chunk by chunk: `fill(i, chunk)` gets
/// chunk `i` of `chunk_len` elements (the last may be shorter). Nothing is
/// zero-filled first: on the calling thread, with the other core idle,
/// those memsets were ~5 % of a ConvNet training step.
///
/// # Safety
/// `fill` must write every element of every chunk it is handed.
unsafe fn par_uninit(
    n: usize,
    chunk_len: usize,
    fill: impl Fn(usize, &mut [std::mem::MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    use rayon::prelude::*;
    let mut v: Vec<f32> = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(chunk_len.max(1))
        .enumerate()
        .for_each(|(i, c)| fill(i, c));
    // SAFETY: the caller's `fill` wrote all `n` elements, chunk by chunk.
    unsafe { v.set_len(n) };
    v
}

/// An error unless `x` suits the fused CPU ops ([`fused_supported`]):
/// "`op` runs on the CPU in f32 on tensors of rank 2 or more, got ...".
fn require_fused(x: &Tensor, op: &str) -> Result<()> {
    if fused_supported(x) {
        return Ok(());
    }
    candle_core::bail!(
        "{op} runs on the CPU in f32 on tensors of rank 2 or more, got {:?} {:?} on {:?}",
        x.dtype(),
        x.dims(),
        x.device().location()
    )
}

/// The gradient `data` for operand `t` of a custom op's backward pass,
/// shaped like `t` — or `None` when `t` takes no gradient.
fn grad_for(t: &Tensor, data: Vec<f32>) -> Result<Option<Tensor>> {
    t.track_op()
        .then(|| Tensor::from_vec(data, t.shape(), t.device()))
        .transpose()
}

/// The element-wise sum of per-block partial sums (each `n` long), added
/// in block order: a reduction whose result does not depend on how many
/// threads computed the blocks.
fn sum_in_block_order(partials: &[Vec<f32>], n: usize) -> Vec<f32> {
    let mut sums = vec![0f32; n];
    for p in partials {
        for (s, v) in sums.iter_mut().zip(p) {
            *s += v;
        }
    }
    sums
}

/// The f32 data of a contiguous CPU operand; `op` and `operand` name it in
/// the error ("<op>: <operand> must be contiguous").
fn cpu_f32<'a>(s: &'a CpuStorage, l: &Layout, op: &str, operand: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: {operand} must be contiguous"),
    }
}

/// The state a custom op's forward pass leaves for its backward pass (and
/// its caller), locked; `op` names the op in the error if a panic poisoned
/// it.
fn lock_stash<'a, T>(
    stash: &'a std::sync::Mutex<Option<T>>,
    op: &str,
) -> Result<std::sync::MutexGuard<'a, Option<T>>> {
    stash
        .lock()
        .map_err(|_| candle_core::Error::Msg(format!("{op}: poisoned state")))
}

/// Runs `f` on the f32 data of the tensors `ts`, contiguous CPU tensors
/// (as a custom op's backward pass needs to read its operands); `op` names
/// the op in the error.
fn with_cpu_f32<const N: usize, R>(
    ts: [&Tensor; N],
    op: &str,
    f: impl FnOnce([&[f32]; N]) -> R,
) -> Result<R> {
    let guards: Vec<_> = ts.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(N);
    for (storage, layout) in &guards {
        match &**storage {
            candle_core::Storage::Cpu(s) => slices.push(cpu_f32(s, layout, op, "operands")?),
            _ => candle_core::bail!("{op}: operands must be on the CPU"),
        }
    }
    match <[&[f32]; N]>::try_from(slices) {
        Ok(all) => Ok(f(all)),
        Err(_) => candle_core::bail!("{op}: expected {N} operands"),
    }
}

/// Along one axis of a convolution (input size `n`, output size `no`,
/// stride `s`, padding `p`): the output positions `lo..hi` whose input
/// position `o·s + t - p` for kernel tap `t` lies inside the input.
#[inline]
fn in_image(t: usize, n: usize, no: usize, s: usize, p: usize) -> (usize, usize) {
    // o·s + t >= p  <=>  o >= ceil((p - t) / s)
    let lo = p.saturating_sub(t).div_ceil(s);
    // o·s + t - p <= n - 1  <=>  o <= (n - 1 + p - t) / s
    let hi = if n + p > t {
        ((n - 1 + p - t) / s + 1).min(no)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// Zero-dilates `g` by `s` along dimension `dim` (2 or 3), keeping `keep`
/// positions: g0 0 .. 0 g1 0 .. 0 g2 ...
fn dilate(g: &Tensor, dim: usize, s: usize, keep: usize) -> Result<Tensor> {
    if s == 1 {
        return Ok(g.clone());
    }
    let mut dims = g.dims().to_vec();
    dims[dim] *= s;
    g.unsqueeze(dim + 1)?
        .pad_with_zeros(dim + 1, 0, s - 1)?
        .reshape(dims)?
        .narrow(dim, 0, keep)
}

/// Gradient of a dense convolution's output w.r.t. its input: the stride-1
/// convolution of the dilated output gradient with the flipped, transposed
/// kernel. Each spatial dimension gets its own trailing zeros, so non-square
/// inputs with stride 2 are exact.
fn input_grad(
    g: &Tensor,
    w: &Tensor,
    h: usize,
    wd: usize,
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    let (_, _, ho, wo) = g.dims4()?;
    let (_, _, kh, kw) = w.dims4()?;
    if kh != kw || pad >= kh {
        // Outside what the flipped-kernel form handles (Candle's padding is
        // one number for both dimensions): Candle's own transposed conv.
        let out_h = (ho - 1) * stride + kh - 2 * pad;
        return g.conv_transpose2d(w, pad, h - out_h, stride, 1);
    }
    let rh = (h + 2 * pad - kh) % stride;
    let rw = (wd + 2 * pad - kw) % stride;
    let gd = dilate(g, 2, stride, (ho - 1) * stride + 1 + rh)?;
    let gd = dilate(&gd, 3, stride, (wo - 1) * stride + 1 + rw)?;
    let dev = w.device();
    let rev = Tensor::from_vec((0..kh as u32).rev().collect::<Vec<_>>(), kh, dev)?;
    let wf = w
        .index_select(&rev, 2)?
        .index_select(&rev, 3)?
        .transpose(0, 1)?
        .contiguous()?;
    gd.contiguous()?.conv2d(&wf, kh - 1 - pad, 1, 1, 1)
}

/// Gradient w.r.t. the kernel off the CPU fast path: correlation of the
/// input with the output gradient, batch and channel axes swapped (Candle's
/// formulation; the CPU's f32 path is `cpu_conv::weight_grad`).
fn weight_grad(
    x: &Tensor,
    g: &Tensor,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    let gw = x
        .transpose(0, 1)?
        .conv2d(&g.transpose(0, 1)?, pad, 1, stride, 1)?
        .transpose(0, 1)?;
    let (_, _, a, b) = gw.dims4()?;
    if a != kh || b != kw {
        gw.narrow(2, 0, kh)?.narrow(3, 0, kw)
    } else {
        Ok(gw)
    }
}

/// Identity on the precomputed output `y` (argument 3), with the
/// convolution's gradients for `x` (argument 1) and `w` (argument 2).
struct ConvGrad {
    stride: usize,
    padding: usize,
}

fn check_whole(l: &Layout) -> Result<()> {
    if !l.is_contiguous() || l.start_offset() != 0 {
        candle_core::bail!("conv-grad: the precomputed output must be contiguous");
    }
    Ok(())
}

impl CustomOp3 for ConvGrad {
    fn name(&self) -> &'static str {
        "selfsup-conv2d"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        y: &CpuStorage,
        ly: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        check_whole(ly)?;
        Ok((y.try_clone(ly)?, ly.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        y: &candle_core::CudaStorage,
        ly: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        check_whole(ly)?;
        Ok((y.try_clone(ly)?, ly.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, _, h, wd) = x.dims4()?;
        let (_, _, kh, kw) = w.dims4()?;
        let g = g.contiguous()?;
        let gx = if x.track_op() {
            Some(input_grad(&g, w, h, wd, self.stride, self.padding)?)
        } else {
            None
        };
        let gw = if w.track_op() {
            Some(weight_grad(x, &g, kh, kw, self.stride, self.padding)?)
        } else {
            None
        };
        Ok((gx, gw, None))
    }
}
