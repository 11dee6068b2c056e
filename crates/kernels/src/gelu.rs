//! The exact (erf) GELU as one op with its backward pass.
//!
//! Candle's `gelu_erf` calls a scalar `erf` per element forward, and its
//! backward is six tensor ops (square, scale, exp, erf again, multiply,
//! add). [`gelu_erf`] computes `x · Φ(x)` forward and `g · (Φ(x) + x ·
//! φ(x))` backward in one vectorised pass each (`erf` and `exp` from
//! [`crate::math`]).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::f32::consts::FRAC_1_SQRT_2;

/// Elements per parallel task.
const CHUNK: usize = 1 << 13;

/// `x · Φ(x)` with Φ the standard normal CDF (`0.5 · (1 + erf(x / √2))`),
/// elementwise. Differentiable. CPU, f32 only ([`crate::fused_supported`]).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    crate::require_fused(x, "gelu")?;
    x.contiguous()?.apply_op1(Gelu)
}

struct Gelu;

/// Φ(x).
#[inline(always)]
fn cdf(x: f32) -> f32 {
    0.5 * (1.0 + crate::math::erf(x * FRAC_1_SQRT_2))
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "selfsup-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = crate::cpu_f32(s, l, "gelu", "the input")?;
        // SAFETY: every chunk writes each of its elements.
        let y = unsafe {
            crate::par_uninit(x.len(), CHUNK, |i, out| {
                let xs = &x[i * CHUNK..i * CHUNK + out.len()];
                crate::simd::dispatch(
                    #[inline(always)]
                    || {
                        for (o, &v) in out.iter_mut().zip(xs) {
                            o.write(v * cdf(v));
                        }
                    },
                )
            })
        };
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        if !x.track_op() {
            return Ok(None);
        }
        let g = g.contiguous()?;
        // 1 / √(2π)
        const INV_SQRT_2PI: f32 = 0.398_942_3;
        let dx = crate::with_cpu_f32([x, &g], "gelu backward", |[x, g]| {
            let mut dx = vec![0f32; x.len()];
            dx.par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
                .for_each(|(d, (xs, gs))| {
                    crate::simd::dispatch(
                        #[inline(always)]
                        || {
                            for ((o, &v), &gv) in d.iter_mut().zip(xs).zip(gs) {
                                let pdf = INV_SQRT_2PI * crate::math::exp(-0.5 * v * v);
                                *o = gv * (cdf(v) + v * pdf);
                            }
                        },
                    )
                });
            dx
        })?;
        crate::grad_for(x, dx)
    }
}
