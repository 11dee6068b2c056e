//! Text pretraining end to end: tokenizer, the objective's examples,
//! training with AdamW (warmup + linear decay, global-norm clipping),
//! periodic held-out evaluation, atomic checkpoints that `--resume`
//! continues exactly, and the report against the baselines. The types a
//! caller needs from the other modules are re-exported here.

use crate::bert::{BertConfig, BertMlm, Dropout};
use crate::checkpoint::{save, TrainingState, STATE, STATE_JSON};
use crate::corpus::Corpus;
use crate::heldout::{prepare, Scores};
use crate::mlm;
use crate::objective::Examples;
use crate::optim::AdamW;
use crate::tokenize;
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use selfsup_core::train::Progress;
use selfsup_core::{fsutil, params, rng, Error, Result};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;
use tokenizers::Tokenizer;

pub use crate::checkpoint::{fill, load, next_probability, Checkpoint, WEIGHTS};
pub use crate::config::TextConfig;
pub use crate::heldout::{check_corpus, evaluate};
pub use crate::report::{EvalPoint, TextReport};

/// The training loss of `model` on batch `b`: the cross-entropy of the
/// token predictions at `b.at`, plus the next-sentence cross-entropy when
/// the batch has pair labels, with `drop`'s dropout. The training step's
/// forward pass.
pub(crate) fn mlm_loss(
    model: &BertMlm,
    b: &mlm::Batch,
    drop: Option<&Dropout>,
    device: &Device,
) -> Result<Tensor> {
    let ids = Tensor::from_vec(b.ids.clone(), (b.b, b.t), device)?;
    let mask = Tensor::from_vec(b.mask.clone(), (b.b, b.t), device)?;
    let types = match &b.types {
        Some(t) => Some(Tensor::from_vec(t.clone(), (b.b, b.t), device)?),
        None => None,
    };
    let labels = Tensor::from_vec(b.labels.clone(), b.labels.len(), device)?;
    let h = model.encode_train(&ids, &mask, types.as_ref(), drop)?;
    let loss = cross_entropy(&model.logits_of(&h, &b.at)?, &labels)?;
    match &b.next {
        None => Ok(loss),
        Some(next) => {
            let next = Tensor::from_vec(next.clone(), next.len(), device)?;
            Ok((loss + cross_entropy(&model.nsp_logits(&h)?, &next)?)?)
        }
    }
}

/// Step `step`'s dropout (none when the run's `dropout` is 0): its masks
/// come from the run's seed and the step, so a resumed run draws the same.
pub(crate) fn step_dropout(cfg: &TextConfig, step: usize) -> Option<Dropout> {
    (cfg.dropout > 0.0).then(|| Dropout {
        p: cfg.dropout,
        seed: rng::derive_seed(cfg.seed, "dropout", step as u64),
    })
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

/// A fresh run's or a checkpoint's state.
struct Start {
    map: VarMap,
    model: BertMlm,
    tokenizer: Tokenizer,
    opt: AdamW,
    step: usize,
    history: Vec<EvalPoint>,
}

/// A model of `config` as `cfg` initialises it before training: the
/// seeded draw, then the position table `cfg.position_init` asks for.
fn fresh_model(
    config: &BertConfig,
    cfg: &TextConfig,
    device: &Device,
) -> Result<(VarMap, BertMlm)> {
    let map = VarMap::new();
    let model = BertMlm::new(config, params::seeded_var_builder(&map, cfg.seed, device))?;
    let position = crate::init::PositionInit::parse(&cfg.position_init)?;
    crate::init::apply(&map, position, cfg.init_range, device)?;
    Ok((map, model))
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
    let (map, model) = fresh_model(&cfg.bert(tokenizer.get_vocab_size(true)), cfg, device)?;
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
    let knobs = (cfg.train_rate(), cfg.max_len, cfg.seed);
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
        let (_, fresh) = fresh_model(&model.config, cfg, device)?;
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
        let loss = mlm_loss(&model, &b, step_dropout(cfg, step).as_ref(), device)?;
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
        train_only_paragraphs: corpus.train_only,
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
