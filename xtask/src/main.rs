//! `cargo xtask`: the selfsup command line. A thin shell over
//! `selfsup::pipeline` and `selfsup::spec`: it parses flags, lays them over
//! the experiment spec and calls one function per command. No ML logic
//! lives here.

use clap::{Parser, Subcommand};

mod anomaly;
mod bench;
mod bench_rounds;
#[cfg(feature = "hub")]
mod hub;
#[cfg(not(feature = "hub"))]
#[path = "no_hub.rs"]
mod hub;
mod logging;
mod rescore;
mod spec_args;
mod spec_cmd;
mod stages;
mod text;

// Candle allocates and frees many large temporary buffers per step; with
// glibc's default malloc each one is a fresh mmap whose pages fault in again,
// which measured as more kernel than user time. mimalloc reuses them: about
// 2.4x faster training on 2 cores (docs/results/image-classification.md,
// "Allocator").
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

/// Candle runs its elementwise CPU ops (the gradient sums of every
/// backward pass among them) on a pool of its own threads, beside rayon's
/// that run our kernels; by default each of its workers spins for 25,000
/// iterations after every op before it sleeps. On a machine with as many
/// cores as threads that spinning takes a core from the next kernel:
/// measured 4 % of a ConvNet training step under `perf`, and its backward
/// pass 51 ms instead of 55 ms (`cargo xtask bench --models convnet`, 2
/// cores). Workers that sleep at once cost a wake-up per op instead. A
/// user's own `CANDLE_BARRIER_POOL_SPIN_LIMIT` wins.
fn no_spinning_candle_workers() {
    const VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(VAR).is_none() {
        // Called first thing in main: no other thread exists yet that
        // could read the environment while it changes.
        std::env::set_var(VAR, "0");
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
pub(crate) enum Command {
    /// Pretrain -> transfer -> evaluate, for every seed, and write a report.
    Pipeline(stages::PipelineArgs),
    /// Pretrain one encoder with a pretext task and write its checkpoint.
    Pretrain(stages::PretrainArgs),
    /// Train a classifier on K labels per class (from a checkpoint, or from scratch).
    Transfer(stages::TransferArgs),
    /// Test accuracy of a checkpoint (classifier head, linear probe or kNN).
    Evaluate(stages::EvaluateArgs),
    /// Training-step throughput: our kernels vs Candle's stock ops vs PyTorch.
    Bench(bench::BenchArgs),
    /// Anomaly detection: train transformation-prediction detectors on
    /// normal images only and report AUROC / AUPR / FPR95 per normal class.
    Anomaly(anomaly::AnomalyArgs),
    /// An anomaly run's AUROCs recomputed from its scores.csv, with the
    /// knn-all+pixel score under other pixel weights (no training).
    Rescore(rescore::RescoreArgs),
    /// Masked-token pretraining of a small BERT on a text corpus (or, with
    /// --fill, the top predictions for the `[MASK]`s of a sentence).
    Text(text::TextArgs),
    /// Print the resolved experiment spec (defaults, --preset, --config,
    /// flags, --set), or rebuild an earlier run's from its report.json.
    Spec(spec_cmd::SpecCmdArgs),
    /// Download a public dataset from the Hugging Face Hub, decode it once
    /// into the local cache, and make it a --dataset name.
    #[cfg(feature = "hub")]
    Fetch(hub::FetchArgs),
    /// Turn a run directory into a Hugging Face model repository (weights,
    /// config, model card) and upload it in one commit.
    #[cfg(feature = "hub")]
    Publish(hub::PublishArgs),
}

fn main() {
    keep_freed_memory();
    no_spinning_candle_workers();
    let cli = Cli::parse();
    let flags = stages::command_flags(&cli.command);
    let (quiet, kernels) = match &cli.command {
        Command::Anomaly(a) => (a.quiet, Some(a.kernels)),
        Command::Text(a) => (a.quiet, None),
        #[cfg(feature = "hub")]
        Command::Fetch(a) => (a.quiet, None),
        #[cfg(feature = "hub")]
        Command::Publish(_) => (false, None),
        Command::Spec(_) | Command::Rescore(_) => (false, None),
        // The bench times each kernel choice itself.
        Command::Bench(_) => (false, None),
        _ => (
            flags.is_some_and(|(r, _)| r.quiet),
            flags.map(|(r, _)| r.kernels),
        ),
    };
    logging::init(quiet);
    if let Some(k) = kernels {
        selfsup::kernels::set_default(k);
    }
    let res = match cli.command {
        Command::Pipeline(a) => stages::run_pipeline(a),
        Command::Pretrain(a) => stages::run_pretrain(a),
        Command::Transfer(a) => stages::run_transfer(a),
        Command::Evaluate(a) => stages::run_evaluate(a),
        Command::Bench(a) => bench::run(a),
        Command::Anomaly(a) => anomaly::run_anomaly(a),
        Command::Text(a) => text::run_text(a),
        #[cfg(feature = "hub")]
        Command::Fetch(a) => hub::run_fetch(a),
        #[cfg(feature = "hub")]
        Command::Publish(a) => hub::run_publish(a),
        Command::Spec(a) => spec_cmd::run_spec(a),
        Command::Rescore(a) => rescore::run(a),
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
