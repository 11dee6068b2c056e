//! The forward pass: per group (and band), im2col then one GEMM.

use super::gemm::{mat, sgemm};
use super::geo::Geo;
use super::im2col::{im2col_group, with_scratch};
use super::parallel::{for_groups, Disjoint};

/// y (N, C_out, Ho, Wo) of x (N, C_in, H, W) and w (C_out, C_in, kh, kw).
pub(crate) fn forward(x: &[f32], w: &[f32], g: &Geo) -> Vec<f32> {
    let (k, p, cout) = (g.k(), g.p(), g.cout);
    let out_img = cout * p;
    let mut y = vec![0f32; g.n * out_img];
    let out = Disjoint::new(&mut y);
    for_groups(g, |b0, nb, par| {
        // SAFETY: images b0..b0 + nb belong to this group only.
        let dst = unsafe { out.slice(b0 * out_img, nb * out_img) };
        for band in g.row_bands() {
            let pb = (band.1 - band.0) * g.wo;
            let ld = nb * pb;
            // im2col writes every element of `cols`, the GEMM every one of `tmp`.
            with_scratch(0, k * ld, |cols| {
                crate::simd::dispatch(
                    #[inline(always)]
                    || im2col_group(x, g, b0, nb, band, cols),
                );
                if nb == 1 {
                    // The band's columns of the image's (C_out, P) output.
                    sgemm(
                        (cout, pb, k),
                        &mut dst[band.0 * g.wo..],
                        (p, 1),
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
                        (ld, 1),
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
        }
    });
    y
}
