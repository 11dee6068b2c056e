//! `pipeline`, `pretrain`, `transfer` and `evaluate`: the commands that
//! resolve an experiment spec and run all or one of its stages.

use crate::spec_args::{every_method_epochs, extra_settings, ints, list, RunArgs, SpecArgs};
use anyhow::{bail, Result};
use clap::Args;
use selfsup::core::device::parse_device;
use selfsup::core::output;
use selfsup::pipeline::{self, Excluded, PipelineOptions, Stage};
use selfsup::spec::Experiment;
use std::path::{Path, PathBuf};
use toml::Value;

#[derive(Args)]
pub struct PipelineArgs {
    /// A named scenario from configs/presets/ that sets dataset, backbone
    /// and label budgets: svhn-street-numbers, tiny-imagenet-duck-fish.
    /// Other flags still override it, except a different --dataset.
    #[arg(long)]
    preset: Option<String>,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    spec: SpecArgs,
    /// Pretraining methods, comma-separated: rotation, jigsaw, mae (with
    /// --backbone vit), inpaint, colorization (colour images), simclr,
    /// byol, simsiam, barlow, vicreg, moco (default: rotation).
    #[arg(long, value_delimiter = ',')]
    pretext: Option<Vec<String>>,
    /// Labeled images per class, comma-separated (default: 10).
    #[arg(long, value_delimiter = ',')]
    labels_per_class: Option<Vec<usize>>,
    /// Seeds, comma-separated; each gets its own split and transfer (default: 0,1,2).
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<u64>>,
    /// Maximum pretraining epochs of every method (early stopping on the
    /// held-out pretext loss may stop sooner).
    #[arg(long)]
    epochs: Option<usize>,
    /// Pretrain separately for every seed (N seeds cost N pretrainings).
    #[arg(long)]
    pretrain_per_seed: bool,
    /// Output directory (experiment.toml, report.json, report.md, checkpoints).
    #[arg(long, default_value = "models/pipeline")]
    out: PathBuf,
    /// Continue the run in OUT, which must have run the same spec (else
    /// the first differing setting is named): finished pretrainings are
    /// reused, a stage killed mid-way continues from its last kept epoch,
    /// and the rest runs again, ending with an uninterrupted run's numbers.
    #[arg(long)]
    resume: bool,
    /// Continue the run in OUT under another spec: every pretraining whose
    /// settings still match is reused (one that differs is an error) and
    /// every transfer stage trains anew.
    #[arg(long)]
    reuse_pretraining: bool,
    /// Keep each stage's training state (weights, optimizer, schedule,
    /// early stopping) after every N epochs, for --resume after a kill
    /// (0: never; about four times the model's size on disk while it runs).
    #[arg(long, default_value_t = 1)]
    checkpoint_every: usize,
    /// How the embedding figures map features to 2-D: pca (principal
    /// components) or tsne (exact t-SNE: clusters show, a few seconds more).
    #[arg(long, default_value = "pca")]
    embedding: String,
}

impl PipelineArgs {
    /// The run's spec: the layers and this command's own flags.
    pub fn experiment(&self) -> Result<Experiment> {
        let mut extra = every_method_epochs(self.epochs);
        extra.extend(extra_settings(vec![
            ("pretrain.methods", list(&self.pretext)),
            ("split.labels_per_class", ints(&self.labels_per_class)),
            ("split.seeds", ints(&self.seeds)),
            (
                "pretrain.per_seed",
                self.pretrain_per_seed.then_some(Value::Boolean(true)),
            ),
        ]));
        self.spec.resolve(self.preset.as_deref(), &extra)
    }
}

pub fn run_pipeline(a: PipelineArgs) -> Result<()> {
    let spec = a.experiment()?;
    let opts = PipelineOptions {
        spec,
        out: a.out.clone(),
        device: parse_device(&a.run.device)?,
        quiet: a.run.quiet,
        resume: a.resume,
        reuse_pretraining: a.reuse_pretraining,
        checkpoint_every: a.checkpoint_every,
        force: a.run.force,
        embedding: a.embedding.parse()?,
    };
    let report = pipeline::run(&opts)?;
    println!("{}", report.to_markdown());
    crate::spec_args::print_written(&a.out, &["experiment.toml", "report.json", "report.md"]);
    Ok(())
}

#[derive(Args)]
pub struct PretrainArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    spec: SpecArgs,
    /// Pretraining method: rotation, jigsaw, mae, inpaint, colorization,
    /// simclr, byol, simsiam, barlow, vicreg or moco (default: the spec's
    /// first method).
    #[arg(long)]
    pretext: Option<String>,
    /// Seed (default: the spec's first seed).
    #[arg(long)]
    seed: Option<u64>,
    /// The labeled split of this K (and seed) is excluded from the
    /// unlabeled pool (default: the spec's largest K).
    #[arg(long)]
    labels_per_class: Option<usize>,
    /// Maximum epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Stage directory to write.
    #[arg(long, default_value = "models/manual/pretrain")]
    out: PathBuf,
}

/// The spec of a single-stage command: `--seed` and `--labels-per-class`
/// narrow the spec's lists to one value each.
fn single_stage_spec(
    spec: &SpecArgs,
    seed: Option<u64>,
    k: Option<usize>,
    mut extra: Vec<(String, Value)>,
) -> Result<Experiment> {
    extra.extend(extra_settings(vec![
        ("split.seeds", ints(&seed.map(|s| vec![s]))),
        ("split.labels_per_class", ints(&k.map(|k| vec![k]))),
    ]));
    spec.resolve(None, &extra)
}

/// Claims a single stage's `--out` (new, empty, or replaced with `--force`)
/// once its inputs are checked.
fn claim(out: &Path, command: &str, run: &RunArgs) -> Result<()> {
    let policy = output::Policy {
        force: run.force,
        ..Default::default()
    };
    Ok(output::claim(out, command, policy, None)?)
}

/// Loads the spec's data and runs `f` on the stage context.
fn with_stage<T>(
    spec: &Experiment,
    backbone: Option<selfsup::backbones::BackboneConfig>,
    run: &RunArgs,
    f: impl FnOnce(&Stage) -> Result<T>,
) -> Result<T> {
    let prep = pipeline::load(spec)?;
    let backbone =
        backbone.unwrap_or_else(|| spec.backbone_config(prep.pair.train.image_shape().0));
    let device = parse_device(&run.device)?;
    let ctx = Stage {
        prep: &prep,
        backbone: &backbone,
        spec,
        device: &device,
        quiet: run.quiet,
        resume: false,
        checkpoint_every: 1,
    };
    f(&ctx)
}

pub fn run_pretrain(a: PretrainArgs) -> Result<()> {
    let mut extra = every_method_epochs(a.epochs);
    if let Some(p) = &a.pretext {
        extra.push((
            "pretrain.methods".into(),
            Value::Array(vec![p.clone().into()]),
        ));
    }
    let spec = single_stage_spec(&a.spec, a.seed, a.labels_per_class, extra)?;
    let Some(method) = spec.pretrain.methods.first().cloned() else {
        bail!("no pretraining method: give --pretext or pretrain.methods");
    };
    let (seed, k) = (
        spec.split.seeds[0],
        *spec.split.labels_per_class.iter().max().expect("validated"),
    );
    with_stage(&spec, None, &a.run, |ctx| {
        claim(&a.out, "pretrain", &a.run)?;
        let excluded = Excluded {
            max_k: k,
            seeds: &[seed],
        };
        let outcome = pipeline::pretrain_stage(ctx, &method, excluded, seed, &a.out, false)?;
        pipeline::loss_figure(&outcome.history, &method, &a.out.join("loss.png"))?;
        Ok(output::complete(&a.out, "pretrain")?)
    })?;
    println!("wrote {}", a.out.display());
    Ok(())
}

#[derive(Args)]
pub struct TransferArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    spec: SpecArgs,
    /// Pretrained stage directory, or `hub:<user/name>` for a published
    /// backbone; omit to train from scratch.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Labeled images per class (default: the spec's first K).
    #[arg(long)]
    labels_per_class: Option<usize>,
    /// Seed of the split and the training (default: the spec's first seed).
    #[arg(long)]
    seed: Option<u64>,
    /// LP-FT: start the head from a linear probe on the frozen features
    /// (the pipeline's `lpft` protocol) instead of random weights.
    #[arg(long)]
    lpft: bool,
    /// Stage directory to write.
    #[arg(long, default_value = "models/manual/transfer")]
    out: PathBuf,
}

/// The backbone a pretrained stage directory was trained with.
fn checkpoint_backbone(dir: &Path) -> Result<selfsup::backbones::BackboneConfig> {
    let cfg: selfsup::backbones::checkpoint::StageConfig =
        selfsup::core::checkpoint::read_config(dir)?;
    Ok(cfg.backbone)
}

pub fn run_transfer(a: TransferArgs) -> Result<()> {
    let spec = single_stage_spec(&a.spec, a.seed, a.labels_per_class, Vec::new())?;
    let init = crate::hub::resolve_init(a.init)?;
    let backbone = init.as_deref().map(checkpoint_backbone).transpose()?;
    let (seed, k) = (spec.split.seeds[0], spec.split.labels_per_class[0]);
    with_stage(&spec, backbone, &a.run, |ctx| {
        claim(&a.out, "transfer", &a.run)?;
        pipeline::transfer_stage(ctx, init.as_deref(), a.lpft, k, seed, &a.out)?;
        Ok(output::complete(&a.out, "transfer")?)
    })?;
    println!("wrote {}", a.out.display());
    Ok(())
}

#[derive(Args)]
pub struct EvaluateArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    spec: SpecArgs,
    /// Stage directory to evaluate.
    #[arg(long)]
    checkpoint: PathBuf,
    /// finetune (the checkpoint's own classifier head), linear or knn (frozen features + K labels).
    #[arg(long, default_value = "finetune")]
    protocol: String,
    /// Labeled images per class for linear / knn (default: the spec's first K).
    #[arg(long)]
    labels_per_class: Option<usize>,
    /// Seed of the split for linear / knn (default: the spec's first seed).
    #[arg(long)]
    seed: Option<u64>,
    /// Write the result as JSON to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run_evaluate(a: EvaluateArgs) -> Result<()> {
    if let Some(out) = a.out.as_ref().filter(|o| o.exists() && !a.run.force) {
        bail!(
            "{} exists; give --force to replace it, or another --out",
            out.display()
        );
    }
    let checkpoint = crate::hub::resolve_init(Some(a.checkpoint.clone()))?.expect("given");
    let spec = single_stage_spec(&a.spec, a.seed, a.labels_per_class, Vec::new())?;
    let (seed, k) = (spec.split.seeds[0], spec.split.labels_per_class[0]);
    let device = parse_device(&a.run.device)?;
    let (acc, extra, dataset, test_images) = with_stage(&spec, None, &a.run, |ctx| {
        let test = &ctx.prep.pair.test;
        let (acc, extra) = match a.protocol.as_str() {
            "finetune" => {
                let (cls, _) = selfsup::finetune::load_classifier(&checkpoint, &device)?;
                let outputs = cls.head.weight().dim(0)?;
                if outputs != test.num_classes() {
                    bail!(
                        "{}: the head has {outputs} outputs but {} has {} classes (a pretext checkpoint? evaluate it with --protocol linear or knn)",
                        checkpoint.display(),
                        spec.data.dataset,
                        test.num_classes()
                    );
                }
                (
                    pipeline::classifier_accuracy(ctx, &cls)?,
                    serde_json::Value::Null,
                )
            }
            p @ ("linear" | "knn") => {
                let enc = selfsup::backbones::checkpoint::load(&checkpoint, seed, &device)?;
                let (lin, knn, chosen) =
                    pipeline::frozen_protocols(ctx, enc.backbone.as_ref(), k, seed)?;
                match p {
                    "linear" => (lin, serde_json::Value::Null),
                    _ => (knn, serde_json::json!({ "k": chosen })),
                }
            }
            other => bail!("invalid --protocol: {other:?}; expected finetune, linear or knn"),
        };
        Ok((acc, extra, ctx.prep.pair.name.clone(), test.len()))
    })?;
    let result = serde_json::json!({
        "checkpoint": checkpoint.display().to_string(),
        "dataset": dataset,
        "protocol": a.protocol,
        "labels_per_class": k,
        "seed": seed,
        "test_accuracy": acc,
        "test_images": test_images,
        "extra": extra,
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    if let Some(out) = a.out {
        selfsup::core::fsutil::write_json_atomic(&out, &result)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", out.display()))?;
    }
    Ok(())
}

/// The run and spec flags of a command, for the set-up `main` does before
/// dispatching (logging, kernels, image-folder defaults).
pub fn command_flags(cmd: &crate::Command) -> Option<(&RunArgs, &SpecArgs)> {
    match cmd {
        crate::Command::Pipeline(a) => Some((&a.run, &a.spec)),
        crate::Command::Pretrain(a) => Some((&a.run, &a.spec)),
        crate::Command::Transfer(a) => Some((&a.run, &a.spec)),
        crate::Command::Evaluate(a) => Some((&a.run, &a.spec)),
        _ => None,
    }
}
