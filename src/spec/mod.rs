//! The experiment spec: everything that decides a run's numbers, as one
//! typed value that reads from and writes to TOML.
//!
//! ```toml
//! [data]       # which images: dataset, class selection, truncation
//! [backbone]   # name = "convnet" | "resnet18" | "mobilenetv2" | "vit", and its sizes
//! [split]      # labels per class, seeds, the unlabeled pool
//! [training]   # weight decay, crop/flip augmentation, inference batch
//! [pretrain]   # which methods, held-out split, kNN monitor
//! [methods.*]  # one section per pretraining method
//! [transfer]   # the fine-tune of `finetune` and `lpft`, the linear probe
//! [protocols]  # which protocols run, and the settings of each
//! ```
//!
//! A run resolves its spec in layers — the defaults ([`Experiment::default`],
//! also written out as `configs/default.toml`), a preset, a `--config` file,
//! the command's flags, then `--set path=value` — see [`layers`]. Every run
//! writes the result to `<out>/experiment.toml`, and that file alone
//! reproduces the run. Unknown keys are refused with their path, and
//! [`Experiment::validate`] names the spec path of any bad value.
//!
//! How the device, the kernels, progress bars, the output directory and
//! `--resume` are chosen is not part of the spec: they decide where and how
//! fast a run goes, not its numbers.

pub mod anomaly;
pub mod layers;
mod legacy;
mod methods;
mod stages;
mod validate;

pub use anomaly::{AnomalySpec, ANOMALY_PRESETS};
pub use legacy::Recipe;
pub use methods::{
    BarlowSettings, ByolSettings, ColorizationSettings, InpaintSettings, JigsawSettings,
    MaeSettings, MethodView, MethodsSpec, MocoSettings, Projector, RotationSettings, Schedule,
    SimclrSettings, SimsiamSettings, VicregSettings,
};

use crate::augment::Pipeline;
use crate::core::{Error, Result};
use serde::{Deserialize, Serialize};

/// A whole experiment. See the [module docs](self) for its sections.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Experiment {
    /// Which images.
    pub data: DataSpec,
    /// The encoder.
    pub backbone: BackboneSpec,
    /// Label budgets, seeds and the unlabeled pool.
    pub split: SplitSpec,
    /// Settings every training stage shares.
    pub training: TrainingSpec,
    /// Pretraining: which methods, and what they all share.
    pub pretrain: PretrainSpec,
    /// Each method's own settings.
    pub methods: MethodsSpec,
    /// The fine-tune of the `finetune` and `lpft` protocols.
    pub transfer: TransferSpec,
    /// Which protocols run, and their settings.
    pub protocols: ProtocolsSpec,
}

/// Which images a run uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSpec {
    /// A dataset name (`fashion-mnist`, a fetched one) or a directory.
    pub dataset: String,
    /// Keep only these classes (by name, in this order), relabelled 0..n;
    /// empty keeps all.
    pub classes: Vec<String>,
    /// With `classes`: pretrain on the unlabeled images of every class (free
    /// data) rather than the selected ones only; the input normalisation is
    /// then fitted on every training image.
    pub pretrain_all_classes: bool,
    /// Use only the first N training images (quick looks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_train: Option<usize>,
    /// Use only the first N test images (quick looks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_test: Option<usize>,
    /// Image-folder datasets: images are centre-cropped and resized to this.
    pub image_size: usize,
    /// Image-folder datasets: 1 (grayscale) or 3 (RGB) channels.
    pub channels: usize,
    /// Image-folder datasets: skip images that cannot be decoded (each is
    /// logged, and report.json counts them) instead of stopping.
    pub skip_bad_images: bool,
}

impl Default for DataSpec {
    fn default() -> Self {
        Self {
            dataset: "fashion-mnist".into(),
            classes: Vec::new(),
            pretrain_all_classes: true,
            max_train: None,
            max_test: None,
            image_size: 32,
            channels: 3,
            skip_bad_images: false,
        }
    }
}

/// The encoder, by `name`, with the sizes that backbone has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", deny_unknown_fields)]
pub enum BackboneSpec {
    /// A small VGG-style network.
    #[serde(rename = "convnet")]
    ConvNet(ConvNetSpec),
    /// ResNet-18 with the CIFAR stem.
    #[serde(rename = "resnet18")]
    ResNet18(ResNetSpec),
    /// MobileNetV2.
    #[serde(rename = "mobilenetv2")]
    MobileNetV2(MobileNetSpec),
    /// A small Vision Transformer.
    #[serde(rename = "vit")]
    Vit(VitSpec),
}

impl Default for BackboneSpec {
    fn default() -> Self {
        Self::ConvNet(ConvNetSpec::default())
    }
}

impl BackboneSpec {
    /// The default sizes of the backbone called `name`.
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "convnet" => Self::ConvNet(ConvNetSpec::default()),
            "resnet18" => Self::ResNet18(ResNetSpec::default()),
            "mobilenetv2" => Self::MobileNetV2(MobileNetSpec::default()),
            "vit" => Self::Vit(VitSpec::default()),
            other => {
                return Err(Error::invalid(
                    "backbone.name",
                    format!(
                        "unknown backbone {other:?}; choose one of: {}",
                        crate::backbones::NAMES.join(", ")
                    ),
                ))
            }
        })
    }

    /// The sizes of a backbone configuration (its input channels come from
    /// the data, so they are not part of the spec).
    pub fn from_config(c: &crate::backbones::BackboneConfig) -> Self {
        use crate::backbones::BackboneConfig as B;
        match c {
            B::ConvNet {
                widths,
                convs_per_stage,
                ..
            } => Self::ConvNet(ConvNetSpec {
                widths: widths.clone(),
                depth: *convs_per_stage,
            }),
            B::ResNet18 { base_width, .. } => Self::ResNet18(ResNetSpec { width: *base_width }),
            B::MobileNetV2 {
                width_multiplier, ..
            } => Self::MobileNetV2(MobileNetSpec {
                width_multiplier: *width_multiplier,
            }),
            B::Vit {
                patch_size,
                dim,
                depth,
                heads,
                mlp_ratio,
                ..
            } => Self::Vit(VitSpec {
                patch: *patch_size,
                dim: *dim,
                depth: *depth,
                heads: *heads,
                mlp_ratio: *mlp_ratio,
            }),
        }
    }

    /// Its name (`convnet`, `resnet18`, `mobilenetv2`, `vit`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::ConvNet(_) => "convnet",
            Self::ResNet18(_) => "resnet18",
            Self::MobileNetV2(_) => "mobilenetv2",
            Self::Vit(_) => "vit",
        }
    }
}

/// ConvNet sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConvNetSpec {
    /// Output channels of each stage (a 2x2 max-pool between stages).
    pub widths: Vec<usize>,
    /// 3x3 conv + BatchNorm + ReLU layers per stage.
    pub depth: usize,
}

impl Default for ConvNetSpec {
    fn default() -> Self {
        Self {
            widths: vec![16, 32, 64],
            depth: 2,
        }
    }
}

/// ResNet-18 sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResNetSpec {
    /// Channels of the first stage (64 in the standard network).
    pub width: usize,
}

impl Default for ResNetSpec {
    fn default() -> Self {
        Self { width: 64 }
    }
}

/// MobileNetV2 sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MobileNetSpec {
    /// Scales every layer's channels (1.0 is the standard network).
    pub width_multiplier: f64,
}

impl Default for MobileNetSpec {
    fn default() -> Self {
        Self {
            width_multiplier: 1.0,
        }
    }
}

/// Vision Transformer sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VitSpec {
    /// Patch side in pixels.
    pub patch: usize,
    /// Token width (a multiple of 4 and of `heads`).
    pub dim: usize,
    /// Transformer blocks.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP hidden units per token width.
    pub mlp_ratio: f64,
}

impl Default for VitSpec {
    fn default() -> Self {
        match crate::backbones::BackboneConfig::from_name("vit", 1) {
            Ok(c) => match BackboneSpec::from_config(&c) {
                BackboneSpec::Vit(v) => v,
                _ => unreachable!("the vit configuration is a vit"),
            },
            Err(e) => unreachable!("vit is a backbone name: {e}"),
        }
    }
}

/// Label budgets, seeds and the unlabeled pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitSpec {
    /// Labeled images per class (K); each K is a row of the report.
    pub labels_per_class: Vec<usize>,
    /// Seeds; each draws its own split and trains its own classifiers.
    pub seeds: Vec<u64>,
    /// At most this many unlabeled images for pretraining and the
    /// semi-supervised protocols; 0 takes the whole pool.
    pub unlabeled: usize,
}

impl Default for SplitSpec {
    fn default() -> Self {
        Self {
            labels_per_class: vec![10],
            seeds: vec![0, 1, 2],
            unlabeled: 4500,
        }
    }
}

impl SplitSpec {
    /// The cap on the unlabeled pool (`None`: all of it).
    pub fn unlabeled_cap(&self) -> Option<usize> {
        (self.unlabeled > 0).then_some(self.unlabeled)
    }
}

/// Settings every training stage shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingSpec {
    /// AdamW weight decay everywhere but the linear probe.
    pub weight_decay: f64,
    /// Random-crop padding (pixels) of pretraining and of `crop-flip`.
    pub crop_pad: usize,
    /// Random horizontal flips in the same places.
    pub flip: bool,
    /// Images per inference batch (features, test predictions).
    pub eval_batch: usize,
}

impl Default for TrainingSpec {
    fn default() -> Self {
        Self {
            weight_decay: 5e-4,
            crop_pad: 2,
            flip: true,
            eval_batch: 128,
        }
    }
}

/// What every pretraining method shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PretrainSpec {
    /// The methods, each pretraining its own encoder (settings in
    /// `[methods.<name>]`).
    pub methods: Vec<String>,
    /// Pretrain once per seed (independent runs) instead of once per run on
    /// a pool that excludes every seed's labeled images.
    pub per_seed: bool,
    /// Fraction of the pool held out for the pretext's validation loss.
    pub val_fraction: f64,
    /// Cap on the held-out images.
    pub max_val: usize,
    /// After each epoch, the leave-one-out kNN accuracy of the features on
    /// the seed's K labeled images (logged, never used to choose anything).
    pub knn_monitor: bool,
}

impl Default for PretrainSpec {
    fn default() -> Self {
        Self {
            methods: vec!["rotation".into()],
            per_seed: false,
            val_fraction: 0.05,
            max_val: 500,
            knn_monitor: true,
        }
    }
}

/// The fine-tune on the K labeled images (`finetune`, and `lpft` after its
/// linear probe), and the linear probe itself (`linear`, `lpft`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransferSpec {
    /// Epochs over the labeled images.
    pub epochs: usize,
    /// Batch size.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Augmentation: `crop-flip` (padded crop and flip, as `[training]`
    /// says), another preset, or a pipeline.
    pub augment: ViewAugment,
    /// Early stopping: hold out `val_fraction` of each class's labeled
    /// images and stop after this many epochs without a lower error rate,
    /// keeping the best epoch; 0 trains every epoch on every labeled image.
    pub patience: usize,
    /// Fraction of the labeled images held out when `patience` > 0.
    pub val_fraction: f64,
    /// The linear probe on frozen features.
    pub linear_probe: LinearProbeSpec,
}

impl Default for TransferSpec {
    fn default() -> Self {
        Self {
            epochs: 60,
            batch: 32,
            lr: 1e-3,
            augment: ViewAugment::Preset("crop-flip".into()),
            patience: 0,
            val_fraction: 0.1,
            linear_probe: LinearProbeSpec::default(),
        }
    }
}

/// The full-batch logistic regression of `linear` and `lpft`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinearProbeSpec {
    /// Optimiser steps.
    pub steps: usize,
    /// Learning rate.
    pub lr: f64,
    /// Weight decay.
    pub weight_decay: f64,
}

impl Default for LinearProbeSpec {
    fn default() -> Self {
        Self {
            steps: 300,
            lr: 0.01,
            weight_decay: 1e-3,
        }
    }
}

/// The protocols a run measures, in this order whatever the order of
/// `run`: finetune, lpft, distill, fixmatch, linear, knn.
pub const PROTOCOLS: [&str; 6] = ["finetune", "lpft", "distill", "fixmatch", "linear", "knn"];

/// Which protocols run for every method and scratch, and their settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProtocolsSpec {
    /// The protocols to run (names from [`PROTOCOLS`]).
    pub run: Vec<String>,
    /// Also run the semi-supervised protocols (`distill`, `fixmatch`) for
    /// scratch, so each has its from-scratch counterpart in the report.
    pub scratch_semi_supervised: bool,
    /// `knn`.
    pub knn: KnnSpec,
    /// `distill`.
    pub distill: DistillSpec,
    /// `fixmatch`.
    pub fixmatch: FixMatchSpec,
}

impl Default for ProtocolsSpec {
    fn default() -> Self {
        Self {
            run: ["finetune", "lpft", "linear", "knn"]
                .map(String::from)
                .to_vec(),
            scratch_semi_supervised: true,
            knn: KnnSpec::default(),
            distill: DistillSpec::default(),
            fixmatch: FixMatchSpec::default(),
        }
    }
}

impl ProtocolsSpec {
    /// Whether `protocol` runs.
    pub fn runs(&self, protocol: &str) -> bool {
        self.run.iter().any(|p| p == protocol)
    }

    /// Adds `protocol` to `run` (when `on`) or takes it out.
    pub fn set_running(&mut self, protocol: &str, on: bool) {
        self.run.retain(|p| p != protocol);
        if on {
            self.run.push(protocol.into());
            self.run
                .sort_by_key(|p| PROTOCOLS.iter().position(|q| q == p));
        }
    }
}

/// The kNN classifier on frozen features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KnnSpec {
    /// Candidate k values; leave-one-out on the labeled images picks one.
    pub ks: Vec<usize>,
    /// How neighbours vote: `similarity` (1 + cosine similarity) or
    /// `temperature` (exp(cosine similarity / `temperature`), as the kNN
    /// monitors of lightly and solo-learn).
    pub weighting: String,
    /// The temperature of `temperature` weighting.
    pub temperature: f64,
}

impl Default for KnnSpec {
    fn default() -> Self {
        Self {
            ks: vec![1, 3, 5, 10, 20],
            weighting: "similarity".into(),
            temperature: 0.1,
        }
    }
}

impl KnnSpec {
    /// The vote weighting (the spec is validated).
    pub fn weighting(&self) -> crate::finetune::Weighting {
        match self.weighting.as_str() {
            "temperature" => crate::finetune::Weighting::Temperature(self.temperature as f32),
            _ => crate::finetune::Weighting::Similarity,
        }
    }
}

/// Self-distillation (SimCLR v2): a classifier labels the unlabeled images
/// with soft labels and a copy of it trains on them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistillSpec {
    /// Epochs over the unlabeled images.
    pub epochs: usize,
    /// Batch size.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Softmax temperature of the teacher's labels and the student's logits.
    pub temperature: f64,
    /// Share of each epoch made of the K labeled images.
    pub labeled_share: f64,
    /// The student's augmentation: `auto` (the SimCLR view preset for the
    /// image size), `crop-flip`, another preset, or a pipeline.
    pub augment: ViewAugment,
    /// The teacher: `finetune`, `lpft`, or `auto` (`lpft` for pretrained
    /// methods when it runs, else `finetune`).
    pub teacher: String,
}

impl Default for DistillSpec {
    fn default() -> Self {
        Self {
            epochs: 8,
            batch: 128,
            lr: 1e-3,
            temperature: 1.0,
            labeled_share: 0.25,
            augment: ViewAugment::auto(),
            teacher: "auto".into(),
        }
    }
}

/// FixMatch (Sohn et al. 2020): the classifier labels weak views of the
/// unlabeled images itself and learns strong views of the confident ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FixMatchSpec {
    /// Passes over the unlabeled images.
    pub epochs: usize,
    /// Unlabeled images per step.
    pub batch: usize,
    /// Labeled images per step (drawn with replacement).
    pub labeled_batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Least confidence for a prediction to become a label.
    pub threshold: f64,
    /// Weight of the unlabeled loss.
    pub unlabeled_weight: f64,
    /// The strong augmentation: `auto` (the SimCLR view preset), a preset
    /// or a pipeline. The weak one is `transfer.augment`.
    pub augment: ViewAugment,
    /// The classifier it starts from: `finetune`, `lpft` or `auto` (as
    /// `distill.teacher`).
    pub init: String,
    /// Distribution alignment of the pseudo-labels towards the labeled
    /// images' class balance.
    pub align: bool,
}

impl Default for FixMatchSpec {
    fn default() -> Self {
        Self {
            epochs: 8,
            batch: 128,
            labeled_batch: 32,
            lr: 1e-3,
            threshold: 0.95,
            unlabeled_weight: 1.0,
            augment: ViewAugment::auto(),
            init: "auto".into(),
            align: false,
        }
    }
}

/// An augmentation choice: a preset name or an explicit pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ViewAugment {
    /// A preset name: `auto`, `crop-flip`, or one of
    /// [`Pipeline::PRESETS`].
    Preset(String),
    /// An explicit pipeline.
    Custom(Pipeline),
}

/// The field at `pointer` of a `kind` report (`pipeline`, `anomaly`), read
/// as a `T`; errors name the file and the field.
pub(crate) fn report_field<T: serde::de::DeserializeOwned>(
    report: &serde_json::Value,
    kind: &str,
    pointer: &str,
    path: &std::path::Path,
) -> Result<T> {
    let bad = |msg: String| Error::Format {
        path: path.to_path_buf(),
        msg,
    };
    let v = report
        .pointer(pointer)
        .ok_or_else(|| bad(format!("no `{pointer}`: not a {kind} report.json")))?;
    serde_json::from_value(v.clone()).map_err(|e| bad(format!("`{pointer}`: {e}")))
}

impl ViewAugment {
    /// `auto`: the SimCLR view preset for the image size.
    pub fn auto() -> Self {
        Self::Preset("auto".into())
    }
}
