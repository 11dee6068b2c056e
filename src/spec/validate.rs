//! Checks of a spec that need no data: each error names the spec path at
//! fault (`transfer.epochs: must be at least 1`).

use super::{Experiment, PROTOCOLS};
use crate::core::{Error, Result};

/// Fails with `path` unless `n` >= 1.
fn at_least_one(path: &str, n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::invalid(path, "must be at least 1"));
    }
    Ok(())
}

/// Fails with `path` unless `x` lies in the open interval (0, 1).
fn fraction(path: &str, x: f64) -> Result<()> {
    if !(x > 0.0 && x < 1.0) {
        return Err(Error::invalid(
            path,
            format!("must lie strictly between 0 and 1, got {x}"),
        ));
    }
    Ok(())
}

/// Fails with `path` unless `x` is a positive finite number.
fn positive(path: &str, x: f64) -> Result<()> {
    if !(x > 0.0 && x.is_finite()) {
        return Err(Error::invalid(
            path,
            format!("must be a positive number, got {x}"),
        ));
    }
    Ok(())
}

/// Fails with `path` when `names` repeats one.
fn distinct(path: &str, names: &[String]) -> Result<()> {
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return Err(Error::invalid(path, format!("lists {n:?} twice")));
        }
    }
    Ok(())
}

impl Experiment {
    /// Checks every value that can be checked without the data; the
    /// pipeline checks the rest (K against the smallest class, the held-out
    /// labels) before it writes anything.
    pub fn validate(&self) -> Result<()> {
        self.validate_data()?;
        self.validate_pretrain()?;
        self.validate_transfer()?;
        self.validate_protocols()
    }

    fn validate_data(&self) -> Result<()> {
        if self.data.dataset.trim().is_empty() {
            return Err(Error::invalid(
                "data.dataset",
                "give a dataset name or directory",
            ));
        }
        if ![1, 3].contains(&self.data.channels) {
            return Err(Error::invalid(
                "data.channels",
                format!("must be 1 or 3, got {}", self.data.channels),
            ));
        }
        for (path, cap) in [
            ("data.max_train", self.data.max_train),
            ("data.max_test", self.data.max_test),
        ] {
            if cap == Some(0) {
                return Err(Error::invalid(
                    path,
                    "must be at least 1 (leave it out to use every image)",
                ));
            }
        }
        if self.data.image_size < 8 {
            return Err(Error::invalid("data.image_size", "must be at least 8"));
        }
        if self.split.seeds.is_empty() {
            return Err(Error::invalid("split.seeds", "give at least one seed"));
        }
        if self.split.labels_per_class.is_empty() {
            return Err(Error::invalid(
                "split.labels_per_class",
                "give at least one value",
            ));
        }
        if self.split.labels_per_class.contains(&0) {
            return Err(Error::invalid(
                "split.labels_per_class",
                "every K must be at least 1",
            ));
        }
        if let super::BackboneSpec::ConvNet(c) = &self.backbone {
            if c.widths.is_empty() || c.widths.contains(&0) {
                return Err(Error::invalid(
                    "backbone.widths",
                    "give at least one stage width, each at least 1",
                ));
            }
            at_least_one("backbone.depth", c.depth)?;
        }
        if let super::BackboneSpec::Vit(v) = &self.backbone {
            at_least_one("backbone.patch", v.patch)?;
            at_least_one("backbone.depth", v.depth)?;
            at_least_one("backbone.heads", v.heads)?;
            if v.dim == 0 || v.dim % 4 != 0 || v.dim % v.heads != 0 {
                return Err(Error::invalid(
                    "backbone.dim",
                    format!(
                        "{}: the token width must be a positive multiple of 4 and of backbone.heads ({})",
                        v.dim, v.heads
                    ),
                ));
            }
            if !(v.mlp_ratio > 0.0 && v.mlp_ratio.is_finite()) {
                return Err(Error::invalid(
                    "backbone.mlp_ratio",
                    "must be a positive number",
                ));
            }
        }
        at_least_one("training.eval_batch", self.training.eval_batch)
    }

    fn validate_pretrain(&self) -> Result<()> {
        distinct("pretrain.methods", &self.pretrain.methods)?;
        fraction("pretrain.val_fraction", self.pretrain.val_fraction)?;
        at_least_one("pretrain.max_val", self.pretrain.max_val)?;
        for m in &self.pretrain.methods {
            let view = self.methods.get(m)?;
            at_least_one(&format!("methods.{m}.epochs"), view.schedule.epochs)?;
            at_least_one(&format!("methods.{m}.batch"), view.schedule.batch)?;
            positive(&format!("methods.{m}.lr"), view.schedule.lr)?;
        }
        let vit = matches!(self.backbone, super::BackboneSpec::Vit(_));
        if self.pretrain.methods.iter().any(|m| m == "inpaint") {
            self.methods.inpaint.config().validate()?;
            if vit {
                return Err(Error::invalid(
                    "pretrain.methods",
                    "inpaint predicts pixels from a convolutional feature map; \
                     for backbone.name = \"vit\" use mae",
                ));
            }
        }
        if self.pretrain.methods.iter().any(|m| m == "colorization") {
            let r = self.methods.colorization.config().rebalance;
            if !(0.0..=1.0).contains(&r) {
                return Err(Error::invalid(
                    "methods.colorization.rebalance",
                    format!("{r}: must lie in [0, 1]"),
                ));
            }
            if vit {
                return Err(Error::invalid(
                    "pretrain.methods",
                    "colorization predicts from a convolutional feature map; \
                     choose a convolutional backbone",
                ));
            }
        }
        if self.pretrain.methods.iter().any(|m| m == "mae") {
            self.methods.mae.config().validate()?;
            if !vit {
                return Err(Error::invalid(
                    "pretrain.methods",
                    format!(
                        "mae reconstructs ViT patches and needs backbone.name = \"vit\" \
                         (--backbone vit), not {:?}; convolutional backbones have inpaint",
                        self.backbone.name()
                    ),
                ));
            }
        }
        // Every section's augmentation names a real one, run or not.
        for m in crate::methods::names() {
            if let Some(v) = self.methods.get(m)?.view_augment {
                self.augmentation(v, &format!("methods.{m}.view_augment"), (1, 28, 28))?;
            }
        }
        Ok(())
    }

    fn validate_transfer(&self) -> Result<()> {
        let t = &self.transfer;
        if self.protocols.runs("finetune") || self.protocols.runs("lpft") {
            at_least_one("transfer.epochs", t.epochs)?;
            at_least_one("transfer.batch", t.batch)?;
            positive("transfer.lr", t.lr)?;
        }
        if t.patience > 0 {
            fraction("transfer.val_fraction", t.val_fraction)?;
        }
        self.augmentation(&t.augment, "transfer.augment", (1, 28, 28))?;
        at_least_one("transfer.linear_probe.steps", t.linear_probe.steps)?;
        positive("transfer.linear_probe.lr", t.linear_probe.lr)
    }

    fn validate_protocols(&self) -> Result<()> {
        let p = &self.protocols;
        distinct("protocols.run", &p.run)?;
        for name in &p.run {
            if !PROTOCOLS.contains(&name.as_str()) {
                return Err(Error::invalid(
                    "protocols.run",
                    format!(
                        "unknown protocol {name:?}; available: {}",
                        PROTOCOLS.join(", ")
                    ),
                ));
            }
        }
        if p.run.is_empty() {
            return Err(Error::invalid(
                "protocols.run",
                "give at least one protocol",
            ));
        }
        if p.runs("knn") && (p.knn.ks.is_empty() || p.knn.ks.contains(&0)) {
            return Err(Error::invalid(
                "protocols.knn.ks",
                "give at least one k, each at least 1",
            ));
        }
        if !["similarity", "temperature"].contains(&p.knn.weighting.as_str()) {
            return Err(Error::invalid(
                "protocols.knn.weighting",
                format!("{:?}; give similarity or temperature", p.knn.weighting),
            ));
        }
        if !(p.knn.temperature > 0.0 && p.knn.temperature.is_finite()) {
            return Err(Error::invalid(
                "protocols.knn.temperature",
                "must be a positive number",
            ));
        }
        self.augmentation(&p.distill.augment, "protocols.distill.augment", (1, 28, 28))?;
        self.augmentation(
            &p.fixmatch.augment,
            "protocols.fixmatch.augment",
            (1, 28, 28),
        )?;
        // A teacher or starting point named outright must exist and run,
        // whether or not its protocol runs; `auto` is checked when it does.
        if p.runs("distill") || p.distill.teacher != "auto" {
            self.distill_teacher_for(true)?;
            self.distill_teacher_for(false)?;
        }
        if p.runs("fixmatch") || p.fixmatch.init != "auto" {
            self.fixmatch_init_for(true)?;
            self.fixmatch_init_for(false)?;
        }
        if p.runs("distill") {
            let d = &p.distill;
            at_least_one("protocols.distill.epochs", d.epochs)?;
            at_least_one("protocols.distill.batch", d.batch)?;
            positive("protocols.distill.lr", d.lr)?;
            positive("protocols.distill.temperature", d.temperature)?;
            if !(0.0..1.0).contains(&d.labeled_share) {
                return Err(Error::invalid(
                    "protocols.distill.labeled_share",
                    format!("must lie in [0, 1), got {}", d.labeled_share),
                ));
            }
        }
        if p.runs("fixmatch") {
            let f = &p.fixmatch;
            at_least_one("protocols.fixmatch.epochs", f.epochs)?;
            at_least_one("protocols.fixmatch.batch", f.batch)?;
            at_least_one("protocols.fixmatch.labeled_batch", f.labeled_batch)?;
            positive("protocols.fixmatch.lr", f.lr)?;
            if !(0.0..=1.0).contains(&f.threshold) {
                return Err(Error::invalid(
                    "protocols.fixmatch.threshold",
                    format!("must lie in [0, 1], got {}", f.threshold),
                ));
            }
            if !(f.unlabeled_weight >= 0.0 && f.unlabeled_weight.is_finite()) {
                return Err(Error::invalid(
                    "protocols.fixmatch.unlabeled_weight",
                    format!("must be a number >= 0, got {}", f.unlabeled_weight),
                ));
            }
        }
        Ok(())
    }
}
