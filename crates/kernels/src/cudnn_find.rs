//! Measured algorithm choice for the cuDNN convolutions: cuDNN runs every
//! algorithm that fits on the shape once (`cudnnFind...Algorithm`) and the
//! fastest is kept for that shape, as PyTorch does with
//! `torch.backends.cudnn.benchmark = True`. The safe cudarc wrappers only
//! offer the heuristic choice, so this file talks to cuDNN's C API through
//! its own handle (on the device's stream) and descriptors.

use crate::cpu_conv::Geo;
use crate::cudnn_conv::{Algo, Direction};
use cudarc::cudnn::{result, sys};
use cudarc::driver::CudaStream;

fn err(e: impl std::fmt::Debug) -> candle_core::Error {
    candle_core::Error::Msg(format!("cuDNN algorithm search: {e:?}"))
}

/// A cuDNN handle of its own, bound to the device's stream.
pub(crate) struct Finder(sys::cudnnHandle_t);

impl Drop for Finder {
    fn drop(&mut self) {
        // SAFETY: the handle was created by `Finder::new` and is dropped once.
        let _ = unsafe { result::destroy_handle(self.0) };
    }
}

/// The raw descriptors of one convolution, destroyed on drop.
struct Raw {
    x: sys::cudnnTensorDescriptor_t,
    w: sys::cudnnFilterDescriptor_t,
    y: sys::cudnnTensorDescriptor_t,
    conv: sys::cudnnConvolutionDescriptor_t,
}

impl Drop for Raw {
    fn drop(&mut self) {
        // SAFETY: each descriptor was created in `Raw::new` and is dropped once.
        unsafe {
            let _ = result::destroy_tensor_descriptor(self.x);
            let _ = result::destroy_filter_descriptor(self.w);
            let _ = result::destroy_tensor_descriptor(self.y);
            let _ = result::destroy_convolution_descriptor(self.conv);
        }
    }
}

fn c_int(v: usize) -> crate::Result<i32> {
    i32::try_from(v).map_err(|_| err(format!("size {v} exceeds cuDNN's 32-bit sizes")))
}

impl Raw {
    fn new(g: &Geo, groups: usize, tf32: bool) -> crate::Result<Self> {
        use sys::cudnnDataType_t::CUDNN_DATA_FLOAT as F32;
        use sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW as NCHW;
        let raw = Raw {
            x: result::create_tensor_descriptor().map_err(err)?,
            w: result::create_filter_descriptor().map_err(err)?,
            y: result::create_tensor_descriptor().map_err(err)?,
            conv: result::create_convolution_descriptor().map_err(err)?,
        };
        let x = [c_int(g.n)?, c_int(g.cin)?, c_int(g.h)?, c_int(g.w)?];
        let w = [
            c_int(g.cout)?,
            c_int(g.cin / groups)?,
            c_int(g.kh)?,
            c_int(g.kw)?,
        ];
        let y = [c_int(g.n)?, c_int(g.cout)?, c_int(g.ho)?, c_int(g.wo)?];
        let (pad, stride) = (c_int(g.pad)?, c_int(g.stride)?);
        let math = if tf32 {
            sys::cudnnMathType_t::CUDNN_DEFAULT_MATH
        } else {
            sys::cudnnMathType_t::CUDNN_FMA_MATH
        };
        // SAFETY: the descriptors were just created; the sizes are checked.
        unsafe {
            result::set_tensor4d_descriptor(raw.x, NCHW, F32, x).map_err(err)?;
            result::set_filter4d_descriptor(raw.w, F32, NCHW, w).map_err(err)?;
            result::set_tensor4d_descriptor(raw.y, NCHW, F32, y).map_err(err)?;
            let mode = sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION;
            result::set_convolution2d_descriptor(
                raw.conv, pad, pad, stride, stride, 1, 1, mode, F32,
            )
            .map_err(err)?;
            result::set_convolution_math_type(raw.conv, math).map_err(err)?;
            result::set_convolution_group_count(raw.conv, c_int(groups)?).map_err(err)?;
        }
        Ok(raw)
    }
}

/// The first successful entry of cuDNN's timed list (fastest first): its
/// algorithm and workspace size.
macro_rules! fastest {
    ($perf:expr, $count:expr, $wrap:path) => {
        $perf[..$count.max(0) as usize]
            .iter()
            .find(|p| p.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS)
            .map(|p| ($wrap(p.algo), p.memory))
    };
}

impl Finder {
    pub(crate) fn new(stream: &CudaStream) -> crate::Result<Self> {
        let handle = result::create_handle().map_err(err)?;
        let finder = Finder(handle);
        // SAFETY: the stream outlives the handle (both belong to the device,
        // which the caller's state keeps alive).
        unsafe { result::set_stream(handle, stream.cu_stream() as _) }.map_err(err)?;
        Ok(finder)
    }

    /// Times every algorithm for `dir` on the convolution `g` and returns
    /// the fastest that ran, with its workspace size; `None` if none ran.
    pub(crate) fn find(
        &self,
        dir: Direction,
        (g, groups): (&Geo, usize),
        tf32: bool,
    ) -> crate::Result<Option<(Algo, usize)>> {
        let d = Raw::new(g, groups, tf32)?;
        let mut count = 0i32;
        // SAFETY (all three): the descriptors are valid, the output arrays
        // hold `N` entries, and cuDNN allocates its own buffers.
        let found = unsafe {
            match dir {
                Direction::Forward => {
                    const N: usize = 8;
                    let mut perf = [std::mem::zeroed::<sys::cudnnConvolutionFwdAlgoPerf_t>(); N];
                    sys::cudnnFindConvolutionForwardAlgorithm(
                        self.0,
                        d.x,
                        d.w,
                        d.conv,
                        d.y,
                        N as i32,
                        &mut count,
                        perf.as_mut_ptr(),
                    )
                    .result()
                    .map_err(err)?;
                    fastest!(perf, count, Algo::Fwd)
                }
                Direction::InputGrad => {
                    const N: usize = 6;
                    let mut perf =
                        [std::mem::zeroed::<sys::cudnnConvolutionBwdDataAlgoPerf_t>(); N];
                    sys::cudnnFindConvolutionBackwardDataAlgorithm(
                        self.0,
                        d.w,
                        d.y,
                        d.conv,
                        d.x,
                        N as i32,
                        &mut count,
                        perf.as_mut_ptr(),
                    )
                    .result()
                    .map_err(err)?;
                    fastest!(perf, count, Algo::Data)
                }
                Direction::WeightGrad => {
                    const N: usize = 7;
                    let mut perf =
                        [std::mem::zeroed::<sys::cudnnConvolutionBwdFilterAlgoPerf_t>(); N];
                    sys::cudnnFindConvolutionBackwardFilterAlgorithm(
                        self.0,
                        d.x,
                        d.y,
                        d.conv,
                        d.w,
                        N as i32,
                        &mut count,
                        perf.as_mut_ptr(),
                    )
                    .result()
                    .map_err(err)?;
                    fastest!(perf, count, Algo::Filter)
                }
            }
        };
        Ok(found)
    }
}
