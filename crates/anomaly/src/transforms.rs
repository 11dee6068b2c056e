//! The transformations a detector learns to recognise. Each is a horizontal
//! flip (or not), then an integer translation with reflected borders, then
//! a rotation by a multiple of 90 degrees; the identity is always index 0.

use selfsup_augment::{hflip, rotate90, Image};
use selfsup_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// Names accepted by [`TransformSet::from_name`].
pub const NAMES: [&str; 3] = ["rot4", "rot-flip8", "geo72"];

/// One geometric transformation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transformation {
    /// Mirror left-right first.
    pub flip: bool,
    /// Shift right by this many pixels (negative: left), as a fraction
    /// code: -1, 0 or 1 times the set's shift.
    pub tx: i8,
    /// Shift down (negative: up), same code.
    pub ty: i8,
    /// Counter-clockwise quarter turns, 0..4.
    pub rot: u8,
}

/// A selectable set of transformations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransformSet {
    /// The four rotations (0, 90, 180, 270 degrees).
    Rot4,
    /// Rotations x horizontal flip (8).
    RotFlip8,
    /// Flip x translations {-s, 0, s}^2 x rotations (72), the set of Golan
    /// & El-Yaniv (2018), with s a quarter of the image side (8 px at 32).
    Geo72,
}

impl TransformSet {
    /// Parses `rot4`, `rot-flip8` or `geo72`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "rot4" => Ok(Self::Rot4),
            "rot-flip8" => Ok(Self::RotFlip8),
            "geo72" => Ok(Self::Geo72),
            other => Err(Error::invalid(
                "--transforms",
                format!(
                    "unknown transformation set {other:?}; available: {}",
                    NAMES.join(", ")
                ),
            )),
        }
    }

    /// The set's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rot4 => "rot4",
            Self::RotFlip8 => "rot-flip8",
            Self::Geo72 => "geo72",
        }
    }

    /// The transformations, identity first.
    pub fn list(self) -> Vec<Transformation> {
        let (flips, shifts): (&[bool], &[i8]) = match self {
            Self::Rot4 => (&[false], &[0]),
            Self::RotFlip8 => (&[false, true], &[0]),
            Self::Geo72 => (&[false, true], &[0, -1, 1]),
        };
        let mut out = Vec::new();
        for &flip in flips {
            for &tx in shifts {
                for &ty in shifts {
                    for rot in 0..4 {
                        out.push(Transformation { flip, tx, ty, rot });
                    }
                }
            }
        }
        out
    }

    /// Number of transformations.
    pub fn len(self) -> usize {
        self.list().len()
    }

    /// Never empty; here for clippy's `len` convention.
    pub fn is_empty(self) -> bool {
        false
    }
}

/// Translation step in pixels for a side of `size` (a quarter, rounded).
pub fn shift_pixels(size: usize) -> usize {
    (size as f64 / 4.0).round() as usize
}

/// Reflect index `i` into 0..n (mirror without repeating the edge pixel,
/// like `scipy.ndimage`'s `mirror`).
fn reflect(i: i64, n: i64) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let m = i.rem_euclid(period);
    (if m < n { m } else { period - m }) as usize
}

/// Shifts `img` by (dx, dy) pixels, filling the uncovered border by
/// reflection.
pub fn translate(img: &Image, dx: i64, dy: i64) -> Image {
    if dx == 0 && dy == 0 {
        return img.clone();
    }
    let (c, h, w) = (img.c, img.h, img.w);
    let mut out = vec![0u8; img.data.len()];
    for ch in 0..c {
        let plane = &img.data[ch * h * w..(ch + 1) * h * w];
        let dst = &mut out[ch * h * w..(ch + 1) * h * w];
        for y in 0..h {
            let sy = reflect(y as i64 - dy, h as i64);
            for x in 0..w {
                let sx = reflect(x as i64 - dx, w as i64);
                dst[y * w + x] = plane[sy * w + sx];
            }
        }
    }
    Image::new(c, h, w, out)
}

/// Applies `t` to `img` (flip, translate, rotate). Rotation needs a square
/// image.
pub fn apply(img: &Image, t: Transformation) -> Image {
    let mut out = if t.flip { hflip(img) } else { img.clone() };
    if t.tx != 0 || t.ty != 0 {
        let s = shift_pixels(img.h.min(img.w)) as i64;
        out = translate(&out, i64::from(t.tx) * s, i64::from(t.ty) * s);
    }
    if t.rot != 0 {
        out = rotate90(&out, t.rot as usize);
    }
    out
}

/// Builds a batch of transformed images: entry j is `pixels`' image
/// `items[j].0` under transformation `items[j].1` of `list`.
pub fn transform_batch(
    pixels: &[u8],
    shape: (usize, usize, usize),
    list: &[Transformation],
    items: &[(usize, usize)],
) -> Vec<u8> {
    let (c, h, w) = shape;
    let per = c * h * w;
    let mut out = Vec::with_capacity(items.len() * per);
    for &(i, t) in items {
        let img = Image::new(c, h, w, pixels[i * per..(i + 1) * per].to_vec());
        out.extend_from_slice(&apply(&img, list[t]).data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(c: usize, n: usize) -> Image {
        Image::new(
            c,
            n,
            n,
            (0..c * n * n).map(|v| (v * 7 % 251) as u8).collect(),
        )
    }

    #[test]
    fn sets_have_the_published_sizes_identity_first_and_no_duplicates() {
        for (set, n) in [
            (TransformSet::Rot4, 4),
            (TransformSet::RotFlip8, 8),
            (TransformSet::Geo72, 72),
        ] {
            let l = set.list();
            assert_eq!(l.len(), n);
            assert_eq!(TransformSet::from_name(set.name()).unwrap(), set);
            assert_eq!(
                l[0],
                Transformation {
                    flip: false,
                    tx: 0,
                    ty: 0,
                    rot: 0
                }
            );
            // Distinct transformations give distinct images of a generic one.
            let img = ramp(1, 12);
            let outs: std::collections::HashSet<Vec<u8>> =
                l.iter().map(|&t| apply(&img, t).data).collect();
            assert_eq!(outs.len(), n, "{}", set.name());
        }
        let e = TransformSet::from_name("rot5").unwrap_err().to_string();
        assert!(e.contains("--transforms") && e.contains("geo72"), "{e}");
    }

    #[test]
    fn translation_moves_content_and_reflects_the_border() {
        let img = Image::new(1, 1, 5, vec![10, 20, 30, 40, 50]);
        assert_eq!(translate(&img, 2, 0).data, vec![30, 20, 10, 20, 30]);
        assert_eq!(translate(&img, -2, 0).data, vec![30, 40, 50, 40, 30]);
        let sq = ramp(2, 9);
        let back = translate(&translate(&sq, 0, 2), 0, -2);
        // Rows 2..7 survive a shift down and back up unchanged.
        for ch in 0..2 {
            for y in 2..7 {
                for x in 0..9 {
                    let i = ch * 81 + y * 9 + x;
                    assert_eq!(back.data[i], sq.data[i]);
                }
            }
        }
        assert_eq!(shift_pixels(32), 8);
        assert_eq!(shift_pixels(28), 7);
    }

    #[test]
    fn every_transformation_keeps_shape_and_pixel_values() {
        let img = ramp(3, 10);
        let mut sorted = img.data.clone();
        sorted.sort_unstable();
        for t in TransformSet::Geo72.list() {
            let out = apply(&img, t);
            assert_eq!((out.c, out.h, out.w), (3, 10, 10));
            if t.tx == 0 && t.ty == 0 {
                // Flips and rotations only permute pixels.
                let mut s = out.data.clone();
                s.sort_unstable();
                assert_eq!(s, sorted, "{t:?}");
            } else {
                assert!(out.data.iter().all(|v| img.data.contains(v)));
            }
        }
        let batch = transform_batch(
            &img.data,
            (3, 10, 10),
            &TransformSet::Rot4.list(),
            &[(0, 2)],
        );
        assert_eq!(batch, rotate90(&img, 2).data);
    }
}
