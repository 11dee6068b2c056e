//! selfsup-finetune turns an encoder and K labeled images per class into a
//! classifier, with the protocols of the few-label literature:
//!
//! - [`train_classifier`] with `init = None`: **scratch**, the same network
//!   from random weights, same augmentation and epoch budget;
//! - [`train_classifier`] with a checkpoint: **finetune**, every weight
//!   trained from the pretrained backbone under a new head;
//! - [`train_classifier`] with [`TransferConfig::probe_init`]: **lpft**,
//!   the same fine-tune with the head started from a linear probe on the
//!   frozen features (Kumar et al. 2022);
//! - [`linear_probe`]: **linear**, a logistic-regression head on frozen
//!   features;
//! - [`knn`]: **knn**, cosine k-nearest neighbours on frozen features, with
//!   k chosen by leave-one-out accuracy on the labeled images (never the
//!   test set);
//! - [`distill`]: **distill**, a fine-tuned classifier labels the unlabeled
//!   images with soft labels and a copy of it trains on them under strong
//!   augmentation (SimCLR v2's self-distillation, with Noisy Student's
//!   noise);
//! - [`fixmatch`]: **fixmatch**, the classifier labels weak views of the
//!   unlabeled images itself and learns strong views of the confident ones
//!   (Sohn et al. 2020), optionally with distribution alignment.
//!
//! One file per protocol family: `classifier` (scratch, finetune, lpft),
//! `frozen` (linear, knn), `distill`, `fixmatch`.
//!
//! **Invariant:** this crate never imports an objective crate. It works on
//! checkpoints (`selfsup_backbones::checkpoint`), so any pretraining method
//! that writes one can be transferred.

mod classifier;
mod distill;
mod fixmatch;
mod frozen;
#[cfg(test)]
mod tests;

pub use classifier::*;
pub use distill::*;
pub use fixmatch::*;
pub use frozen::*;

use selfsup_core::{Error, Normalization, Result};
use selfsup_data::Dataset;

pub use selfsup_core::train::StageRun;

/// The images a transfer stage learns from.
#[derive(Clone, Copy)]
pub struct Images<'a> {
    /// The training set; its labels are read only for `labeled`.
    pub train: &'a Dataset,
    /// The K labeled images per class.
    pub labeled: &'a [usize],
    /// The unlabeled images of the semi-supervised protocols (empty for
    /// the others).
    pub unlabeled: &'a [usize],
    /// The input normalisation.
    pub norm: &'a Normalization,
}

/// `unlabeled` less any image of `labeled` (in order); an error naming
/// `stage` when nothing is left.
pub(crate) fn without_labeled(
    unlabeled: &[usize],
    labeled: &[usize],
    stage: &str,
) -> Result<Vec<usize>> {
    let is_labeled: std::collections::HashSet<usize> = labeled.iter().copied().collect();
    let left: Vec<usize> = unlabeled
        .iter()
        .copied()
        .filter(|i| !is_labeled.contains(i))
        .collect();
    if left.is_empty() {
        return Err(Error::invalid(
            stage,
            "no unlabeled images left once the labeled ones are dropped",
        ));
    }
    Ok(left)
}
