//! `text`: masked-token pretraining of a small BERT, or `--fill`.

use anyhow::{bail, Result};
use clap::Args;
use selfsup::core::device::parse_device;
use std::path::PathBuf;

#[derive(Args)]
pub struct TextArgs {
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
    pub quiet: bool,
}

pub fn run_text(a: TextArgs) -> Result<()> {
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
