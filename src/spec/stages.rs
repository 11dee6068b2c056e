//! From the spec to the settings each stage crate takes: the backbone
//! configuration, pretraining, fine-tune, distillation and FixMatch.

use super::{BackboneSpec, Experiment, ViewAugment};
use crate::augment::{CropFlip, Op, Pipeline};
use crate::backbones::BackboneConfig;
use crate::core::train::FitConfig;
use crate::core::{Error, Result};
use crate::finetune::{DistillConfig, FixMatchConfig, TransferConfig};
use crate::pretext::PretrainConfig;

impl BackboneSpec {
    /// The backbone configuration for inputs of `in_channels`.
    pub fn config(&self, in_channels: usize) -> BackboneConfig {
        match self {
            Self::ConvNet(c) => BackboneConfig::ConvNet {
                in_channels,
                widths: c.widths.clone(),
                convs_per_stage: c.depth,
            },
            Self::ResNet18(r) => BackboneConfig::ResNet18 {
                in_channels,
                base_width: r.width,
            },
            Self::MobileNetV2(m) => BackboneConfig::MobileNetV2 {
                in_channels,
                width_multiplier: m.width_multiplier,
            },
            Self::Vit(v) => BackboneConfig::Vit {
                in_channels,
                patch_size: v.patch,
                dim: v.dim,
                depth: v.depth,
                heads: v.heads,
                mlp_ratio: v.mlp_ratio,
            },
        }
    }
}

impl Experiment {
    /// The padded crop and flip of pretraining and `crop-flip`.
    fn crop_flip(&self) -> CropFlip {
        CropFlip {
            pad: self.training.crop_pad,
            flip: self.training.flip,
        }
    }

    /// The pipeline of an augmentation choice for images of `shape`
    /// (C, H, W); `path` names the spec field in errors.
    pub fn augmentation(
        &self,
        choice: &ViewAugment,
        path: &str,
        shape: (usize, usize, usize),
    ) -> Result<Pipeline> {
        match choice {
            ViewAugment::Custom(p) => Ok(p.clone()),
            ViewAugment::Preset(name) => match name.as_str() {
                "auto" => Ok(Pipeline::simclr_for(shape.0, shape.1)),
                "crop-flip" => Ok(Pipeline {
                    ops: vec![Op::CropFlip(self.crop_flip())],
                }),
                other => Pipeline::preset(other).ok_or_else(|| {
                    Error::invalid(
                        path,
                        format!(
                            "unknown augmentation {other:?}; available: auto, crop-flip, {}",
                            Pipeline::PRESETS.join(", ")
                        ),
                    )
                }),
            },
        }
    }

    /// The backbone configuration for inputs of `in_channels`.
    pub fn backbone_config(&self, in_channels: usize) -> BackboneConfig {
        self.backbone.config(in_channels)
    }

    /// The pretraining settings of `method` for `seed` and images of
    /// `shape` (C, H, W).
    pub fn pretrain_config(
        &self,
        method: &str,
        seed: u64,
        shape: (usize, usize, usize),
    ) -> Result<PretrainConfig> {
        let m = self.methods.get(method)?;
        let two_view = m.view_augment.is_some();
        Ok(PretrainConfig {
            method: method.to_string(),
            fit: FitConfig {
                epochs: m.schedule.epochs,
                batch_size: m.schedule.batch,
                lr: m.schedule.lr,
                weight_decay: self.training.weight_decay,
                warmup_fraction: 0.05,
                patience: Some(m.schedule.patience),
                seed,
                drop_last: two_view,
            },
            val_fraction: self.pretrain.val_fraction,
            max_val: self.pretrain.max_val,
            augment: self.crop_flip(),
            view_augment: match m.view_augment {
                Some(v) => {
                    self.augmentation(v, &format!("methods.{method}.view_augment"), shape)?
                }
                None => Pipeline::default(),
            },
        })
    }

    /// The `finetune` protocol's settings for `seed` and images of `shape`
    /// (also those of `lpft`, the linear probe and kNN).
    pub fn transfer_config(
        &self,
        seed: u64,
        shape: (usize, usize, usize),
    ) -> Result<TransferConfig> {
        let t = &self.transfer;
        Ok(TransferConfig {
            probe_init: false,
            fit: FitConfig {
                epochs: t.epochs,
                batch_size: t.batch,
                lr: t.lr,
                weight_decay: self.training.weight_decay,
                warmup_fraction: 0.1,
                patience: (t.patience > 0).then_some(t.patience),
                seed,
                drop_last: false,
            },
            augment: self.augmentation(&t.augment, "transfer.augment", shape)?,
            val_fraction: t.val_fraction,
            linear_steps: t.linear_probe.steps,
            linear_lr: t.linear_probe.lr,
            linear_weight_decay: t.linear_probe.weight_decay,
            knn_ks: self.protocols.knn.ks.clone(),
            eval_batch: self.training.eval_batch,
        })
    }

    /// The `distill` protocol's settings for `seed` and images of `shape`.
    pub fn distill_config(&self, seed: u64, shape: (usize, usize, usize)) -> Result<DistillConfig> {
        let d = &self.protocols.distill;
        Ok(DistillConfig {
            fit: FitConfig {
                epochs: d.epochs,
                batch_size: d.batch,
                lr: d.lr,
                weight_decay: self.training.weight_decay,
                warmup_fraction: 0.05,
                patience: None,
                seed,
                drop_last: false,
            },
            augment: self.augmentation(&d.augment, "protocols.distill.augment", shape)?,
            temperature: d.temperature,
            labeled_share: d.labeled_share,
            eval_batch: self.training.eval_batch,
        })
    }

    /// The `fixmatch` protocol's settings for `seed` and images of `shape`.
    pub fn fixmatch_config(
        &self,
        seed: u64,
        shape: (usize, usize, usize),
    ) -> Result<FixMatchConfig> {
        let f = &self.protocols.fixmatch;
        Ok(FixMatchConfig {
            fit: FitConfig {
                epochs: f.epochs,
                batch_size: f.batch,
                lr: f.lr,
                weight_decay: self.training.weight_decay,
                warmup_fraction: 0.05,
                patience: None,
                seed,
                drop_last: false,
            },
            labeled_batch: f.labeled_batch,
            weak: self.augmentation(&self.transfer.augment, "transfer.augment", shape)?,
            strong: self.augmentation(&f.augment, "protocols.fixmatch.augment", shape)?,
            threshold: f.threshold,
            unlabeled_weight: f.unlabeled_weight,
            eval_batch: self.training.eval_batch,
            distribution_alignment: f.align,
        })
    }

    /// The protocol whose classifier teaches the `distill` student
    /// (`finetune` or `lpft`); `pretrained` is false for scratch.
    pub fn distill_teacher_for(&self, pretrained: bool) -> Result<&'static str> {
        self.start_protocol(
            &self.protocols.distill.teacher,
            "protocols.distill.teacher",
            pretrained,
        )
    }

    /// The protocol whose classifier `fixmatch` starts from.
    pub fn fixmatch_init_for(&self, pretrained: bool) -> Result<&'static str> {
        self.start_protocol(
            &self.protocols.fixmatch.init,
            "protocols.fixmatch.init",
            pretrained,
        )
    }

    fn start_protocol(&self, choice: &str, path: &str, pretrained: bool) -> Result<&'static str> {
        let lpft = self.protocols.runs("lpft");
        let finetune = self.protocols.runs("finetune");
        let picked = match choice {
            "finetune" => "finetune",
            "lpft" => "lpft",
            "auto" if lpft && pretrained => "lpft",
            "auto" if finetune => "finetune",
            "auto" => "lpft",
            other => {
                return Err(Error::invalid(
                    path,
                    format!("unknown choice {other:?}; available: auto, finetune, lpft"),
                ))
            }
        };
        if !self.protocols.runs(picked) {
            return Err(Error::invalid(
                path,
                format!("{picked:?} needs the {picked} protocol, which protocols.run leaves out"),
            ));
        }
        Ok(picked)
    }
}
