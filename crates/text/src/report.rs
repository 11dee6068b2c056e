//! `report.json` and `report.md` of a text run.

use crate::config::TextConfig;
use crate::denoise::DenoiseMetrics;
use crate::mlm::MlmMetrics;
use crate::nsp::NspMetrics;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// One periodic evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalPoint {
    /// Steps done.
    pub step: usize,
    /// Mean training loss since the previous point.
    pub train_loss: f64,
    /// Held-out metrics.
    pub heldout: MlmMetrics,
    /// Held-out next-sentence accuracy (`mlm,nsp` runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nsp: Option<NspMetrics>,
    /// Held-out reconstruction (`denoise` runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denoise: Option<DenoiseMetrics>,
}

/// `<out>/report.json` of `cargo xtask text`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextReport {
    /// Corpus file or directory.
    pub corpus: String,
    /// Paragraphs / tokens in each part.
    pub train_paragraphs: usize,
    /// Held-out paragraphs.
    pub heldout_paragraphs: usize,
    /// How many of the training paragraphs came from training-only text
    /// (`--train-corpus`).
    #[serde(default)]
    pub train_only_paragraphs: usize,
    /// Training tokens (no special tokens).
    pub train_tokens: usize,
    /// Held-out tokens.
    pub heldout_tokens: usize,
    /// Tokenizer vocabulary.
    pub vocab_size: usize,
    /// Model parameters.
    pub parameters: usize,
    /// The trained model on held-out masked tokens.
    pub heldout: MlmMetrics,
    /// The trained model's held-out next-sentence accuracy (`mlm,nsp`
    /// runs; chance is 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nsp: Option<NspMetrics>,
    /// The trained model's held-out reconstruction beside the copy and
    /// unigram-fill baselines (`denoise` runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denoise: Option<DenoiseMetrics>,
    /// `unigram` and `untrained` on the same masked tokens.
    pub baselines: HashMap<String, MlmMetrics>,
    /// The untrained model's held-out next-sentence accuracy (`mlm,nsp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nsp_untrained: Option<NspMetrics>,
    /// Periodic evaluations.
    pub history: Vec<EvalPoint>,
    /// Steps run (in this and earlier, resumed, runs).
    pub steps: usize,
    /// Training wall time of this run (s).
    pub train_seconds: f64,
    /// Training throughput of this run (tokens per second).
    pub tokens_per_s: f64,
    /// Whole command (s).
    pub total_seconds: f64,
    /// The settings.
    pub config: TextConfig,
}

impl TextReport {
    /// The report as markdown.
    pub fn to_markdown(&self) -> String {
        let row = |name: &str, m: &MlmMetrics| {
            let at_mask = m
                .top1_at_mask
                .map_or("–".to_string(), |v| format!("{:.2}%", 100.0 * v));
            format!(
                "| {name} | {:.2}% | {at_mask} | {:.2}% | {:.1} |\n",
                100.0 * m.top1,
                100.0 * m.top5,
                m.perplexity
            )
        };
        let mut s = format!(
            "# Text pretraining ({}) on {}\n\n{} training / {} held-out paragraphs ({} / {} tokens), WordPiece vocabulary {}; BERT {} layers x {} hidden x {} heads ({} parameters); {} steps of {} sequences of up to {} tokens in {:.0} s ({:.0} tokens/s).\n\nHeld-out masked tokens ({} of them, the same for every row; top-1 at `[MASK]` counts only those the model saw as `[MASK]`, not the ones left in place or swapped for a random token):\n\n| model | top-1 | top-1 at `[MASK]` | top-5 | perplexity |\n|---|---|---|---|---|\n",
            self.config.objectives.join(","), self.corpus, self.train_paragraphs, self.heldout_paragraphs, self.train_tokens, self.heldout_tokens,
            self.vocab_size, self.config.layers, self.config.hidden, self.config.heads, self.parameters,
            self.steps, self.config.batch_size, self.config.max_len, self.train_seconds, self.tokens_per_s,
            self.heldout.tokens
        );
        if self.train_only_paragraphs > 0 {
            s.insert_str(
                s.find("Held-out masked").expect("written above"),
                &format!(
                    "{} of the training paragraphs are training-only text, never held out.\n\n",
                    self.train_only_paragraphs
                ),
            );
        }
        s.push_str(&row("**trained BERT**", &self.heldout));
        for k in ["unigram", "untrained"] {
            if let Some(m) = self.baselines.get(k) {
                s.push_str(&row(k, m));
            }
        }
        s.push_str(&self.nsp_markdown());
        s.push_str(&self.denoise_markdown());
        s.push_str(&self.history_markdown());
        s
    }

    fn nsp_markdown(&self) -> String {
        let Some(n) = &self.nsp else {
            return String::new();
        };
        let untrained = self
            .nsp_untrained
            .map(|u| format!("{:.2}%", 100.0 * u.accuracy))
            .unwrap_or_else(|| "-".into());
        format!(
            "\nHeld-out next-sentence pairs ({} of them, {} with the second segment following the first): accuracy **{:.2}%** (untrained {untrained}, chance 50%).\n",
            n.pairs,
            n.is_next,
            100.0 * n.accuracy
        )
    }

    fn denoise_markdown(&self) -> String {
        let Some(d) = &self.denoise else {
            return String::new();
        };
        let pct = |v: f64| format!("{:.2}%", 100.0 * v);
        format!(
            "\nHeld-out reconstruction of span-corrupted text ({} tokens, {} of them corrupted):\n\n| predictor | all tokens | corrupted tokens |\n|---|---|---|\n| **trained BERT** | {} | {} |\n| copy the corrupted input | {} | 0.00% |\n| copy, fill spans with the most frequent token | {} | {} |\n",
            d.tokens,
            d.corrupted,
            pct(d.accuracy),
            pct(d.span_accuracy),
            pct(d.copy_accuracy),
            pct(d.unigram_fill_accuracy),
            pct(d.unigram_span_accuracy)
        )
    }

    fn history_markdown(&self) -> String {
        let mut s = String::from("\n| step | train loss | held-out top-1 | top-5 | perplexity |");
        let (nsp, den) = (self.nsp.is_some(), self.denoise.is_some());
        if nsp {
            s.push_str(" next-sentence |");
        }
        if den {
            s.push_str(" reconstruction |");
        }
        s.push_str("\n|---|---|---|---|---|");
        s.push_str(&"---|".repeat(usize::from(nsp) + usize::from(den)));
        s.push('\n');
        for p in &self.history {
            s.push_str(&format!(
                "| {} | {:.3} | {:.2}% | {:.2}% | {:.1} |",
                p.step,
                p.train_loss,
                100.0 * p.heldout.top1,
                100.0 * p.heldout.top5,
                p.heldout.perplexity
            ));
            if nsp {
                let v = p.nsp.map(|n| format!(" {:.2}% |", 100.0 * n.accuracy));
                s.push_str(&v.unwrap_or_else(|| " - |".into()));
            }
            if den {
                let v = p.denoise.map(|d| format!(" {:.2}% |", 100.0 * d.accuracy));
                s.push_str(&v.unwrap_or_else(|| " - |".into()));
            }
            s.push('\n');
        }
        s
    }
}
