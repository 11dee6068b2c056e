//! The registry of pretraining methods, by name: the pretext tasks of
//! `selfsup-pretext` (rotation, jigsaw, mae) and the two-view methods of
//! `selfsup-contrastive` (simclr, byol, simsiam, barlow, vicreg, moco).
//! The spec's `[methods.<name>]` sections ([`crate::spec::MethodsSpec`])
//! hold each one's settings; the pipeline, the bench and the command line
//! check names here.

use crate::contrastive::{self, SiameseConfig};
use crate::core::{Error, Result};
use crate::pretext::{self, Objective, ObjectiveContext, PretextSettings};
use candle_nn::VarBuilder;

/// All method names, pretext tasks first.
pub fn names() -> Vec<&'static str> {
    pretext::NAMES
        .iter()
        .chain(contrastive::NAMES.iter())
        .copied()
        .collect()
}

/// The two-view methods' names (each has a `[methods.<name>]` section with
/// a schedule, a view augmentation and a projector).
pub fn two_view_names() -> Vec<&'static str> {
    contrastive::NAMES.to_vec()
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
            "pretrain.methods",
            format!("unknown method {name:?}; available: {}", names().join(", ")),
        ))
    }
}

/// Builds the objective `name` (two-view methods take `cfg`; pretext
/// tasks get their default settings).
pub fn build(
    name: &str,
    cfg: &SiameseConfig,
    ctx: &ObjectiveContext,
    vb: VarBuilder,
) -> Result<Box<dyn Objective>> {
    build_with(name, cfg, &PretextSettings::default(), ctx, vb)
}

/// Builds the objective `name` (two-view methods take `cfg`, pretext
/// tasks `settings`).
pub fn build_with(
    name: &str,
    cfg: &SiameseConfig,
    settings: &PretextSettings,
    ctx: &ObjectiveContext,
    vb: VarBuilder,
) -> Result<Box<dyn Objective>> {
    check(name)?;
    if is_two_view(name) {
        contrastive::build(name, cfg, ctx, vb)
    } else {
        pretext::build_objective_with(name, settings, ctx, vb)
    }
}
