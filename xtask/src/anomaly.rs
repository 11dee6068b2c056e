//! `anomaly`: transformation-prediction anomaly detection.

use anyhow::{bail, Result};
use clap::Args;
use selfsup::core::device::parse_device;
use selfsup::spec::BackboneSpec;
use std::path::PathBuf;

#[derive(Args)]
pub struct AnomalyArgs {
    /// A named scenario: celeba-faces-anomaly (one-class on fetched CelebA,
    /// normal = faces without eyeglasses, anomalies = faces with them).
    #[arg(long)]
    preset: Option<String>,
    /// one-class (each class of --dataset in turn is normal), faces (the
    /// shipped LFW faces vs non-faces) or folders (--normal vs --anomalies).
    #[arg(long, default_value = "faces")]
    protocol: String,
    /// One-class: dataset name or directory (as for `pipeline`).
    #[arg(long, default_value = "fashion-mnist")]
    dataset: String,
    /// One-class: normal classes to run, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    classes: Vec<u32>,
    /// One-class: use only the first N training images of each normal class (0 = all).
    #[arg(long, default_value_t = 0)]
    max_normal: usize,
    /// One-class: score only N test images, evenly strided (0 = all).
    #[arg(long, default_value_t = 0)]
    max_test: usize,
    /// Folders: directory of normal images (PNG/JPEG, searched recursively).
    #[arg(long)]
    normal: Option<PathBuf>,
    /// Folders: directory of anomalous images.
    #[arg(long)]
    anomalies: Option<PathBuf>,
    /// Folders: held-out normal images to score; without it,
    /// 1 - --train-fraction of --normal is held out.
    #[arg(long)]
    normal_test: Option<PathBuf>,
    /// Folders: images are centre-cropped and resized to SIZE x SIZE.
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// Folders: 1 (grayscale) or 3 (RGB).
    #[arg(long, default_value_t = 3)]
    channels: usize,
    /// Faces / folders: fraction of the normal images that trains the detector.
    #[arg(long, default_value_t = 0.7)]
    train_fraction: f64,
    /// Transformations the detector predicts: rot4, rot-flip8 or geo72.
    #[arg(long, default_value = "geo72")]
    transforms: String,
    /// Headline score of report.json: nll, dirichlet, knn or knn-all (all
    /// four are always computed and reported).
    #[arg(long, default_value = "dirichlet")]
    score: String,
    /// Seeds, comma-separated; each trains its own detectors.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    seeds: Vec<u64>,
    /// Encoder: convnet, resnet18 or mobilenetv2.
    #[arg(long, default_value = "convnet")]
    backbone: String,
    /// Convnet stage widths, comma-separated.
    #[arg(long, value_delimiter = ',')]
    widths: Option<Vec<usize>>,
    /// Convnet 3x3 conv layers per stage.
    #[arg(long)]
    depth: Option<usize>,
    /// Start each detector's backbone from this pretrained stage directory
    /// (or `hub:<user/name>`).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Epochs over the (normal image, transformation) pairs; 0 = ceil(200 / T).
    #[arg(long, default_value_t = 0)]
    epochs: usize,
    /// Transformed images per optimiser step.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Peak learning rate (AdamW, warmup + cosine).
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Neighbours averaged by the kNN score.
    #[arg(long, default_value_t = 2)]
    knn_k: usize,
    /// Transformed images per inference batch.
    #[arg(long, default_value_t = 1024)]
    eval_batch: usize,
    /// Also save every detector (weights + Dirichlet parameters) under OUT/detectors/.
    #[arg(long)]
    save_detectors: bool,
    /// Compute device: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Convolution implementation: fast or stock.
    #[arg(long, default_value = "fast")]
    pub kernels: selfsup::kernels::Kernels,
    /// No progress bars or per-run lines.
    #[arg(long)]
    pub quiet: bool,
    /// Output directory (report.json, report.md, figures/).
    #[arg(long, default_value = "models/anomaly")]
    out: PathBuf,
}

pub fn run_anomaly(mut a: AnomalyArgs) -> Result<()> {
    use selfsup::anomaly_run::{self, AnomalyOptions};
    match a.preset.as_deref() {
        None => {}
        Some("celeba-faces-anomaly") => {
            // Faces without eyeglasses are normal; faces with them are the
            // attribute-defined outliers. Rotation detector (rot4).
            a.protocol = "one-class".into();
            if a.dataset == "fashion-mnist" {
                a.dataset = "celeba:Eyeglasses".into();
            }
            if a.classes.is_empty() {
                a.classes = vec![0];
            }
            if a.transforms == "geo72" {
                a.transforms = "rot4".into();
            }
        }
        Some(other) => bail!("unknown --preset {other:?}; anomaly presets: celeba-faces-anomaly"),
    }
    let mut backbone = BackboneSpec::from_name(&a.backbone)?;
    match &mut backbone {
        BackboneSpec::ConvNet(c) => {
            if let Some(w) = a.widths {
                c.widths = w;
            }
            if let Some(d) = a.depth {
                c.depth = d;
            }
        }
        _ if a.widths.is_some() || a.depth.is_some() => {
            bail!("--widths and --depth size the convnet, not {}", a.backbone)
        }
        _ => {}
    }
    let opts = AnomalyOptions {
        protocol: a.protocol,
        dataset: a.dataset,
        classes: a.classes,
        max_normal: a.max_normal,
        max_test: a.max_test,
        normal_dir: a.normal,
        anomaly_dir: a.anomalies,
        normal_test_dir: a.normal_test,
        size: a.size,
        channels: a.channels,
        train_fraction: a.train_fraction,
        transforms: selfsup::anomaly::TransformSet::from_name(&a.transforms)?,
        score: a.score,
        seeds: a.seeds,
        backbone,
        init: crate::hub::resolve_init(a.init)?,
        epochs: a.epochs,
        batch_size: a.batch,
        lr: a.lr,
        knn_k: a.knn_k,
        eval_batch: a.eval_batch,
        out: a.out.clone(),
        save_detectors: a.save_detectors,
        device: parse_device(&a.device)?,
        quiet: a.quiet,
    };
    let report = anomaly_run::run(&opts)?;
    println!("{}", report.to_markdown());
    println!(
        "wrote {} and {}",
        a.out.join("report.json").display(),
        a.out.join("report.md").display()
    );
    Ok(())
}
