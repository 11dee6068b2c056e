//! Attention's softmax as one op with its backward pass: the scaled scores
//! plus an additive bias per key (the padding mask), normalised over the
//! last dimension.
//!
//! From Candle's differentiable primitives this is a scale, a broadcast
//! add, then max, subtract, exp, sum and divide forward, and as many passes
//! backward; Candle's fused `softmax_last_dim` has no backward. Here the
//! forward pass is one pass per row (max, exp and sum, scale) and the
//! backward pass `scale · y ⊙ (g − Σ g ⊙ y)` another.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rows per parallel task.
const BLOCK_ROWS: usize = 32;

/// `softmax(scale · x + bias)` over the last dimension of `x` (B, ..., T).
/// `bias`, when given, is (B, T): row `b` is added to every row of
/// `x[b]` (0 where a key is attended, a large negative number where it is
/// masked). Differentiable in `x`; the bias is a constant. CPU, f32 only
/// ([`crate::fused_supported`]).
pub fn scaled_softmax(x: &Tensor, scale: f64, bias: Option<&Tensor>) -> Result<Tensor> {
    crate::require_fused(x, "scaled softmax")?;
    let t = x.dim(candle_core::D::Minus1)?;
    let bias = match bias {
        None => None,
        Some(b) => {
            let want = [x.dim(0)?, t];
            if b.dims() != want {
                candle_core::bail!(
                    "scaled softmax: the bias has shape {:?}, the scores {:?} want {want:?}",
                    b.dims(),
                    x.dims()
                );
            }
            Some(b.flatten_all()?.to_vec1::<f32>()?)
        }
    };
    let op = Softmax {
        scale: scale as f32,
        bias,
        batches: x.dim(0)?,
    };
    x.contiguous()?.apply_op1(op)
}

struct Softmax {
    scale: f32,
    bias: Option<Vec<f32>>,
    batches: usize,
}

/// One row: `y = softmax(scale · x + bias)`.
#[inline(always)]
pub(crate) fn softmax_row(x: &[f32], bias: Option<&[f32]>, scale: f32, y: &mut [f32]) {
    match bias {
        Some(b) => {
            for ((o, &v), &c) in y.iter_mut().zip(x).zip(b) {
                *o = v * scale + c;
            }
        }
        None => {
            for (o, &v) in y.iter_mut().zip(x) {
                *o = v * scale;
            }
        }
    }
    let max = y.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for o in y.iter_mut() {
        *o = crate::math::exp(*o - max);
        sum += *o;
    }
    let inv = 1.0 / sum;
    for o in y.iter_mut() {
        *o *= inv;
    }
}

/// One row's backward pass, in place: `d` holds the gradient of the
/// output `y` on entry and `scale · y ⊙ (d − Σ d ⊙ y)`, the gradient of the
/// scores, on return.
#[inline(always)]
pub(crate) fn softmax_row_backward(y: &[f32], d: &mut [f32], scale: f32) {
    let dot: f32 = y.iter().zip(d.iter()).map(|(a, b)| a * b).sum();
    for (x, &yv) in d.iter_mut().zip(y) {
        *x = scale * yv * (*x - dot);
    }
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "selfsup-scaled-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = crate::cpu_f32(s, l, "scaled softmax", "the scores")?;
        let t = l.shape().dims().last().copied().unwrap_or(1).max(1);
        let rows_per_batch = (x.len() / t / self.batches.max(1)).max(1);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(BLOCK_ROWS * t)
            .zip(x.par_chunks(BLOCK_ROWS * t))
            .enumerate()
            .for_each(|(i, (yb, xb))| {
                crate::simd::dispatch(
                    #[inline(always)]
                    || {
                        for (r, (yr, xr)) in yb.chunks_mut(t).zip(xb.chunks(t)).enumerate() {
                            let b = (i * BLOCK_ROWS + r) / rows_per_batch;
                            let bias = self.bias.as_ref().map(|v| &v[b * t..(b + 1) * t]);
                            softmax_row(xr, bias, self.scale, yr);
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        if !x.track_op() {
            return Ok(None);
        }
        let g = g.contiguous()?;
        let t = y.dim(candle_core::D::Minus1)?.max(1);
        let scale = self.scale;
        let dx = crate::with_cpu_f32([y, &g], "scaled softmax backward", |[y, g]| {
            let mut dx = g.to_vec();
            dx.par_chunks_mut(BLOCK_ROWS * t)
                .zip(y.par_chunks(BLOCK_ROWS * t))
                .for_each(|(db, yb)| {
                    crate::simd::dispatch(
                        #[inline(always)]
                        || {
                            for (dr, yr) in db.chunks_mut(t).zip(yb.chunks(t)) {
                                softmax_row_backward(yr, dr, scale);
                            }
                        },
                    )
                });
            dx
        })?;
        crate::grad_for(x, dx)
    }
}
