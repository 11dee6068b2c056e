//! `text`: pretraining of a small BERT (masked tokens, next-sentence
//! prediction, denoising), or `--fill` / `--nsp` queries of a checkpoint.

use crate::spec_args::{assign_all, int, list, print_written, set_given};
use anyhow::{bail, Result};
use clap::Args;
use selfsup::core::device::parse_device;
use selfsup::core::output;
use selfsup::spec::layers::Layers;
use std::path::PathBuf;
use toml::Value;

#[derive(Args)]
pub struct TextArgs {
    /// Training spec (TOML): any of the keys of the run's experiment.toml
    /// (vocab_size, hidden, layers, heads, max_len, batch_size, steps, lr,
    /// ...); the flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Set any spec value: `--set mask_rate=0.2`, repeatable; applied last.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    set: Vec<String>,
    /// A UTF-8 text file or a directory of .txt/.md files (default: the
    /// shipped Rust book, data/text/rust-book.txt).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// More text (a file or directory) to train on that is never held out,
    /// repeatable. Without --corpus and without this flag, the shipped
    /// Rust documentation (data/rust-docs: the Reference, the Rustonomicon,
    /// Rust by Example and four more guides) is added to the book.
    #[arg(long = "train-corpus", value_name = "PATH")]
    train_corpus: Vec<PathBuf>,
    /// Train on the --corpus text alone, without the shipped
    /// training-only documentation.
    #[arg(long, conflicts_with = "train_corpus")]
    no_train_corpus: bool,
    /// Output directory: report.json, report.md and checkpoint/ (the
    /// Hugging Face BertForMaskedLM folder).
    #[arg(long, default_value = "models/text")]
    out: PathBuf,
    /// Print the top predictions for each `[MASK]` of this sentence from
    /// OUT/checkpoint (or --checkpoint) instead of training.
    #[arg(long)]
    fill: Option<String>,
    /// Print the checkpoint's probability that SECOND follows FIRST (a
    /// model trained with `--objectives mlm,nsp`).
    #[arg(long, num_args = 2, value_names = ["FIRST", "SECOND"])]
    nsp: Option<Vec<String>>,
    /// What to learn, comma-separated: `mlm` (masked tokens, the default),
    /// `mlm,nsp` (plus next-sentence prediction on sentence pairs: a
    /// BertForPreTraining checkpoint) or `denoise` (every token of a
    /// span-corrupted input reconstructed).
    #[arg(long, value_delimiter = ',')]
    objectives: Option<Vec<String>>,
    /// Checkpoint directory for --fill and --nsp.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Predictions printed per `[MASK]`.
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
    /// Replace what an earlier selfsup command wrote to --out (a directory
    /// selfsup did not write is never touched).
    #[arg(long)]
    force: bool,
}

impl TextArgs {
    /// The training settings: defaults, `--config`, the flags, `--set`.
    fn config(&self) -> Result<selfsup::text::train::TextConfig> {
        use selfsup::text::train::TextConfig;
        let mut layers = Layers::from_spec(&TextConfig::default());
        if let Some(f) = &self.config {
            layers.file_as::<TextConfig>(f)?;
        }
        let table = [
            ("steps", int(self.steps)),
            ("batch_size", int(self.batch)),
            ("lr", self.lr.map(Value::from)),
            ("hidden", int(self.hidden)),
            ("layers", int(self.layers)),
            ("heads", int(self.heads)),
            ("max_len", int(self.max_len)),
            ("vocab_size", int(self.vocab_size)),
            ("eval_every", int(self.eval_every)),
            ("eval_passes", int(self.eval_passes)),
            ("warmup_fraction", self.warmup.map(Value::from)),
            ("heldout_fraction", self.heldout_fraction.map(Value::from)),
            ("seed", int(self.seed)),
            ("objectives", list(&self.objectives)),
        ];
        set_given(&mut layers, table)?;
        assign_all(&mut layers, &self.set)?;
        Ok(layers.read()?)
    }
}

/// `--fill` and `--nsp`: predictions of OUT/checkpoint (or --checkpoint).
fn query(a: &TextArgs, device: &candle_core::Device) -> Result<()> {
    use selfsup::text::train;
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
    let c = train::load(&dir, device)?;
    if let Some(sentence) = &a.fill {
        for (i, preds) in train::fill(&c, sentence, a.top, device)?.iter().enumerate() {
            println!("[MASK] #{}:", i + 1);
            for (tok, p) in preds {
                println!("  {tok:<16} {:.3}", p);
            }
        }
    }
    if let Some(pair) = &a.nsp {
        let p = train::next_probability(&c, &pair[0], &pair[1], device)?;
        println!("P(second follows first) = {p:.3}");
    }
    Ok(())
}

/// `--corpus` (default: the shipped Rust book) with its held-out part, and
/// the training-only text: `--train-corpus`, or the shipped documentation
/// when neither corpus flag is given.
fn load_corpus(a: &TextArgs, heldout_fraction: f64) -> Result<selfsup::text::corpus::Corpus> {
    let data = selfsup::data::registry::data_dir();
    let path = a
        .corpus
        .clone()
        .unwrap_or_else(|| data.join("text/rust-book.txt"));
    let mut c = selfsup::text::corpus::load(&path, heldout_fraction)?;
    let extra = match (&a.corpus, a.train_corpus.is_empty(), a.no_train_corpus) {
        (None, true, false) => vec![data.join("rust-docs")],
        _ => a.train_corpus.clone(),
    };
    for p in &extra {
        c.add_train_only(p)?;
    }
    Ok(c)
}

pub fn run_text(a: TextArgs) -> Result<()> {
    use selfsup::text::train;
    let device = parse_device(&a.device)?;
    if a.fill.is_some() || a.nsp.is_some() {
        return query(&a, &device);
    }
    let cfg = a.config()?;
    let c = load_corpus(&a, cfg.heldout_fraction)?;
    cfg.check()?;
    train::check_corpus(&c, &cfg)?;
    if a.resume && !a.out.join("checkpoint").is_dir() {
        bail!(
            "--resume: {} holds no checkpoint/ to continue",
            a.out.display()
        );
    }
    let policy = output::Policy {
        force: a.force,
        resume: a.resume,
        other_spec: false,
    };
    let spec_json = serde_json::to_value(&cfg)?;
    output::claim(&a.out, "text", policy, Some(&spec_json))?;
    let report = train::run(&c, &cfg, &a.out, a.resume, &device, a.quiet)?;
    let spec = toml::to_string(&cfg)?;
    selfsup::core::fsutil::write_atomic(&a.out.join("experiment.toml"), spec.as_bytes())?;
    output::complete(&a.out, "text")?;
    println!("{}", report.to_markdown());
    print_written(
        &a.out,
        &["experiment.toml", "report.json", "report.md", "checkpoint"],
    );
    Ok(())
}
