//! Helpers the text crate's integration tests share.

use selfsup_text::corpus::{self, Corpus};
use selfsup_text::train::TextConfig;
use std::path::Path;

/// 300 training and 40 held-out paragraphs of the shipped Rust book.
pub fn small_corpus() -> Corpus {
    let book = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/text/rust-book.txt");
    let full = corpus::load(&book, 0.1).unwrap();
    Corpus {
        source: "rust-book slice".into(),
        train: full.train[..300].to_vec(),
        heldout: full.heldout[..40].to_vec(),
        train_only: 0,
    }
}

/// A tiny BERT (1 layer x 32, vocabulary up to 400, 32 tokens, batch 16)
/// trained `steps` steps on `objectives` (comma-separated), evaluated every
/// `eval_every`.
pub fn tiny(objectives: &str, steps: usize, eval_every: usize) -> TextConfig {
    TextConfig {
        vocab_size: 400,
        hidden: 32,
        layers: 1,
        heads: 2,
        max_len: 32,
        batch_size: 16,
        steps,
        lr: 3e-3,
        eval_every,
        objectives: objectives.split(',').map(String::from).collect(),
        ..TextConfig::default()
    }
}

/// Runs `script` with `$SELFSUP_PYTHON` (default `python3`) and parses
/// what it prints as JSON; panics with Python's stderr if it fails.
#[allow(dead_code)] // only the tests that talk to transformers use it
pub fn python_json<T: serde::de::DeserializeOwned>(script: &str) -> T {
    let out = std::process::Command::new(
        std::env::var("SELFSUP_PYTHON").unwrap_or_else(|_| "python3".into()),
    )
    .arg("-c")
    .arg(script)
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
