//! Seeded dropout: element `i` of a tensor is kept or dropped by a hash of
//! `(seed, i)`, so the mask needs no storage (the backward pass recomputes
//! it), is the same on every thread count and device, and a run that
//! restarts from a checkpoint draws the same masks. Candle's own
//! `dropout` draws from a process-wide unseeded generator.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// Chris Wellons' `lowbias32` integer hash.
#[inline(always)]
fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// A dropout mask as a function of the element index: its hash key, the
/// keep threshold and the scale of kept elements.
#[derive(Clone, Copy)]
struct Mask {
    key: u32,
    cut: u32,
    scale: f32,
}

impl Mask {
    /// The mask of drop probability `p` under `seed`.
    fn new(p: f64, seed: u64) -> Self {
        Self {
            key: mix32(seed as u32 ^ mix32((seed >> 32) as u32 ^ 0x5bd1_e995)),
            // Element `i` is kept when its hash reaches this.
            cut: (p.clamp(0.0, 1.0) * 4_294_967_296.0).min(u32::MAX as f64) as u32,
            scale: (1.0 / (1.0 - p)) as f32,
        }
    }

    /// Element `i`'s value: `1 / (1 − p)` when kept, else 0.
    #[inline(always)]
    fn at(&self, i: usize) -> f32 {
        let h = mix32((i as u32).wrapping_mul(0x9e37_79b9) ^ self.key);
        if h >= self.cut {
            self.scale
        } else {
            0.0
        }
    }
}

/// The dropout mask of `n` elements: `1 / (1 − p)` where kept, 0 where
/// dropped — what [`dropout`] multiplies by, for devices or paths that
/// apply it with a tensor product.
pub fn dropout_mask(n: usize, p: f64, seed: u64) -> Vec<f32> {
    let mask = Mask::new(p, seed);
    let mut m = vec![0f32; n];
    m.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
        crate::simd::dispatch(
            #[inline(always)]
            || {
                for (j, o) in out.iter_mut().enumerate() {
                    *o = mask.at(c * CHUNK + j);
                }
            },
        )
    });
    m
}

/// Inverted dropout of `x` with drop probability `p` (`0 <= p < 1`), the
/// mask a function of `seed` and the element index only. Differentiable.
/// CPU, f32 only ([`crate::fused_supported`]).
pub fn dropout(x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        candle_core::bail!("dropout probability {p} must be in [0, 1)");
    }
    crate::require_fused(x, "dropout")?;
    x.contiguous()?.apply_op1(Dropout(Mask::new(p, seed)))
}

struct Dropout(Mask);

impl Dropout {
    /// `x ⊙ mask`.
    fn masked(&self, x: &[f32]) -> Vec<f32> {
        let mask = self.0;
        // SAFETY: every chunk writes each of its elements.
        unsafe {
            crate::par_uninit(x.len(), CHUNK, |c, out| {
                let xs = &x[c * CHUNK..c * CHUNK + out.len()];
                crate::simd::dispatch(
                    #[inline(always)]
                    || {
                        for (j, (o, &v)) in out.iter_mut().zip(xs).enumerate() {
                            o.write(v * mask.at(c * CHUNK + j));
                        }
                    },
                )
            })
        }
    }
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "selfsup-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = crate::cpu_f32(s, l, "dropout", "the input")?;
        Ok((CpuStorage::F32(self.masked(x)), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        if !x.track_op() {
            return Ok(None);
        }
        let g = g.contiguous()?;
        let dx = crate::with_cpu_f32([&g], "dropout backward", |[g]| self.masked(g))?;
        crate::grad_for(x, dx)
    }
}
