//! What every stage of a run needs, in one value: the prepared data, the
//! backbone, the spec, the device and whether to stay quiet.

use super::data::Prepared;
use crate::backbones::checkpoint::StageConfig;
use crate::backbones::BackboneConfig;
use crate::finetune::{Images, StageRun};
use crate::spec::Experiment;
use candle_core::Device;

/// The shared inputs of the stage functions.
#[derive(Clone, Copy)]
pub struct Stage<'a> {
    /// The dataset and its normalisation.
    pub prep: &'a Prepared,
    /// The encoder's configuration.
    pub backbone: &'a BackboneConfig,
    /// The experiment.
    pub spec: &'a Experiment,
    /// Where tensors live.
    pub device: &'a Device,
    /// No progress bars or per-result lines.
    pub quiet: bool,
}

impl Stage<'_> {
    /// The image shape (C, H, W) of the training set.
    pub fn shape(&self) -> (usize, usize, usize) {
        self.prep.pair.train.image_shape()
    }

    /// The training labels (prepared datasets always have them).
    pub fn labels(&self) -> &[u32] {
        self.prep
            .pair
            .train
            .labels()
            .expect("prepared datasets have labels")
    }

    /// The training images with `labeled` and `unlabeled` picked out.
    pub fn images<'b>(&'b self, labeled: &'b [usize], unlabeled: &'b [usize]) -> Images<'b> {
        Images {
            train: &self.prep.pair.train,
            labeled,
            unlabeled,
            norm: &self.prep.norm,
        }
    }

    /// How a stage called `stage` runs.
    pub fn run<'b>(&'b self, stage: &'b str) -> StageRun<'b> {
        StageRun {
            device: self.device,
            quiet: self.quiet,
            stage,
        }
    }

    /// A stage's config.json: what it is, what it was trained on, and its
    /// settings (`recipe`) and measurements (`metrics`).
    pub fn config(
        &self,
        stage: &str,
        method: &str,
        seed: u64,
        head_outputs: Option<usize>,
        recipe: serde_json::Value,
        metrics: serde_json::Value,
    ) -> StageConfig {
        let (c, h, w) = self.shape();
        StageConfig {
            stage: stage.into(),
            method: method.into(),
            backbone: self.backbone.clone(),
            input_shape: [c, h, w],
            normalization: self.prep.norm.clone(),
            seed,
            dataset: self.prep.pair.name.clone(),
            head_outputs,
            recipe,
            metrics,
        }
    }
}
