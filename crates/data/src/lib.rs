//! selfsup-data loads labeled image datasets into one in-memory shape —
//! `u8` images (N, C, H, W) with optional labels and class names — draws
//! the seeded few-label splits, and turns index lists into normalised `f32`
//! batches.
//!
//! Formats: MNIST-style IDX directories (raw or `.gz`) and CIFAR-10/100
//! binary directories, detected from the files present. Names: the embedded
//! Fashion-MNIST subset (`fashion-mnist`, shipped in the repository's
//! `data/`) and the full set installed by Debian's `dataset-fashion-mnist`
//! (`fashion-mnist-full`); the shipped faces/non-faces crops
//! ([`registry::lfw_faces`]); image folders of PNG/JPEG files ([`folder`]);
//! datasets fetched from the Hugging Face Hub and decoded into the local
//! cache ([`cache`]: `svhn`, `cifar10`, `cifar100`, `mnist`, `tiny-imagenet`,
//! `celeba`, and `fashion-mnist-full`).
//! Images stay `u8` until [`batch`] converts them.
//!
//! ```no_run
//! let pair = selfsup_data::load("fashion-mnist").unwrap();
//! let split = selfsup_data::split::stratified(pair.train.labels().unwrap(), 10, 0).unwrap();
//! assert_eq!(split.labeled.len(), 100);
//! ```

pub mod batch;
pub mod cache;
pub mod cifar;
pub mod dataset;
pub mod folder;
pub mod idx;
pub mod registry;
pub mod split;

pub use dataset::{Dataset, DatasetPair};
pub use registry::{load, load_with, FolderOptions};
pub use selfsup_core::{Error, Result};
