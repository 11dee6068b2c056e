//! Self-distillation (SimCLR v2, with Noisy Student's noise): a classifier
//! labels the unlabeled images with soft labels and a copy of it trains on
//! them.

use crate::classifier::{reestimate_batchnorm, to_cpu_f32, Classifier};
use crate::{without_labeled, Images, StageRun};
use candle_core::{Device, Module, Tensor, D};
use selfsup_augment::{apply_batch, Pipeline};
use selfsup_core::train::{fit_prefetched, FitConfig, FitRun};
use selfsup_core::{params, Error, Normalization, Result};
use selfsup_data::{batch, Dataset};
use serde::{Deserialize, Serialize};

/// Settings of [`distill`], SimCLR v2's third step: the fine-tuned
/// classifier (the teacher) labels the unlabeled images with its softened
/// class probabilities and a student trains on them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistillConfig {
    /// Optimisation of the student; `epochs` count passes over the
    /// unlabeled images (plus the repeated labeled ones).
    pub fit: FitConfig,
    /// Augmentation of the student's inputs (the teacher sees them plain).
    pub augment: Pipeline,
    /// Softmax temperature of both the teacher's targets and the student's
    /// logits in the distillation loss.
    pub temperature: f64,
    /// Share of each epoch's items that are labeled images (with their
    /// true, one-hot labels); the K labeled images are repeated to reach it.
    /// 0 trains on the teacher's labels alone.
    pub labeled_share: f64,
    /// Batch size for the teacher's inference.
    pub eval_batch: usize,
}

impl DistillConfig {
    /// Fails on a temperature that is not a positive number or a labeled
    /// share outside [0, 1).
    pub fn check(&self) -> Result<()> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(Error::invalid(
                "distill_temperature",
                format!("must be a positive number, got {}", self.temperature),
            ));
        }
        if !(0.0..1.0).contains(&self.labeled_share) {
            return Err(Error::invalid(
                "distill_labeled_share",
                format!("must lie in [0, 1), got {}", self.labeled_share),
            ));
        }
        Ok(())
    }
}

/// The teacher's softened class probabilities for the images at `indices`
/// (eval mode, no augmentation): softmax(logits / `temperature`), (N, C).
pub fn teacher_probabilities(
    teacher: &Classifier,
    ds: &Dataset,
    indices: &[usize],
    norm: &Normalization,
    temperature: f64,
    batch_size: usize,
    device: &Device,
) -> Result<Tensor> {
    let logits = (teacher.logits(ds, indices, norm, batch_size, device)? / temperature)?;
    Ok(candle_nn::ops::softmax(&logits, D::Minus1)?.detach())
}

/// Cross-entropy of `logits` (N, C) against target distributions `targets`
/// (N, C), both at `temperature`: mean over rows of
/// `-sum_c targets[c] * log softmax(logits / temperature)[c]`.
pub fn soft_cross_entropy(logits: &Tensor, targets: &Tensor, temperature: f64) -> Result<Tensor> {
    let log_p = candle_nn::ops::log_softmax(&(logits / temperature)?, D::Minus1)?;
    Ok((targets * log_p)?.sum(D::Minus1)?.mean_all()?.neg()?)
}

/// Self-distillation on unlabeled images (SimCLR v2's "pretrain, fine-tune,
/// distill"): `teacher` gives every image of `unlabeled` a soft label
/// ([`teacher_probabilities`]); `student` (usually a copy of the teacher)
/// trains on those images under `cfg.augment` against the soft labels
/// ([`soft_cross_entropy`]), with the `labeled` images mixed in under
/// their true labels. Labeled images found in `unlabeled` are dropped from
/// it. The images' labels in `train` are read only for `labeled`.
///
/// After training, the student's BatchNorm averages are re-estimated on the
/// clean unlabeled images ([`reestimate_batchnorm`]).
///
/// Returns the trained student and the teacher's predicted class for each
/// image of `unlabeled` (in its order, after the drop), for diagnostics.
pub fn distill(
    cfg: &DistillConfig,
    teacher: &Classifier,
    student: Classifier,
    data: Images,
    run: StageRun,
) -> Result<(Classifier, Vec<u32>)> {
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
    cfg.check()?;
    let labels = train.labels().ok_or_else(|| {
        Error::invalid("dataset", "distillation needs the labeled images' labels")
    })?;
    let unlabeled = without_labeled(unlabeled, labeled, stage)?;
    let classes = train.num_classes();
    let probs = teacher_probabilities(
        teacher,
        train,
        &unlabeled,
        norm,
        cfg.temperature,
        cfg.eval_batch,
        device,
    )?;
    let pseudo = probs.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let mut targets: Vec<f32> = to_cpu_f32(&probs)?.flatten_all()?.to_vec1()?;
    let mut images = unlabeled.clone();
    if cfg.labeled_share > 0.0 && !labeled.is_empty() {
        let wanted = cfg.labeled_share / (1.0 - cfg.labeled_share) * unlabeled.len() as f64;
        let repeats = (wanted / labeled.len() as f64).round().max(1.0) as usize;
        for _ in 0..repeats {
            for &i in labeled {
                images.push(i);
                targets.extend((0..classes).map(|c| f32::from(c as u32 == labels[i])));
            }
        }
    }
    let shape = train.image_shape();
    let seed = cfg.fit.seed;
    let vars = params::trainable_vars(&student.map)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let (backbone, head) = (&student.backbone, &student.head);
    let report = fit_prefetched(
        FitRun {
            cfg: &cfg.fit,
            stage,
            n_items: images.len(),
            vars,
            map: &student.map,
            quiet,
            checkpoint,
        },
        |items, step| {
            let idx: Vec<usize> = items.iter().map(|&i| images[i]).collect();
            let px = apply_batch(&cfg.augment, &train.pixels_of(&idx), shape, seed, step);
            let t: Vec<f32> = items
                .iter()
                .flat_map(|&i| targets[i * classes..(i + 1) * classes].iter().copied())
                .collect();
            Ok((px, t))
        },
        |(px, t): (Vec<u8>, Vec<f32>), _| {
            let n = t.len() / classes;
            let x = batch::to_tensor(&px, shape, norm, device)?;
            let t = Tensor::from_vec(t, (n, classes), device)?;
            let logits = head.forward(&backbone.forward_t(&x, true)?)?;
            Ok((soft_cross_entropy(&logits, &t, cfg.temperature)?, n))
        },
        None,
    )?;
    // The student's BatchNorm averages were accumulated on strongly
    // augmented images; test images are clean. Re-estimate them on the clean
    // unlabeled images (one pass: with momentum 0.1 the old averages keep a
    // weight of 0.9^batches, under 1e-3 from 66 batches on).
    reestimate_batchnorm(
        backbone.as_ref(),
        train,
        &unlabeled,
        norm,
        cfg.eval_batch,
        device,
    )?;
    Ok((Classifier { report, ..student }, pseudo))
}
