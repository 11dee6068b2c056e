//! Figures decoded back: size, the data's colours, and the text drawn.

use super::*;
use std::path::Path;

/// Width, height and RGB pixels of the PNG at `path`.
fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut reader = png::Decoder::new(file).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn has(px: &[u8], rgb: [u8; 3]) -> bool {
    px.chunks_exact(3).any(|p| p == rgb)
}

/// The rightmost column with a dark (text) pixel among columns `x0..` of
/// rows `y0..y1`.
fn rightmost_dark(px: &[u8], w: u32, (x0, y0, y1): (u32, u32, u32)) -> Option<u32> {
    (x0..w).rev().find(|&x| {
        (y0..y1).any(|y| {
            let i = 3 * (y * w + x) as usize;
            px[i..i + 3].iter().all(|&c| c < 90)
        })
    })
}

#[test]
fn scatter_colours_each_class_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let pts = vec![[0.0, 0.0], [1.0, 1.0], [0.5, 0.2], [0.7, 0.9]];
    let classes = [0, 1, 2, 0];
    let draw = |names: &[String], file: &str| {
        let path = dir.path().join(file);
        scatter_png(&path, &pts, &classes, names, "test: embedding", ("x", "y")).unwrap();
        decode(&path)
    };
    let short: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let long: Vec<String> = ["T-shirt/top, the long name", "b", "c"]
        .map(String::from)
        .to_vec();
    let (w, h, px) = draw(&short, "short.png");
    assert_eq!((w, h), (1000, 720));
    for k in 0..3 {
        assert!(has(&px, colour(k)), "class {k} drawn");
    }
    assert!(!has(&px, colour(5)), "no class 5 in the data or the legend");
    // The legend's first row (class 0) sits near the top of the right-hand
    // legend column; a longer name reaches further right.
    let row = (790, 50, 85);
    let (_, _, px_long) = draw(&long, "long.png");
    let (a, b) = (
        rightmost_dark(&px, w, row),
        rightmost_dark(&px_long, w, row),
    );
    assert!(a.is_some(), "the short name is drawn");
    assert!(b > a, "the long name is drawn longer: {b:?} vs {a:?}");
    let err = scatter_png(
        &dir.path().join("x.png"),
        &pts,
        &[0],
        &short,
        "x",
        ("x", "y"),
    );
    assert!(err.unwrap_err().to_string().contains("one class per point"));
}

#[test]
fn panels_stack_on_one_axis_at_the_asked_height() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.png");
    let line = |label, rgb, points| Series {
        label,
        points,
        rgb,
        thick: 2,
    };
    let panels = [
        Panel {
            y_name: "loss",
            series: vec![line(
                "train",
                colour(3),
                vec![[0.0, 3.0], [1.0, 2.0], [2.0, 1.5]],
            )],
            weight: 2,
            y_range: None,
            legend_lower_right: false,
        },
        Panel {
            y_name: "learning rate",
            series: vec![line("lr", colour(4), vec![[0.0, 1e-3], [2.0, 0.0]])],
            weight: 1,
            y_range: None,
            legend_lower_right: false,
        },
    ];
    panels_png(&path, &panels, "loss", "epoch", 700).unwrap();
    let (w, h, px) = decode(&path);
    assert_eq!((w, h), (900, 700));
    let rows_with = |rgb: [u8; 3]| -> Vec<u32> {
        (0..h)
            .filter(|&y| (0..w).any(|x| px[3 * (y * w + x) as usize..][..3] == rgb))
            .collect()
    };
    let (loss, lr) = (rows_with(colour(3)), rows_with(colour(4)));
    assert!(!loss.is_empty() && !lr.is_empty(), "both panels drawn");
    assert!(
        loss.iter().max() < lr.iter().min(),
        "the loss panel is above the lr panel"
    );
    assert!(panels_png(&path, &[], "x", "x", 300).is_err());
}

#[test]
fn histograms_get_one_band_per_group_and_count_into_bins() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.png");
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
    histograms_png(&path, &panels, "scores", "score").unwrap();
    let (_, h, px) = decode(&path);
    assert_eq!(h, 45 + 2 * BAND_H + 60, "one band per group");
    assert!(
        has(&px, PALETTE[0]) && has(&px, PALETTE[1]),
        "both groups drawn"
    );
    let counts = hist::bin_counts(&[0.0, 0.5, 0.99, 1.0, 7.0, -3.0, f64::NAN], (0.0, 1.0));
    assert_eq!(counts[0], 2, "0.0 and the clamped -3.0");
    assert_eq!(counts[20], 1, "0.5");
    assert_eq!(counts[BINS - 1], 3, "0.99, 1.0 and the clamped 7.0");
    assert_eq!(counts.iter().sum::<usize>(), 6, "NaN left out");
}
