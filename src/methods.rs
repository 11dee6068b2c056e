//! Every pretraining method selfsup knows, by name: the pretext tasks of
//! `selfsup-pretext` (rotation) and the two-view methods of
//! `selfsup-contrastive` (simclr, byol, simsiam, barlow, vicreg, moco).

use crate::contrastive::{self, SiameseConfig};
use crate::core::{Error, Result};
use crate::pretext::{self, Objective, ObjectiveContext};
use candle_nn::VarBuilder;

/// All method names, pretext tasks first.
pub fn names() -> Vec<&'static str> {
    pretext::NAMES
        .iter()
        .chain(contrastive::NAMES.iter())
        .copied()
        .collect()
}

/// Whether `name` is a two-view method (it needs the view augmentation and
/// the contrastive recipe).
pub fn is_two_view(name: &str) -> bool {
    contrastive::NAMES.contains(&name)
}

/// Checks a method name, with the list of known ones in the error.
pub fn check(name: &str) -> Result<()> {
    if names().contains(&name) {
        Ok(())
    } else {
        Err(Error::invalid(
            "--pretext",
            format!("unknown method {name:?}; available: {}", names().join(", ")),
        ))
    }
}

/// Builds the objective `name` (two-view methods take `cfg`).
pub fn build(
    name: &str,
    cfg: &SiameseConfig,
    ctx: &ObjectiveContext,
    vb: VarBuilder,
) -> Result<Box<dyn Objective>> {
    check(name)?;
    if is_two_view(name) {
        contrastive::build(name, cfg, ctx, vb)
    } else {
        pretext::build_objective(name, ctx.feature_dim, vb)
    }
}
