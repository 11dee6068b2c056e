//! Convolution, training-mode BatchNorm and its activation as one
//! differentiable op on CUDA: the counterpart of the CPU's
//! [`crate::conv_bn_train`].
//!
//! As two ops, Candle's backward pass puts the BatchNorm's input gradient
//! into its gradient store by filling a zero tensor and adding the
//! gradient to it — two extra full passes over an activation-sized buffer
//! per layer — before the convolution reads it. Here the convolution's
//! output `h` stays inside the op: the backward pass forms dL/dh with the
//! BatchNorm kernels and hands it straight to the convolution's gradients
//! (cuDNN for dense layers, the depthwise kernels for depthwise ones).
//!
//! A residual sum that follows the BatchNorm (ResNet's `relu(bn(conv(h)) +
//! skip)`, MobileNetV2's `bn(conv(h)) + x`) can be folded in too: the
//! output is one op, so the sum's two operand gradients never pass through
//! the store either.

use super::{apply, bn_backward, split, view, ActGrad, Stats};
use crate::batchnorm::Activation;
use crate::cudnn_conv::{self, Direction};
use crate::{cpu_conv::Geo, depthwise};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView};
use candle_core::{CudaDevice, CudaStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};

/// The convolution inside the op.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ConvKind {
    /// Dense (groups 1), or depthwise where cuDNN's kernels were chosen
    /// ([`crate::set_depthwise_cudnn`]), through cuDNN: sizes and groups.
    Cudnn(Geo, usize),
    /// Depthwise (groups = channels), this crate's kernels.
    Depthwise(depthwise::Geometry),
}

impl ConvKind {
    fn forward(self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        match self {
            Self::Cudnn(g, k) => x.apply_op2_no_bwd(w, &cudnn_conv::Op::forward(g, k)),
            Self::Depthwise(g) => x.apply_op2_no_bwd(w, &depthwise::Forward(g)),
        }
    }

    fn input_grad(self, dh: &Tensor, w: &Tensor) -> Result<Tensor> {
        match self {
            Self::Cudnn(g, k) => {
                let op = cudnn_conv::Op::forward(g, k).towards(Direction::InputGrad);
                dh.apply_op2_no_bwd(w, &op)
            }
            Self::Depthwise(g) => dh.apply_op2_no_bwd(w, &depthwise::InputGrad(g)),
        }
    }

    fn weight_grad(self, x: &Tensor, dh: &Tensor) -> Result<Tensor> {
        match self {
            Self::Cudnn(g, k) => {
                let op = cudnn_conv::Op::forward(g, k).towards(Direction::WeightGrad);
                x.apply_op2_no_bwd(dh, &op)
            }
            Self::Depthwise(g) => x.apply_op2_no_bwd(dh, &depthwise::WeightGrad(g)),
        }
    }
}

/// (x, w, [γ; β]) -> act(BatchNorm(h)), `h` = conv(x, w) computed before
/// and held here with its statistics.
struct ConvBnApply {
    kind: ConvKind,
    h: Tensor,
    stats: Tensor,
    act: Activation,
}

impl CustomOp3 for ConvBnApply {
    fn name(&self) -> &'static str {
        "selfsup-cuda-conv-bn"
    }

    cuda_only!(3);

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        sgb: &CudaStorage,
        lgb: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let gb = view(sgb, lgb, "the scale and shift")?;
        self.normalise(&sgb.device, (&gb, 0), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        gb: &Tensor,
        y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, sums) = self.grads(x, w, gb.narrow(0, 0, self.h.dim(1)?)?, y, g)?;
        // [dγ; dβ] in the layout of [γ; β].
        Ok((dx, dw, Some(sums.flatten_all()?)))
    }
}

impl ConvBnApply {
    /// act(BatchNorm(h) [+ residual]) with γ and β read from `params` at
    /// `at` (γ) and `at + C` (β).
    fn normalise(
        &self,
        dev: &CudaDevice,
        (params, at): (&CudaView<f32>, usize),
        residual: Option<&CudaView<f32>>,
    ) -> Result<(CudaStorage, Shape)> {
        let shape = self.h.shape().clone();
        let sp = split(&shape)?;
        let c = sp.c as usize;
        let (gamma, beta) = (params.slice(at..at + c), params.slice(at + c..at + 2 * c));
        // SAFETY: every element is written.
        let y: CudaSlice<f32> = unsafe { dev.alloc(shape.elem_count())? };
        let (hs, hl) = self.h.storage_and_layout();
        let (ss, sl) = self.stats.storage_and_layout();
        let (Storage::Cuda(hs), Storage::Cuda(ss)) = (&*hs, &*ss) else {
            candle_core::bail!("fused CUDA conv + batch norm: its buffers left the GPU")
        };
        let (h, stats) = (view(hs, hl, "h")?, view(ss, sl, "the statistics")?);
        apply(
            dev,
            (&h, &gamma, &beta, &stats),
            residual,
            &y,
            &sp,
            self.act,
        )?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), shape))
    }

    /// dL/dx, dL/dw and [dγ; dβ] (2, C) from the output `y` and its
    /// gradient `g`.
    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        gamma: Tensor,
        y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Tensor)> {
        let back = (&self.stats, gamma, self.act);
        let (sums, dh) = bn_backward(&self.h, y, g, back, x.track_op() || w.track_op())?;
        let dx = match &dh {
            Some(dh) if x.track_op() => Some(self.kind.input_grad(dh, w)?),
            _ => None,
        };
        let dw = match &dh {
            Some(dh) if w.track_op() => Some(self.kind.weight_grad(x, dh)?),
            _ => None,
        };
        Ok((dx, dw, sums))
    }
}

/// (x, [w; γ; β] flattened, r) -> act(BatchNorm(h) + r): [`ConvBnApply`]
/// with a residual `r`; the kernel and its scale and shift travel as one
/// operand so that `r` can be the third.
struct ConvBnResidual {
    inner: ConvBnApply,
    w_shape: Shape,
}

impl ConvBnResidual {
    fn w_len(&self) -> usize {
        self.w_shape.elem_count()
    }
}

impl CustomOp3 for ConvBnResidual {
    fn name(&self) -> &'static str {
        "selfsup-cuda-conv-bn-residual"
    }

    cuda_only!(3);

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        swgb: &CudaStorage,
        lwgb: &Layout,
        sr: &CudaStorage,
        lr: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let wgb = view(swgb, lwgb, "the kernel, scale and shift")?;
        let r = view(sr, lr, "the residual")?;
        self.inner
            .normalise(&swgb.device, (&wgb, self.w_len()), Some(&r))
    }

    fn bwd(
        &self,
        x: &Tensor,
        wgb: &Tensor,
        r: &Tensor,
        y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (c, wn) = (self.inner.h.dim(1)?, self.w_len());
        let w = wgb.narrow(0, 0, wn)?.reshape(&self.w_shape)?;
        let gamma = wgb.narrow(0, wn, c)?;
        let (dx, dw, sums) = self.inner.grads(x, &w, gamma, y, g)?;
        let dw = match dw {
            Some(dw) => dw.flatten_all()?,
            None => Tensor::zeros(wn, w.dtype(), w.device())?,
        };
        let dwgb = Tensor::cat(&[dw, sums.flatten_all()?], 0)?;
        // The sum passes the gradient through the activation to r as is.
        let dr = r
            .track_op()
            .then(|| match self.inner.act {
                Activation::Identity => Ok(g.clone()),
                act => g.contiguous()?.apply_op2_no_bwd(y, &ActGrad(act)),
            })
            .transpose()?;
        Ok((dx, Some(dwgb), dr))
    }
}

/// Training-mode `act(BatchNorm(conv(x, w)) [+ residual])` on CUDA: the
/// output and the batch statistics as a (3, C) device tensor (mean, biased
/// variance, inverse standard deviation).
pub(crate) fn conv_bn_train(
    x: &Tensor,
    w: &Tensor,
    (gamma, beta): (&Tensor, &Tensor),
    residual: Option<&Tensor>,
    kind: ConvKind,
    (eps, act): (f64, Activation),
) -> Result<(Tensor, Tensor)> {
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let h = kind.forward(&x.detach(), &w.detach())?;
    if residual.is_some_and(|r| r.dims() != h.dims()) {
        candle_core::bail!(
            "fused CUDA conv + batch norm: residual {:?} for an output {:?}",
            residual.map(|r| r.dims().to_vec()),
            h.dims()
        );
    }
    let stats = h.apply_op1_no_bwd(&Stats { eps: eps as f32 })?;
    let inner = ConvBnApply {
        kind,
        h,
        stats: stats.clone(),
        act,
    };
    let y = match residual {
        None => x.apply_op3(&w, &Tensor::cat(&[gamma, beta], 0)?, inner)?,
        Some(r) => {
            let wgb = Tensor::cat(&[&w.flatten_all()?, gamma, beta], 0)?;
            let op = ConvBnResidual {
                inner,
                w_shape: w.shape().clone(),
            };
            x.apply_op3(&wgb, &r.contiguous()?, op)?
        }
    };
    Ok((y, stats))
}
