//! The masked-token training step, timed: what `cargo xtask bench --models
//! bert` measures against `transformers`' `BertForMaskedLM`.
//!
//! A step is exactly the trainer's: [`crate::train`]'s forward pass (the
//! encoder with its dropout, the tied MLM head at the masked positions
//! only, cross-entropy),
//! `backward`, and its AdamW with global-norm clipping. The batch is full
//! sequences of seeded random non-special tokens, masked as in training, so
//! every position is a real token and the row's tokens/s counts them all.

use crate::bert::{BertConfig, BertMlm, Dropout};
use crate::mlm;
use crate::optim::AdamW;
use crate::tokenize::SPECIALS;
use crate::train::mlm_loss;
use candle_core::Device;
use candle_nn::VarMap;
use rand::Rng;
use selfsup_core::{params, rng, Result};
use std::time::Instant;

/// The vocabulary `cargo xtask text` trains with on the shipped corpus
/// (its WordPiece trainer, asked for 8,000, finds all 8,000 on the book
/// and the training-only documentation): the bench's default, so the step
/// is the default run's.
pub const DEFAULT_VOCAB: usize = 8000;

/// What to time.
#[derive(Debug, Clone)]
pub struct StepOptions {
    /// Model sizes.
    pub config: BertConfig,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence (`[CLS]` and `[SEP]` included).
    pub seq_len: usize,
    /// Untimed steps first.
    pub warmup: usize,
    /// Timed repetitions.
    pub reps: usize,
    /// Steps per repetition.
    pub steps: usize,
    /// Seed of the weights and the tokens.
    pub seed: u64,
    /// Hidden dropout, as the trainer applies it (0 for none).
    pub dropout: f64,
    /// Where to run.
    pub device: Device,
}

impl StepOptions {
    /// The dropout of step `k` (a model without dropout ignores it).
    fn dropout_at(&self, k: usize) -> Dropout {
        Dropout {
            p: self.dropout,
            seed: k as u64,
        }
    }
}

/// What [`time_step`] measured.
#[derive(Debug, Clone)]
pub struct StepTiming {
    /// Tokens per second of each repetition.
    pub tokens_per_s: Vec<f64>,
    /// Milliseconds of the forward pass (to the loss), the backward pass
    /// and the optimizer step, one of each per repetition, each waited for.
    pub phases_ms: [Vec<f64>; 3],
    /// Trainable parameters.
    pub parameters: usize,
}

/// `n` masked batches of full-length random sequences.
fn batches(o: &StepOptions, n: usize) -> Vec<mlm::Batch> {
    let vocab = o.config.vocab_size;
    let mut r = rng::stream(o.seed, "bench-text");
    (0..n)
        .map(|_| {
            let items: Vec<mlm::Masked> = (0..o.batch)
                .map(|_| {
                    let mut ids = vec![crate::tokenize::CLS];
                    ids.extend(
                        (2..o.seq_len).map(|_| r.random_range(SPECIALS.len() as u32..vocab as u32)),
                    );
                    ids.push(crate::tokenize::SEP);
                    mlm::mask(&ids, vocab, 0.15, &mut r)
                })
                .collect();
            mlm::batch(&items)
        })
        .collect()
}

/// Times the training step: `warmup` untimed steps, `reps` repetitions of
/// `steps` steps, then each phase of one more step per repetition.
pub fn time_step(o: &StepOptions) -> Result<StepTiming> {
    o.config.validate()?;
    let map = VarMap::new();
    let model = BertMlm::new(
        &o.config,
        params::seeded_var_builder(&map, o.seed, &o.device),
    )?;
    let mut opt = AdamW::new(&map)?;
    let data = batches(o, 4);
    let mut k = 0usize;
    let mut step = |opt: &mut AdamW| -> Result<f32> {
        let b = &data[k % data.len()];
        k += 1;
        let loss = mlm_loss(&model, b, Some(&o.dropout_at(k)), &o.device)?;
        opt.step(&loss.backward()?, 1e-4, 0.01, 1.0)?;
        Ok(loss.to_scalar::<f32>()?)
    };
    for _ in 0..o.warmup {
        step(&mut opt)?;
    }
    let tokens = (o.batch * o.seq_len) as f64;
    let mut rates = Vec::new();
    for _ in 0..o.reps.max(1) {
        let t = Instant::now();
        for _ in 0..o.steps.max(1) {
            step(&mut opt)?;
        }
        rates.push(tokens * o.steps.max(1) as f64 / t.elapsed().as_secs_f64());
    }
    let mut phases = [Vec::new(), Vec::new(), Vec::new()];
    for i in 0..o.reps.max(1) {
        let t0 = Instant::now();
        let loss = mlm_loss(
            &model,
            &data[i % data.len()],
            Some(&o.dropout_at(i)),
            &o.device,
        )?;
        o.device.synchronize()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        o.device.synchronize()?;
        let t2 = Instant::now();
        opt.step(&grads, 1e-4, 0.01, 1.0)?;
        o.device.synchronize()?;
        let t3 = Instant::now();
        for (p, d) in phases.iter_mut().zip([t1 - t0, t2 - t1, t3 - t2]) {
            p.push(1e3 * d.as_secs_f64());
        }
    }
    Ok(StepTiming {
        tokens_per_s: rates,
        phases_ms: phases,
        parameters: map.all_vars().iter().map(|v| v.elem_count()).sum(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tiny_step_is_timed() {
        let o = StepOptions {
            config: BertConfig::small(60, 16, 1, 2, 16),
            batch: 3,
            seq_len: 12,
            warmup: 1,
            reps: 2,
            steps: 1,
            seed: 0,
            dropout: 0.1,
            device: Device::Cpu,
        };
        let t = time_step(&o).unwrap();
        assert_eq!(t.tokens_per_s.len(), 2);
        assert!(t.tokens_per_s.iter().all(|r| r.is_finite() && *r > 0.0));
        assert!(t.phases_ms.iter().all(|p| p.len() == 2));
        // Embeddings 60x16 + 16x16 + 2x16 are part of the count.
        assert!(t.parameters > 60 * 16 + 16 * 16, "{}", t.parameters);
    }
}
