//! Encoder checkpoints: a stage directory with `model.safetensors` (the
//! backbone under `backbone.`, plus any head under `head.`) and a
//! `config.json` holding everything needed to rebuild and feed the encoder.

use crate::{Backbone, BackboneConfig};
use candle_core::Device;
use candle_nn::VarMap;
use selfsup_core::{checkpoint, params, Normalization, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Prefix of backbone parameters in every model and checkpoint.
pub const BACKBONE_PREFIX: &str = "backbone";
/// Prefix of head parameters.
pub const HEAD_PREFIX: &str = "head";

/// The `config.json` of a stage directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageConfig {
    /// `pretrain`, `transfer`, ...
    pub stage: String,
    /// `rotation`, `scratch`, ...
    pub method: String,
    /// The backbone and its hyper-parameters.
    pub backbone: BackboneConfig,
    /// (C, H, W) of the inputs.
    pub input_shape: [usize; 3],
    /// How pixels are normalised before the backbone.
    pub normalization: Normalization,
    /// Seed of the run.
    pub seed: u64,
    /// Dataset name or path it was trained on.
    pub dataset: String,
    /// Outputs of the head saved with it (4 for rotation, classes for a
    /// classifier), if any.
    pub head_outputs: Option<usize>,
    /// The training recipe (epochs, batch size, learning rate, ...).
    pub recipe: serde_json::Value,
    /// Metrics measured at the end of the stage (loss, accuracy, ...).
    pub metrics: serde_json::Value,
}

/// Saves `map` and `cfg` into `dir` atomically.
pub fn save(dir: &Path, map: &VarMap, cfg: &StageConfig) -> Result<()> {
    checkpoint::save(dir, map, "", cfg)
}

/// A backbone rebuilt from a stage directory, ready to extract features or
/// to fine-tune (its parameters are trainable variables in `map`).
pub struct LoadedEncoder {
    /// The variables (backbone only; add a head with a seeded builder).
    pub map: VarMap,
    /// The network.
    pub backbone: Box<dyn Backbone>,
    /// The stage's config.
    pub config: StageConfig,
}

/// Rebuilds the backbone of stage directory `dir` and loads its weights;
/// `seed` initialises anything the file lacks (nothing, for a well-formed
/// checkpoint: loading is strict).
pub fn load(dir: &Path, seed: u64, device: &Device) -> Result<LoadedEncoder> {
    let config: StageConfig = checkpoint::read_config(dir)?;
    let map = VarMap::new();
    let vb = params::seeded_var_builder(&map, seed, device);
    let backbone = config.backbone.build(vb.pp(BACKBONE_PREFIX))?;
    checkpoint::load_into(
        &map,
        &dir.join(checkpoint::WEIGHTS_FILE),
        BACKBONE_PREFIX,
        true,
    )?;
    Ok(LoadedEncoder {
        map,
        backbone,
        config,
    })
}
