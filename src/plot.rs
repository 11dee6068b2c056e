//! PNG figures for reports, with no system dependencies: a small RGB canvas,
//! a 5x7 bitmap font for titles, ticks and legends, a PCA projection, and
//! the two figures every pretraining method gets — a 2-D embedding scatter
//! coloured by class and a training-loss curve.

use crate::core::{fsutil, Error, Result};
use std::path::Path;

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

const BLACK: [u8; 3] = [0, 0, 0];
const GRID: [u8; 3] = [225, 225, 225];

/// 5x7 glyphs, one row per byte (bit 4 is the leftmost pixel).
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1E],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        ',' => [0, 0, 0, 0, 0x0C, 0x04, 0x08],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        ' ' => [0; 7],
        _ => [0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F],
    }
}

/// An RGB image to draw on.
pub struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    /// A white canvas.
    pub fn new(w: usize, h: usize) -> Self {
        Self {
            w,
            h,
            px: vec![255; w * h * 3],
        }
    }

    /// Sets one pixel (ignored outside the canvas).
    pub fn set(&mut self, x: i64, y: i64, rgb: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&rgb);
        }
    }

    /// The colour at (x, y).
    pub fn get(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.w + x) * 3;
        [self.px[i], self.px[i + 1], self.px[i + 2]]
    }

    /// A filled axis-aligned rectangle.
    pub fn rect(&mut self, x0: i64, y0: i64, w: i64, h: i64, rgb: [u8; 3]) {
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                self.set(x, y, rgb);
            }
        }
    }

    /// A line (Bresenham), `thick` pixels wide.
    pub fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), rgb: [u8; 3], thick: i64) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.rect(x - thick / 2, y - thick / 2, thick, thick, rgb);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Text with its top-left corner at (x, y), glyphs scaled by `scale`.
    pub fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, rgb: [u8; 3]) {
        for (k, c) in s.chars().enumerate() {
            let g = glyph(c);
            let ox = x + k as i64 * 6 * scale;
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        self.rect(ox + col * scale, y + row as i64 * scale, scale, scale, rgb);
                    }
                }
            }
        }
    }

    /// Width in pixels of `s` drawn at `scale`.
    pub fn text_width(s: &str, scale: i64) -> i64 {
        s.chars().count() as i64 * 6 * scale
    }

    /// Writes the canvas as a PNG, atomically.
    pub fn save_png(&self, path: &Path) -> Result<()> {
        let mut bytes = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut bytes, self.w as u32, self.h as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut writer = enc
                .write_header()
                .map_err(|e| Error::format(path, format!("PNG header: {e}")))?;
            writer
                .write_image_data(&self.px)
                .map_err(|e| Error::format(path, format!("PNG data: {e}")))?;
        }
        fsutil::write_atomic(path, &bytes)
    }
}

/// A short tick label: 3 significant digits, no trailing zeros.
fn tick_label(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    let s = if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    };
    if s.contains('.') && !s.contains('e') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Plot area and data ranges of one chart.
struct Frame {
    left: i64,
    top: i64,
    width: i64,
    height: i64,
    x: (f64, f64),
    y: (f64, f64),
}

impl Frame {
    fn map(&self, x: f64, y: f64) -> (i64, i64) {
        let fx = (x - self.x.0) / (self.x.1 - self.x.0).max(1e-12);
        let fy = (y - self.y.0) / (self.y.1 - self.y.0).max(1e-12);
        (
            self.left + (fx * self.width as f64).round() as i64,
            self.top + self.height - (fy * self.height as f64).round() as i64,
        )
    }

    /// Grid, box, 5 ticks per axis, title and axis names.
    fn draw(&self, c: &mut Canvas, title: &str, x_name: &str, y_name: &str) {
        for k in 0..=4 {
            let f = k as f64 / 4.0;
            let gx = self.left + (f * self.width as f64) as i64;
            let gy = self.top + self.height - (f * self.height as f64) as i64;
            c.line((gx, self.top), (gx, self.top + self.height), GRID, 1);
            c.line((self.left, gy), (self.left + self.width, gy), GRID, 1);
            let xv = tick_label(self.x.0 + f * (self.x.1 - self.x.0));
            let yv = tick_label(self.y.0 + f * (self.y.1 - self.y.0));
            c.text(
                gx - Canvas::text_width(&xv, 1) / 2,
                self.top + self.height + 6,
                &xv,
                1,
                BLACK,
            );
            c.text(
                self.left - Canvas::text_width(&yv, 1) - 6,
                gy - 3,
                &yv,
                1,
                BLACK,
            );
        }
        let (l, t, r, b) = (
            self.left,
            self.top,
            self.left + self.width,
            self.top + self.height,
        );
        c.line((l, t), (r, t), BLACK, 1);
        c.line((l, b), (r, b), BLACK, 1);
        c.line((l, t), (l, b), BLACK, 1);
        c.line((r, t), (r, b), BLACK, 1);
        c.text(l, 12, title, 2, BLACK);
        c.text(
            l + (self.width - Canvas::text_width(x_name, 1)) / 2,
            b + 20,
            x_name,
            1,
            BLACK,
        );
        c.text(8, t - 14, y_name, 1, BLACK);
    }
}

fn range(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-9 {
        return (lo - 0.5, hi + 0.5);
    }
    let pad = 0.04 * (hi - lo);
    (lo - pad, hi + pad)
}

/// A scatter plot of 2-D `points` coloured by `classes` (legend: the class
/// index), written to `path`.
pub fn scatter_png(path: &Path, points: &[[f64; 2]], classes: &[u32], title: &str) -> Result<()> {
    if points.len() != classes.len() {
        return Err(Error::invalid("scatter", "one class per point"));
    }
    let mut c = Canvas::new(720, 600);
    let frame = Frame {
        left: 70,
        top: 50,
        width: 540,
        height: 490,
        x: range(points.iter().map(|p| p[0])),
        y: range(points.iter().map(|p| p[1])),
    };
    frame.draw(&mut c, title, "component 1", "component 2");
    for (p, &k) in points.iter().zip(classes) {
        let (x, y) = frame.map(p[0], p[1]);
        c.rect(x - 1, y - 1, 3, 3, PALETTE[k as usize % PALETTE.len()]);
    }
    let n = classes.iter().max().map_or(0, |&m| m as usize + 1);
    for k in 0..n {
        let y = 60 + 18 * k as i64;
        c.rect(630, y, 10, 10, PALETTE[k % PALETTE.len()]);
        c.text(646, y + 2, &format!("class {k}"), 1, BLACK);
    }
    c.save_png(path)
}

/// One line of a [`line_png`] chart.
pub struct Series<'a> {
    /// Legend text.
    pub label: &'a str,
    /// (x, y) points in drawing order.
    pub points: Vec<[f64; 2]>,
    /// Colour.
    pub rgb: [u8; 3],
    /// Line width in pixels.
    pub thick: i64,
}

/// A line chart of `series`, written to `path`.
pub fn line_png(
    path: &Path,
    series: &[Series],
    title: &str,
    x_name: &str,
    y_name: &str,
) -> Result<()> {
    let mut c = Canvas::new(720, 480);
    let all = || series.iter().flat_map(|s| s.points.iter());
    let frame = Frame {
        left: 70,
        top: 50,
        width: 620,
        height: 370,
        x: range(all().map(|p| p[0])),
        y: range(all().map(|p| p[1])),
    };
    frame.draw(&mut c, title, x_name, y_name);
    for s in series {
        let pts: Vec<(i64, i64)> = s
            .points
            .iter()
            .filter(|p| p[1].is_finite())
            .map(|p| frame.map(p[0], p[1]))
            .collect();
        for w in pts.windows(2) {
            c.line(w[0], w[1], s.rgb, s.thick);
        }
        if pts.len() == 1 {
            c.rect(pts[0].0 - 2, pts[0].1 - 2, 5, 5, s.rgb);
        }
    }
    let mut x = frame.left + 10;
    for s in series {
        c.rect(x, frame.top + 8, 14, 4, s.rgb);
        c.text(x + 18, frame.top + 6, s.label, 1, BLACK);
        x += 18 + Canvas::text_width(s.label, 1) + 20;
    }
    c.save_png(path)
}

/// One panel of [`histograms_png`].
pub struct Histogram<'a> {
    /// Panel label (a class name).
    pub label: &'a str,
    /// The values to bin.
    pub values: &'a [f64],
    /// Drawn in the first palette colour (e.g. the normal class) instead
    /// of the second.
    pub highlight: bool,
}

/// Stacked histograms on a shared x axis (the 1st to 99th percentile of all
/// values, so a few extreme scores do not squash the rest), 40 bins, each
/// panel scaled to its own tallest bin.
pub fn histograms_png(path: &Path, panels: &[Histogram], title: &str, x_name: &str) -> Result<()> {
    const BINS: usize = 40;
    let panel_h: i64 = 52;
    let (left, top, width) = (150i64, 50i64, 540i64);
    let height = panel_h * panels.len().max(1) as i64;
    let mut c = Canvas::new(720, (top + height + 50) as usize);
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
    let (lo, hi) = match (pick(0.01), pick(0.99)) {
        (Some(a), Some(b)) if b > a => (a, b),
        (Some(a), _) => (a - 0.5, a + 0.5),
        _ => (0.0, 1.0),
    };
    let frame = Frame {
        left,
        top,
        width,
        height,
        x: (lo, hi),
        y: (0.0, 1.0),
    };
    c.text(left, 12, title, 2, BLACK);
    for k in 0..=4 {
        let f = k as f64 / 4.0;
        let gx = left + (f * width as f64) as i64;
        c.line((gx, top), (gx, top + height), GRID, 1);
        let xv = tick_label(lo + f * (hi - lo));
        c.text(
            gx - Canvas::text_width(&xv, 1) / 2,
            top + height + 6,
            &xv,
            1,
            BLACK,
        );
    }
    c.text(
        left + (width - Canvas::text_width(x_name, 1)) / 2,
        top + height + 20,
        x_name,
        1,
        BLACK,
    );
    let bin_w = width as f64 / BINS as f64;
    for (i, p) in panels.iter().enumerate() {
        let y0 = top + panel_h * i as i64;
        let mut counts = [0usize; BINS];
        for &v in p.values.iter().filter(|v| v.is_finite()) {
            let f = ((v - lo) / (hi - lo)).clamp(0.0, 1.0);
            counts[((f * BINS as f64) as usize).min(BINS - 1)] += 1;
        }
        let max = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
        let rgb = if p.highlight { PALETTE[0] } else { PALETTE[1] };
        for (b, &n) in counts.iter().enumerate() {
            let h = ((n as f64 / max) * (panel_h - 8) as f64).round() as i64;
            let x = frame
                .map(lo + (b as f64 + 0.5) * (hi - lo) / BINS as f64, 0.0)
                .0;
            c.rect(
                x - (bin_w / 2.0) as i64,
                y0 + panel_h - h,
                bin_w.ceil() as i64 - 1,
                h,
                rgb,
            );
        }
        c.line((left, y0 + panel_h), (left + width, y0 + panel_h), BLACK, 1);
        let label = format!("{} ({})", p.label, p.values.len());
        c.text(
            left - Canvas::text_width(&label, 1) - 8,
            y0 + panel_h / 2,
            &label,
            1,
            BLACK,
        );
    }
    c.line((left, top), (left, top + height), BLACK, 1);
    c.save_png(path)
}

/// Projects the rows of `x` (n x d, row-major) on their first two principal
/// components (power iteration with deflation on the covariance).
pub fn pca2(x: &[f32], n: usize, d: usize) -> Vec<[f64; 2]> {
    if n == 0 || d == 0 {
        return Vec::new();
    }
    let mut mean = vec![0f64; d];
    for row in x.chunks_exact(d) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += f64::from(v) / n as f64;
        }
    }
    let mut cov = vec![0f64; d * d];
    for row in x.chunks_exact(d) {
        let c: Vec<f64> = row
            .iter()
            .zip(&mean)
            .map(|(&v, m)| f64::from(v) - m)
            .collect();
        for i in 0..d {
            for j in i..d {
                cov[i * d + j] += c[i] * c[j];
            }
        }
    }
    for i in 0..d {
        for j in 0..i {
            cov[i * d + j] = cov[j * d + i];
        }
    }
    let mut comps: Vec<Vec<f64>> = Vec::new();
    for k in 0..2.min(d) {
        let mut v: Vec<f64> = (0..d)
            .map(|i| 1.0 + ((i * 7 + k * 3) % 5) as f64 * 0.1)
            .collect();
        let mut lambda = 0.0;
        for _ in 0..300 {
            let mut w: Vec<f64> = (0..d)
                .map(|i| (0..d).map(|j| cov[i * d + j] * v[j]).sum())
                .collect();
            for c in &comps {
                let dot: f64 = w.iter().zip(c).map(|(a, b)| a * b).sum();
                w.iter_mut().zip(c).for_each(|(a, b)| *a -= dot * b);
            }
            let norm = w.iter().map(|a| a * a).sum::<f64>().sqrt();
            if norm < 1e-12 {
                break;
            }
            w.iter_mut().for_each(|a| *a /= norm);
            let converged = (norm - lambda).abs() < 1e-10 * norm.max(1.0);
            lambda = norm;
            v = w;
            if converged {
                break;
            }
        }
        comps.push(v);
    }
    x.chunks_exact(d)
        .map(|row| {
            let mut p = [0.0; 2];
            for (k, c) in comps.iter().enumerate() {
                p[k] = row
                    .iter()
                    .zip(&mean)
                    .zip(c)
                    .map(|((&v, m), w)| (f64::from(v) - m) * w)
                    .sum();
            }
            p
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pca_finds_the_direction_of_largest_variance() {
        // Points along (3, 4)/5 with a little spread along (-4, 3)/5.
        let mut x = Vec::new();
        for i in 0..50 {
            let t = i as f32 - 25.0;
            let s = if i % 2 == 0 { 0.5 } else { -0.5 };
            x.extend([3.0 * t / 5.0 - 4.0 * s / 5.0, 4.0 * t / 5.0 + 3.0 * s / 5.0]);
        }
        let p = pca2(&x, 50, 2);
        let var = |k: usize| p.iter().map(|q| q[k] * q[k]).sum::<f64>() / 50.0;
        assert!(var(0) > 100.0 * var(1), "{} vs {}", var(0), var(1));
        assert!(
            (p[0][0].abs() - 24.5).abs() < 1e-3,
            "centred projection on the main axis: t = -25 minus the mean -0.5"
        );
        assert!((var(1) - 0.25).abs() < 1e-3);
    }

    #[test]
    fn figures_are_real_pngs_with_the_data_drawn() {
        let dir = tempfile::tempdir().unwrap();
        let pts = vec![[0.0, 0.0], [1.0, 1.0], [0.5, 0.2]];
        let path = dir.path().join("s.png");
        scatter_png(&path, &pts, &[0, 1, 2], "test: embedding (PCA)").unwrap();
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (720, 600));
        let has = |rgb: [u8; 3]| buf.chunks_exact(3).any(|p| p == rgb);
        for (k, rgb) in PALETTE.iter().enumerate().take(3) {
            assert!(has(*rgb), "class {k} colour drawn");
        }
        assert!(!has(PALETTE[5]), "no class 5 in the data or legend");
        let line = dir.path().join("l.png");
        let series = [Series {
            label: "train loss",
            points: vec![[0.0, 3.0], [1.0, 2.0], [2.0, 1.5]],
            rgb: PALETTE[3],
            thick: 2,
        }];
        line_png(&line, &series, "loss", "epoch", "loss").unwrap();
        assert!(std::fs::read(&line).unwrap().starts_with(b"\x89PNG"));
        assert!(scatter_png(&path, &pts, &[0], "x").is_err());
        let hist = dir.path().join("h.png");
        let (a, b) = (vec![0.0, 0.1, 0.2, 0.2], vec![5.0, 6.0, 7.0]);
        let panels = [
            Histogram {
                label: "normal",
                values: &a,
                highlight: true,
            },
            Histogram {
                label: "anomaly",
                values: &b,
                highlight: false,
            },
        ];
        histograms_png(&hist, &panels, "scores", "score").unwrap();
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&hist).unwrap()));
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.height, 50 + 2 * 52 + 50, "one band per panel");
        let has = |rgb: [u8; 3]| buf.chunks_exact(3).any(|p| p == rgb);
        assert!(has(PALETTE[0]) && has(PALETTE[1]), "both panels drawn");
        assert_eq!(tick_label(0.25), "0.25");
        assert_eq!(tick_label(1200.0), "1200");
        assert_eq!(tick_label(2.5), "2.5");
    }
}
