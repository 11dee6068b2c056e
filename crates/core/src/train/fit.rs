//! The generic training loop every stage runs: seeded epochs over items,
//! batches prepared on a background thread, AdamW, early stopping on a
//! validation score with the best epoch's weights restored.

use super::{
    check_finite, EarlyStopping, EpochCheckpoint, LrSchedule, Progress, Saved, StopDecision,
    Trainer,
};
use crate::params::named_vars;
use crate::{Error, Result};
use candle_core::{Tensor, Var};
use std::collections::HashMap;
use std::time::Instant;

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
    /// Learning rate of every optimiser step.
    #[serde(default)]
    pub step_lr: Vec<f64>,
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

/// One run of the loop: its settings, its name in progress bars and
/// errors, how many items it passes over, and what it trains.
pub struct FitRun<'a> {
    /// Epochs, batch size, learning rate, early stopping, seed.
    pub cfg: &'a FitConfig,
    /// The stage's name (`pretrain/simclr`).
    pub stage: &'a str,
    /// How many items an epoch passes over.
    pub n_items: usize,
    /// The variables the optimiser updates.
    pub vars: Vec<Var>,
    /// Every variable (trained or not, BatchNorm statistics included), for
    /// restoring the best epoch.
    pub map: &'a candle_nn::VarMap,
    /// No progress bar.
    pub quiet: bool,
    /// Keep the state after every epoch here, and start from what an
    /// interrupted run left (CPU training only: elsewhere the optimizer's
    /// state cannot be read, and nothing is kept).
    pub checkpoint: Option<&'a dyn EpochCheckpoint>,
}

/// A generic training loop: `epochs` passes over `n_items` items in seeded
/// random order, `batch_size` at a time. `step` gets the batch's item
/// indices and the global step number and returns the loss tensor and the
/// number of images it processed. `validate`, if given, returns a validation
/// loss after each epoch: with `patience` it drives early stopping and the
/// best epoch's weights (all of `map`) are restored at the end.
pub fn fit(
    run: FitRun,
    mut step: impl FnMut(&[usize], u64) -> Result<(Tensor, usize)>,
    validate: Option<&mut dyn FnMut() -> Result<f64>>,
) -> Result<FitReport> {
    fit_prefetched(
        run,
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
pub fn fit_prefetched<B: Send>(
    run: FitRun,
    prepare: impl Fn(&[usize], u64) -> Result<B> + Sync,
    mut step: impl FnMut(B, u64) -> Result<(Tensor, usize)>,
    mut validate: Option<&mut dyn FnMut() -> Result<f64>>,
) -> Result<FitReport> {
    use rand::seq::SliceRandom;
    let FitRun {
        cfg,
        stage,
        n_items,
        vars,
        map,
        quiet,
        checkpoint,
    } = run;
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
    let shuffle = |order: &mut Vec<usize>, epoch: usize| {
        order.shuffle(&mut crate::rng::stream_at(
            cfg.seed,
            "shuffle",
            epoch as u64,
        ))
    };
    let mut first = 0;
    if let Some(saved) = checkpoint.map(|c| c.load()).transpose()?.flatten() {
        first = saved.epochs_done;
        tracing::info!(
            stage,
            epochs = first,
            "continuing from the state a killed run left"
        );
        resume_from(
            saved,
            map,
            &mut trainer,
            &mut stopper,
            &mut best,
            &mut report,
        )?;
        // The order of each epoch shuffles the previous one's.
        (0..first).for_each(|e| shuffle(&mut order, e));
    }
    for epoch in first..cfg.epochs {
        shuffle(&mut order, epoch);
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
            let (step_loss, step_lr) = (&mut report.step_loss, &mut report.step_lr);
            for k in 0..chunks.len() {
                let batch = rx
                    .recv()
                    .map_err(|_| Error::invalid(stage, "batch preparation stopped"))??;
                let (loss, images) = step(batch, base + k as u64)?;
                step_lr.push(trainer.current_lr());
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
        if let Some(c) = checkpoint.filter(|c| c.due(epoch + 1)) {
            let state = LoopState {
                map,
                trainer: &trainer,
                stopper: &stopper,
                best: best.as_deref(),
                report: &report,
            };
            keep(c, state)?;
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

/// The loop's state, as [`keep`] saves it.
struct LoopState<'a> {
    map: &'a candle_nn::VarMap,
    trainer: &'a Trainer,
    stopper: &'a EarlyStopping,
    best: Option<&'a [(Var, Tensor)]>,
    report: &'a FitReport,
}

/// Saves the state after an epoch (nothing when the optimizer's state
/// cannot be read: off the CPU).
fn keep(c: &dyn EpochCheckpoint, s: LoopState) -> Result<()> {
    let Some((step_t, moments)) = s.trainer.state() else {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!("mid-training checkpoints need CPU f32 training; none is kept")
        });
        return Ok(());
    };
    let mut tensors = HashMap::new();
    let vars = named_vars(s.map);
    for (name, var) in &vars {
        tensors.insert(format!("var.{name}"), var.as_tensor().copy()?);
    }
    for (var, t) in s.best.unwrap_or_default() {
        if let Some((name, _)) = vars
            .iter()
            .find(|(_, v)| v.as_tensor().id() == var.as_tensor().id())
        {
            tensors.insert(format!("best.{name}"), t.clone());
        }
    }
    for (i, (m, v)) in moments.into_iter().enumerate() {
        let n = m.len();
        let cpu = &candle_core::Device::Cpu;
        tensors.insert(format!("adam.m.{i}"), Tensor::from_vec(m, n, cpu)?);
        tensors.insert(format!("adam.v.{i}"), Tensor::from_vec(v, n, cpu)?);
    }
    let (best, bad) = s.stopper.state();
    c.save(Saved {
        epochs_done: s.report.epochs_run,
        report: s.report.clone(),
        stopper: (best.is_finite().then_some(best), bad),
        meta: serde_json::json!({ "adam_step": step_t }),
        tensors,
    })
}

/// Sets the loop's state from what [`keep`] saved.
fn resume_from(
    saved: Saved,
    map: &candle_nn::VarMap,
    trainer: &mut Trainer,
    stopper: &mut EarlyStopping,
    best: &mut Option<Vec<(Var, Tensor)>>,
    report: &mut FitReport,
) -> Result<()> {
    let missing =
        |name: &str| Error::invalid("checkpoint", format!("the saved state lacks {name}"));
    let t = &saved.tensors;
    let mut best_vars = Vec::new();
    for (name, var) in named_vars(map) {
        let v = t
            .get(&format!("var.{name}"))
            .ok_or_else(|| missing(&name))?;
        var.set(&v.to_device(var.device())?)?;
        if let Some(b) = t.get(&format!("best.{name}")) {
            best_vars.push((var.clone(), b.to_device(var.device())?));
        }
    }
    *best = (!best_vars.is_empty()).then_some(best_vars);
    let mut moments = Vec::new();
    while let Some(m) = t.get(&format!("adam.m.{}", moments.len())) {
        let v = t
            .get(&format!("adam.v.{}", moments.len()))
            .ok_or_else(|| missing("adam.v"))?;
        moments.push((m.to_vec1::<f32>()?, v.to_vec1::<f32>()?));
    }
    let step_t = saved.meta["adam_step"]
        .as_u64()
        .ok_or_else(|| missing("adam_step"))? as usize;
    trainer.restore((step_t, moments))?;
    stopper.restore((saved.stopper.0.unwrap_or(f64::INFINITY), saved.stopper.1));
    *report = saved.report;
    Ok(())
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
            FitRun {
                cfg: &cfg,
                stage: "test",
                n_items: 8,
                vars: map.all_vars(),
                map: &map,
                quiet: true,
                checkpoint: None,
            },
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
            FitRun {
                cfg: &cfg,
                stage: "test",
                n_items: 8,
                vars: map.all_vars(),
                map: &map,
                quiet: true,
                checkpoint: None,
            },
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
            FitRun {
                cfg: &cfg,
                stage: "test",
                n_items: 7,
                vars: map.all_vars(),
                map: &map,
                quiet: true,
                checkpoint: None,
            },
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
            FitRun {
                cfg: &cfg,
                stage: "prep",
                n_items: 7,
                vars: map.all_vars(),
                map: &map,
                quiet: true,
                checkpoint: None,
            },
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
            FitRun {
                cfg: &FitConfig {
                    drop_last: true,
                    ..cfg.clone()
                },
                stage: "drop",
                n_items: 7,
                vars: map.all_vars(),
                map: &map,
                quiet: true,
                checkpoint: None,
            },
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

    /// A run killed after some epochs and continued from its checkpoint ends
    /// with the weights and history of one never interrupted, whether the
    /// state was kept after every epoch or every second one.
    #[test]
    fn a_killed_run_continues_to_the_same_end() {
        let cfg = FitConfig {
            epochs: 8,
            batch_size: 3,
            lr: 0.05,
            weight_decay: 0.01,
            warmup_fraction: 0.2,
            patience: Some(3),
            seed: 5,
            drop_last: false,
        };
        let target = Tensor::new(&[1f32, -2.0, 3.0, 0.5], &Device::Cpu).unwrap();
        // One run: `kill_at` makes a step fail like a killed process.
        let train = |dir: Option<&std::path::Path>, every: usize, kill_at: Option<u64>| {
            let map = candle_nn::VarMap::new();
            let vb = crate::params::seeded_var_builder(&map, 0, &Device::Cpu);
            let w = vb.get(4, "w").unwrap();
            let store = dir.map(|d| super::super::DirCheckpoint {
                dir: d.to_path_buf(),
                key: serde_json::json!({"stage": "test"}),
                device: Device::Cpu,
                every,
            });
            let (w2, t2) = (w.clone(), target.clone());
            // A pure function of the weights, as a real validation loss is.
            let mut val = || -> Result<f64> {
                let d = (&w2 - &t2)?.abs()?.sum_all()?.to_scalar::<f32>()?;
                Ok(f64::from(d).sin().abs())
            };
            let rep = fit(
                FitRun {
                    cfg: &cfg,
                    stage: "test",
                    n_items: 10,
                    vars: map.all_vars(),
                    map: &map,
                    quiet: true,
                    checkpoint: store.as_ref().map(|s| s as &dyn EpochCheckpoint),
                },
                |idx, step| {
                    if Some(step) == kill_at {
                        return Err(Error::invalid("test", "killed"));
                    }
                    let scale = idx.iter().sum::<usize>() as f64 / 10.0;
                    Ok((((&w - &target)?.sqr()?.sum_all()? * scale)?, idx.len()))
                },
                Some(&mut val),
            );
            (rep, w.to_vec1::<f32>().unwrap())
        };
        let (whole, w_whole) = train(None, 1, None);
        let whole = whole.unwrap();
        // 4 steps an epoch: step 13 is in epoch 4.
        for (every, kept) in [(1, 3), (2, 2)] {
            let dir = tempfile::tempdir().unwrap();
            let ck = dir.path().join("progress");
            assert!(train(Some(&ck), every, Some(13)).0.is_err(), "it dies");
            let state: serde_json::Value =
                serde_json::from_slice(&std::fs::read(ck.join("state.json")).unwrap()).unwrap();
            assert_eq!(state["epochs_done"], kept, "every {every}");
            let (resumed, w_resumed) = train(Some(&ck), every, None);
            let resumed = resumed.unwrap();
            assert_eq!(w_resumed, w_whole);
            assert_eq!(resumed.train_loss, whole.train_loss);
            assert_eq!(resumed.val_loss, whole.val_loss);
            assert_eq!(resumed.step_loss, whole.step_loss);
            assert_eq!(
                (resumed.epochs_run, resumed.best_epoch),
                (whole.epochs_run, whole.best_epoch)
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("progress");
        assert!(train(Some(&ck), 0, Some(13)).0.is_err());
        assert!(!ck.exists(), "every 0 keeps nothing");
    }
}
