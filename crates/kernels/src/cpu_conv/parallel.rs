//! How groups of images are spread over threads, and the disjoint output
//! slices they write.

use super::geo::Geo;
use gemm::Parallelism;
use rayon::prelude::*;

/// Runs `f(first image, images)` for each group of images: in parallel
/// over groups when there are enough of them, with gemm's own threads
/// otherwise (the returned parallelism is for the GEMMs inside `f`).
pub(super) fn for_groups<F>(g: &Geo, f: F)
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
pub(super) struct Disjoint {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: `Disjoint` is only used through `slice`, whose callers take
// non-overlapping ranges (one per image), so no two threads ever touch the
// same element.
unsafe impl Sync for Disjoint {}

impl Disjoint {
    pub(super) fn new(v: &mut [f32]) -> Self {
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
    pub(super) unsafe fn slice(&self, start: usize, len: usize) -> &mut [f32] {
        assert!(start + len <= self.len, "Disjoint: range out of bounds");
        // SAFETY: in bounds (asserted); exclusivity is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}
