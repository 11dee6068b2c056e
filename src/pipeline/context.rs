//! What every stage of a run needs, in one value: the prepared data, the
//! backbone, the spec, the device and whether to stay quiet.

use super::data::Prepared;
use crate::backbones::checkpoint::StageConfig;
use crate::backbones::BackboneConfig;
use crate::core::train::{DirCheckpoint, EpochCheckpoint};
use crate::core::{Error, Result};
use crate::finetune::{Images, StageRun};
use crate::spec::Experiment;
use candle_core::Device;
use std::path::{Path, PathBuf};

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
    /// Continue the transfer stages an interrupted run of the same spec
    /// left mid-way (pretraining has its own flag, as `--reuse-pretraining`
    /// continues pretrainings but not transfers of another spec).
    pub resume: bool,
    /// Keep a stage's training state after every this many epochs (0:
    /// never), so that a killed run can continue.
    pub checkpoint_every: usize,
}

/// Where a stage keeps its training state between epochs until it
/// finishes: `<dir>/.progress`, inside the stage directory it will write
/// (which the finished stage then replaces as a whole).
pub fn progress_dir(dir: &Path) -> PathBuf {
    dir.join(".progress")
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

    /// How a stage called `stage` runs, keeping its state between epochs
    /// in `checkpoint` if given.
    pub fn run<'b>(
        &'b self,
        stage: &'b str,
        checkpoint: Option<&'b DirCheckpoint>,
    ) -> StageRun<'b> {
        StageRun {
            device: self.device,
            quiet: self.quiet,
            stage,
            checkpoint: checkpoint.map(|c| c as &dyn EpochCheckpoint),
        }
    }

    /// The store for the training state of the stage that will write
    /// `dir`, identified by `key` (its settings): [`progress_dir`], kept
    /// every [`Stage::checkpoint_every`] epochs (`None` with 0). Unless
    /// `resume`, whatever an earlier run left there is removed first.
    pub fn progress(
        &self,
        dir: &Path,
        key: &impl serde::Serialize,
        resume: bool,
    ) -> Result<Option<DirCheckpoint>> {
        let store = progress_dir(dir);
        if !resume && store.exists() {
            std::fs::remove_dir_all(&store).map_err(|e| Error::io(&store, e))?;
        }
        Ok((self.checkpoint_every > 0).then(|| DirCheckpoint {
            dir: store,
            key: serde_json::to_value(key).expect("a stage's settings serialise"),
            device: self.device.clone(),
            every: self.checkpoint_every,
        }))
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
