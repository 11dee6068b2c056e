//! The embedding scatter: 2-D points coloured by class, with a legend of
//! class names beside the chart.

use super::canvas::{axis_labeller, padded_range, render_png, rgb, text, Area, Drawn};
use super::colour;
use crate::core::{Error, Result};
use plotters::prelude::*;
use std::path::Path;

const SIZE: (u32, u32) = (1000, 720);
const LEGEND_W: u32 = 210;

/// A scatter plot of 2-D `points` coloured by `classes`, with a legend
/// naming each class that occurs (`names[k]`, or `class k` past the end of
/// `names`), written to `path`. `axes` names the two axes.
pub fn scatter_png(
    path: &Path,
    points: &[[f64; 2]],
    classes: &[u32],
    names: &[String],
    title: &str,
    axes: (&str, &str),
) -> Result<()> {
    if points.len() != classes.len() {
        return Err(Error::invalid(
            "scatter",
            format!(
                "{} points but {} classes: one class per point",
                points.len(),
                classes.len()
            ),
        ));
    }
    let x = padded_range(points.iter().map(|p| p[0]));
    let y = padded_range(points.iter().map(|p| p[1]));
    render_png(path, SIZE, |root| {
        root.titled(title, text(22))?;
        let body = root.margin(40, 10, 10, 10);
        let (chart_area, legend_area) = body.split_horizontally(SIZE.0 - LEGEND_W);
        let mut chart = ChartBuilder::on(&chart_area)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(x.0..x.1, y.0..y.1)?;
        let (fx, fy) = (axis_labeller(x), axis_labeller(y));
        chart
            .configure_mesh()
            .x_desc(axes.0)
            .y_desc(axes.1)
            .x_label_formatter(&fx)
            .y_label_formatter(&fy)
            .label_style(text(14))
            .axis_desc_style(text(16))
            .light_line_style(RGBColor(242, 242, 242))
            .bold_line_style(RGBColor(220, 220, 220))
            .draw()?;
        chart.draw_series(
            points
                .iter()
                .zip(classes)
                .map(|(p, &k)| Circle::new((p[0], p[1]), 2, rgb(colour(k as usize)).filled())),
        )?;
        legend(&legend_area, classes, names)
    })
}

/// One row per class that occurs: a coloured dot, its name and its count.
fn legend(area: &Area, classes: &[u32], names: &[String]) -> Drawn {
    let n = classes.iter().max().map_or(0, |&m| m as usize + 1);
    let mut row = 0;
    for k in 0..n {
        let count = classes.iter().filter(|&&c| c as usize == k).count();
        if count == 0 {
            continue;
        }
        let y = 30 + 26 * row;
        row += 1;
        area.draw(&Circle::new((12, y), 6, rgb(colour(k)).filled()))?;
        let name = names
            .get(k)
            .cloned()
            .unwrap_or_else(|| format!("class {k}"));
        area.draw(&Text::new(
            format!("{name} ({count})"),
            (26, y - 8),
            text(15),
        ))?;
    }
    Ok(())
}
