//! A grid of images with a label per row (masked input, reconstruction,
//! original), scaled up with square pixels.

use super::canvas::{render_png, text, Drawn};
use crate::core::{Error, Result};
use plotters::prelude::*;
use std::path::Path;

/// One row of [`image_grid_png`]: a label and images of one shape.
pub struct ImageRow {
    /// Shown left of the row.
    pub label: String,
    /// Images as (C, H, W) bytes, C 1 (gray) or 3 (RGB).
    pub images: Vec<Vec<u8>>,
}

const LABEL_W: u32 = 150;
const TOP: u32 = 45;
const GAP: u32 = 6;

/// Draws `rows` of (C, H, W) images of `shape`, each pixel a `scale` x
/// `scale` square, under `title`, and writes the PNG atomically.
pub fn image_grid_png(
    path: &Path,
    title: &str,
    rows: &[ImageRow],
    shape: (usize, usize, usize),
    scale: u32,
) -> Result<()> {
    let (c, h, w) = shape;
    let cols = rows.iter().map(|r| r.images.len()).max().unwrap_or(0);
    if rows.is_empty() || cols == 0 || !(c == 1 || c == 3) {
        return Err(Error::format(
            path,
            format!("an image grid needs images of 1 or 3 channels, got {c} and {cols} per row"),
        ));
    }
    if let Some(bad) = rows
        .iter()
        .flat_map(|r| &r.images)
        .find(|i| i.len() != c * h * w)
    {
        return Err(Error::format(
            path,
            format!("an image of {} bytes in a grid of {c}x{h}x{w}", bad.len()),
        ));
    }
    let (cw, ch) = (w as u32 * scale + GAP, h as u32 * scale + GAP);
    let size = (
        LABEL_W + cols as u32 * cw + GAP,
        TOP + rows.len() as u32 * ch + GAP,
    );
    render_png(path, size, |area| -> Drawn {
        area.fill(&WHITE)?;
        area.draw(&Text::new(title.to_string(), (10, 10), text(20)))?;
        for (r, row) in rows.iter().enumerate() {
            let y0 = TOP + r as u32 * ch;
            let label_y = (y0 + ch / 2) as i32 - 8;
            area.draw(&Text::new(row.label.clone(), (10, label_y), text(16)))?;
            for (k, img) in row.images.iter().enumerate() {
                let x0 = LABEL_W + k as u32 * cw;
                draw_image(area, img, shape, (x0, y0), scale)?;
            }
        }
        Ok(())
    })
}

/// One image at (x0, y0), each pixel a filled square.
fn draw_image(
    area: &super::canvas::Area,
    img: &[u8],
    (c, h, w): (usize, usize, usize),
    (x0, y0): (u32, u32),
    scale: u32,
) -> Drawn {
    let plane = h * w;
    for y in 0..h {
        for x in 0..w {
            let at = y * w + x;
            let v = |ch: usize| img[(ch % c) * plane + at];
            let colour = RGBColor(v(0), v(1), v(2));
            let (px, py) = (
                (x0 + x as u32 * scale) as i32,
                (y0 + y as u32 * scale) as i32,
            );
            let s = scale as i32;
            area.draw(&Rectangle::new(
                [(px, py), (px + s, py + s)],
                colour.filled(),
            ))?;
        }
    }
    Ok(())
}
