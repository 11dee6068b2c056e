//! The GEMM every pass uses: `gemm` on f32 slices with explicit strides,
//! bounds checked before the unsafe call.

use gemm::Parallelism;

/// A matrix operand of [`sgemm`]: a slice and its (row, column) strides.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// The transposed matrix: the same data with the strides swapped.
    pub(crate) fn t(self) -> Mat<'a> {
        Mat {
            data: self.data,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// `data` with row stride `rs` and column stride `cs`.
pub(crate) fn mat(data: &[f32], rs: usize, cs: usize) -> Mat<'_> {
    Mat { data, rs, cs }
}

/// `dst (m × n) = lhs (m × k) · rhs (k × n)`, or `dst += …` when
/// `accumulate`; `dst` has (row, column) strides `(dst_rs, dst_cs)`.
pub(crate) fn sgemm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    (dst_rs, dst_cs): (usize, usize),
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
                for c in 0..n {
                    dst[r * dst_rs + c * dst_cs] = 0.0;
                }
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
        fits(last(m, n, dst_rs, dst_cs), dst.len()),
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
            dst_cs as isize,
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

/// Writes the (rows × cols) matrix `a` into `out` in row-major order, tile
/// by tile: a transposing copy of a large matrix read element by element
/// along its long stride would miss the cache on every element.
pub(super) fn copy_row_major(a: Mat, (rows, cols): (usize, usize), out: &mut [f32]) {
    const TILE: usize = 32;
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                let c1 = (c0 + TILE).min(cols);
                for (c, o) in (c0..c1).zip(&mut out[r * cols + c0..r * cols + c1]) {
                    *o = a.data[r * a.rs + c * a.cs];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_row_major_transposes_across_tile_edges() {
        // 37 x 70: neither a multiple of the tile, read column-major.
        let (rows, cols) = (37, 70);
        let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let mut out = vec![-1f32; rows * cols];
        copy_row_major(mat(&src, 1, rows), (rows, cols), &mut out);
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(out[r * cols + c], src[r + c * rows], "({r}, {c})");
            }
        }
        // Row-major in, row-major out: a plain copy.
        copy_row_major(mat(&src, cols, 1), (rows, cols), &mut out);
        assert_eq!(out, src);
    }
}
