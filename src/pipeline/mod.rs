//! The end-to-end pipeline: pretrain → transfer → evaluate, and the single
//! stages it is made of (also used by `cargo xtask pretrain | transfer |
//! evaluate`). What runs is an [`Experiment`];
//! where it is written is a [`RunLayout`]:
//!
//! ```text
//! experiment.toml, report.json, report.md
//! figures/<method>-loss.png, figures/<method>-embedding.png
//! pretrain-<method>/{model.safetensors, config.json, metrics.csv}   (seed<s>/pretrain-<method> with pretrain.per_seed)
//! seed<s>/k<K>/<method>-<protocol>/{model.safetensors, config.json, metrics.csv}
//!     for the protocols that train a classifier: finetune, lpft, distill, fixmatch
//! ```
//!
//! Label hygiene: the only labels read before the final evaluation are the
//! K per class of the seed's stratified split. Pretraining reads none (its
//! early stopping uses the pretext loss on held-out unlabeled images), the
//! kNN's k is chosen by leave-one-out on the K labeled images, and the test
//! set is touched only to compute the reported accuracies. The `distill`
//! protocol trains on the teacher's labels of the unlabeled images; their
//! true labels are read only afterwards, to report how often the teacher
//! was right (`pseudo_label_accuracy` in the stage's config.json). The
//! `fixmatch` protocol labels them with the model's own predictions and
//! never reads their true labels.

mod context;
mod data;
mod figures;
mod frozen;
mod log;
mod pretrain;
mod protocol;
mod resume;
mod semi;
mod transfer;

pub use context::{progress_dir, Stage};
pub use data::{
    load_dataset, prepare, pretrain_pool, select_classes, unlabeled_pool, AllClasses, Prepared,
};
pub use figures::{embedding_figure, loss_figure, reconstruction_figure, Projection};
pub use frozen::{frozen_protocols, FrozenFeatures};
pub use pretrain::{pretrain_stage, Excluded, PretrainMetrics, PretrainOutcome, METRICS_FILE};
pub use protocol::{protocol, protocols, Cell, Protocol};
pub use resume::reuse_pretraining;
pub use semi::{distill_stage, fixmatch_stage, DistillMetrics, FixMatchMetrics, Target};
pub use transfer::{classifier_accuracy, transfer_stage, TransferMetrics};

use crate::backbones::checkpoint as ckpt;
use crate::backbones::BackboneConfig;
use crate::core::layout::RunLayout;
use crate::core::report::{Figure, Report};
use crate::core::{fsutil, output, Result};
use crate::data::split;
use crate::finetune;
use crate::spec::Experiment;
use candle_core::Device;
use log::RunLog;
use std::path::PathBuf;
use std::time::Instant;

/// What to run and where.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// The experiment: everything that decides the numbers.
    pub spec: Experiment,
    /// Output directory.
    pub out: PathBuf,
    /// Compute device.
    pub device: Device,
    /// No progress bars.
    pub quiet: bool,
    /// Continue the run in `out` if it ran the same spec: reuse each
    /// finished pretraining ([`reuse_pretraining`]), continue a stage that
    /// was killed mid-way from its last kept epoch, and redo the rest
    /// (which gives the same numbers). A run of another spec is refused,
    /// naming the first differing setting.
    pub resume: bool,
    /// Continue the run in `out` under another spec: reuse each finished
    /// (or killed) pretraining whose settings still match, refuse one that
    /// does not, and train every transfer stage anew.
    pub reuse_pretraining: bool,
    /// Keep each stage's training state after every this many epochs so
    /// that a killed run can continue (0: never).
    pub checkpoint_every: usize,
    /// Replace an earlier run in `out` (a directory selfsup did not write
    /// is refused even so; see [`crate::core::output`]).
    pub force: bool,
    /// How the embedding figures map features to two dimensions.
    pub embedding: Projection,
}

/// Loads the spec's dataset, truncated and with its class selection.
pub fn load(spec: &Experiment) -> Result<Prepared> {
    let d = &spec.data;
    crate::data::registry::set_folder_defaults(crate::data::FolderOptions {
        size: d.image_size,
        channels: d.channels,
    });
    crate::data::folder::set_skip_bad_images(d.skip_bad_images);
    let prep = select_classes(
        prepare(&d.dataset, d.max_train, d.max_test)?,
        &d.classes,
        d.pretrain_all_classes,
    )?;
    let skipped = crate::data::folder::skipped_images();
    if skipped > 0 {
        tracing::warn!("skipped {skipped} unreadable images of {}", d.dataset);
    }
    Ok(Prepared {
        skipped_images: skipped,
        ..prep
    })
}

/// The checks that need the data, made before anything is written; returns
/// the backbone configuration.
fn check_data(spec: &Experiment, prep: &Prepared) -> Result<BackboneConfig> {
    let max_k = *spec.split.labels_per_class.iter().max().expect("validated");
    let classes = prep.pair.train.num_classes();
    if spec.transfer.patience > 0 {
        let labels: Vec<u32> = (0..classes as u32)
            .flat_map(|c| std::iter::repeat_n(c, max_k))
            .collect();
        let all: Vec<usize> = (0..labels.len()).collect();
        finetune::holdout(&labels, &all, spec.transfer.val_fraction, 0)?;
    }
    let channels = prep.pair.train.image_shape().0;
    if channels != 3 && spec.pretrain.methods.iter().any(|m| m == "colorization") {
        return Err(crate::core::Error::invalid(
            "pretrain.methods",
            format!(
                "colorization predicts colour from lightness, but {} has {channels}-channel \
                 (gray) images; use a colour dataset (cifar10, svhn, tiny-imagenet, a folder \
                 of colour images with --channels 3)",
                spec.data.dataset
            ),
        ));
    }
    // K against the smallest class.
    split::stratified(
        prep.pair.train.labels().expect("labels"),
        max_k,
        spec.split.seeds[0],
    )?;
    Ok(spec.backbone_config(prep.pair.train.image_shape().0))
}

/// The labels the pretraining for the seed at `seed_index` keeps out.
fn excluded(spec: &Experiment, seed_index: usize) -> Excluded<'_> {
    let seeds = &spec.split.seeds;
    Excluded {
        max_k: *spec.split.labels_per_class.iter().max().expect("validated"),
        seeds: if spec.pretrain.per_seed {
            std::slice::from_ref(&seeds[seed_index])
        } else {
            seeds
        },
    }
}

/// Before a continued run claims its output: every finished pretraining it
/// would reuse must match the spec ([`reuse_pretraining`] names the first
/// difference), so that a refused run changes nothing.
fn check_reusable(ctx: &Stage, layout: &RunLayout) -> Result<()> {
    let spec = ctx.spec;
    for (si, &seed) in spec.split.seeds.iter().enumerate() {
        if spec.pretrain.per_seed || si == 0 {
            for method in &spec.pretrain.methods {
                let dir = layout.pretrain(seed, method);
                reuse_pretraining(ctx, method, excluded(spec, si), seed, &dir)?;
            }
        }
    }
    Ok(())
}

/// Pretrains (or with `resume` reuses) every method for the seed at
/// `seed_index`, drawing the first seed's figures.
fn pretrain_methods(
    ctx: &Stage,
    layout: &RunLayout,
    (resume, embedding): (bool, Projection),
    seed_index: usize,
    log: &mut RunLog,
) -> Result<()> {
    let spec = ctx.spec;
    let seed = spec.split.seeds[seed_index];
    let excluded = excluded(spec, seed_index);
    for method in &spec.pretrain.methods {
        let t = Instant::now();
        let dir = layout.pretrain(seed, method);
        let reused = match resume {
            true => reuse_pretraining(ctx, method, excluded, seed, &dir)?,
            false => None,
        };
        if reused.is_some() {
            tracing::info!(
                method,
                seed,
                "reusing the finished pretraining in {}",
                dir.display()
            );
        }
        let outcome = match reused {
            Some(o) => o,
            None => pretrain_stage(ctx, method, excluded, seed, &dir, resume)?,
        };
        log.time("pretrain", t);
        if seed_index == 0 {
            let t = Instant::now();
            method_figures(ctx, layout, method, &outcome, (seed, embedding), log)?;
            log.time("figures", t);
        }
        log.pretraining.push(outcome.summary);
    }
    Ok(())
}

/// Draws one pretrained method's loss curves and embedding map.
fn method_figures(
    ctx: &Stage,
    layout: &RunLayout,
    method: &str,
    outcome: &PretrainOutcome,
    (seed, embedding): (u64, Projection),
    log: &mut RunLog,
) -> Result<()> {
    let (rel, path) = layout.figure(method, "loss");
    loss_figure(&outcome.history, method, &path)?;
    log.figures.push(Figure {
        method: method.to_string(),
        kind: "loss".into(),
        path: rel,
    });
    let enc = ckpt::load(&layout.pretrain(seed, method), seed, ctx.device)?;
    let (rel, path) = layout.figure(method, "embedding");
    embedding_figure(ctx, enc.backbone.as_ref(), method, (2000, embedding), &path)?;
    log.figures.push(Figure {
        method: method.to_string(),
        kind: "embedding".into(),
        path: rel,
    });
    let (rel, path) = layout.figure(method, "reconstruction");
    if reconstruction_figure(ctx, method, (&layout.pretrain(seed, method), seed), &path)? {
        log.figures.push(Figure {
            method: method.to_string(),
            kind: "reconstruction".into(),
            path: rel,
        });
    }
    Ok(())
}

/// Runs the whole pipeline and writes `experiment.toml`, `report.json` and
/// `report.md` into `opts.out`. Every input is checked before anything is
/// written; `opts.out` must then be new, empty, or an earlier run that
/// `resume` continues or `force` replaces, and is marked complete at the end.
pub fn run(opts: &PipelineOptions) -> Result<Report> {
    let t0 = Instant::now();
    let spec = &opts.spec;
    spec.validate()?;
    let prep = load(spec)?;
    let backbone = check_data(spec, &prep)?;
    let protocols = protocols(&spec.protocols.run)?;
    let ctx = Stage {
        prep: &prep,
        backbone: &backbone,
        spec,
        device: &opts.device,
        quiet: opts.quiet,
        resume: opts.resume && !opts.reuse_pretraining,
        checkpoint_every: opts.checkpoint_every,
    };
    let layout = RunLayout::new(&opts.out, spec.pretrain.per_seed);
    let continues = opts.resume || opts.reuse_pretraining;
    let policy = output::Policy {
        force: opts.force,
        resume: continues,
        other_spec: opts.reuse_pretraining,
    };
    let spec_json = serde_json::to_value(spec).expect("a spec serialises");
    if opts.reuse_pretraining {
        check_reusable(&ctx, &layout)?;
    }
    output::claim(&opts.out, "pipeline", policy, Some(&spec_json))?;
    let mut log = RunLog::default();
    log.time("load", t0);
    for (si, &seed) in spec.split.seeds.iter().enumerate() {
        if spec.pretrain.per_seed || si == 0 {
            pretrain_methods(&ctx, &layout, (continues, opts.embedding), si, &mut log)?;
        }
        for &k in &spec.split.labels_per_class {
            let scratch = std::iter::once(("scratch".to_string(), None));
            let pretrained = spec
                .pretrain
                .methods
                .iter()
                .map(|m| (m.clone(), Some(layout.pretrain(seed, m))));
            for (method, init) in scratch.chain(pretrained) {
                let mut cell = Cell::new(layout.clone(), seed, k, &method, init);
                for p in &protocols {
                    if !p.applies(&ctx, &cell) {
                        continue;
                    }
                    let t = Instant::now();
                    let acc = p.run(&ctx, &mut cell)?;
                    log.time(p.timed_as(), t);
                    log.result(&cell, p.name(), acc, opts.quiet);
                }
            }
        }
    }
    let report = log.into_report(&ctx, &opts.device, t0);
    fsutil::write_atomic(&layout.experiment(), spec.to_toml().as_bytes())?;
    fsutil::write_json_atomic(&layout.report(), &report)?;
    fsutil::write_atomic(&layout.report_md(), report.to_markdown().as_bytes())?;
    output::complete(&opts.out, "pipeline")?;
    Ok(report)
}

/// Compute threads Candle's CPU kernels use.
pub fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
