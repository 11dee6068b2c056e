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
pub(super) fn sgemm(
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

/// Writes the (rows × cols) matrix `a` into `out` in row-major order.
pub(super) fn copy_row_major(a: Mat, (rows, cols): (usize, usize), out: &mut [f32]) {
    for r in 0..rows {
        for (c, o) in out[r * cols..(r + 1) * cols].iter_mut().enumerate() {
            *o = a.data[r * a.rs + c * a.cs];
        }
    }
}
