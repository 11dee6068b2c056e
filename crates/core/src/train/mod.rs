//! Training-loop parts: AdamW under a warmup + cosine schedule, early
//! stopping, a guard against non-finite losses and a progress bar; and the
//! generic loop that uses them ([`fit()`], in `fit.rs`).

mod fit;
mod metrics_log;
mod resume;
pub use fit::*;
pub use metrics_log::{metrics_csv, write_metrics_csv};
pub use resume::{DirCheckpoint, EpochCheckpoint, Saved, WithMeta};

use crate::{Error, Result};
use candle_core::{Tensor, Var};
use candle_nn::{Optimizer as _, ParamsAdamW};
use indicatif::ProgressBar;
use selfsup_kernels::AdamW;
use std::time::Instant;

/// Where a stage runs and what it is called in progress bars and errors.
#[derive(Clone, Copy)]
pub struct StageRun<'a> {
    /// Where tensors live.
    pub device: &'a candle_core::Device,
    /// No progress bars.
    pub quiet: bool,
    /// The stage's name (`finetune/simclr`).
    pub stage: &'a str,
    /// Keep the loop's state between epochs here, and continue from what
    /// a killed run of the same stage left (see [`FitRun::checkpoint`]).
    pub checkpoint: Option<&'a dyn EpochCheckpoint>,
}

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
    ///
    /// On the CPU the loss is checked before the step. On a GPU the whole
    /// step is queued first and the loss read after: reading it first would
    /// make the device wait, idle, for the host to queue the backward pass.
    /// A non-finite loss is then reported after a step that the run does
    /// not survive (the error ends it before anything is saved).
    pub fn step(&mut self, loss: &Tensor) -> Result<f32> {
        let read = |l: &Tensor| l.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>();
        self.opt.set_learning_rate(self.schedule.lr_at(self.step));
        let value = if loss.device().is_cpu() {
            let value = read(loss)?;
            check_finite(value, &self.stage, self.step)?;
            self.opt.backward_step(loss)?;
            value
        } else {
            self.opt.backward_step(loss)?;
            let value = read(loss)?;
            check_finite(value, &self.stage, self.step)?;
            value
        };
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

    /// The optimizer's state ([`AdamW::state`]); `None` off the CPU.
    pub fn state(&self) -> Option<selfsup_kernels::adamw::AdamWState> {
        self.opt.state()
    }

    /// Continues from a [`Trainer::state`] taken after `steps` steps.
    pub fn restore(&mut self, state: selfsup_kernels::adamw::AdamWState) -> Result<()> {
        self.step = state.0;
        Ok(self.opt.restore(state)?)
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

    /// (best loss, evaluations since it), to continue from later.
    pub fn state(&self) -> (f64, usize) {
        (self.best, self.bad)
    }

    /// Continues from a [`EarlyStopping::state`].
    pub fn restore(&mut self, (best, bad): (f64, usize)) {
        (self.best, self.bad) = (best, bad);
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
        let bar = crate::progress::bar(
            total,
            label,
            "[{bar:30}] {pos}/{len} {elapsed_precise}<{eta_precise} {msg}",
            quiet,
        );
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
        if self.quiet || crate::progress::is_quiet() {
            return;
        }
        crate::progress::suspend(|| eprintln!("{msg}"));
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
