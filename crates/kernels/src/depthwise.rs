//! Depthwise 3x3 (any k x k) convolution, f32, NCHW: forward, input
//! gradient and weight gradient as direct kernels — multithreaded loops on
//! the CPU, CUDA kernels compiled once per process with NVRTC on the GPU.
//! One launch per layer instead of Candle's one convolution per channel.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Sizes of one depthwise convolution (batch and channels come from the
/// operands).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub h: usize,
    pub w: usize,
    pub ho: usize,
    pub wo: usize,
    pub k: usize,
    pub s: usize,
    pub p: usize,
}

impl Geometry {
    /// For tap (u, v): the valid output rows, the valid output columns and
    /// the input column of the first valid output column. `None` when the
    /// tap reads only padding.
    #[inline]
    fn tap(&self, u: usize, v: usize) -> Option<(std::ops::Range<usize>, usize, usize, usize)> {
        let (ilo, ihi) = crate::in_image(u, self.h, self.ho, self.s, self.p);
        let (jlo, jhi) = crate::in_image(v, self.w, self.wo, self.s, self.p);
        (ilo < ihi && jlo < jhi).then(|| (ilo..ihi, jlo, jhi, jlo * self.s + v - self.p))
    }

    /// Input row read by output row `i` at tap row `u` (valid rows only).
    #[inline]
    fn row(&self, i: usize, u: usize) -> usize {
        i * self.s + u - self.p
    }
}

fn cpu_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    crate::cpu_f32(s, l, "depthwise conv", "operands")
}

/// `Σ a[t]·b[t·stride]` over `a`, in eight independent partial sums so that
/// the compiler can keep them in one SIMD register.
#[inline(always)]
fn dot(a: &[f32], b: &[f32], stride: usize) -> f32 {
    let mut acc = [0f32; 8];
    if stride == 1 {
        let b = &b[..a.len()];
        let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
        let (ar, br) = (ac.remainder(), bc.remainder());
        for (x, y) in ac.zip(bc) {
            for l in 0..8 {
                acc[l] += x[l] * y[l];
            }
        }
        for (x, y) in ar.iter().zip(br) {
            acc[0] += x * y;
        }
    } else {
        for (t, x) in a.iter().enumerate() {
            acc[t % 8] += x * b[t * stride];
        }
    }
    acc.iter().sum()
}

/// Each output plane is built tap by tap: for tap (u, v), every valid
/// output row gets `w[u, v]` times a (strided) segment of one input row —
/// branch-free inner loops that vectorise for stride 1.
fn forward_cpu(x: &[f32], wt: &[f32], c: usize, g: Geometry) -> Vec<f32> {
    let (kk, plane_in, plane_out) = (g.k * g.k, g.h * g.w, g.ho * g.wo);
    let mut y = vec![0f32; x.len() / plane_in * plane_out];
    y.par_chunks_mut(plane_out)
        .enumerate()
        .for_each(|(plane, out)| {
            crate::simd::dispatch(
                #[inline(always)]
                || {
                    let xp = &x[plane * plane_in..(plane + 1) * plane_in];
                    let wk = &wt[(plane % c) * kk..(plane % c + 1) * kk];
                    for u in 0..g.k {
                        for v in 0..g.k {
                            let Some((rows, jlo, jhi, q0)) = g.tap(u, v) else {
                                continue;
                            };
                            let wv = wk[u * g.k + v];
                            for i in rows {
                                let o = &mut out[i * g.wo + jlo..i * g.wo + jhi];
                                let line = &xp[g.row(i, u) * g.w + q0..];
                                if g.s == 1 {
                                    for (d, xv) in o.iter_mut().zip(line) {
                                        *d += wv * xv;
                                    }
                                } else {
                                    for (t, d) in o.iter_mut().enumerate() {
                                        *d += wv * line[t * g.s];
                                    }
                                }
                            }
                        }
                    }
                },
            )
        });
    y
}

/// The adjoint of [`forward_cpu`], tap by tap: each valid output row's
/// gradient, times `w[u, v]`, is added onto the input row segment it read.
fn input_grad_cpu(gy: &[f32], wt: &[f32], c: usize, g: Geometry) -> Vec<f32> {
    let (kk, plane_in, plane_out) = (g.k * g.k, g.h * g.w, g.ho * g.wo);
    let mut gx = vec![0f32; gy.len() / plane_out * plane_in];
    gx.par_chunks_mut(plane_in)
        .enumerate()
        .for_each(|(plane, out)| {
            crate::simd::dispatch(
                #[inline(always)]
                || {
                    let gp = &gy[plane * plane_out..(plane + 1) * plane_out];
                    let wk = &wt[(plane % c) * kk..(plane % c + 1) * kk];
                    for u in 0..g.k {
                        for v in 0..g.k {
                            let Some((rows, jlo, jhi, q0)) = g.tap(u, v) else {
                                continue;
                            };
                            let wv = wk[u * g.k + v];
                            for i in rows {
                                let grow = &gp[i * g.wo + jlo..i * g.wo + jhi];
                                let line = &mut out[g.row(i, u) * g.w + q0..];
                                if g.s == 1 {
                                    for (d, gv) in line.iter_mut().zip(grow) {
                                        *d += wv * gv;
                                    }
                                } else {
                                    for (t, gv) in grow.iter().enumerate() {
                                        line[t * g.s] += wv * gv;
                                    }
                                }
                            }
                        }
                    }
                },
            )
        });
    gx
}

/// Per channel (in parallel): for each tap, the dot products of the output
/// gradient's valid row segments with the input segments they read, summed
/// in f32 within an image and in f64 across the batch.
fn weight_grad_cpu(x: &[f32], gy: &[f32], c: usize, g: Geometry) -> Vec<f32> {
    let (kk, plane_in, plane_out) = (g.k * g.k, g.h * g.w, g.ho * g.wo);
    let planes = x.len() / plane_in;
    let mut gw = vec![0f32; c * kk];
    gw.par_chunks_mut(kk).enumerate().for_each(|(ch, out)| {
        crate::simd::dispatch(
            #[inline(always)]
            || {
                let mut acc = vec![0f64; kk];
                for plane in (ch..planes).step_by(c) {
                    let xp = &x[plane * plane_in..(plane + 1) * plane_in];
                    let gp = &gy[plane * plane_out..(plane + 1) * plane_out];
                    for u in 0..g.k {
                        for v in 0..g.k {
                            let Some((rows, jlo, jhi, q0)) = g.tap(u, v) else {
                                continue;
                            };
                            let mut s = 0f32;
                            for i in rows {
                                let grow = &gp[i * g.wo + jlo..i * g.wo + jhi];
                                s += dot(grow, &xp[g.row(i, u) * g.w + q0..], g.s);
                            }
                            acc[u * g.k + v] += f64::from(s);
                        }
                    }
                }
                for (o, a) in out.iter_mut().zip(acc) {
                    *o = a as f32;
                }
            },
        )
    });
    gw
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::Geometry;
    use candle_core::cuda_backend::cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{cudarc, WrapErr};
    use candle_core::{CudaDevice, CudaStorage, Layout, Result};
    use std::sync::OnceLock;

    const SRC: &str = r#"
extern "C" __global__ void dw_fwd(const float* x, const float* w, float* y,
        int B, int C, int H, int W, int Ho, int Wo, int K, int S, int P) {
    long n = (long)B * C * Ho * Wo;
    for (long idx = blockIdx.x * (long)blockDim.x + threadIdx.x; idx < n;
         idx += (long)blockDim.x * gridDim.x) {
        int j = idx % Wo; long t = idx / Wo; int i = t % Ho; long plane = t / Ho;
        int c = plane % C;
        const float* xp = x + plane * (long)H * W;
        const float* wk = w + (long)c * K * K;
        float acc = 0.f;
        for (int u = 0; u < K; ++u) {
            int r = i * S + u - P;
            if (r < 0 || r >= H) continue;
            for (int v = 0; v < K; ++v) {
                int q = j * S + v - P;
                if (q < 0 || q >= W) continue;
                acc += xp[r * W + q] * wk[u * K + v];
            }
        }
        y[idx] = acc;
    }
}

extern "C" __global__ void dw_bwd_input(const float* g, const float* w, float* gx,
        int B, int C, int H, int W, int Ho, int Wo, int K, int S, int P) {
    long n = (long)B * C * H * W;
    for (long idx = blockIdx.x * (long)blockDim.x + threadIdx.x; idx < n;
         idx += (long)blockDim.x * gridDim.x) {
        int q = idx % W; long t = idx / W; int r = t % H; long plane = t / H;
        int c = plane % C;
        const float* gp = g + plane * (long)Ho * Wo;
        const float* wk = w + (long)c * K * K;
        float acc = 0.f;
        for (int u = 0; u < K; ++u) {
            int ii = r + P - u;
            if (ii < 0 || ii % S != 0) continue;
            int i = ii / S;
            if (i >= Ho) continue;
            for (int v = 0; v < K; ++v) {
                int jj = q + P - v;
                if (jj < 0 || jj % S != 0) continue;
                int j = jj / S;
                if (j >= Wo) continue;
                acc += gp[i * Wo + j] * wk[u * K + v];
            }
        }
        gx[idx] = acc;
    }
}

// One block per (channel, tap): reduce over batch and output positions.
extern "C" __global__ void dw_bwd_weight(const float* x, const float* g, float* gw,
        int B, int C, int H, int W, int Ho, int Wo, int K, int S, int P) {
    __shared__ float sh[256];
    int cuv = blockIdx.x;
    int c = cuv / (K * K), u = (cuv % (K * K)) / K, v = cuv % K;
    long n = (long)B * Ho * Wo;
    float acc = 0.f;
    for (long e = threadIdx.x; e < n; e += blockDim.x) {
        int j = e % Wo; long t = e / Wo; int i = t % Ho; long b = t / Ho;
        int r = i * S + u - P, q = j * S + v - P;
        if (r < 0 || r >= H || q < 0 || q >= W) continue;
        long plane = b * C + c;
        acc += g[(plane * Ho + i) * Wo + j] * x[(plane * H + r) * W + q];
    }
    sh[threadIdx.x] = acc;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) gw[cuv] = sh[0];
}
"#;

    fn ptx() -> Result<&'static str> {
        static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
        PTX.get_or_init(|| {
            cudarc::nvrtc::compile_ptx(SRC)
                .map(|p| p.to_src())
                .map_err(|e| format!("{e:?}"))
        })
        .as_deref()
        .map_err(|e| candle_core::Error::Msg(format!("depthwise kernels failed to compile: {e}")))
    }

    /// Which of the three kernels to launch.
    pub(crate) enum Kind {
        Forward,
        InputGrad,
        WeightGrad,
    }

    fn view<'a>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, f32>> {
        match l.contiguous_offsets() {
            Some((o1, o2)) => Ok(s.as_cuda_slice::<f32>()?.slice(o1..o2)),
            None => candle_core::bail!("depthwise conv: operands must be contiguous"),
        }
    }

    /// Runs one depthwise kernel on two contiguous CUDA operands.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn launch(
        kind: Kind,
        a: &CudaStorage,
        la: &Layout,
        b: &CudaStorage,
        lb: &Layout,
        batch: usize,
        c: usize,
        g: Geometry,
    ) -> Result<CudaStorage> {
        let dev: &CudaDevice = &a.device;
        let (av, bv) = (view(a, la)?, view(b, lb)?);
        // The kernels index with 32-bit ints: every size and element count
        // must fit, checked here rather than wrapped.
        let fits = |d: usize| {
            i32::try_from(d).map_err(|_| {
                candle_core::Error::Msg(format!(
                    "depthwise conv: {batch}x{c}x{}x{} needs more than the CUDA kernel's 32-bit indices",
                    g.h, g.w
                ))
            })
        };
        let count = |dims: &[usize]| {
            dims.iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .map_or_else(|| fits(usize::MAX), fits)
        };
        let (name, n) = match kind {
            Kind::Forward => ("dw_fwd", count(&[batch, c, g.ho, g.wo])?),
            Kind::InputGrad => ("dw_bwd_input", count(&[batch, c, g.h, g.w])?),
            Kind::WeightGrad => ("dw_bwd_weight", count(&[c, g.k, g.k])?),
        };
        // Non-negative and at most i32::MAX, so these conversions are exact.
        let (out_len, n32) = (n as usize, n as u32);
        let cfg = match kind {
            Kind::WeightGrad => LaunchConfig {
                grid_dim: (n32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            },
            _ => LaunchConfig::for_num_elems(n32),
        };
        let func = dev.get_or_load_custom_func(name, "selfsup_depthwise", ptx()?)?;
        // SAFETY: every element is written by the kernel.
        let out = unsafe { dev.alloc::<f32>(out_len)? };
        let mut dims = Vec::with_capacity(9);
        for d in [batch, c, g.h, g.w, g.ho, g.wo, g.k, g.s, g.p] {
            dims.push(fits(d)?);
        }
        let mut builder = func.builder();
        builder.arg(&av);
        builder.arg(&bv);
        builder.arg(&out);
        for d in &dims {
            builder.arg(d);
        }
        // SAFETY: the sizes passed match the buffers' lengths.
        unsafe { builder.launch(cfg) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
    }
}

/// Forward op on (x, w) with the gradients below as its backward.
pub(crate) struct Forward(pub Geometry);
/// (gy, w) -> dL/dx.
pub(crate) struct InputGrad(pub Geometry);
/// (x, gy) -> dL/dw.
pub(crate) struct WeightGrad(pub Geometry);

impl CustomOp2 for Forward {
    fn name(&self) -> &'static str {
        "selfsup-depthwise"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, c, _, _) = l1.shape().dims4()?;
        let y = forward_cpu(cpu_slice(s1, l1)?, cpu_slice(s2, l2)?, c, self.0);
        Ok((
            CpuStorage::F32(y),
            Shape::from((b, c, self.0.ho, self.0.wo)),
        ))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (b, c, _, _) = l1.shape().dims4()?;
        let y = gpu::launch(gpu::Kind::Forward, s1, l1, s2, l2, b, c, self.0)?;
        Ok((y, Shape::from((b, c, self.0.ho, self.0.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let gy = gy.contiguous()?;
        let gx = if x.track_op() {
            Some(gy.apply_op2_no_bwd(w, &InputGrad(self.0))?)
        } else {
            None
        };
        let gw = if w.track_op() {
            Some(x.apply_op2_no_bwd(&gy, &WeightGrad(self.0))?)
        } else {
            None
        };
        Ok((gx, gw))
    }
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "selfsup-depthwise-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, c, _, _) = l1.shape().dims4()?;
        let gx = input_grad_cpu(cpu_slice(s1, l1)?, cpu_slice(s2, l2)?, c, self.0);
        Ok((CpuStorage::F32(gx), Shape::from((b, c, self.0.h, self.0.w))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (b, c, _, _) = l1.shape().dims4()?;
        let gx = gpu::launch(gpu::Kind::InputGrad, s1, l1, s2, l2, b, c, self.0)?;
        Ok((gx, Shape::from((b, c, self.0.h, self.0.w))))
    }
}

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "selfsup-depthwise-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, _, _) = l1.shape().dims4()?;
        let gw = weight_grad_cpu(cpu_slice(s1, l1)?, cpu_slice(s2, l2)?, c, self.0);
        Ok((CpuStorage::F32(gw), Shape::from((c, 1, self.0.k, self.0.k))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (b, c, _, _) = l1.shape().dims4()?;
        let fused = crate::cuda_fused::depthwise_weight_grad((s1, l1), (s2, l2), (b, c), self.0)?;
        let gw = match fused {
            Some(gw) => gw,
            None => gpu::launch(gpu::Kind::WeightGrad, s1, l1, s2, l2, b, c, self.0)?,
        };
        Ok((gw, Shape::from((c, 1, self.0.k, self.0.k))))
    }
}
