//! `x + b` where `b`'s shape is the trailing part of `x`'s (a linear
//! layer's bias, a position embedding table): one op whose backward passes
//! the gradient through to `x` untouched and sums it over the leading
//! dimensions for `b`.
//!
//! Candle's `broadcast_add` backward sums over the leading dimensions with
//! its generic reduction, which walks every element through an index
//! division when the reduced dimensions are not the last ones; here the
//! sum is a vectorised pass over row blocks, added in block order (the
//! same result for any thread count).

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rows of `b`'s size per parallel block.
const BLOCK_ROWS: usize = 64;

/// `x + b`, `b` broadcast over the leading dimensions of `x`: `b.dims()`
/// must equal the last `b.rank()` dimensions of `x`. Differentiable in
/// both. CPU, f32 only ([`crate::fused_supported`]).
pub fn add_bias(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    crate::require_fused(x, "add bias")?;
    let (xd, bd) = (x.dims(), b.dims());
    if bd.len() > xd.len() || xd[xd.len() - bd.len()..] != *bd {
        candle_core::bail!("add bias: a bias of shape {bd:?} is not the tail of {xd:?}");
    }
    x.contiguous()?.apply_op2(&b.contiguous()?, AddBias)
}

struct AddBias;

/// Σ over rows of `g` viewed as (rows, s).
pub(crate) fn row_sums(g: &[f32], s: usize) -> Vec<f32> {
    let partials: Vec<Vec<f32>> = g
        .par_chunks(BLOCK_ROWS * s)
        .map(|block| {
            let mut acc = vec![0f32; s];
            crate::simd::dispatch(
                #[inline(always)]
                || {
                    for row in block.chunks(s) {
                        for (a, v) in acc.iter_mut().zip(row) {
                            *a += v;
                        }
                    }
                },
            );
            acc
        })
        .collect();
    crate::sum_in_block_order(&partials, s)
}

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "selfsup-add-bias"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = crate::cpu_f32(sx, lx, "add bias", "the input")?;
        let b = crate::cpu_f32(sb, lb, "add bias", "the bias")?;
        let s = b.len().max(1);
        let span = BLOCK_ROWS * s;
        // SAFETY: every block writes each of its elements.
        let y = unsafe {
            crate::par_uninit(x.len(), span, |i, out| {
                let xb = &x[i * span..i * span + out.len()];
                crate::simd::dispatch(
                    #[inline(always)]
                    || {
                        for (yr, xr) in out.chunks_mut(s).zip(xb.chunks(s)) {
                            for ((o, &v), &c) in yr.iter_mut().zip(xr).zip(b) {
                                o.write(v + c);
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
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = x.track_op().then(|| g.clone());
        if !b.track_op() {
            return Ok((dx, None));
        }
        let g = g.contiguous()?;
        let s = b.elem_count();
        let sums = crate::with_cpu_f32([&g], "add bias backward", |[g]| row_sums(g, s))?;
        Ok((dx, crate::grad_for(b, sums)?))
    }
}
