//! Multi-head scaled dot-product attention as one op with its backward
//! pass, reading the heads straight out of the (B, T, H) projections.
//!
//! From Candle ops an attention layer is about fourteen graph nodes: each
//! of q, k and v reshaped, transposed and copied into (B, heads, T, d), the
//! keys transposed and copied again, two batched matmuls, the softmax, and
//! the context transposed, copied and reshaped back; in the backward pass
//! each node's gradient is a zeroed tensor plus an add. Here the heads are
//! strided views (row stride H, one head's d columns) handed to the GEMM,
//! one task per sequence, and the attention probabilities are kept from
//! the forward pass for the backward one:
//!
//! - forward: `S = Q Kᵀ`, `P = softmax(S / √d + bias)`, `C = P V`;
//! - backward: `dV = Pᵀ dC`, `dP = dC Vᵀ`,
//!   `dS = P ⊙ (dP − rowsum(dP ⊙ P)) / √d`, `dQ = dS K`, `dK = dSᵀ Q`.

use crate::cpu_conv::gemm::{mat, sgemm};
use crate::softmax::{softmax_row, softmax_row_backward};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;
use std::sync::Mutex;

/// Multi-head attention of queries `q`, keys `k` and values `v`, each
/// (B, T, H) with `heads` heads of H / heads columns side by side (head
/// `h` is columns `h·d..(h+1)·d`); `bias` (B, T), when given, is added to
/// every query's scores over the keys of its sequence (0 where attended, a
/// large negative number at padding). Scores are scaled by 1 / √d. Returns
/// the context (B, T, H), heads side by side. Differentiable in `q`, `k`
/// and `v`; the bias is a constant. CPU, f32 only
/// ([`crate::fused_supported`]).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    if !crate::fused_supported(q) || q.rank() != 3 {
        candle_core::bail!(
            "attention runs on the CPU in f32 on (B, T, H) tensors, got {:?} {:?} on {:?}",
            q.dtype(),
            q.dims(),
            q.device().location()
        );
    }
    let (b, t, h) = q.dims3()?;
    for (what, x) in [("keys", k), ("values", v)] {
        if x.dims() != q.dims() {
            candle_core::bail!(
                "attention: queries are {:?}, {what} {:?}",
                q.dims(),
                x.dims()
            );
        }
    }
    if heads == 0 || h % heads != 0 {
        candle_core::bail!("attention: width {h} does not split into {heads} heads");
    }
    let bias = match bias {
        None => None,
        Some(m) if m.dims() == [b, t] => Some(m.flatten_all()?.to_vec1::<f32>()?),
        Some(m) => candle_core::bail!(
            "attention: the bias has shape {:?}, want {:?}",
            m.dims(),
            [b, t]
        ),
    };
    let keep = q.track_op() || k.track_op() || v.track_op();
    let op = Attention {
        heads,
        bias,
        keep,
        probs: Mutex::new(None),
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

struct Attention {
    heads: usize,
    bias: Option<Vec<f32>>,
    /// Keep the probabilities for the backward pass.
    keep: bool,
    /// (B, heads, T, T) probabilities of the forward pass.
    probs: Mutex<Option<Vec<f32>>>,
}

/// Sizes of one call: sequences, tokens, width, heads, head width.
#[derive(Clone, Copy)]
struct Dims {
    t: usize,
    h: usize,
    heads: usize,
    d: usize,
}

impl Dims {
    fn new(shape: &Shape, heads: usize) -> Result<Self> {
        let (_, t, h) = shape.dims3()?;
        Ok(Self {
            t,
            h,
            heads,
            d: h / heads,
        })
    }

    fn scale(&self) -> f32 {
        1.0 / (self.d as f32).sqrt()
    }
}

/// Forward for one sequence: its (T, H) slices of q, k, v, its bias row,
/// its context (T, H) and probabilities (heads, T, T).
fn forward_seq(
    z: Dims,
    (q, k, v): (&[f32], &[f32], &[f32]),
    bias: Option<&[f32]>,
    ctx: &mut [f32],
    probs: &mut [f32],
) {
    let (t, h, d) = (z.t, z.h, z.d);
    let mut scores = vec![0f32; t * t];
    for (head, p) in probs.chunks_mut(t * t).enumerate() {
        let c = head * d;
        let qh = mat(&q[c..], h, 1);
        let kh = mat(&k[c..], h, 1);
        sgemm(
            (t, t, d),
            &mut scores,
            (t, 1),
            false,
            qh,
            kh.t(),
            Parallelism::None,
        );
        crate::simd::dispatch(
            #[inline(always)]
            || {
                for (s, pr) in scores.chunks(t).zip(p.chunks_mut(t)) {
                    softmax_row(s, bias, z.scale(), pr);
                }
            },
        );
        let vh = mat(&v[c..], h, 1);
        sgemm(
            (t, d, t),
            &mut ctx[c..],
            (h, 1),
            false,
            mat(p, t, 1),
            vh,
            Parallelism::None,
        );
    }
}

/// Backward for one sequence: fills its (T, H) slices of dq, dk, dv.
fn backward_seq(
    z: Dims,
    (q, k, v, g): (&[f32], &[f32], &[f32], &[f32]),
    probs: &[f32],
    (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
) {
    let (t, h, d) = (z.t, z.h, z.d);
    let mut ds = vec![0f32; t * t];
    for (head, p) in probs.chunks(t * t).enumerate() {
        let c = head * d;
        let (qh, kh, vh, gh) = (
            mat(&q[c..], h, 1),
            mat(&k[c..], h, 1),
            mat(&v[c..], h, 1),
            mat(&g[c..], h, 1),
        );
        let pm = mat(p, t, 1);
        sgemm(
            (t, d, t),
            &mut dv[c..],
            (h, 1),
            false,
            pm.t(),
            gh,
            Parallelism::None,
        );
        sgemm(
            (t, t, d),
            &mut ds,
            (t, 1),
            false,
            gh,
            vh.t(),
            Parallelism::None,
        );
        let scale = z.scale();
        crate::simd::dispatch(
            #[inline(always)]
            || {
                for (dr, pr) in ds.chunks_mut(t).zip(p.chunks(t)) {
                    softmax_row_backward(pr, dr, scale);
                }
            },
        );
        let dsm = mat(&ds, t, 1);
        sgemm(
            (t, d, t),
            &mut dq[c..],
            (h, 1),
            false,
            dsm,
            kh,
            Parallelism::None,
        );
        sgemm(
            (t, d, t),
            &mut dk[c..],
            (h, 1),
            false,
            dsm.t(),
            qh,
            Parallelism::None,
        );
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "selfsup-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let q = crate::cpu_f32(sq, lq, "attention", "the queries")?;
        let k = crate::cpu_f32(sk, lk, "attention", "the keys")?;
        let v = crate::cpu_f32(sv, lv, "attention", "the values")?;
        let z = Dims::new(lq.shape(), self.heads)?;
        let (seq, pseq) = (z.t * z.h, z.heads * z.t * z.t);
        let mut ctx = vec![0f32; q.len()];
        let mut probs = vec![0f32; q.len() / seq.max(1) * pseq];
        ctx.par_chunks_mut(seq.max(1))
            .zip(probs.par_chunks_mut(pseq.max(1)))
            .enumerate()
            .for_each(|(i, (c, p))| {
                let r = i * seq..(i + 1) * seq;
                let bias = self.bias.as_ref().map(|b| &b[i * z.t..(i + 1) * z.t]);
                forward_seq(z, (&q[r.clone()], &k[r.clone()], &v[r]), bias, c, p);
            });
        if self.keep {
            *crate::lock_stash(&self.probs, "attention")? = Some(probs);
        }
        Ok((CpuStorage::F32(ctx), lq.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _ctx: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let probs = crate::lock_stash(&self.probs, "attention")?.take();
        let Some(probs) = probs else {
            candle_core::bail!("attention backward: the forward pass kept no probabilities")
        };
        let g = g.contiguous()?;
        let z = Dims::new(q.shape(), self.heads)?;
        let (seq, pseq) = (z.t * z.h, z.heads * z.t * z.t);
        let n = q.elem_count();
        let (mut dq, mut dk, mut dv) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        crate::with_cpu_f32([q, k, v, &g], "attention backward", |[q, k, v, g]| {
            dq.par_chunks_mut(seq.max(1))
                .zip(dk.par_chunks_mut(seq.max(1)))
                .zip(dv.par_chunks_mut(seq.max(1)))
                .zip(probs.par_chunks(pseq.max(1)))
                .enumerate()
                .for_each(|(i, (((dq, dk), dv), p))| {
                    let r = i * seq..(i + 1) * seq;
                    let ins = (&q[r.clone()], &k[r.clone()], &v[r.clone()], &g[r]);
                    backward_seq(z, ins, p, (dq, dk, dv));
                });
        })?;
        Ok((
            crate::grad_for(q, dq)?,
            crate::grad_for(k, dk)?,
            crate::grad_for(v, dv)?,
        ))
    }
}
