//! FixMatch (Sohn et al. 2020): the classifier labels weak views of the
//! unlabeled images itself and learns strong views of the confident ones.

use crate::classifier::{reestimate_batchnorm, Classifier};
use crate::{without_labeled, Images, StageRun};
use candle_core::{DType, Module, Tensor, D};
use selfsup_augment::{apply_batch, Pipeline};
use selfsup_core::train::{fit_prefetched, EpochCheckpoint, FitConfig, FitRun, WithMeta};
use selfsup_core::{params, rng, Error, Result};
use selfsup_data::batch;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;

/// Settings of [`fixmatch`]: semi-supervised fine-tuning in which the model
/// labels the unlabeled images itself, online (Sohn et al. 2020, FixMatch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FixMatchConfig {
    /// Optimisation; `epochs` count passes over the unlabeled images and
    /// `batch_size` is the number of unlabeled images per step.
    pub fit: FitConfig,
    /// Labeled images per step (drawn with replacement, weakly augmented).
    pub labeled_batch: usize,
    /// Weak augmentation: labeled images and the views that are labeled.
    pub weak: Pipeline,
    /// Strong augmentation: the views that learn from those labels.
    pub strong: Pipeline,
    /// Least confidence (top softmax probability on the weak view) for an
    /// unlabeled image to count in a step.
    pub threshold: f64,
    /// Weight of the unlabeled loss against the labeled cross-entropy.
    pub unlabeled_weight: f64,
    /// Batch size of the BatchNorm re-estimation after training.
    pub eval_batch: usize,
    /// Distribution alignment (Berthelot et al., ReMixMatch, 2020): before
    /// thresholding, each weak-view prediction is multiplied by the class
    /// distribution of the labeled images over a running average of the
    /// model's weak-view predictions ([`DistributionAlignment`]) and
    /// renormalised, so that a model drifting towards a few classes has its
    /// pseudo-labels pulled back to the labeled images' class balance.
    #[serde(default)]
    pub distribution_alignment: bool,
}

/// What the FixMatch loop carries from step to step besides the weights:
/// per-epoch counts of confident pseudo-labels and the alignment state.
#[derive(Serialize, Deserialize)]
struct LoopState {
    masked: Vec<f64>,
    seen: Vec<f64>,
    alignment: Option<DistributionAlignment>,
}

/// Momentum of the running average of predictions that
/// [`DistributionAlignment`] divides by (about the last 100 steps).
pub const ALIGNMENT_MOMENTUM: f64 = 0.99;

/// The state of distribution alignment: the target class distribution and
/// a running average of the model's predicted one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DistributionAlignment {
    target: Vec<f64>,
    running: Option<Vec<f64>>,
    momentum: f64,
}

impl DistributionAlignment {
    /// Aligns to the class distribution of `labels` over `classes` classes.
    pub fn new(labels: &[u32], classes: usize, momentum: f64) -> Self {
        let mut target = vec![0.0; classes];
        for &y in labels {
            if let Some(t) = target.get_mut(y as usize) {
                *t += 1.0;
            }
        }
        let n = target.iter().sum::<f64>().max(1.0);
        target.iter_mut().for_each(|t| *t /= n);
        Self {
            target,
            running: None,
            momentum,
        }
    }

    /// Folds the batch's mean prediction into the running average (the
    /// first batch starts it), then returns every row of `probs`
    /// multiplied by target / running and renormalised to sum to 1.
    pub fn align(&mut self, probs: &[Vec<f32>]) -> Vec<Vec<f32>> {
        let k = self.target.len();
        if probs.is_empty() {
            return Vec::new();
        }
        let mut mean = vec![0.0f64; k];
        for row in probs {
            for (m, &p) in mean.iter_mut().zip(row) {
                *m += f64::from(p) / probs.len() as f64;
            }
        }
        let running = match self.running.take() {
            None => mean,
            Some(r) => r
                .iter()
                .zip(&mean)
                .map(|(r, m)| self.momentum * r + (1.0 - self.momentum) * m)
                .collect(),
        };
        let scale: Vec<f64> = self
            .target
            .iter()
            .zip(&running)
            .map(|(t, r)| t / r.max(1e-6))
            .collect();
        self.running = Some(running);
        probs
            .iter()
            .map(|row| {
                let w: Vec<f64> = row
                    .iter()
                    .zip(&scale)
                    .map(|(&p, s)| f64::from(p) * s)
                    .collect();
                let sum = w.iter().sum::<f64>();
                if sum > 0.0 {
                    w.iter().map(|v| (v / sum) as f32).collect()
                } else {
                    row.clone()
                }
            })
            .collect()
    }
}

impl FixMatchConfig {
    /// Fails on a threshold outside [0, 1], a negative or non-finite
    /// weight, or an empty labeled batch.
    pub fn check(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(Error::invalid(
                "fixmatch_threshold",
                format!("must lie in [0, 1], got {}", self.threshold),
            ));
        }
        if !(self.unlabeled_weight >= 0.0 && self.unlabeled_weight.is_finite()) {
            return Err(Error::invalid(
                "fixmatch_unlabeled_weight",
                format!("must be a number >= 0, got {}", self.unlabeled_weight),
            ));
        }
        if self.labeled_batch == 0 {
            return Err(Error::invalid(
                "fixmatch_labeled_batch",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// What [`fixmatch`] measured besides the losses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FixMatchStats {
    /// Share of unlabeled images over the threshold, per epoch.
    pub mask_rate: Vec<f64>,
}

/// FixMatch-style semi-supervised training of `student` (usually a
/// fine-tuned classifier): every step takes `cfg.fit.batch_size` unlabeled
/// images and `cfg.labeled_batch` labeled ones; the model's own prediction
/// on a weak view of each unlabeled image becomes its hard label where the
/// model is at least `cfg.threshold` confident, and a strong view of it is
/// trained towards that label. Loss: cross-entropy on the labeled images +
/// `cfg.unlabeled_weight` x the masked cross-entropy on the strong views
/// (averaged over all unlabeled images of the step). The three parts go
/// through the network as one batch, so BatchNorm sees them together.
/// Labeled images found in `unlabeled` are dropped from it; the images'
/// labels in `train` are read only for `labeled`. BatchNorm averages are
/// re-estimated on the clean unlabeled images at the end.
pub fn fixmatch(
    cfg: &FixMatchConfig,
    student: Classifier,
    data: Images,
    run: StageRun,
) -> Result<(Classifier, FixMatchStats)> {
    let Images {
        train,
        labeled,
        unlabeled,
        norm,
    } = data;
    let StageRun {
        device,
        quiet,
        stage,
        checkpoint,
    } = run;
    use rand::Rng as _;
    cfg.check()?;
    let labels = train.labels().ok_or_else(|| {
        Error::invalid(
            "dataset",
            "semi-supervised training needs the labeled images' labels",
        )
    })?;
    if labeled.is_empty() {
        return Err(Error::invalid(stage, "no labeled images"));
    }
    let unlabeled = without_labeled(unlabeled, labeled, stage)?;
    let shape = train.image_shape();
    let seed = cfg.fit.seed;
    let vars = params::trainable_vars(&student.map)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let (backbone, head) = (&student.backbone, &student.head);
    let per_epoch = cfg.fit.steps_per_epoch(unlabeled.len());
    // Kept with the loop's state, so that a continued run aligns and
    // counts as an uninterrupted one.
    let state = RefCell::new(LoopState {
        masked: vec![0.0; cfg.fit.epochs],
        seen: vec![0.0; cfg.fit.epochs],
        alignment: None,
    });
    let store = checkpoint.map(|inner| WithMeta {
        inner,
        key: "fixmatch",
        state: &state,
    });
    let report = fit_prefetched(
        FitRun {
            cfg: &cfg.fit,
            stage,
            n_items: unlabeled.len(),
            vars,
            map: &student.map,
            quiet,
            checkpoint: store.as_ref().map(|s| s as &dyn EpochCheckpoint),
        },
        |items, step| {
            let mut r = rng::stream_at(seed, "fixmatch-labeled", step);
            let lab: Vec<usize> = (0..cfg.labeled_batch)
                .map(|_| labeled[r.random_range(0..labeled.len())])
                .collect();
            let y: Vec<u32> = lab.iter().map(|&i| labels[i]).collect();
            let xl = apply_batch(&cfg.weak, &train.pixels_of(&lab), shape, seed, step);
            let idx: Vec<usize> = items.iter().map(|&i| unlabeled[i]).collect();
            let px = train.pixels_of(&idx);
            let weak = apply_batch(
                &cfg.weak,
                &px,
                shape,
                rng::derive_seed(seed, "weak", 0),
                step,
            );
            let strong = apply_batch(
                &cfg.strong,
                &px,
                shape,
                rng::derive_seed(seed, "strong", 0),
                step,
            );
            Ok((xl, y, weak, strong))
        },
        |(xl, y, weak, strong): (Vec<u8>, Vec<u32>, Vec<u8>, Vec<u8>), step| {
            let (nl, nu) = (y.len(), weak.len() / (shape.0 * shape.1 * shape.2));
            let x = Tensor::cat(
                &[
                    batch::to_tensor(&xl, shape, norm, device)?,
                    batch::to_tensor(&weak, shape, norm, device)?,
                    batch::to_tensor(&strong, shape, norm, device)?,
                ],
                0,
            )?;
            let logits = head.forward(&backbone.forward_t(&x, true)?)?;
            let y = Tensor::new(y.as_slice(), device)?;
            let sup = candle_nn::loss::cross_entropy(&logits.narrow(0, 0, nl)?, &y)?;
            let mut probs =
                candle_nn::ops::softmax(&logits.narrow(0, nl, nu)?.detach(), D::Minus1)?;
            let mut st = state.borrow_mut();
            if cfg.distribution_alignment {
                let classes = probs.dim(1)?;
                let da = st.alignment.get_or_insert_with(|| {
                    let y: Vec<u32> = labeled.iter().map(|&i| labels[i]).collect();
                    DistributionAlignment::new(&y, classes, ALIGNMENT_MOMENTUM)
                });
                let rows = da.align(&probs.to_dtype(DType::F32)?.to_vec2::<f32>()?);
                let flat: Vec<f32> = rows.into_iter().flatten().collect();
                probs = Tensor::from_vec(flat, (nu, classes), device)?.to_dtype(probs.dtype())?;
            }
            let conf = probs.max(D::Minus1)?;
            let pseudo = probs.argmax(D::Minus1)?;
            let mask = conf.ge(cfg.threshold)?.to_dtype(DType::F32)?;
            let log_p = candle_nn::ops::log_softmax(&logits.narrow(0, nl + nu, nu)?, D::Minus1)?;
            let nll = log_p.gather(&pseudo.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
            let unsup = ((nll * &mask)?.sum_all()? / nu as f64)?;
            let epoch = (step as usize / per_epoch).min(cfg.fit.epochs - 1);
            st.masked[epoch] += f64::from(mask.sum_all()?.to_scalar::<f32>()?);
            st.seen[epoch] += nu as f64;
            let loss = (sup + (unsup * cfg.unlabeled_weight)?)?;
            Ok((loss, nl + 2 * nu))
        },
        None,
    )?;
    reestimate_batchnorm(
        backbone.as_ref(),
        train,
        &unlabeled,
        norm,
        cfg.eval_batch,
        device,
    )?;
    let LoopState { masked, seen, .. } = state.into_inner();
    let mask_rate = masked
        .iter()
        .zip(&seen)
        .take(report.epochs_run)
        .map(|(m, n)| m / n.max(1.0))
        .collect();
    Ok((
        Classifier { report, ..student },
        FixMatchStats { mask_rate },
    ))
}
