//! End-to-end tests of `selfsup::anomaly_run` on the shipped faces, a tiny
//! one-class slice of the embedded Fashion-MNIST, and generated image
//! folders.

use selfsup::anomaly::{TransformSet, SCORES};
use selfsup::anomaly_run::{run, AnomalyOptions};
use selfsup::spec::{AnomalySpec, BackboneSpec, ConvNetSpec};
use std::path::Path;

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn small(protocol: &str, out: &Path) -> AnomalyOptions {
    AnomalyOptions {
        transforms: TransformSet::Rot4,
        seeds: vec![0],
        backbone: BackboneSpec::ConvNet(ConvNetSpec {
            widths: vec![8, 16],
            depth: 1,
        }),
        epochs: 6,
        batch_size: 32,
        lr: 3e-3,
        eval_batch: 256,
        out: out.to_path_buf(),
        quiet: true,
        ..AnomalyOptions::new(protocol)
    }
}

#[test]
fn faces_detector_separates_faces_from_non_faces() {
    let dir = tempfile::tempdir().unwrap();
    let opts = AnomalyOptions {
        save_detectors: true,
        epochs: 12,
        ..small("faces", dir.path())
    };
    let report = run(&opts).unwrap();
    let json = read_json(&dir.path().join("report.json"));
    // The contract of report.json.
    assert_eq!(json["protocol"], "faces");
    assert_eq!(json["score"], "dirichlet");
    let rows = json["per_class"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    for f in ["class", "auroc", "aupr", "fpr95"] {
        assert!(!rows[0][f].is_null(), "per_class.{f}");
    }
    assert_eq!(rows[0]["class"], "face");
    assert_eq!(json["mean_auroc"], rows[0]["auroc"]);
    // The report alone gives the run's spec back.
    let spec = AnomalySpec::from_report(&json, Path::new("report.json")).unwrap();
    assert_eq!(
        (
            spec.protocol.as_str(),
            spec.transforms.as_str(),
            spec.epochs,
            spec.batch,
            spec.lr
        ),
        ("faces", "rot4", 12, 32, 3e-3)
    );
    assert_eq!(spec.seeds, vec![0]);
    assert_eq!(spec.backbone, opts.backbone);
    // Every score but the masked autoencoder's reconstruction error.
    assert_eq!(json["scores"].as_array().unwrap().len(), SCORES.len() - 1);
    assert_eq!(
        selfsup::anomaly_run::scores_of("transformations"),
        [
            "nll",
            "dirichlet",
            "knn",
            "knn-all",
            "pixel-knn",
            "knn-all+pixel"
        ]
    );
    let run0 = &report.runs[0];
    assert_eq!(
        (run0.normal_train, run0.test_normal, run0.test_anomalies),
        (70, 30, 100)
    );
    // Even a small detector trained for seconds tells faces (upright, with a
    // canonical orientation) from background crops: far above chance.
    for s in &report.scores {
        assert!(s.mean_auroc > 0.8, "{} AUROC {}", s.score, s.mean_auroc);
    }
    // Chance is 0.25 for four rotations.
    assert!(
        run0.transformation_accuracy > 0.4,
        "{}",
        run0.transformation_accuracy
    );
    for f in &report.figures {
        let bytes = std::fs::read(dir.path().join(&f.path)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{}", f.path);
    }
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(md.contains("figures/roc.png") && md.contains("figures/hist-face.png"));
    // The saved detector is a loadable stage directory with its Dirichlets.
    let det = dir.path().join("detectors/face-seed0");
    let enc = selfsup::backbones::checkpoint::load(&det, 0, &candle_core::Device::Cpu).unwrap();
    assert_eq!(enc.config.stage, "anomaly");
    assert_eq!(
        enc.config.metrics["dirichlet_alpha"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    // Any stage directory can start a detector: here the saved one.
    let again = run(&AnomalyOptions {
        init: Some(det.clone()),
        epochs: 1,
        save_detectors: false,
        out: dir.path().join("from-init"),
        ..opts.clone()
    })
    .unwrap();
    assert!(again.mean_auroc > 0.8, "{}", again.mean_auroc);
    // A checkpoint for other images is refused with its file named.
    let e = run(&AnomalyOptions {
        init: Some(det.clone()),
        protocol: "one-class".into(),
        classes: vec![0],
        max_normal: 8,
        max_test: 20,
        out: dir.path().join("bad-init"),
        ..opts
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("config.json") && e.contains("input shape"),
        "{e}"
    );
}

#[test]
fn one_class_runs_each_class_on_a_slice() {
    let dir = tempfile::tempdir().unwrap();
    let opts = AnomalyOptions {
        classes: vec![1, 7],
        max_normal: 96,
        max_test: 300,
        epochs: 2,
        ..small("one-class", dir.path())
    };
    let report = run(&opts).unwrap();
    // One-class problems headline the knn-all+pixel score unless told
    // otherwise.
    assert_eq!(report.score, "knn-all+pixel");
    let headline = report
        .scores
        .iter()
        .find(|s| s.score == "knn-all+pixel")
        .unwrap();
    assert!((report.mean_auroc - headline.mean_auroc).abs() < 1e-12);
    let names: Vec<&str> = report.per_class.iter().map(|r| r.class.as_str()).collect();
    assert_eq!(names, ["Trouser", "Sneaker"]);
    let trouser = &report.runs[0];
    assert_eq!(trouser.normal_train, 96);
    assert_eq!(trouser.test_normal + trouser.test_anomalies, 300);
    // The strided test slice keeps the class mix: about a tenth is normal.
    assert!(
        (20..=40).contains(&trouser.test_normal),
        "{}",
        trouser.test_normal
    );
    let mean = report.per_class.iter().map(|r| r.auroc).sum::<f64>() / 2.0;
    assert!((report.mean_auroc - mean).abs() < 1e-12);
    assert_eq!(report.figures.len(), 3, "one ROC + two histograms");
    scores_csv_matches_the_report(&opts.out, &report);
    let e = run(&AnomalyOptions {
        pixel_weight: -1.0,
        out: dir.path().join("bad-weight"),
        ..opts.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("--pixel-weight"), "{e}");
    let e = run(&AnomalyOptions {
        classes: vec![10],
        ..opts.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("--classes") && e.contains("10"), "{e}");
    // --dev scores a fifth of the training set (10,000 images here), never
    // the test set: 96 normal training images still, 2,000 scored.
    let dev = run(&AnomalyOptions {
        dev: true,
        max_test: 0,
        classes: vec![1],
        out: dir.path().join("dev"),
        ..opts.clone()
    })
    .unwrap();
    let r = &dev.runs[0];
    assert_eq!(
        (r.normal_train, r.test_normal + r.test_anomalies),
        (96, 2000)
    );
    assert_eq!(dev.config["dev"], true);
    let e = run(&AnomalyOptions {
        dev: true,
        ..small("faces", &dir.path().join("faces-dev"))
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("--dev"), "{e}");
}

fn write_png(path: &Path, px: impl Fn(u32, u32) -> u8) {
    let img = image::GrayImage::from_fn(20, 20, |x, y| image::Luma([px(x, y)]));
    img.save(path).unwrap();
}

#[test]
fn folders_protocol_reads_png_directories() {
    let dir = tempfile::tempdir().unwrap();
    let normal = dir.path().join("arrows");
    let odd = dir.path().join("blobs");
    std::fs::create_dir_all(&normal).unwrap();
    std::fs::create_dir_all(&odd).unwrap();
    // Normal: a bright wedge pointing up at different offsets (orientation
    // is learnable); anomalies: rotationally symmetric rings.
    for k in 0..30u32 {
        write_png(&normal.join(format!("{k}.png")), |x, y| {
            let cx = 8 + (k % 5) as i32;
            let dy = y as i32 - 3;
            u8::from(dy >= 0 && (x as i32 - cx).abs() <= dy / 2 && dy < 14) * 230
        });
    }
    for k in 0..12u32 {
        write_png(&odd.join(format!("{k}.png")), |x, y| {
            let r = ((x as f64 - 9.5).powi(2) + (y as f64 - 9.5).powi(2)).sqrt();
            u8::from((r - 3.0 - (k % 4) as f64).abs() < 1.5) * 230
        });
    }
    let out = dir.path().join("run");
    let opts = AnomalyOptions {
        normal_dir: Some(normal.clone()),
        anomaly_dir: Some(odd.clone()),
        size: 16,
        channels: 1,
        ..small("folders", &out)
    };
    let report = run(&opts).unwrap();
    assert_eq!(report.protocol, "folders");
    assert_eq!(report.per_class[0].class, "arrows");
    assert_eq!(report.runs[0].normal_train, 21);
    assert_eq!(report.runs[0].test_anomalies, 12);
    assert!(out.join("figures/hist-arrows.png").exists());
    // Missing folder flags and broken images are named, and no report is
    // written for a failed run.
    let out2 = dir.path().join("run2");
    let e = run(&AnomalyOptions {
        anomaly_dir: None,
        out: out2.clone(),
        ..opts.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("--anomalies"), "{e}");
    std::fs::write(odd.join("bad.png"), b"\x89PNG truncated").unwrap();
    let e = run(&AnomalyOptions {
        out: out2.clone(),
        ..opts.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("bad.png"), "{e}");
    assert!(!out2.join("report.json").exists());
    // With skip_bad_images the broken one is left out and counted.
    let skipped = run(&AnomalyOptions {
        out: dir.path().join("run3"),
        skip_bad_images: true,
        ..opts
    })
    .unwrap();
    assert_eq!(skipped.runs[0].test_anomalies, 12);
    assert_eq!(skipped.config["skipped_images"], 1);
}

#[test]
fn a_masked_autoencoder_scores_reconstruction_error() {
    let dir = tempfile::tempdir().unwrap();
    let vit = BackboneSpec::Vit(selfsup::spec::VitSpec {
        patch: 7,
        dim: 16,
        depth: 1,
        heads: 2,
        mlp_ratio: 2.0,
    });
    let opts = AnomalyOptions {
        detector: "mae".into(),
        score: selfsup::anomaly_run::default_score_for("mae", "one-class").into(),
        backbone: vit,
        classes: vec![1],
        max_normal: 96,
        max_test: 300,
        epochs: 3,
        save_detectors: true,
        ..small("one-class", dir.path())
    };
    let report = run(&opts).unwrap();
    assert_eq!(report.score, "reconstruction");
    let computed: Vec<&str> = report.scores.iter().map(|s| s.score.as_str()).collect();
    assert_eq!(
        computed,
        ["knn", "reconstruction"],
        "only what MAE computes"
    );
    assert!((0.0..=1.0).contains(&report.mean_auroc));
    let json = read_json(&dir.path().join("report.json"));
    assert_eq!(json["config"]["detector_kind"], "mae");
    // The report alone gives the run's spec back, detector included.
    let spec = selfsup::spec::AnomalySpec::from_report(&json, Path::new("report.json")).unwrap();
    assert_eq!((spec.detector.as_str(), spec.epochs), ("mae", 3));
    assert_eq!(json["transformations"], 0);
    let rec = &json["scores"][1]["per_class"][0];
    assert_eq!(rec["class"], "Trouser");
    assert!((0.0..=1.0).contains(&rec["auroc"].as_f64().unwrap()));
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(
        md.contains("masked autoencoder") && !md.contains("NaN"),
        "{md}"
    );
    let saved = read_json(&dir.path().join("detectors/Trouser-seed0/config.json"));
    assert_eq!(saved["method"], "mae");

    // A convolutional backbone, or a transformation score, is refused up front.
    let e = run(&AnomalyOptions {
        detector: "mae".into(),
        score: "reconstruction".into(),
        ..small("one-class", &dir.path().join("bad2"))
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("--backbone vit"), "{e}");
    let e = run(&AnomalyOptions {
        score: "dirichlet".into(),
        out: dir.path().join("bad3"),
        ..opts.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("dirichlet") && e.contains("reconstruction"),
        "{e}"
    );
    assert!(!dir.path().join("bad2").exists() && !dir.path().join("bad3").exists());
}

/// scores.csv holds one row per scored image of every run, its AUROCs are
/// the report's, and its fused column is ln knn-all + w ln pixel-knn.
fn scores_csv_matches_the_report(out: &Path, report: &selfsup::anomaly::report::AnomalyReport) {
    let path = out.join("scores.csv");
    let text = std::fs::read_to_string(&path).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    assert_eq!(header[..5], ["task", "seed", "item", "group", "anomalous"]);
    let names = selfsup::anomaly_run::scores_of("transformations");
    assert_eq!(header[5..], names);
    let runs = selfsup::anomaly::rescore::read_scores_csv(&path).unwrap();
    assert_eq!(runs.len(), report.runs.len());
    let w = report.config["detector"]["pixel_weight"].as_f64().unwrap();
    for run in &report.runs {
        let mine = runs
            .iter()
            .find(|r| r.task == run.class && r.seed == run.seed)
            .unwrap();
        assert_eq!(mine.anomalous.len(), run.test_normal + run.test_anomalies);
        let col = |n: &str| mine.column(n, &path).unwrap();
        for ((a, p), f) in col("knn-all")
            .iter()
            .zip(col("pixel-knn"))
            .zip(col("knn-all+pixel"))
        {
            let fused = a.max(1e-12).ln() + w * p.max(1e-12).ln();
            assert!((f - fused).abs() < 1e-9, "{a} {p} {f}");
        }
        for name in &names {
            let (_, expected) = run.auroc.iter().find(|(n, _)| n == name).unwrap();
            let got = selfsup::anomaly::metrics::auroc(col(name), &mine.anomalous);
            assert!((got - expected).abs() < 1e-9, "{name}: {got} vs {expected}");
        }
    }
}
