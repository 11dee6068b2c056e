//! LayerNorm over the last dimension as one op with its backward pass.
//!
//! Candle's fused `LayerNorm` has no CPU backward, and LayerNorm from its
//! differentiable primitives is nine passes forward (mean, subtract,
//! square, mean, add, root, divide, scale, shift) and about twice that
//! backward, with full-size reductions for the scale's and shift's
//! gradients. [`layer_norm`] normalises each row in one pass forward and
//! computes the input, scale and shift gradients in one pass backward.
//! Rows are split into fixed blocks: each block's partial scale and shift
//! gradients are summed in block order, so the result does not depend on
//! the thread count.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rows per parallel block (and per partial sum of the parameter
/// gradients).
const BLOCK_ROWS: usize = 64;

/// `(x - mean) / sqrt(var + eps) * gamma + beta` over the last dimension of
/// `x` (biased variance), `gamma` and `beta` of that dimension's size.
/// Differentiable in all three. CPU, f32 only ([`crate::fused_supported`]).
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    crate::require_fused(x, "layer norm")?;
    let h = x.dim(candle_core::D::Minus1)?;
    for (what, t) in [("scale", gamma), ("shift", beta)] {
        if t.dims() != [h] {
            candle_core::bail!(
                "layer norm: rows have {h} elements, the {what} has shape {:?}",
                t.dims()
            );
        }
    }
    x.contiguous()?.apply_op3(
        &gamma.contiguous()?,
        &beta.contiguous()?,
        LayerNorm { eps: eps as f32 },
    )
}

struct LayerNorm {
    eps: f32,
}

/// Mean and 1 / standard deviation of one row.
#[inline(always)]
fn moments(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// The gradients of one block of rows: dx into `dx`, and the block's
/// partial (dγ, dβ) added into `dgb` (2h: dγ then dβ).
#[inline(always)]
fn block_grads(x: &[f32], g: &[f32], gamma: &[f32], eps: f32, dx: &mut [f32], dgb: &mut [f32]) {
    let h = gamma.len();
    let (dgamma, dbeta) = dgb.split_at_mut(h);
    for ((xr, gr), dr) in x.chunks(h).zip(g.chunks(h)).zip(dx.chunks_mut(h)) {
        let (mean, rstd) = moments(xr, eps);
        // dx = rstd (gγ - mean(gγ) - x̂ mean(gγ x̂)), with x̂ the normalised row.
        let (mut s1, mut s2) = (0f32, 0f32);
        for j in 0..h {
            let xh = (xr[j] - mean) * rstd;
            let gg = gr[j] * gamma[j];
            s1 += gg;
            s2 += gg * xh;
            dgamma[j] += gr[j] * xh;
            dbeta[j] += gr[j];
        }
        let (m1, m2) = (s1 / h as f32, s2 / h as f32);
        for j in 0..h {
            let xh = (xr[j] - mean) * rstd;
            dr[j] = rstd * (gr[j] * gamma[j] - m1 - xh * m2);
        }
    }
}

/// dx and the summed (dγ, dβ) (2h) of the whole tensor.
fn grads(x: &[f32], g: &[f32], gamma: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let h = gamma.len();
    let span = BLOCK_ROWS * h;
    let mut dx = vec![0f32; x.len()];
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(span)
        .zip(x.par_chunks(span).zip(g.par_chunks(span)))
        .map(|(d, (xb, gb))| {
            let mut dgb = vec![0f32; 2 * h];
            crate::simd::dispatch(
                #[inline(always)]
                || block_grads(xb, gb, gamma, eps, d, &mut dgb),
            );
            dgb
        })
        .collect();
    (dx, crate::sum_in_block_order(&partials, 2 * h))
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "selfsup-layer-norm"
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
        let x = crate::cpu_f32(sx, lx, "layer norm", "the input")?;
        let gamma = crate::cpu_f32(sg, lg, "layer norm", "the scale")?;
        let beta = crate::cpu_f32(sb, lb, "layer norm", "the shift")?;
        let h = gamma.len();
        let span = BLOCK_ROWS * h;
        let eps = self.eps;
        // SAFETY: every block writes each of its rows' elements.
        let y = unsafe {
            crate::par_uninit(x.len(), span, |i, out| {
                let xb = &x[i * span..(i * span + out.len())];
                crate::simd::dispatch(
                    #[inline(always)]
                    || {
                        for (xr, yr) in xb.chunks(h).zip(out.chunks_mut(h)) {
                            let (mean, rstd) = moments(xr, eps);
                            for j in 0..h {
                                yr[j].write((xr[j] - mean) * rstd * gamma[j] + beta[j]);
                            }
                        }
                    },
                )
            })
        };
        Ok((CpuStorage::F32(y), lx.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let (dx, sums) =
            crate::with_cpu_f32([x, &g, gamma], "layer norm backward", |[x, g, gm]| {
                grads(x, g, gm, self.eps)
            })?;
        let mut dgamma = sums;
        let dbeta = dgamma.split_off(gamma.elem_count());
        Ok((
            crate::grad_for(x, dx)?,
            crate::grad_for(gamma, dgamma)?,
            crate::grad_for(beta, dbeta)?,
        ))
    }
}
