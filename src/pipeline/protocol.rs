//! The transfer protocols as one seam: each takes a cell (one seed, one K,
//! one method or scratch) and returns a test accuracy. The driver runs the
//! protocols of the spec, in [`PROTOCOLS`] order, without knowing any of
//! them; a protocol that needs another's classifier (`lpft` a probe,
//! `distill` a teacher) finds it in the cell.

use super::context::Stage;
use super::frozen::FrozenFeatures;
use super::semi::{distill_stage, fixmatch_stage, Target};
use super::transfer::{classifier_accuracy, transfer_stage};
use crate::backbones::checkpoint as ckpt;
use crate::backbones::Backbone;
use crate::core::layout::RunLayout;
use crate::core::{Error, Result};
use crate::finetune::Classifier;
use crate::spec::PROTOCOLS;
use std::path::PathBuf;

/// One seed, one label budget and one method (or scratch): what the
/// protocols of a run measure, and what they leave for each other.
pub struct Cell {
    /// The seed of the split and the training.
    pub seed: u64,
    /// Labeled images per class.
    pub k: usize,
    /// The method's name, or `scratch`.
    pub method: String,
    /// The method's pretraining; `None` for scratch.
    pub init: Option<PathBuf>,
    layout: RunLayout,
    classifiers: Vec<(&'static str, Classifier)>,
    frozen: Option<FrozenFeatures>,
}

impl Cell {
    /// A cell whose stages are written under `layout`.
    pub fn new(
        layout: RunLayout,
        seed: u64,
        k: usize,
        method: &str,
        init: Option<PathBuf>,
    ) -> Self {
        Self {
            seed,
            k,
            method: method.to_string(),
            init,
            layout,
            classifiers: Vec::new(),
            frozen: None,
        }
    }

    /// Whether the encoder was pretrained (false for scratch).
    pub fn pretrained(&self) -> bool {
        self.init.is_some()
    }

    /// The stage directory of `protocol` in this cell.
    pub fn dir(&self, protocol: &str) -> PathBuf {
        self.layout.stage(self.seed, self.k, &self.method, protocol)
    }

    /// The classifier that `protocol` trained in this cell.
    pub fn classifier(&self, protocol: &str) -> Result<&Classifier> {
        self.classifiers
            .iter()
            .find(|(p, _)| *p == protocol)
            .map(|(_, c)| c)
            .ok_or_else(|| {
                Error::invalid(
                    "protocols.run",
                    format!("{protocol} must run before the protocols that start from it"),
                )
            })
    }

    fn target(&self) -> Target<'_> {
        Target {
            method: &self.method,
            k: self.k,
            seed: self.seed,
        }
    }

    /// The frozen encoder's features, extracted once per cell: the
    /// pretrained encoder, or for scratch the randomly initialised one (a
    /// random-features baseline).
    fn frozen(&mut self, ctx: &Stage) -> Result<&FrozenFeatures> {
        if self.frozen.is_none() {
            let encoder: Box<dyn Backbone> = match &self.init {
                Some(dir) => ckpt::load(dir, self.seed, ctx.device)?.backbone,
                None => {
                    let map = candle_nn::VarMap::new();
                    let vb = crate::core::params::seeded_var_builder(&map, self.seed, ctx.device);
                    ctx.backbone.build(vb.pp(ckpt::BACKBONE_PREFIX))?
                }
            };
            self.frozen = Some(FrozenFeatures::extract(
                ctx,
                encoder.as_ref(),
                self.k,
                self.seed,
            )?);
        }
        Ok(self.frozen.as_ref().expect("just extracted"))
    }
}

/// A way of turning an encoder and K labels per class into a test accuracy.
pub trait Protocol {
    /// Its name in the report and in stage directories.
    fn name(&self) -> &'static str;
    /// The stage it is timed under in the report.
    fn timed_as(&self) -> &'static str;
    /// Whether it runs for this cell (the semi-supervised protocols can skip
    /// scratch).
    fn applies(&self, _ctx: &Stage, _cell: &Cell) -> bool {
        true
    }
    /// Trains what it trains (writing its stage directory, if any) and
    /// returns the test accuracy.
    fn run(&self, ctx: &Stage, cell: &mut Cell) -> Result<f64>;
}

/// Fine-tuning the whole network with a fresh head (`probe_init` false) or
/// with the head started from a linear probe (`lpft`).
struct FineTune {
    probe_init: bool,
}

impl Protocol for FineTune {
    fn name(&self) -> &'static str {
        if self.probe_init {
            "lpft"
        } else {
            "finetune"
        }
    }
    fn timed_as(&self) -> &'static str {
        "transfer"
    }
    fn run(&self, ctx: &Stage, cell: &mut Cell) -> Result<f64> {
        let dir = cell.dir(self.name());
        let cls = transfer_stage(
            ctx,
            cell.init.as_deref(),
            self.probe_init,
            cell.k,
            cell.seed,
            &dir,
        )?;
        let acc = classifier_accuracy(ctx, &cls)?;
        cell.classifiers.push((self.name(), cls));
        Ok(acc)
    }
}

/// Self-distillation from the `finetune` or `lpft` classifier.
struct Distill;

impl Protocol for Distill {
    fn name(&self) -> &'static str {
        "distill"
    }
    fn timed_as(&self) -> &'static str {
        "distill"
    }
    fn applies(&self, ctx: &Stage, cell: &Cell) -> bool {
        cell.pretrained() || ctx.spec.protocols.scratch_semi_supervised
    }
    fn run(&self, ctx: &Stage, cell: &mut Cell) -> Result<f64> {
        let from = ctx.spec.distill_teacher_for(cell.pretrained())?;
        let student = distill_stage(
            ctx,
            cell.target(),
            cell.classifier(from)?,
            &cell.dir(from),
            &cell.dir("distill"),
        )?;
        classifier_accuracy(ctx, &student)
    }
}

/// FixMatch from the `finetune` or `lpft` classifier.
struct FixMatch;

impl Protocol for FixMatch {
    fn name(&self) -> &'static str {
        "fixmatch"
    }
    fn timed_as(&self) -> &'static str {
        "fixmatch"
    }
    fn applies(&self, ctx: &Stage, cell: &Cell) -> bool {
        cell.pretrained() || ctx.spec.protocols.scratch_semi_supervised
    }
    fn run(&self, ctx: &Stage, cell: &mut Cell) -> Result<f64> {
        let from = ctx.spec.fixmatch_init_for(cell.pretrained())?;
        cell.classifier(from)?;
        let cls = fixmatch_stage(ctx, cell.target(), &cell.dir(from), &cell.dir("fixmatch"))?;
        classifier_accuracy(ctx, &cls)
    }
}

/// A linear probe on the frozen encoder's features.
struct Linear;

impl Protocol for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn timed_as(&self) -> &'static str {
        "evaluate"
    }
    fn run(&self, ctx: &Stage, cell: &mut Cell) -> Result<f64> {
        let seed = cell.seed;
        cell.frozen(ctx)?.linear(ctx, seed)
    }
}

/// kNN on the frozen encoder's features, k by leave-one-out.
struct Knn;

impl Protocol for Knn {
    fn name(&self) -> &'static str {
        "knn"
    }
    fn timed_as(&self) -> &'static str {
        "evaluate"
    }
    fn run(&self, ctx: &Stage, cell: &mut Cell) -> Result<f64> {
        let (acc, chosen) = cell.frozen(ctx)?.knn(ctx)?;
        tracing::info!(
            "  seed {} K={} {:>9} knn      k = {chosen}, chosen by leave-one-out on the labeled images",
            cell.seed,
            cell.k,
            cell.method
        );
        Ok(acc)
    }
}

/// The protocol called `name`.
pub fn protocol(name: &str) -> Result<Box<dyn Protocol>> {
    Ok(match name {
        "finetune" => Box::new(FineTune { probe_init: false }),
        "lpft" => Box::new(FineTune { probe_init: true }),
        "distill" => Box::new(Distill),
        "fixmatch" => Box::new(FixMatch),
        "linear" => Box::new(Linear),
        "knn" => Box::new(Knn),
        other => {
            return Err(Error::invalid(
                "protocols.run",
                format!(
                    "unknown protocol {other:?}; available: {}",
                    PROTOCOLS.join(", ")
                ),
            ))
        }
    })
}

/// The protocols `names` lists, in [`PROTOCOLS`] order.
pub fn protocols(names: &[String]) -> Result<Vec<Box<dyn Protocol>>> {
    PROTOCOLS
        .iter()
        .filter(|p| names.iter().any(|n| n == *p))
        .map(|p| protocol(p))
        .collect()
}
