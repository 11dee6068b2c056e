//! Training-loop parts: AdamW under a warmup + cosine schedule, early
//! stopping, a guard against non-finite losses and a progress bar.

use crate::{Error, Result};
use candle_core::{Tensor, Var};
use candle_nn::{Optimizer as _, ParamsAdamW};
use indicatif::{ProgressBar, ProgressStyle};
use selfsup_kernels::AdamW;
use std::time::Instant;

/// Linear warmup from 0 to `base_lr` over `warmup_steps`, then cosine decay
/// to `min_lr` at `total_steps`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    /// Peak learning rate.
    pub base_lr: f64,
    /// Steps of linear warmup.
    pub warmup_steps: usize,
    /// Total number of steps the schedule spans.
    pub total_steps: usize,
    /// Final learning rate.
    pub min_lr: f64,
}

impl LrSchedule {
    /// A schedule decaying to 1% of `base_lr`.
    pub fn new(base_lr: f64, warmup_steps: usize, total_steps: usize) -> Self {
        Self {
            base_lr,
            warmup_steps,
            total_steps: total_steps.max(1),
            min_lr: base_lr * 0.01,
        }
    }

    /// The learning rate for optimiser step `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.base_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let t = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

/// AdamW driven by an [`LrSchedule`], with a non-finite-loss guard. The
/// optimizer is `selfsup_kernels::AdamW`: Candle's algorithm, with its
/// update fused into one pass per parameter on the CPU.
pub struct Trainer {
    opt: AdamW,
    schedule: LrSchedule,
    step: usize,
    stage: String,
}

impl Trainer {
    /// AdamW over `vars` with weight decay `weight_decay`; `stage` names the
    /// training stage in errors.
    pub fn new(
        vars: Vec<Var>,
        schedule: LrSchedule,
        weight_decay: f64,
        stage: &str,
    ) -> Result<Self> {
        let params = ParamsAdamW {
            lr: schedule.lr_at(0),
            weight_decay,
            ..Default::default()
        };
        Ok(Self {
            opt: AdamW::new(vars, params)?,
            schedule,
            step: 0,
            stage: stage.to_string(),
        })
    }

    /// Checks `loss` is finite, back-propagates it and takes one step.
    /// Returns the loss value.
    pub fn step(&mut self, loss: &Tensor) -> Result<f32> {
        let value = loss.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        check_finite(value, &self.stage, self.step)?;
        self.opt.set_learning_rate(self.schedule.lr_at(self.step));
        self.opt.backward_step(loss)?;
        self.step += 1;
        Ok(value)
    }

    /// Steps taken so far.
    pub fn steps(&self) -> usize {
        self.step
    }

    /// The learning rate the next step will use.
    pub fn current_lr(&self) -> f64 {
        self.schedule.lr_at(self.step)
    }
}

/// Fails with [`Error::NonFinite`] when `value` is NaN or infinite.
pub fn check_finite(value: f32, stage: &str, step: usize) -> Result<()> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(Error::NonFinite {
            stage: stage.to_string(),
            step,
            value,
        })
    }
}

/// What [`EarlyStopping::update`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopDecision {
    /// A new best: keep these weights.
    Improved,
    /// No improvement yet, patience left.
    Continue,
    /// Patience exhausted.
    Stop,
}

/// Stops when a validation loss has not improved by `min_delta` for
/// `patience` consecutive evaluations.
#[derive(Debug, Clone)]
pub struct EarlyStopping {
    /// Evaluations without improvement tolerated.
    pub patience: usize,
    /// Smallest decrease that counts as an improvement.
    pub min_delta: f64,
    best: f64,
    bad: usize,
}

impl EarlyStopping {
    /// A fresh tracker.
    pub fn new(patience: usize, min_delta: f64) -> Self {
        Self {
            patience,
            min_delta,
            best: f64::INFINITY,
            bad: 0,
        }
    }

    /// Records one validation loss.
    pub fn update(&mut self, val_loss: f64) -> StopDecision {
        if val_loss < self.best - self.min_delta {
            self.best = val_loss;
            self.bad = 0;
            StopDecision::Improved
        } else {
            self.bad += 1;
            if self.bad >= self.patience {
                StopDecision::Stop
            } else {
                StopDecision::Continue
            }
        }
    }

    /// Best loss seen so far.
    pub fn best(&self) -> f64 {
        self.best
    }
}

/// A progress bar showing loss and images per second; hidden when quiet.
pub struct Progress {
    bar: ProgressBar,
    start: Instant,
    images: u64,
    quiet: bool,
}

impl Progress {
    /// A bar over `total` steps labelled `label`.
    pub fn new(total: u64, label: &str, quiet: bool) -> Self {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>18} [{bar:30}] {pos}/{len} {elapsed_precise}<{eta_precise} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar
        };
        bar.set_prefix(label.to_string());
        Self {
            bar,
            start: Instant::now(),
            images: 0,
            quiet,
        }
    }

    /// Advances one step that processed `images` images with loss `loss`.
    pub fn step(&mut self, images: usize, loss: f32) {
        self.images += images as u64;
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        self.bar.set_message(format!(
            "loss {loss:.4} | {:.0} img/s",
            self.images as f64 / secs
        ));
        self.bar.inc(1);
    }

    /// Prints a line above the bar (e.g. the validation loss); without a
    /// terminal (logs, CI) the bar is invisible and the line goes to stderr.
    pub fn note(&self, msg: String) {
        if self.quiet {
            return;
        }
        if self.bar.is_hidden() {
            eprintln!("{msg}");
        } else {
            self.bar.println(msg);
        }
    }

    /// Images per second so far.
    pub fn images_per_s(&self) -> f64 {
        self.images as f64 / self.start.elapsed().as_secs_f64().max(1e-9)
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn schedule_warms_up_then_decays() {
        let s = LrSchedule::new(1.0, 4, 20);
        assert!((s.lr_at(0) - 0.25).abs() < 1e-12);
        assert!((s.lr_at(3) - 1.0).abs() < 1e-12);
        assert!((s.lr_at(4) - 1.0).abs() < 1e-12);
        for t in 5..20 {
            assert!(s.lr_at(t) < s.lr_at(t - 1));
        }
        assert!((s.lr_at(20) - 0.01).abs() < 1e-12);
        assert!((s.lr_at(1000) - 0.01).abs() < 1e-12);
    }

    #[test]
    fn early_stopping_waits_for_patience() {
        let mut es = EarlyStopping::new(2, 0.0);
        assert_eq!(es.update(1.0), StopDecision::Improved);
        assert_eq!(es.update(0.5), StopDecision::Improved);
        assert_eq!(es.update(0.6), StopDecision::Continue);
        assert_eq!(es.update(0.4), StopDecision::Improved);
        assert_eq!(es.update(0.4), StopDecision::Continue);
        assert_eq!(es.update(0.9), StopDecision::Stop);
        assert_eq!(es.best(), 0.4);
    }

    #[test]
    fn nan_loss_stops_with_a_clear_error() {
        let v = Var::zeros(3, DType::F32, &Device::Cpu).unwrap();
        let mut t = Trainer::new(
            vec![v.clone()],
            LrSchedule::new(0.1, 0, 10),
            0.0,
            "pretrain",
        )
        .unwrap();
        let ok = (v.as_tensor() - 1.0)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        assert_eq!(t.step(&ok).unwrap(), 3.0);
        let bad = (v.as_tensor().sum_all().unwrap() / 0.0)
            .unwrap()
            .log()
            .unwrap();
        let bad = (bad * f64::NAN).unwrap();
        let e = t.step(&bad).unwrap_err().to_string();
        assert!(
            e.contains("pretrain") && e.contains("NaN") && e.contains("step 1"),
            "{e}"
        );
    }
}

/// Settings of one [`fit`] run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FitConfig {
    /// Maximum number of passes over the items.
    pub epochs: usize,
    /// Items per optimiser step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Fraction of the steps spent in linear warmup.
    pub warmup_fraction: f64,
    /// Stop after this many epochs without validation improvement (needs a
    /// validation closure); `None` trains for all epochs. Epochs that end
    /// before the warmup does are neither kept nor counted.
    pub patience: Option<usize>,
    /// Seed of the shuffling order.
    pub seed: u64,
    /// Skip each epoch's last batch when it is smaller than `batch_size`
    /// (losses that compare the samples of a batch need a full one).
    #[serde(default)]
    pub drop_last: bool,
}

impl FitConfig {
    /// Optimiser steps per epoch over `n_items` items: a short last batch
    /// counts unless `drop_last` (and there is at least one full batch).
    pub fn steps_per_epoch(&self, n_items: usize) -> usize {
        if self.drop_last && n_items >= self.batch_size {
            n_items / self.batch_size
        } else {
            n_items.div_ceil(self.batch_size)
        }
    }
}

/// What a [`fit`] run did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FitReport {
    /// Epochs actually run.
    pub epochs_run: usize,
    /// Mean training loss of each epoch.
    pub train_loss: Vec<f64>,
    /// Training loss of every optimiser step (for loss curves).
    #[serde(default)]
    pub step_loss: Vec<f32>,
    /// Validation loss after each epoch (empty without validation).
    pub val_loss: Vec<f64>,
    /// Epoch (1-based) whose weights were kept; 0 means the last.
    pub best_epoch: usize,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Training images per second (as counted by the step closure).
    pub images_per_s: f64,
}

/// Copies every variable of `map` (including BatchNorm running statistics).
pub fn snapshot(map: &candle_nn::VarMap) -> Result<Vec<(Var, Tensor)>> {
    let data = map.data().lock().expect("var map poisoned");
    data.values()
        .map(|v| Ok((v.clone(), v.as_tensor().copy()?)))
        .collect()
}

/// Restores a [`snapshot`].
pub fn restore(snap: &[(Var, Tensor)]) -> Result<()> {
    for (v, t) in snap {
        v.set(t)?;
    }
    Ok(())
}

/// A generic training loop: `epochs` passes over `n_items` items in seeded
/// random order, `batch_size` at a time. `step` gets the batch's item
/// indices and the global step number and returns the loss tensor and the
/// number of images it processed. `validate`, if given, returns a validation
/// loss after each epoch: with `patience` it drives early stopping and the
/// best epoch's weights (all of `map`) are restored at the end.
#[allow(clippy::too_many_arguments)]
pub fn fit(
    cfg: &FitConfig,
    stage: &str,
    n_items: usize,
    vars: Vec<Var>,
    map: &candle_nn::VarMap,
    quiet: bool,
    mut step: impl FnMut(&[usize], u64) -> Result<(Tensor, usize)>,
    validate: Option<&mut dyn FnMut() -> Result<f64>>,
) -> Result<FitReport> {
    fit_prefetched(
        cfg,
        stage,
        n_items,
        vars,
        map,
        quiet,
        |items, _| Ok(items.to_vec()),
        |items: Vec<usize>, s| step(&items, s),
        validate,
    )
}

/// [`fit`] with the batch preparation split off: `prepare` (item indices,
/// step) builds a batch on a background thread — gathering, augmenting,
/// anything CPU-side — up to two batches ahead, while `step` (batch, step)
/// trains on the previous one. On a GPU this keeps the device fed; the
/// batches and their order are the same as without prefetching, so results
/// do not change.
#[allow(clippy::too_many_arguments)]
pub fn fit_prefetched<B: Send>(
    cfg: &FitConfig,
    stage: &str,
    n_items: usize,
    vars: Vec<Var>,
    map: &candle_nn::VarMap,
    quiet: bool,
    prepare: impl Fn(&[usize], u64) -> Result<B> + Sync,
    mut step: impl FnMut(B, u64) -> Result<(Tensor, usize)>,
    mut validate: Option<&mut dyn FnMut() -> Result<f64>>,
) -> Result<FitReport> {
    use rand::seq::SliceRandom;
    if n_items == 0 {
        return Err(Error::invalid(stage, "no training items"));
    }
    if cfg.batch_size == 0 || cfg.epochs == 0 {
        return Err(Error::invalid(
            stage,
            "batch size and epochs must be at least 1",
        ));
    }
    let start = Instant::now();
    let steps_per_epoch = cfg.steps_per_epoch(n_items);
    let total = steps_per_epoch * cfg.epochs;
    let warmup = (total as f64 * cfg.warmup_fraction).round() as usize;
    let mut trainer = Trainer::new(
        vars,
        LrSchedule::new(cfg.lr, warmup, total),
        cfg.weight_decay,
        stage,
    )?;
    let mut progress = Progress::new(total as u64, stage, quiet);
    let mut stopper = EarlyStopping::new(cfg.patience.unwrap_or(usize::MAX), 1e-4);
    let mut best: Option<Vec<(Var, Tensor)>> = None;
    let mut report = FitReport::default();
    let mut order: Vec<usize> = (0..n_items).collect();
    for epoch in 0..cfg.epochs {
        order.shuffle(&mut crate::rng::stream_at(
            cfg.seed,
            "shuffle",
            epoch as u64,
        ));
        let base = trainer.steps() as u64;
        let chunks: Vec<&[usize]> = order.chunks(cfg.batch_size).take(steps_per_epoch).collect();
        let sum = std::thread::scope(|scope| -> Result<f64> {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<B>>(2);
            let (prepare, chunks) = (&prepare, &chunks);
            scope.spawn(move || {
                for (k, c) in chunks.iter().enumerate() {
                    if tx.send(prepare(c, base + k as u64)).is_err() {
                        break; // the trainer stopped (an error): stop preparing
                    }
                }
            });
            let mut sum = 0.0;
            let step_loss = &mut report.step_loss;
            for k in 0..chunks.len() {
                let batch = rx
                    .recv()
                    .map_err(|_| Error::invalid(stage, "batch preparation stopped"))??;
                let (loss, images) = step(batch, base + k as u64)?;
                let v = trainer.step(&loss)?;
                sum += f64::from(v);
                step_loss.push(v);
                progress.step(images, v);
            }
            Ok(sum)
        })?;
        report.train_loss.push(sum / steps_per_epoch as f64);
        report.epochs_run = epoch + 1;
        if let Some(val) = validate.as_deref_mut() {
            let vl = val()?;
            check_finite(vl as f32, stage, trainer.steps())?;
            report.val_loss.push(vl);
            // Epochs that end inside the warmup are not candidates: the
            // learning rate has not reached its peak, and an all but
            // untrained model can score a deceptively good loss (near-uniform
            // predictions on a small validation set).
            let warmed_up = (epoch + 1) * steps_per_epoch >= warmup;
            let decision = if warmed_up {
                stopper.update(vl)
            } else {
                StopDecision::Continue
            };
            tracing::debug!(
                stage,
                epoch = epoch + 1,
                train_loss = sum / steps_per_epoch as f64,
                val_loss = vl,
                "epoch done"
            );
            if !quiet {
                progress.note(format!(
                    "{stage}: epoch {} train loss {:.4} val loss {vl:.4}",
                    epoch + 1,
                    sum / steps_per_epoch as f64
                ));
            }
            if cfg.patience.is_some() {
                match decision {
                    StopDecision::Improved => {
                        best = Some(snapshot(map)?);
                        report.best_epoch = epoch + 1;
                    }
                    StopDecision::Stop => break,
                    StopDecision::Continue => {}
                }
            }
        } else {
            tracing::debug!(
                stage,
                epoch = epoch + 1,
                train_loss = sum / steps_per_epoch as f64,
                "epoch done"
            );
        }
    }
    if let Some(snap) = best {
        if report.best_epoch < report.epochs_run {
            restore(&snap)?;
        }
    }
    report.images_per_s = progress.images_per_s();
    progress.finish();
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod fit_tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn fit_minimises_and_restores_the_best_epoch() {
        let map = candle_nn::VarMap::new();
        let vb = crate::params::seeded_var_builder(&map, 0, &Device::Cpu);
        let w = vb.get(4, "w").unwrap();
        let target = Tensor::new(&[1f32, -2.0, 3.0, 0.5], &Device::Cpu).unwrap();
        let cfg = FitConfig {
            epochs: 30,
            batch_size: 2,
            lr: 0.1,
            weight_decay: 0.0,
            warmup_fraction: 0.1,
            patience: Some(3),
            seed: 0,
            drop_last: false,
        };
        let w2 = w.clone();
        let t2 = target.clone();
        let mut calls = 0;
        let mut val = || -> Result<f64> {
            calls += 1;
            let d = (&w2 - &t2)?.sqr()?.sum_all()?.to_scalar::<f32>()?;
            // pretend validation gets worse after epoch 5
            Ok(if calls > 5 {
                10.0 + calls as f64
            } else {
                f64::from(d)
            })
        };
        let rep = fit(
            &cfg,
            "test",
            8,
            map.all_vars(),
            &map,
            true,
            |idx, _| Ok(((&w - &target)?.sqr()?.sum_all()?, idx.len())),
            Some(&mut val),
        )
        .unwrap();
        assert_eq!(rep.best_epoch, 5);
        assert_eq!(rep.epochs_run, 8, "stops after patience runs out");
        assert!(rep.train_loss[4] < rep.train_loss[0]);
        // weights are those after epoch 5, whose val loss was recorded
        let d = (&w - &target)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((f64::from(d) - rep.val_loss[4]).abs() < 1e-5);
    }

    #[test]
    fn epochs_inside_the_warmup_are_never_kept() {
        let map = candle_nn::VarMap::new();
        let vb = crate::params::seeded_var_builder(&map, 0, &Device::Cpu);
        let w = vb.get(2, "w").unwrap();
        // 10 epochs of 4 steps, 12 warmup steps: epochs 1 and 2 end inside it.
        let cfg = FitConfig {
            epochs: 10,
            batch_size: 2,
            lr: 0.01,
            weight_decay: 0.0,
            warmup_fraction: 0.3,
            patience: Some(2),
            seed: 0,
            drop_last: false,
        };
        // The validation loss is best after epoch 1, then only gets worse.
        let mut calls = 0;
        let mut val = || -> Result<f64> {
            calls += 1;
            Ok(if calls == 1 { 0.0 } else { calls as f64 })
        };
        let rep = fit(
            &cfg,
            "test",
            8,
            map.all_vars(),
            &map,
            true,
            |idx, _| Ok((w.sqr()?.sum_all()?, idx.len())),
            Some(&mut val),
        )
        .unwrap();
        assert_eq!(rep.best_epoch, 3, "the first epoch after the warmup");
        assert_eq!(rep.epochs_run, 5, "then patience 2 runs out");
        assert_eq!(rep.val_loss.len(), 5);
    }

    #[test]
    fn prefetched_batches_arrive_in_order_and_errors_stop_the_loop() {
        let map = candle_nn::VarMap::new();
        let vb = crate::params::seeded_var_builder(&map, 0, &Device::Cpu);
        let w = vb.get(2, "w").unwrap();
        let cfg = FitConfig {
            epochs: 2,
            batch_size: 3,
            lr: 0.01,
            weight_decay: 0.0,
            warmup_fraction: 0.0,
            patience: None,
            seed: 1,
            drop_last: false,
        };
        let mut seen = Vec::new();
        fit_prefetched(
            &cfg,
            "test",
            7,
            map.all_vars(),
            &map,
            true,
            |items, step| Ok((items.to_vec(), step)),
            |(items, prepared_at): (Vec<usize>, u64), step| {
                assert_eq!(prepared_at, step, "prepared for another step");
                seen.push(items);
                Ok((w.sqr()?.sum_all()?, 1))
            },
            None,
        )
        .unwrap();
        // 2 epochs of ceil(7 / 3) batches, each epoch a permutation of 0..7.
        assert_eq!(seen.len(), 6);
        for epoch in seen.chunks(3) {
            let mut all: Vec<usize> = epoch.concat();
            all.sort();
            assert_eq!(all, (0..7).collect::<Vec<_>>());
        }
        let e = fit_prefetched(
            &cfg,
            "prep",
            7,
            map.all_vars(),
            &map,
            true,
            |_, step| {
                if step == 1 {
                    Err(Error::invalid("augment", "broken image"))
                } else {
                    Ok(())
                }
            },
            |_: (), _| Ok((w.sqr()?.sum_all()?, 1)),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("broken image"), "{e}");
        // drop_last: only full batches, 2 per epoch, and a loss per step.
        let mut sizes = Vec::new();
        let rep = fit_prefetched(
            &FitConfig {
                drop_last: true,
                ..cfg.clone()
            },
            "drop",
            7,
            map.all_vars(),
            &map,
            true,
            |items, _| Ok(items.len()),
            |n: usize, _| {
                sizes.push(n);
                Ok((w.sqr()?.sum_all()?, n))
            },
            None,
        )
        .unwrap();
        assert_eq!(sizes, vec![3, 3, 3, 3]);
        assert_eq!(rep.step_loss.len(), 4);
    }
}
