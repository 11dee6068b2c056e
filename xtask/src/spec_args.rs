//! The flags that make up an experiment spec, and how they are laid over
//! the spec's file layers: one table from flag to spec path.

use anyhow::{bail, Result};
use clap::Args;
use selfsup::spec::layers::Layers;
use selfsup::spec::Experiment;
use std::path::PathBuf;
use toml::Value;

/// Flags every command shares besides the spec: where and how to run.
#[derive(Args, Clone)]
pub struct RunArgs {
    /// Compute device: cpu, cuda, cuda:N or auto (CUDA when this binary has
    /// it and a GPU is present).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Convolution implementation: fast (selfsup-kernels) or stock (Candle's own ops).
    #[arg(long, default_value = "fast")]
    pub kernels: selfsup::kernels::Kernels,
    /// No progress bars or per-result lines (errors and the final table still print).
    #[arg(long)]
    pub quiet: bool,
    /// Replace what an earlier selfsup command wrote to --out (a directory
    /// or file selfsup did not write is never touched).
    #[arg(long)]
    pub force: bool,
}

/// The spec flags: a TOML file, then flags that override single settings
/// (defaults are the spec's, see configs/default.toml), then
/// `--set` for any other setting.
#[derive(Args, Clone)]
pub struct SpecArgs {
    /// Experiment spec (TOML): any subset of the sections of
    /// configs/default.toml, or a run's own experiment.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Set any spec value: `--set transfer.epochs=30`, repeatable; applied
    /// after every other flag.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
    /// Legacy recipe file (JSON, the flat field names of report.json's
    /// config.recipe), applied under --preset and the flags.
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Dataset (default: fashion-mnist): `fashion-mnist` (embedded subset),
    /// `fashion-mnist-full`, a name fetched with `cargo xtask fetch` (svhn,
    /// cifar10, cifar100, mnist, tiny-imagenet, celeba:ATTRIBUTE), or a
    /// directory of MNIST-style IDX files, CIFAR-10/100 binaries, or one
    /// image sub-folder per class.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Encoder (default: convnet): convnet, resnet18 (CIFAR stem),
    /// mobilenetv2 or vit (a small Vision Transformer, 4x4 patches).
    #[arg(long)]
    pub backbone: Option<String>,
    /// Use only the first N training images.
    #[arg(long)]
    pub max_train: Option<usize>,
    /// Use only the first N test images.
    #[arg(long)]
    pub max_test: Option<usize>,
    /// Convnet stage widths, comma-separated (default: 16,32,64).
    #[arg(long, value_delimiter = ',')]
    pub widths: Option<Vec<usize>>,
    /// Convnet 3x3 conv layers per stage (default: 2).
    #[arg(long)]
    pub depth: Option<usize>,
    /// ResNet-18 base width (default: 64).
    #[arg(long)]
    pub resnet_width: Option<usize>,
    /// MobileNetV2 width multiplier (default: 1.0).
    #[arg(long)]
    pub width_multiplier: Option<f64>,
    /// Cap on the unlabeled images used for pretraining (0 = the whole pool) (default: 4500).
    #[arg(long)]
    pub unlabeled: Option<usize>,
    /// Fine-tune / scratch epochs over the labeled images (default: 60).
    #[arg(long)]
    pub transfer_epochs: Option<usize>,
    /// Rotation pretraining batch (source images, each shown four times) (default: 64).
    #[arg(long)]
    pub pretrain_batch: Option<usize>,
    /// Rotation pretraining learning rate (default: 1e-3).
    #[arg(long)]
    pub pretrain_lr: Option<f64>,
    /// Fine-tune / scratch learning rate (default: 1e-3).
    #[arg(long)]
    pub transfer_lr: Option<f64>,
    /// Images per inference batch (features, test predictions) (default: 128).
    #[arg(long)]
    pub eval_batch: Option<usize>,
    /// Maximum pretraining epochs of every two-view method (default: 8).
    #[arg(long)]
    pub contrastive_epochs: Option<usize>,
    /// Source images per two-view step (each seen as two views) (default: 256).
    #[arg(long)]
    pub contrastive_batch: Option<usize>,
    /// Learning rate of the two-view methods (default: 2e-3).
    #[arg(long)]
    pub contrastive_lr: Option<f64>,
    /// NT-Xent temperature of SimCLR (default: 0.2).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// View augmentation of the two-view methods: auto, simclr-mnist,
    /// simclr-cifar or none (default: auto).
    #[arg(long)]
    pub view_augment: Option<String>,
    /// Skip the per-epoch kNN monitor during pretraining.
    #[arg(long)]
    pub no_knn_monitor: bool,
    /// Image-folder datasets: images are centre-cropped and resized to
    /// SIZE x SIZE (default: 32).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Image-folder datasets: 1 (grayscale) or 3 (RGB) channels (default: 3).
    #[arg(long)]
    pub channels: Option<usize>,
    /// Image-folder datasets: skip images that cannot be decoded (each is
    /// logged, report.json counts them) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_images: bool,
    /// Keep only these classes (names, comma-separated), relabelled 0..n.
    /// Pretraining still uses the unlabeled images of every class.
    #[arg(long, value_delimiter = ',')]
    pub classes: Option<Vec<String>>,
    /// With --classes: pretrain only on the selected classes' images.
    #[arg(long)]
    pub pretrain_selected_only: bool,
    /// Fine-tune / scratch augmentation: crop-flip, flip-zoom-contrast,
    /// simclr-cifar, simclr-mnist or none (default: crop-flip).
    #[arg(long)]
    pub transfer_augment: Option<String>,
    /// Fine-tune / scratch early stopping: hold out part of the labeled
    /// images and stop after N epochs without a lower held-out error rate
    /// (0 = off) (default: 0).
    #[arg(long)]
    pub transfer_patience: Option<usize>,
    /// Fraction of each class's labeled images held out for
    /// --transfer-patience (default: 0.1).
    #[arg(long)]
    pub transfer_val_fraction: Option<f64>,
    /// Epochs of the `distill` protocol; N > 0 runs it, 0 leaves it out.
    #[arg(long)]
    pub distill_epochs: Option<usize>,
    /// Softmax temperature of the distillation targets (default: 1.0).
    #[arg(long)]
    pub distill_temperature: Option<f64>,
    /// Distillation learning rate (default: 1e-3).
    #[arg(long)]
    pub distill_lr: Option<f64>,
    /// Share of each distillation epoch made of the labeled images (default: 0.25).
    #[arg(long)]
    pub distill_labeled_share: Option<f64>,
    /// Augmentation of the distillation student: auto, crop-flip,
    /// flip-zoom-contrast, simclr-cifar, simclr-mnist or none (default: auto).
    #[arg(long)]
    pub distill_augment: Option<String>,
    /// Which classifier teaches the distillation student: auto, finetune
    /// or lpft (default: auto).
    #[arg(long)]
    pub distill_teacher: Option<String>,
    /// Leave out the `lpft` protocol (linear probe, then fine-tune).
    #[arg(long)]
    pub no_lpft: bool,
    /// Epochs of the `fixmatch` protocol; N > 0 runs it, 0 leaves it out.
    #[arg(long)]
    pub fixmatch_epochs: Option<usize>,
    /// Least confidence for a `fixmatch` pseudo-label (default: 0.95).
    #[arg(long)]
    pub fixmatch_threshold: Option<f64>,
    /// `fixmatch` learning rate (default: 1e-3).
    #[arg(long)]
    pub fixmatch_lr: Option<f64>,
    /// Which classifier `fixmatch` starts from: auto, finetune or lpft (default: auto).
    #[arg(long)]
    pub fixmatch_init: Option<String>,
    /// `fixmatch` distribution alignment of the pseudo-labels.
    #[arg(long)]
    pub fixmatch_align: bool,
    /// Run `distill` and `fixmatch` for the pretrained methods only.
    #[arg(long)]
    pub no_scratch_semi_supervised: bool,
}

/// A flag's value as a spec value, if the flag was given.
fn some<T: Into<Value>>(v: Option<T>) -> Option<Value> {
    v.map(Into::into)
}

/// `true` for a given switch (switches only ever set their value).
fn switch(on: bool, value: bool) -> Option<Value> {
    on.then_some(Value::Boolean(value))
}

/// A list flag's values as a spec array.
pub fn list<T: Clone + Into<Value>>(v: &Option<Vec<T>>) -> Option<Value> {
    v.as_ref()
        .map(|v| Value::Array(v.iter().cloned().map(Into::into).collect()))
}

/// A count or seed as a spec integer. One beyond TOML's integers (above
/// 2^63 - 1) becomes a string, which the spec then refuses by its path.
fn integer<T: Copy + TryInto<i64> + ToString>(n: T) -> Value {
    n.try_into()
        .map(Value::Integer)
        .unwrap_or_else(|_| Value::String(n.to_string()))
}

/// A numeric flag's value as a spec integer, if the flag was given.
pub fn int<T: Copy + TryInto<i64> + ToString>(v: Option<T>) -> Option<Value> {
    v.map(integer)
}

/// A numeric list flag's values as a spec array of integers.
pub fn ints<T: Copy + TryInto<i64> + ToString>(v: &Option<Vec<T>>) -> Option<Value> {
    v.as_ref()
        .map(|v| Value::Array(v.iter().copied().map(integer).collect()))
}

/// A path flag's value as a spec string.
pub fn path(p: &Option<std::path::PathBuf>) -> Option<Value> {
    p.as_ref().map(|p| Value::String(p.display().to_string()))
}

impl SpecArgs {
    /// The table: each flag and the spec path it sets.
    fn table(&self) -> Vec<(&'static str, Option<Value>)> {
        vec![
            ("data.dataset", some(self.dataset.clone())),
            ("backbone.name", some(self.backbone.clone())),
            ("data.max_train", int(self.max_train)),
            ("data.max_test", int(self.max_test)),
            ("data.image_size", int(self.image_size)),
            ("data.channels", int(self.channels)),
            ("data.classes", list(&self.classes)),
            ("data.skip_bad_images", switch(self.skip_bad_images, true)),
            (
                "data.pretrain_all_classes",
                switch(self.pretrain_selected_only, false),
            ),
            ("backbone.widths", ints(&self.widths)),
            ("backbone.depth", int(self.depth)),
            ("backbone.width", int(self.resnet_width)),
            ("backbone.width_multiplier", some(self.width_multiplier)),
            ("split.unlabeled", int(self.unlabeled)),
            ("training.eval_batch", int(self.eval_batch)),
            ("pretrain.knn_monitor", switch(self.no_knn_monitor, false)),
            ("methods.rotation.batch", int(self.pretrain_batch)),
            ("methods.rotation.lr", some(self.pretrain_lr)),
            ("methods.simclr.temperature", some(self.temperature)),
            ("transfer.epochs", int(self.transfer_epochs)),
            ("transfer.lr", some(self.transfer_lr)),
            ("transfer.augment", some(self.transfer_augment.clone())),
            ("transfer.patience", int(self.transfer_patience)),
            ("transfer.val_fraction", some(self.transfer_val_fraction)),
            (
                "protocols.distill.epochs",
                int(self.distill_epochs.filter(|&e| e > 0)),
            ),
            (
                "protocols.distill.temperature",
                some(self.distill_temperature),
            ),
            ("protocols.distill.lr", some(self.distill_lr)),
            (
                "protocols.distill.labeled_share",
                some(self.distill_labeled_share),
            ),
            (
                "protocols.distill.augment",
                some(self.distill_augment.clone()),
            ),
            (
                "protocols.distill.teacher",
                some(self.distill_teacher.clone()),
            ),
            (
                "protocols.fixmatch.epochs",
                int(self.fixmatch_epochs.filter(|&e| e > 0)),
            ),
            (
                "protocols.fixmatch.threshold",
                some(self.fixmatch_threshold),
            ),
            ("protocols.fixmatch.lr", some(self.fixmatch_lr)),
            ("protocols.fixmatch.init", some(self.fixmatch_init.clone())),
            (
                "protocols.fixmatch.align",
                switch(self.fixmatch_align, true),
            ),
            (
                "protocols.scratch_semi_supervised",
                switch(self.no_scratch_semi_supervised, false),
            ),
        ]
    }

    /// Flags that set the same value in every two-view method's section.
    fn two_view_table(&self) -> Vec<(&'static str, Option<Value>)> {
        vec![
            ("epochs", int(self.contrastive_epochs)),
            ("batch", int(self.contrastive_batch)),
            ("lr", some(self.contrastive_lr)),
            ("view_augment", some(self.view_augment.clone())),
        ]
    }

    /// Protocols a flag turns on or off.
    fn protocol_switches(&self) -> Vec<(&'static str, bool)> {
        let mut out = Vec::new();
        if self.no_lpft {
            out.push(("lpft", false));
        }
        if let Some(e) = self.distill_epochs {
            out.push(("distill", e > 0));
        }
        if let Some(e) = self.fixmatch_epochs {
            out.push(("fixmatch", e > 0));
        }
        out
    }

    /// The spec: defaults (or `--recipe`), `preset`, `--config`, the
    /// command's own settings (`extra`), these flags, then `--set`.
    pub fn resolve(&self, preset: Option<&str>, extra: &[(String, Value)]) -> Result<Experiment> {
        if self.config.is_some() && self.recipe.is_some() {
            bail!("give --config (TOML spec) or --recipe (legacy JSON), not both");
        }
        let mut layers = match &self.recipe {
            Some(f) => Layers::from_recipe_file(f)?,
            None => Layers::default(),
        };
        if let Some(p) = preset {
            layers.preset(p)?;
        }
        if let Some(f) = &self.config {
            layers.file(f)?;
        }
        for (path, value) in extra {
            layers.set(path, value.clone())?;
        }
        set_given(&mut layers, self.table())?;
        for (key, value) in self.two_view_table() {
            if let Some(v) = value {
                // The shared flags set every two-view method's section.
                for m in selfsup::methods::two_view_names() {
                    layers.set(&format!("methods.{m}.{key}"), v.clone())?;
                }
            }
        }
        for (protocol, on) in self.protocol_switches() {
            set_protocol(&mut layers, protocol, on)?;
        }
        assign_all(&mut layers, &self.set)?;
        Ok(layers.resolve()?)
    }
}

/// Sets each given flag's value at its spec path.
pub fn set_given<'a>(
    layers: &mut Layers,
    table: impl IntoIterator<Item = (&'a str, Option<Value>)>,
) -> Result<()> {
    for (path, value) in table {
        if let Some(v) = value {
            layers.set(path, v)?;
        }
    }
    Ok(())
}

/// Applies the `--set PATH=VALUE` assignments, in order.
pub fn assign_all(layers: &mut Layers, sets: &[String]) -> Result<()> {
    for s in sets {
        layers.assign(s)?;
    }
    Ok(())
}

/// Prints "wrote A, B and C" for the run files under `out`.
pub fn print_written(out: &std::path::Path, files: &[&str]) {
    let paths: Vec<String> = files
        .iter()
        .map(|f| out.join(f).display().to_string())
        .collect();
    match paths.split_last() {
        Some((last, [])) => println!("wrote {last}"),
        Some((last, rest)) => println!("wrote {} and {last}", rest.join(", ")),
        None => {}
    }
}

/// Adds `protocol` to `protocols.run` or takes it out.
fn set_protocol(layers: &mut Layers, protocol: &str, on: bool) -> Result<()> {
    let mut spec = selfsup::spec::ProtocolsSpec::default();
    if let Some(Value::Array(run)) = layers.get("protocols.run") {
        spec.run = run
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
    }
    spec.set_running(protocol, on);
    let run = spec.run.into_iter().map(Value::String).collect();
    layers.set("protocols.run", Value::Array(run))?;
    Ok(())
}

/// Settings a command sets from its own flags (`--pretext`, `--seeds`, ...),
/// as (spec path, value) pairs for (default: `SpecArgs::resolve`).
pub fn extra_settings(pairs: Vec<(&str, Option<Value>)>) -> Vec<(String, Value)> {
    pairs
        .into_iter()
        .filter_map(|(p, v)| v.map(|v| (p.to_string(), v)))
        .collect()
}

/// `--epochs`: every method's maximum epochs.
pub fn every_method_epochs(epochs: Option<usize>) -> Vec<(String, Value)> {
    let Some(e) = epochs else { return Vec::new() };
    selfsup::methods::names()
        .into_iter()
        .map(|m| (format!("methods.{m}.epochs"), integer(e)))
        .collect()
}
