//! `cargo xtask fetch` end to end against the Hub stand-in on 127.0.0.1
//! (the real hf-hub client, the real parquet decoding): a dataset is
//! downloaded, decoded and cached once, then reused without the network.

#[path = "../../crates/hub/tests/stand_in/mod.rs"]
mod stand_in;

use stand_in::{mnist_split, parquet_file, start, State, DIGITS};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

/// Runs xtask against the stand-in at `url`, with its caches under `home`.
fn xtask(url: &str, home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .env("HF_ENDPOINT", url)
        .env("HF_HOME", home.join("hf-home"))
        .env("HF_HUB_CACHE", home.join("hf-home/hub"))
        .env("SELFSUP_CACHE", home.join("cache"))
        .env_remove("HF_TOKEN")
        .output()
        .expect("run xtask")
}

#[test]
fn fetch_downloads_decodes_caches_and_then_reuses() {
    let state = Arc::new(Mutex::new(State::default()));
    {
        let mut st = state.lock().unwrap();
        let repo = st.repos.entry("datasets/ylecun/mnist".into()).or_default();
        let (tr, ytr) = mnist_split(30);
        let (te, yte) = mnist_split(10);
        for (split, images, labels) in [("train", &tr, &ytr), ("test", &te, &yte)] {
            repo.insert(
                format!("mnist/{split}-00000-of-00001.parquet"),
                parquet_file("image", "label", images, labels, &DIGITS, &[]),
            );
        }
    }
    let server = start(state.clone());
    let home = tempfile::tempdir().unwrap();

    let out = xtask(
        &server.url,
        home.path(),
        &["fetch", "--dataset", "mnist", "--quiet"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(home.path().join("cache/datasets/mnist/dataset.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (&manifest["train_images"], &manifest["test_images"]),
        (&serde_json::json!(30), &serde_json::json!(10))
    );
    assert_eq!(manifest["image_shape"], serde_json::json!([1, 28, 28]));

    // Cached: the second fetch downloads nothing.
    let downloads = |st: &State| st.log.iter().filter(|l| l.contains(".parquet")).count();
    let before = downloads(&state.lock().unwrap());
    let out = xtask(
        &server.url,
        home.path(),
        &["fetch", "--dataset", "mnist", "--quiet"],
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(downloads(&state.lock().unwrap()), before);

    // A dataset the catalog lacks is an error (1); a missing flag is usage (2).
    let out = xtask(
        &server.url,
        home.path(),
        &["fetch", "--dataset", "imagenet-22k"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("imagenet-22k"));
    let out = xtask(&server.url, home.path(), &["fetch"]);
    assert_eq!(out.status.code(), Some(2));
}

/// A 16x16 PNG of class `c` of 10: stripes whose direction and spacing
/// follow the class, in the class's own hue, on gray.
fn striped_png(c: usize, i: usize) -> Vec<u8> {
    let hues = [
        [220, 40, 40],
        [40, 200, 40],
        [40, 60, 230],
        [230, 200, 30],
        [200, 40, 200],
        [30, 200, 200],
        [240, 130, 20],
        [120, 60, 20],
        [130, 230, 120],
        [90, 20, 160],
    ];
    let shade = 0.6 + 0.04 * (i % 10) as f32;
    let img = image::RgbImage::from_fn(16, 16, |x, y| {
        let along = if c.is_multiple_of(2) { x } else { y };
        let on = (along / (1 + c as u32 / 4)).is_multiple_of(2);
        if on {
            let h = hues[c];
            image::Rgb(h.map(|v| (v as f32 * shade) as u8))
        } else {
            image::Rgb([128, 128, 128])
        }
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Runs a one-epoch colorization pipeline on `dataset` and checks its
/// report and reconstruction figure.
fn colorization_run(url: &str, home: &Path, dataset: &str, out: &Path) {
    let o = out.to_str().unwrap();
    let args = [
        "pipeline",
        "--dataset",
        dataset,
        "--pretext",
        "colorization",
        "--image-size",
        "16",
        "--channels",
        "3",
        "--labels-per-class",
        "2",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--transfer-epochs",
        "1",
        "--no-knn-monitor",
        "--no-lpft",
        "--quiet",
        "--out",
        o,
    ];
    let r = xtask(url, home, &args);
    assert_eq!(
        r.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let pre = &report["pretraining"][0];
    assert_eq!(pre["method"], "colorization");
    assert!(pre["val_loss"].as_f64().unwrap().is_finite());
    let png = std::fs::read(out.join("figures/colorization-reconstruction.png")).unwrap();
    assert!(png.starts_with(b"\x89PNG"));
}

#[test]
fn colorization_runs_on_image_folders_and_fetched_colour_datasets_and_refuses_gray() {
    let names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ];
    let state = Arc::new(Mutex::new(State::default()));
    {
        let mut st = state.lock().unwrap();
        let repo = st
            .repos
            .entry("datasets/uoft-cs/cifar10".into())
            .or_default();
        for (split, per) in [("train", 8), ("test", 3)] {
            let labels: Vec<i64> = (0..10 * per as i64).map(|i| i % 10).collect();
            let images: Vec<Vec<u8>> = (0..labels.len())
                .map(|i| striped_png(labels[i] as usize, i))
                .collect();
            repo.insert(
                format!("plain_text/{split}-00000-of-00001.parquet"),
                parquet_file("img", "label", &images, &labels, &names, &[]),
            );
        }
    }
    let server = start(state.clone());
    let home = tempfile::tempdir().unwrap();

    // Gray images: refused, naming the dataset and its channels; nothing written.
    let gray = home.path().join("gray");
    let r = xtask(
        &server.url,
        home.path(),
        &[
            "pipeline",
            "--pretext",
            "colorization",
            "--quiet",
            "--out",
            gray.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(
        err.contains("fashion-mnist") && err.contains("1-channel"),
        "{err}"
    );
    assert!(!gray.exists());

    // An image folder of colour PNGs (train/ and test/, one folder per class).
    let folder = home.path().join("stripes");
    for (split, per) in [("train", 8), ("test", 3)] {
        for (c, name) in names.iter().enumerate().take(3) {
            let d = folder.join(split).join(name);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..per {
                std::fs::write(d.join(format!("{i}.png")), striped_png(c, i)).unwrap();
            }
        }
    }
    colorization_run(
        &server.url,
        home.path(),
        folder.to_str().unwrap(),
        &home.path().join("run-folder"),
    );

    // A fetched dataset (CIFAR-10's layout, served by the stand-in).
    let r = xtask(
        &server.url,
        home.path(),
        &["fetch", "--dataset", "cifar10", "--quiet"],
    );
    assert_eq!(
        r.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    colorization_run(
        &server.url,
        home.path(),
        "cifar10",
        &home.path().join("run-cifar"),
    );
}
