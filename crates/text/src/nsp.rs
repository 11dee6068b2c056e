//! Next-sentence prediction: sentence pairs `[CLS] A [SEP] B [SEP]` with
//! segment ids, where B is either the text that follows A in the corpus
//! (label [`IS_NEXT`]) or a span from another paragraph ([`NOT_NEXT`]),
//! each with probability one half, as in BERT. The labels follow Hugging
//! Face's `BertForPreTraining` (0 = B continues A).

use crate::bert::BertMlm;
use crate::mlm;
use crate::tokenize::{CLS, SEP};
use candle_core::{Device, Tensor};
use rand::Rng;
use selfsup_core::{rng, Result};
use serde::{Deserialize, Serialize};

/// Label of a pair whose second segment follows the first.
pub const IS_NEXT: u32 = 0;
/// Label of a pair whose second segment comes from another paragraph.
pub const NOT_NEXT: u32 = 1;

/// The sentences of `text`: split after `.`, `!` or `?` followed by a
/// space; the punctuation stays with its sentence.
pub fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    for i in 0..bytes.len().saturating_sub(1) {
        if matches!(bytes[i], b'.' | b'!' | b'?') && bytes[i + 1] == b' ' {
            out.push(text[start..=i].trim());
            start = i + 1;
        }
    }
    out.push(text[start..].trim());
    out.retain(|s| !s.is_empty());
    out
}

/// A corpus part as tokenised sentences, each with its paragraph.
#[derive(Debug, Clone)]
pub struct Sentences {
    /// Token ids of each sentence, in corpus order.
    pub ids: Vec<Vec<u32>>,
    /// The paragraph each sentence belongs to.
    pub paragraph: Vec<usize>,
}

impl Sentences {
    /// Tokenises `paragraphs` sentence by sentence with `encode`
    /// (empty sentences dropped).
    pub fn new(
        paragraphs: &[String],
        mut encode: impl FnMut(&str) -> selfsup_core::Result<Vec<u32>>,
    ) -> selfsup_core::Result<Self> {
        let (mut ids, mut paragraph) = (Vec::new(), Vec::new());
        for (p, text) in paragraphs.iter().enumerate() {
            for s in sentences(text) {
                let t = encode(s)?;
                if !t.is_empty() {
                    ids.push(t);
                    paragraph.push(p);
                }
            }
        }
        Ok(Self { ids, paragraph })
    }

    /// Sentences.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Paragraphs that hold at least one sentence.
    pub fn paragraphs(&self) -> usize {
        let mut p = self.paragraph.clone();
        p.dedup();
        p.len()
    }

    /// Segment A from sentence `s`: whole sentences of `s`'s paragraph
    /// while they fit in `budget` (the first cut if it alone is longer).
    /// Returns the tokens and the sentence after the last one used.
    fn first_segment(&self, s: usize, budget: usize) -> (Vec<u32>, usize) {
        let mut out: Vec<u32> = Vec::new();
        let mut i = s;
        while i < self.len() && self.paragraph[i] == self.paragraph[s] {
            let room = budget - out.len();
            if room == 0 || (!out.is_empty() && self.ids[i].len() > room) {
                break;
            }
            out.extend_from_slice(&self.ids[i][..self.ids[i].len().min(room)]);
            i += 1;
        }
        (out, i)
    }

    /// Segment B: the text from sentence `s` on, across paragraph breaks,
    /// cut at `budget` tokens, stopping before paragraph `avoid` and at the
    /// end of the corpus.
    fn second_segment(&self, s: usize, budget: usize, avoid: Option<usize>) -> Vec<u32> {
        let mut out: Vec<u32> = Vec::new();
        let mut i = s;
        while i < self.len() && out.len() < budget && Some(self.paragraph[i]) != avoid {
            let room = budget - out.len();
            out.extend_from_slice(&self.ids[i][..self.ids[i].len().min(room)]);
            i += 1;
        }
        out
    }
}

/// One sentence pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    /// `[CLS] A [SEP] B [SEP]`.
    pub ids: Vec<u32>,
    /// 0 for `[CLS] A [SEP]`, 1 for `B [SEP]`.
    pub types: Vec<u32>,
    /// [`IS_NEXT`] or [`NOT_NEXT`].
    pub label: u32,
}

/// The pair that starts at sentence `s` of `sents`, at most `max_len`
/// tokens: A is whole sentences of `s`'s paragraph up to half the room;
/// with probability one half (always when nothing follows A) B is the text
/// from a random sentence of another paragraph on, otherwise the text that
/// follows A; either fills the rest of the room (so its length says
/// nothing of the label) and a random B never enters A's paragraph. Needs
/// sentences from at least two paragraphs.
pub fn pair(sents: &Sentences, s: usize, max_len: usize, rng: &mut impl Rng) -> Pair {
    let room = max_len.saturating_sub(3).max(2);
    let (a, after) = sents.first_segment(s, room / 2);
    let random = after >= sents.len() || rng.random_bool(0.5);
    let b = if random {
        let own = sents.paragraph[s];
        let start = other_paragraph_sentence(sents, own, rng);
        sents.second_segment(start, room - a.len(), Some(own))
    } else {
        sents.second_segment(after, room - a.len(), None)
    };
    let mut ids = Vec::with_capacity(a.len() + b.len() + 3);
    ids.push(CLS);
    ids.extend_from_slice(&a);
    ids.push(SEP);
    let first = ids.len();
    ids.extend_from_slice(&b);
    ids.push(SEP);
    let types = (0..ids.len()).map(|i| u32::from(i >= first)).collect();
    Pair {
        ids,
        types,
        label: if random { NOT_NEXT } else { IS_NEXT },
    }
}

/// A random sentence outside paragraph `not`.
fn other_paragraph_sentence(sents: &Sentences, not: usize, rng: &mut impl Rng) -> usize {
    let outside = sents.paragraph.iter().filter(|&&p| p != not).count();
    debug_assert!(outside > 0, "pairs need two paragraphs");
    let k = rng.random_range(0..outside.max(1));
    sents
        .paragraph
        .iter()
        .enumerate()
        .filter(|(_, &p)| p != not)
        .nth(k)
        .map(|(i, _)| i)
        .unwrap_or(0)
}

/// A batch of `pairs`, masked for the MLM loss as `masked` (one per pair,
/// from [`mlm::mask`] of its ids), with segment ids and NSP labels.
pub fn batch(pairs: &[Pair], masked: Vec<mlm::Masked>) -> mlm::Batch {
    let mut b = mlm::batch(&masked);
    let mut types = vec![0u32; b.b * b.t];
    for (i, p) in pairs.iter().enumerate() {
        types[i * b.t..i * b.t + p.types.len()].copy_from_slice(&p.types);
    }
    b.types = Some(types);
    b.next = Some(pairs.iter().map(|p| p.label).collect());
    b
}

/// Held-out next-sentence accuracy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct NspMetrics {
    /// Pairs whose label the model's larger logit gets right.
    pub accuracy: f64,
    /// Pairs scored.
    pub pairs: usize,
    /// Of them with the second segment following the first.
    pub is_next: usize,
}

/// The held-out pairs: one from each of at most `max` starting sentences
/// (evenly spaced, as the held-out sequences are chosen), each drawn from its own seeded stream, so every call
/// builds the same pairs.
pub fn heldout_pairs(sents: &Sentences, max_len: usize, max: usize, seed: u64) -> Vec<Pair> {
    crate::heldout::strided((0..sents.len()).collect(), max)
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            pair(
                sents,
                s,
                max_len,
                &mut rng::stream_at(seed, "heldout-pair", i as u64),
            )
        })
        .collect()
}

/// Next-sentence accuracy of `model` on `pairs`, `batch` pairs at a time.
pub fn evaluate(
    model: &BertMlm,
    pairs: &[Pair],
    batch: usize,
    device: &Device,
) -> Result<NspMetrics> {
    let (mut right, mut is_next) = (0usize, 0usize);
    for chunk in pairs.chunks(batch.max(1)) {
        let unmasked: Vec<mlm::Masked> = chunk
            .iter()
            .map(|p| mlm::Masked {
                input: p.ids.clone(),
                positions: Vec::new(),
                labels: Vec::new(),
            })
            .collect();
        let b = self::batch(chunk, unmasked);
        let ids = Tensor::from_vec(b.ids, (b.b, b.t), device)?;
        let mask = Tensor::from_vec(b.mask, (b.b, b.t), device)?;
        let types = Tensor::from_vec(b.types.unwrap_or_default(), (b.b, b.t), device)?;
        let h = model.encode_typed(&ids, &mask, Some(&types))?;
        let logits: Vec<Vec<f32>> = model.nsp_logits(&h)?.to_device(&Device::Cpu)?.to_vec2()?;
        for (l, p) in logits.iter().zip(chunk) {
            let predicted = if l[0] >= l[1] { IS_NEXT } else { NOT_NEXT };
            right += usize::from(predicted == p.label);
            is_next += usize::from(p.label == IS_NEXT);
        }
    }
    Ok(NspMetrics {
        accuracy: right as f64 / pairs.len().max(1) as f64,
        pairs: pairs.len(),
        is_next,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn corpus() -> Sentences {
        // Paragraph p, sentence j: tokens 100·p + 10·j + (0..3).
        let ids: Vec<Vec<u32>> = (0..4)
            .flat_map(|p| (0..3).map(move |j| (0..3).map(|k| 100 * p + 10 * j + k).collect()))
            .collect();
        let paragraph = (0..4).flat_map(|p| [p as usize; 3]).collect();
        Sentences { ids, paragraph }
    }

    #[test]
    fn sentences_split_after_end_punctuation() {
        assert_eq!(
            sentences("One two. Three? Four! e.g.x five."),
            vec!["One two.", "Three?", "Four!", "e.g.x five."]
        );
        assert_eq!(sentences("  "), Vec::<&str>::new());
    }

    #[test]
    fn pairs_continue_or_come_from_another_paragraph() {
        let s = corpus();
        assert_eq!(s.paragraphs(), 4);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let (mut next, mut random) = (0, 0);
        for i in 0..400 {
            let start = i % s.len();
            let p = pair(&s, start, 11, &mut rng);
            // Room 8: A is one whole sentence (3 tokens fit in 4, 6 do not).
            assert!(p.ids.len() <= 11, "{p:?}");
            assert_eq!(
                (p.ids[0], p.ids[4], *p.ids.last().unwrap()),
                (CLS, SEP, SEP)
            );
            assert_eq!(&p.ids[1..4], s.ids[start].as_slice());
            let want: Vec<u32> = (0..p.ids.len()).map(|i| u32::from(i > 4)).collect();
            assert_eq!(p.types, want);
            let b = &p.ids[5..p.ids.len() - 1];
            if p.label == IS_NEXT {
                next += 1;
                assert_eq!(&b[..3], s.ids[start + 1].as_slice(), "{p:?}");
                // B fills the room unless the corpus ends.
                assert!(b.len() == 5 || start + 2 >= s.len() - 1, "{p:?}");
            } else {
                random += 1;
                let own = s.paragraph[start] as u32;
                assert!(b.iter().all(|&t| t / 100 != own), "{p:?}");
            }
        }
        // The last sentence has no continuation: always random.
        let last = pair(&s, s.len() - 1, 11, &mut rng);
        assert_eq!(last.label, NOT_NEXT);
        assert!((150..250).contains(&next) && next + random == 400, "{next}");
    }

    #[test]
    fn batches_carry_segments_and_labels() {
        let s = corpus();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let pairs: Vec<Pair> = (0..3).map(|i| pair(&s, i, 11, &mut rng)).collect();
        let masked = pairs
            .iter()
            .map(|p| mlm::mask(&p.ids, 500, 0.15, &mut rng))
            .collect();
        let b = batch(&pairs, masked);
        assert_eq!((b.b, b.t), (3, 11));
        assert_eq!(b.types.as_ref().unwrap()[..11], pairs[0].types[..]);
        let labels: Vec<u32> = pairs.iter().map(|p| p.label).collect();
        assert_eq!(b.next, Some(labels));
        assert!(!b.at.is_empty());
    }
}
