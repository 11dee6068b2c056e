//! The flat recipe of earlier releases (`--recipe FILE`, and `config.recipe`
//! in report.json): one struct of every tunable number, kept so that old
//! recipe files keep working. It converts to and from the nested
//! [`Experiment`], which is what runs.

use super::{report_field, BackboneSpec, Experiment, ViewAugment};
use crate::contrastive::SiameseConfig;
use crate::core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Every tunable number of a run, flat (the legacy form of [`Experiment`]).
/// The defaults are the recipe of
/// `cargo xtask pipeline` (sized for about 10 minutes on 2 CPU cores).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Recipe {
    /// Keep only these classes (by name, in this order) of the dataset;
    /// empty = all. Selected classes are relabelled 0..n.
    #[serde(default)]
    pub classes: Vec<String>,
    /// With `classes`: pretrain on the unlabeled training images of every
    /// class (the point of self-supervision: images of other classes are
    /// free data), not just the selected ones. The input normalisation is
    /// then fitted on all training images, for pretraining and transfer.
    pub pretrain_all_classes: bool,
    /// Convnet stage widths (ignored by other backbones).
    pub convnet_widths: Vec<usize>,
    /// Convnet 3x3 conv layers per stage.
    pub convnet_depth: usize,
    /// ResNet-18 base width (64 is the standard network).
    pub resnet_width: usize,
    /// MobileNetV2 width multiplier (1.0 is the standard network).
    pub mobilenet_width: f64,
    /// Maximum pretraining epochs (early stopping may end sooner).
    pub pretrain_epochs: usize,
    /// Source images per pretraining step (rotation shows each 4 times).
    pub pretrain_batch: usize,
    /// Peak pretraining learning rate.
    pub pretrain_lr: f64,
    /// Pretraining epochs without validation improvement before stopping.
    pub pretrain_patience: usize,
    /// At most this many unlabeled images are used for pretraining (`None`:
    /// the whole pool).
    pub unlabeled: Option<usize>,
    /// Fraction of the pool held out for the pretext validation loss.
    pub val_fraction: f64,
    /// Cap on held-out validation images.
    pub max_val: usize,
    /// Fine-tune / scratch epochs over the K labeled images.
    pub transfer_epochs: usize,
    /// Also run the `lpft` protocol for every method and scratch: linear
    /// probe, then fine-tune (the head starts from a logistic regression on
    /// the frozen features instead of random weights; same epochs, learning
    /// rate and augmentation as `finetune`).
    pub lpft: bool,
    /// Fine-tune / scratch batch size.
    pub transfer_batch: usize,
    /// Fine-tune / scratch learning rate.
    pub transfer_lr: f64,
    /// Fine-tune / scratch augmentation: `None` (or the preset
    /// `crop-flip`) is a padded random crop (`crop_pad`) and flip (`flip`);
    /// otherwise a preset name (e.g. `flip-zoom-contrast`) or an explicit
    /// pipeline.
    pub transfer_augment: Option<ViewAugment>,
    /// Fine-tune / scratch early stopping: hold out `transfer_val_fraction`
    /// of each class's labeled images and stop after this many epochs
    /// without improvement of their error rate (ties broken by
    /// cross-entropy), keeping the best epoch's weights; epochs inside the
    /// warmup do not count.
    /// `None` trains on every labeled image for all epochs.
    pub transfer_patience: Option<usize>,
    /// Fraction of the labeled images held out for `transfer_patience`.
    pub transfer_val_fraction: f64,
    /// AdamW weight decay everywhere but the linear probe.
    pub weight_decay: f64,
    /// Linear-probe optimiser steps (full batch).
    pub linear_steps: usize,
    /// Linear-probe learning rate.
    pub linear_lr: f64,
    /// Linear-probe weight decay.
    pub linear_weight_decay: f64,
    /// kNN candidate k values.
    pub knn_ks: Vec<usize>,
    /// Random-crop padding (pixels) for pretraining and transfer.
    pub crop_pad: usize,
    /// Random horizontal flips.
    pub flip: bool,
    /// Inference batch size.
    pub eval_batch: usize,
    /// Pretrain separately for every seed (independent runs, 3x the cost
    /// for 3 seeds) instead of once per run. When shared, the pretraining
    /// pool excludes every seed's labeled images and the seeds vary the
    /// split, the transfer initialisation and training.
    pub pretrain_per_seed: bool,
    /// Maximum pretraining epochs of the two-view methods (simclr, byol,
    /// ...), which learn more slowly per epoch than rotation.
    pub contrastive_epochs: usize,
    /// Source images per two-view step (each is seen twice).
    pub contrastive_batch: usize,
    /// Peak learning rate of the two-view methods.
    pub contrastive_lr: f64,
    /// Early-stopping patience of the two-view methods (their held-out loss
    /// is measured on fixed views).
    pub contrastive_patience: usize,
    /// Projector, temperatures, momentum, queue, loss weights.
    pub siamese: SiameseConfig,
    /// View augmentation of the two-view methods: `auto` (the SimCLR preset
    /// for the image size: `simclr-mnist` for gray images up to 28 pixels,
    /// else `simclr-cifar`), a preset name, or the pipeline itself.
    pub view_augment: ViewAugment,
    /// After every pretraining epoch, report the leave-one-out kNN accuracy
    /// of the encoder's features on the seed's K labeled images.
    pub knn_monitor: bool,
    /// Epochs of the `distill` protocol (0 = off): each method's fine-tuned
    /// classifier labels the unlabeled images with soft labels and a copy
    /// of it trains on them (SimCLR v2's self-distillation; scratch gets
    /// the same treatment, so the comparison stays fair).
    pub distill_epochs: usize,
    /// Distillation batch size.
    pub distill_batch: usize,
    /// Distillation peak learning rate.
    pub distill_lr: f64,
    /// Softmax temperature of the teacher's soft labels and of the
    /// student's logits.
    pub distill_temperature: f64,
    /// Share of each distillation epoch made of the K labeled images (with
    /// their true labels, repeated to reach it).
    pub distill_labeled_share: f64,
    /// Augmentation of the student's inputs (Noisy Student: the student
    /// learns under noise the teacher did not see): `None` uses the SimCLR
    /// view preset for the image size (as `view_augment`'s `auto`);
    /// otherwise a preset name (`crop-flip` is the fine-tune default) or a
    /// pipeline, as for `transfer_augment`.
    pub distill_augment: Option<ViewAugment>,
    /// Which classifier teaches the `distill` student: `finetune`, `lpft`
    /// (needs `lpft`), or `auto`: `lpft` for pretrained methods when it
    /// runs, else `finetune` (always `finetune` for scratch, whose random
    /// features make a poor probe).
    pub distill_teacher: String,
    /// Epochs (passes over the unlabeled images) of the `fixmatch`
    /// protocol (0 = off): semi-supervised training in which the classifier
    /// labels weak views of the unlabeled images itself, online, and learns
    /// strong views of the confident ones (Sohn et al. 2020). Scratch gets
    /// the same treatment.
    pub fixmatch_epochs: usize,
    /// Unlabeled images per `fixmatch` step.
    pub fixmatch_batch: usize,
    /// Labeled images per `fixmatch` step (drawn with replacement).
    pub fixmatch_labeled_batch: usize,
    /// `fixmatch` peak learning rate.
    pub fixmatch_lr: f64,
    /// Least confidence for an unlabeled image's own prediction to become
    /// its label in a step.
    pub fixmatch_threshold: f64,
    /// Weight of the unlabeled loss.
    pub fixmatch_unlabeled_weight: f64,
    /// The strong augmentation: `None` uses the SimCLR view preset for the
    /// image size; otherwise as `distill_augment`. The weak one is the
    /// fine-tune's (`transfer_augment`).
    pub fixmatch_augment: Option<ViewAugment>,
    /// Which classifier `fixmatch` starts from: `finetune`, `lpft` or
    /// `auto`, chosen as for `distill_teacher`.
    pub fixmatch_init: String,
    /// Distribution alignment of `fixmatch`'s pseudo-labels (see
    /// [`crate::finetune::FixMatchConfig::distribution_alignment`]).
    pub fixmatch_align: bool,
    /// Also run the semi-supervised protocols (`distill`, `fixmatch`) for
    /// scratch (the default, so each method's semi-supervised figure has its
    /// from-scratch counterpart in the same report). Turning it off saves
    /// their cost when the scratch figures are already known; the report
    /// then compares against scratch's other protocols only.
    pub scratch_semi_supervised: bool,
}

impl Default for Recipe {
    fn default() -> Self {
        Self {
            classes: Vec::new(),
            pretrain_all_classes: true,
            convnet_widths: vec![16, 32, 64],
            convnet_depth: 2,
            resnet_width: 64,
            mobilenet_width: 1.0,
            pretrain_epochs: 3,
            pretrain_batch: 64,
            pretrain_lr: 1e-3,
            pretrain_patience: 2,
            unlabeled: Some(4500),
            val_fraction: 0.05,
            max_val: 500,
            transfer_epochs: 60,
            lpft: true,
            transfer_batch: 32,
            transfer_lr: 1e-3,
            transfer_augment: None,
            transfer_patience: None,
            transfer_val_fraction: 0.1,
            weight_decay: 5e-4,
            linear_steps: 300,
            linear_lr: 0.01,
            linear_weight_decay: 1e-3,
            knn_ks: vec![1, 3, 5, 10, 20],
            crop_pad: 2,
            flip: true,
            eval_batch: 128,
            pretrain_per_seed: false,
            contrastive_epochs: 8,
            contrastive_batch: 256,
            contrastive_lr: 2e-3,
            contrastive_patience: 5,
            siamese: SiameseConfig::default(),
            view_augment: ViewAugment::Preset("auto".into()),
            knn_monitor: true,
            distill_epochs: 0,
            distill_batch: 128,
            distill_lr: 1e-3,
            distill_temperature: 1.0,
            distill_labeled_share: 0.25,
            distill_augment: None,
            distill_teacher: "auto".into(),
            fixmatch_epochs: 0,
            fixmatch_batch: 128,
            fixmatch_labeled_batch: 32,
            fixmatch_lr: 1e-3,
            fixmatch_threshold: 0.95,
            fixmatch_unlabeled_weight: 1.0,
            fixmatch_augment: None,
            fixmatch_init: "auto".into(),
            fixmatch_align: false,
            scratch_semi_supervised: true,
        }
    }
}

impl Recipe {
    /// Reads a recipe file: a JSON object with any subset of the fields
    /// (the rest keep their defaults). Unknown fields are refused.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bad = |msg: String| Error::Format {
            path: path.to_path_buf(),
            msg,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let Some(fields) = value.as_object() else {
            return Err(bad("a recipe must be a JSON object".into()));
        };
        let known = serde_json::to_value(Recipe::default()).expect("a recipe serialises");
        let known = known.as_object().expect("a recipe is an object");
        if let Some(k) = fields.keys().find(|k| !known.contains_key(*k)) {
            return Err(bad(format!(
                "unknown recipe field {k:?}; known: {}",
                known.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        serde_json::from_value(value).map_err(|e| bad(format!("invalid recipe: {e}")))
    }

    /// `base` with every setting of this recipe written into it (dataset,
    /// backbone name, label budgets, seeds and methods stay `base`'s).
    pub fn into_experiment(self, mut e: Experiment) -> Experiment {
        self.two_view_into(&mut e);
        e.data.classes = self.classes;
        e.data.pretrain_all_classes = self.pretrain_all_classes;
        match &mut e.backbone {
            BackboneSpec::ConvNet(c) => {
                c.widths = self.convnet_widths;
                c.depth = self.convnet_depth;
            }
            BackboneSpec::ResNet18(r) => r.width = self.resnet_width,
            BackboneSpec::MobileNetV2(m) => m.width_multiplier = self.mobilenet_width,
            // Legacy recipes predate the ViT: it keeps its own sizes.
            BackboneSpec::Vit(_) => {}
        }
        e.split.unlabeled = self.unlabeled.unwrap_or(0);
        e.training.weight_decay = self.weight_decay;
        e.training.crop_pad = self.crop_pad;
        e.training.flip = self.flip;
        e.training.eval_batch = self.eval_batch;
        e.pretrain.per_seed = self.pretrain_per_seed;
        e.pretrain.val_fraction = self.val_fraction;
        e.pretrain.max_val = self.max_val;
        e.pretrain.knn_monitor = self.knn_monitor;
        let r = &mut e.methods.rotation;
        (r.epochs, r.batch, r.lr, r.patience) = (
            self.pretrain_epochs,
            self.pretrain_batch,
            self.pretrain_lr,
            self.pretrain_patience,
        );
        let t = &mut e.transfer;
        t.epochs = self.transfer_epochs;
        t.batch = self.transfer_batch;
        t.lr = self.transfer_lr;
        t.augment = self
            .transfer_augment
            .unwrap_or_else(|| ViewAugment::Preset("crop-flip".into()));
        t.patience = self.transfer_patience.unwrap_or(0);
        t.val_fraction = self.transfer_val_fraction;
        t.linear_probe.steps = self.linear_steps;
        t.linear_probe.lr = self.linear_lr;
        t.linear_probe.weight_decay = self.linear_weight_decay;
        let p = &mut e.protocols;
        p.knn.ks = self.knn_ks;
        p.scratch_semi_supervised = self.scratch_semi_supervised;
        p.set_running("lpft", self.lpft);
        p.set_running("distill", self.distill_epochs > 0);
        p.set_running("fixmatch", self.fixmatch_epochs > 0);
        let d = &mut p.distill;
        if self.distill_epochs > 0 {
            d.epochs = self.distill_epochs;
        }
        d.batch = self.distill_batch;
        d.lr = self.distill_lr;
        d.temperature = self.distill_temperature;
        d.labeled_share = self.distill_labeled_share;
        d.augment = self.distill_augment.unwrap_or_else(ViewAugment::auto);
        d.teacher = self.distill_teacher;
        let f = &mut p.fixmatch;
        if self.fixmatch_epochs > 0 {
            f.epochs = self.fixmatch_epochs;
        }
        f.batch = self.fixmatch_batch;
        f.labeled_batch = self.fixmatch_labeled_batch;
        f.lr = self.fixmatch_lr;
        f.threshold = self.fixmatch_threshold;
        f.unlabeled_weight = self.fixmatch_unlabeled_weight;
        f.augment = self.fixmatch_augment.unwrap_or_else(ViewAugment::auto);
        f.init = self.fixmatch_init;
        f.align = self.fixmatch_align;
        e
    }

    /// The shared two-view settings, written into every two-view method.
    fn two_view_into(&self, e: &mut Experiment) {
        let s = &self.siamese;
        let m = &mut e.methods;
        macro_rules! common {
            ($($x:ident),*) => {$(
                m.$x.epochs = self.contrastive_epochs;
                m.$x.batch = self.contrastive_batch;
                m.$x.lr = self.contrastive_lr;
                m.$x.patience = self.contrastive_patience;
                m.$x.view_augment = self.view_augment.clone();
                m.$x.projector.hidden = s.proj_hidden;
                m.$x.projector.dim = s.proj_dim;
                m.$x.projector.layers = s.proj_layers;
            )*};
        }
        common!(simclr, byol, simsiam, barlow, vicreg, moco);
        m.simclr.temperature = s.temperature;
        m.simclr.projector_batch_norm = s.proj_batch_norm;
        m.byol.predictor_hidden = s.pred_hidden;
        m.byol.ema_momentum = s.ema_momentum;
        m.simsiam.predictor_hidden = s.pred_hidden;
        m.barlow.lambda = s.barlow_lambda;
        (m.vicreg.invariance, m.vicreg.variance, m.vicreg.covariance) =
            (s.vicreg.invariance, s.vicreg.variance, s.vicreg.covariance);
        m.moco.temperature = s.moco_temperature;
        m.moco.queue_size = s.queue_size;
        m.moco.ema_momentum = s.ema_momentum;
    }
}

impl From<&Experiment> for Recipe {
    /// The flat view of a spec. Where two-view methods differ, it shows the
    /// first two-view method the spec runs (SimCLR's when none runs), and
    /// each method's own knob from its section.
    fn from(e: &Experiment) -> Self {
        let m = &e.methods;
        let first_two_view = e
            .pretrain
            .methods
            .iter()
            .find_map(|n| m.get(n).ok().filter(|v| v.view_augment.is_some()))
            .unwrap_or_else(|| m.get("simclr").expect("simclr is a method"));
        let sched = first_two_view.schedule;
        let view_augment = first_two_view
            .view_augment
            .cloned()
            .unwrap_or_else(ViewAugment::auto);
        let mut siamese = m.simclr.siamese();
        siamese.pred_hidden = m.byol.predictor_hidden;
        siamese.ema_momentum = m.byol.ema_momentum;
        siamese.barlow_lambda = m.barlow.lambda;
        siamese.vicreg.invariance = m.vicreg.invariance;
        siamese.vicreg.variance = m.vicreg.variance;
        siamese.vicreg.covariance = m.vicreg.covariance;
        siamese.moco_temperature = m.moco.temperature;
        siamese.queue_size = m.moco.queue_size;
        let (t, p) = (&e.transfer, &e.protocols);
        let (cn, rn, mn) = legacy_backbone(&e.backbone);
        let epochs_if = |name: &str, n: usize| if p.runs(name) { n } else { 0 };
        Recipe {
            classes: e.data.classes.clone(),
            pretrain_all_classes: e.data.pretrain_all_classes,
            convnet_widths: cn.0,
            convnet_depth: cn.1,
            resnet_width: rn,
            mobilenet_width: mn,
            pretrain_epochs: m.rotation.epochs,
            pretrain_batch: m.rotation.batch,
            pretrain_lr: m.rotation.lr,
            pretrain_patience: m.rotation.patience,
            unlabeled: e.split.unlabeled_cap(),
            val_fraction: e.pretrain.val_fraction,
            max_val: e.pretrain.max_val,
            transfer_epochs: t.epochs,
            lpft: p.runs("lpft"),
            transfer_batch: t.batch,
            transfer_lr: t.lr,
            transfer_augment: Some(t.augment.clone()),
            transfer_patience: (t.patience > 0).then_some(t.patience),
            transfer_val_fraction: t.val_fraction,
            weight_decay: e.training.weight_decay,
            linear_steps: t.linear_probe.steps,
            linear_lr: t.linear_probe.lr,
            linear_weight_decay: t.linear_probe.weight_decay,
            knn_ks: p.knn.ks.clone(),
            crop_pad: e.training.crop_pad,
            flip: e.training.flip,
            eval_batch: e.training.eval_batch,
            pretrain_per_seed: e.pretrain.per_seed,
            contrastive_epochs: sched.epochs,
            contrastive_batch: sched.batch,
            contrastive_lr: sched.lr,
            contrastive_patience: sched.patience,
            siamese,
            view_augment,
            knn_monitor: e.pretrain.knn_monitor,
            distill_epochs: epochs_if("distill", p.distill.epochs),
            distill_batch: p.distill.batch,
            distill_lr: p.distill.lr,
            distill_temperature: p.distill.temperature,
            distill_labeled_share: p.distill.labeled_share,
            distill_augment: Some(p.distill.augment.clone()),
            distill_teacher: p.distill.teacher.clone(),
            fixmatch_epochs: epochs_if("fixmatch", p.fixmatch.epochs),
            fixmatch_batch: p.fixmatch.batch,
            fixmatch_labeled_batch: p.fixmatch.labeled_batch,
            fixmatch_lr: p.fixmatch.lr,
            fixmatch_threshold: p.fixmatch.threshold,
            fixmatch_unlabeled_weight: p.fixmatch.unlabeled_weight,
            fixmatch_augment: Some(p.fixmatch.augment.clone()),
            fixmatch_init: p.fixmatch.init.clone(),
            fixmatch_align: p.fixmatch.align,
            scratch_semi_supervised: p.scratch_semi_supervised,
        }
    }
}

/// The three backbones' sizes as the flat recipe holds them: the spec's
/// backbone's own, the defaults for the others.
fn legacy_backbone(b: &BackboneSpec) -> ((Vec<usize>, usize), usize, f64) {
    let d = Recipe::default();
    let mut out = (
        (d.convnet_widths, d.convnet_depth),
        d.resnet_width,
        d.mobilenet_width,
    );
    match b {
        BackboneSpec::ConvNet(c) => out.0 = (c.widths.clone(), c.depth),
        BackboneSpec::ResNet18(r) => out.1 = r.width,
        BackboneSpec::MobileNetV2(m) => out.2 = m.width_multiplier,
        BackboneSpec::Vit(_) => {}
    }
    out
}

impl Experiment {
    /// The spec of a run from its report.json, for runs made before
    /// `experiment.toml` existed: dataset, backbone, methods, label budgets
    /// and seeds from the report, every other setting from its flat
    /// `config.recipe` (fields a release did not write keep today's
    /// defaults), and the protocols that appear in its results.
    pub fn from_report(report: &serde_json::Value, path: &Path) -> Result<Self> {
        let mut e = Experiment::default();
        let dataset: String = report_field(report, "pipeline", "/dataset", path)?;
        // A class selection is written as `name[a,b]`.
        e.data.dataset = dataset.split('[').next().unwrap_or(&dataset).to_string();
        let backbone: String = report_field(report, "pipeline", "/backbone", path)?;
        e.backbone = BackboneSpec::from_name(&backbone).map_err(|err| Error::Format {
            path: path.to_path_buf(),
            msg: err.to_string(),
        })?;
        e.pretrain.methods = report_field(report, "pipeline", "/pretext", path)?;
        e.split.seeds = report_field(report, "pipeline", "/seeds", path)?;
        e.split.labels_per_class = report_field(report, "pipeline", "/labels_per_class", path)?;
        e.data.max_train = report_field(report, "pipeline", "/config/max_train", path)?;
        e.data.max_test = report_field(report, "pipeline", "/config/max_test", path)?;
        let recipe: Recipe = report_field(report, "pipeline", "/config/recipe", path)?;
        let mut e = recipe.into_experiment(e);
        let rows: Vec<serde_json::Value> = report_field(report, "pipeline", "/results", path)?;
        let ran: Vec<&str> = rows.iter().filter_map(|r| r["protocol"].as_str()).collect();
        if !ran.is_empty() {
            e.protocols.run = super::PROTOCOLS
                .iter()
                .filter(|p| ran.contains(p))
                .map(|p| p.to_string())
                .collect();
        }
        Ok(e)
    }
}
