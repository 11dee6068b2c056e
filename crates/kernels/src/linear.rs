//! A linear layer `x Wᵀ + b` as one op with its backward pass.
//!
//! From Candle ops a linear layer on a (B, T, in) input is four graph
//! nodes (reshape, transpose of W, matmul, bias add, reshape back), and in
//! the backward pass each node's gradient is a freshly zeroed tensor plus
//! an add, the weight's one through a strided (transposed) add. Here the
//! forward pass is one GEMM into the bias rows and the backward pass two
//! GEMMs (dx = g W, dW = gᵀ x) and a row sum (db), each written once.

use crate::cpu_conv::gemm::{mat, sgemm};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;

/// `x Wᵀ + b` over the last dimension of `x` (..., in), with `w` (out, in)
/// and `b` (out). Differentiable in all three. CPU, f32 only
/// ([`crate::fused_supported`]).
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    crate::require_fused(x, "linear")?;
    let inp = x.dim(candle_core::D::Minus1)?;
    let (out, win) = w.dims2()?;
    if win != inp || b.dims() != [out] {
        candle_core::bail!(
            "linear: input rows of {inp}, weight {:?}, bias {:?}; want ({out}, {inp}) and [{out}]",
            w.dims(),
            b.dims()
        );
    }
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, Linear)
}

struct Linear;

/// The GEMMs' parallelism: rayon's threads.
const PAR: Parallelism = Parallelism::Rayon(0);

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "selfsup-linear"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = crate::cpu_f32(sx, lx, "linear", "the input")?;
        let w = crate::cpu_f32(sw, lw, "linear", "the weight")?;
        let b = crate::cpu_f32(sb, lb, "linear", "the bias")?;
        let (out, inp) = lw.shape().dims2()?;
        let n = x.len() / inp.max(1);
        let mut y: Vec<f32> = Vec::with_capacity(n * out);
        for _ in 0..n {
            y.extend_from_slice(b);
        }
        // y (n × out) += x (n × in) · Wᵀ (in × out)
        sgemm(
            (n, out, inp),
            &mut y,
            (out, 1),
            true,
            mat(x, inp, 1),
            mat(w, 1, inp),
            PAR,
        );
        let mut dims = lx.shape().dims().to_vec();
        *dims.last_mut().expect("rank >= 2") = out;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let (out, inp) = w.dims2()?;
        let n = x.elem_count() / inp.max(1);
        let (want_x, want_w, want_b) = (x.track_op(), w.track_op(), b.track_op());
        let (dx, dw, db) = crate::with_cpu_f32([x, w, &g], "linear backward", |[x, w, g]| {
            // dx (n × in) = g (n × out) · W (out × in)
            let dx = want_x.then(|| {
                let mut dx = vec![0f32; n * inp];
                let (gm, wm) = (mat(g, out, 1), mat(w, inp, 1));
                sgemm((n, inp, out), &mut dx, (inp, 1), false, gm, wm, PAR);
                dx
            });
            // dW (out × in) = gᵀ (out × n) · x (n × in)
            let dw = want_w.then(|| {
                let mut dw = vec![0f32; out * inp];
                let (gt, xm) = (mat(g, 1, out), mat(x, inp, 1));
                sgemm((out, inp, n), &mut dw, (inp, 1), false, gt, xm, PAR);
                dw
            });
            let db = want_b.then(|| crate::add_bias::row_sums(g, out));
            (dx, dw, db)
        })?;
        let wrap = |t: &Tensor, d: Option<Vec<f32>>| match d {
            Some(d) => crate::grad_for(t, d),
            None => Ok(None),
        };
        Ok((wrap(x, dx)?, wrap(w, dw)?, wrap(b, db)?))
    }
}
