//! selfsup-core holds what every stage of selfsup shares: typed errors,
//! seeded randomness, seeded parameter initialisation, atomic checkpoints,
//! the training-loop parts (AdamW with a warmup + cosine schedule, early
//! stopping, a non-finite-loss guard, a progress bar) and the run report.
//!
//! Design choice: Candle's CPU random generator cannot be seeded, so every
//! model in selfsup is built through [`params::seeded_var_builder`], which
//! initialises parameters from a ChaCha RNG derived from the run seed. Same
//! seed on CPU, same numbers.
//!
//! ```
//! use selfsup_core::train::LrSchedule;
//! let s = LrSchedule::new(1e-3, 10, 100);
//! assert!(s.lr_at(0) < s.lr_at(9));
//! assert!(s.lr_at(99) < s.lr_at(10));
//! ```

pub mod checkpoint;
pub mod device;
pub mod error;
pub mod fsutil;
pub mod jsondiff;
pub mod layout;
pub mod metrics;
pub mod output;
pub mod params;
pub mod progress;
pub mod report;
pub mod rng;
pub mod train;

pub use error::{Error, Result};

/// Per-channel input normalisation: `x = (pixel / 255 - mean) / std`.
/// Part of every checkpoint's config, so a model is always fed as it was
/// trained.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalization {
    /// Channel means in [0, 1].
    pub mean: Vec<f32>,
    /// Channel standard deviations.
    pub std: Vec<f32>,
}
