//! Both gradients in one pass over groups of images and bands of output
//! rows.

use super::gemm::{copy_row_major, mat, sgemm, Mat};
use super::geo::Geo;
pub(crate) use super::im2col::Band;
use super::im2col::{col2im, im2col_group, with_scratch};
use super::parallel::Disjoint;
use gemm::Parallelism;
use rayon::prelude::*;

/// Where [`backward`] gets the output gradient from, one band of output
/// rows of a group of images at a time.
pub(crate) trait BandGrad: Sync {
    /// The gradient of output rows `band` of images `b0..b0 + nb` as one
    /// (C_out, nb·P') matrix: a view into an existing buffer, or written
    /// over all of `buf` ([`BandGrad::buf_len`] elements).
    fn band<'a>(&'a self, g: &Geo, imgs: (usize, usize), band: Band, buf: &'a mut [f32])
        -> Mat<'a>;

    /// The length of `buf` that [`BandGrad::band`] needs for `nb` images.
    fn buf_len(&self, g: &Geo, nb: usize, band: Band) -> usize {
        g.cout * nb * (band.1 - band.0) * g.wo
    }
}

/// The output gradient dL/dy (N, C_out, Ho, Wo) as it is.
pub(crate) struct Given<'a>(pub &'a [f32]);

impl BandGrad for Given<'_> {
    fn band<'a>(
        &'a self,
        g: &Geo,
        (b0, nb): (usize, usize),
        band: Band,
        buf: &'a mut [f32],
    ) -> Mat<'a> {
        let (p, cout) = (g.p(), g.cout);
        let out_img = cout * p;
        if nb == 1 {
            return mat(
                &self.0[b0 * out_img + band.0 * g.wo..(b0 + 1) * out_img],
                p,
                1,
            );
        }
        // Grouped images are whole images (one band).
        let ld = nb * p;
        for j in 0..nb {
            for co in 0..cout {
                let src = (b0 + j) * out_img + co * p;
                buf[co * ld + j * p..co * ld + (j + 1) * p].copy_from_slice(&self.0[src..src + p]);
            }
        }
        mat(buf, ld, 1)
    }

    fn buf_len(&self, g: &Geo, nb: usize, _band: Band) -> usize {
        if nb == 1 {
            0
        } else {
            g.cout * nb * g.p()
        }
    }
}

/// Both gradients of the convolution, in one pass over groups of images
/// and bands of output rows: dL/dw (C_out, C_in, kh, kw) and, when
/// `want_dx`, dL/dx (N, C_in, H, W), from x and the output gradient `gy`.
///
/// Per band, `gm` = the band's output gradient (C_out, nb·P'):
/// `dw += gm @ colsᵀ` with `cols` the band's im2col matrix (as in
/// [`forward`]; read transposed by the GEMM, so it is written with
/// contiguous row copies), and `dcols = Wᵀ @ gm`, which col2im adds onto
/// the input positions it was read from. Each thread takes a contiguous
/// share of the groups, sums dw into its own accumulator (added in thread
/// order at the end) and writes dx of its own images; bands of one image
/// run in order (col2im adds onto rows neighbouring bands touch too).
pub(crate) fn backward(
    x: &[f32],
    w: &[f32],
    gy: &impl BandGrad,
    g: &Geo,
    want_dx: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let (k, cout) = (g.k(), g.cout);
    let in_img = g.cin * g.h * g.w;
    let grp = g.group();
    let groups = g.n.div_ceil(grp);
    let mut dx = if want_dx {
        vec![0f32; g.n * in_img]
    } else {
        Vec::new()
    };
    let out = Disjoint::new(&mut dx);
    let run = |range: std::ops::Range<usize>, acc: &mut [f32], par: Parallelism| {
        for i in range {
            let (b0, nb) = (i * grp, grp.min(g.n - i * grp));
            // SAFETY: images b0..b0 + nb belong to this group only, and
            // each group to one thread.
            let mut dst = want_dx.then(|| unsafe { out.slice(b0 * in_img, nb * in_img) });
            for band in g.row_bands() {
                let pb = (band.1 - band.0) * g.wo;
                let ld = nb * pb;
                with_scratch(1, gy.buf_len(g, nb, band), |buf| {
                    let gm = gy.band(g, (b0, nb), band, buf);
                    // im2col writes every element of `cols`; the second
                    // GEMM then writes every element of it again as dcols.
                    with_scratch(0, k * ld, |cols| {
                        crate::simd::dispatch(
                            #[inline(always)]
                            || im2col_group(x, g, b0, nb, band, cols),
                        );
                        // accᵀ += g (C_out, ld) · colsᵀ, with g read from
                        // its position-major copy (the GEMM's preferred
                        // layout for it) and element (pos, r) of colsᵀ
                        // being cols[r·ld + pos] (used in place).
                        with_scratch(2, cout * ld, |gt| {
                            // gt (ld, C_out) row-major = gmᵀ.
                            copy_row_major(gm.t(), (ld, cout), gt);
                            let (lhs, rhs) = (mat(gt, 1, cout), mat(cols, 1, ld));
                            sgemm((cout, k, ld), acc, (1, cout), true, lhs, rhs, par);
                        });
                        let Some(dst) = dst.as_deref_mut() else {
                            return;
                        };
                        // dcols (K, ld) = Wᵀ (K, C_out) · g; Wᵀ is w read
                        // with row stride 1 and column stride K.
                        let dcols = cols;
                        sgemm((k, ld, cout), dcols, (ld, 1), false, mat(w, 1, k), gm, par);
                        crate::simd::dispatch(
                            #[inline(always)]
                            || {
                                for j in 0..nb {
                                    let img = &mut dst[j * in_img..(j + 1) * in_img];
                                    col2im(dcols, g, ld, j * pb, band, img);
                                }
                            },
                        );
                    });
                });
            }
        }
    };
    let threads = rayon::current_num_threads();
    // dwᵀ (K, C_out), row-major: the GEMM's column-major (C_out, K).
    let mut dwt = vec![0f32; cout * k];
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
            for (d, v) in dwt.iter_mut().zip(&part) {
                *d += v;
            }
        }
    } else {
        run(0..groups, &mut dwt, Parallelism::Rayon(0));
    }
    let mut dw = vec![0f32; cout * k];
    copy_row_major(mat(&dwt, 1, cout), (cout, k), &mut dw);
    (dw, want_dx.then_some(dx))
}
