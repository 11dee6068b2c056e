//! Eval-mode batch normalisation (running statistics) fused with the
//! activation that follows it: one pass instead of Candle's chain of
//! broadcast subtract, divide, multiply, add and the activation, each a
//! pass over the activation and each, on the CPU, a hand-off to Candle's
//! elementwise thread pool. The forward pass computes Candle's expression
//! `((x - mean) / sqrt(var + eps)) * gamma + beta` element by element in
//! the same order, so its output is Candle's bit for bit. Differentiable in
//! the input, scale and shift (the running statistics are constants, as
//! `candle_nn::BatchNorm` treats them in eval mode).

use crate::batchnorm::{apply_c, masked_c, nc_s, with_act, Activation};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Eval-mode batch normalisation of `x` (N, C, ...) with running `mean`
/// and `var` (C), scale `gamma` and shift `beta` (C), then `act`.
/// CPU, f32 only ([`crate::fused_supported`]).
pub fn batch_norm_eval(
    x: &Tensor,
    (mean, var): (&Tensor, &Tensor),
    (gamma, beta): (&Tensor, &Tensor),
    eps: f64,
    act: Activation,
) -> Result<Tensor> {
    if !crate::fused_supported(x) {
        candle_core::bail!(
            "eval batch norm runs on the CPU in f32 on (N, C, ...) tensors, got {:?} {:?} on {:?}",
            x.dtype(),
            x.dims(),
            x.device().location()
        );
    }
    let c = x.dim(1)?;
    for (what, t) in [
        ("mean", mean),
        ("variance", var),
        ("scale", gamma),
        ("shift", beta),
    ] {
        if t.dims() != [c] {
            candle_core::bail!(
                "eval batch norm: input has {c} channels, {what} has shape {:?}",
                t.dims()
            );
        }
    }
    let eps = eps as f32;
    // Candle adds eps with `affine(1, eps)` (v·1 + eps), then takes the root.
    let std: Vec<f32> = var
        .to_vec1::<f32>()?
        .iter()
        .map(|&v| (v * 1.0 + eps).sqrt())
        .collect();
    let op = BnEval {
        mean: mean.to_vec1::<f32>()?,
        std,
        act,
    };
    x.contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)
}

struct BnEval {
    mean: Vec<f32>,
    std: Vec<f32>,
    act: Activation,
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    crate::cpu_f32(s, l, "eval batch norm", what)
}

impl BnEval {
    /// The normalised value of `v` in channel `c`, as Candle computes it.
    #[inline(always)]
    fn normalised(&self, c: usize, v: f32) -> f32 {
        (v - self.mean[c]) / self.std[c]
    }

    /// dx (when `want_dx`) and per channel (dγ, dβ) = (Σ g'·x̂, Σ g'), with
    /// g' the gradient through the activation.
    fn grads(
        &self,
        x: &[f32],
        y: &[f32],
        g: &[f32],
        gamma: &[f32],
        (c, s): (usize, usize),
        want_dx: bool,
    ) -> (Option<Vec<f32>>, Vec<(f32, f32)>) {
        let s = s.max(1);
        with_act!(self.act, A => {
            let sums = (0..c)
                .into_par_iter()
                .map(|ch| {
                    let (mut dg, mut db) = (0f64, 0f64);
                    for start in (ch * s..x.len()).step_by(c * s) {
                        for i in start..start + s {
                            let gi = masked_c::<A>(g[i], y[i]);
                            dg += (gi * self.normalised(ch, x[i])) as f64;
                            db += gi as f64;
                        }
                    }
                    (dg as f32, db as f32)
                })
                .collect();
            let dx = want_dx.then(|| {
                let mut dx = vec![0f32; x.len()];
                dx.par_chunks_mut(s).enumerate().for_each(|(i, out)| {
                    let ch = i % c;
                    let at = i * s;
                    for (j, o) in out.iter_mut().enumerate() {
                        let gi = masked_c::<A>(g[at + j], y[at + j]);
                        *o = gi * gamma[ch] / self.std[ch];
                    }
                });
                dx
            });
            (dx, sums)
        })
    }
}

impl CustomOp3 for BnEval {
    fn name(&self) -> &'static str {
        "selfsup-batch-norm-eval"
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
        let (_, c, s) = nc_s(lx.shape())?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(s.max(1))
            .zip(x.par_chunks(s.max(1)))
            .enumerate()
            .for_each(|(i, (out, inp))| {
                let ch = i % c;
                let (scale, shift) = (gamma[ch], beta[ch]);
                with_act!(self.act, A => crate::simd::dispatch(
                    #[inline(always)]
                    || {
                        for (o, &v) in out.iter_mut().zip(inp) {
                            *o = apply_c::<A>(self.normalised(ch, v) * scale + shift);
                        }
                    },
                ));
            });
        Ok((CpuStorage::F32(y), lx.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let (_, c, s) = nc_s(x.shape())?;
        let (dx, sums) = crate::with_cpu_f32([x, y, &g, gamma], "eval batch norm backward", {
            |[xs, ys, gs, gam]| self.grads(xs, ys, gs, gam, (c, s), x.track_op())
        })?;
        let dev = x.device();
        let dx = dx
            .map(|d| Tensor::from_vec(d, x.shape(), dev))
            .transpose()?;
        let (dgamma, dbeta): (Vec<f32>, Vec<f32>) = sums.into_iter().unzip();
        let dgamma = gamma
            .track_op()
            .then(|| Tensor::from_vec(dgamma, c, dev))
            .transpose()?;
        let dbeta = beta
            .track_op()
            .then(|| Tensor::from_vec(dbeta, c, dev))
            .transpose()?;
        Ok((dx, dgamma, dbeta))
    }
}
