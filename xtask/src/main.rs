//! `cargo xtask`: the selfsup command line. A thin shell over
//! `selfsup::pipeline`: it parses flags, turns them into checked options and
//! calls one function per command. No ML logic lives here.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use selfsup::core::device::parse_device;
use selfsup::pipeline::{self, PipelineOptions, Recipe};
use std::path::PathBuf;

mod bench;

// Candle allocates and frees many large temporary buffers per step; with
// glibc's default malloc each one is a fresh mmap whose pages fault in again,
// which measured as more kernel than user time. mimalloc reuses them: about
// 2.4x faster training on 2 cores (see ARCHITECTURE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (the same index in its v2 and v3
/// headers); libmimalloc-sys declares `mi_option_set` but not this constant.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to hand freed pages back to the OS, unless the user
/// chose otherwise with `MIMALLOC_PURGE_DELAY`. By default it returns them
/// after 10 ms, and a training step frees and re-allocates hundreds of MB of
/// activations and gradients: each re-allocation then faults in zeroed pages
/// again, which measured as a fifth of a ResNet-18 CPU step in the kernel's
/// `clear_page` (19.8 vs 29.1 images/s in `cargo xtask bench`, batch 128).
/// The cost is that the process keeps its peak memory until it exits.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set only stores a value in mimalloc's option
        // table (index checked against its bounds inside); it touches no
        // allocation, and no other thread exists yet to read the option.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "selfsup: self-supervised pretraining, few-label transfer and evaluation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pretrain -> transfer -> evaluate, for every seed, and write a report.
    Pipeline(PipelineArgs),
    /// Pretrain one encoder with a pretext task and write its checkpoint.
    Pretrain(PretrainArgs),
    /// Train a classifier on K labels per class (from a checkpoint, or from scratch).
    Transfer(TransferArgs),
    /// Test accuracy of a checkpoint (classifier head, linear probe or kNN).
    Evaluate(EvaluateArgs),
    /// Training-step throughput: our kernels vs Candle's stock ops vs PyTorch.
    Bench(bench::BenchArgs),
    /// Anomaly detection: train transformation-prediction detectors on
    /// normal images only and report AUROC / AUPR / FPR95 per normal class.
    Anomaly(AnomalyArgs),
    /// Masked-token pretraining of a small BERT on a text corpus (or, with
    /// --fill, the top predictions for the [MASK]s of a sentence).
    Text(TextArgs),
    /// Download a public dataset from the Hugging Face Hub, decode it once
    /// into the local cache, and make it a --dataset name.
    Fetch(FetchArgs),
    /// Turn a run directory into a Hugging Face model repository (weights,
    /// config, model card) and upload it in one commit.
    Publish(PublishArgs),
}

#[derive(Args)]
struct FetchArgs {
    /// svhn, cifar10, cifar100, mnist, fashion-mnist (cached as
    /// `fashion-mnist-full`), tiny-imagenet or celeba.
    #[arg(long)]
    dataset: String,
    /// Download and decode again even if the dataset is cached.
    #[arg(long)]
    force: bool,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct PublishArgs {
    /// Run directory: a pipeline run, a text run, or one stage directory.
    #[arg(long)]
    run: PathBuf,
    /// Model repository, `user/name`.
    #[arg(long)]
    repo: String,
    /// Create the repository as private.
    #[arg(long)]
    private: bool,
    /// Only write the Hub folder (to --out, default <run>/hub); upload nothing.
    #[arg(long)]
    dry_run: bool,
    /// Where to write the Hub folder.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Pipeline runs: publish this method's backbone (default: the best gain over scratch).
    #[arg(long)]
    method: Option<String>,
}

/// Flags shared by every command.
#[derive(Args, Clone)]
struct Common {
    /// Dataset: `fashion-mnist` (embedded subset), `fashion-mnist-full`
    /// (Debian's dataset-fashion-mnist or a fetched copy), a name fetched
    /// with `cargo xtask fetch` (svhn, cifar10, cifar100, mnist,
    /// tiny-imagenet, celeba[:Attribute]), or a directory of MNIST-style
    /// IDX files, CIFAR-10/100 binaries, or one image sub-folder per class.
    #[arg(long, default_value = "fashion-mnist")]
    dataset: String,
    /// Encoder: convnet, resnet18 (CIFAR stem) or mobilenetv2.
    #[arg(long, default_value = "convnet")]
    backbone: String,
    /// Compute device: cpu, cuda, cuda:N or auto (CUDA when this binary has
    /// it and a GPU is present).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Convolution implementation: fast (selfsup-kernels) or stock (Candle's own ops).
    #[arg(long, default_value = "fast")]
    kernels: selfsup::kernels::Kernels,
    /// No progress bars or per-result lines (errors and the final table still print).
    #[arg(long)]
    quiet: bool,
    /// Use only the first N training images.
    #[arg(long)]
    max_train: Option<usize>,
    /// Use only the first N test images.
    #[arg(long)]
    max_test: Option<usize>,
    /// Convnet stage widths, comma-separated.
    #[arg(long, value_delimiter = ',')]
    widths: Option<Vec<usize>>,
    /// Convnet 3x3 conv layers per stage.
    #[arg(long)]
    depth: Option<usize>,
    /// ResNet-18 base width (64 = the standard network).
    #[arg(long)]
    resnet_width: Option<usize>,
    /// MobileNetV2 width multiplier (1.0 = the standard network).
    #[arg(long)]
    width_multiplier: Option<f64>,
    /// Cap on the unlabeled images used for pretraining (0 = the whole pool).
    #[arg(long)]
    unlabeled: Option<usize>,
    /// Fine-tune / scratch epochs over the labeled images.
    #[arg(long)]
    transfer_epochs: Option<usize>,
    /// Pretraining batch (source images; rotation shows each four times).
    #[arg(long)]
    pretrain_batch: Option<usize>,
    /// Pretraining learning rate.
    #[arg(long)]
    pretrain_lr: Option<f64>,
    /// Fine-tune / scratch learning rate.
    #[arg(long)]
    transfer_lr: Option<f64>,
    /// Images per inference batch (features, test predictions).
    #[arg(long)]
    eval_batch: Option<usize>,
    /// Recipe file (JSON): any subset of the recipe's fields (as written in
    /// report.json's config.recipe), applied before the flags above.
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// Maximum pretraining epochs of the two-view methods (simclr, byol, ...).
    #[arg(long)]
    contrastive_epochs: Option<usize>,
    /// Source images per two-view step (each seen as two views).
    #[arg(long)]
    contrastive_batch: Option<usize>,
    /// Learning rate of the two-view methods.
    #[arg(long)]
    contrastive_lr: Option<f64>,
    /// NT-Xent temperature of SimCLR.
    #[arg(long)]
    temperature: Option<f64>,
    /// View augmentation of the two-view methods: auto, simclr-mnist,
    /// simclr-cifar or none.
    #[arg(long)]
    view_augment: Option<String>,
    /// Skip the per-epoch kNN monitor (leave-one-out accuracy on the K
    /// labeled images) during pretraining.
    #[arg(long)]
    no_knn_monitor: bool,
    /// Image-folder datasets: images are centre-cropped and resized to
    /// SIZE x SIZE.
    #[arg(long, default_value_t = 32)]
    image_size: usize,
    /// Image-folder datasets: 1 (grayscale) or 3 (RGB) channels.
    #[arg(long, default_value_t = 3)]
    channels: usize,
    /// Keep only these classes (names, comma-separated), relabelled 0..n.
    /// Pretraining still uses the unlabeled images of every class.
    #[arg(long, value_delimiter = ',')]
    classes: Option<Vec<String>>,
    /// With --classes: pretrain only on the selected classes' images
    /// (default: on every class's unlabeled images).
    #[arg(long)]
    pretrain_selected_only: bool,
    /// Fine-tune / scratch augmentation: crop-flip (padded crop + flip, the
    /// default), flip-zoom-contrast, simclr-cifar, simclr-mnist or none.
    #[arg(long)]
    transfer_augment: Option<String>,
    /// Fine-tune / scratch early stopping: hold out part of the labeled
    /// images (--transfer-val-fraction) and stop after N epochs without a
    /// lower held-out error rate (ties broken by cross-entropy; epochs in
    /// the warmup do not count), keeping the best epoch (0 = off).
    #[arg(long)]
    transfer_patience: Option<usize>,
    /// Fraction of each class's labeled images held out for
    /// --transfer-patience.
    #[arg(long)]
    transfer_val_fraction: Option<f64>,
    /// Pipeline: epochs of the `distill` protocol (0 = off, the default).
    /// Each method's fine-tuned classifier (scratch's too) labels the
    /// unlabeled images with soft labels and a copy of it trains on them
    /// (SimCLR v2's self-distillation).
    #[arg(long)]
    distill_epochs: Option<usize>,
    /// Softmax temperature of the distillation targets.
    #[arg(long)]
    distill_temperature: Option<f64>,
    /// Distillation learning rate.
    #[arg(long)]
    distill_lr: Option<f64>,
    /// Share of each distillation epoch made of the labeled images.
    #[arg(long)]
    distill_labeled_share: Option<f64>,
    /// Augmentation of the distillation student (default: the SimCLR view
    /// preset for the image size): crop-flip, flip-zoom-contrast,
    /// simclr-cifar, simclr-mnist or none.
    #[arg(long)]
    distill_augment: Option<String>,
    /// Which classifier teaches the distillation student: auto (the `lpft`
    /// one for pretrained methods, the fine-tuned one for scratch),
    /// finetune or lpft.
    #[arg(long)]
    distill_teacher: Option<String>,
    /// Pipeline: skip the `lpft` protocol (linear probe, then fine-tune),
    /// which runs by default for every method and scratch.
    #[arg(long)]
    no_lpft: bool,
    /// Pipeline: epochs of the `fixmatch` protocol (0 = off, the default).
    /// Each method's classifier (scratch's too) keeps training on the K
    /// labeled images and on the unlabeled ones, labelled online by its own
    /// confident predictions on weak views and learnt on strong views
    /// (FixMatch).
    #[arg(long)]
    fixmatch_epochs: Option<usize>,
    /// Least confidence for a `fixmatch` pseudo-label (default 0.95).
    #[arg(long)]
    fixmatch_threshold: Option<f64>,
    /// `fixmatch` learning rate (default 1e-3).
    #[arg(long)]
    fixmatch_lr: Option<f64>,
    /// Which classifier `fixmatch` starts from: auto (the `lpft` one for
    /// pretrained methods, the fine-tuned one for scratch), finetune or lpft.
    #[arg(long)]
    fixmatch_init: Option<String>,
    /// `fixmatch` distribution alignment: pseudo-labels are taken from
    /// predictions rescaled towards the labeled images' class balance.
    #[arg(long)]
    fixmatch_align: bool,
    /// Pipeline: run `distill` and `fixmatch` for the pretrained methods
    /// only, not for scratch (saves their cost when the scratch figures are
    /// already known).
    #[arg(long)]
    no_scratch_semi_supervised: bool,
}

#[derive(Args)]
struct PipelineArgs {
    /// A named scenario that sets dataset, backbone and label budgets (the
    /// flags still override): svhn-street-numbers, tiny-imagenet-duck-fish.
    #[arg(long)]
    preset: Option<String>,
    #[command(flatten)]
    common: Common,
    /// Pretraining methods, comma-separated: rotation, simclr, byol,
    /// simsiam, barlow, vicreg, moco.
    #[arg(long, value_delimiter = ',', default_value = "rotation")]
    pretext: Vec<String>,
    /// Labeled images per class, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10")]
    labels_per_class: Vec<usize>,
    /// Seeds, comma-separated; each gets its own split, pretraining and transfer.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    seeds: Vec<u64>,
    /// Maximum pretraining epochs of every method (early stopping on the
    /// held-out pretext loss may stop sooner).
    #[arg(long)]
    epochs: Option<usize>,
    /// Pretrain separately for every seed (independent runs; N seeds cost N
    /// pretrainings). By default one pretraining serves all seeds, on a pool
    /// that excludes every seed's labeled images.
    #[arg(long)]
    pretrain_per_seed: bool,
    /// Output directory (report.json, report.md, checkpoints).
    #[arg(long, default_value = "models/pipeline")]
    out: PathBuf,
    /// Reuse every finished pretraining in OUT trained with the same
    /// settings instead of training it again (one trained with other
    /// settings is an error); transfer and evaluation run anew.
    #[arg(long)]
    resume: bool,
}

#[derive(Args)]
struct PretrainArgs {
    #[command(flatten)]
    common: Common,
    /// Pretraining method: rotation, simclr, byol, simsiam, barlow, vicreg or moco.
    #[arg(long, default_value = "rotation")]
    pretext: String,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The labeled split of this K (and seed) is excluded from the unlabeled pool.
    #[arg(long, default_value_t = 10)]
    labels_per_class: usize,
    /// Maximum epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Stage directory to write.
    #[arg(long, default_value = "models/manual/pretrain")]
    out: PathBuf,
}

#[derive(Args)]
struct TransferArgs {
    #[command(flatten)]
    common: Common,
    /// Pretrained stage directory, or `hub:<user/name>` for a published
    /// backbone; omit to train from scratch.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Labeled images per class.
    #[arg(long, default_value_t = 10)]
    labels_per_class: usize,
    /// Seed of the split and the training.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// LP-FT: start the head from a linear probe on the frozen features
    /// (the pipeline's `lpft` protocol) instead of random weights.
    #[arg(long)]
    lpft: bool,
    /// Stage directory to write.
    #[arg(long, default_value = "models/manual/transfer")]
    out: PathBuf,
}

#[derive(Args)]
struct EvaluateArgs {
    #[command(flatten)]
    common: Common,
    /// Stage directory to evaluate.
    #[arg(long)]
    checkpoint: PathBuf,
    /// finetune (the checkpoint's own classifier head), linear or knn (frozen features + K labels).
    #[arg(long, default_value = "finetune")]
    protocol: String,
    /// Labeled images per class for linear / knn.
    #[arg(long, default_value_t = 10)]
    labels_per_class: usize,
    /// Seed of the split for linear / knn.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the result as JSON to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct AnomalyArgs {
    /// A named scenario: celeba-faces-anomaly (one-class on fetched CelebA,
    /// normal = faces without eyeglasses, anomalies = faces with them).
    #[arg(long)]
    preset: Option<String>,
    /// one-class (each class of --dataset in turn is normal), faces (the
    /// shipped LFW faces vs non-faces) or folders (--normal vs --anomalies).
    #[arg(long, default_value = "faces")]
    protocol: String,
    /// One-class: dataset name or directory (as for `pipeline`).
    #[arg(long, default_value = "fashion-mnist")]
    dataset: String,
    /// One-class: normal classes to run, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    classes: Vec<u32>,
    /// One-class: use only the first N training images of each normal class (0 = all).
    #[arg(long, default_value_t = 0)]
    max_normal: usize,
    /// One-class: score only N test images, evenly strided (0 = all).
    #[arg(long, default_value_t = 0)]
    max_test: usize,
    /// Folders: directory of normal images (PNG/JPEG, searched recursively).
    #[arg(long)]
    normal: Option<PathBuf>,
    /// Folders: directory of anomalous images.
    #[arg(long)]
    anomalies: Option<PathBuf>,
    /// Folders: held-out normal images to score; without it,
    /// 1 - --train-fraction of --normal is held out.
    #[arg(long)]
    normal_test: Option<PathBuf>,
    /// Folders: images are centre-cropped and resized to SIZE x SIZE.
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// Folders: 1 (grayscale) or 3 (RGB).
    #[arg(long, default_value_t = 3)]
    channels: usize,
    /// Faces / folders: fraction of the normal images that trains the detector.
    #[arg(long, default_value_t = 0.7)]
    train_fraction: f64,
    /// Transformations the detector predicts: rot4, rot-flip8 or geo72.
    #[arg(long, default_value = "geo72")]
    transforms: String,
    /// Headline score of report.json: nll, dirichlet, knn or knn-all (all
    /// four are always computed and reported).
    #[arg(long, default_value = "dirichlet")]
    score: String,
    /// Seeds, comma-separated; each trains its own detectors.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    seeds: Vec<u64>,
    /// Encoder: convnet, resnet18 or mobilenetv2.
    #[arg(long, default_value = "convnet")]
    backbone: String,
    /// Convnet stage widths, comma-separated.
    #[arg(long, value_delimiter = ',')]
    widths: Option<Vec<usize>>,
    /// Convnet 3x3 conv layers per stage.
    #[arg(long)]
    depth: Option<usize>,
    /// Start each detector's backbone from this pretrained stage directory
    /// (or `hub:<user/name>`).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Epochs over the (normal image, transformation) pairs; 0 = ceil(200 / T).
    #[arg(long, default_value_t = 0)]
    epochs: usize,
    /// Transformed images per optimiser step.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Peak learning rate (AdamW, warmup + cosine).
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Neighbours averaged by the kNN score.
    #[arg(long, default_value_t = 2)]
    knn_k: usize,
    /// Transformed images per inference batch.
    #[arg(long, default_value_t = 1024)]
    eval_batch: usize,
    /// Also save every detector (weights + Dirichlet parameters) under OUT/detectors/.
    #[arg(long)]
    save_detectors: bool,
    /// Compute device: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Convolution implementation: fast or stock.
    #[arg(long, default_value = "fast")]
    kernels: selfsup::kernels::Kernels,
    /// No progress bars or per-run lines.
    #[arg(long)]
    quiet: bool,
    /// Output directory (report.json, report.md, figures/).
    #[arg(long, default_value = "models/anomaly")]
    out: PathBuf,
}

#[derive(Args)]
struct TextArgs {
    /// A UTF-8 text file or a directory of .txt/.md files (default: the
    /// shipped Rust book, data/text/rust-book.txt).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Output directory: report.json, report.md and checkpoint/ (the
    /// Hugging Face BertForMaskedLM folder).
    #[arg(long, default_value = "models/text")]
    out: PathBuf,
    /// Print the top predictions for each [MASK] of this sentence from
    /// OUT/checkpoint (or --checkpoint) instead of training.
    #[arg(long)]
    fill: Option<String>,
    /// Checkpoint directory for --fill.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Predictions printed per [MASK].
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Continue training from OUT/checkpoint (same flags and corpus).
    #[arg(long)]
    resume: bool,
    /// Optimiser steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Sequences per step.
    #[arg(long)]
    batch: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Hidden width.
    #[arg(long)]
    hidden: Option<usize>,
    /// Transformer layers.
    #[arg(long)]
    layers: Option<usize>,
    /// Attention heads.
    #[arg(long)]
    heads: Option<usize>,
    /// Tokens per sequence.
    #[arg(long)]
    max_len: Option<usize>,
    /// WordPiece vocabulary size.
    #[arg(long)]
    vocab_size: Option<usize>,
    /// Held-out evaluation and checkpoint every N steps.
    #[arg(long)]
    eval_every: Option<usize>,
    /// Independent maskings of the held-out text per evaluation.
    #[arg(long)]
    eval_passes: Option<usize>,
    /// Fraction of the steps spent warming the learning rate up.
    #[arg(long)]
    warmup: Option<f64>,
    /// Fraction of the corpus's paragraphs held out (the last ones).
    #[arg(long)]
    heldout_fraction: Option<f64>,
    /// Seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Compute device: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// No progress bar or per-evaluation lines.
    #[arg(long)]
    quiet: bool,
}

fn run_text(a: TextArgs) -> Result<()> {
    use selfsup::text::{corpus, train};
    let device = parse_device(&a.device)?;
    if let Some(sentence) = &a.fill {
        let dir = a
            .checkpoint
            .clone()
            .unwrap_or_else(|| a.out.join("checkpoint"));
        if !dir.join("config.json").exists() {
            bail!(
                "no checkpoint at {}; train one with `cargo xtask text` (or pass --checkpoint DIR)",
                dir.display()
            );
        }
        let c = train::load(&dir, &device)?;
        for (i, preds) in train::fill(&c, sentence, a.top, &device)?
            .iter()
            .enumerate()
        {
            println!("[MASK] #{}:", i + 1);
            for (tok, p) in preds {
                println!("  {tok:<16} {:.3}", p);
            }
        }
        return Ok(());
    }
    let mut cfg = train::TextConfig::default();
    macro_rules! set {
        ($($f:ident = $v:expr),*) => { $(if let Some(v) = $v { cfg.$f = v; })* };
    }
    set!(
        steps = a.steps,
        batch_size = a.batch,
        lr = a.lr,
        hidden = a.hidden,
        layers = a.layers,
        heads = a.heads,
        max_len = a.max_len,
        vocab_size = a.vocab_size,
        eval_every = a.eval_every,
        eval_passes = a.eval_passes,
        warmup_fraction = a.warmup,
        heldout_fraction = a.heldout_fraction,
        seed = a.seed
    );
    let path = a
        .corpus
        .clone()
        .unwrap_or_else(|| selfsup::data::registry::data_dir().join("text/rust-book.txt"));
    let c = corpus::load(&path, cfg.heldout_fraction)?;
    let report = train::run(&c, &cfg, &a.out, a.resume, &device, a.quiet)?;
    println!("{}", report.to_markdown());
    println!(
        "wrote {}, {} and {}",
        a.out.join("report.json").display(),
        a.out.join("report.md").display(),
        a.out.join("checkpoint").display()
    );
    Ok(())
}

fn run_anomaly(mut a: AnomalyArgs) -> Result<()> {
    use selfsup::anomaly_run::{self, AnomalyOptions};
    match a.preset.as_deref() {
        None => {}
        Some("celeba-faces-anomaly") => {
            // Faces without eyeglasses are normal; faces with them are the
            // attribute-defined outliers. Rotation detector (rot4).
            a.protocol = "one-class".into();
            if a.dataset == "fashion-mnist" {
                a.dataset = "celeba:Eyeglasses".into();
            }
            if a.classes.is_empty() {
                a.classes = vec![0];
            }
            if a.transforms == "geo72" {
                a.transforms = "rot4".into();
            }
        }
        Some(other) => bail!("unknown --preset {other:?}; anomaly presets: celeba-faces-anomaly"),
    }
    let mut recipe = Recipe::default();
    if let Some(w) = a.widths {
        recipe.convnet_widths = w;
    }
    if let Some(d) = a.depth {
        recipe.convnet_depth = d;
    }
    let opts = AnomalyOptions {
        protocol: a.protocol,
        dataset: a.dataset,
        classes: a.classes,
        max_normal: a.max_normal,
        max_test: a.max_test,
        normal_dir: a.normal,
        anomaly_dir: a.anomalies,
        normal_test_dir: a.normal_test,
        size: a.size,
        channels: a.channels,
        train_fraction: a.train_fraction,
        transforms: selfsup::anomaly::TransformSet::from_name(&a.transforms)?,
        score: a.score,
        seeds: a.seeds,
        backbone: a.backbone,
        recipe,
        init: resolve_init(a.init)?,
        epochs: a.epochs,
        batch_size: a.batch,
        lr: a.lr,
        knn_k: a.knn_k,
        eval_batch: a.eval_batch,
        out: a.out.clone(),
        save_detectors: a.save_detectors,
        device: parse_device(&a.device)?,
        quiet: a.quiet,
    };
    let report = anomaly_run::run(&opts)?;
    println!("{}", report.to_markdown());
    println!(
        "wrote {} and {}",
        a.out.join("report.json").display(),
        a.out.join("report.md").display()
    );
    Ok(())
}

/// The default recipe with `file`'s fields laid over it.
fn recipe_file(file: &std::path::Path) -> Result<Recipe> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read recipe {}", file.display()))?;
    let over: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", file.display()))?;
    let Some(fields) = over.as_object() else {
        bail!("{}: a recipe must be a JSON object", file.display());
    };
    let mut base = serde_json::to_value(Recipe::default())?;
    let known = base.as_object().expect("recipe is an object").clone();
    for (k, v) in fields {
        if !known.contains_key(k) {
            bail!(
                "{}: unknown recipe field {k:?}; known: {}",
                file.display(),
                known.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        base[k] = v.clone();
    }
    serde_json::from_value(base).with_context(|| format!("{}: invalid recipe", file.display()))
}

fn recipe(c: &Common, epochs: Option<usize>) -> Result<Recipe> {
    let mut r = match &c.recipe {
        Some(f) => recipe_file(f)?,
        None => Recipe::default(),
    };
    if let Some(w) = &c.widths {
        r.convnet_widths = w.clone();
    }
    if let Some(d) = c.depth {
        r.convnet_depth = d;
    }
    if let Some(w) = c.resnet_width {
        r.resnet_width = w;
    }
    if let Some(w) = c.width_multiplier {
        r.mobilenet_width = w;
    }
    if let Some(u) = c.unlabeled {
        r.unlabeled = (u > 0).then_some(u);
    }
    if let Some(e) = epochs {
        r.pretrain_epochs = e;
        r.contrastive_epochs = e;
    }
    if let Some(e) = c.contrastive_epochs {
        r.contrastive_epochs = e;
    }
    if let Some(b) = c.contrastive_batch {
        r.contrastive_batch = b;
    }
    if let Some(lr) = c.contrastive_lr {
        r.contrastive_lr = lr;
    }
    if let Some(t) = c.temperature {
        r.siamese.temperature = t;
    }
    if c.no_knn_monitor {
        r.knn_monitor = false;
    }
    if let Some(cl) = &c.classes {
        r.classes = cl.clone();
    }
    if c.pretrain_selected_only {
        r.pretrain_all_classes = false;
    }
    if let Some(t) = &c.transfer_augment {
        r.transfer_augment = Some(pipeline::ViewAugment::Preset(t.clone()));
        r.transfer_pipeline()?;
    }
    if let Some(p) = c.transfer_patience {
        r.transfer_patience = (p > 0).then_some(p);
    }
    if let Some(f) = c.transfer_val_fraction {
        r.transfer_val_fraction = f;
    }
    if let Some(v) = &c.view_augment {
        r.view_augment = pipeline::ViewAugment::Preset(v.clone());
    }
    if let Some(e) = c.transfer_epochs {
        r.transfer_epochs = e;
    }
    if let Some(b) = c.pretrain_batch {
        r.pretrain_batch = b;
    }
    if let Some(lr) = c.pretrain_lr {
        r.pretrain_lr = lr;
    }
    if let Some(lr) = c.transfer_lr {
        r.transfer_lr = lr;
    }
    if let Some(b) = c.eval_batch {
        r.eval_batch = b;
    }
    if let Some(e) = c.distill_epochs {
        r.distill_epochs = e;
    }
    if let Some(t) = c.distill_temperature {
        r.distill_temperature = t;
    }
    if let Some(lr) = c.distill_lr {
        r.distill_lr = lr;
    }
    if let Some(f) = c.distill_labeled_share {
        r.distill_labeled_share = f;
    }
    if let Some(a) = &c.distill_augment {
        r.distill_augment = Some(pipeline::ViewAugment::Preset(a.clone()));
        r.distill_pipeline(1, 28)?;
    }
    if c.no_lpft {
        r.lpft = false;
    }
    if let Some(t) = &c.distill_teacher {
        r.distill_teacher = t.clone();
        r.distill_teacher_for(true)?;
    }
    if let Some(e) = c.fixmatch_epochs {
        r.fixmatch_epochs = e;
    }
    if let Some(t) = c.fixmatch_threshold {
        r.fixmatch_threshold = t;
    }
    if let Some(lr) = c.fixmatch_lr {
        r.fixmatch_lr = lr;
    }
    if let Some(i) = &c.fixmatch_init {
        r.fixmatch_init = i.clone();
        r.fixmatch_init_for(true)?;
    }
    if c.fixmatch_align {
        r.fixmatch_align = true;
    }
    if c.no_scratch_semi_supervised {
        r.scratch_semi_supervised = false;
    }
    Ok(r)
}

fn init_logging(quiet: bool) {
    let default = if quiet {
        "warn,hf_hub=off"
    } else {
        "warn,selfsup=info,hf_hub=off"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SELFSUP_LOG")
        .unwrap_or_else(|_| default.into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Applies a pipeline preset: each sets the values a flag left at its
/// default (so explicit flags still win).
fn apply_preset(a: &mut PipelineArgs) -> Result<()> {
    let Some(p) = a.preset.clone() else {
        return Ok(());
    };
    /// What a preset sets (flags the user gave keep their values).
    struct Preset {
        dataset: &'static str,
        backbone: &'static str,
        labels_per_class: &'static [usize],
        classes: &'static [&'static str],
        /// (augmentation, early-stopping patience, maximum epochs) of the
        /// fine-tune / scratch stage, if the preset sets them.
        transfer: Option<(&'static str, usize, usize)>,
    }
    let preset = match p.as_str() {
        // Pretrain on every unlabeled training digit, transfer with 1,000
        // and 250 labels (100 and 25 per class).
        "svhn-street-numbers" => Preset {
            dataset: "svhn",
            backbone: "resnet18",
            labels_per_class: &[100, 25],
            classes: &[],
            transfer: None,
        },
        // MobileNetV2 pretrained by rotation on the unlabeled images of all
        // 200 classes, then the waterfowl class n01855672 (goose) vs
        // n01443537 (goldfish) from all 500 labeled images per class (and
        // from 50), with flips, zoom and contrast, warmup + cosine learning
        // rate and early stopping on a held-out tenth of the labels.
        "tiny-imagenet-duck-fish" => Preset {
            dataset: "tiny-imagenet",
            backbone: "mobilenetv2",
            labels_per_class: &[500, 50],
            classes: &["n01855672", "n01443537"],
            transfer: Some(("flip-zoom-contrast", 5, 40)),
        },
        other => bail!(
            "unknown --preset {other:?}; pipeline presets: svhn-street-numbers, tiny-imagenet-duck-fish (anomaly: celeba-faces-anomaly)"
        ),
    };
    let c = &mut a.common;
    if c.dataset == "fashion-mnist" {
        c.dataset = preset.dataset.into();
    }
    if c.backbone == "convnet" {
        c.backbone = preset.backbone.into();
    }
    if a.labels_per_class == [10] {
        a.labels_per_class = preset.labels_per_class.to_vec();
    }
    if !preset.classes.is_empty() {
        c.classes
            .get_or_insert_with(|| preset.classes.iter().map(|s| s.to_string()).collect());
    }
    if let Some((augment, patience, epochs)) = preset.transfer {
        c.transfer_augment.get_or_insert_with(|| augment.into());
        c.transfer_patience.get_or_insert(patience);
        c.transfer_epochs.get_or_insert(epochs);
    }
    c.unlabeled.get_or_insert(0);
    Ok(())
}

/// `hub:<user/name>` becomes the local directory of the downloaded
/// backbone; a plain path stays as it is.
fn resolve_init(init: Option<PathBuf>) -> Result<Option<PathBuf>> {
    let Some(p) = init else { return Ok(None) };
    match p.to_str().and_then(|s| s.strip_prefix("hub:")) {
        Some(repo) => Ok(Some(selfsup::hub::download_checkpoint(repo)?)),
        None => Ok(Some(p)),
    }
}

fn run_fetch(a: FetchArgs) -> Result<()> {
    let spec = selfsup::hub::catalog::spec(&a.dataset)?;
    if !a.quiet {
        eprintln!(
            "fetching {} from the Hub dataset {} ({})",
            a.dataset, spec.repo, spec.download
        );
    }
    let out = selfsup::hub::fetch(
        &a.dataset,
        &selfsup::hub::FetchOptions {
            cache_root: selfsup::data::cache::root(),
            force: a.force,
            quiet: a.quiet,
        },
    )?;
    let m = &out.manifest;
    let name = selfsup::data::cache::dataset_name(&a.dataset);
    println!(
        "{} {}: {} train + {} {} images of {:?}, {} classes, from {}@{} -> {}",
        if out.reused { "cached" } else { "fetched" },
        a.dataset,
        m.train_images,
        m.test_images,
        m.test_split,
        m.image_shape,
        m.classes.len(),
        m.repo,
        &m.revision[..m.revision.len().min(12)],
        out.dir.display()
    );
    println!("use it with --dataset {name}");
    Ok(())
}

fn run_publish(a: PublishArgs) -> Result<()> {
    let out = selfsup::hub::publish(&selfsup::hub::PublishOptions {
        run: a.run,
        repo: a.repo.clone(),
        private: a.private,
        dry_run: a.dry_run,
        out: a.out,
        method: a.method,
    })?;
    println!("wrote {} ({})", out.folder.display(), out.files.join(", "));
    match out.commit_url {
        Some(u) => println!("uploaded to {} in one commit: {u}", a.repo),
        None if a.dry_run => println!("dry run: nothing uploaded"),
        None => println!("uploaded to {}", a.repo),
    }
    Ok(())
}

fn run_pipeline(mut a: PipelineArgs) -> Result<()> {
    apply_preset(&mut a)?;
    let opts = PipelineOptions {
        dataset: a.common.dataset.clone(),
        backbone: a.common.backbone.clone(),
        pretext: a.pretext,
        labels_per_class: a.labels_per_class,
        seeds: a.seeds,
        recipe: Recipe {
            pretrain_per_seed: a.pretrain_per_seed,
            ..recipe(&a.common, a.epochs)?
        },
        out: a.out.clone(),
        device: parse_device(&a.common.device)?,
        quiet: a.common.quiet,
        max_train: a.common.max_train,
        max_test: a.common.max_test,
        resume: a.resume,
    };
    let report = pipeline::run(&opts)?;
    println!("{}", report.to_markdown());
    println!(
        "wrote {} and {}",
        a.out.join("report.json").display(),
        a.out.join("report.md").display()
    );
    Ok(())
}

fn run_pretrain(a: PretrainArgs) -> Result<()> {
    let r = recipe(&a.common, a.epochs)?;
    let prep = pipeline::select_classes(
        pipeline::prepare(&a.common.dataset, a.common.max_train, a.common.max_test)?,
        &r.classes,
        r.pretrain_all_classes,
    )?;
    let backbone = r.backbone(&a.common.backbone, prep.pair.train.image_shape().0)?;
    selfsup::methods::check(&a.pretext)?;
    let device = parse_device(&a.common.device)?;
    let outcome = pipeline::pretrain_stage(
        &prep,
        &backbone,
        &a.pretext,
        &r,
        a.labels_per_class,
        &[a.seed],
        a.seed,
        &a.out,
        &device,
        a.common.quiet,
    )?;
    pipeline::loss_figure(&outcome.history, &a.pretext, &a.out.join("loss.png"))?;
    println!("wrote {}", a.out.display());
    Ok(())
}

fn run_transfer(a: TransferArgs) -> Result<()> {
    let r = recipe(&a.common, None)?;
    let prep = pipeline::select_classes(
        pipeline::prepare(&a.common.dataset, a.common.max_train, a.common.max_test)?,
        &r.classes,
        r.pretrain_all_classes,
    )?;
    let device = parse_device(&a.common.device)?;
    let init = resolve_init(a.init)?;
    let backbone = match &init {
        Some(dir) => {
            let cfg: selfsup::backbones::checkpoint::StageConfig =
                selfsup::core::checkpoint::read_config(dir)?;
            cfg.backbone
        }
        None => r.backbone(&a.common.backbone, prep.pair.train.image_shape().0)?,
    };
    pipeline::transfer_stage(
        &prep,
        &backbone,
        init.as_deref(),
        a.lpft,
        &r,
        a.labels_per_class,
        a.seed,
        &a.out,
        &device,
        a.common.quiet,
    )?;
    println!("wrote {}", a.out.display());
    Ok(())
}

fn run_evaluate(mut a: EvaluateArgs) -> Result<()> {
    a.checkpoint = resolve_init(Some(a.checkpoint))?.expect("given");
    let r = recipe(&a.common, None)?;
    let prep = pipeline::select_classes(
        pipeline::prepare(&a.common.dataset, a.common.max_train, a.common.max_test)?,
        &r.classes,
        r.pretrain_all_classes,
    )?;
    let device = parse_device(&a.common.device)?;
    let (acc, extra) = match a.protocol.as_str() {
        "finetune" => {
            let (cls, _) = selfsup::finetune::load_classifier(&a.checkpoint, &device)?;
            if cls.head.weight().dim(0)? != prep.pair.test.num_classes() {
                bail!(
                    "{}: the head has {} outputs but {} has {} classes (a pretext checkpoint? evaluate it with --protocol linear or knn)",
                    a.checkpoint.display(),
                    cls.head.weight().dim(0)?,
                    a.common.dataset,
                    prep.pair.test.num_classes()
                );
            }
            (
                pipeline::classifier_accuracy(&prep, &cls, &r, &device)?,
                serde_json::Value::Null,
            )
        }
        p @ ("linear" | "knn") => {
            let enc = selfsup::backbones::checkpoint::load(&a.checkpoint, a.seed, &device)?;
            let (lin, knn, k) = pipeline::frozen_protocols(
                &prep,
                enc.backbone.as_ref(),
                &r,
                a.labels_per_class,
                a.seed,
                &device,
            )?;
            if p == "linear" {
                (lin, serde_json::Value::Null)
            } else {
                (knn, serde_json::json!({"k": k}))
            }
        }
        other => bail!("invalid --protocol: {other:?}; expected finetune, linear or knn"),
    };
    let result = serde_json::json!({
        "checkpoint": a.checkpoint.display().to_string(),
        "dataset": prep.pair.name,
        "protocol": a.protocol,
        "labels_per_class": a.labels_per_class,
        "seed": a.seed,
        "test_accuracy": acc,
        "test_images": prep.pair.test.len(),
        "extra": extra,
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    if let Some(out) = a.out {
        selfsup::core::fsutil::write_json_atomic(&out, &result)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

fn main() {
    keep_freed_memory();
    let cli = Cli::parse();
    let common = match &cli.command {
        Command::Pipeline(a) => Some(&a.common),
        Command::Pretrain(a) => Some(&a.common),
        Command::Transfer(a) => Some(&a.common),
        Command::Evaluate(a) => Some(&a.common),
        Command::Bench(_)
        | Command::Anomaly(_)
        | Command::Text(_)
        | Command::Fetch(_)
        | Command::Publish(_) => None,
    };
    let (quiet, kernels) = match &cli.command {
        Command::Anomaly(a) => (a.quiet, Some(a.kernels)),
        Command::Text(a) => (a.quiet, None),
        Command::Fetch(a) => (a.quiet, None),
        Command::Publish(_) => (false, None),
        // The bench times each kernel choice itself.
        Command::Bench(_) => (false, None),
        _ => (common.is_some_and(|c| c.quiet), common.map(|c| c.kernels)),
    };
    init_logging(quiet);
    if let Some(k) = kernels {
        selfsup::kernels::set_default(k);
    }
    if let Some(c) = common {
        selfsup::data::registry::set_folder_defaults(selfsup::data::FolderOptions {
            size: c.image_size,
            channels: c.channels,
        });
    }
    let res = match cli.command {
        Command::Pipeline(a) => run_pipeline(a),
        Command::Pretrain(a) => run_pretrain(a),
        Command::Transfer(a) => run_transfer(a),
        Command::Evaluate(a) => run_evaluate(a),
        Command::Bench(a) => bench::run(a),
        Command::Anomaly(a) => run_anomaly(a),
        Command::Text(a) => run_text(a),
        Command::Fetch(a) => run_fetch(a),
        Command::Publish(a) => run_publish(a),
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
