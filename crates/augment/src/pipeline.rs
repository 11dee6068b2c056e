//! A serialisable chain of transforms ([`Pipeline`]) and the SimCLR presets.

use crate::ops::{
    ColorJitter, GaussianBlur, RandomContrast, RandomFlip, RandomGrayscale, RandomResizedCrop,
    RandomZoom, Solarize,
};
use crate::{CropFlip, Image, Transform};
use selfsup_core::rng::Rng;
use serde::{Deserialize, Serialize};

/// One step of a [`Pipeline`]; in JSON `{"op": "resized_crop", ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// See [`RandomResizedCrop`].
    ResizedCrop(RandomResizedCrop),
    /// See [`RandomZoom`].
    Zoom(RandomZoom),
    /// See [`RandomFlip`].
    Flip(RandomFlip),
    /// See [`CropFlip`].
    CropFlip(CropFlip),
    /// See [`ColorJitter`].
    ColorJitter(ColorJitter),
    /// See [`RandomGrayscale`].
    Grayscale(RandomGrayscale),
    /// See [`GaussianBlur`].
    Blur(GaussianBlur),
    /// See [`Solarize`].
    Solarize(Solarize),
    /// See [`RandomContrast`].
    Contrast(RandomContrast),
}

impl Transform for Op {
    fn apply(&self, img: &Image, rng: &mut Rng) -> Image {
        match self {
            Op::ResizedCrop(t) => t.apply(img, rng),
            Op::Zoom(t) => t.apply(img, rng),
            Op::Flip(t) => t.apply(img, rng),
            Op::CropFlip(t) => t.apply(img, rng),
            Op::ColorJitter(t) => t.apply(img, rng),
            Op::Grayscale(t) => t.apply(img, rng),
            Op::Blur(t) => t.apply(img, rng),
            Op::Solarize(t) => t.apply(img, rng),
            Op::Contrast(t) => t.apply(img, rng),
        }
    }
}

/// Transforms applied in order. The empty pipeline is the identity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Pipeline {
    /// The steps.
    pub ops: Vec<Op>,
}

impl Transform for Pipeline {
    fn apply(&self, img: &Image, rng: &mut Rng) -> Image {
        let mut out = img.clone();
        for op in &self.ops {
            out = op.apply(&out, rng);
        }
        out
    }
}

impl Pipeline {
    /// The SimCLR recipe at CIFAR scale (Chen et al., 2020, appendix B.9):
    /// resized crop of 8-100 % of the area, flip, colour jitter
    /// (0.4, 0.4, 0.4, 0.1) with probability 0.8, grayscale with probability
    /// 0.2, no blur (it hurts at 32x32).
    pub fn simclr_cifar() -> Self {
        Self {
            ops: vec![
                Op::ResizedCrop(RandomResizedCrop {
                    scale: [0.08, 1.0],
                    ratio: [0.75, 4.0 / 3.0],
                }),
                Op::Flip(RandomFlip { p: 0.5 }),
                Op::ColorJitter(ColorJitter {
                    brightness: 0.4,
                    contrast: 0.4,
                    saturation: 0.4,
                    hue: 0.1,
                    p: 0.8,
                }),
                Op::Grayscale(RandomGrayscale { p: 0.2 }),
            ],
        }
    }

    /// The SimCLR recipe at MNIST scale (28x28, one channel): a gentler
    /// crop (20-100 % of the area: small digits and garments lose their
    /// identity below that), flip, brightness/contrast jitter with
    /// probability 0.8, and a light blur half of the time.
    pub fn simclr_mnist() -> Self {
        Self {
            ops: vec![
                Op::ResizedCrop(RandomResizedCrop {
                    scale: [0.2, 1.0],
                    ratio: [0.75, 4.0 / 3.0],
                }),
                Op::Flip(RandomFlip { p: 0.5 }),
                Op::ColorJitter(ColorJitter {
                    brightness: 0.4,
                    contrast: 0.4,
                    saturation: 0.0,
                    hue: 0.0,
                    p: 0.8,
                }),
                Op::Blur(GaussianBlur {
                    sigma: [0.1, 1.0],
                    p: 0.5,
                }),
            ],
        }
    }

    /// The SimCLR preset for images with `channels` channels and side
    /// `size`: the MNIST recipe for gray images up to 28 pixels, the CIFAR
    /// one otherwise.
    pub fn simclr_for(channels: usize, size: usize) -> Self {
        if channels == 1 && size <= 28 {
            Self::simclr_mnist()
        } else {
            Self::simclr_cifar()
        }
    }

    /// Light augmentation for fine-tuning on photos (the classic transfer-
    /// learning recipe): horizontal flip half of the time, a zoom by a
    /// factor in [0.9, 1.2] about the centre, and a per-channel contrast
    /// change of up to 20 %.
    pub fn flip_zoom_contrast() -> Self {
        Self {
            ops: vec![
                Op::Flip(RandomFlip { p: 0.5 }),
                Op::Zoom(RandomZoom { factor: [0.9, 1.2] }),
                Op::Contrast(RandomContrast { factor: 0.2 }),
            ],
        }
    }

    /// The names [`Pipeline::preset`] knows.
    pub const PRESETS: [&'static str; 4] =
        ["simclr-cifar", "simclr-mnist", "flip-zoom-contrast", "none"];

    /// Looks a preset up by name (one of [`Pipeline::PRESETS`]).
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "simclr-cifar" => Some(Self::simclr_cifar()),
            "simclr-mnist" => Some(Self::simclr_mnist()),
            "flip-zoom-contrast" => Some(Self::flip_zoom_contrast()),
            "none" => Some(Self::default()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply_batch;

    #[test]
    fn every_preset_name_resolves() {
        for name in Pipeline::PRESETS {
            assert!(Pipeline::preset(name).is_some(), "{name}");
        }
        assert!(Pipeline::preset("zoom").is_none());
    }

    #[test]
    fn flip_zoom_contrast_varies_images_and_is_seeded() {
        // 8 RGB 16x16 images with texture, so every op changes something.
        let px: Vec<u8> = (0..8 * 3 * 16 * 16)
            .map(|i| ((i * 37) % 251) as u8)
            .collect();
        let p = Pipeline::flip_zoom_contrast();
        let a = apply_batch(&p, &px, (3, 16, 16), 5, 0);
        assert_eq!(a.len(), px.len());
        assert_ne!(a, px);
        assert_eq!(a, apply_batch(&p, &px, (3, 16, 16), 5, 0));
        assert_ne!(a, apply_batch(&p, &px, (3, 16, 16), 5, 1));
        let json = serde_json::to_string(&p).unwrap();
        assert!(
            json.contains("\"zoom\"") && json.contains("\"contrast\""),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Pipeline>(&json).unwrap(), p);
    }
}
