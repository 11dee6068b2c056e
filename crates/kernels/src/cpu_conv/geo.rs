//! The sizes of one dense convolution, how its images are grouped into
//! GEMMs and how large images are cut into bands of output rows.

/// A group of images is processed by one GEMM whose column count (images x
/// output positions) is at least this (when the batch allows).
pub(super) const MIN_COLUMNS: usize = 256;

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
    pub(super) fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }
    pub(crate) fn p(&self) -> usize {
        self.ho * self.wo
    }
    /// Images per GEMM.
    pub(super) fn group(&self) -> usize {
        MIN_COLUMNS
            .div_ceil(self.p().max(1))
            .clamp(1, self.n.max(1))
    }
    /// The output-row ranges an image's GEMMs are cut into: one range
    /// (the whole image) when images are grouped, else bands of about
    /// [`MIN_COLUMNS`] output positions, so that a band's im2col matrix
    /// stays in the core's cache between being written and multiplied.
    pub(super) fn row_bands(&self) -> impl Iterator<Item = (usize, usize)> {
        let rows = if self.p() > MIN_COLUMNS {
            MIN_COLUMNS.div_ceil(self.wo.max(1)).min(self.ho)
        } else {
            self.ho
        }
        .max(1);
        let ho = self.ho;
        (0..ho.div_ceil(rows)).map(move |i| (i * rows, ((i + 1) * rows).min(ho)))
    }
    /// Output columns `ox` whose input column `ox·s + kx - pad` lies inside
    /// the image: `lo..hi`.
    pub(super) fn valid_cols(&self, kx: usize) -> (usize, usize) {
        crate::in_image(kx, self.w, self.wo, self.stride, self.pad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu_conv::im2col::Band;

    fn geo(n: usize, size: usize, stride: usize) -> Geo {
        let o = (size + 2 - 3) / stride + 1;
        Geo {
            n,
            cin: 2,
            h: size,
            w: size,
            cout: 3,
            kh: 3,
            kw: 3,
            stride,
            pad: 1,
            ho: o,
            wo: o,
        }
    }

    #[test]
    fn bands_cover_every_output_row_once_in_order() {
        for (size, stride, want) in [(32, 1, 4), (28, 1, 3), (17, 1, 2), (16, 1, 1), (8, 1, 1)] {
            let g = geo(4, size, stride);
            let bands: Vec<Band> = g.row_bands().collect();
            assert_eq!(bands.len(), want, "{size}x{size}: {bands:?}");
            assert_eq!(bands[0].0, 0);
            assert_eq!(bands.last().unwrap().1, g.ho);
            for w in bands.windows(2) {
                assert_eq!(w[0].1, w[1].0, "{bands:?}");
            }
            // Every band but the last spans at least MIN_COLUMNS positions.
            for b in &bands[..bands.len() - 1] {
                assert!((b.1 - b.0) * g.wo >= MIN_COLUMNS, "{bands:?}");
            }
        }
        // Grouped images (small planes) are never cut.
        let g = geo(64, 8, 1);
        assert!(g.group() > 1);
        assert_eq!(g.row_bands().collect::<Vec<_>>(), vec![(0, 8)]);
    }
}
