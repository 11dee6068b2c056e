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
#[inline(always)]
pub(super) fn col2im(
    cols: &[f32],
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
                let row = &cols[r * ld + at..r * ld + at + width];
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
