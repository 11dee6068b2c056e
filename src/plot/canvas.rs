//! The drawing surface every figure shares: font registration, an RGB
//! buffer behind a plotters backend, and the atomic PNG write.

use crate::core::{fsutil, Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use std::path::Path;
use std::sync::Once;

/// DejaVu Sans 2.37 (assets/fonts/README.md has its source and licence).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// The family name every text style in the figures uses.
pub const FAMILY: &str = "sans-serif";

/// The drawing area a figure draws on.
pub type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// What a drawing closure returns: plotters' errors, boxed.
pub type Drawn = std::result::Result<(), Box<dyn std::error::Error>>;

/// Registers the embedded font under [`FAMILY`], once per process.
fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is a fixed, known-good file: a failure here is a build defect.
        register_font(FAMILY, FontStyle::Normal, FONT)
            .unwrap_or_else(|_| panic!("the embedded DejaVu Sans does not parse"));
    });
}

/// Text of `size` pixels in the embedded font.
pub fn text(size: u32) -> TextStyle<'static> {
    (FAMILY, size).into_font().color(&BLACK)
}

/// A plotters colour from an RGB triple.
pub fn rgb(c: [u8; 3]) -> RGBColor {
    RGBColor(c[0], c[1], c[2])
}

/// Renders a `w` x `h` figure with `draw` on a white background and writes
/// it to `path` as an 8-bit RGB PNG, atomically.
pub fn render_png(
    path: &Path,
    (w, h): (u32, u32),
    draw: impl FnOnce(&Area) -> Drawn,
) -> Result<()> {
    register();
    let mut px = vec![255u8; w as usize * h as usize * 3];
    {
        let area = BitMapBackend::with_buffer(&mut px, (w, h)).into_drawing_area();
        draw(&area).map_err(|e| Error::format(path, format!("drawing the figure: {e}")))?;
        area.present()
            .map_err(|e| Error::format(path, format!("drawing the figure: {e}")))?;
    }
    fsutil::write_atomic(path, &encode_png(path, w, h, &px)?)
}

fn encode_png(path: &Path, w: u32, h: u32, px: &[u8]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut enc = png::Encoder::new(&mut bytes, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc
        .write_header()
        .map_err(|e| Error::format(path, format!("PNG header: {e}")))?;
    writer
        .write_image_data(px)
        .map_err(|e| Error::format(path, format!("PNG data: {e}")))?;
    writer
        .finish()
        .map_err(|e| Error::format(path, format!("PNG end: {e}")))?;
    Ok(bytes)
}

/// The finite range of `vals`, padded by 4 % on each side (a unit range
/// around a constant, 0..1 when nothing is finite).
pub fn padded_range(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 * lo.abs().max(1.0) {
        return (lo - 0.5, hi + 0.5);
    }
    let pad = 0.04 * (hi - lo);
    (lo - pad, hi + pad)
}

/// A short tick label: at most 3 significant digits, no trailing zeros,
/// scientific notation for very small or large magnitudes.
pub fn tick_label(v: f64) -> String {
    let a = v.abs();
    if a < 1e-12 {
        return "0".into();
    }
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.1e}");
    }
    let decimals = (2 - a.log10().floor() as i32).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// The tick labeller for an axis over `(lo, hi)`: one notation for every
/// tick (scientific when the whole axis is below 0.01 or above 10^5 in
/// magnitude, as learning rates are), else [`tick_label`].
pub fn axis_labeller((lo, hi): (f64, f64)) -> impl Fn(&f64) -> String {
    let top = lo.abs().max(hi.abs());
    let scientific = top > 0.0 && !(1e-2..1e5).contains(&top);
    move |v: &f64| {
        if scientific {
            if v.abs() < 1e-3 * top {
                "0".into()
            } else {
                format!("{v:.1e}")
            }
        } else {
            tick_label(*v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_are_short_and_exact() {
        assert_eq!(tick_label(0.25), "0.25");
        assert_eq!(tick_label(1200.0), "1200");
        assert_eq!(tick_label(2.5), "2.5");
        assert_eq!(tick_label(0.001), "0.001");
        assert_eq!(tick_label(-0.5), "-0.5");
        assert_eq!(tick_label(3e-4), "3.0e-4");
        assert_eq!(tick_label(0.0), "0");
        assert_eq!(tick_label(12.345), "12.3");
        let lr = axis_labeller((0.0, 2e-3));
        assert_eq!([lr(&2e-3), lr(&8e-4), lr(&1e-9)], ["2.0e-3", "8.0e-4", "0"]);
        let loss = axis_labeller((3.5, 5.7));
        assert_eq!([loss(&4.0), loss(&5.25)], ["4", "5.25"]);
    }

    #[test]
    fn ranges_pad_and_survive_degenerate_input() {
        assert_eq!(padded_range([0.0, 10.0].into_iter()), (-0.4, 10.4));
        assert_eq!(padded_range([3.0, 3.0].into_iter()), (2.5, 3.5));
        assert_eq!(padded_range([f64::NAN].into_iter()), (0.0, 1.0));
    }
}
