//! 2x2, stride-2 max-pooling on the CPU (f32), forward and backward in one
//! pass each, parallel over planes.
//!
//! Candle's backward pass for `max_pool2d` takes seven tensor ops (upsample
//! the output, compare, convert, average-pool the mask, multiply, upsample
//! the gradient, multiply), each a single-threaded pass over the input.
//! [`max_pool2`] keeps Candle's gradient exactly, so that a model trains to
//! the same numbers with either: each input equal to its window's maximum
//! receives the output gradient times (number of such inputs in the
//! window) / 4. (PyTorch instead routes the whole gradient to one maximum;
//! Candle's convention is kept here on purpose, see ARCHITECTURE.md.)

use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result,
    Shape, Tensor,
};

/// 2x2 max-pool with stride 2 of `x` (N, C, H, W), H and W even. The fused
/// op on CPU f32 tensors; Candle's `max_pool2d` elsewhere.
pub fn max_pool2(x: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        return x.max_pool2d(2);
    }
    // The op refuses odd sizes itself (`planes`).
    x.contiguous()?.apply_op1(MaxPool2)
}

struct MaxPool2;

/// (x, y, dL/dy) -> dL/dx.
struct MaxPool2Grad;

/// (planes, H, W) of an (N, C, H, W) layout whose H and W are even, so
/// that the 2x2 windows tile every plane exactly.
fn planes(l: &Layout) -> Result<(usize, usize, usize)> {
    let (n, c, h, w) = l.shape().dims4()?;
    if h % 2 == 1 || w % 2 == 1 {
        candle_core::bail!(
            "max_pool2: height and width must be even, got {:?}",
            l.dims()
        );
    }
    Ok((n * c, h, w))
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    crate::cpu_f32(s, l, "max_pool2", what)
}

impl CustomOp1 for MaxPool2 {
    fn name(&self) -> &'static str {
        "selfsup-max-pool2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "the input")?;
        let (np, h, w) = planes(l)?;
        let (ho, wo) = (h / 2, w / 2);
        // SAFETY: each plane's output is ho rows of wo values, every one
        // written by the loops below.
        let y = unsafe {
            crate::par_uninit(np * ho * wo, ho * wo, |p, out| {
                let inp = &x[p * h * w..(p + 1) * h * w];
                for oy in 0..ho {
                    let (r0, r1) = (&inp[2 * oy * w..], &inp[(2 * oy + 1) * w..]);
                    for (ox, o) in out[oy * wo..(oy + 1) * wo].iter_mut().enumerate() {
                        let a = r0[2 * ox].max(r0[2 * ox + 1]);
                        o.write(a.max(r1[2 * ox].max(r1[2 * ox + 1])));
                    }
                }
            })
        };
        let (n, c, _, _) = l.shape().dims4()?;
        Ok((CpuStorage::F32(y), Shape::from((n, c, ho, wo))))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, gy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op3_no_bwd(
            y,
            &gy.contiguous()?,
            &MaxPool2Grad,
        )?))
    }
}

impl CustomOp3 for MaxPool2Grad {
    fn name(&self) -> &'static str {
        "selfsup-max-pool2-grad"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sy: &CpuStorage,
        ly: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(sx, lx, "the input")?;
        let y = slice(sy, ly, "the output")?;
        let g = slice(sg, lg, "the gradient")?;
        let (np, h, w) = planes(lx)?;
        let (ho, wo) = (h / 2, w / 2);
        let plane_out = ho * wo;
        // SAFETY: H and W are even (`planes`), so the 2x2 windows tile each
        // plane and the loops write every one of its h·w values.
        let dx = unsafe {
            crate::par_uninit(np * h * w, h * w, |p, d| {
                let inp = &x[p * h * w..(p + 1) * h * w];
                let (out, grad) = (
                    &y[p * plane_out..(p + 1) * plane_out],
                    &g[p * plane_out..(p + 1) * plane_out],
                );
                for oy in 0..ho {
                    for ox in 0..wo {
                        let m = out[oy * wo + ox];
                        let at = [
                            2 * oy * w + 2 * ox,
                            2 * oy * w + 2 * ox + 1,
                            (2 * oy + 1) * w + 2 * ox,
                            (2 * oy + 1) * w + 2 * ox + 1,
                        ];
                        let ties = at.iter().filter(|&&i| inp[i] == m).count();
                        // Candle's (gradient · ties / 4) on each maximum, 0
                        // elsewhere.
                        let share = grad[oy * wo + ox] * (ties as f32 / 4.0);
                        for i in at {
                            d[i].write(if inp[i] == m { share } else { 0.0 });
                        }
                    }
                }
            })
        };
        Ok((CpuStorage::F32(dx), lx.shape().clone()))
    }
}

/// Global average pool (N, C, H, W) -> (N, C), `x.mean(3).mean(2)`: the
/// forward pass is Candle's (same values), the backward pass one parallel
/// pass that writes each input's gradient `(g · (1/H)) · (1/W)` — the
/// value Candle's chain of broadcasts, affine maps and adds onto zeros
/// computes — instead of four passes over the input. CPU f32 only; the
/// plain Candle ops elsewhere.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let mean = |t: &Tensor| t.mean(3)?.mean(2);
    if !x.device().is_cpu() || x.dtype() != DType::F32 || !x.track_op() {
        return mean(x);
    }
    let y = mean(&x.detach())?;
    x.apply_op2(&y, GapGrad { h, w })
}

/// (x, its precomputed mean) -> the mean, differentiable in x.
struct GapGrad {
    h: usize,
    w: usize,
}

impl CustomOp2 for GapGrad {
    fn name(&self) -> &'static str {
        "selfsup-global-avg-pool"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        sy: &CpuStorage,
        ly: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((sy.try_clone(ly)?, ly.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g: Vec<f32> = g.flatten_all()?.to_vec1()?;
        let plane = self.h * self.w;
        // Candle divides by the count as an affine map with the f64
        // reciprocal rounded to f32.
        let (inv_h, inv_w) = ((1.0 / self.h as f64) as f32, (1.0 / self.w as f64) as f32);
        // SAFETY: plane `i` is filled with input `i`'s gradient.
        let dx = unsafe {
            crate::par_uninit(g.len() * plane, plane, |i, d| {
                let v = (g[i] * inv_h + 0.0) * inv_w + 0.0;
                for o in d {
                    o.write(v);
                }
            })
        };
        Ok((Some(Tensor::from_vec(dx, x.dims(), x.device())?), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Output and input gradient (of `Σ y·w`) through `pool`.
    fn run(
        x: &[f32],
        dims: (usize, usize, usize, usize),
        pool: fn(&Tensor) -> Tensor,
    ) -> (Vec<f32>, Vec<f32>) {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::from_vec(x.to_vec(), dims, &dev).unwrap()).unwrap();
        let y = pool(x.as_tensor());
        let n = y.elem_count();
        let w: Vec<f32> = (0..n).map(|i| (i as f32 * 0.61).cos()).collect();
        let w = Tensor::from_vec(w, y.dims(), &dev).unwrap();
        let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (flat(&y), flat(g.get(&x).unwrap()))
    }

    #[test]
    fn matches_candles_max_pool_and_its_gradient_ties_included() {
        let dims = (2, 3, 6, 8);
        let n = 2 * 3 * 6 * 8;
        // Rounded values: many windows hold two, three or four equal maxima.
        let x: Vec<f32> = (0..n)
            .map(|i| ((i as f32 * 1.7).sin() * 2.0).round())
            .collect();
        let ours = run(&x, dims, |t| max_pool2(t).unwrap());
        let stock = run(&x, dims, |t| t.max_pool2d(2).unwrap());
        assert_eq!(ours, stock);
        // Ties happened, so the tie rule was exercised.
        let shares: std::collections::BTreeSet<u32> =
            ours.1.iter().map(|v| v.abs().to_bits()).collect();
        assert!(shares.len() > 3);
        let gap = run(&x, dims, |t| global_avg_pool(t).unwrap());
        let stock_gap = run(&x, dims, |t| t.mean(3).unwrap().mean(2).unwrap());
        assert_eq!(gap, stock_gap);
        let odd = Tensor::zeros((1, 1, 5, 4), DType::F32, &Device::Cpu).unwrap();
        let e = max_pool2(&odd).unwrap_err().to_string();
        assert!(e.contains("even"), "{e}");
    }
}
