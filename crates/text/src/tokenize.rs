//! WordPiece tokenizers trained with the `tokenizers` crate: BERT
//! normalisation (lower-casing, accent stripping), BERT pre-tokenisation,
//! `##` continuation pieces, and the five special tokens at ids 0..4.

use ahash::AHashMap;
use compact_str::CompactString;
use selfsup_core::{Error, Result};
use std::path::Path;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{
    AddedToken, Model, NormalizedString, Normalizer, OffsetReferential, OffsetType,
    PreTokenizedString, PreTokenizer, Tokenizer,
};

/// The special tokens, in id order.
pub const SPECIALS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
/// Id of `[PAD]`.
pub const PAD: u32 = 0;
/// Id of `[UNK]`.
pub const UNK: u32 = 1;
/// Id of `[CLS]`.
pub const CLS: u32 = 2;
/// Id of `[SEP]`.
pub const SEP: u32 = 3;
/// Id of `[MASK]`.
pub const MASK: u32 = 4;

fn tok_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::invalid("tokenizer", format!("{what}: {e}"))
}

/// Trains a WordPiece tokenizer of at most `vocab_size` tokens on
/// `paragraphs`, deterministically: the same paragraphs give the same
/// vocabulary and the same ids in every process.
///
/// This is the `tokenizers` crate's WordPiece training (its BPE trainer
/// learning `##` merges, then `WordPiece::from_bpe`), fed by hand: the
/// crate's own `Tokenizer::train` counts words in a hash map with
/// per-process random keys, and the trainer numbers continuation pieces in
/// that map's iteration order and breaks ties between equally frequent
/// pairs by those numbers, so two trainings on one corpus could differ by a
/// token (measured: 5,518 vs 5,519 on the Rust book). Here the word counts
/// live in a map with fixed keys, filled in corpus order.
pub fn train(paragraphs: &[String], vocab_size: usize) -> Result<Tokenizer> {
    let normalizer = BertNormalizer::default();
    let mut words: AHashMap<CompactString, u64> = AHashMap::with_hasher(
        ahash::RandomState::with_seeds(0x5e1f_5e1f, 0x0bad_cafe, 0x2718_2818, 0x3141_5926),
    );
    for p in paragraphs {
        let mut n = NormalizedString::from(p.as_str());
        normalizer
            .normalize(&mut n)
            .map_err(|e| tok_err("normalising", e))?;
        let mut pre = PreTokenizedString::from(n);
        BertPreTokenizer
            .pre_tokenize(&mut pre)
            .map_err(|e| tok_err("pre-tokenising", e))?;
        for (w, _, _) in pre.get_splits(OffsetReferential::Original, OffsetType::Byte) {
            *words.entry(CompactString::from(w)).or_default() += 1;
        }
    }
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(
            SPECIALS
                .iter()
                .map(|s| AddedToken::from(*s, true))
                .collect(),
        )
        .continuing_subword_prefix("##".into())
        .build();
    let mut bpe = BPE::default();
    trainer
        .do_train(&words, &mut bpe)
        .map_err(|e| tok_err("training", e))?;
    let mut tk = canonical(&WordPiece::from_bpe(&bpe))?;
    tk.with_post_processor(Some(BertProcessing::new(
        ("[SEP]".into(), SEP),
        ("[CLS]".into(), CLS),
    )));
    check_specials(&tk, Path::new("(trained tokenizer)"))?;
    Ok(tk)
}

/// The trained vocabulary with ids in a fixed order — the specials at
/// 0..4, then whole-word pieces, then `##` continuations, each sorted — and
/// BERT's normaliser, pre-tokeniser and decoder around it.
fn canonical(trained: &WordPiece) -> Result<Tokenizer> {
    let mut rest: Vec<String> = trained
        .get_vocab()
        .into_keys()
        .filter(|t| !SPECIALS.contains(&t.as_str()))
        .collect();
    rest.sort_by(|a, b| (a.starts_with("##"), a).cmp(&(b.starts_with("##"), b)));
    let vocab: AHashMap<String, u32> = SPECIALS
        .iter()
        .map(|s| s.to_string())
        .chain(rest)
        .enumerate()
        .map(|(i, t)| (t, i as u32))
        .collect();
    let model = WordPiece::builder()
        .vocab(vocab)
        .unk_token(SPECIALS[UNK as usize].into())
        .continuing_subword_prefix("##".into())
        .build()
        .map_err(|e| tok_err("building the vocabulary", e))?;
    let mut tk = Tokenizer::new(model);
    tk.with_normalizer(Some(BertNormalizer::default()))
        .map_err(|e| tok_err("setting the normalizer", e))?;
    tk.with_pre_tokenizer(Some(BertPreTokenizer));
    tk.with_decoder(Some(WordPieceDecoder::default()));
    tk.add_special_tokens(SPECIALS.iter().map(|s| AddedToken::from(*s, true)))
        .map_err(|e| tok_err("adding the special tokens", e))?;
    Ok(tk)
}

/// Checks that the special tokens sit at ids 0..4.
fn check_specials(tk: &Tokenizer, path: &Path) -> Result<()> {
    for (id, s) in SPECIALS.iter().enumerate() {
        if tk.token_to_id(s) != Some(id as u32) {
            return Err(Error::format(
                path,
                format!(
                    "special token {s} must have id {id}, found {:?}",
                    tk.token_to_id(s)
                ),
            ));
        }
    }
    Ok(())
}

/// Writes `tokenizer.json` atomically.
pub fn save(tk: &Tokenizer, path: &Path) -> Result<()> {
    let json = tk.to_string(true).map_err(|e| tok_err("serialising", e))?;
    selfsup_core::fsutil::write_atomic(path, json.as_bytes())
}

/// Reads a `tokenizer.json` written by [`save`] (or any BERT-style one
/// with the same special-token ids).
pub fn load(path: &Path) -> Result<Tokenizer> {
    let tk = Tokenizer::from_file(path).map_err(|e| Error::format(path, e.to_string()))?;
    check_specials(&tk, path)?;
    Ok(tk)
}

/// Token ids of `text` without special tokens.
pub fn encode(tk: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tk
        .encode(text, false)
        .map_err(|e| tok_err("encoding", e))?
        .get_ids()
        .to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<String> {
        let base = [
            "The borrow checker ensures references are valid.",
            "Ownership rules: each value has an owner.",
            "A reference borrows a value without taking ownership.",
            "Cargo builds your code and downloads dependencies.",
        ];
        (0..20).map(|i| base[i % base.len()].to_string()).collect()
    }

    #[test]
    fn round_trip_and_special_ids() {
        let tk = train(&corpus(), 300).unwrap();
        for (i, s) in SPECIALS.iter().enumerate() {
            assert_eq!(tk.token_to_id(s), Some(i as u32));
        }
        let text = "each value has an owner.";
        let ids = encode(&tk, text).unwrap();
        assert!(!ids.contains(&UNK), "{ids:?}");
        let back = tk.decode(&ids, true).unwrap();
        assert_eq!(back, text);
        // Unknown characters map to [UNK]; [MASK] in text stays one token.
        let ids = encode(&tk, "value [MASK] owner").unwrap();
        assert_eq!(ids.iter().filter(|&&i| i == MASK).count(), 1, "{ids:?}");
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("tokenizer.json");
        save(&tk, &p).unwrap();
        let again = load(&p).unwrap();
        assert_eq!(encode(&again, text).unwrap(), encode(&tk, text).unwrap());
        // With special tokens: [CLS] ... [SEP].
        let with = again.encode(text, true).unwrap();
        assert_eq!(with.get_ids()[0], CLS);
        assert_eq!(*with.get_ids().last().unwrap(), SEP);
        std::fs::write(&p, "{not json").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("tokenizer.json"), "{e}");
    }

    #[test]
    fn training_is_deterministic() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../data/text/rust-book.txt"
        ))
        .unwrap();
        let paras: Vec<String> = text.split("\n\n").map(str::to_string).collect();
        let vocab = |t: Tokenizer| {
            t.get_vocab(true)
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        // Limited by the vocabulary size, and by the minimum frequency.
        for size in [1000, 8000] {
            let a = vocab(train(&paras, size).unwrap());
            for _ in 0..3 {
                assert_eq!(vocab(train(&paras, size).unwrap()), a, "vocabulary {size}");
            }
        }
    }
}
