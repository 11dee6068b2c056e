//! Line charts: one or more panels stacked on a shared x axis (the loss
//! curve with the learning rate under it; ROC curves).

use super::canvas::{axis_labeller, padded_range, render_png, rgb, text, Area, Drawn};
use crate::core::{Error, Result};
use plotters::prelude::*;
use std::path::Path;

/// One line of a chart.
pub struct Series<'a> {
    /// Legend text.
    pub label: &'a str,
    /// (x, y) points in drawing order; non-finite y values are skipped.
    pub points: Vec<[f64; 2]>,
    /// Colour.
    pub rgb: [u8; 3],
    /// Line width in pixels.
    pub thick: u32,
}

/// One panel of [`panels_png`]: its y axis and its lines.
pub struct Panel<'a> {
    /// The y axis name.
    pub y_name: &'a str,
    /// The lines drawn in this panel.
    pub series: Vec<Series<'a>>,
    /// Relative height among the panels (the loss curve 2, the learning rate 1).
    pub weight: u32,
    /// Fixed y range instead of the data's (e.g. 0..1 for ROC curves).
    pub y_range: Option<(f64, f64)>,
    /// Put the legend in the lower-right corner (where ROC curves leave
    /// room) instead of the upper right (where falling curves do).
    pub legend_lower_right: bool,
}

const WIDTH: u32 = 900;
const TITLE_H: u32 = 40;

/// A single-panel line chart, 600 pixels tall, written to `path`.
pub fn line_png(path: &Path, panel: Panel, title: &str, x_name: &str) -> Result<()> {
    panels_png(path, &[panel], title, x_name, 600)
}

/// Line-chart `panels` stacked top to bottom on one x range (the union of
/// all panels' x values), `height` pixels tall in all, written to `path`.
pub fn panels_png(
    path: &Path,
    panels: &[Panel],
    title: &str,
    x_name: &str,
    height: u32,
) -> Result<()> {
    if panels.is_empty() || panels.iter().any(|p| p.weight == 0) {
        return Err(Error::invalid(
            "figure",
            "a line chart needs panels of non-zero weight",
        ));
    }
    let x = padded_range(
        panels
            .iter()
            .flat_map(|p| p.series.iter())
            .flat_map(|s| s.points.iter().map(|q| q[0])),
    );
    render_png(path, (WIDTH, height), |root| {
        root.titled(title, text(22))?;
        let body = root.margin(TITLE_H, 10, 10, 20);
        let total: u32 = panels.iter().map(|p| p.weight).sum();
        let (_, body_h) = body.dim_in_pixel();
        let mut rest = body;
        for (i, p) in panels.iter().enumerate() {
            let last = i + 1 == panels.len();
            let h = body_h * p.weight / total;
            let (area, below) = if last {
                (rest.clone(), None)
            } else {
                let (a, b) = rest.split_vertically(h);
                (a, Some(b))
            };
            draw_panel(&area, p, x, if last { Some(x_name) } else { None })?;
            if let Some(b) = below {
                rest = b;
            }
        }
        Ok(())
    })
}

fn draw_panel(area: &Area, p: &Panel, x: (f64, f64), x_name: Option<&str>) -> Drawn {
    let y = p.y_range.unwrap_or_else(|| {
        padded_range(p.series.iter().flat_map(|s| s.points.iter().map(|q| q[1])))
    });
    let mut chart = ChartBuilder::on(area)
        .margin_top(8)
        .x_label_area_size(if x_name.is_some() { 50 } else { 22 })
        .y_label_area_size(80)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)?;
    let (fx, fy) = (axis_labeller(x), axis_labeller(y));
    let mut mesh = chart.configure_mesh();
    mesh.y_desc(p.y_name)
        .y_labels(if p.weight > 1 || x_name.is_some() {
            8
        } else {
            5
        })
        .x_label_formatter(&fx)
        .y_label_formatter(&fy)
        .label_style(text(15))
        .axis_desc_style(text(16))
        .light_line_style(RGBColor(240, 240, 240))
        .bold_line_style(RGBColor(215, 215, 215));
    if let Some(name) = x_name {
        mesh.x_desc(name);
    }
    mesh.draw()?;
    for s in &p.series {
        let colour = rgb(s.rgb);
        let style = colour.stroke_width(s.thick);
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|q| q[0].is_finite() && q[1].is_finite())
            .map(|q| (q[0], q[1]))
            .collect();
        let drawn = if pts.len() == 1 {
            chart.draw_series(pts.iter().map(|&q| Circle::new(q, 3, colour.filled())))?
        } else {
            chart.draw_series(LineSeries::new(pts, style))?
        };
        drawn.label(s.label).legend(move |(lx, ly)| {
            PathElement::new(vec![(lx, ly), (lx + 20, ly)], colour.stroke_width(3))
        });
    }
    chart
        .configure_series_labels()
        .label_font(text(15))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .position(if p.legend_lower_right {
            SeriesLabelPosition::LowerRight
        } else {
            SeriesLabelPosition::UpperRight
        })
        .draw()?;
    Ok(())
}
