//! selfsup-text is the text side of selfsup: masked-token pretraining of a
//! small BERT, from a raw English corpus to a checkpoint that Hugging Face
//! `transformers` loads as `BertForMaskedLM`.
//!
//! - [`corpus`]: a UTF-8 file or directory, cut into paragraphs and split
//!   by position (the last paragraphs are held out);
//! - [`tokenize`]: a WordPiece tokenizer trained with the `tokenizers`
//!   crate, `[PAD] [UNK] [CLS] [SEP] [MASK]` at ids 0..4;
//! - [`bert`]: the encoder and tied MLM head, with Hugging Face's tensor
//!   names and `config.json`;
//! - [`mlm`]: sequences, BERT masking (15 %; 80 % `[MASK]`, 10 % random,
//!   10 % unchanged) and masked-token metrics;
//! - [`train`]: AdamW with warmup + linear decay and clipping, held-out
//!   evaluation against unigram and untrained baselines, atomic
//!   checkpoints, `--resume`, and `fill` for `[MASK]` predictions;
//! - [`bench`]: the training step timed, for `cargo xtask bench --models
//!   bert`.

pub mod bench;
pub mod bert;
pub mod corpus;
pub mod denoise;
pub mod mlm;
pub mod nsp;
pub mod objective;
pub mod tokenize;
pub mod train;
