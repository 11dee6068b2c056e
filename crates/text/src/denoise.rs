//! Denoising autoencoding for an encoder: span corruption with T5's noise
//! settings (15 % of the tokens, in spans of mean length 3), each corrupted
//! token replaced by `[MASK]` so the length is kept, and every token of the
//! input predicted — the uncorrupted ones copied, the masked spans filled.
//!
//! Reconstruction is scored per token on held-out text beside two
//! baselines that need no model: copying the corrupted input (right
//! everywhere but the spans) and copying with the spans filled by the most
//! frequent training token.

use crate::bert::BertMlm;
use crate::mlm;
use crate::tokenize::{MASK, SPECIALS};
use candle_core::{Device, Tensor, D};
use rand::Rng;
use selfsup_core::{rng, Result};
use serde::{Deserialize, Serialize};

/// T5's mean noise-span length.
pub const MEAN_SPAN: f64 = 3.0;

/// One corrupted sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Corrupted {
    /// Input ids, spans replaced by `[MASK]`.
    pub input: Vec<u32>,
    /// The original ids.
    pub target: Vec<u32>,
    /// Whether each position was corrupted.
    pub noise: Vec<bool>,
}

/// `n` split into `parts` positive lengths at random (all compositions
/// equally likely), as T5's span sampler does.
fn split(n: usize, parts: usize, rng: &mut impl Rng) -> Vec<usize> {
    // Choose parts - 1 distinct cut points among 1..n.
    let mut cuts = rand::seq::index::sample(rng, n - 1, parts - 1).into_vec();
    cuts.iter_mut().for_each(|c| *c += 1);
    cuts.sort_unstable();
    let mut out = Vec::with_capacity(parts);
    let mut prev = 0;
    for c in cuts.into_iter().chain(std::iter::once(n)) {
        out.push(c - prev);
        prev = c;
    }
    out
}

/// Corrupts the non-special tokens of `seq` (a `[CLS] … [SEP]` sequence):
/// `round(density · n)` of its `n` tokens (at least 1, fewer than `n`) in
/// `round(noise / 3)` spans (at least 1), spans and kept runs alternating
/// from a kept run on, their lengths drawn at random.
pub fn corrupt(seq: &[u32], density: f64, rng: &mut impl Rng) -> Corrupted {
    let special = SPECIALS.len() as u32;
    let body: Vec<usize> = (0..seq.len()).filter(|&i| seq[i] >= special).collect();
    let mut noise = vec![false; seq.len()];
    let n = body.len();
    if n >= 2 {
        let k = ((n as f64 * density).round() as usize).clamp(1, n - 1);
        let spans = ((k as f64 / MEAN_SPAN).round() as usize).clamp(1, k.min(n - k));
        let noisy = split(k, spans, rng);
        let kept = split(n - k, spans, rng);
        let mut at = 0;
        for (keep, span) in kept.into_iter().zip(noisy) {
            at += keep;
            for &i in &body[at..at + span] {
                noise[i] = true;
            }
            at += span;
        }
    }
    let input = seq
        .iter()
        .zip(&noise)
        .map(|(&t, &z)| if z { MASK } else { t })
        .collect();
    Corrupted {
        input,
        target: seq.to_vec(),
        noise,
    }
}

/// A padded batch whose loss covers every non-special token.
pub fn batch(items: &[Corrupted]) -> mlm::Batch {
    let special = SPECIALS.len() as u32;
    let masked: Vec<mlm::Masked> = items
        .iter()
        .map(|c| {
            let positions: Vec<usize> = (0..c.target.len())
                .filter(|&i| c.target[i] >= special)
                .collect();
            mlm::Masked {
                input: c.input.clone(),
                labels: positions.iter().map(|&i| c.target[i]).collect(),
                positions,
            }
        })
        .collect();
    mlm::batch(&masked)
}

/// Held-out reconstruction, per non-special token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct DenoiseMetrics {
    /// The model's top prediction is the original token, over all tokens.
    pub accuracy: f64,
    /// The same over the corrupted tokens only.
    pub span_accuracy: f64,
    /// Copying the corrupted input.
    pub copy_accuracy: f64,
    /// Copying, with every corrupted token filled by the most frequent
    /// training token.
    pub unigram_fill_accuracy: f64,
    /// That baseline over the corrupted tokens.
    pub unigram_span_accuracy: f64,
    /// Tokens scored.
    pub tokens: usize,
    /// Of them corrupted.
    pub corrupted: usize,
}

/// Accumulates [`DenoiseMetrics`].
#[derive(Debug, Default)]
pub struct DenoiseAccumulator {
    hits: usize,
    span_hits: usize,
    copy_hits: usize,
    fill_hits: usize,
    fill_span_hits: usize,
    n: usize,
    spans: usize,
}

impl DenoiseAccumulator {
    /// One token: the model's top prediction, the corrupted input, the
    /// original, whether it was corrupted, and the unigram fill token.
    pub fn add(&mut self, predicted: u32, input: u32, target: u32, noise: bool, fill: u32) {
        self.n += 1;
        self.hits += usize::from(predicted == target);
        self.copy_hits += usize::from(input == target);
        let filled = if noise { fill } else { input };
        self.fill_hits += usize::from(filled == target);
        if noise {
            self.spans += 1;
            self.span_hits += usize::from(predicted == target);
            self.fill_span_hits += usize::from(fill == target);
        }
    }

    /// The metrics so far.
    pub fn finish(&self) -> DenoiseMetrics {
        let (n, z) = (self.n.max(1) as f64, self.spans.max(1) as f64);
        DenoiseMetrics {
            accuracy: self.hits as f64 / n,
            span_accuracy: self.span_hits as f64 / z,
            copy_accuracy: self.copy_hits as f64 / n,
            unigram_fill_accuracy: self.fill_hits as f64 / n,
            unigram_span_accuracy: self.fill_span_hits as f64 / z,
            tokens: self.n,
            corrupted: self.spans,
        }
    }
}

/// The held-out corruptions: each sequence corrupted from its own seeded
/// stream, so every call corrupts alike.
pub fn heldout(seqs: &[Vec<u32>], density: f64, seed: u64) -> Vec<Corrupted> {
    seqs.iter()
        .enumerate()
        .map(|(i, s)| {
            corrupt(
                s,
                density,
                &mut rng::stream_at(seed, "heldout-denoise", i as u64),
            )
        })
        .collect()
}

/// Reconstruction of `items` by `model` (its top prediction at every
/// non-special token) beside the copy and unigram-fill baselines, `fill`
/// the most frequent training token.
pub fn evaluate(
    model: &BertMlm,
    items: &[Corrupted],
    fill: u32,
    batch_size: usize,
    device: &Device,
) -> Result<DenoiseMetrics> {
    let mut acc = DenoiseAccumulator::default();
    for chunk in items.chunks(batch_size.max(1)) {
        let b = batch(chunk);
        if b.at.is_empty() {
            continue;
        }
        let ids = Tensor::from_vec(b.ids.clone(), (b.b, b.t), device)?;
        let mask = Tensor::from_vec(b.mask.clone(), (b.b, b.t), device)?;
        let top: Vec<u32> = model
            .logits_at(&ids, &mask, &b.at)?
            .argmax(D::Minus1)?
            .to_device(&Device::Cpu)?
            .to_vec1()?;
        for (&at, &predicted) in b.at.iter().zip(&top) {
            let (i, p) = (at as usize / b.t, at as usize % b.t);
            let c = &chunk[i];
            acc.add(predicted, c.input[p], c.target[p], c.noise[p], fill);
        }
    }
    Ok(acc.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenize::{CLS, SEP};
    use rand::SeedableRng;

    #[test]
    fn corruption_follows_t5s_settings() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let seq: Vec<u32> = std::iter::once(CLS)
            .chain(10..110)
            .chain(std::iter::once(SEP))
            .collect();
        let (mut spans, mut noisy) = (0usize, 0usize);
        for _ in 0..200 {
            let c = corrupt(&seq, 0.15, &mut rng);
            assert_eq!(c.target, seq);
            assert!(!c.noise[0] && !c.noise[101], "a special token corrupted");
            // 15 of the 100 tokens, in round(15 / 3) = 5 spans.
            assert_eq!(c.noise.iter().filter(|&&z| z).count(), 15);
            let starts = (1..c.noise.len()).filter(|&i| c.noise[i] && !c.noise[i - 1]);
            let n_spans = starts.count();
            assert!(n_spans <= 5, "{n_spans} spans");
            // The first body token is never noise: a kept run comes first.
            assert!(!c.noise[1]);
            spans += n_spans;
            noisy += 15;
            for (i, (&a, &b)) in c.input.iter().zip(&seq).enumerate() {
                assert_eq!(a, if c.noise[i] { MASK } else { b });
            }
        }
        // Spans and kept runs alternate, so spans never touch: exactly 5.
        assert_eq!(spans, 5 * 200);
        assert!((noisy as f64 / spans as f64 - MEAN_SPAN).abs() < 1e-9);
        // Deterministic per seed.
        let a = corrupt(&seq, 0.15, &mut rand_chacha::ChaCha8Rng::seed_from_u64(9));
        let b = corrupt(&seq, 0.15, &mut rand_chacha::ChaCha8Rng::seed_from_u64(9));
        assert_eq!(a, b);
    }

    #[test]
    fn short_sequences_and_batches() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let one = corrupt(&[CLS, 20, SEP], 0.15, &mut rng);
        assert_eq!(one.noise, vec![false; 3], "a single token stays");
        let c = corrupt(&[CLS, 20, 21, 22, SEP], 0.5, &mut rng);
        assert_eq!(c.noise.iter().filter(|&&z| z).count(), 2);
        let b = batch(&[c.clone(), one]);
        assert_eq!((b.b, b.t), (2, 5));
        // Every non-special token is a target: 3 + 1.
        assert_eq!(b.at, vec![1, 2, 3, 6]);
        assert_eq!(b.labels, vec![20, 21, 22, 20]);
        assert_eq!(&b.ids[..5], c.input.as_slice());
    }

    #[test]
    fn metrics_count_each_baseline() {
        let mut acc = DenoiseAccumulator::default();
        // kept token, copied right by all
        acc.add(7, 7, 7, false, 9);
        // corrupted token whose original is the fill token
        acc.add(3, MASK, 9, true, 9);
        // corrupted token the model gets
        acc.add(8, MASK, 8, true, 9);
        let m = acc.finish();
        assert!((m.accuracy - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.span_accuracy - 0.5).abs() < 1e-12);
        assert!((m.copy_accuracy - 1.0 / 3.0).abs() < 1e-12);
        assert!((m.unigram_fill_accuracy - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.unigram_span_accuracy - 0.5).abs() < 1e-12);
        assert_eq!((m.tokens, m.corrupted), (3, 2));
    }
}
