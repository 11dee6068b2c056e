//! Dense (groups = 1) f32 convolution on the CPU, NCHW, as im2col + GEMM per
//! group of images, with the input gradient as GEMM + col2im.
//!
//! Candle's CPU `conv2d` first transposes the whole input to NHWC on one
//! thread, then gathers im2col tiles and scatters every output value to its
//! NCHW place one at a time. Here each image's im2col matrix is built
//! straight from NCHW in (C_in·kh·kw, Ho·Wo) layout — for stride 1 every row
//! segment is a shifted copy of an input row — so that
//! `W (C_out, C_in·kh·kw) @ cols` *is* the image's NCHW output. Images with
//! small outputs are grouped so that each GEMM is at least
//! [`MIN_COLUMNS`] columns wide, and groups run in parallel.
//!
//! The input gradient is the transpose: `Wᵀ @ g` gives the gradient of the
//! im2col matrix, and col2im adds it back onto the input positions it was
//! read from. Unlike the dilated-gradient formulation, a stride-2 layer
//! costs no more than its forward pass.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;
use std::cell::RefCell;

/// A group of images is processed by one GEMM whose column count (images x
/// output positions) is at least this (when the batch allows).
const MIN_COLUMNS: usize = 256;

thread_local! {
    /// Two scratch buffers per thread for the im2col / gathered / GEMM
    /// output matrices of one group of images: reused across groups and
    /// layers instead of a zero-filled allocation each time (a memset of
    /// every byte, ~4 % of a ResNet-18 step). Each keeps the largest size
    /// it was asked for.
    static SCRATCH: [RefCell<Vec<f32>>; 2] = const { [RefCell::new(Vec::new()), RefCell::new(Vec::new())] };
}

/// Runs `f` on this thread's scratch buffer `slot` (0 or 1), cut to `n`
/// elements. Its contents are whatever earlier use left: `f` must write
/// every element before reading it. If the slot is already in use (a
/// thread re-entering through rayon's work stealing), `f` gets a fresh
/// buffer instead.
fn with_scratch<R>(slot: usize, n: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|bufs| match bufs[slot].try_borrow_mut() {
        Ok(mut v) => {
            if v.len() < n {
                v.resize(n, 0.0);
            }
            f(&mut v[..n])
        }
        Err(_) => f(&mut vec![0f32; n]),
    })
}

/// Sizes of one dense convolution.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geo {
    pub n: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
    pub ho: usize,
    pub wo: usize,
}

impl Geo {
    fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }
    fn p(&self) -> usize {
        self.ho * self.wo
    }
    /// Images per GEMM.
    fn group(&self) -> usize {
        MIN_COLUMNS
            .div_ceil(self.p().max(1))
            .clamp(1, self.n.max(1))
    }
    /// Output columns `ox` whose input column `ox·s + kx - pad` lies inside
    /// the image: `lo..hi`.
    fn valid_cols(&self, kx: usize) -> (usize, usize) {
        crate::in_image(kx, self.w, self.wo, self.stride, self.pad)
    }
}

/// A matrix operand of [`sgemm`]: a slice and its (row, column) strides.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

/// `data` with row stride `rs` and column stride `cs`.
fn mat(data: &[f32], rs: usize, cs: usize) -> Mat<'_> {
    Mat { data, rs, cs }
}

/// `dst (m × n) = lhs (m × k) · rhs (k × n)`, or `dst += …` when
/// `accumulate`; `dst` is row-major with row stride `dst_rs`.
fn sgemm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    parallelism: Parallelism,
) {
    let Mat {
        data: lhs,
        rs: lhs_rs,
        cs: lhs_cs,
    } = lhs;
    let Mat {
        data: rhs,
        rs: rhs_rs,
        cs: rhs_cs,
    } = rhs;
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * dst_rs..r * dst_rs + n].fill(0.0);
            }
        }
        return;
    }
    // The last element each matrix touches must be inside its slice.
    // Checked: shapes from a public API must not wrap around into a
    // bound that passes.
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| {
        (rows - 1)
            .checked_mul(rs)
            .zip((cols - 1).checked_mul(cs))
            .and_then(|(a, b)| a.checked_add(b))
    };
    let fits = |l: Option<usize>, len: usize| l.is_some_and(|l| l < len);
    assert!(
        fits(last(m, n, dst_rs, 1), dst.len()),
        "sgemm: dst too short"
    );
    assert!(
        fits(last(m, k, lhs_rs, lhs_cs), lhs.len()),
        "sgemm: lhs too short"
    );
    assert!(
        fits(last(k, n, rhs_rs, rhs_cs), rhs.len()),
        "sgemm: rhs too short"
    );
    // SAFETY: the asserts above keep every index gemm forms,
    // `i·rs + j·cs` for i < rows and j < cols, inside the three slices; `dst`
    // is borrowed mutably, so it aliases neither operand; all strides fit
    // in isize because they index allocated slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Writes image `img` (C_in, H, W) into `cols` rows of stride `ld`, starting
/// at column `at`: row (ci, ky, kx), column oy·Wo + ox holds
/// `img[ci, oy·s + ky - pad, ox·s + kx - pad]`, or 0 outside the image.
#[inline(always)]
fn im2col(img: &[f32], g: &Geo, cols: &mut [f32], ld: usize, at: usize) {
    let (wo, s) = (g.wo, g.stride);
    for ci in 0..g.cin {
        let plane = &img[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let r = (ci * g.kh + ky) * g.kw + kx;
                let row = &mut cols[r * ld + at..r * ld + at + g.p()];
                let (lo, hi) = g.valid_cols(kx);
                for oy in 0..g.ho {
                    let seg = &mut row[oy * wo..(oy + 1) * wo];
                    let iy = (oy * s + ky).wrapping_sub(g.pad);
                    if iy >= g.h || lo >= hi {
                        seg.fill(0.0);
                        continue;
                    }
                    let line = &plane[iy * g.w..(iy + 1) * g.w];
                    seg[..lo].fill(0.0);
                    seg[hi..].fill(0.0);
                    let ix0 = lo * s + kx - g.pad;
                    if s == 1 {
                        seg[lo..hi].copy_from_slice(&line[ix0..ix0 + (hi - lo)]);
                    } else {
                        for (d, ox) in seg[lo..hi].iter_mut().zip(0..) {
                            *d = line[ix0 + ox * s];
                        }
                    }
                }
            }
        }
    }
}

/// The (K, nb·P) im2col matrix of images `b0..b0 + nb` of `x`, side by
/// side, written over all of `cols`.
#[inline(always)]
fn im2col_group(x: &[f32], g: &Geo, b0: usize, nb: usize, cols: &mut [f32]) {
    let in_img = g.cin * g.h * g.w;
    let (p, ld) = (g.p(), nb * g.p());
    for j in 0..nb {
        im2col(
            &x[(b0 + j) * in_img..(b0 + j + 1) * in_img],
            g,
            cols,
            ld,
            j * p,
        );
    }
}

/// The adjoint of [`im2col`]: adds `cols` (rows of stride `ld`, from column
/// `at`) onto the image positions they were read from.
#[inline(always)]
fn col2im(cols: &[f32], g: &Geo, ld: usize, at: usize, img: &mut [f32]) {
    let (wo, s) = (g.wo, g.stride);
    for ci in 0..g.cin {
        let plane = &mut img[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let r = (ci * g.kh + ky) * g.kw + kx;
                let row = &cols[r * ld + at..r * ld + at + g.p()];
                let (lo, hi) = g.valid_cols(kx);
                if lo >= hi {
                    continue;
                }
                for oy in 0..g.ho {
                    let iy = (oy * s + ky).wrapping_sub(g.pad);
                    if iy >= g.h {
                        continue;
                    }
                    let seg = &row[oy * wo + lo..oy * wo + hi];
                    let line = &mut plane[iy * g.w..(iy + 1) * g.w];
                    let ix0 = lo * s + kx - g.pad;
                    if s == 1 {
                        for (d, v) in line[ix0..ix0 + (hi - lo)].iter_mut().zip(seg) {
                            *d += v;
                        }
                    } else {
                        for (ox, v) in seg.iter().enumerate() {
                            line[ix0 + ox * s] += v;
                        }
                    }
                }
            }
        }
    }
}

/// Runs `f(first image, images)` for each group of images: in parallel
/// over groups when there are enough of them, with gemm's own threads
/// otherwise (the returned parallelism is for the GEMMs inside `f`).
fn for_groups<F>(g: &Geo, f: F)
where
    F: Fn(usize, usize, Parallelism) + Sync,
{
    let grp = g.group();
    let groups = g.n.div_ceil(grp);
    if groups >= 2 * rayon::current_num_threads() {
        (0..groups)
            .into_par_iter()
            .for_each(|i| f(i * grp, grp.min(g.n - i * grp), Parallelism::None));
    } else {
        for i in 0..groups {
            f(i * grp, grp.min(g.n - i * grp), Parallelism::Rayon(0));
        }
    }
}

/// Hands out disjoint `chunk`-sized pieces of one output buffer to the
/// groups of [`for_groups`], which may run on several threads.
struct Disjoint {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: `Disjoint` is only used through `slice`, whose callers take
// non-overlapping ranges (one per image), so no two threads ever touch the
// same element.
unsafe impl Sync for Disjoint {}

impl Disjoint {
    fn new(v: &mut [f32]) -> Self {
        Self {
            ptr: v.as_mut_ptr(),
            len: v.len(),
        }
    }

    /// The elements `start..start + len`.
    ///
    /// # Safety
    /// No other live slice from this `Disjoint` may overlap the range, and
    /// the buffer it was made from must outlive the slice.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, start: usize, len: usize) -> &mut [f32] {
        assert!(start + len <= self.len, "Disjoint: range out of bounds");
        // SAFETY: in bounds (asserted); exclusivity is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

/// y (N, C_out, Ho, Wo) of x (N, C_in, H, W) and w (C_out, C_in, kh, kw).
pub(crate) fn forward(x: &[f32], w: &[f32], g: &Geo) -> Vec<f32> {
    let (k, p, cout) = (g.k(), g.p(), g.cout);
    let out_img = cout * p;
    let mut y = vec![0f32; g.n * out_img];
    let out = Disjoint::new(&mut y);
    for_groups(g, |b0, nb, par| {
        let ld = nb * p;
        // im2col writes every element of `cols`, the GEMM every one of `tmp`.
        with_scratch(0, k * ld, |cols| {
            crate::simd::dispatch(
                #[inline(always)]
                || im2col_group(x, g, b0, nb, cols),
            );
            // SAFETY: images b0..b0 + nb belong to this group only.
            let dst = unsafe { out.slice(b0 * out_img, nb * out_img) };
            if nb == 1 {
                sgemm(
                    (cout, p, k),
                    dst,
                    p,
                    false,
                    mat(w, k, 1),
                    mat(cols, ld, 1),
                    par,
                );
                return;
            }
            with_scratch(1, cout * ld, |tmp| {
                sgemm(
                    (cout, ld, k),
                    tmp,
                    ld,
                    false,
                    mat(w, k, 1),
                    mat(cols, ld, 1),
                    par,
                );
                for j in 0..nb {
                    for co in 0..cout {
                        dst[j * out_img + co * p..j * out_img + (co + 1) * p]
                            .copy_from_slice(&tmp[co * ld + j * p..co * ld + (j + 1) * p]);
                    }
                }
            });
        });
    });
    y
}

/// The output gradient of images `b0..b0 + nb` as one (C_out, nb·P)
/// matrix of row stride nb·P: a slice of `gy` itself for one image, else a
/// copy written over all of `buf` ([`gather_len`] elements).
fn gather_images<'a>(
    gy: &'a [f32],
    g: &Geo,
    b0: usize,
    nb: usize,
    buf: &'a mut [f32],
) -> &'a [f32] {
    let (p, cout) = (g.p(), g.cout);
    let out_img = cout * p;
    if nb == 1 {
        return &gy[b0 * out_img..(b0 + 1) * out_img];
    }
    let ld = nb * p;
    for j in 0..nb {
        for co in 0..cout {
            buf[co * ld + j * p..co * ld + (j + 1) * p].copy_from_slice(
                &gy[(b0 + j) * out_img + co * p..(b0 + j) * out_img + (co + 1) * p],
            );
        }
    }
    buf
}

/// The buffer [`gather_images`] needs for a group of `nb` images.
fn gather_len(g: &Geo, nb: usize) -> usize {
    if nb == 1 {
        0
    } else {
        g.cout * nb * g.p()
    }
}

/// dL/dx (N, C_in, H, W) from dL/dy (N, C_out, Ho, Wo) and w.
pub(crate) fn input_grad(gy: &[f32], w: &[f32], g: &Geo) -> Vec<f32> {
    let (k, p, cout) = (g.k(), g.p(), g.cout);
    let in_img = g.cin * g.h * g.w;
    let mut dx = vec![0f32; g.n * in_img];
    let out = Disjoint::new(&mut dx);
    for_groups(g, |b0, nb, par| {
        let ld = nb * p;
        with_scratch(0, gather_len(g, nb), |buf| {
            let gm = gather_images(gy, g, b0, nb, buf);
            // dcols (K, nb·P) = Wᵀ (K, C_out) · g (C_out, nb·P); Wᵀ is w read
            // with row stride 1 and column stride K. The GEMM writes every
            // element of `dcols`.
            with_scratch(1, k * ld, |dcols| {
                sgemm(
                    (k, ld, cout),
                    dcols,
                    ld,
                    false,
                    mat(w, 1, k),
                    mat(gm, ld, 1),
                    par,
                );
                // SAFETY: images b0..b0 + nb belong to this group only.
                let dst = unsafe { out.slice(b0 * in_img, nb * in_img) };
                crate::simd::dispatch(
                    #[inline(always)]
                    || {
                        for j in 0..nb {
                            col2im(dcols, g, ld, j * p, &mut dst[j * in_img..(j + 1) * in_img]);
                        }
                    },
                );
            });
        });
    });
    dx
}

/// dL/dw (C_out, C_in, kh, kw) from x (N, C_in, H, W) and dL/dy: the sum
/// over groups of images of `g (C_out, nb·P) @ colsᵀ (nb·P, K)`, where
/// `cols` is the same (K, nb·P) im2col matrix as in [`forward`] (read
/// transposed by the GEMM, so it is written with contiguous row copies).
/// Each thread sums its share of the groups into its own (C_out, K)
/// accumulator; the accumulators are added at the end.
pub(crate) fn weight_grad(x: &[f32], gy: &[f32], g: &Geo) -> Vec<f32> {
    let (k, p, cout) = (g.k(), g.p(), g.cout);
    let grp = g.group();
    let groups = g.n.div_ceil(grp);
    // Adds the groups `range` into `acc` with GEMMs of the given parallelism.
    let run = |range: std::ops::Range<usize>, acc: &mut [f32], par: Parallelism| {
        for i in range {
            let (b0, nb) = (i * grp, grp.min(g.n - i * grp));
            let ld = nb * p;
            // im2col writes every element of `cols`.
            with_scratch(0, k * ld, |cols| {
                crate::simd::dispatch(
                    #[inline(always)]
                    || im2col_group(x, g, b0, nb, cols),
                );
                with_scratch(1, gather_len(g, nb), |buf| {
                    let gm = gather_images(gy, g, b0, nb, buf);
                    // acc (C_out, K) += g (C_out, ld) · colsᵀ: element (pos, r)
                    // of colsᵀ is cols[r·ld + pos], row stride 1, column
                    // stride ld.
                    sgemm(
                        (cout, k, ld),
                        acc,
                        k,
                        true,
                        mat(gm, ld, 1),
                        mat(cols, 1, ld),
                        par,
                    );
                });
            });
        }
    };
    let threads = rayon::current_num_threads();
    let mut dw = vec![0f32; cout * k];
    if groups >= 2 * threads {
        let per = groups.div_ceil(threads);
        let parts: Vec<Vec<f32>> = (0..groups.div_ceil(per))
            .into_par_iter()
            .map(|t| {
                let mut acc = vec![0f32; cout * k];
                run(
                    t * per..((t + 1) * per).min(groups),
                    &mut acc,
                    Parallelism::None,
                );
                acc
            })
            .collect();
        for part in parts {
            for (d, v) in dw.iter_mut().zip(&part) {
                *d += v;
            }
        }
    } else {
        run(0..groups, &mut dw, Parallelism::Rayon(0));
    }
    dw
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    crate::cpu_f32(s, l, "conv2d", "operands")
}

/// (x, w) -> y, differentiable: the CPU f32 dense convolution.
pub(crate) struct Conv(pub Geo);

/// (dL/dy, w) -> dL/dx.
struct InputGrad(Geo);

/// (x, dL/dy) -> dL/dw.
pub(crate) struct WeightGrad(pub Geo);

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "selfsup-conv2d-cpu"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let y = forward(contiguous(sx, lx)?, contiguous(sw, lw)?, &g);
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.cout, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = self.0;
        let gy = gy.contiguous()?;
        let dx = if x.track_op() {
            Some(gy.apply_op2_no_bwd(w, &InputGrad(g))?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(x.detach().apply_op2_no_bwd(&gy, &WeightGrad(g))?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "selfsup-conv2d-cpu-input-grad"
    }

    fn cpu_fwd(
        &self,
        sg: &CpuStorage,
        lg: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let dx = input_grad(contiguous(sg, lg)?, contiguous(sw, lw)?, &g);
        Ok((CpuStorage::F32(dx), Shape::from((g.n, g.cin, g.h, g.w))))
    }
}

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "selfsup-conv2d-cpu-weight-grad"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let dw = weight_grad(contiguous(sx, lx)?, contiguous(sg, lg)?, &g);
        Ok((
            CpuStorage::F32(dw),
            Shape::from((g.cout, g.cin, g.kh, g.kw)),
        ))
    }
}
