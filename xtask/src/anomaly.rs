//! `anomaly`: transformation-prediction anomaly detection, configured by an
//! [`AnomalySpec`] laid over the defaults in layers like the pipeline's.

use crate::spec_args::{assign_all, int, ints, path, print_written, set_given};
use anyhow::Result;
use clap::Args;
use selfsup::core::device::parse_device;
use selfsup::spec::layers::Layers;
use selfsup::spec::{AnomalySpec, ANOMALY_PRESETS};
use std::path::PathBuf;
use toml::Value;

#[derive(Args)]
pub struct AnomalyArgs {
    /// A named scenario from configs/presets/: celeba-faces-anomaly
    /// (one-class on fetched CelebA, normal = faces without eyeglasses,
    /// anomalies = faces with them).
    #[arg(long)]
    preset: Option<String>,
    /// Anomaly spec (TOML): keys named as these flags (snake_case), as in
    /// a run's experiment.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Set any spec value: `--set lr=0.001`, repeatable; applied last.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    set: Vec<String>,
    /// one-class (each class of --dataset in turn is normal), faces (the
    /// shipped LFW faces vs non-faces) or folders (--normal vs --anomalies)
    /// (default: faces).
    #[arg(long)]
    protocol: Option<String>,
    /// One-class: dataset name or directory (as for `pipeline`) (default: fashion-mnist).
    #[arg(long)]
    dataset: Option<String>,
    /// One-class: normal classes to run, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    classes: Option<Vec<u32>>,
    /// One-class: use only the first N training images of each normal class (0 = all) (default: 0).
    #[arg(long)]
    max_normal: Option<usize>,
    /// One-class: score only N test images, evenly strided (0 = all) (default: 0).
    #[arg(long)]
    max_test: Option<usize>,
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
    /// Folders: images are centre-cropped and resized to SIZE x SIZE (default: 32).
    #[arg(long)]
    size: Option<usize>,
    /// Folders: 1 (grayscale) or 3 (RGB) (default: 3).
    #[arg(long)]
    channels: Option<usize>,
    /// Faces / folders: fraction of the normal images that trains the detector (default: 0.7).
    #[arg(long)]
    train_fraction: Option<f64>,
    /// Detector: transformations (a head predicts which transformation was
    /// applied) or mae (a ViT masked autoencoder scored by how badly it
    /// reconstructs masked patches; needs --backbone vit) (default:
    /// transformations).
    #[arg(long)]
    detector: Option<String>,
    /// Transformations the detector predicts: rot4, rot-flip8 or geo72 (default: geo72).
    #[arg(long)]
    transforms: Option<String>,
    /// Headline score of report.json: nll, dirichlet, knn, knn-all,
    /// pixel-knn or knn-all+pixel (all are always computed and reported;
    /// the mae detector has reconstruction and knn) (default: auto,
    /// reconstruction for mae, knn-all+pixel for one-class and dirichlet
    /// for the other protocols).
    #[arg(long)]
    score: Option<String>,
    /// Seeds, comma-separated; each trains its own detectors (default: 0,1,2).
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<u64>>,
    /// Encoder: convnet, resnet18, mobilenetv2 or vit (default: convnet).
    #[arg(long)]
    backbone: Option<String>,
    /// Convnet stage widths, comma-separated (default: 16,32,64).
    #[arg(long, value_delimiter = ',')]
    widths: Option<Vec<usize>>,
    /// Convnet 3x3 conv layers per stage (default: 2).
    #[arg(long)]
    depth: Option<usize>,
    /// Start each detector's backbone from this pretrained stage directory
    /// (or `hub:<user/name>`).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Epochs over the (normal image, transformation) pairs; 0 = ceil(200 / T) (default: 0).
    #[arg(long)]
    epochs: Option<usize>,
    /// Transformed images per optimiser step (default: 128).
    #[arg(long)]
    batch: Option<usize>,
    /// Peak learning rate (AdamW, warmup + cosine) (default: 2e-3).
    #[arg(long)]
    lr: Option<f64>,
    /// Neighbours averaged by the kNN score (default: 2).
    #[arg(long)]
    knn_k: Option<usize>,
    /// Weight of the pixel-space kNN distance in the knn-all+pixel score
    /// (default: 3).
    #[arg(long)]
    pixel_weight: Option<f64>,
    /// Standard deviation, in pixels, of the Gaussian blur applied before
    /// the pixel-space kNN distance; 0 = none (default: 1).
    #[arg(long)]
    pixel_blur: Option<f64>,
    /// Transformed images per inference batch (default: 1024).
    #[arg(long)]
    eval_batch: Option<usize>,
    /// Also save every detector (weights + Dirichlet parameters) under OUT/detectors/.
    #[arg(long)]
    save_detectors: bool,
    /// Image folders: skip images that cannot be decoded (each is logged
    /// with its path; report.json counts them) instead of stopping.
    #[arg(long)]
    skip_bad_images: bool,
    /// One-class: train on 80 % of the training set and score the other
    /// 20 % instead of the test set, to choose settings without it.
    #[arg(long)]
    dev: bool,
    /// Compute device: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Convolution implementation: fast or stock.
    #[arg(long, default_value = "fast")]
    pub kernels: selfsup::kernels::Kernels,
    /// No progress bars or per-run lines.
    #[arg(long)]
    pub quiet: bool,
    /// Replace what an earlier selfsup command wrote to --out (a directory
    /// selfsup did not write is never touched).
    #[arg(long)]
    force: bool,
    /// Output directory (experiment.toml, report.json, report.md, figures/).
    #[arg(long, default_value = "models/anomaly")]
    out: PathBuf,
}

impl AnomalyArgs {
    /// The table: each flag and the spec key it sets.
    fn table(&self) -> Vec<(&'static str, Option<Value>)> {
        vec![
            ("protocol", self.protocol.clone().map(Value::from)),
            ("dataset", self.dataset.clone().map(Value::from)),
            ("classes", ints(&self.classes)),
            ("max_normal", int(self.max_normal)),
            ("max_test", int(self.max_test)),
            ("normal", path(&self.normal)),
            ("anomalies", path(&self.anomalies)),
            ("normal_test", path(&self.normal_test)),
            ("size", int(self.size)),
            ("channels", int(self.channels)),
            ("train_fraction", self.train_fraction.map(Value::from)),
            ("detector", self.detector.clone().map(Value::from)),
            ("transforms", self.transforms.clone().map(Value::from)),
            ("score", self.score.clone().map(Value::from)),
            ("seeds", ints(&self.seeds)),
            ("backbone.name", self.backbone.clone().map(Value::from)),
            ("backbone.widths", ints(&self.widths)),
            ("backbone.depth", int(self.depth)),
            ("init", path(&self.init)),
            ("epochs", int(self.epochs)),
            ("batch", int(self.batch)),
            ("lr", self.lr.map(Value::from)),
            ("knn_k", int(self.knn_k)),
            ("pixel_weight", self.pixel_weight.map(Value::from)),
            ("pixel_blur", self.pixel_blur.map(Value::from)),
            ("eval_batch", int(self.eval_batch)),
            (
                "save_detectors",
                self.save_detectors.then_some(Value::Boolean(true)),
            ),
            (
                "skip_bad_images",
                self.skip_bad_images.then_some(Value::Boolean(true)),
            ),
            ("dev", self.dev.then_some(Value::Boolean(true))),
        ]
    }

    /// The run's spec: defaults, `--preset`, `--config`, flags, `--set`.
    pub fn spec(&self) -> Result<AnomalySpec> {
        let mut layers = Layers::from_spec(&AnomalySpec::default());
        if let Some(p) = &self.preset {
            layers.preset_from(&ANOMALY_PRESETS, p, "dataset")?;
        }
        if let Some(f) = &self.config {
            layers.file_as::<AnomalySpec>(f)?;
        }
        set_given(&mut layers, self.table())?;
        assign_all(&mut layers, &self.set)?;
        Ok(layers.read()?)
    }
}

pub fn run_anomaly(a: AnomalyArgs) -> Result<()> {
    use selfsup::anomaly_run;
    let spec = a.spec()?;
    let init = crate::hub::resolve_init(spec.init.clone())?;
    let mut opts = spec.options(init, a.out.clone(), parse_device(&a.device)?, a.quiet)?;
    opts.force = a.force;
    let report = anomaly_run::run(&opts)?;
    // The headline score as resolved, not `auto`: a later default must not
    // change what the file reproduces.
    let written = AnomalySpec {
        score: opts.score.clone(),
        ..spec
    };
    selfsup::core::fsutil::write_atomic(
        &a.out.join("experiment.toml"),
        written.to_toml().as_bytes(),
    )?;
    println!("{}", report.to_markdown());
    print_written(
        &a.out,
        &["experiment.toml", "report.json", "report.md", "scores.csv"],
    );
    Ok(())
}
