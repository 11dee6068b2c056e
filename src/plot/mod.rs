//! PNG figures for reports, drawn with plotters into an RGB buffer and
//! written atomically, with an embedded font (DejaVu Sans) so they look the
//! same on every machine and need no system fonts.
//!
//! The figures a run writes: loss and learning-rate curves
//! ([`panels_png`]), a 2-D embedding coloured and labelled by class
//! ([`scatter_png`], projected by [`pca2`] or [`tsne2`]), ROC curves
//! ([`line_png`]), stacked score histograms ([`histograms_png`]) and
//! reconstruction grids ([`image_grid_png`]).

mod canvas;
mod hist;
mod images;
mod lines;
mod pca;
mod scatter;
#[cfg(test)]
mod tests;
mod tsne;

pub use hist::{histograms_png, Histogram, BAND_H, BINS};
pub use images::{image_grid_png, ImageRow};
pub use lines::{line_png, panels_png, Panel, Series};
pub use pca::pca2;
pub use scatter::scatter_png;
pub use tsne::{tsne2, Tsne};

/// The ten colours of matplotlib's `tab10`, for classes and series.
pub const PALETTE: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

/// The palette colour of class or series `k` (the palette repeats).
pub fn colour(k: usize) -> [u8; 3] {
    PALETTE[k % PALETTE.len()]
}
