//! Training-mode batch normalisation fused with the activation that follows
//! it, and a fused residual add + ReLU: f32 on the CPU, multithreaded.
//!
//! Candle's `candle_nn::BatchNorm` in training mode is a chain of about ten
//! tensor ops (transpose, copy, mean, subtract, square, mean, divide,
//! multiply, add, transpose back), each a full pass over the activation, most
//! of them single-threaded, and its backward pass walks the same chain again
//! with two or three passes per op; the ReLU after it adds four more. Here
//! the forward pass reads the input twice (statistics, then output) and the
//! backward pass reads input, output and gradient twice (per-channel sums,
//! then the input gradient), with the activation's mask taken from the
//! output.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// The activation applied after normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// None: `y = x̂·γ + β`.
    Identity,
    /// `max(0, ·)`.
    Relu,
    /// `min(max(0, ·), 6)` (MobileNetV2).
    Relu6,
}

/// The activation as a const parameter of the inner loops (`ID`, `RELU`,
/// `RELU6`), so that each loop is compiled once per activation without a
/// branch on it, and vectorises.
pub(crate) const ID: u8 = 0;
pub(crate) const RELU: u8 = 1;
pub(crate) const RELU6: u8 = 2;

/// Runs `$body` with `$a` bound to `act`'s const code.
macro_rules! with_act {
    ($act:expr, $a:ident => $body:expr) => {
        match $act {
            $crate::Activation::Identity => {
                const $a: u8 = $crate::batchnorm::ID;
                $body
            }
            $crate::Activation::Relu => {
                const $a: u8 = $crate::batchnorm::RELU;
                $body
            }
            $crate::Activation::Relu6 => {
                const $a: u8 = $crate::batchnorm::RELU6;
                $body
            }
        }
    };
}
pub(crate) use with_act;

/// The activation with code `A` applied to `v`.
#[inline(always)]
pub(crate) fn apply_c<const A: u8>(v: f32) -> f32 {
    match A {
        RELU => v.max(0.0),
        RELU6 => v.clamp(0.0, 6.0),
        _ => v,
    }
}

/// The gradient `g` through the activation with code `A`, its derivative
/// read off the output `y` (no short-circuit, so that it compiles to a
/// select).
#[inline(always)]
pub(crate) fn masked_c<const A: u8>(g: f32, y: f32) -> f32 {
    let pass = match A {
        RELU => y > 0.0,
        RELU6 => (y > 0.0) & (y < 6.0),
        _ => true,
    };
    if pass {
        g
    } else {
        0.0
    }
}

/// Per-channel statistics of the batch a [`batch_norm_train`] call
/// normalised with, for the caller's running averages.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchStats {
    /// Mean over batch and spatial positions.
    pub mean: Vec<f32>,
    /// Biased variance (divided by the number of values, as used to
    /// normalise). Running averages conventionally store the unbiased one.
    pub var: Vec<f32>,
    /// Values per channel (batch x spatial positions).
    pub count: usize,
}

/// Whether [`batch_norm_train`] and [`add_relu`] can run on `x`: an f32
/// tensor on the CPU with at least two dimensions.
pub fn fused_supported(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && x.rank() >= 2
}

/// Training-mode batch normalisation of `x` (N, C, ...) with per-channel
/// scale `gamma` and shift `beta` (C), then `act`, normalising with the
/// batch's own mean and biased variance (`eps` added to the variance).
/// Differentiable in `x`, `gamma` and `beta`. Returns the output and the
/// batch statistics. CPU, f32 only ([`fused_supported`]).
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    act: Activation,
) -> Result<(Tensor, BatchStats)> {
    if !fused_supported(x) {
        candle_core::bail!(
            "fused batch norm runs on the CPU in f32 on (N, C, ...) tensors, got {:?} {:?} on {:?}",
            x.dtype(),
            x.dims(),
            x.device().location()
        );
    }
    let c = x.dim(1)?;
    check_scale_shift(
        "fused batch norm",
        c,
        "channels in the input",
        (gamma, beta),
    )?;
    let stash = Arc::new(Mutex::new(None));
    let op = BnForward {
        eps,
        act,
        stash: stash.clone(),
    };
    let y = x
        .contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    let stats = lock(&stash)?.as_ref().map(Saved::stats);
    let Some(stats) = stats else {
        candle_core::bail!("fused batch norm: the forward pass left no statistics")
    };
    Ok((y, stats))
}

/// An error unless `gamma` and `beta` are vectors of `c` values: "`op`: `c`
/// `which`, scale [..] and shift [..]" (`which`: what the `c` counts).
pub(crate) fn check_scale_shift(
    op: &str,
    c: usize,
    which: &str,
    (gamma, beta): (&Tensor, &Tensor),
) -> Result<()> {
    if gamma.dims() != [c] || beta.dims() != [c] {
        candle_core::bail!(
            "{op}: {c} {which}, scale {:?} and shift {:?}",
            gamma.dims(),
            beta.dims()
        );
    }
    Ok(())
}

/// `relu(a + b)` in one pass, with its gradient (the same masked gradient
/// for both operands) in one pass. `a` and `b` have the same shape; f32 on
/// the CPU ([`fused_supported`]) or on CUDA
/// ([`crate::cuda_fused_supported`]).
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let on = |t: &Tensor| fused_supported(t) || crate::cuda_fused_supported(t);
    let same_device = a.device().same_device(b.device());
    if !on(a) || a.dims() != b.dims() || a.dtype() != b.dtype() || !same_device {
        candle_core::bail!(
            "fused add + relu needs two f32 tensors of one shape on the CPU or one GPU, got {:?} {:?} and {:?} {:?}",
            a.dtype(),
            a.dims(),
            b.dtype(),
            b.dims()
        );
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
}

/// What the forward pass leaves for the backward pass.
#[derive(Debug, Clone)]
pub(crate) struct Saved {
    pub(crate) mean: Vec<f32>,
    pub(crate) var: Vec<f32>,
    pub(crate) invstd: Vec<f32>,
    pub(crate) count: usize,
}

impl Saved {
    /// The statistics a caller gets.
    pub(crate) fn stats(&self) -> BatchStats {
        BatchStats {
            mean: self.mean.clone(),
            var: self.var.clone(),
            count: self.count,
        }
    }
}

/// The statistics the forward pass hands to the caller and the backward
/// pass, locked.
fn lock(stash: &Mutex<Option<Saved>>) -> Result<std::sync::MutexGuard<'_, Option<Saved>>> {
    crate::lock_stash(stash, "fused batch norm")
}

struct BnForward {
    eps: f64,
    act: Activation,
    stash: Arc<Mutex<Option<Saved>>>,
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    crate::cpu_f32(s, l, "fused batch norm", what)
}

/// (batch, channels, values per channel and image).
pub(crate) fn nc_s(shape: &Shape) -> Result<(usize, usize, usize)> {
    let d = shape.dims();
    if d.len() < 2 {
        candle_core::bail!("fused batch norm: expected (N, C, ...), got {d:?}");
    }
    Ok((d[0], d[1], d[2..].iter().product()))
}

/// Mean and centred sum of squares of one slab, in f32 (a slab is one image's
/// plane: at most a few thousand values).
#[inline(always)]
fn slab_moments(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f32;
    let mean = sum8(v, |x| x) / n;
    let m2 = sum8(v, |x| (x - mean) * (x - mean));
    (f64::from(mean), f64::from(m2))
}

/// `Σ f(v[i])` with eight independent accumulators, element `i` going to
/// lane `i mod 8`: one SIMD register's worth of partial sums (and more
/// accurate than one running sum).
#[inline(always)]
fn sum8(v: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..8 {
            acc[l] += f(c[l]);
        }
    }
    for (l, &x) in rest.iter().enumerate() {
        acc[l] += f(x);
    }
    acc.iter().sum()
}

/// `(Σ g', Σ g'·(x - mu))` over one slab, `g'` the gradient `gs` masked by
/// the activation `A` read off the output `ys`; lanes as in [`sum8`].
#[inline(always)]
fn masked_sums<const A: u8>(xs: &[f32], ys: &[f32], gs: &[f32], mu: f32) -> (f32, f32) {
    let (mut a, mut b) = ([0f32; 8], [0f32; 8]);
    let n = xs.len().min(ys.len()).min(gs.len());
    let full = n / 8 * 8;
    for i in (0..full).step_by(8) {
        let (x, y, g) = (&xs[i..i + 8], &ys[i..i + 8], &gs[i..i + 8]);
        for l in 0..8 {
            let gv = masked_c::<A>(g[l], y[l]);
            a[l] += gv;
            b[l] += gv * (x[l] - mu);
        }
    }
    for i in full..n {
        let gv = masked_c::<A>(gs[i], ys[i]);
        a[i - full] += gv;
        b[i - full] += gv * (xs[i] - mu);
    }
    (a.iter().sum(), b.iter().sum())
}

/// Per-channel mean and biased variance, combining slabs with Chan et al.'s
/// pairwise update in f64; one pass over `x`, parallel over channels.
fn moments(x: &[f32], n: usize, c: usize, s: usize) -> (Vec<f32>, Vec<f32>) {
    let per: Vec<(f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ci| {
            let (mut count, mut mean, mut m2) = (0f64, 0f64, 0f64);
            for b in 0..n {
                let slab = &x[(b * c + ci) * s..(b * c + ci + 1) * s];
                let (sm, sm2) = crate::simd::dispatch(
                    #[inline(always)]
                    || slab_moments(slab),
                );
                let k = s as f64;
                let total = count + k;
                let delta = sm - mean;
                mean += delta * k / total;
                m2 += sm2 + delta * delta * count * k / total;
                count = total;
            }
            (mean as f32, (m2 / count.max(1.0)) as f32)
        })
        .collect();
    per.into_iter().unzip()
}

/// The forward pass on slices: `x` is (N, C, S) flattened, `ncs` its
/// sizes. Returns `act(x̂·γ + β)` and the batch statistics.
pub(crate) fn forward_slices(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    (n, c, s): (usize, usize, usize),
    eps: f64,
    act: Activation,
) -> Result<(Vec<f32>, Saved)> {
    if n * s == 0 {
        candle_core::bail!("fused batch norm: empty batch of {n} x {c} x {s}");
    }
    let (mean, var) = moments(x, n, c, s);
    let invstd: Vec<f32> = var
        .iter()
        .map(|&v| (1.0 / (f64::from(v) + eps).sqrt()) as f32)
        .collect();
    let scale: Vec<f32> = (0..c).map(|i| gamma[i] * invstd[i]).collect();
    let shift: Vec<f32> = (0..c).map(|i| beta[i] - mean[i] * scale[i]).collect();
    // SAFETY: slab `i` of `y` is written from slab `i` of `x`, which has
    // the same length (`x.len()` is a multiple of `s`).
    let y = unsafe {
        crate::par_uninit(x.len(), s, |slab, out| {
            let inp = &x[slab * s..slab * s + out.len()];
            let (a, b) = (scale[slab % c], shift[slab % c]);
            crate::simd::dispatch(
                #[inline(always)]
                || {
                    with_act!(act, A => {
                        for (o, &v) in out.iter_mut().zip(inp) {
                            o.write(apply_c::<A>(v * a + b));
                        }
                    })
                },
            )
        })
    };
    let saved = Saved {
        mean,
        var,
        invstd,
        count: n * s,
    };
    Ok((y, saved))
}

/// Σ g' and Σ g'·x̂ per channel over (N, C, S) slices, g' the gradient `g`
/// through the activation (read off the output `y`).
pub(crate) fn grad_sums(
    x: &[f32],
    y: &[f32],
    g: &[f32],
    (n, c, s): (usize, usize, usize),
    saved: &Saved,
    act: Activation,
) -> (Vec<f32>, Vec<f32>) {
    let per: Vec<(f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ci| {
            let (mu, inv) = (saved.mean[ci], saved.invstd[ci]);
            let (mut sg_, mut sgx) = (0f64, 0f64);
            for b in 0..n {
                let r = (b * c + ci) * s..(b * c + ci + 1) * s;
                let (xs, ys, gs) = (&x[r.clone()], &y[r.clone()], &g[r]);
                let (a, b) = crate::simd::dispatch(
                    #[inline(always)]
                    || with_act!(act, A => masked_sums::<A>(xs, ys, gs, mu)),
                );
                sg_ += f64::from(a);
                sgx += f64::from(b);
            }
            (sg_ as f32, (sgx * f64::from(inv)) as f32)
        })
        .collect();
    per.into_iter().unzip()
}

/// Per-channel `(a, b, d)` with dL/dx = a·g' + b·x + d, from the scale and
/// the sums of [`grad_sums`]: dx = k (g' - Σg'/M - x̂ Σg'x̂/M), k = γ/σ,
/// x̂ = (x - μ)/σ.
pub(crate) fn input_grad_coef(
    gamma: &[f32],
    saved: &Saved,
    sum_g: &[f32],
    sum_gx: &[f32],
) -> Vec<[f32; 3]> {
    let m = saved.count as f32;
    (0..gamma.len())
        .map(|i| {
            let k = gamma[i] * saved.invstd[i];
            let b = -k * saved.invstd[i] * sum_gx[i] / m;
            let d = -k * sum_g[i] / m - b * saved.mean[i];
            [k, b, d]
        })
        .collect()
}

/// Writes dL/dx of one slab (`x`, `y`, `g` of one channel, as long as
/// `out`) into `out` through `put`.
#[inline(always)]
pub(crate) fn input_grad_slab<T>(
    [a, b, d]: [f32; 3],
    act: Activation,
    (xs, ys, gs): (&[f32], &[f32], &[f32]),
    out: &mut [T],
    put: impl Fn(&mut T, f32),
) {
    with_act!(act, A => {
        for (((o, &xv), &yv), &gv) in out.iter_mut().zip(xs).zip(ys).zip(gs) {
            put(o, a * masked_c::<A>(gv, yv) + b * xv + d);
        }
    })
}

impl CustomOp3 for BnForward {
    fn name(&self) -> &'static str {
        "selfsup-batch-norm"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(sx, lx, "the input")?;
        let gamma = contiguous(sg, lg, "the scale")?;
        let beta = contiguous(sb, lb, "the shift")?;
        let ncs = nc_s(lx.shape())?;
        let (y, saved) = forward_slices(x, gamma, beta, ncs, self.eps, self.act)?;
        *lock(&self.stash)? = Some(saved);
        Ok((CpuStorage::F32(y), lx.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = lock(&self.stash)?.clone();
        let Some(saved) = saved else {
            candle_core::bail!("fused batch norm: backward pass before the forward pass")
        };
        let g = g.contiguous()?;
        let wants_dx = x.track_op();
        let x = x.detach();
        let sums = x.apply_op3_no_bwd(
            y,
            &g,
            &BnSums {
                saved: saved.clone(),
                act: self.act,
            },
        )?;
        let dbeta = sums.get(0)?;
        let dgamma = sums.get(1)?;
        let dx = if wants_dx {
            let sv: Vec<f32> = sums.flatten_all()?.to_vec1()?;
            let gm: Vec<f32> = gamma.to_vec1()?;
            let c = gm.len();
            let coef = input_grad_coef(&gm, &saved, &sv[..c], &sv[c..]);
            Some(x.apply_op3_no_bwd(
                y,
                &g,
                &BnInputGrad {
                    coef,
                    act: self.act,
                },
            )?)
        } else {
            None
        };
        Ok((dx, Some(dgamma), Some(dbeta)))
    }
}

/// (x, y, g) -> (2, C): Σ g' and Σ g'·x̂ per channel, g' the gradient
/// through the activation.
struct BnSums {
    saved: Saved,
    act: Activation,
}

impl CustomOp3 for BnSums {
    fn name(&self) -> &'static str {
        "selfsup-batch-norm-sums"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sy: &CpuStorage,
        ly: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(sx, lx, "the input")?;
        let y = contiguous(sy, ly, "the output")?;
        let g = contiguous(sg, lg, "the gradient")?;
        let ncs = nc_s(lx.shape())?;
        let (a, b) = grad_sums(x, y, g, ncs, &self.saved, self.act);
        Ok((CpuStorage::F32([a, b].concat()), Shape::from((2, ncs.1))))
    }
}

/// (x, y, g) -> dL/dx = a·g' + b·x + d with per-channel (a, b, d).
struct BnInputGrad {
    coef: Vec<[f32; 3]>,
    act: Activation,
}

impl CustomOp3 for BnInputGrad {
    fn name(&self) -> &'static str {
        "selfsup-batch-norm-input-grad"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sy: &CpuStorage,
        ly: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(sx, lx, "the input")?;
        let y = contiguous(sy, ly, "the output")?;
        let g = contiguous(sg, lg, "the gradient")?;
        let (_, c, s) = nc_s(lx.shape())?;
        let act = self.act;
        // SAFETY: every slab of `dx` is zipped with same-length slabs of
        // x, y and g (all `x.len()` long, a multiple of `s`), and
        // `input_grad_slab` writes each of its positions.
        let dx = unsafe {
            crate::par_uninit(x.len(), s, |slab, out| {
                let r = slab * s..slab * s + out.len();
                let parts = (&x[r.clone()], &y[r.clone()], &g[r]);
                crate::simd::dispatch(
                    #[inline(always)]
                    || {
                        input_grad_slab(self.coef[slab % c], act, parts, out, |o, v| {
                            o.write(v);
                        })
                    },
                )
            })
        };
        Ok((CpuStorage::F32(dx), lx.shape().clone()))
    }
}

/// `f(a[i], b[i])` for every element, in parallel chunks (`a` and `b` have
/// the same length).
fn zip_map(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync + Send + Copy) -> Vec<f32> {
    const CHUNK: usize = 4096;
    // SAFETY: chunk `i` of the output is zipped with chunk `i` of `a` and
    // of `b`, which have its length (`a` and `b` are as long as the output).
    unsafe {
        crate::par_uninit(a.len(), CHUNK, |i, o| {
            let r = i * CHUNK..i * CHUNK + o.len();
            let (a, b) = (&a[r.clone()], &b[r]);
            crate::simd::dispatch(
                #[inline(always)]
                || {
                    for ((o, &u), &v) in o.iter_mut().zip(a).zip(b) {
                        o.write(f(u, v));
                    }
                },
            )
        })
    }
}

/// (a, b) -> relu(a + b).
struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "selfsup-add-relu"
    }

    fn cpu_fwd(
        &self,
        sa: &CpuStorage,
        la: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = contiguous(sa, la, "the first operand")?;
        let b = contiguous(sb, lb, "the second operand")?;
        let y = zip_map(a, b, |u, v| (u + v).max(0.0));
        Ok((CpuStorage::F32(y), la.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        sa: &candle_core::CudaStorage,
        la: &Layout,
        sb: &candle_core::CudaStorage,
        lb: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let y = crate::cuda_fused::pair(crate::cuda_fused::Pair::AddRelu, (sa, la), (sb, lb))?;
        Ok((y, la.shape().clone()))
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?.apply_op2_no_bwd(y, &ReluMask)?;
        Ok((Some(g.clone()), Some(g)))
    }
}

/// (g, y) -> g where y > 0, else 0.
struct ReluMask;

impl CustomOp2 for ReluMask {
    fn name(&self) -> &'static str {
        "selfsup-relu-mask"
    }

    fn cpu_fwd(
        &self,
        sg: &CpuStorage,
        lg: &Layout,
        sy: &CpuStorage,
        ly: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = contiguous(sg, lg, "the gradient")?;
        let y = contiguous(sy, ly, "the output")?;
        let out = zip_map(g, y, masked_c::<RELU>);
        Ok((CpuStorage::F32(out), lg.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        sg: &candle_core::CudaStorage,
        lg: &Layout,
        sy: &candle_core::CudaStorage,
        ly: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let mask = crate::cuda_fused::Pair::ActGrad(Activation::Relu);
        let out = crate::cuda_fused::pair(mask, (sg, lg), (sy, ly))?;
        Ok((out, lg.shape().clone()))
    }
}
