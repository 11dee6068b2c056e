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
    /// Whether to keep the state after `epochs_done` epochs (every epoch
    /// unless a store says otherwise).
    fn due(&self, epochs_done: usize) -> bool {
        let _ = epochs_done;
        true
    }
}

/// A store that adds one caller's own state to [`Saved::meta`] under `key`
/// (say, a history a validation closure keeps), and puts it back on load.
pub struct WithMeta<'a, T> {
    /// The store underneath.
    pub inner: &'a dyn EpochCheckpoint,
    /// The field of `meta`.
    pub key: &'static str,
    /// The state, shared with the closure that updates it.
    pub state: &'a std::cell::RefCell<T>,
}

impl<T: Serialize + serde::de::DeserializeOwned> EpochCheckpoint for WithMeta<'_, T> {
    fn load(&self) -> Result<Option<Saved>> {
        let Some(saved) = self.inner.load()? else {
            return Ok(None);
        };
        let value = serde_json::from_value(saved.meta[self.key].clone()).map_err(|e| {
            Error::invalid(
                "checkpoint",
                format!("the saved state's {} cannot be read: {e}", self.key),
            )
        })?;
        *self.state.borrow_mut() = value;
        Ok(Some(saved))
    }

    fn save(&self, mut saved: Saved) -> Result<()> {
        saved.meta[self.key] = serde_json::to_value(&*self.state.borrow())
            .map_err(|e| Error::invalid("checkpoint", e.to_string()))?;
        self.inner.save(saved)
    }

    fn due(&self, epochs_done: usize) -> bool {
        self.inner.due(epochs_done)
    }
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
    /// Keep the state after every `every`-th epoch (0: never).
    pub every: usize,
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

    fn due(&self, epochs_done: usize) -> bool {
        self.every > 0 && epochs_done % self.every == 0
    }
}
