//! Masked-language-model pretraining end to end: tokenizer, training with
//! AdamW (warmup + linear decay, global-norm clipping), periodic held-out
//! evaluation, atomic checkpoints that `--resume` continues exactly, and
//! the report against the unigram and untrained baselines.

use crate::bert::{BertConfig, BertMlm};
use crate::corpus::Corpus;
use crate::denoise::DenoiseMetrics;
use crate::mlm::{self, MlmAccumulator, MlmMetrics};
use crate::nsp::NspMetrics;
use crate::objective::{Examples, TextObjective};
use crate::tokenize;
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::VarMap;
use selfsup_core::train::Progress;
use selfsup_core::{fsutil, params, rng, Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;
use tokenizers::Tokenizer;

/// Weights file of a checkpoint.
pub const WEIGHTS: &str = "model.safetensors";
/// Optimiser state of a checkpoint (for `--resume`).
pub const STATE: &str = "training_state.safetensors";
/// Step counter and settings of a checkpoint (for `--resume`).
pub const STATE_JSON: &str = "training_state.json";

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
    /// Fraction of tokens chosen for the loss.
    pub mask_rate: f64,
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
    /// What to learn: `["mlm"]`, `["mlm", "nsp"]` or `["denoise"]`
    /// ([`crate::objective`]).
    pub objectives: Vec<String>,
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
        self.bert(self.vocab_size.max(1)).validate()
    }

    /// The objective set.
    pub fn objective(&self) -> Result<TextObjective> {
        TextObjective::parse(&self.objectives)
    }

    /// The model these settings train, for a vocabulary of `vocab`.
    pub fn bert(&self, vocab: usize) -> BertConfig {
        let c = BertConfig::small(vocab, self.hidden, self.layers, self.heads, self.max_len);
        match TextObjective::parse(&self.objectives) {
            Ok(o) if o.has_nsp() => c.with_nsp(),
            _ => c,
        }
    }
}

impl Default for TextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 8000,
            hidden: 128,
            layers: 2,
            heads: 2,
            max_len: 128,
            batch_size: 32,
            steps: 1000,
            lr: 2e-3,
            warmup_fraction: 0.1,
            weight_decay: 0.01,
            clip: 1.0,
            mask_rate: 0.15,
            heldout_fraction: 0.1,
            eval_every: 250,
            eval_passes: 4,
            eval_max_sequences: 512,
            seed: 0,
            objectives: vec!["mlm".into()],
        }
    }
}

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

/// AdamW with its state in tensors, so a checkpoint can hold it.
pub(crate) struct AdamW {
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: usize,
}

impl AdamW {
    const B1: f64 = 0.9;
    const B2: f64 = 0.999;
    const EPS: f64 = 1e-6;

    pub(crate) fn new(map: &VarMap) -> Result<Self> {
        let vars = params::trainable_vars(map);
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        Ok(Self {
            m: vars
                .iter()
                .map(|(_, v)| zeros(v))
                .collect::<candle_core::Result<_>>()?,
            v: vars
                .iter()
                .map(|(_, v)| zeros(v))
                .collect::<candle_core::Result<_>>()?,
            vars,
            t: 0,
        })
    }

    /// One step from `grads`, clipped to global norm `clip`; returns the
    /// norm before clipping.
    pub(crate) fn step(
        &mut self,
        grads: &candle_core::backprop::GradStore,
        lr: f64,
        wd: f64,
        clip: f64,
    ) -> Result<f64> {
        let mut sq = 0.0f64;
        let gs: Vec<Option<Tensor>> = self
            .vars
            .iter()
            .map(|(_, v)| grads.get(v.as_tensor()).cloned())
            .collect();
        for g in gs.iter().flatten() {
            sq += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
        }
        let norm = sq.sqrt();
        let scale = if norm > clip {
            clip / (norm + 1e-6)
        } else {
            1.0
        };
        self.t += 1;
        let (c1, c2) = (
            1.0 - Self::B1.powi(self.t as i32),
            1.0 - Self::B2.powi(self.t as i32),
        );
        for (i, ((name, var), g)) in self.vars.iter().zip(gs).enumerate() {
            let Some(g) = g else { continue };
            let g = (g * scale)?;
            self.m[i] = ((&self.m[i] * Self::B1)? + (&g * (1.0 - Self::B1))?)?;
            self.v[i] = ((&self.v[i] * Self::B2)? + (g.sqr()? * (1.0 - Self::B2))?)?;
            let update = ((&self.m[i] / c1)? / ((&self.v[i] / c2)?.sqrt()? + Self::EPS)?)?;
            let decays = name.ends_with("weight") && !name.contains("LayerNorm");
            let w = var.as_tensor();
            let w = if decays {
                (w * (1.0 - lr * wd))?
            } else {
                w.clone()
            };
            var.set(&(w - (update * lr)?)?)?;
        }
        Ok(norm)
    }

    fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.insert(format!("m.{name}"), self.m[i].clone());
            out.insert(format!("v.{name}"), self.v[i].clone());
        }
        out
    }

    fn restore(&mut self, state: &HashMap<String, Tensor>, t: usize, path: &Path) -> Result<()> {
        for (i, (name, _)) in self.vars.iter().enumerate() {
            let get = |k: String| {
                state
                    .get(&k)
                    .cloned()
                    .ok_or_else(|| Error::format(path, format!("optimiser state lacks {k}")))
            };
            self.m[i] = get(format!("m.{name}"))?;
            self.v[i] = get(format!("v.{name}"))?;
        }
        self.t = t;
        Ok(())
    }
}

/// The training loss of `model` on batch `b`: the cross-entropy of the
/// token predictions at `b.at`, plus the next-sentence cross-entropy when
/// the batch has pair labels. The training step's forward pass.
pub(crate) fn mlm_loss(model: &BertMlm, b: &mlm::Batch, device: &Device) -> Result<Tensor> {
    let ids = Tensor::from_vec(b.ids.clone(), (b.b, b.t), device)?;
    let mask = Tensor::from_vec(b.mask.clone(), (b.b, b.t), device)?;
    let types = match &b.types {
        Some(t) => Some(Tensor::from_vec(t.clone(), (b.b, b.t), device)?),
        None => None,
    };
    let labels = Tensor::from_vec(b.labels.clone(), b.labels.len(), device)?;
    let h = model.encode_typed(&ids, &mask, types.as_ref())?;
    let loss = cross_entropy(&model.logits_of(&h, &b.at)?, &labels)?;
    match &b.next {
        None => Ok(loss),
        Some(next) => {
            let next = Tensor::from_vec(next.clone(), next.len(), device)?;
            Ok((loss + cross_entropy(&model.nsp_logits(&h)?, &next)?)?)
        }
    }
}

/// Mean cross-entropy: the fused CPU op where the BERT's fused ops run,
/// Candle's otherwise.
pub(crate) fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    if selfsup_kernels::fusion_enabled() && selfsup_kernels::fused_supported(logits) {
        return Ok(selfsup_kernels::cross_entropy(logits, labels)?);
    }
    Ok(candle_nn::loss::cross_entropy(logits, labels)?)
}

/// Learning rate at `step`: linear warmup, then linear decay to 0.
pub fn lr_at(cfg: &TextConfig, step: usize) -> f64 {
    let warm = ((cfg.steps as f64 * cfg.warmup_fraction).round() as usize).max(1);
    if step < warm {
        return cfg.lr * (step + 1) as f64 / warm as f64;
    }
    let span = cfg.steps.saturating_sub(warm).max(1);
    cfg.lr * (1.0 - (step - warm) as f64 / span as f64).max(0.0)
}

/// Resume bookkeeping written beside the weights.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainingState {
    step: usize,
    config: TextConfig,
    history: Vec<EvalPoint>,
}

/// A loaded checkpoint directory.
pub struct Checkpoint {
    /// Variables (HF names).
    pub map: VarMap,
    /// The model.
    pub model: BertMlm,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
}

/// Loads `dir` (model.safetensors, config.json, tokenizer.json).
pub fn load(dir: &Path, device: &Device) -> Result<Checkpoint> {
    let config: BertConfig = fsutil::read_json(&dir.join("config.json"))?;
    let tokenizer = tokenize::load(&dir.join("tokenizer.json"))?;
    let map = VarMap::new();
    let vb = params::seeded_var_builder(&map, 0, device);
    let model = BertMlm::new(&config, vb)?;
    let path = dir.join(WEIGHTS);
    let tensors = selfsup_core::checkpoint::read_tensors(&path, device)?;
    for (name, var) in map.data().lock().expect("var map poisoned").iter() {
        let t = tensors
            .get(name)
            .ok_or_else(|| Error::format(&path, format!("missing tensor {name}")))?;
        if t.dims() != var.as_tensor().dims() {
            return Err(Error::format(
                &path,
                format!(
                    "{name} has shape {:?}, the config wants {:?}",
                    t.dims(),
                    var.as_tensor().dims()
                ),
            ));
        }
        var.set(&t.to_dtype(DType::F32)?)?;
    }
    Ok(Checkpoint {
        map,
        model,
        tokenizer,
    })
}

/// Writes the checkpoint directory atomically: weights under Hugging Face
/// names (plus the tied decoder copies `transformers` also accepts),
/// config.json, tokenizer.json and the optimiser state.
fn save(
    dir: &Path,
    map: &VarMap,
    config: &BertConfig,
    tokenizer: &Tokenizer,
    opt: &AdamW,
    state: &TrainingState,
) -> Result<()> {
    fsutil::write_dir_atomic(dir, |tmp| {
        let mut tensors: HashMap<String, Tensor> = map
            .data()
            .lock()
            .expect("var map poisoned")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        let word = tensors["bert.embeddings.word_embeddings.weight"].copy()?;
        let bias = tensors["cls.predictions.bias"].copy()?;
        tensors.insert("cls.predictions.decoder.weight".into(), word);
        tensors.insert("cls.predictions.decoder.bias".into(), bias);
        candle_core::safetensors::save(&tensors, tmp.join(WEIGHTS))?;
        fsutil::write_json_atomic(&tmp.join("config.json"), config)?;
        tokenize::save(tokenizer, &tmp.join("tokenizer.json"))?;
        candle_core::safetensors::save(&opt.state(), tmp.join(STATE))?;
        fsutil::write_json_atomic(&tmp.join(STATE_JSON), state)
    })
}

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
                mlm::mask(s, vocab, cfg.mask_rate, &mut r)
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
        for (row, &label) in lp.iter().zip(&b.labels) {
            acc.add(row, label);
            if let Some(u) = unigram {
                uni.add(u, label);
            }
        }
    }
    Ok((acc.finish(), unigram.map(|_| uni.finish())))
}

/// At most `max` of `seqs`, evenly spaced (all of them when they fit).
fn strided(seqs: Vec<Vec<u32>>, max: usize) -> Vec<Vec<u32>> {
    let n = seqs.len();
    if max == 0 || n <= max {
        return seqs;
    }
    (0..max).map(|i| seqs[i * n / max].clone()).collect()
}

/// Trains on `corpus`, writing checkpoints and the report under `out`.
/// With `resume`, continues from `out`'s checkpoint (same settings and
/// corpus), else starts afresh (a new tokenizer, a seeded model).
pub fn run(
    corpus: &Corpus,
    cfg: &TextConfig,
    out: &Path,
    resume: bool,
    device: &Device,
    quiet: bool,
) -> Result<TextReport> {
    run_until(corpus, cfg, out, resume, None, device, quiet)
}

/// The held-out text as each metric reads it.
struct HeldOut {
    /// Sequences for the masked-token metrics (every objective).
    seqs: Vec<Vec<u32>>,
    /// Sentence pairs (`mlm,nsp`).
    pairs: Option<Vec<crate::nsp::Pair>>,
    /// Corrupted sequences (`denoise`).
    corrupted: Option<Vec<crate::denoise::Corrupted>>,
    /// The most frequent training token (the denoising fill baseline).
    fill: u32,
}

/// One evaluation of a model on [`HeldOut`].
struct Scores {
    mlm: MlmMetrics,
    unigram: Option<MlmMetrics>,
    nsp: Option<NspMetrics>,
    denoise: Option<DenoiseMetrics>,
}

impl HeldOut {
    fn evaluate(
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
struct Prepared {
    examples: Examples,
    held: HeldOut,
    unigram: Vec<f32>,
    train_tokens: usize,
    heldout_tokens: usize,
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
fn prepare(
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
            let c = crate::denoise::heldout(&seqs, cfg.mask_rate, cfg.seed);
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

/// A fresh run's or a checkpoint's state.
struct Start {
    map: VarMap,
    model: BertMlm,
    tokenizer: Tokenizer,
    opt: AdamW,
    step: usize,
    history: Vec<EvalPoint>,
}

/// The checkpoint in `ckpt` to continue (trained with `cfg`), or a fresh
/// model and tokenizer.
fn start(
    corpus: &Corpus,
    cfg: &TextConfig,
    ckpt: &Path,
    resume: bool,
    device: &Device,
) -> Result<Start> {
    if resume {
        let st: TrainingState = fsutil::read_json(&ckpt.join(STATE_JSON))?;
        if &st.config != cfg {
            return Err(Error::format(
                ckpt.join(STATE_JSON),
                "the checkpoint was trained with other settings; resume with the same flags",
            ));
        }
        let c = load(ckpt, device)?;
        let mut opt = AdamW::new(&c.map)?;
        let sp = ckpt.join(STATE);
        opt.restore(
            &selfsup_core::checkpoint::read_tensors(&sp, device)?,
            st.step,
            &sp,
        )?;
        return Ok(Start {
            map: c.map,
            model: c.model,
            tokenizer: c.tokenizer,
            opt,
            step: st.step,
            history: st.history,
        });
    }
    let tokenizer = tokenize::train(&corpus.train, cfg.vocab_size)?;
    let config = cfg.bert(tokenizer.get_vocab_size(true));
    let map = VarMap::new();
    let model = BertMlm::new(&config, params::seeded_var_builder(&map, cfg.seed, device))?;
    let opt = AdamW::new(&map)?;
    Ok(Start {
        map,
        model,
        tokenizer,
        opt,
        step: 0,
        history: Vec::new(),
    })
}

/// The examples of step `step`: the epoch's shuffled order, cut into
/// batches.
fn step_batch(
    ex: &Examples,
    order: &[usize],
    step: usize,
    vocab: usize,
    cfg: &TextConfig,
) -> mlm::Batch {
    let per_epoch = order.len().div_ceil(cfg.batch_size).max(1);
    let k = step % per_epoch;
    let which = &order[k * cfg.batch_size..((k + 1) * cfg.batch_size).min(order.len())];
    let knobs = (cfg.mask_rate, cfg.max_len, cfg.seed);
    ex.batch(which, step * cfg.batch_size, vocab, knobs)
}

/// [`run`], stopping (with a checkpoint) after step `until` when given: an
/// interrupted run that `--resume` continues.
pub fn run_until(
    corpus: &Corpus,
    cfg: &TextConfig,
    out: &Path,
    resume: bool,
    until: Option<usize>,
    device: &Device,
    quiet: bool,
) -> Result<TextReport> {
    let t0 = Instant::now();
    cfg.check()?;
    check_corpus(corpus, cfg)?;
    let ckpt = out.join("checkpoint");
    let Start {
        map,
        model,
        tokenizer,
        mut opt,
        step: first,
        mut history,
    } = start(corpus, cfg, &ckpt, resume, device)?;
    let vocab = model.config.vocab_size;
    let data = prepare(corpus, cfg, &tokenizer, vocab)?;
    // Baselines: the unigram predictor and this model before training
    // (re-initialised with the same seed when resuming).
    let untrained = if resume {
        let m2 = VarMap::new();
        let fresh = BertMlm::new(
            &model.config,
            params::seeded_var_builder(&m2, cfg.seed, device),
        )?;
        data.held
            .evaluate(&fresh, Some(&data.unigram), cfg, device)?
    } else {
        data.held
            .evaluate(&model, Some(&data.unigram), cfg, device)?
    };
    let label = format!("text/{}", cfg.objectives.join("+"));
    let mut progress = Progress::new((cfg.steps - first.min(cfg.steps)) as u64, &label, quiet);
    let train_start = Instant::now();
    let (mut tokens, mut loss_sum, mut loss_n) = (0usize, 0.0f64, 0usize);
    let per_epoch = data.examples.len().div_ceil(cfg.batch_size).max(1);
    let mut order: Vec<usize> = Vec::new();
    let mut order_epoch = usize::MAX;
    let end = until.unwrap_or(cfg.steps).min(cfg.steps);
    for step in first..end {
        let epoch = step / per_epoch;
        if epoch != order_epoch {
            use rand::seq::SliceRandom;
            order = (0..data.examples.len()).collect();
            order.shuffle(&mut rng::stream_at(cfg.seed, "text-shuffle", epoch as u64));
            order_epoch = epoch;
        }
        let b = step_batch(&data.examples, &order, step, vocab, cfg);
        let loss = mlm_loss(&model, &b, device)?;
        let v = loss.to_scalar::<f32>()?;
        selfsup_core::train::check_finite(v, &label, step + 1)?;
        opt.step(
            &loss.backward()?,
            lr_at(cfg, step),
            cfg.weight_decay,
            cfg.clip,
        )?;
        tokens += b.mask.iter().filter(|&&m| m == 1).count();
        loss_sum += f64::from(v);
        loss_n += 1;
        progress.step(b.b, v);
        let done = step + 1;
        if done % cfg.eval_every.max(1) == 0 || done == end {
            let sc = data.held.evaluate(&model, None, cfg, device)?;
            progress.note(eval_line(
                &label,
                done,
                loss_sum / loss_n.max(1) as f64,
                &sc,
            ));
            history.push(EvalPoint {
                step: done,
                train_loss: loss_sum / loss_n.max(1) as f64,
                heldout: sc.mlm,
                nsp: sc.nsp,
                denoise: sc.denoise,
            });
            (loss_sum, loss_n) = (0.0, 0);
            let st = TrainingState {
                step: done,
                config: cfg.clone(),
                history: history.clone(),
            };
            save(&ckpt, &map, &model.config, &tokenizer, &opt, &st)?;
        }
    }
    progress.finish();
    let train_seconds = train_start.elapsed().as_secs_f64();
    let last = data.held.evaluate(&model, None, cfg, device)?;
    let report = TextReport {
        corpus: corpus.source.clone(),
        train_paragraphs: corpus.train.len(),
        heldout_paragraphs: corpus.heldout.len(),
        train_tokens: data.train_tokens,
        heldout_tokens: data.heldout_tokens,
        vocab_size: vocab,
        parameters: map.all_vars().iter().map(|v| v.elem_count()).sum(),
        heldout: last.mlm,
        nsp: last.nsp,
        denoise: last.denoise,
        baselines: HashMap::from([
            ("unigram".to_string(), untrained.unigram.expect("asked for")),
            ("untrained".to_string(), untrained.mlm),
        ]),
        nsp_untrained: untrained.nsp,
        history,
        steps: cfg.steps,
        train_seconds,
        tokens_per_s: tokens as f64 / train_seconds.max(1e-9),
        total_seconds: t0.elapsed().as_secs_f64(),
        config: cfg.clone(),
    };
    fsutil::write_json_atomic(&out.join("report.json"), &report)?;
    fsutil::write_atomic(&out.join("report.md"), report.to_markdown().as_bytes())?;
    Ok(report)
}

/// The progress line of one periodic evaluation.
fn eval_line(label: &str, step: usize, train_loss: f64, sc: &Scores) -> String {
    let mut line = format!(
        "{label} step {step}: train loss {train_loss:.3}, held-out top-1 {:.1}% top-5 {:.1}% perplexity {:.1}",
        100.0 * sc.mlm.top1,
        100.0 * sc.mlm.top5,
        sc.mlm.perplexity
    );
    if let Some(n) = &sc.nsp {
        line.push_str(&format!(", next-sentence {:.1}%", 100.0 * n.accuracy));
    }
    if let Some(d) = &sc.denoise {
        line.push_str(&format!(
            ", reconstruction {:.1}% (spans {:.1}%)",
            100.0 * d.accuracy,
            100.0 * d.span_accuracy
        ));
    }
    line
}

/// Top-`k` (token, probability) predictions for every `[MASK]` of `text`.
pub fn fill(
    c: &Checkpoint,
    text: &str,
    k: usize,
    device: &Device,
) -> Result<Vec<Vec<(String, f64)>>> {
    let enc = c
        .tokenizer
        .encode(text, true)
        .map_err(|e| Error::invalid("--fill", e.to_string()))?;
    let ids = enc.get_ids().to_vec();
    let at: Vec<u32> = (0..ids.len() as u32)
        .filter(|&i| ids[i as usize] == tokenize::MASK)
        .collect();
    if at.is_empty() {
        return Err(Error::invalid(
            "--fill",
            format!("{text:?} has no [MASK] token"),
        ));
    }
    let t = ids.len();
    let x = Tensor::from_vec(ids, (1, t), device)?;
    let mask = Tensor::ones((1, t), DType::U32, device)?;
    let probs: Vec<Vec<f32>> =
        candle_nn::ops::softmax(&c.model.logits_at(&x, &mask, &at)?, D::Minus1)?
            .to_device(&Device::Cpu)?
            .to_vec2()?;
    Ok(probs
        .iter()
        .map(|row| {
            let mut idx: Vec<usize> = (0..row.len()).collect();
            idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            idx.iter()
                .take(k)
                .map(|&i| {
                    (
                        c.tokenizer.id_to_token(i as u32).unwrap_or_default(),
                        f64::from(row[i]),
                    )
                })
                .collect()
        })
        .collect())
}

/// The probability that `second` follows `first`, from the checkpoint's
/// next-sentence head (an error for a model trained without one).
pub fn next_probability(c: &Checkpoint, first: &str, second: &str, device: &Device) -> Result<f64> {
    let enc = c
        .tokenizer
        .encode((first, second), true)
        .map_err(|e| Error::invalid("--nsp", e.to_string()))?;
    let t = enc.get_ids().len();
    let ids = Tensor::from_vec(enc.get_ids().to_vec(), (1, t), device)?;
    let types = Tensor::from_vec(enc.get_type_ids().to_vec(), (1, t), device)?;
    let mask = Tensor::ones((1, t), DType::U32, device)?;
    let h = c.model.encode_typed(&ids, &mask, Some(&types))?;
    let p: Vec<f32> = candle_nn::ops::softmax(&c.model.nsp_logits(&h)?, D::Minus1)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1()?;
    Ok(f64::from(p[crate::nsp::IS_NEXT as usize]))
}

impl TextReport {
    /// The report as markdown.
    pub fn to_markdown(&self) -> String {
        let row = |name: &str, m: &MlmMetrics| {
            format!(
                "| {name} | {:.2}% | {:.2}% | {:.1} |\n",
                100.0 * m.top1,
                100.0 * m.top5,
                m.perplexity
            )
        };
        let mut s = format!(
            "# Text pretraining ({}) on {}\n\n{} training / {} held-out paragraphs ({} / {} tokens), WordPiece vocabulary {}; BERT {} layers x {} hidden x {} heads ({} parameters); {} steps of {} sequences of up to {} tokens in {:.0} s ({:.0} tokens/s).\n\nHeld-out masked tokens ({} of them, the same for every row):\n\n| model | top-1 | top-5 | perplexity |\n|---|---|---|---|\n",
            self.config.objectives.join(","), self.corpus, self.train_paragraphs, self.heldout_paragraphs, self.train_tokens, self.heldout_tokens,
            self.vocab_size, self.config.layers, self.config.hidden, self.config.heads, self.parameters,
            self.steps, self.config.batch_size, self.config.max_len, self.train_seconds, self.tokens_per_s,
            self.heldout.tokens
        );
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
