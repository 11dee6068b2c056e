//! BERT's masked-token objective: sequences cut from the token stream,
//! the 15 % / 80-10-10 masking, and masked-token accuracy and perplexity
//! for a model or a unigram baseline.

use crate::tokenize::{CLS, MASK, PAD, SEP, SPECIALS};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Cuts the concatenated token ids of `paragraphs` (each paragraph's ids,
/// one after the other) into `[CLS] ... [SEP]` sequences of at most
/// `max_len` tokens; only the last may be shorter.
pub fn sequences(paragraphs: &[Vec<u32>], max_len: usize) -> Vec<Vec<u32>> {
    let body = max_len.saturating_sub(2).max(1);
    let stream: Vec<u32> = paragraphs.iter().flatten().copied().collect();
    stream
        .chunks(body)
        .map(|c| {
            let mut s = Vec::with_capacity(c.len() + 2);
            s.push(CLS);
            s.extend_from_slice(c);
            s.push(SEP);
            s
        })
        .collect()
}

/// One masked sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Masked {
    /// Input ids after masking.
    pub input: Vec<u32>,
    /// Positions chosen for the loss.
    pub positions: Vec<usize>,
    /// The original ids at those positions.
    pub labels: Vec<u32>,
}

/// BERT masking: each non-special token is chosen with probability `rate`
/// (at least one per sequence when it has any); a chosen token becomes
/// `[MASK]` with probability 0.8, a random non-special token with 0.1, and
/// stays unchanged with 0.1.
pub fn mask(ids: &[u32], vocab: usize, rate: f64, rng: &mut impl Rng) -> Masked {
    let special = SPECIALS.len() as u32;
    let candidates: Vec<usize> = (0..ids.len()).filter(|&i| ids[i] >= special).collect();
    let mut positions: Vec<usize> = candidates
        .iter()
        .copied()
        .filter(|_| rng.random_bool(rate))
        .collect();
    if positions.is_empty() && !candidates.is_empty() {
        positions.push(candidates[rng.random_range(0..candidates.len())]);
    }
    let mut input = ids.to_vec();
    let labels: Vec<u32> = positions.iter().map(|&p| ids[p]).collect();
    for &p in &positions {
        let r: f64 = rng.random();
        if r < 0.8 {
            input[p] = MASK;
        } else if r < 0.9 {
            input[p] = rng.random_range(special..vocab as u32);
        }
    }
    Masked {
        input,
        positions,
        labels,
    }
}

/// A padded batch: ids and attention mask (B, T) row-major, and the flat
/// positions (b * T + t) and labels of the masked tokens.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Sequences.
    pub b: usize,
    /// Padded length.
    pub t: usize,
    /// Input ids, `PAD` after each sequence's end.
    pub ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub mask: Vec<u32>,
    /// Flat masked positions.
    pub at: Vec<u32>,
    /// Their original ids.
    pub labels: Vec<u32>,
    /// Segment ids (B, T) for sentence pairs; `None` means all 0.
    pub types: Option<Vec<u32>>,
    /// Next-sentence labels (B) for sentence pairs.
    pub next: Option<Vec<u32>>,
}

/// Pads masked sequences into one batch.
pub fn batch(items: &[Masked]) -> Batch {
    let t = items.iter().map(|m| m.input.len()).max().unwrap_or(0);
    let b = items.len();
    let mut out = Batch {
        b,
        t,
        ids: vec![PAD; b * t],
        mask: vec![0; b * t],
        at: Vec::new(),
        labels: Vec::new(),
        types: None,
        next: None,
    };
    for (i, m) in items.iter().enumerate() {
        out.ids[i * t..i * t + m.input.len()].copy_from_slice(&m.input);
        out.mask[i * t..i * t + m.input.len()].fill(1);
        out.at
            .extend(m.positions.iter().map(|&p| (i * t + p) as u32));
        out.labels.extend_from_slice(&m.labels);
    }
    out
}

/// Masked-token accuracy and perplexity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MlmMetrics {
    /// Fraction of masked tokens whose original is the top prediction.
    pub top1: f64,
    /// Fraction whose original is among the top 5.
    pub top5: f64,
    /// exp(mean negative log-likelihood of the originals).
    pub perplexity: f64,
    /// Masked tokens evaluated.
    pub tokens: usize,
    /// Top-1 at the chosen tokens the model saw as `[MASK]` (80 % of
    /// them; the others show a random token or the token itself, which a
    /// model that copies its input gets right). Absent from reports
    /// written before it was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top1_at_mask: Option<f64>,
}

/// Accumulates [`MlmMetrics`] from per-token log-probability rows.
#[derive(Debug, Default)]
pub struct MlmAccumulator {
    top1: usize,
    top5: usize,
    nll: f64,
    n: usize,
    top1_at_mask: usize,
    n_at_mask: usize,
}

impl MlmAccumulator {
    /// Adds one masked token: its log-probabilities over the vocabulary,
    /// the original id, and whether the input showed `[MASK]` there. Ties
    /// rank the original last (pessimistic).
    pub fn add(&mut self, log_probs: &[f32], label: u32, at_mask: bool) {
        let target = log_probs[label as usize];
        let better = log_probs.iter().filter(|&&v| v >= target).count() - 1;
        self.top1 += usize::from(better < 1);
        if at_mask {
            self.top1_at_mask += usize::from(better < 1);
            self.n_at_mask += 1;
        }
        self.top5 += usize::from(better < 5);
        self.nll -= f64::from(target);
        self.n += 1;
    }

    /// The metrics so far.
    pub fn finish(&self) -> MlmMetrics {
        let n = self.n.max(1) as f64;
        MlmMetrics {
            top1: self.top1 as f64 / n,
            top5: self.top5 as f64 / n,
            perplexity: (self.nll / n).exp(),
            tokens: self.n,
            top1_at_mask: (self.n_at_mask > 0)
                .then(|| self.top1_at_mask as f64 / self.n_at_mask as f64),
        }
    }
}

/// Unigram log-probabilities of the training tokens (add-one smoothed over
/// the non-special vocabulary; special tokens get none).
pub fn unigram_log_probs(train: &[Vec<u32>], vocab: usize) -> Vec<f32> {
    let special = SPECIALS.len();
    let mut counts = vec![1.0f64; vocab];
    counts[..special].fill(0.0);
    for &id in train.iter().flatten() {
        if (id as usize) >= special && (id as usize) < vocab {
            counts[id as usize] += 1.0;
        }
    }
    let total: f64 = counts.iter().sum();
    counts
        .iter()
        .map(|&c| {
            if c > 0.0 {
                (c / total).ln() as f32
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn masking_statistics_match_bert() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let vocab = 1000;
        let seq: Vec<u32> = std::iter::once(CLS)
            .chain((0..126).map(|i| 5 + (i * 37 % 990) as u32))
            .chain(std::iter::once(SEP))
            .collect();
        let (mut chosen, mut total, mut masked, mut random, mut kept) = (0, 0, 0, 0, 0);
        for _ in 0..800 {
            let m = mask(&seq, vocab, 0.15, &mut rng);
            total += 126;
            chosen += m.positions.len();
            for (&p, &l) in m.positions.iter().zip(&m.labels) {
                assert!(p != 0 && p != seq.len() - 1, "special token chosen");
                assert_eq!(seq[p], l);
                match m.input[p] {
                    MASK => masked += 1,
                    x if x == l => kept += 1,
                    x => {
                        assert!(x >= 5, "random replacement is a special token");
                        random += 1
                    }
                }
            }
            // Unchosen positions are untouched.
            for (i, (got, was)) in m.input.iter().zip(&seq).enumerate() {
                if !m.positions.contains(&i) {
                    assert_eq!(got, was);
                }
            }
        }
        let frac = |a: usize| a as f64 / chosen as f64;
        let rate = chosen as f64 / total as f64;
        assert!((rate - 0.15).abs() < 0.005, "chosen {rate}");
        assert!((frac(masked) - 0.8).abs() < 0.01, "mask {}", frac(masked));
        // A random draw can hit the original id (1 in 995): counted as kept.
        assert!((frac(random) - 0.1).abs() < 0.01, "random {}", frac(random));
        assert!((frac(kept) - 0.1).abs() < 0.01, "kept {}", frac(kept));
    }

    #[test]
    fn sequences_batches_and_metrics() {
        let paras = vec![vec![10, 11, 12], vec![13, 14]];
        let s = sequences(&paras, 4);
        assert_eq!(
            s,
            vec![
                vec![CLS, 10, 11, SEP],
                vec![CLS, 12, 13, SEP],
                vec![CLS, 14, SEP]
            ]
        );
        let ms: Vec<Masked> = s
            .iter()
            .map(|x| Masked {
                input: x.clone(),
                positions: vec![1],
                labels: vec![x[1]],
            })
            .collect();
        let b = batch(&ms);
        assert_eq!((b.b, b.t), (3, 4));
        assert_eq!(&b.ids[8..], &[CLS, 14, SEP, PAD]);
        assert_eq!(&b.mask[8..], &[1, 1, 1, 0]);
        assert_eq!(b.at, vec![1, 5, 9]);
        let mut acc = MlmAccumulator::default();
        let lp = [-3.0f32, -0.5, -1.0, -2.0, -4.0, -5.0, -6.0];
        assert_eq!(acc.finish().top1_at_mask, None);
        acc.add(&lp, 1, false); // top-1, the token itself shown
        acc.add(&lp, 3, true); // rank 3
        acc.add(&lp, 6, false); // rank 7
        let m = acc.finish();
        assert!((m.top1 - 1.0 / 3.0).abs() < 1e-12);
        // Only the one shown as [MASK] counts there: ranked 3rd, so 0.
        assert_eq!(m.top1_at_mask, Some(0.0));
        acc.add(&lp, 1, true);
        assert_eq!(acc.finish().top1_at_mask, Some(0.5));
        assert!((m.top5 - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.perplexity - ((0.5 + 2.0 + 6.0) / 3.0f64).exp()).abs() < 1e-9);
        let u = unigram_log_probs(&[vec![5, 5, 6]], 7);
        assert_eq!(u[0], f32::NEG_INFINITY);
        // counts 1 + 2 and 1 + 1 over 5 smoothed tokens
        assert!((u[5] - (3.0f32 / 5.0).ln()).abs() < 1e-6);
    }
}
