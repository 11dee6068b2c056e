//! The settings of a text run (`experiment.toml` of `cargo xtask text`).

use crate::bert::BertConfig;
use crate::objective::TextObjective;
use selfsup_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// Everything `cargo xtask text` trains with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TextConfig {
    /// WordPiece vocabulary size (at most; the trainer may find fewer).
    pub vocab_size: usize,
    /// Hidden width.
    pub hidden: usize,
    /// Transformer layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Tokens per sequence, `[CLS]` and `[SEP]` included.
    pub max_len: usize,
    /// Sequences per step.
    pub batch_size: usize,
    /// Optimiser steps.
    pub steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Fraction of the steps spent warming up.
    pub warmup_fraction: f64,
    /// AdamW weight decay (not on biases and LayerNorm).
    pub weight_decay: f64,
    /// Global gradient-norm clip.
    pub clip: f64,
    /// Fraction of tokens chosen for the masked-token loss in training
    /// (`mlm` and `mlm,nsp`).
    pub mask_rate: f64,
    /// Fraction of tokens span-corrupted by `denoise`, in training and in
    /// its held-out reconstruction (T5's 15 %).
    pub denoise_rate: f64,
    /// Fraction of held-out tokens masked to measure masked-token top-1 and
    /// perplexity: BERT's 15 % whatever the training rate, so runs that
    /// train at different rates are measured on the same task.
    pub eval_mask_rate: f64,
    /// Fraction of the corpus's paragraphs held out (the last ones).
    pub heldout_fraction: f64,
    /// Evaluate on the held-out text (and checkpoint) every N steps.
    pub eval_every: usize,
    /// Independent maskings of the held-out text per evaluation (more
    /// masked tokens, less noise in the metrics).
    pub eval_passes: usize,
    /// At most this many held-out sequences are evaluated (evenly spaced
    /// over the held-out text), so a large corpus's evaluations stay cheap.
    pub eval_max_sequences: usize,
    /// Seed of initialisation, order and masking.
    pub seed: u64,
    /// Hidden dropout in training (after the embeddings and on each
    /// attention and MLP output), Hugging Face's `hidden_dropout_prob`.
    pub dropout: f64,
    /// What to learn: `["mlm"]`, `["mlm", "nsp"]` or `["denoise"]`
    /// ([`crate::objective`]).
    pub objectives: Vec<String>,
    /// Standard deviation of the weights' normal initialisation, Hugging
    /// Face's `initializer_range`. A stored config without the key (a
    /// report or checkpoint written before it) reads as BERT's 0.02, what
    /// its run was trained with; a `--config` file is laid over the
    /// defaults instead, so the shipped result folders name it.
    #[serde(default = "bert_init_range")]
    pub init_range: f64,
    /// How a fresh model's position table starts: `normal` (BERT's draw)
    /// or `sinusoidal` ([`crate::init`]). A stored config without the key
    /// reads as `normal`, as [`Self::init_range`] reads as 0.02.
    #[serde(default = "bert_position_init")]
    pub position_init: String,
}

/// BERT's position-table initialisation.
fn bert_position_init() -> String {
    "normal".into()
}

/// BERT's `initializer_range`.
fn bert_init_range() -> f64 {
    0.02
}

impl TextConfig {
    /// Fails on settings no run can train with.
    pub fn check(&self) -> Result<()> {
        if self.steps == 0 || self.batch_size == 0 || self.max_len < 3 {
            return Err(Error::invalid(
                "text config",
                "steps and batch size must be positive and max_len at least 3",
            ));
        }
        TextObjective::parse(&self.objectives)?;
        for (name, rate) in [
            ("mask_rate", self.mask_rate),
            ("denoise_rate", self.denoise_rate),
            ("eval_mask_rate", self.eval_mask_rate),
        ] {
            if !(rate > 0.0 && rate < 1.0) {
                return Err(Error::invalid(
                    name,
                    format!("{rate} must lie strictly between 0 and 1"),
                ));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::invalid(
                "dropout",
                format!("{} must be at least 0 and below 1", self.dropout),
            ));
        }
        if !(self.init_range.is_finite() && self.init_range > 0.0) {
            return Err(Error::invalid(
                "init_range",
                format!("{} must be a positive number", self.init_range),
            ));
        }
        crate::init::PositionInit::parse(&self.position_init)?;
        self.bert(self.vocab_size.max(1)).validate()
    }

    /// The objective set.
    pub fn objective(&self) -> Result<TextObjective> {
        TextObjective::parse(&self.objectives)
    }

    /// The rate training examples are masked or corrupted at: `denoise`'s
    /// span-corruption rate, or the masked-token rate.
    pub fn train_rate(&self) -> f64 {
        match self.objective() {
            Ok(TextObjective::Denoise) => self.denoise_rate,
            _ => self.mask_rate,
        }
    }

    /// The model these settings train, for a vocabulary of `vocab`.
    pub fn bert(&self, vocab: usize) -> BertConfig {
        let mut c = BertConfig::small(vocab, self.hidden, self.layers, self.heads, self.max_len);
        c.hidden_dropout_prob = self.dropout;
        c.initializer_range = self.init_range;
        match TextObjective::parse(&self.objectives) {
            Ok(o) if o.has_nsp() => c.with_nsp(),
            _ => c,
        }
    }
}

/// The defaults: a 4-layer BERT, 1,500 steps, 40 % of the tokens masked in
/// training, no dropout, weights drawn with spread 0.05 and a sinusoidal
/// position table, 5 to 8 minutes on 2 cores. The shape and length were
/// chosen on the Rust book's held-out text against 2 layers for 1,000 /
/// 2,000 / 3,000 steps, 4 layers with 4 heads and 256 wide; the masking
/// rate (15 / 30 / 40 %), dropout (0.1 / 0) and batch (32 x 1,500 / 16 x
/// 3,000) with the shipped training-only documentation added; the
/// initialisation (spread 0.02 / 0.05 / 0.088, normal / sinusoidal
/// positions) last, because BERT's own left the attention uniform for the
/// whole run: docs/text.md.
impl Default for TextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 8000,
            hidden: 128,
            layers: 4,
            heads: 2,
            max_len: 128,
            batch_size: 32,
            steps: 1500,
            lr: 2e-3,
            warmup_fraction: 0.1,
            weight_decay: 0.01,
            clip: 1.0,
            mask_rate: 0.4,
            denoise_rate: 0.15,
            eval_mask_rate: 0.15,
            heldout_fraction: 0.1,
            eval_every: 500,
            eval_passes: 4,
            eval_max_sequences: 512,
            seed: 0,
            dropout: 0.0,
            objectives: vec!["mlm".into()],
            init_range: 0.05,
            position_init: "sinusoidal".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_without_the_initialisation_keys_means_berts_own() {
        // Reports and checkpoints written before the keys existed trained
        // with BERT's initialisation; read back, they must still say so
        // (`cargo xtask spec --from-report`, `--resume`).
        let old: TextConfig = serde_json::from_str(r#"{"steps": 10}"#).unwrap();
        assert_eq!(
            (old.init_range, old.position_init.as_str()),
            (0.02, "normal")
        );
        assert_eq!(old.steps, 10);
        let new = TextConfig::default();
        assert_eq!(
            (new.init_range, new.position_init.as_str()),
            (0.05, "sinusoidal")
        );
        let bad = TextConfig {
            position_init: "learned".into(),
            ..TextConfig::default()
        };
        let e = bad.check().unwrap_err().to_string();
        assert!(e.contains("position_init") && e.contains("learned"), "{e}");
    }
}
