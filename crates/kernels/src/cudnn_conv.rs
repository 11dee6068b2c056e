//! Dense f32 convolutions on CUDA through cuDNN: the forward pass, the
//! input gradient and the weight gradient, each one cuDNN call.
//!
//! Candle's CUDA `conv2d` is im2col + cuBLAS (or, with its `cudnn` feature,
//! a cuDNN forward that asks for an algorithm and allocates a fresh
//! workspace on every call), and its backward pass goes through a naive
//! transposed-convolution kernel. Here each of the three directions picks
//! an algorithm once per shape and keeps it — cuDNN's heuristic pick, or,
//! where [`crate::set_conv_algo_search`] asked for it, the fastest of
//! cuDNN's algorithms timed on that shape (`cudnn_find`) — and one
//! workspace per device, grown to the largest request, is reused by every
//! call (the calls are ordered on the device's stream, so reuse is safe).
//!
//! TF32 tensor-core math is allowed unless [`crate::set_conv_tf32`] turned
//! it off: PyTorch's default for cuDNN convolutions
//! (`torch.backends.cudnn.allow_tf32 = True`), and its strict-f32 setting
//! when off.

use candle_core::cuda_backend::DeviceId;
use candle_core::{CudaDevice, CudaStorage, Layout, Result};
use cudarc::cudnn::{
    sys, ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn,
    FilterDescriptor, TensorDescriptor,
};
use cudarc::driver::{CudaSlice, CudaView};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use crate::cpu_conv::Geo;

/// Which of the three convolutions a cached algorithm is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Direction {
    /// (x, w) -> y.
    Forward,
    /// (dy, w) -> dx.
    InputGrad,
    /// (x, dy) -> dw.
    WeightGrad,
}

/// A shape (with groups), direction, math mode and search mode: what an
/// algorithm is chosen for.
type Key = (Direction, [usize; 10], bool, bool);

/// The algorithm chosen for one key (the enum of its direction).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Algo {
    Fwd(sys::cudnnConvolutionFwdAlgo_t),
    Data(sys::cudnnConvolutionBwdDataAlgo_t),
    Filter(sys::cudnnConvolutionBwdFilterAlgo_t),
}

/// Per device: the cuDNN handle (bound to the device's stream), the chosen
/// algorithms and the shared workspace.
struct State {
    cudnn: Arc<Cudnn>,
    finder: crate::cudnn_find::Finder,
    algos: HashMap<Key, (Algo, usize)>,
    workspace: Option<CudaSlice<u8>>,
}

// cuDNN handles are neither Send nor Sync: one per thread and device, as
// Candle keeps its own.
thread_local! {
    static STATES: RefCell<HashMap<DeviceId, State>> = RefCell::new(HashMap::new());
}

fn err(e: impl std::fmt::Debug) -> candle_core::Error {
    candle_core::Error::Msg(format!("cuDNN convolution: {e:?}"))
}

fn i32s<const N: usize>(v: [usize; N]) -> Result<[i32; N]> {
    let mut out = [0i32; N];
    for (o, d) in out.iter_mut().zip(v) {
        *o = i32::try_from(d).map_err(|_| err(format!("size {d} exceeds cuDNN's 32-bit sizes")))?;
    }
    Ok(out)
}

/// The descriptors of one convolution: input, kernel, output, convolution.
struct Descs {
    x: TensorDescriptor<f32>,
    w: FilterDescriptor<f32>,
    y: TensorDescriptor<f32>,
    conv: ConvDescriptor<f32>,
}

fn descriptors(cudnn: &Arc<Cudnn>, g: &Geo, groups: usize, tf32: bool) -> Result<Descs> {
    use sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW as NCHW;
    let x = cudnn
        .create_4d_tensor::<f32>(NCHW, i32s([g.n, g.cin, g.h, g.w])?)
        .map_err(err)?;
    let w = cudnn
        .create_4d_filter::<f32>(NCHW, i32s([g.cout, g.cin / groups, g.kh, g.kw])?)
        .map_err(err)?;
    let y = cudnn
        .create_4d_tensor::<f32>(NCHW, i32s([g.n, g.cout, g.ho, g.wo])?)
        .map_err(err)?;
    let [pad, stride] = i32s([g.pad, g.stride])?;
    let mut conv = cudnn
        .create_conv2d::<f32>(
            [pad, pad],
            [stride, stride],
            [1, 1],
            sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
        )
        .map_err(err)?;
    let math = if tf32 {
        sys::cudnnMathType_t::CUDNN_DEFAULT_MATH
    } else {
        sys::cudnnMathType_t::CUDNN_FMA_MATH
    };
    conv.set_math_type(math).map_err(err)?;
    if groups > 1 {
        conv.set_group_count(i32s([groups])?[0]).map_err(err)?;
    }
    Ok(Descs { x, w, y, conv })
}

/// The algorithm and workspace size for `dir` on these descriptors, from
/// cuDNN's heuristics.
fn choose(dir: Direction, d: &Descs) -> Result<(Algo, usize)> {
    Ok(match dir {
        Direction::Forward => {
            let op = ConvForward {
                conv: &d.conv,
                x: &d.x,
                w: &d.w,
                y: &d.y,
            };
            let a = op.pick_algorithm().map_err(err)?;
            (Algo::Fwd(a), op.get_workspace_size(a).map_err(err)?)
        }
        Direction::InputGrad => {
            let op = ConvBackwardData {
                conv: &d.conv,
                dx: &d.x,
                w: &d.w,
                dy: &d.y,
            };
            let a = op.pick_algorithm().map_err(err)?;
            (Algo::Data(a), op.get_workspace_size(a).map_err(err)?)
        }
        Direction::WeightGrad => {
            let op = ConvBackwardFilter {
                conv: &d.conv,
                x: &d.x,
                dw: &d.w,
                dy: &d.y,
            };
            let a = op.pick_algorithm().map_err(err)?;
            (Algo::Filter(a), op.get_workspace_size(a).map_err(err)?)
        }
    })
}

fn view<'a>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, f32>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.as_cuda_slice::<f32>()?.slice(a..b)),
        None => Err(err(format!("the {what} must be contiguous"))),
    }
}

/// Runs one direction of the convolution `g` (in `groups` channel groups)
/// on two contiguous operands
/// (`a`, `b`: (x, w), (dy, w) or (x, dy)) and returns the result, (B, C_out,
/// H_out, W_out), (B, C_in, H, W) or (C_out, C_in, kH, kW) as the direction
/// gives.
pub(crate) fn run(
    dir: Direction,
    (g, groups): (&Geo, usize),
    (a, la): (&CudaStorage, &Layout),
    (b, lb): (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let dev: &CudaDevice = &a.device;
    let tf32 = crate::conv_tf32();
    let out_len = match dir {
        Direction::Forward => g.n * g.cout * g.ho * g.wo,
        Direction::InputGrad => g.n * g.cin * g.h * g.w,
        Direction::WeightGrad => g.cout * (g.cin / groups) * g.kh * g.kw,
    };
    let (av, bv) = (
        view(a, la, "first operand")?,
        view(b, lb, "second operand")?,
    );
    // SAFETY: cuDNN writes every element (beta = 0).
    let mut out = unsafe { dev.alloc::<f32>(out_len)? };
    STATES.with(|states| -> Result<()> {
        let mut states = states.borrow_mut();
        let state = match states.entry(dev.id()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(State {
                cudnn: Cudnn::new(dev.cuda_stream()).map_err(err)?,
                finder: crate::cudnn_find::Finder::new(&dev.cuda_stream())?,
                algos: HashMap::new(),
                workspace: None,
            }),
        };
        let d = descriptors(&state.cudnn, g, groups, tf32)?;
        let sizes = [
            g.n, g.cin, g.h, g.w, g.cout, g.kh, g.kw, g.stride, g.pad, groups,
        ];
        let measured = crate::conv_algo_measured();
        let key = (dir, sizes, tf32, measured);
        let (algo, ws) = match state.algos.get(&key) {
            Some(found) => *found,
            None => {
                let timed = if measured {
                    state.finder.find(dir, (g, groups), tf32)?
                } else {
                    None
                };
                let chosen = match timed {
                    Some(c) => c,
                    None => choose(dir, &d)?,
                };
                state.algos.insert(key, chosen);
                chosen
            }
        };
        if ws > 0 && state.workspace.as_ref().is_none_or(|w| w.len() < ws) {
            // SAFETY: a workspace is scratch space cuDNN writes before reading.
            state.workspace = Some(unsafe { dev.alloc::<u8>(ws)? });
        }
        let workspace = if ws > 0 {
            state.workspace.as_mut()
        } else {
            None
        };
        launch(algo, &d, workspace, &av, &bv, &mut out)
    })?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

fn launch(
    algo: Algo,
    d: &Descs,
    workspace: Option<&mut CudaSlice<u8>>,
    a: &CudaView<f32>,
    b: &CudaView<f32>,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    // SAFETY (all three): the operands are contiguous f32 NCHW buffers of
    // the sizes the descriptors were built from, and `out` is as long as
    // the result.
    unsafe {
        match algo {
            Algo::Fwd(al) => ConvForward {
                conv: &d.conv,
                x: &d.x,
                w: &d.w,
                y: &d.y,
            }
            .launch(al, workspace, (1f32, 0f32), a, b, out),
            Algo::Data(al) => ConvBackwardData {
                conv: &d.conv,
                dx: &d.x,
                w: &d.w,
                dy: &d.y,
            }
            .launch(al, workspace, (1f32, 0f32), out, b, a),
            Algo::Filter(al) => ConvBackwardFilter {
                conv: &d.conv,
                x: &d.x,
                dw: &d.w,
                dy: &d.y,
            }
            .launch(al, workspace, (1f32, 0f32), a, out, b),
        }
    }
    .map_err(err)
}

/// One direction of a cuDNN convolution as a Candle op on two operands:
/// (x, w) -> y, (dy, w) -> dL/dx or (x, dy) -> dL/dw. The forward
/// direction's backward pass is the other two.
pub(crate) struct Op {
    /// Which of the three.
    pub dir: Direction,
    /// The convolution's sizes.
    pub geo: Geo,
    /// Channel groups (1: dense).
    pub groups: usize,
}

impl Op {
    /// The forward convolution of `geo` in `groups` groups.
    pub(crate) fn forward(geo: Geo, groups: usize) -> Self {
        Self {
            dir: Direction::Forward,
            geo,
            groups,
        }
    }

    /// This convolution's op in direction `dir`.
    pub(crate) fn towards(&self, dir: Direction) -> Self {
        Self { dir, ..*self }
    }

    fn out_shape(&self) -> candle_core::Shape {
        let g = &self.geo;
        match self.dir {
            Direction::Forward => (g.n, g.cout, g.ho, g.wo).into(),
            Direction::InputGrad => (g.n, g.cin, g.h, g.w).into(),
            Direction::WeightGrad => (g.cout, g.cin / self.groups, g.kh, g.kw).into(),
        }
    }
}

impl candle_core::CustomOp2 for Op {
    fn name(&self) -> &'static str {
        match self.dir {
            Direction::Forward => "selfsup-cudnn-conv2d",
            Direction::InputGrad => "selfsup-cudnn-conv2d-input-grad",
            Direction::WeightGrad => "selfsup-cudnn-conv2d-weight-grad",
        }
    }

    crate::cuda_fused::cuda_only!(2);

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, candle_core::Shape)> {
        let out = run(self.dir, (&self.geo, self.groups), (s1, l1), (s2, l2))?;
        Ok((out, self.out_shape()))
    }

    fn bwd(
        &self,
        x: &candle_core::Tensor,
        w: &candle_core::Tensor,
        _res: &candle_core::Tensor,
        dy: &candle_core::Tensor,
    ) -> Result<(Option<candle_core::Tensor>, Option<candle_core::Tensor>)> {
        if self.dir != Direction::Forward {
            candle_core::bail!("{}: no second derivative", self.name())
        }
        let dy = dy.contiguous()?;
        let dx = x
            .track_op()
            .then(|| dy.apply_op2_no_bwd(w, &self.towards(Direction::InputGrad)))
            .transpose()?;
        let dw = w
            .track_op()
            .then(|| x.apply_op2_no_bwd(&dy, &self.towards(Direction::WeightGrad)))
            .transpose()?;
        Ok((dx, dw))
    }
}
