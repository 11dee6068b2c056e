//! The fused training ops on CUDA (f32): training-mode BatchNorm with its
//! activation, the residual add + ReLU, and the AdamW step — the CPU ops'
//! counterparts, in kernels compiled at first use with NVRTC
//! (`kernels.cu`).
//!
//! Candle's BatchNorm in training mode is about ten kernel launches forward
//! and twenty backward, each a full pass; here the forward pass is three
//! launches (partial sums, statistics, normalise + activate) and the
//! backward pass three (partial gradient sums, their totals, the input
//! gradient). The statistics stay on the device: the running averages are
//! updated from device tensors, with no copy to the host in the step.
//! Partial sums are reduced in a fixed order (no atomics), so results do not
//! depend on scheduling.

use crate::batchnorm::Activation;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{cudarc, WrapErr};
use candle_core::{
    CpuStorage, CudaDevice, CudaStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Storage,
    Tensor,
};
use std::sync::OnceLock;

/// The `cpu_fwd` of a CUDA-only custom op with 1, 2 or 3 operands: an
/// error that names the op.
macro_rules! cuda_only {
    (1) => {
        fn cpu_fwd(
            &self,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            candle_core::bail!("{} runs on CUDA only", self.name())
        }
    };
    (2) => {
        fn cpu_fwd(
            &self,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            candle_core::bail!("{} runs on CUDA only", self.name())
        }
    };
    (3) => {
        fn cpu_fwd(
            &self,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
            candle_core::bail!("{} runs on CUDA only", self.name())
        }
    };
}
pub(crate) use cuda_only;

pub(crate) mod adamw;
pub(crate) mod conv_bn;

const SRC: &str = include_str!("kernels.cu");
pub(crate) const MODULE: &str = "selfsup_fused";
/// Values of one channel each statistics block reduces.
const PER_BLOCK: usize = 8192;
const THREADS: u32 = 256;

pub(crate) fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    PTX.get_or_init(|| {
        cudarc::nvrtc::compile_ptx(SRC)
            .map(|p| p.to_src())
            .map_err(|e| format!("{e:?}"))
    })
    .as_deref()
    .map_err(|e| candle_core::Error::Msg(format!("fused CUDA kernels failed to compile: {e}")))
}

/// The kernel `name` of `kernels.cu` on `dev` (Candle's function type has
/// no public name, hence a macro).
macro_rules! func {
    ($dev:expr, $name:expr) => {
        $dev.get_or_load_custom_func(
            $name,
            $crate::cuda_fused::MODULE,
            $crate::cuda_fused::ptx()?,
        )
    };
}
pub(crate) use func;

pub(crate) fn view<'a>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, f32>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.as_cuda_slice::<f32>()?.slice(a..b)),
        None => candle_core::bail!("fused CUDA op: {what} must be contiguous"),
    }
}

/// The contiguous f32 data of a tensor held by an op (statistics, scale).
fn with_view<R>(t: &Tensor, what: &str, f: impl FnOnce(CudaView<f32>) -> Result<R>) -> Result<R> {
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cuda(s) => f(view(s, l, what)?),
        _ => candle_core::bail!("fused CUDA op: {what} must be on the GPU"),
    }
}

/// A grid-stride launch over `n` elements.
pub(crate) fn elementwise(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn i32_of(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        candle_core::Error::Msg(format!("fused CUDA op: {what} {v} exceeds 32-bit sizes"))
    })
}

/// (N, C, S) of an activation, with the per-channel reduction's split
/// count and values per block.
pub(crate) struct Split {
    n: i32,
    c: i32,
    s: i32,
    splits: u32,
    per_block: i64,
}

pub(crate) fn split(shape: &Shape) -> Result<Split> {
    let (n, c, s) = crate::batchnorm::nc_s(shape)?;
    let total = n * s;
    if total == 0 {
        candle_core::bail!("fused batch norm: empty batch of {n} x {c} x {s}");
    }
    let splits = total.div_ceil(PER_BLOCK).clamp(1, 1024);
    Ok(Split {
        n: i32_of(n, "batch")?,
        c: i32_of(c, "channels")?,
        s: i32_of(s, "spatial size")?,
        splits: splits as u32,
        per_block: total.div_ceil(splits) as i64,
    })
}

fn reduce_cfg(sp: &Split) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (sp.c as u32, sp.splits, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn per_channel_cfg(c: i32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((c as u32).div_ceil(128), 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// x (N, C, ...) -> (3, C): mean, biased variance, 1 / sqrt(var + eps).
pub(crate) struct Stats {
    pub(crate) eps: f32,
}

impl CustomOp1 for Stats {
    fn name(&self) -> &'static str {
        "selfsup-cuda-bn-stats"
    }

    cuda_only!(1);

    fn cuda_fwd(&self, sx: &CudaStorage, lx: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = &sx.device;
        let x = view(sx, lx, "the input")?;
        let sp = split(lx.shape())?;
        let c = sp.c as usize;
        // SAFETY: every block writes its two partial sums.
        let partial: CudaSlice<f64> = unsafe { dev.alloc(2 * c * sp.splits as usize)? };
        let f = func!(dev, "bn_stats_partial")?;
        let mut b = f.builder();
        b.arg(&x)
            .arg(&partial)
            .arg(&sp.n)
            .arg(&sp.c)
            .arg(&sp.s)
            .arg(&sp.per_block);
        // SAFETY: the sizes passed match the buffers.
        unsafe { b.launch(reduce_cfg(&sp)) }.w()?;
        // SAFETY: one thread per channel writes its three statistics.
        let stats: CudaSlice<f32> = unsafe { dev.alloc(3 * c)? };
        let count = (sp.n as i64) * (sp.s as i64);
        let splits = sp.splits as i32;
        let f = func!(dev, "bn_stats_finish")?;
        let mut b = f.builder();
        b.arg(&partial)
            .arg(&stats)
            .arg(&sp.c)
            .arg(&splits)
            .arg(&count)
            .arg(&self.eps);
        // SAFETY: as above.
        unsafe { b.launch(per_channel_cfg(sp.c)) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(stats, dev.clone()),
            (3, c).into(),
        ))
    }
}

/// (x, gamma, beta) -> act(x̂ γ + β), normalised with `stats` (from
/// [`Stats`]); its backward pass is [`GradSums`] and [`InputGrad`].
struct Apply {
    stats: Tensor,
    act: Activation,
}

/// Launches `bn_apply`: `y = act(x·a + b [+ residual])` per channel from
/// the scale, shift and statistics, over an activation of sizes `sp`.
pub(crate) fn apply(
    dev: &CudaDevice,
    (x, gamma, beta, stats): (
        &CudaView<f32>,
        &CudaView<f32>,
        &CudaView<f32>,
        &CudaView<f32>,
    ),
    residual: Option<&CudaView<f32>>,
    y: &CudaSlice<f32>,
    sp: &Split,
    act: Activation,
) -> Result<()> {
    let n = x.len();
    if residual.is_some_and(|r| r.len() != n) {
        candle_core::bail!("fused CUDA batch norm: the residual is not the output's size")
    }
    let (n64, act) = (n as i64, act_code(act));
    // A null device pointer: no residual.
    let null = 0u64;
    let f = func!(dev, "bn_apply")?;
    let mut b = f.builder();
    b.arg(x).arg(gamma).arg(beta).arg(stats);
    match residual {
        Some(r) => b.arg(r),
        None => b.arg(&null),
    };
    b.arg(y);
    b.arg(&sp.c).arg(&sp.s).arg(&n64).arg(&act);
    // SAFETY: the sizes passed match the buffers.
    unsafe { b.launch(elementwise(n)) }.w()?;
    Ok(())
}

fn act_code(a: Activation) -> i32 {
    match a {
        Activation::Identity => 0,
        Activation::Relu => 1,
        Activation::Relu6 => 2,
    }
}

impl CustomOp3 for Apply {
    fn name(&self) -> &'static str {
        "selfsup-cuda-bn"
    }

    cuda_only!(3);

    fn cuda_fwd(
        &self,
        sx: &CudaStorage,
        lx: &Layout,
        sg: &CudaStorage,
        lg: &Layout,
        sb: &CudaStorage,
        lb: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = &sx.device;
        let (x, gamma, beta) = (
            view(sx, lx, "the input")?,
            view(sg, lg, "the scale")?,
            view(sb, lb, "the shift")?,
        );
        let sp = split(lx.shape())?;
        let n = lx.shape().elem_count();
        // SAFETY: every element is written.
        let y: CudaSlice<f32> = unsafe { dev.alloc(n)? };
        with_view(&self.stats, "the statistics", |stats| {
            apply(dev, (&x, &gamma, &beta, &stats), None, &y, &sp, self.act)
        })?;
        Ok((
            CudaStorage::wrap_cuda_slice(y, dev.clone()),
            lx.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let x = x.contiguous()?;
        let back = (&self.stats, gamma.contiguous()?, self.act);
        let (sums, dx) = bn_backward(&x, y, g, back, x.track_op())?;
        Ok((dx, Some(sums.get(0)?), Some(sums.get(1)?)))
    }
}

/// The BatchNorm's backward pass from its input `x`, output `y` and the
/// output's gradient `g`, with the forward pass's statistics, scale and
/// activation: the (2, C) sums [dγ; dβ] and, when `want_dx`, dL/dx.
pub(crate) fn bn_backward(
    x: &Tensor,
    y: &Tensor,
    g: &Tensor,
    (stats, gamma, act): (&Tensor, Tensor, Activation),
    want_dx: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let g = g.contiguous()?;
    let sums = x.apply_op3_no_bwd(
        y,
        &g,
        &GradSums {
            stats: stats.clone(),
            act,
        },
    )?;
    let dx = want_dx
        .then(|| {
            let op = InputGrad {
                stats: stats.clone(),
                gamma,
                sums: sums.clone(),
                act,
            };
            x.apply_op3_no_bwd(y, &g, &op)
        })
        .transpose()?;
    Ok((sums, dx))
}

/// (x, y, g) -> (2, C): dγ = Σ g'·x̂ and dβ = Σ g'.
struct GradSums {
    stats: Tensor,
    act: Activation,
}

impl CustomOp3 for GradSums {
    fn name(&self) -> &'static str {
        "selfsup-cuda-bn-grad-sums"
    }

    cuda_only!(3);

    fn cuda_fwd(
        &self,
        sx: &CudaStorage,
        lx: &Layout,
        sy: &CudaStorage,
        ly: &Layout,
        sg: &CudaStorage,
        lg: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = &sx.device;
        let (x, y, g) = (
            view(sx, lx, "the input")?,
            view(sy, ly, "the output")?,
            view(sg, lg, "the gradient")?,
        );
        let sp = split(lx.shape())?;
        let c = sp.c as usize;
        let act = act_code(self.act);
        let splits = sp.splits as i32;
        // SAFETY: every block writes its partial sums; one thread per
        // channel writes the two totals.
        let partial: CudaSlice<f64> = unsafe { dev.alloc(2 * c * sp.splits as usize)? };
        let grads: CudaSlice<f32> = unsafe { dev.alloc(2 * c)? };
        with_view(&self.stats, "the statistics", |stats| {
            let f = func!(dev, "bn_grad_partial")?;
            let mut b = f.builder();
            b.arg(&x).arg(&y).arg(&g).arg(&stats).arg(&partial);
            b.arg(&sp.n)
                .arg(&sp.c)
                .arg(&sp.s)
                .arg(&sp.per_block)
                .arg(&act);
            // SAFETY: the sizes passed match the buffers.
            unsafe { b.launch(reduce_cfg(&sp)) }.w()?;
            let f = func!(dev, "bn_grad_finish")?;
            let mut b = f.builder();
            b.arg(&partial)
                .arg(&stats)
                .arg(&grads)
                .arg(&sp.c)
                .arg(&splits);
            // SAFETY: as above.
            unsafe { b.launch(per_channel_cfg(sp.c)) }.w()?;
            Ok(())
        })?;
        Ok((
            CudaStorage::wrap_cuda_slice(grads, dev.clone()),
            (2, c).into(),
        ))
    }
}

/// (x, y, g) -> dL/dx from the statistics, the scale and [`GradSums`].
struct InputGrad {
    stats: Tensor,
    gamma: Tensor,
    sums: Tensor,
    act: Activation,
}

impl CustomOp3 for InputGrad {
    fn name(&self) -> &'static str {
        "selfsup-cuda-bn-input-grad"
    }

    cuda_only!(3);

    fn cuda_fwd(
        &self,
        sx: &CudaStorage,
        lx: &Layout,
        sy: &CudaStorage,
        ly: &Layout,
        sg: &CudaStorage,
        lg: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = &sx.device;
        let (x, y, g) = (
            view(sx, lx, "the input")?,
            view(sy, ly, "the output")?,
            view(sg, lg, "the gradient")?,
        );
        let sp = split(lx.shape())?;
        let n = lx.shape().elem_count();
        let count = (sp.n as f32) * (sp.s as f32);
        let (n64, act) = (n as i64, act_code(self.act));
        // SAFETY: every element is written.
        let dx: CudaSlice<f32> = unsafe { dev.alloc(n)? };
        with_view(&self.stats, "the statistics", |stats| {
            with_view(&self.gamma, "the scale", |gamma| {
                with_view(&self.sums, "the gradient sums", |sums| {
                    let f = func!(dev, "bn_input_grad")?;
                    let mut b = f.builder();
                    b.arg(&x)
                        .arg(&y)
                        .arg(&g)
                        .arg(&gamma)
                        .arg(&stats)
                        .arg(&sums)
                        .arg(&dx);
                    b.arg(&sp.c).arg(&sp.s).arg(&n64).arg(&count).arg(&act);
                    // SAFETY: the sizes passed match the buffers.
                    unsafe { b.launch(elementwise(n)) }.w()?;
                    Ok(())
                })
            })
        })?;
        Ok((
            CudaStorage::wrap_cuda_slice(dx, dev.clone()),
            lx.shape().clone(),
        ))
    }
}

/// Training-mode BatchNorm + activation on CUDA: the output and the batch
/// statistics as a (3, C) device tensor (mean, biased variance, inverse
/// standard deviation).
pub(crate) fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    act: Activation,
) -> Result<(Tensor, Tensor)> {
    let x = x.contiguous()?;
    let stats = x.detach().apply_op1_no_bwd(&Stats { eps: eps as f32 })?;
    let y = x.apply_op3(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        Apply {
            stats: stats.clone(),
            act,
        },
    )?;
    Ok((y, stats))
}

/// An element-wise kernel over two contiguous operands of one length.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pair {
    /// (a, b) -> relu(a + b).
    AddRelu,
    /// (g, y) -> g through the activation, read off its output y.
    ActGrad(Activation),
}

/// Runs the kernel `pair` over the operands `a` and `b`.
pub(crate) fn pair(
    pair: Pair,
    (sa, la): (&CudaStorage, &Layout),
    (sb, lb): (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let dev = &sa.device;
    let (a, b) = (
        view(sa, la, "the first operand")?,
        view(sb, lb, "the second operand")?,
    );
    let n = a.len();
    if b.len() != n {
        candle_core::bail!("fused CUDA op: operands of {n} and {} elements", b.len())
    }
    // SAFETY: every element is written.
    let out: CudaSlice<f32> = unsafe { dev.alloc(n)? };
    let n64 = n as i64;
    let (name, act) = match pair {
        Pair::AddRelu => ("add_relu", None),
        Pair::ActGrad(act) => ("act_grad", Some(act_code(act))),
    };
    let f = func!(dev, name)?;
    let mut bld = f.builder();
    bld.arg(&a).arg(&b).arg(&out).arg(&n64);
    if let Some(act) = &act {
        bld.arg(act);
    }
    // SAFETY: the sizes passed match the buffers.
    unsafe { bld.launch(elementwise(n)) }.w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

/// The depthwise convolution's weight gradient for 3x3 and 5x5 kernels:
/// every tap of a channel from one read of each output gradient, the
/// reduction split over blocks and added in a fixed order. `None` for
/// other kernel sizes (the caller's general kernel runs those).
pub(crate) fn depthwise_weight_grad(
    (sx, lx): (&CudaStorage, &Layout),
    (sg, lg): (&CudaStorage, &Layout),
    (b, c): (usize, usize),
    g: crate::depthwise::Geometry,
) -> Result<Option<CudaStorage>> {
    let name = match g.k {
        3 => "dw_wgrad_partial3",
        5 => "dw_wgrad_partial5",
        _ => return Ok(None),
    };
    let dev = &sx.device;
    let (x, gy) = (view(sx, lx, "the input")?, view(sg, lg, "the gradient")?);
    let total = b * g.ho * g.wo;
    let splits = total.div_ceil(4096).clamp(1, 1024);
    let per_block = total.div_ceil(splits) as i64;
    let kk = g.k * g.k;
    let mut dims = Vec::with_capacity(9);
    for (v, what) in [
        (b, "batch"),
        (c, "channels"),
        (g.h, "height"),
        (g.w, "width"),
        (g.ho, "output height"),
        (g.wo, "output width"),
        (g.s, "stride"),
        (g.p, "padding"),
    ] {
        dims.push(i32_of(v, what)?);
    }
    // SAFETY: every block writes its K*K partial sums; one thread per
    // (channel, tap) writes the total.
    let partial: CudaSlice<f32> = unsafe { dev.alloc(c * splits * kk)? };
    let gw: CudaSlice<f32> = unsafe { dev.alloc(c * kk)? };
    let f = func!(dev, name)?;
    let mut bld = f.builder();
    bld.arg(&x).arg(&gy).arg(&partial);
    for d in &dims {
        bld.arg(d);
    }
    bld.arg(&per_block);
    let cfg = LaunchConfig {
        grid_dim: (i32_of(c, "channels")? as u32, splits as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the sizes passed match the buffers.
    unsafe { bld.launch(cfg) }.w()?;
    let (c32, kk32, splits32) = (dims[1], kk as i32, splits as i32);
    let f = func!(dev, "dw_wgrad_finish")?;
    let mut bld = f.builder();
    bld.arg(&partial)
        .arg(&gw)
        .arg(&c32)
        .arg(&kk32)
        .arg(&splits32);
    // SAFETY: as above.
    unsafe { bld.launch(elementwise(c * kk)) }.w()?;
    Ok(Some(CudaStorage::wrap_cuda_slice(gw, dev.clone())))
}

/// (g, y) -> g through the activation `act`, read off its output `y`.
pub(crate) struct ActGrad(pub(crate) Activation);

impl candle_core::CustomOp2 for ActGrad {
    fn name(&self) -> &'static str {
        "selfsup-cuda-act-grad"
    }

    cuda_only!(2);

    fn cuda_fwd(
        &self,
        sg: &CudaStorage,
        lg: &Layout,
        sy: &CudaStorage,
        ly: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let out = pair(Pair::ActGrad(self.0), (sg, lg), (sy, ly))?;
        Ok((out, lg.shape().clone()))
    }
}

/// In place: running = running · keep + value · take (one launch).
pub(crate) struct Ema {
    pub(crate) keep: f32,
    pub(crate) take: f32,
}

impl candle_core::InplaceOp2 for Ema {
    fn name(&self) -> &'static str {
        "selfsup-cuda-ema"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<()> {
        candle_core::bail!("{} runs on CUDA only", self.name())
    }

    fn cuda_fwd(
        &self,
        sr: &mut CudaStorage,
        lr: &Layout,
        sv: &CudaStorage,
        lv: &Layout,
    ) -> Result<()> {
        let dev = sr.device.clone();
        let v = view(sv, lv, "the new value")?;
        let Some((a, b)) = lr.contiguous_offsets() else {
            candle_core::bail!("moving average: the running value must be contiguous")
        };
        if b - a != v.len() {
            candle_core::bail!("moving average: {} running values, {} new", b - a, v.len());
        }
        let n = i32_of(v.len(), "length")?;
        let mut r = sr.as_cuda_slice_mut::<f32>()?.slice_mut(a..b);
        let f = func!(dev, "ema_update")?;
        let mut bld = f.builder();
        bld.arg(&mut r)
            .arg(&v)
            .arg(&n)
            .arg(&self.keep)
            .arg(&self.take);
        // SAFETY: both buffers are `n` long.
        unsafe { bld.launch(elementwise(v.len())) }.w()?;
        Ok(())
    }
}
