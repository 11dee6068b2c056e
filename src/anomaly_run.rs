//! `cargo xtask anomaly` (over the [`crate::anomaly`] crate): builds the protocol's tasks from the data, trains
//! and scores one detector per (task, seed), and writes `report.json`,
//! `report.md`, a ROC-curve PNG and score histograms.

use crate::anomaly::detector::{
    check_non_negative, DetectorConfig, DEFAULT_PIXEL_BLUR, DEFAULT_PIXEL_WEIGHT, SCORES,
};
use crate::anomaly::protocol::{
    file_safe, holdout_task, one_class_tasks, run_task, Outcome, RunSettings, Task, PROTOCOLS,
};
use crate::anomaly::report::{runs, scores_csv, summarise, AnomalyReport};
use crate::anomaly::{metrics, TransformSet};
use crate::core::report::Figure;
use crate::core::train::FitConfig;
use crate::core::{fsutil, Error, Result};
use crate::data::{folder, registry, Dataset};
use crate::plot::{colour, histograms_png, line_png, Histogram, Panel, Series};
use crate::spec::BackboneSpec;
use candle_core::Device;
use std::path::PathBuf;
use std::time::Instant;

/// Everything `cargo xtask anomaly` needs.
#[derive(Debug, Clone)]
pub struct AnomalyOptions {
    /// `one-class`, `faces` or `folders`.
    pub protocol: String,
    /// Labeled dataset of the one-class protocol (name or directory).
    pub dataset: String,
    /// One-class: the normal classes to run (all when empty).
    pub classes: Vec<u32>,
    /// One-class: cap on normal training images per class (0 = all).
    pub max_normal: usize,
    /// One-class: cap on scored test images, strided (0 = all).
    pub max_test: usize,
    /// One-class: train on a seeded 80 % of the training set and score
    /// the other 20 % ([`dev_split`]); the test set is not read. For
    /// choosing settings without tuning on the test set.
    pub dev: bool,
    /// Folders: the normal images.
    pub normal_dir: Option<PathBuf>,
    /// Folders: the anomalies.
    pub anomaly_dir: Option<PathBuf>,
    /// Folders: held-out normal images; without it a fraction of
    /// `normal_dir` is held out.
    pub normal_test_dir: Option<PathBuf>,
    /// Folders: square side images are resized to.
    pub size: usize,
    /// Folders: 1 (gray) or 3 (RGB).
    pub channels: usize,
    /// Faces / folders: fraction of the normal images used for training.
    pub train_fraction: f64,
    /// `transformations` (a head predicts the applied transformation) or
    /// `mae` (a ViT masked autoencoder; scores `reconstruction` and `knn`).
    pub detector: String,
    /// The transformation set.
    pub transforms: TransformSet,
    /// Headline score (`nll`, `dirichlet`, `knn`, `knn-all`, `pixel-knn`,
    /// `knn-all+pixel`; `reconstruction` for a masked autoencoder).
    pub score: String,
    /// Seeds; each trains its own detectors.
    pub seeds: Vec<u64>,
    /// The encoder and its sizes (its input channels come from the data).
    pub backbone: BackboneSpec,
    /// Start every detector from this pretrained stage directory.
    pub init: Option<PathBuf>,
    /// Epochs over (normal image, transformation) pairs; 0 = automatic
    /// (see [`auto_epochs`]).
    pub epochs: usize,
    /// Pairs per optimiser step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Neighbours of the kNN score.
    pub knn_k: usize,
    /// Weight of `pixel-knn` in the `knn-all+pixel` score.
    pub pixel_weight: f64,
    /// Gaussian blur (pixels) before the `pixel-knn` distance; 0 = none.
    pub pixel_blur: f64,
    /// Transformed images per inference batch.
    pub eval_batch: usize,
    /// Output directory.
    pub out: PathBuf,
    /// Keep each detector's checkpoint under `<out>/detectors/`.
    pub save_detectors: bool,
    /// Image folders: skip images that cannot be decoded (counted in the
    /// report's `config.skipped_images`) instead of stopping.
    pub skip_bad_images: bool,
    /// Where tensors live.
    pub device: Device,
    /// No progress bars.
    pub quiet: bool,
    /// Replace an earlier run in `out` (see [`crate::core::output`]).
    pub force: bool,
}

impl AnomalyOptions {
    /// Defaults for `protocol` (the flags of `cargo xtask anomaly` start
    /// from these).
    pub fn new(protocol: &str) -> Self {
        Self {
            protocol: protocol.into(),
            dataset: "fashion-mnist".into(),
            classes: Vec::new(),
            max_normal: 0,
            max_test: 0,
            dev: false,
            normal_dir: None,
            anomaly_dir: None,
            normal_test_dir: None,
            size: 32,
            channels: 3,
            train_fraction: 0.7,
            detector: "transformations".into(),
            transforms: TransformSet::Geo72,
            score: default_score(protocol).into(),
            seeds: vec![0, 1, 2],
            backbone: BackboneSpec::default(),
            init: None,
            epochs: 0,
            batch_size: 128,
            lr: 2e-3,
            knn_k: 2,
            pixel_weight: DEFAULT_PIXEL_WEIGHT,
            pixel_blur: DEFAULT_PIXEL_BLUR,
            eval_batch: 1024,
            out: PathBuf::from("models/anomaly"),
            save_detectors: false,
            skip_bad_images: false,
            device: Device::Cpu,
            quiet: false,
            force: false,
        }
    }
}

/// The headline score of a protocol when none is given: `knn-all+pixel`
/// for one-class problems, best on the Fashion-MNIST development split
/// (docs/anomaly.md), and `dirichlet` elsewhere.
pub fn default_score(protocol: &str) -> &'static str {
    match protocol {
        "one-class" => "knn-all+pixel",
        _ => "dirichlet",
    }
}

/// The detector kinds of `--detector`.
pub const DETECTORS: [&str; 2] = ["transformations", "mae"];

/// The headline score of `detector` on `protocol` when none is given:
/// `reconstruction` for a masked autoencoder, else [`default_score`].
pub fn default_score_for(detector: &str, protocol: &str) -> &'static str {
    match detector {
        "mae" => "reconstruction",
        _ => default_score(protocol),
    }
}

/// The scores `detector` computes.
pub fn scores_of(detector: &str) -> Vec<&'static str> {
    match detector {
        "mae" => vec!["knn", "reconstruction"],
        _ => SCORES
            .iter()
            .copied()
            .filter(|s| *s != "reconstruction")
            .collect(),
    }
}

/// Checks the detector kind, its backbone and the headline score.
fn check_detector(opts: &AnomalyOptions) -> Result<()> {
    if !DETECTORS.contains(&opts.detector.as_str()) {
        return Err(Error::invalid(
            "--detector",
            format!(
                "unknown detector {:?}; available: {}",
                opts.detector,
                DETECTORS.join(", ")
            ),
        ));
    }
    if opts.detector == "mae" && !matches!(opts.backbone, BackboneSpec::Vit(_)) {
        return Err(Error::invalid(
            "--detector",
            format!(
                "mae reconstructs ViT patches and needs --backbone vit, not {}",
                opts.backbone.name()
            ),
        ));
    }
    check_non_negative("--pixel-weight", opts.pixel_weight)?;
    check_non_negative("--pixel-blur", opts.pixel_blur)?;
    let available = scores_of(&opts.detector);
    if !available.contains(&opts.score.as_str()) {
        return Err(Error::invalid(
            "--score",
            format!(
                "the {} detector has no score {:?}; available: {}",
                opts.detector,
                opts.score,
                available.join(", ")
            ),
        ));
    }
    Ok(())
}

/// Epochs over the normal images of a masked-autoencoding detector when
/// `--epochs` is 0.
pub const MAE_AUTO_EPOCHS: usize = 50;

/// Epochs over the (image, transformation) pairs when `--epochs` is 0:
/// about 200 passes over every normal image in all, like Golan &
/// El-Yaniv's ceil(200 / T), so 3 for the 72 transformations and 50 for
/// the 4 rotations.
pub fn auto_epochs(transforms: TransformSet) -> usize {
    200usize.div_ceil(transforms.len())
}

/// A training set split for development: a seeded 80 % to train on and
/// the other 20 % (every class) to score, so that settings can be chosen
/// without the test set. The split does not depend on `--seeds`.
pub fn dev_split(train: &Dataset) -> (Dataset, Dataset) {
    let all: Vec<usize> = (0..train.len()).collect();
    let (mut fit, mut dev) = crate::data::split::holdout(&all, 0.2, 0);
    fit.sort_unstable();
    dev.sort_unstable();
    (train.subset(&fit), train.subset(&dev))
}

/// The dataset and tasks of the protocol.
fn tasks(opts: &AnomalyOptions) -> Result<(Dataset, String, Vec<Vec<Task>>)> {
    let per_seed = |make: &dyn Fn(u64) -> Result<Task>| -> Result<Vec<Vec<Task>>> {
        opts.seeds.iter().map(|&s| Ok(vec![make(s)?])).collect()
    };
    match opts.protocol.as_str() {
        "one-class" => {
            let mut pair = crate::pipeline::load_dataset(&opts.dataset)?;
            if opts.dev {
                // The report keeps the dataset's name; `config.dev` says
                // what was scored.
                (pair.train, pair.test) = dev_split(&pair.train);
            }
            let classes: Vec<u32> = if opts.classes.is_empty() {
                (0..pair.test.num_classes() as u32).collect()
            } else {
                opts.classes.clone()
            };
            let t = one_class_tasks(
                &pair.train,
                &pair.test,
                &classes,
                opts.max_normal,
                opts.max_test,
            )?;
            // Train and test live in one dataset: test indices shift by the
            // training set's length.
            let offset = pair.train.len();
            let merged = concat(&pair.train, &pair.test)?;
            let t: Vec<Task> = t
                .into_iter()
                .map(|mut task| {
                    task.test.iter_mut().for_each(|i| *i += offset);
                    task
                })
                .collect();
            Ok((merged, pair.name, vec![t; opts.seeds.len()]))
        }
        "faces" => {
            let ds = registry::lfw_faces()?;
            let y = ds.labels().expect("shipped faces are labeled");
            let faces: Vec<usize> = (0..ds.len()).filter(|&i| y[i] == 1).collect();
            let others: Vec<usize> = (0..ds.len()).filter(|&i| y[i] == 0).collect();
            let t = per_seed(&|s| {
                holdout_task(
                    "face",
                    &faces,
                    &others,
                    opts.train_fraction,
                    s,
                    ["held-out face", "non-face"],
                )
            })?;
            Ok((ds, "lfw-subset".into(), t))
        }
        "folders" => {
            let need = |p: &Option<PathBuf>, flag: &str| {
                p.clone().ok_or_else(|| {
                    Error::invalid(
                        flag,
                        "required by --protocol folders (a directory of PNG/JPEG images)",
                    )
                })
            };
            let normal_dir = need(&opts.normal_dir, "--normal")?;
            let anomaly_dir = need(&opts.anomaly_dir, "--anomalies")?;
            let (normal, _) = folder::load_images(&normal_dir, opts.size, opts.channels)?;
            let (anom, _) = folder::load_images(&anomaly_dir, opts.size, opts.channels)?;
            let name = normal_dir
                .file_name()
                .map_or("normal".into(), |n| n.to_string_lossy().into_owned());
            let held = match &opts.normal_test_dir {
                Some(d) => Some(folder::load_images(d, opts.size, opts.channels)?.0),
                None => None,
            };
            let mut ds = concat(&normal, &anom)?;
            let n = normal.len();
            let anomalies: Vec<usize> = (n..n + anom.len()).collect();
            let t = match held {
                None => per_seed(&|s| {
                    holdout_task(
                        &name,
                        &(0..n).collect::<Vec<_>>(),
                        &anomalies,
                        opts.train_fraction,
                        s,
                        ["normal", "anomaly"],
                    )
                })?,
                Some(h) => {
                    let start = ds.len();
                    ds = concat(&ds, &h)?;
                    let test: Vec<usize> = (start..start + h.len()).chain(anomalies).collect();
                    let anomalous: Vec<bool> = test.iter().map(|&i| i < start).collect();
                    let task = Task {
                        name: name.clone(),
                        normal_train: (0..n).collect(),
                        test_groups: anomalous.iter().map(|&a| u32::from(a)).collect(),
                        anomalous,
                        test,
                        group_names: vec!["normal".into(), "anomaly".into()],
                    };
                    vec![vec![task]; opts.seeds.len()]
                }
            };
            Ok((
                ds,
                format!("{} vs {}", normal_dir.display(), anomaly_dir.display()),
                t,
            ))
        }
        other => Err(Error::invalid(
            "--protocol",
            format!(
                "unknown protocol {other:?}; available: {}",
                PROTOCOLS.join(", ")
            ),
        )),
    }
}

/// Two datasets of one image shape as one (labels dropped).
fn concat(a: &Dataset, b: &Dataset) -> Result<Dataset> {
    if a.image_shape() != b.image_shape() {
        return Err(Error::invalid(
            "dataset",
            format!(
                "image shapes differ: {:?} vs {:?}",
                a.image_shape(),
                b.image_shape()
            ),
        ));
    }
    let (c, h, w) = a.image_shape();
    let mut px = a.pixels().to_vec();
    px.extend_from_slice(b.pixels());
    Dataset::new(px, (a.len() + b.len(), c, h, w), None, Vec::new())
}

/// Runs the protocol and writes the report, figures and (optionally)
/// detectors under `opts.out`.
pub fn run(opts: &AnomalyOptions) -> Result<AnomalyReport> {
    let t0 = Instant::now();
    if opts.seeds.is_empty() {
        return Err(Error::invalid("--seeds", "give at least one seed"));
    }
    if opts.dev && opts.protocol != "one-class" {
        return Err(Error::invalid(
            "--dev",
            format!(
                "holds out part of a training set for the one-class protocol, not for {}",
                opts.protocol
            ),
        ));
    }
    check_detector(opts)?;
    folder::set_skip_bad_images(opts.skip_bad_images);
    let (ds, dataset, per_seed) = tasks(opts)?;
    let skipped_images = folder::skipped_images();
    if skipped_images > 0 {
        tracing::warn!("skipped {skipped_images} unreadable images");
    }
    let (c, h, w) = ds.image_shape();
    if h != w {
        return Err(Error::invalid(
            "dataset",
            format!("{h}x{w} images; rotations need square images"),
        ));
    }
    let backbone = opts.backbone.config(c);
    let policy = crate::core::output::Policy {
        force: opts.force,
        ..Default::default()
    };
    crate::core::output::claim(&opts.out, "anomaly", policy, None)?;
    let epochs = if opts.epochs == 0 && opts.detector == "mae" {
        MAE_AUTO_EPOCHS
    } else if opts.epochs == 0 {
        auto_epochs(opts.transforms)
    } else {
        opts.epochs
    };
    let detector = DetectorConfig {
        transforms: opts.transforms,
        fit: FitConfig {
            epochs,
            batch_size: opts.batch_size,
            lr: opts.lr,
            weight_decay: 5e-4,
            warmup_fraction: 0.05,
            patience: None,
            seed: 0,
            drop_last: false,
        },
        eval_batch: opts.eval_batch,
        knn_k: opts.knn_k,
        pixel_weight: opts.pixel_weight,
        pixel_blur: opts.pixel_blur,
    };
    let mae = crate::pretext::MaeConfig::default();
    let settings = RunSettings {
        detector: &detector,
        backbone: &backbone,
        init: opts.init.as_deref(),
        device: &opts.device,
        quiet: opts.quiet,
        save_dir: opts.save_detectors.then(|| opts.out.join("detectors")),
        dataset: &dataset,
        mae: (opts.detector == "mae").then_some(&mae),
    };
    let mut outcomes: Vec<Outcome> = Vec::new();
    for (tasks, &seed) in per_seed.iter().zip(&opts.seeds) {
        for task in tasks {
            let o = run_task(&ds, task, seed, &settings)?;
            if !opts.quiet {
                let aurocs: Vec<String> = o
                    .metrics
                    .iter()
                    .map(|(s, d)| format!("{s} {:.4}", d.auroc))
                    .collect();
                crate::core::progress::line(format!(
                    "  seed {seed} normal = {:<14} AUROC {} ({:.0} s + {:.0} s)",
                    o.name,
                    aurocs.join(", "),
                    o.train_seconds,
                    o.score_seconds
                ));
            }
            outcomes.push(o);
        }
    }
    let scores: Vec<_> = scores_of(&opts.detector)
        .iter()
        .map(|s| summarise(&outcomes, s))
        .collect();
    let (per_class, mean_auroc, mean_auroc_std, mean_aupr, mean_fpr95) =
        AnomalyReport::headline(&scores, &opts.score);
    let figures = figures(opts, &outcomes)?;
    let report = AnomalyReport {
        protocol: opts.protocol.clone(),
        score: opts.score.clone(),
        dataset,
        transforms: match opts.detector.as_str() {
            "mae" => "mae".into(),
            _ => opts.transforms.name().into(),
        },
        transformations: match opts.detector.as_str() {
            "mae" => 0,
            _ => opts.transforms.len(),
        },
        backbone: backbone.name().into(),
        seeds: opts.seeds.clone(),
        per_class,
        mean_auroc,
        mean_auroc_std,
        mean_aupr,
        mean_fpr95,
        scores,
        runs: runs(&outcomes),
        total_seconds: t0.elapsed().as_secs_f64(),
        threads: crate::pipeline::rayon_threads(),
        device: format!("{:?}", opts.device),
        config: serde_json::json!({
            "detector": detector,
            "detector_kind": opts.detector,
            "backbone": backbone,
            "init": opts.init,
            "classes": opts.classes,
            "max_normal": opts.max_normal,
            "max_test": opts.max_test,
            "train_fraction": opts.train_fraction,
            "size": opts.size,
            "channels": opts.channels,
            "skip_bad_images": opts.skip_bad_images,
            "dev": opts.dev,
            "skipped_images": skipped_images,
        }),
        figures,
    };
    let names = scores_of(&opts.detector);
    fsutil::write_atomic(
        &opts.out.join("scores.csv"),
        scores_csv(&outcomes, &names).as_bytes(),
    )?;
    fsutil::write_json_atomic(&opts.out.join("report.json"), &report)?;
    fsutil::write_atomic(&opts.out.join("report.md"), report.to_markdown().as_bytes())?;
    crate::core::output::complete(&opts.out, "anomaly")?;
    Ok(report)
}

/// ROC curves of the headline score (first seed, one curve per normal
/// class) and, per normal class, score histograms of every test group.
fn figures(opts: &AnomalyOptions, outcomes: &[Outcome]) -> Result<Vec<Figure>> {
    let first: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.seed == opts.seeds[0])
        .collect();
    let mut out = Vec::new();
    let mut series = vec![Series {
        label: "chance",
        points: vec![[0.0, 0.0], [1.0, 1.0]],
        rgb: [190, 190, 190],
        thick: 1,
    }];
    let labels: Vec<String> = first
        .iter()
        .map(|o| {
            let d = metrics::auroc(o.scores.get(&opts.score).expect("checked"), &o.anomalous);
            format!("{} (AUROC {:.3})", o.name, d)
        })
        .collect();
    for (i, o) in first.iter().enumerate() {
        series.push(Series {
            label: &labels[i],
            points: metrics::roc_curve(o.scores.get(&opts.score)?, &o.anomalous),
            rgb: colour(i),
            thick: 2,
        });
    }
    let rel = "figures/roc.png".to_string();
    let panel = Panel {
        y_name: "true-positive rate",
        series,
        weight: 1,
        y_range: Some((0.0, 1.0)),
        legend_lower_right: true,
    };
    line_png(
        &opts.out.join(&rel),
        panel,
        &format!(
            "ROC per normal class, {} score (seed {})",
            opts.score, opts.seeds[0]
        ),
        "false-positive rate",
    )?;
    out.push(Figure {
        method: opts.score.clone(),
        kind: "roc".into(),
        path: rel,
    });
    for o in first {
        let s = o.scores.get(&opts.score)?;
        let groups: Vec<Vec<f64>> = (0..o.group_names.len())
            .map(|g| {
                s.iter()
                    .zip(&o.test_groups)
                    .filter(|(_, &k)| k as usize == g)
                    .map(|(&v, _)| v)
                    .collect()
            })
            .collect();
        let panels: Vec<Histogram> = o
            .group_names
            .iter()
            .zip(&groups)
            .enumerate()
            .filter(|(_, (_, v))| !v.is_empty())
            .map(|(g, (name, v))| Histogram {
                label: name,
                values: v,
                // The normal group: the one whose members are not anomalies.
                highlight: o
                    .test_groups
                    .iter()
                    .zip(&o.anomalous)
                    .any(|(&k, &a)| k as usize == g && !a),
            })
            .collect();
        let rel = format!("figures/hist-{}.png", file_safe(&o.name));
        histograms_png(
            &opts.out.join(&rel),
            &panels,
            &format!("{} score, normal = {}", opts.score, o.name),
            "anomaly score (higher = more anomalous)",
        )?;
        out.push(Figure {
            method: o.name.clone(),
            kind: "histogram".into(),
            path: rel,
        });
    }
    Ok(out)
}
