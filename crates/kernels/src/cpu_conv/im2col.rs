//! im2col and its adjoint col2im straight from and to NCHW, by bands of
//! output rows, and the per-thread scratch buffers their matrices live in.

use super::geo::Geo;
use std::cell::RefCell;

thread_local! {
    /// Two scratch buffers per thread for the im2col / gathered / GEMM
    /// output matrices of one group of images: reused across groups and
    /// layers instead of a zero-filled allocation each time (a memset of
    /// every byte, ~4 % of a ResNet-18 step). Each keeps the largest size
    /// it was asked for.
    static SCRATCH: [RefCell<Vec<f32>>; 3] = const {
        [RefCell::new(Vec::new()), RefCell::new(Vec::new()), RefCell::new(Vec::new())]
    };
}

/// Runs `f` on this thread's scratch buffer `slot` (0 to 2), cut to `n`
/// elements. Its contents are whatever earlier use left: `f` must write
/// every element before reading it. If the slot is already in use (a
/// thread re-entering through rayon's work stealing), `f` gets a fresh
/// buffer instead.
pub(super) fn with_scratch<R>(slot: usize, n: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
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

/// Output rows `oy0..oy1` of an image.
pub(crate) type Band = (usize, usize);

/// Writes output rows `band` of image `img` (C_in, H, W) into `cols` rows
/// of stride `ld`, starting at column `at`: row (ci, ky, kx), column
/// (oy - oy0)·Wo + ox holds `img[ci, oy·s + ky - pad, ox·s + kx - pad]`, or
/// 0 outside the image.
#[inline(always)]
pub(super) fn im2col(
    img: &[f32],
    g: &Geo,
    cols: &mut [f32],
    ld: usize,
    at: usize,
    (oy0, oy1): Band,
) {
    let (wo, s) = (g.wo, g.stride);
    let width = (oy1 - oy0) * wo;
    for ci in 0..g.cin {
        let plane = &img[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let r = (ci * g.kh + ky) * g.kw + kx;
                let row = &mut cols[r * ld + at..r * ld + at + width];
                if let Some(run) = Run::new(g, (oy0, oy1), (ky, kx)) {
                    run.gather(plane, row);
                    continue;
                }
                let (lo, hi) = g.valid_cols(kx);
                for oy in oy0..oy1 {
                    let seg = &mut row[(oy - oy0) * wo..(oy - oy0 + 1) * wo];
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

/// The (K, nb·P') im2col matrix of output rows `band` (P' positions) of
/// images `b0..b0 + nb` of `x`, side by side, written over all of `cols`.
#[inline(always)]
pub(super) fn im2col_group(x: &[f32], g: &Geo, b0: usize, nb: usize, band: Band, cols: &mut [f32]) {
    let in_img = g.cin * g.h * g.w;
    let p = (band.1 - band.0) * g.wo;
    let ld = nb * p;
    for j in 0..nb {
        im2col(
            &x[(b0 + j) * in_img..(b0 + j + 1) * in_img],
            g,
            cols,
            ld,
            j * p,
            band,
        );
    }
}

/// The adjoint of [`im2col`]: adds `cols` (rows of stride `ld`, from column
/// `at`, output rows `band`) onto the image positions they were read from.
/// The elements of `cols` that read from the padding may be zeroed.
#[inline(always)]
pub(super) fn col2im(
    cols: &mut [f32],
    g: &Geo,
    ld: usize,
    at: usize,
    (oy0, oy1): Band,
    img: &mut [f32],
) {
    let (wo, s) = (g.wo, g.stride);
    let width = (oy1 - oy0) * wo;
    for ci in 0..g.cin {
        let plane = &mut img[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let r = (ci * g.kh + ky) * g.kw + kx;
                let row = &mut cols[r * ld + at..r * ld + at + width];
                if let Some(run) = Run::new(g, (oy0, oy1), (ky, kx)) {
                    run.scatter_add(row, plane);
                    continue;
                }
                let (lo, hi) = g.valid_cols(kx);
                if lo >= hi {
                    continue;
                }
                for oy in oy0..oy1 {
                    let iy = (oy * s + ky).wrapping_sub(g.pad);
                    if iy >= g.h {
                        continue;
                    }
                    let at = (oy - oy0) * wo;
                    let seg = &row[at + lo..at + hi];
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

/// One im2col row (ci, ky, kx) over a band of output rows, for a stride-1
/// convolution whose output rows are as wide as its input rows ("same"
/// padding across): output row oy reads input row oy + ky - pad shifted by
/// kx - pad, so the band's row is one contiguous run of the input plane,
/// except for the columns that fall off the row's ends (zero in the
/// im2col matrix) and the output rows whose input row is padding.
struct Run {
    /// Input row width = output row width.
    w: usize,
    /// Band offsets of the first and past-the-last output rows whose
    /// input row lies inside the image.
    valid: (usize, usize),
    /// Index into the plane of the run's first element (may be before the
    /// plane's start or run past its end by the shift; clipped).
    start: isize,
    /// Output columns whose input column is inside the row.
    cols: (usize, usize),
}

impl Run {
    #[inline(always)]
    fn new(g: &Geo, (oy0, oy1): Band, (ky, kx): (usize, usize)) -> Option<Run> {
        if g.stride != 1 || g.wo != g.w {
            return None;
        }
        // iy = oy + ky - pad lies in 0..h  <=>  pad - ky <= oy < h + pad - ky.
        let v0 = g.pad.saturating_sub(ky).clamp(oy0, oy1);
        let v1 = (g.h + g.pad).saturating_sub(ky).clamp(v0, oy1);
        let first = v0 as isize + ky as isize - g.pad as isize;
        Some(Run {
            w: g.w,
            valid: (v0 - oy0, v1 - oy0),
            start: first * g.w as isize + kx as isize - g.pad as isize,
            cols: g.valid_cols(kx),
        })
    }

    /// The range of `n` run elements that lie inside a plane of `len`
    /// elements, and where it starts in the plane.
    #[inline(always)]
    fn clip(&self, n: usize, len: usize) -> (std::ops::Range<usize>, usize) {
        let lo = (-self.start).clamp(0, n as isize) as usize;
        let hi = (len as isize - self.start).clamp(lo as isize, n as isize) as usize;
        if lo == hi {
            return (0..0, 0);
        }
        (lo..hi, (self.start + lo as isize) as usize)
    }

    /// Writes the run into `row` (the band's im2col row), zeros included.
    #[inline(always)]
    fn gather(&self, plane: &[f32], row: &mut [f32]) {
        let (v0, v1) = (self.valid.0 * self.w, self.valid.1 * self.w);
        row[..v0].fill(0.0);
        row[v1..].fill(0.0);
        let inside = &mut row[v0..v1];
        let (r, src) = self.clip(inside.len(), plane.len());
        inside[..r.start].fill(0.0);
        let end = inside.len();
        inside[r.end..end].fill(0.0);
        inside[r.clone()].copy_from_slice(&plane[src..src + r.len()]);
        self.zero_edges(inside);
    }

    /// Adds `row` onto the plane positions [`Run::gather`] reads, after
    /// zeroing its elements that stand for padding.
    #[inline(always)]
    fn scatter_add(&self, row: &mut [f32], plane: &mut [f32]) {
        let inside = &mut row[self.valid.0 * self.w..self.valid.1 * self.w];
        self.zero_edges(inside);
        let (r, dst) = self.clip(inside.len(), plane.len());
        for (d, v) in plane[dst..dst + r.len()].iter_mut().zip(&inside[r]) {
            *d += v;
        }
    }

    /// Zeros the columns of every output row whose input column is padding
    /// (there the contiguous run holds a neighbouring row's values).
    #[inline(always)]
    fn zero_edges(&self, rows: &mut [f32]) {
        let (lo, hi) = self.cols;
        if lo == 0 && hi == self.w {
            return;
        }
        for r in rows.chunks_exact_mut(self.w) {
            r[..lo].fill(0.0);
            r[hi..].fill(0.0);
        }
    }
}
