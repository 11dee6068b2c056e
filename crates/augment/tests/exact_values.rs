//! Every augmentation op against values worked out by hand: which way a
//! flip and a rotation go, the jitter factors, the hue rotation, the luma
//! weights of grayscale, the blur kernel and the bilinear resampling of a
//! crop. The ops' draws are factored out (explicit factors, p = 1), so each
//! expected pixel follows from the formula alone.

use selfsup_augment::ops::{
    color_jitter, gaussian_blur, resample_window, JitterFactors, RandomGrayscale, Solarize,
};
use selfsup_augment::{hflip, rotate90, shifted_crop, Image, Transform};

fn rng() -> selfsup_core::rng::Rng {
    selfsup_core::rng::stream(0, "exact")
}

const NEUTRAL: JitterFactors = JitterFactors {
    brightness: 1.0,
    contrast: 1.0,
    saturation: 1.0,
    hue: 0.0,
};

#[test]
fn flips_mirror_left_right_and_rotations_turn_counter_clockwise() {
    let img = Image::new(1, 2, 3, vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(hflip(&img).data, [3, 2, 1, 6, 5, 4]);
    // 1 2 3      3 6
    // 4 5 6  ->  2 5  (a quarter turn counter-clockwise)
    //            1 4
    let r = rotate90(&img, 1);
    assert_eq!((r.h, r.w, r.data.clone()), (3, 2, vec![3, 6, 2, 5, 1, 4]));
    assert_eq!(rotate90(&img, 2).data, [6, 5, 4, 3, 2, 1]);
    assert_eq!(rotate90(&img, 3).data, [4, 1, 5, 2, 6, 3]);
    // Padded by 1, the window at (0, 0) shifts the image right and down.
    assert_eq!(shifted_crop(&img, 1, 0, 0).data, [0, 0, 0, 0, 1, 2]);
}

#[test]
fn jitter_factors_apply_as_written() {
    let gray = Image::new(1, 1, 4, vec![0, 100, 200, 60]);
    // Brightness 1.5: 0, 150, 300 -> 255, 90.
    let b = JitterFactors {
        brightness: 1.5,
        ..NEUTRAL
    };
    assert_eq!(color_jitter(&gray, b).data, [0, 150, 255, 90]);
    // Contrast 0.5 around the mean 90: 45, 95, 145, 75.
    let k = JitterFactors {
        contrast: 0.5,
        ..NEUTRAL
    };
    assert_eq!(color_jitter(&gray, k).data, [45, 95, 145, 75]);
    // Saturation and hue leave a 1-channel image alone.
    let sh = JitterFactors {
        saturation: 0.0,
        hue: 0.25,
        ..NEUTRAL
    };
    assert_eq!(color_jitter(&gray, sh).data, gray.data);
    // Saturation 0 on colour: every channel becomes the luma
    // 0.299 * 100 + 0.587 * 50 + 0.114 * 200 = 82.05.
    let rgb = Image::new(3, 1, 1, vec![100, 50, 200]);
    let s0 = JitterFactors {
        saturation: 0.0,
        ..NEUTRAL
    };
    assert_eq!(color_jitter(&rgb, s0).data, [82, 82, 82]);
    // Saturation 2 doubles the distance from the luma: 118, 18, 318 -> 255.
    let s2 = JitterFactors {
        saturation: 2.0,
        ..NEUTRAL
    };
    assert_eq!(color_jitter(&rgb, s2).data, [118, 18, 255]);
    // Contrast on colour blends with the mean luma of the image.
    let two = Image::new(3, 1, 2, vec![100, 0, 50, 0, 200, 0]);
    // Lumas 82.05 and 0: mean 41.025; contrast 0 flattens to it.
    let k0 = JitterFactors {
        contrast: 0.0,
        ..NEUTRAL
    };
    assert_eq!(color_jitter(&two, k0).data, [41; 6]);
}

#[test]
fn hue_rotates_chroma_in_yiq_and_keeps_luma() {
    // Pure red: Y = 76.245, I = 151.98, Q = 53.805. Half a turn negates I
    // and Q: R = 76.245 - 0.956 * 151.98 - 0.621 * 53.805 < 0 -> 0,
    // G = 76.245 + 0.272 * 151.98 + 0.647 * 53.805 = 152.3,
    // B = 76.245 + 1.106 * 151.98 - 1.703 * 53.805 = 152.6.
    let red = Image::new(3, 1, 1, vec![255, 0, 0]);
    let half = JitterFactors {
        hue: 0.5,
        ..NEUTRAL
    };
    assert_eq!(color_jitter(&red, half).data, [0, 152, 153]);
    // A full turn is the identity, up to the YIQ round trip's rounding.
    let full = JitterFactors {
        hue: 1.0,
        ..NEUTRAL
    };
    let px = Image::new(3, 1, 1, vec![120, 80, 40]);
    let back = color_jitter(&px, full).data;
    for (a, b) in back.iter().zip(&px.data) {
        assert!(a.abs_diff(*b) <= 1, "{back:?}");
    }
}

#[test]
fn grayscale_uses_bt601_luma_and_solarize_inverts_above_the_threshold() {
    let rgb = Image::new(3, 1, 2, vec![100, 255, 50, 255, 200, 255]);
    let g = RandomGrayscale { p: 1.0 }.apply(&rgb, &mut rng());
    // 82.05 and 255 (weights sum to 1).
    assert_eq!(g.data, [82, 255, 82, 255, 82, 255]);
    let s = Solarize {
        threshold: 128,
        p: 1.0,
    }
    .apply(&Image::new(1, 1, 3, vec![127, 128, 255]), &mut rng());
    assert_eq!(s.data, [127, 127, 0]);
}

#[test]
fn blur_uses_a_normalised_three_sigma_gaussian_with_reflected_edges() {
    // sigma 1: radius 3, weights exp(-d^2 / 2) / 2.5066 = 0.3990, 0.2420,
    // 0.0540, 0.0044. An impulse of 255 in a 1 x 7 row spreads to
    // 255 x (0.0044 + 0.0044 reflected), 0.0540, 0.2420, 0.3990, ...
    let row = Image::new(1, 1, 7, vec![0, 0, 0, 255, 0, 0, 0]);
    assert_eq!(gaussian_blur(&row, 1.0).data, [2, 14, 62, 102, 62, 14, 2]);
    // A column blurs the same way (the kernel is separable).
    let col = Image::new(1, 7, 1, vec![0, 0, 0, 255, 0, 0, 0]);
    assert_eq!(gaussian_blur(&col, 1.0).data, [2, 14, 62, 102, 62, 14, 2]);
    assert_eq!(gaussian_blur(&row, 0.0).data, row.data);
}

#[test]
fn a_resized_crop_samples_bilinearly_at_pixel_centres() {
    let img = Image::new(1, 2, 2, vec![0, 100, 200, 40]);
    // The whole image is the identity.
    assert_eq!(
        resample_window(&img, 0.0, 0.0, 2.0, 2.0, 0.0).data,
        img.data
    );
    // The centre 1 x 1 window, blown up to 2 x 2: output (0, 0) samples
    // (0.25, 0.25): top 0 * 0.75 + 100 * 0.25 = 25, bottom 200 * 0.75 +
    // 40 * 0.25 = 160, then 25 * 0.75 + 160 * 0.25 = 58.75; likewise
    // 76.25, 126.25 and 78.75.
    let zoom = resample_window(&img, 0.5, 0.5, 1.0, 1.0, 0.0);
    assert_eq!(zoom.data, [59, 76, 126, 79]);
    // Outside the image reads the fill: a window shifted fully right.
    let out = resample_window(&img, 0.0, 2.0, 2.0, 2.0, 9.0);
    assert_eq!(out.data, [9, 9, 9, 9]);
}
