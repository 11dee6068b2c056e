//! Convolution, training-mode BatchNorm and its activation as one op (CPU,
//! f32, dense convolutions).
//!
//! As two ops, the BatchNorm's input gradient is a full-size tensor that
//! Candle's backward pass adds onto a zero-filled gradient slot before the
//! convolution reads it back twice (input and weight gradients). Here the
//! BatchNorm gradient is formed band by band of output rows inside the
//! convolution's single backward pass, where both GEMMs use it while it is
//! in cache; the pre-normalisation output stays inside the op. The numbers
//! are the two ops' numbers, bit for bit (the same expressions and the same
//! summation order).

use crate::batchnorm::{self, Activation, BatchStats, Saved};
use crate::cpu_conv::{self, Band, BandGrad, Geo, Mat};
use crate::Conv2dParams;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use std::sync::{Arc, Mutex};

/// Training-mode `act(BatchNorm(conv2d(x, w)))` with per-channel scale
/// `gamma` and shift `beta`, normalising with the batch's own statistics
/// (`eps` added to the variance), differentiable in `x`, `w`, `gamma` and
/// `beta`. Returns the output and the batch statistics (for the caller's
/// running averages).
///
/// Runs where [`fused_conv_bn_supported`] holds: f32 on the CPU with a
/// dense convolution (groups 1).
pub fn conv_bn_train(
    x: &Tensor,
    w: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    p: Conv2dParams,
    eps: f64,
    act: Activation,
) -> Result<(Tensor, BatchStats)> {
    if !fused_conv_bn_supported(x, w, p) {
        candle_core::bail!(
            "fused conv + batch norm runs on the CPU in f32 with groups 1, got {:?} {:?} and {:?} {:?} on {:?}, groups {}",
            x.dtype(),
            x.dims(),
            w.dtype(),
            w.dims(),
            x.device().location(),
            p.groups
        );
    }
    let geo = crate::conv_geometry(x, w, p)?;
    let op = "fused conv + batch norm";
    batchnorm::check_scale_shift(op, geo.cout, "output channels", (gamma, beta))?;
    let stash = Arc::new(Mutex::new(None));
    let op = ConvBn {
        geo,
        eps,
        act,
        stash: stash.clone(),
    };
    let scale_shift = Tensor::cat(&[gamma, beta], 0)?;
    let y = x
        .contiguous()?
        .apply_op3(&w.contiguous()?, &scale_shift, op)?;
    let stats = lock(&stash)?.as_ref().map(|s| s.bn.stats());
    let Some(stats) = stats else {
        candle_core::bail!("fused conv + batch norm: the forward pass left no statistics")
    };
    Ok((y, stats))
}

/// Whether [`conv_bn_train`] runs on `x` and `w` with `p`: both f32 on the
/// CPU, 4-D, and a dense convolution.
pub fn fused_conv_bn_supported(x: &Tensor, w: &Tensor, p: Conv2dParams) -> bool {
    crate::fused_supported(x)
        && x.rank() == 4
        && w.rank() == 4
        && w.device().is_cpu()
        && w.dtype() == x.dtype()
        && p.groups == 1
}

/// What the forward pass keeps for the backward pass: the convolution's
/// output and the BatchNorm statistics.
struct Kept {
    h: Vec<f32>,
    bn: Saved,
}

fn lock(stash: &Mutex<Option<Kept>>) -> Result<std::sync::MutexGuard<'_, Option<Kept>>> {
    crate::lock_stash(stash, "fused conv + batch norm")
}

/// (x, w, [γ; β]) -> act(BatchNorm(conv2d(x, w))).
struct ConvBn {
    geo: Geo,
    eps: f64,
    act: Activation,
    stash: Arc<Mutex<Option<Kept>>>,
}

impl CustomOp3 for ConvBn {
    fn name(&self) -> &'static str {
        "selfsup-conv-batch-norm"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        ss: &CpuStorage,
        ls: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = "fused conv + batch norm";
        let x = crate::cpu_f32(sx, lx, op, "the input")?;
        let w = crate::cpu_f32(sw, lw, op, "the kernel")?;
        let scale_shift = crate::cpu_f32(ss, ls, op, "the scale and shift")?;
        let g = &self.geo;
        let h = cpu_conv::forward(x, w, g);
        let (gamma, beta) = scale_shift.split_at(g.cout);
        let ncs = (g.n, g.cout, g.p());
        let (y, bn) = batchnorm::forward_slices(&h, gamma, beta, ncs, self.eps, self.act)?;
        *lock(&self.stash)? = Some(Kept { h, bn });
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.cout, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        scale_shift: &Tensor,
        y: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let kept = lock(&self.stash)?;
        let Some(kept) = kept.as_ref() else {
            candle_core::bail!("fused conv + batch norm: backward pass before the forward pass")
        };
        let g = &self.geo;
        let gy = gy.contiguous()?;
        let gamma: Vec<f32> = scale_shift.narrow(0, 0, g.cout)?.to_vec1()?;
        let ncs = (g.n, g.cout, g.p());
        let op = "fused conv + batch norm backward";
        // With x and w both frozen only γ and β need their sums (as the
        // plain convolution's backward skips its pass then).
        let wants_conv = x.track_op() || w.track_op();
        let (dw, dx, sums) = crate::with_cpu_f32([x, w, y, &gy], op, |[xs, ws, ys, gs]| {
            let (sum_g, sum_gx) = batchnorm::grad_sums(&kept.h, ys, gs, ncs, &kept.bn, self.act);
            let source = BnGrad {
                h: &kept.h,
                y: ys,
                gy: gs,
                coef: batchnorm::input_grad_coef(&gamma, &kept.bn, &sum_g, &sum_gx),
                act: self.act,
            };
            let (dw, dx) = if wants_conv {
                cpu_conv::backward(xs, ws, &source, g, x.track_op())
            } else {
                (Vec::new(), None)
            };
            (dw, dx, [sum_gx, sum_g].concat())
        })?;
        let (dx, dw) = cpu_conv::grads_to_tensors(g, x, w, dw, dx)?;
        let d_scale_shift = Tensor::from_vec(sums, 2 * g.cout, x.device())?;
        Ok((dx, dw, Some(d_scale_shift)))
    }
}

/// The BatchNorm's input gradient — the convolution's output gradient —
/// computed band by band from the convolution output `h`, the op's output
/// `y` and its gradient `gy`.
struct BnGrad<'a> {
    h: &'a [f32],
    y: &'a [f32],
    gy: &'a [f32],
    coef: Vec<[f32; 3]>,
    act: Activation,
}

impl BandGrad for BnGrad<'_> {
    fn band<'a>(
        &'a self,
        g: &Geo,
        (b0, nb): (usize, usize),
        band: Band,
        buf: &'a mut [f32],
    ) -> Mat<'a> {
        let p = g.p();
        let pb = (band.1 - band.0) * g.wo;
        let ld = nb * pb;
        crate::simd::dispatch(
            #[inline(always)]
            || {
                for j in 0..nb {
                    for co in 0..g.cout {
                        let src = ((b0 + j) * g.cout + co) * p + band.0 * g.wo;
                        let r = src..src + pb;
                        let parts = (&self.h[r.clone()], &self.y[r.clone()], &self.gy[r]);
                        let out = &mut buf[co * ld + j * pb..co * ld + (j + 1) * pb];
                        batchnorm::input_grad_slab(self.coef[co], self.act, parts, out, |o, v| {
                            *o = v
                        });
                    }
                }
            },
        );
        cpu_conv::mat(buf, ld, 1)
    }
}
