//! selfsup-text is the text side of selfsup: self-supervised pretraining
//! of a small BERT — masked tokens, next-sentence prediction, denoising —
//! from a raw English corpus to a checkpoint that Hugging Face
//! `transformers` loads (`BertForMaskedLM`, or `BertForPreTraining` with
//! the next-sentence head).
//!
//! - [`corpus`]: a UTF-8 file or directory, cut into paragraphs and split
//!   by position (the last paragraphs are held out);
//! - [`tokenize`]: a WordPiece tokenizer trained with the `tokenizers`
//!   crate, `[PAD] [UNK] [CLS] [SEP] [MASK]` at ids 0..4;
//! - [`bert`]: the encoder, tied MLM head and optional pooler +
//!   next-sentence head, with Hugging Face's tensor names and
//!   `config.json`; on the CPU it runs on `selfsup_kernels`' fused
//!   transformer ops;
//! - [`init`]: how a fresh model's position table starts (BERT's normal
//!   draw, or sinusoids: the default, without which the default run's
//!   attention never learned word order);
//! - [`objective`]: the objective sets and their training examples:
//!   [`mlm`] (sequences, BERT masking — 15 %; 80 % `[MASK]`, 10 % random,
//!   10 % unchanged — and masked-token metrics), [`nsp`] (sentence pairs,
//!   half continuing, half from another paragraph) and [`denoise`] (T5
//!   span corruption, every token reconstructed);
//! - [`config`], [`heldout`], [`report`], [`checkpoint`]: the settings, the
//!   held-out metrics and baselines, `report.json` / `report.md`, and
//!   atomic checkpoints with `--fill` and `--nsp` queries;
//! - [`train`]: the loop — AdamW with warmup + linear decay and clipping,
//!   periodic evaluation, `--resume`;
//! - [`bench`](mod@bench): the training step timed, for `cargo xtask bench --models
//!   bert`.

pub mod bench;
pub mod bert;
pub mod checkpoint;
pub mod config;
pub mod corpus;
pub mod denoise;
pub mod heldout;
pub mod init;
pub mod mlm;
pub mod nsp;
pub mod objective;
mod optim;
pub mod report;
pub mod tokenize;
pub mod train;
