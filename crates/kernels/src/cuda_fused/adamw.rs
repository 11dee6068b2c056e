//! The AdamW step on CUDA: one launch per parameter, in place, in
//! `candle_nn::AdamW`'s order of operations (Candle's version is eleven
//! launches and three copies per parameter).

use super::{elementwise, func, view};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaStorage, Layout, Result};

/// Updates the parameter `theta` and its moments `m`, `v` from the
/// gradient `g`; `c` holds the step's constants in the kernel's order
/// (β1, 1-β1, β2, 1-β2, 1/(1-β1^t), 1/(1-β2^t), 1-lr·λ, ε, lr).
pub(crate) fn step(
    (theta, lt): (&mut CudaStorage, &Layout),
    (g, lg): (&CudaStorage, &Layout),
    m: &mut CudaSlice<f32>,
    v: &mut CudaSlice<f32>,
    c: [f32; 9],
) -> Result<()> {
    let dev = theta.device.clone();
    let Some((a, b)) = lt.contiguous_offsets() else {
        candle_core::bail!("adamw: the parameter must be contiguous")
    };
    let g = view(g, lg, "the gradient")?;
    let n = b - a;
    if g.len() != n || m.len() != n || v.len() != n {
        candle_core::bail!(
            "adamw: {n} parameters, {} gradients, {} moments",
            g.len(),
            m.len()
        );
    }
    let mut t = theta.as_cuda_slice_mut::<f32>()?.slice_mut(a..b);
    let n64 = n as i64;
    let f = func!(dev, "adamw_step")?;
    let mut bld = f.builder();
    bld.arg(&mut t).arg(&g).arg(m).arg(v).arg(&n64);
    for k in &c {
        bld.arg(k);
    }
    // SAFETY: the four buffers are `n` long.
    unsafe { bld.launch(elementwise(n)) }.w()?;
    Ok(())
}
