//! Continuing a training run that was killed: after every epoch the loop
//! hands its whole state — weights, optimizer moments and step, early
//! stopping, the best epoch's weights, the history — to an
//! [`EpochCheckpoint`], and a later run of the same stage starts from it
//! and ends with the same numbers as one that was never interrupted.

use super::FitReport;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;

/// The loop's state after an epoch. `tensors` and `meta` are open: the
/// loop writes `var.*`, `best.*`, `adam.*`; a caller wrapping the store may
/// add its own (an objective's momentum network, say).
pub struct Saved {
    /// Epochs finished.
    pub epochs_done: usize,
    /// The history so far.
    pub report: FitReport,
    /// Early stopping: best loss (`None`: none yet) and evaluations since.
    pub stopper: (Option<f64>, usize),
    /// Extra JSON state of callers.
    pub meta: serde_json::Value,
    /// Named tensors.
    pub tensors: HashMap<String, Tensor>,
}

/// Where the state between epochs is kept.
pub trait EpochCheckpoint {
    /// The state an earlier run of the same stage left, if any.
    fn load(&self) -> Result<Option<Saved>>;
    /// Keeps the state after an epoch (replacing the previous one).
    fn save(&self, saved: Saved) -> Result<()>;
}

/// `state.json` of a [`DirCheckpoint`].
#[derive(Serialize, Deserialize)]
struct StateFile {
    key: serde_json::Value,
    epochs_done: usize,
    report: FitReport,
    stopper_best: Option<f64>,
    stopper_bad: usize,
    meta: serde_json::Value,
}

/// An [`EpochCheckpoint`] in a directory (`state.json` +
/// `tensors.safetensors`, replaced atomically after each epoch). `key`
/// identifies the stage: a directory saved under another key is an error,
/// never silently continued.
pub struct DirCheckpoint {
    /// The directory.
    pub dir: PathBuf,
    /// What the stage is (its settings), compared on load.
    pub key: serde_json::Value,
    /// Where loaded tensors go.
    pub device: Device,
}

impl EpochCheckpoint for DirCheckpoint {
    fn load(&self) -> Result<Option<Saved>> {
        let state = self.dir.join("state.json");
        if !state.is_file() {
            return Ok(None);
        }
        let s: StateFile = crate::fsutil::read_json(&state)?;
        if s.key != self.key {
            return Err(Error::format(
                &state,
                "a killed run with other settings left this; give another --out, or --force to start over",
            ));
        }
        let tensors =
            crate::checkpoint::read_tensors(&self.dir.join("tensors.safetensors"), &self.device)?;
        Ok(Some(Saved {
            epochs_done: s.epochs_done,
            report: s.report,
            stopper: (s.stopper_best, s.stopper_bad),
            meta: s.meta,
            tensors,
        }))
    }

    fn save(&self, saved: Saved) -> Result<()> {
        let file = StateFile {
            key: self.key.clone(),
            epochs_done: saved.epochs_done,
            report: saved.report,
            stopper_best: saved.stopper.0,
            stopper_bad: saved.stopper.1,
            meta: saved.meta,
        };
        crate::fsutil::write_dir_atomic(&self.dir, |tmp| {
            let path = tmp.join("tensors.safetensors");
            candle_core::safetensors::save(&saved.tensors, &path)
                .map_err(|e| Error::format(&path, e.to_string()))?;
            crate::fsutil::write_json_atomic(&tmp.join("state.json"), &file)
        })
    }
}
