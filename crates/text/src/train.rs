//! Masked-language-model pretraining end to end: tokenizer, training with
//! AdamW (warmup + linear decay, global-norm clipping), periodic held-out
//! evaluation, atomic checkpoints that `--resume` continues exactly, and
//! the report against the unigram and untrained baselines.

use crate::bert::{BertConfig, BertMlm};
use crate::corpus::Corpus;
use crate::mlm::{self, MlmAccumulator, MlmMetrics};
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
        let vocab = self.vocab_size.max(1);
        BertConfig::small(vocab, self.hidden, self.layers, self.heads, self.max_len).validate()
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
    /// `unigram` and `untrained` on the same masked tokens.
    pub baselines: HashMap<String, MlmMetrics>,
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

/// The masked-token cross-entropy of `model` on batch `b`: the training
/// step's forward pass.
pub(crate) fn mlm_loss(model: &BertMlm, b: &mlm::Batch, device: &Device) -> Result<Tensor> {
    let ids = Tensor::from_vec(b.ids.clone(), (b.b, b.t), device)?;
    let mask = Tensor::from_vec(b.mask.clone(), (b.b, b.t), device)?;
    let labels = Tensor::from_vec(b.labels.clone(), b.labels.len(), device)?;
    let logits = model.logits_at(&ids, &mask, &b.at)?;
    cross_entropy(&logits, &labels)
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
    let ckpt = out.join("checkpoint");
    let (map, model, tokenizer, mut opt, start, mut history) = if resume {
        let st: TrainingState = fsutil::read_json(&ckpt.join(STATE_JSON))?;
        if &st.config != cfg {
            return Err(Error::format(
                ckpt.join(STATE_JSON),
                "the checkpoint was trained with other settings; resume with the same flags",
            ));
        }
        let c = load(&ckpt, device)?;
        let mut opt = AdamW::new(&c.map)?;
        let sp = ckpt.join(STATE);
        opt.restore(
            &selfsup_core::checkpoint::read_tensors(&sp, device)?,
            st.step,
            &sp,
        )?;
        (c.map, c.model, c.tokenizer, opt, st.step, st.history)
    } else {
        let tokenizer = tokenize::train(&corpus.train, cfg.vocab_size)?;
        let vocab = tokenizer.get_vocab_size(true);
        let config = BertConfig::small(vocab, cfg.hidden, cfg.layers, cfg.heads, cfg.max_len);
        let map = VarMap::new();
        let model = BertMlm::new(&config, params::seeded_var_builder(&map, cfg.seed, device))?;
        let opt = AdamW::new(&map)?;
        (map, model, tokenizer, opt, 0, Vec::new())
    };
    let vocab = model.config.vocab_size;
    let enc = |ps: &[String]| -> Result<Vec<Vec<u32>>> {
        ps.iter().map(|p| tokenize::encode(&tokenizer, p)).collect()
    };
    let train_ids = enc(&corpus.train)?;
    let held_ids = enc(&corpus.heldout)?;
    let train_seqs = mlm::sequences(&train_ids, cfg.max_len);
    let held_seqs = strided(
        mlm::sequences(&held_ids, cfg.max_len),
        cfg.eval_max_sequences,
    );
    let unigram = mlm::unigram_log_probs(&train_ids, vocab);
    // Baselines: the unigram predictor and this model before training
    // (re-initialised with the same seed when resuming).
    let untrained = if resume {
        let m2 = VarMap::new();
        let fresh = BertMlm::new(
            &model.config,
            params::seeded_var_builder(&m2, cfg.seed, device),
        )?;
        evaluate(&fresh, &held_seqs, Some(&unigram), vocab, cfg, device)?
    } else {
        evaluate(&model, &held_seqs, Some(&unigram), vocab, cfg, device)?
    };
    let (untrained, unigram_m) = (untrained.0, untrained.1.expect("asked for"));
    let mut progress = Progress::new((cfg.steps - start.min(cfg.steps)) as u64, "text/mlm", quiet);
    let train_start = Instant::now();
    let (mut tokens, mut loss_sum, mut loss_n) = (0usize, 0.0f64, 0usize);
    let per_epoch = train_seqs.len().div_ceil(cfg.batch_size).max(1);
    let mut order: Vec<usize> = (0..train_seqs.len()).collect();
    let mut order_epoch = usize::MAX;
    let end = until.unwrap_or(cfg.steps).min(cfg.steps);
    for step in start..end {
        let epoch = step / per_epoch;
        if epoch != order_epoch {
            use rand::seq::SliceRandom;
            order = (0..train_seqs.len()).collect();
            order.shuffle(&mut rng::stream_at(cfg.seed, "text-shuffle", epoch as u64));
            order_epoch = epoch;
        }
        let k = step % per_epoch;
        let items: Vec<mlm::Masked> = order
            [k * cfg.batch_size..((k + 1) * cfg.batch_size).min(order.len())]
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                let mut r =
                    rng::stream_at(cfg.seed, "mlm-mask", (step * cfg.batch_size + i) as u64);
                mlm::mask(&train_seqs[s], vocab, cfg.mask_rate, &mut r)
            })
            .collect();
        let b = mlm::batch(&items);
        let loss = mlm_loss(&model, &b, device)?;
        let v = loss.to_scalar::<f32>()?;
        selfsup_core::train::check_finite(v, "text/mlm", step + 1)?;
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
            let (m, _) = evaluate(&model, &held_seqs, None, vocab, cfg, device)?;
            progress.note(format!(
                "text/mlm step {done}: train loss {:.3}, held-out top-1 {:.1}% top-5 {:.1}% perplexity {:.1}",
                loss_sum / loss_n.max(1) as f64,
                100.0 * m.top1,
                100.0 * m.top5,
                m.perplexity
            ));
            history.push(EvalPoint {
                step: done,
                train_loss: loss_sum / loss_n.max(1) as f64,
                heldout: m,
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
    let (heldout, _) = evaluate(&model, &held_seqs, None, vocab, cfg, device)?;
    let report = TextReport {
        corpus: corpus.source.clone(),
        train_paragraphs: corpus.train.len(),
        heldout_paragraphs: corpus.heldout.len(),
        train_tokens: train_ids.iter().map(Vec::len).sum(),
        heldout_tokens: held_ids.iter().map(Vec::len).sum(),
        vocab_size: vocab,
        parameters: map.all_vars().iter().map(|v| v.elem_count()).sum(),
        heldout,
        baselines: HashMap::from([
            ("unigram".to_string(), unigram_m),
            ("untrained".to_string(), untrained),
        ]),
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
            "# Masked-token pretraining on {}\n\n{} training / {} held-out paragraphs ({} / {} tokens), WordPiece vocabulary {}; BERT {} layers x {} hidden x {} heads ({} parameters); {} steps of {} sequences of up to {} tokens in {:.0} s ({:.0} tokens/s).\n\nHeld-out masked tokens ({} of them, the same for every row):\n\n| model | top-1 | top-5 | perplexity |\n|---|---|---|---|\n",
            self.corpus, self.train_paragraphs, self.heldout_paragraphs, self.train_tokens, self.heldout_tokens,
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
        s.push_str("\n| step | train loss | held-out top-1 | top-5 | perplexity |\n|---|---|---|---|---|\n");
        for p in &self.history {
            s.push_str(&format!(
                "| {} | {:.3} | {:.2}% | {:.2}% | {:.1} |\n",
                p.step,
                p.train_loss,
                100.0 * p.heldout.top1,
                100.0 * p.heldout.top5,
                p.heldout.perplexity
            ));
        }
        s
    }
}
