//! Dense (groups = 1) f32 convolution on the CPU, NCHW, as im2col + GEMM per
//! group of images, with the input gradient as GEMM + col2im.
//!
//! Candle's CPU `conv2d` first transposes the whole input to NHWC on one
//! thread, then gathers im2col tiles and scatters every output value to its
//! NCHW place one at a time. Here each image's im2col matrix is built
//! straight from NCHW in (C_in·kh·kw, Ho·Wo) layout — for stride 1 every row
//! segment is a shifted copy of an input row, and with "same" padding a
//! band's whole im2col row is one shifted run of the input plane, copied
//! at once with its edge columns zeroed after — so that
//! `W (C_out, C_in·kh·kw) @ cols` *is* the image's NCHW output. Images with
//! small outputs are grouped so that each GEMM is at least 256 columns wide
//! (`geo::MIN_COLUMNS`), larger images are cut into bands of output rows of
//! about that many columns (so that a band's im2col matrix is still in
//! cache when the GEMM reads it: +30 % GFLOP/s on 32x32 planes), and
//! groups run in parallel.
//!
//! The input gradient is the transpose: `Wᵀ @ g` gives the gradient of the
//! im2col matrix, and col2im adds it back onto the input positions it was
//! read from. Unlike the dilated-gradient formulation, a stride-2 layer
//! costs no more than its forward pass. Both gradients come from one pass
//! ([`backward`]) that takes the output gradient band by band through
//! [`BandGrad`], so that a fused op can compute it there (`conv_bn`).
//!
//! Files: `geo` (sizes, groups and bands), `gemm` (the GEMM wrapper),
//! `im2col` (im2col/col2im and the per-thread scratch buffers), `parallel`
//! (how groups are spread over threads), `forward`, `backward`.

mod backward;
mod forward;
pub(crate) mod gemm;
mod geo;
mod im2col;
mod parallel;

pub(crate) use backward::{backward, Band, BandGrad};
pub(crate) use forward::forward;
pub(crate) use gemm::{mat, Mat};
pub(crate) use geo::Geo;

use backward::Given;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    crate::cpu_f32(s, l, "conv2d", "operands")
}

/// (x, w) -> y, differentiable: the CPU f32 dense convolution.
pub(crate) struct Conv(pub Geo);

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "selfsup-conv2d-cpu"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let y = forward(contiguous(sx, lx)?, contiguous(sw, lw)?, &g);
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.cout, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if !x.track_op() && !w.track_op() {
            return Ok((None, None));
        }
        let gy = gy.contiguous()?;
        let (dw, dx) = crate::with_cpu_f32([x, w, &gy], "conv2d backward", |[xs, ws, gs]| {
            backward(xs, ws, &Given(gs), &self.0, x.track_op())
        })?;
        grads_to_tensors(&self.0, x, w, dw, dx)
    }
}

/// The gradients [`backward`] computed as tensors on `x`'s device: dx
/// (when computed) and dw (when `w` tracks gradients).
pub(crate) fn grads_to_tensors(
    g: &Geo,
    x: &Tensor,
    w: &Tensor,
    dw: Vec<f32>,
    dx: Option<Vec<f32>>,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let dev = x.device();
    let dx = dx
        .map(|d| Tensor::from_vec(d, (g.n, g.cin, g.h, g.w), dev))
        .transpose()?;
    let dw = if w.track_op() {
        Some(Tensor::from_vec(dw, (g.cout, g.cin, g.kh, g.kw), dev)?)
    } else {
        None
    };
    Ok((dx, dw))
}
