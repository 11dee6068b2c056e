//! AdamW with a fused CPU update: one pass over each parameter.
//!
//! `candle_nn::AdamW` updates a parameter with eleven tensor ops (scale,
//! add, square, sqrt, divide, ...), each a full pass that allocates its
//! result, then three copies back into the variables. [`AdamW`] computes
//! the same expression element by element in one pass over the parameter,
//! its gradient and its two moments, in place, vectorised for the CPU's
//! widest SIMD ([`crate::simd`]) and parallel over large parameters; on
//! CUDA (with the `cuda` feature) the same expression is one kernel launch
//! per parameter, its moments kept on the device. Every
//! element goes through the same f32 operations in the same order as
//! Candle's version (constants rounded to f32 as Candle's affine ops round
//! them), so the two optimizers produce bit-identical parameters on the
//! CPU. Other devices and dtypes are updated by `candle_nn::AdamW` itself.

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, Layout, Result, Var};
use candle_nn::{Optimizer, ParamsAdamW};
use rayon::prelude::*;
use std::sync::Mutex;

/// A parameter's first and second moments: host vectors for a CPU
/// parameter, device buffers for a CUDA one.
enum Buffers {
    Host(Vec<f32>, Vec<f32>),
    #[cfg(feature = "cuda")]
    Device(
        candle_core::cuda_backend::cudarc::driver::CudaSlice<f32>,
        candle_core::cuda_backend::cudarc::driver::CudaSlice<f32>,
    ),
}

impl std::fmt::Debug for Buffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Host(m, _) => write!(f, "Host({} moments)", m.len()),
            #[cfg(feature = "cuda")]
            Self::Device(m, _) => write!(f, "Device({} moments)", m.len()),
        }
    }
}

type Moments = Mutex<Buffers>;

fn lock_moments(m: &Moments) -> Result<std::sync::MutexGuard<'_, Buffers>> {
    m.lock()
        .map_err(|_| candle_core::Error::Msg("adamw: poisoned moments".into()))
}

/// Elements per parallel task of one parameter's update.
const CHUNK: usize = 1 << 14;

/// The per-element constants of one step, rounded to f32 as Candle's
/// `affine` rounds them.
#[derive(Debug, Clone, Copy)]
struct Consts {
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    scale_m: f32,
    scale_v: f32,
    decay: f32,
    eps: f32,
    lr: f32,
}

impl Consts {
    fn new(p: &ParamsAdamW, step: usize) -> Self {
        let t = step as i32;
        Self {
            beta1: p.beta1 as f32,
            one_minus_beta1: (1.0 - p.beta1) as f32,
            beta2: p.beta2 as f32,
            one_minus_beta2: (1.0 - p.beta2) as f32,
            scale_m: (1.0 / (1.0 - p.beta1.powi(t))) as f32,
            scale_v: (1.0 / (1.0 - p.beta2.powi(t))) as f32,
            decay: (1.0 - p.lr * p.weight_decay) as f32,
            eps: p.eps as f32,
            lr: p.lr as f32,
        }
    }
}

/// One AdamW step over matching slices of parameters, gradients and
/// moments, in Candle's order of operations (the `+ 0.0` are Candle's
/// affine offsets, kept so that even the sign of a zero matches).
#[inline(always)]
fn update(theta: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: Consts) {
    let n = theta.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    for i in 0..n {
        let gi = g[i];
        let nm = (m[i] * c.beta1 + 0.0) + (gi * c.one_minus_beta1 + 0.0);
        let nv = (v[i] * c.beta2 + 0.0) + ((gi * gi) * c.one_minus_beta2 + 0.0);
        let m_hat = nm * c.scale_m + 0.0;
        let v_hat = nv * c.scale_v + 0.0;
        let adjusted = m_hat / (v_hat.sqrt() + c.eps);
        theta[i] = (theta[i] * c.decay + 0.0) - (adjusted * c.lr + 0.0);
        m[i] = nm;
        v[i] = nv;
    }
}

/// [`update`] over whole buffers: parallel in chunks, each chunk at the
/// CPU's widest SIMD.
fn update_all(theta: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: Consts) {
    if theta.len() <= CHUNK {
        crate::simd::dispatch(
            #[inline(always)]
            || update(theta, g, m, v, c),
        );
        return;
    }
    theta
        .par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((t, g), m), v)| {
            crate::simd::dispatch(
                #[inline(always)]
                || update(t, g, m, v, c),
            )
        });
}

/// The in-place op: the parameter is the mutated operand, the gradient the
/// other; the moments live here.
struct FusedStep<'a> {
    moments: &'a Moments,
    consts: Consts,
}

impl InplaceOp2 for FusedStep<'_> {
    fn name(&self) -> &'static str {
        "selfsup-adamw"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (Some((a, b)), Some((ga, gb))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("adamw: parameter and gradient must be contiguous")
        };
        let g = &s2.as_slice::<f32>()?[ga..gb];
        let theta = match s1 {
            CpuStorage::F32(d) => &mut d[a..b],
            _ => candle_core::bail!("adamw: the fused step takes f32 parameters"),
        };
        let mut guard = lock_moments(self.moments)?;
        #[allow(irrefutable_let_patterns)]
        let Buffers::Host(m, v) = &mut *guard
        else {
            candle_core::bail!("adamw: a CPU parameter with device moments")
        };
        if g.len() != theta.len() || m.len() != theta.len() {
            candle_core::bail!(
                "adamw: {} parameters, {} gradients, {} moments",
                theta.len(),
                g.len(),
                m.len()
            );
        }
        update_all(theta, g, m, v, self.consts);
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<()> {
        let mut guard = lock_moments(self.moments)?;
        let Buffers::Device(m, v) = &mut *guard else {
            candle_core::bail!("adamw: a CUDA parameter with host moments")
        };
        let c = self.consts;
        let consts = [
            c.beta1,
            c.one_minus_beta1,
            c.beta2,
            c.one_minus_beta2,
            c.scale_m,
            c.scale_v,
            c.decay,
            c.eps,
            c.lr,
        ];
        crate::cuda_fused::adamw::step((s1, l1), (s2, l2), m, v, consts)
    }
}

/// Zeroed moments for `var`: on its device when that is CUDA.
fn zero_moments(var: &Var) -> Result<Buffers> {
    let n = var.elem_count();
    match var.device() {
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(d) => Ok(Buffers::Device(d.alloc_zeros(n)?, d.alloc_zeros(n)?)),
        _ => Ok(Buffers::Host(vec![0.0; n], vec![0.0; n])),
    }
}

/// Whether the fused step covers `var`: f32 on the CPU, or on CUDA in a
/// build with the `cuda` feature.
fn fused_covers(var: &Var) -> bool {
    let cuda = cfg!(feature = "cuda") && var.device().is_cuda();
    var.dtype() == DType::F32 && (var.device().is_cpu() || cuda)
}

/// AdamW (decoupled weight decay on every parameter), the same algorithm
/// and defaults as `candle_nn::AdamW`, with a fused in-place update (CPU,
/// and CUDA in a `cuda` build). Parameters the fused step does not cover
/// (not f32, other devices) are handed to a `candle_nn::AdamW`, stepped in
/// lockstep.
#[derive(Debug)]
pub struct AdamW {
    /// f32 parameters the fused step covers and their moments.
    fused: Vec<(Var, Moments)>,
    /// Every other float parameter.
    rest: candle_nn::AdamW,
    /// How many parameters `rest` steps.
    rest_count: usize,
    step_t: usize,
    params: ParamsAdamW,
}

/// What [`AdamW::state`] returns: the step count and each f32 parameter's
/// first and second moments (copied to the host), in parameter order.
pub type AdamWState = (usize, Vec<(Vec<f32>, Vec<f32>)>);

impl AdamW {
    /// The parameters of this optimizer.
    pub fn params(&self) -> &ParamsAdamW {
        &self.params
    }

    /// The whole optimizer state, for a checkpoint to continue from; `None`
    /// when some parameters are ones the fused step does not cover
    /// (Candle's AdamW steps those, and its state cannot be read) or the
    /// device's moments could not be read.
    pub fn state(&self) -> Option<AdamWState> {
        if self.rest_count > 0 {
            return None;
        }
        let moments = self
            .fused
            .iter()
            .map(|(var, m)| host_moments(var, &*lock_moments(m).ok()?))
            .collect::<Option<Vec<_>>>()?;
        Some((self.step_t, moments))
    }

    /// Restores a [`AdamW::state`] taken from an optimizer over the same
    /// parameters.
    pub fn restore(&mut self, (step_t, moments): AdamWState) -> Result<()> {
        if moments.len() != self.fused.len() || self.rest_count > 0 {
            candle_core::bail!(
                "optimizer state for {} parameters, this optimizer has {}",
                moments.len(),
                self.fused.len() + self.rest_count
            );
        }
        for ((var, m), saved) in self.fused.iter().zip(moments) {
            let n = var.elem_count();
            if saved.0.len() != n || saved.1.len() != n {
                candle_core::bail!("optimizer state does not match a parameter of {n} elements");
            }
            *lock_moments(m)? = moments_on(var, saved)?;
        }
        self.step_t = step_t;
        Ok(())
    }
}

impl Optimizer for AdamW {
    type Config = ParamsAdamW;

    fn new(vars: Vec<Var>, params: ParamsAdamW) -> Result<Self> {
        let (fused, rest): (Vec<Var>, Vec<Var>) = vars
            .into_iter()
            .filter(|v| v.dtype().is_float())
            .partition(fused_covers);
        let fused = fused
            .into_iter()
            .map(|var| {
                let moments = Mutex::new(zero_moments(&var)?);
                Ok((var, moments))
            })
            .collect::<Result<_>>()?;
        let rest_count = rest.len();
        Ok(Self {
            fused,
            rest: candle_nn::AdamW::new(rest, params.clone())?,
            rest_count,
            step_t: 0,
            params,
        })
    }

    fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step_t += 1;
        let consts = Consts::new(&self.params, self.step_t);
        for (var, moments) in &self.fused {
            let Some(g) = grads.get(var) else { continue };
            let g = g.to_dtype(DType::F32)?.contiguous()?;
            let op = FusedStep { moments, consts };
            var.as_tensor().inplace_op2(&g, &op)?;
        }
        self.rest.step(grads)
    }

    fn learning_rate(&self) -> f64 {
        self.params.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
        self.rest.set_learning_rate(lr);
    }
}

/// A parameter's moments as host vectors (copied from the device).
fn host_moments(_var: &Var, b: &Buffers) -> Option<(Vec<f32>, Vec<f32>)> {
    match b {
        Buffers::Host(m, v) => Some((m.clone(), v.clone())),
        #[cfg(feature = "cuda")]
        Buffers::Device(m, v) => match _var.device() {
            candle_core::Device::Cuda(d) => Some((d.clone_dtoh(m).ok()?, d.clone_dtoh(v).ok()?)),
            _ => None,
        },
    }
}

/// Saved host moments as `var`'s buffers (copied to its device).
fn moments_on(var: &Var, (m, v): (Vec<f32>, Vec<f32>)) -> Result<Buffers> {
    match var.device() {
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(d) => Ok(Buffers::Device(d.clone_htod(&m)?, d.clone_htod(&v)?)),
        _ => Ok(Buffers::Host(m, v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// Parameters of several sizes (one above [`CHUNK`], so the parallel
    /// path runs; one f64, so the composed path runs; one that never gets
    /// a gradient), and a loss over all but the last.
    fn setup() -> (Vec<Var>, impl Fn(&[Var]) -> Tensor) {
        let dev = Device::Cpu;
        let make = |n: usize, seed: f64| {
            let v: Vec<f32> = (0..n)
                .map(|i| ((i as f64 * 0.37 + seed).sin()) as f32)
                .collect();
            Var::from_tensor(&Tensor::from_vec(v, n, &dev).unwrap()).unwrap()
        };
        let wide = Var::from_tensor(
            &Tensor::arange(0f64, 5.0, &dev)
                .unwrap()
                .affine(0.3, -0.7)
                .unwrap(),
        )
        .unwrap();
        let vars = vec![make(13, 0.1), make(3 * CHUNK + 5, 0.2), wide, make(4, 0.3)];
        let loss = |v: &[Var]| {
            let a = v[0].as_tensor().sqr().unwrap().sum_all().unwrap();
            let b = v[1].as_tensor().sin().unwrap().sum_all().unwrap();
            let c = v[2]
                .as_tensor()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            ((a + b).unwrap() + c).unwrap()
        };
        (vars, loss)
    }

    #[test]
    fn the_fused_step_equals_candles_adamw_bit_for_bit() {
        let p = ParamsAdamW {
            lr: 3e-2,
            weight_decay: 0.1,
            ..Default::default()
        };
        let (ours, loss) = setup();
        let (theirs, _) = setup();
        let mut a = AdamW::new(ours.clone(), p.clone()).unwrap();
        let mut b = candle_nn::AdamW::new(theirs.clone(), p).unwrap();
        for step in 0..5 {
            a.set_learning_rate(3e-2 / (step + 1) as f64);
            b.set_learning_rate(3e-2 / (step + 1) as f64);
            a.backward_step(&loss(&ours)).unwrap();
            b.backward_step(&loss(&theirs)).unwrap();
        }
        let values = |v: &Var| {
            let t = v.as_tensor().to_dtype(DType::F64).unwrap();
            t.to_vec1::<f64>().unwrap()
        };
        for (x, y) in ours.iter().zip(&theirs) {
            assert_eq!(values(x), values(y));
        }
        // The parameters moved, and the one without a gradient did not.
        let last: Vec<f32> = ours[3].as_tensor().to_vec1().unwrap();
        assert_eq!(last, setup().0[3].as_tensor().to_vec1::<f32>().unwrap());
        assert_ne!(
            ours[0].as_tensor().to_vec1::<f32>().unwrap(),
            setup().0[0].as_tensor().to_vec1::<f32>().unwrap()
        );
        assert_eq!(a.learning_rate(), 3e-2 / 5.0);
    }
}
