//! Stacked score histograms, one band per group on a shared x axis (the
//! anomaly scores of each test class).

use super::canvas::{axis_labeller, render_png, rgb, text, Drawn};
use super::PALETTE;
use crate::core::Result;
use plotters::prelude::*;
use std::path::Path;

/// One band of [`histograms_png`].
pub struct Histogram<'a> {
    /// Band label (a class name).
    pub label: &'a str,
    /// The values to bin.
    pub values: &'a [f64],
    /// Drawn in the first palette colour (e.g. the normal class) instead
    /// of the second.
    pub highlight: bool,
}

/// Bins per band.
pub const BINS: usize = 40;
/// Pixels per band.
pub const BAND_H: u32 = 60;
const WIDTH: u32 = 900;
const LABEL_W: u32 = 190;
const TOP: u32 = 45;
const BOTTOM: u32 = 60;

/// The x range shared by all bands: the 1st to 99th percentile of every
/// finite value, so a few extreme scores do not squash the rest.
pub fn shared_range(panels: &[Histogram]) -> (f64, f64) {
    let mut all: Vec<f64> = panels
        .iter()
        .flat_map(|p| p.values.iter().copied())
        .filter(|v| v.is_finite())
        .collect();
    all.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        all.get(((all.len().max(1) - 1) as f64 * q).round() as usize)
            .copied()
    };
    match (pick(0.01), pick(0.99)) {
        (Some(a), Some(b)) if b > a => (a, b),
        (Some(a), _) => (a - 0.5, a + 0.5),
        _ => (0.0, 1.0),
    }
}

/// Counts of `values` in [`BINS`] equal bins over `range`; values outside
/// it land in the end bins, non-finite ones are left out.
pub fn bin_counts(values: &[f64], (lo, hi): (f64, f64)) -> [usize; BINS] {
    let mut counts = [0usize; BINS];
    for &v in values.iter().filter(|v| v.is_finite()) {
        let f = ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
        counts[((f * BINS as f64) as usize).min(BINS - 1)] += 1;
    }
    counts
}

/// Stacked histograms of `panels` ([`BAND_H`] pixels each, each scaled to
/// its own tallest bin) on the shared range, written to `path`.
pub fn histograms_png(path: &Path, panels: &[Histogram], title: &str, x_name: &str) -> Result<()> {
    let range = shared_range(panels);
    let height = TOP + BAND_H * panels.len().max(1) as u32 + BOTTOM;
    render_png(path, (WIDTH, height), |root| {
        root.titled(title, text(20))?;
        let body = root.margin(TOP - 10, 10, 10, 20);
        for (i, p) in panels.iter().enumerate() {
            let last = i + 1 == panels.len();
            let top = BAND_H as i32 * i as i32;
            let bottom = top + BAND_H as i32 + if last { BOTTOM as i32 - 10 } else { 0 };
            let band = body
                .clone()
                .shrink((0, top), (WIDTH - 30, (bottom - top) as u32));
            band_chart(&band, p, range, last.then_some(x_name))?;
        }
        Ok(())
    })
}

fn band_chart(
    band: &super::canvas::Area,
    p: &Histogram,
    (lo, hi): (f64, f64),
    x_name: Option<&str>,
) -> Drawn {
    let counts = bin_counts(p.values, (lo, hi));
    let max = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let mut chart = ChartBuilder::on(band)
        .x_label_area_size(if x_name.is_some() { 50 } else { 0 })
        .y_label_area_size(LABEL_W)
        .build_cartesian_2d(lo..hi, 0.0..max * 1.1)?;
    let fmt = axis_labeller((lo, hi));
    let mut mesh = chart.configure_mesh();
    mesh.disable_y_mesh()
        .y_labels(0)
        .x_label_formatter(&fmt)
        .label_style(text(14))
        .axis_desc_style(text(16))
        .light_line_style(RGBColor(245, 245, 245))
        .bold_line_style(RGBColor(225, 225, 225));
    if let Some(name) = x_name {
        mesh.x_desc(name);
    } else {
        mesh.x_labels(0);
    }
    mesh.draw()?;
    let colour = rgb(if p.highlight { PALETTE[0] } else { PALETTE[1] });
    let w = (hi - lo) / BINS as f64;
    chart.draw_series(counts.iter().enumerate().map(|(b, &n)| {
        let x0 = lo + b as f64 * w;
        Rectangle::new([(x0, 0.0), (x0 + w * 0.9, n as f64)], colour.filled())
    }))?;
    let label = format!("{} ({})", p.label, p.values.len());
    let (_, h) = band.dim_in_pixel();
    let band_mid = if x_name.is_some() {
        (h as i32 - 50) / 2
    } else {
        h as i32 / 2
    };
    band.draw(&Text::new(label, (6, band_mid - 8), text(15)))?;
    Ok(())
}
