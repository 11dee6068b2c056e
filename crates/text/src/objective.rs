//! The text pretraining objectives and where each one's training
//! examples come from.
//!
//! - `mlm`: BERT's masked-token prediction on sequences cut from the token
//!   stream;
//! - `mlm,nsp`: the same masking on sentence pairs, plus next-sentence
//!   prediction ([`crate::nsp`]): BERT's original recipe;
//! - `denoise`: span corruption with T5's noise settings, every token of
//!   the input reconstructed ([`crate::denoise`]).

use crate::{denoise, mlm, nsp};
use selfsup_core::{rng, Error, Result};

/// One of the objective sets a run can train with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextObjective {
    /// Masked-token prediction.
    Mlm,
    /// Masked-token and next-sentence prediction.
    MlmNsp,
    /// Reconstruction of every token of a span-corrupted input.
    Denoise,
}

/// The `objectives` values a run accepts.
pub const CHOICES: [&str; 3] = ["mlm", "mlm,nsp", "denoise"];

impl TextObjective {
    /// Parses the `objectives` list (order does not matter).
    pub fn parse(names: &[String]) -> Result<Self> {
        let mut v: Vec<&str> = names.iter().map(|s| s.trim()).collect();
        v.sort_unstable();
        v.dedup();
        match v.as_slice() {
            ["mlm"] => Ok(Self::Mlm),
            ["mlm", "nsp"] => Ok(Self::MlmNsp),
            ["denoise"] => Ok(Self::Denoise),
            _ => Err(Error::invalid(
                "objectives",
                format!(
                    "{:?} is not a set the trainer knows; choose one of {}",
                    names.join(","),
                    CHOICES.join(" | ")
                ),
            )),
        }
    }

    /// Whether the model needs the next-sentence head.
    pub fn has_nsp(self) -> bool {
        self == Self::MlmNsp
    }
}

/// A run's training examples.
pub enum Examples {
    /// `[CLS] … [SEP]` sequences, masked BERT-style each time they are used.
    Sequences(Vec<Vec<u32>>),
    /// Sentences to cut pairs from, one pair per starting sentence.
    Pairs(nsp::Sentences),
    /// Sequences, span-corrupted each time they are used.
    Spans(Vec<Vec<u32>>),
}

impl Examples {
    /// Examples per epoch.
    pub fn len(&self) -> usize {
        match self {
            Self::Sequences(s) | Self::Spans(s) => s.len(),
            Self::Pairs(p) => p.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The batch of examples `which`, the first of them the run's
    /// `first`-th example drawn: each example's masking (and pair) comes
    /// from its own seeded stream, so a resumed run draws the same.
    pub fn batch(
        &self,
        which: &[usize],
        first: usize,
        vocab: usize,
        (rate, max_len, seed): (f64, usize, u64),
    ) -> mlm::Batch {
        let stream = |name: &str, i: usize| rng::stream_at(seed, name, (first + i) as u64);
        match self {
            Self::Sequences(seqs) => {
                let items: Vec<mlm::Masked> = which
                    .iter()
                    .enumerate()
                    .map(|(i, &s)| mlm::mask(&seqs[s], vocab, rate, &mut stream("mlm-mask", i)))
                    .collect();
                mlm::batch(&items)
            }
            Self::Pairs(sents) => {
                let mut items = Vec::with_capacity(which.len());
                let mut masked = Vec::with_capacity(which.len());
                for (i, &s) in which.iter().enumerate() {
                    let mut r = stream("nsp-pair", i);
                    let p = nsp::pair(sents, s, max_len, &mut r);
                    masked.push(mlm::mask(&p.ids, vocab, rate, &mut r));
                    items.push(p);
                }
                nsp::batch(&items, masked)
            }
            Self::Spans(seqs) => {
                let items: Vec<denoise::Corrupted> = which
                    .iter()
                    .enumerate()
                    .map(|(i, &s)| denoise::corrupt(&seqs[s], rate, &mut stream("denoise", i)))
                    .collect();
                denoise::batch(&items)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(s: &str) -> Vec<String> {
        s.split(',').map(String::from).collect()
    }

    #[test]
    fn objective_sets_parse_in_any_order_and_others_are_refused() {
        assert_eq!(
            TextObjective::parse(&names("mlm")).unwrap(),
            TextObjective::Mlm
        );
        assert_eq!(
            TextObjective::parse(&names("nsp,mlm")).unwrap(),
            TextObjective::MlmNsp
        );
        assert_eq!(
            TextObjective::parse(&names("denoise")).unwrap(),
            TextObjective::Denoise
        );
        let e = TextObjective::parse(&names("mlm,denoise"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"mlm,denoise\"") && e.contains("mlm,nsp"),
            "{e}"
        );
        assert!(TextObjective::parse(&names("nsp")).is_err());
    }
}
