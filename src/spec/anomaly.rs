//! The spec of an anomaly-detection run (`cargo xtask anomaly --config`):
//! the same layers as the pipeline's spec (defaults, `--preset`,
//! `--config`, flags, `--set`), one flat table of keys named as the flags.

use super::{report_field, BackboneSpec};
use crate::anomaly::TransformSet;
use crate::anomaly_run::AnomalyOptions;
use crate::core::Result;
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The anomaly presets shipped in `configs/presets/`: (name, TOML text).
pub const ANOMALY_PRESETS: [(&str, &str); 1] = [(
    "celeba-faces-anomaly",
    include_str!("../../configs/presets/celeba-faces-anomaly.toml"),
)];

/// Everything that decides an anomaly run's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnomalySpec {
    /// `one-class`, `faces` or `folders`.
    pub protocol: String,
    /// One-class: the labeled dataset (name or directory).
    pub dataset: String,
    /// One-class: the normal classes to run (all when empty).
    pub classes: Vec<u32>,
    /// One-class: cap on normal training images per class (0 = all).
    pub max_normal: usize,
    /// One-class: cap on scored test images, strided (0 = all).
    pub max_test: usize,
    /// One-class: score a held-out 20 % of the training set instead of the
    /// test set (for choosing settings).
    pub dev: bool,
    /// Folders: the normal images.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normal: Option<PathBuf>,
    /// Folders: the anomalies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anomalies: Option<PathBuf>,
    /// Folders: held-out normal images.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normal_test: Option<PathBuf>,
    /// Folders: images are centre-cropped and resized to this side.
    pub size: usize,
    /// Folders: 1 (gray) or 3 (RGB).
    pub channels: usize,
    /// Faces / folders: fraction of the normal images that trains.
    pub train_fraction: f64,
    /// `transformations` (predict the applied transformation) or `mae`
    /// (a ViT masked autoencoder scored by its reconstruction error).
    pub detector: String,
    /// The transformations predicted: `rot4`, `rot-flip8` or `geo72`.
    pub transforms: String,
    /// Headline score: `nll`, `dirichlet`, `knn`, `knn-all`, `pixel-knn` or
    /// `knn-all+pixel`, or `auto`: the protocol's own (`knn-all+pixel` for
    /// one-class, else `dirichlet`).
    pub score: String,
    /// Seeds; each trains its own detectors.
    pub seeds: Vec<u64>,
    /// The encoder and its sizes.
    pub backbone: BackboneSpec,
    /// Start each detector from this pretrained stage (or `hub:user/name`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
    /// Epochs over (image, transformation) pairs; 0 = ceil(200 / T).
    pub epochs: usize,
    /// Transformed images per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Neighbours averaged by the kNN score.
    pub knn_k: usize,
    /// Weight of `pixel-knn` in the `knn-all+pixel` score.
    pub pixel_weight: f64,
    /// Gaussian blur (pixels) before the `pixel-knn` distance; 0 = none.
    pub pixel_blur: f64,
    /// Transformed images per inference batch.
    pub eval_batch: usize,
    /// Keep each detector under `<out>/detectors/`.
    pub save_detectors: bool,
    /// Image folders: skip images that cannot be decoded instead of
    /// stopping (the report counts them).
    pub skip_bad_images: bool,
}

impl Default for AnomalySpec {
    fn default() -> Self {
        let o = AnomalyOptions::new("faces");
        Self {
            protocol: o.protocol,
            dataset: o.dataset,
            classes: o.classes,
            max_normal: o.max_normal,
            max_test: o.max_test,
            dev: o.dev,
            normal: None,
            anomalies: None,
            normal_test: None,
            size: o.size,
            channels: o.channels,
            train_fraction: o.train_fraction,
            detector: o.detector,
            transforms: o.transforms.name().into(),
            score: "auto".into(),
            seeds: o.seeds,
            backbone: o.backbone,
            init: None,
            epochs: o.epochs,
            batch: o.batch_size,
            lr: o.lr,
            knn_k: o.knn_k,
            pixel_weight: o.pixel_weight,
            pixel_blur: o.pixel_blur,
            eval_batch: o.eval_batch,
            save_detectors: o.save_detectors,
            skip_bad_images: o.skip_bad_images,
        }
    }
}

impl AnomalySpec {
    /// The run's options; `init` is the pretrained stage directory (a
    /// `hub:` name already downloaded).
    pub fn options(
        &self,
        init: Option<PathBuf>,
        out: PathBuf,
        device: Device,
        quiet: bool,
    ) -> Result<AnomalyOptions> {
        Ok(AnomalyOptions {
            protocol: self.protocol.clone(),
            dataset: self.dataset.clone(),
            classes: self.classes.clone(),
            max_normal: self.max_normal,
            max_test: self.max_test,
            dev: self.dev,
            normal_dir: self.normal.clone(),
            anomaly_dir: self.anomalies.clone(),
            normal_test_dir: self.normal_test.clone(),
            size: self.size,
            channels: self.channels,
            train_fraction: self.train_fraction,
            detector: self.detector.clone(),
            transforms: TransformSet::from_name(&self.transforms)?,
            score: match self.score.as_str() {
                "auto" => {
                    crate::anomaly_run::default_score_for(&self.detector, &self.protocol).into()
                }
                other => other.into(),
            },
            seeds: self.seeds.clone(),
            backbone: self.backbone.clone(),
            init,
            epochs: self.epochs,
            batch_size: self.batch,
            lr: self.lr,
            knn_k: self.knn_k,
            pixel_weight: self.pixel_weight,
            pixel_blur: self.pixel_blur,
            eval_batch: self.eval_batch,
            out,
            save_detectors: self.save_detectors,
            skip_bad_images: self.skip_bad_images,
            device,
            quiet,
            // A choice of the command line, not part of the spec.
            force: false,
        })
    }

    /// The spec as TOML text (what the run's `experiment.toml` holds).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a spec serialises to TOML")
    }
}

impl AnomalySpec {
    /// The spec of an anomaly run from its report.json, for runs made
    /// before `experiment.toml` existed (the detector's epochs are the ones
    /// it ran, where the run may have asked for the automatic 0).
    pub fn from_report(report: &serde_json::Value, path: &std::path::Path) -> Result<Self> {
        let protocol: String = report_field(report, "anomaly", "/protocol", path)?;
        let dataset = match protocol.as_str() {
            "one-class" => report_field(report, "anomaly", "/dataset", path)?,
            _ => Self::default().dataset,
        };
        let backbone: crate::backbones::BackboneConfig =
            report_field(report, "anomaly", "/config/backbone", path)?;
        // Added later: the transformation detector where absent.
        let detector = report
            .pointer("/config/detector_kind")
            .and_then(serde_json::Value::as_str)
            .filter(|d| *d == "mae")
            .unwrap_or("transformations");
        // A switch added after the first reports: off where it is absent.
        let later_switch = |pointer: &str| {
            report
                .pointer(pointer)
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false)
        };
        // A number added after the first reports: the default where absent.
        let later_number = |pointer: &str, default: f64| {
            report
                .pointer(pointer)
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(default)
        };
        Ok(Self {
            protocol,
            dataset,
            classes: report_field(report, "anomaly", "/config/classes", path)?,
            max_normal: report_field(report, "anomaly", "/config/max_normal", path)?,
            max_test: report_field(report, "anomaly", "/config/max_test", path)?,
            dev: later_switch("/config/dev"),
            normal: None,
            anomalies: None,
            normal_test: None,
            size: report_field(report, "anomaly", "/config/size", path)?,
            channels: report_field(report, "anomaly", "/config/channels", path)?,
            train_fraction: report_field(report, "anomaly", "/config/train_fraction", path)?,
            detector: detector.into(),
            transforms: match detector {
                "mae" => Self::default().transforms,
                _ => report_field(report, "anomaly", "/transforms", path)?,
            },
            score: report_field(report, "anomaly", "/score", path)?,
            seeds: report_field(report, "anomaly", "/seeds", path)?,
            backbone: BackboneSpec::from_config(&backbone),
            init: report_field(report, "anomaly", "/config/init", path)?,
            epochs: report_field(report, "anomaly", "/config/detector/fit/epochs", path)?,
            batch: report_field(report, "anomaly", "/config/detector/fit/batch_size", path)?,
            lr: report_field(report, "anomaly", "/config/detector/fit/lr", path)?,
            knn_k: report_field(report, "anomaly", "/config/detector/knn_k", path)?,
            pixel_weight: later_number(
                "/config/detector/pixel_weight",
                Self::default().pixel_weight,
            ),
            pixel_blur: later_number("/config/detector/pixel_blur", Self::default().pixel_blur),
            eval_batch: report_field(report, "anomaly", "/config/detector/eval_batch", path)?,
            save_detectors: false,
            skip_bad_images: later_switch("/config/skip_bad_images"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_score_follows_the_protocol_unless_given() {
        let opts = |spec: AnomalySpec| {
            spec.options(None, "out".into(), Device::Cpu, true)
                .unwrap()
                .score
        };
        let one_class = AnomalySpec {
            protocol: "one-class".into(),
            ..AnomalySpec::default()
        };
        assert_eq!(AnomalySpec::default().score, "auto");
        assert_eq!(opts(AnomalySpec::default()), "dirichlet");
        assert_eq!(opts(one_class.clone()), "knn-all+pixel");
        let chosen = AnomalySpec {
            score: "nll".into(),
            ..one_class
        };
        assert_eq!(opts(chosen), "nll");
    }
}
