//! Mean cross-entropy of logits against class labels as one op with its
//! backward pass.
//!
//! `candle_nn::loss::cross_entropy` is a log-softmax (max, subtract, exp,
//! sum, log, subtract: six passes over the logits), a gather and a mean,
//! and its backward pass as many again. On a masked-language-model head the
//! logits are (masked tokens × vocabulary), millions of elements. Here the
//! forward pass is one pass per row (max, then Σ exp) and the backward pass
//! one more (`(softmax − one-hot) / N`, from the kept log-sum-exp).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

/// Rows per parallel task.
const BLOCK_ROWS: usize = 16;

/// Mean over rows of `−log softmax(logits)[label]`, `logits` (N, C) and
/// `labels` (N) class indices (u32). Differentiable in the logits. CPU,
/// f32 only ([`crate::fused_supported`]).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    if !crate::fused_supported(logits) || logits.rank() != 2 {
        candle_core::bail!(
            "cross entropy runs on the CPU in f32 on (N, C) logits, got {:?} {:?} on {:?}",
            logits.dtype(),
            logits.dims(),
            logits.device().location()
        );
    }
    let (n, c) = logits.dims2()?;
    let labels = labels.to_vec1::<u32>()?;
    if labels.len() != n {
        candle_core::bail!("cross entropy: {n} rows of logits, {} labels", labels.len());
    }
    if let Some(l) = labels.iter().find(|&&l| l as usize >= c) {
        candle_core::bail!("cross entropy: label {l} is not below the {c} classes");
    }
    logits.contiguous()?.apply_op1(CrossEntropy {
        labels,
        lse: Mutex::new(None),
    })
}

struct CrossEntropy {
    labels: Vec<u32>,
    /// Each row's log Σ exp, kept for the backward pass.
    lse: Mutex<Option<Vec<f32>>>,
}

/// log Σ exp of one row.
#[inline(always)]
fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|&v| crate::math::exp(v - max)).sum();
    max + sum.ln()
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "selfsup-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = crate::cpu_f32(s, l, "cross entropy", "the logits")?;
        let (n, c) = l.shape().dims2()?;
        let mut lse = vec![0f32; n];
        lse.par_chunks_mut(BLOCK_ROWS)
            .zip(x.par_chunks(BLOCK_ROWS * c.max(1)))
            .for_each(|(out, rows)| {
                crate::simd::dispatch(
                    #[inline(always)]
                    || {
                        for (o, row) in out.iter_mut().zip(rows.chunks(c.max(1))) {
                            *o = log_sum_exp(row);
                        }
                    },
                )
            });
        let total: f64 = (0..n)
            .map(|i| f64::from(lse[i] - x[i * c + self.labels[i] as usize]))
            .sum();
        *crate::lock_stash(&self.lse, "cross entropy")? = Some(lse);
        let mean = if n == 0 {
            f32::NAN
        } else {
            (total / n as f64) as f32
        };
        Ok((CpuStorage::F32(vec![mean]), Shape::from(())))
    }

    fn bwd(&self, x: &Tensor, _loss: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        if !x.track_op() {
            return Ok(None);
        }
        let Some(lse) = crate::lock_stash(&self.lse, "cross entropy")?.take() else {
            candle_core::bail!("cross entropy backward: the forward pass kept nothing")
        };
        let (n, c) = x.dims2()?;
        let scale = g.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()? / n.max(1) as f32;
        let dx = crate::with_cpu_f32([x], "cross entropy backward", |[x]| {
            let mut dx = vec![0f32; x.len()];
            dx.par_chunks_mut(BLOCK_ROWS * c.max(1))
                .zip(x.par_chunks(BLOCK_ROWS * c.max(1)))
                .enumerate()
                .for_each(|(bi, (d, rows))| {
                    crate::simd::dispatch(
                        #[inline(always)]
                        || {
                            for (r, (dr, xr)) in d.chunks_mut(c).zip(rows.chunks(c)).enumerate() {
                                let i = bi * BLOCK_ROWS + r;
                                let m = lse[i];
                                for (o, &v) in dr.iter_mut().zip(xr) {
                                    *o = scale * crate::math::exp(v - m);
                                }
                                dr[self.labels[i] as usize] -= scale;
                            }
                        },
                    )
                });
            dx
        })?;
        crate::grad_for(x, dx)
    }
}
