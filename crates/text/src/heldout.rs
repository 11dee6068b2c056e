//! What a run trains and is measured on: the corpus tokenised into the
//! objective's examples, and the held-out text as each metric reads it
//! (masked tokens for every objective, sentence pairs for `mlm,nsp`,
//! corrupted sequences for `denoise`), with the unigram baseline.

use crate::bert::BertMlm;
use crate::config::TextConfig;
use crate::corpus::Corpus;
use crate::denoise::DenoiseMetrics;
use crate::mlm::{self, MlmAccumulator, MlmMetrics};
use crate::nsp::NspMetrics;
use crate::objective::{Examples, TextObjective};
use crate::tokenize;
use candle_core::{Device, Tensor, D};
use selfsup_core::{rng, Error, Result};
use tokenizers::Tokenizer;

/// Held-out metrics of `model` and of the unigram baseline on the same
/// masked tokens: `eval_passes` independent maskings of every sequence,
/// seeded by `seed`, so every call masks alike.
pub fn evaluate(
    model: &BertMlm,
    seqs: &[Vec<u32>],
    unigram: Option<&[f32]>,
    vocab: usize,
    cfg: &TextConfig,
    device: &Device,
) -> Result<(MlmMetrics, Option<MlmMetrics>)> {
    let (mut acc, mut uni) = (MlmAccumulator::default(), MlmAccumulator::default());
    let jobs: Vec<(usize, &Vec<u32>)> = (0..cfg.eval_passes.max(1))
        .flat_map(|pass| {
            seqs.iter()
                .enumerate()
                .map(move |(i, s)| (pass * seqs.len() + i, s))
        })
        .collect();
    for chunk in jobs.chunks(cfg.batch_size.max(1)) {
        let items: Vec<mlm::Masked> = chunk
            .iter()
            .map(|&(i, s)| {
                let mut r = rng::stream_at(cfg.seed, "heldout-mask", i as u64);
                mlm::mask(s, vocab, cfg.eval_mask_rate, &mut r)
            })
            .collect();
        let b = mlm::batch(&items);
        if b.at.is_empty() {
            continue;
        }
        let ids = Tensor::from_vec(b.ids.clone(), (b.b, b.t), device)?;
        let mask = Tensor::from_vec(b.mask.clone(), (b.b, b.t), device)?;
        let lp: Vec<Vec<f32>> =
            candle_nn::ops::log_softmax(&model.logits_at(&ids, &mask, &b.at)?, D::Minus1)?
                .to_device(&Device::Cpu)?
                .to_vec2()?;
        for ((row, &label), &at) in lp.iter().zip(&b.labels).zip(&b.at) {
            // Random replacements never draw a special token, so an input
            // that reads [MASK] at a chosen position was masked there.
            let at_mask = b.ids[at as usize] == crate::tokenize::MASK;
            acc.add(row, label, at_mask);
            if let Some(u) = unigram {
                uni.add(u, label, at_mask);
            }
        }
    }
    Ok((acc.finish(), unigram.map(|_| uni.finish())))
}

/// At most `max` of `items`, evenly spaced (all of them when they fit or
/// `max` is 0).
pub(crate) fn strided<T: Clone>(items: Vec<T>, max: usize) -> Vec<T> {
    let n = items.len();
    if max == 0 || n <= max {
        return items;
    }
    (0..max).map(|i| items[i * n / max].clone()).collect()
}

/// The held-out text as each metric reads it.
pub(crate) struct HeldOut {
    /// Sequences for the masked-token metrics (every objective).
    pub(crate) seqs: Vec<Vec<u32>>,
    /// Sentence pairs (`mlm,nsp`).
    pub(crate) pairs: Option<Vec<crate::nsp::Pair>>,
    /// Corrupted sequences (`denoise`).
    pub(crate) corrupted: Option<Vec<crate::denoise::Corrupted>>,
    /// The most frequent training token (the denoising fill baseline).
    pub(crate) fill: u32,
}

/// One evaluation of a model on [`HeldOut`].
pub(crate) struct Scores {
    pub(crate) mlm: MlmMetrics,
    pub(crate) unigram: Option<MlmMetrics>,
    pub(crate) nsp: Option<NspMetrics>,
    pub(crate) denoise: Option<DenoiseMetrics>,
}

impl HeldOut {
    pub(crate) fn evaluate(
        &self,
        model: &BertMlm,
        unigram: Option<&[f32]>,
        cfg: &TextConfig,
        device: &Device,
    ) -> Result<Scores> {
        let vocab = model.config.vocab_size;
        let (mlm, unigram) = evaluate(model, &self.seqs, unigram, vocab, cfg, device)?;
        let nsp = match &self.pairs {
            Some(p) => Some(crate::nsp::evaluate(model, p, cfg.batch_size, device)?),
            None => None,
        };
        let denoise = match &self.corrupted {
            Some(c) => Some(crate::denoise::evaluate(
                model,
                c,
                self.fill,
                cfg.batch_size,
                device,
            )?),
            None => None,
        };
        Ok(Scores {
            mlm,
            unigram,
            nsp,
            denoise,
        })
    }
}

/// A run's training examples and held-out text, tokenised.
pub(crate) struct Prepared {
    pub(crate) examples: Examples,
    pub(crate) held: HeldOut,
    pub(crate) unigram: Vec<f32>,
    pub(crate) train_tokens: usize,
    pub(crate) heldout_tokens: usize,
}

/// Fails, naming the problem, when `corpus` cannot train `cfg`'s
/// objective: next-sentence pairs need at least a batch of sentences in
/// two or more training paragraphs, and two held-out paragraphs. Cheap
/// (no tokenizer): commands call it before writing anything.
pub fn check_corpus(corpus: &Corpus, cfg: &TextConfig) -> Result<()> {
    if cfg.objective()? != TextObjective::MlmNsp {
        return Ok(());
    }
    for (part, paragraphs, need) in [
        ("training", &corpus.train, cfg.batch_size),
        ("held-out", &corpus.heldout, 1),
    ] {
        let counts: Vec<usize> = paragraphs
            .iter()
            .map(|p| crate::nsp::sentences(p).len())
            .filter(|&n| n > 0)
            .collect();
        let total: usize = counts.iter().sum();
        if counts.len() < 2 || total < need {
            return Err(pairs_error(part, total, counts.len(), need));
        }
    }
    Ok(())
}

fn pairs_error(part: &str, sentences: usize, paragraphs: usize, need: usize) -> Error {
    Error::invalid(
        "corpus",
        format!(
            "the {part} text has {sentences} sentence(s) in {paragraphs} paragraph(s); next-sentence pairs need at least {need} sentences in 2 paragraphs (a batch of pairs)"
        ),
    )
}

/// The sentences of `paragraphs` for pairs, or an error naming `part` when
/// they cannot make a pair (and, for training, a batch of pairs).
fn pair_sentences(
    paragraphs: &[String],
    tokenizer: &Tokenizer,
    part: &str,
    need: usize,
) -> Result<crate::nsp::Sentences> {
    let s = crate::nsp::Sentences::new(paragraphs, |t| tokenize::encode(tokenizer, t))?;
    if s.paragraphs() < 2 || s.len() < need {
        return Err(pairs_error(part, s.len(), s.paragraphs(), need));
    }
    Ok(s)
}

/// Tokenises `corpus` and builds what `cfg`'s objective trains and is
/// evaluated on.
pub(crate) fn prepare(
    corpus: &Corpus,
    cfg: &TextConfig,
    tokenizer: &Tokenizer,
    vocab: usize,
) -> Result<Prepared> {
    let enc = |ps: &[String]| -> Result<Vec<Vec<u32>>> {
        ps.iter().map(|p| tokenize::encode(tokenizer, p)).collect()
    };
    let train_ids = enc(&corpus.train)?;
    let held_ids = enc(&corpus.heldout)?;
    let seqs = strided(
        mlm::sequences(&held_ids, cfg.max_len),
        cfg.eval_max_sequences,
    );
    let unigram = mlm::unigram_log_probs(&train_ids, vocab);
    let fill = (0..unigram.len())
        .max_by(|&a, &b| unigram[a].total_cmp(&unigram[b]).then(b.cmp(&a)))
        .unwrap_or(0) as u32;
    let train_seqs = mlm::sequences(&train_ids, cfg.max_len);
    let objective = cfg.objective()?;
    let (examples, pairs, corrupted) = match objective {
        TextObjective::Mlm => (Examples::Sequences(train_seqs), None, None),
        TextObjective::MlmNsp => {
            let train = pair_sentences(&corpus.train, tokenizer, "training", cfg.batch_size)?;
            let held = pair_sentences(&corpus.heldout, tokenizer, "held-out", 1)?;
            let pairs =
                crate::nsp::heldout_pairs(&held, cfg.max_len, cfg.eval_max_sequences, cfg.seed);
            (Examples::Pairs(train), Some(pairs), None)
        }
        TextObjective::Denoise => {
            let c = crate::denoise::heldout(&seqs, cfg.denoise_rate, cfg.seed);
            (Examples::Spans(train_seqs), None, Some(c))
        }
    };
    if examples.is_empty() {
        return Err(Error::invalid(
            "corpus",
            "the training text has no tokens to train on",
        ));
    }
    Ok(Prepared {
        examples,
        held: HeldOut {
            seqs,
            pairs,
            corrupted,
            fill,
        },
        unigram,
        train_tokens: train_ids.iter().map(Vec::len).sum(),
        heldout_tokens: held_ids.iter().map(Vec::len).sum(),
    })
}
