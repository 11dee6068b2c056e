//! Evaluation protocols: which images are normal for training, which are
//! scored, which of those are anomalies. Every protocol reduces to one or
//! more [`Task`]s on a single dataset, run by [`run_task`].

use crate::detector::{Detector, DetectorConfig, NormalImages, Scores, SCORES};
use crate::metrics::{detection, Detection};
use crate::reconstruction::MaeDetector;
use candle_core::Device;
use selfsup_backbones::BackboneConfig;
use selfsup_core::train::StageRun;
use selfsup_core::{rng, Error, Result};
use selfsup_data::{batch, Dataset};
use selfsup_pretext::MaeConfig;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Protocol names.
pub const PROTOCOLS: [&str; 3] = ["one-class", "faces", "folders"];

/// One detection task: train on `normal_train`, score `test`, of which
/// those with `anomalous` set are the positives.
#[derive(Debug, Clone)]
pub struct Task {
    /// What is normal (a class name, "face", a folder name).
    pub name: String,
    /// Indices of the normal training images.
    pub normal_train: Vec<usize>,
    /// Indices of the scored images.
    pub test: Vec<usize>,
    /// Whether each scored image is an anomaly.
    pub anomalous: Vec<bool>,
    /// A group label per scored image (its class, for histograms).
    pub test_groups: Vec<u32>,
    /// Names of the groups.
    pub group_names: Vec<String>,
}

/// What one task run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The task's name.
    pub name: String,
    /// Seed of the detector.
    pub seed: u64,
    /// Normal training images.
    pub normal_train: usize,
    /// Scored images that are normal.
    pub test_normal: usize,
    /// Scored images that are anomalies.
    pub test_anomalies: usize,
    /// Every score of every scored image.
    pub scores: Scores,
    /// Whether each scored image is an anomaly.
    pub anomalous: Vec<bool>,
    /// Group label per scored image.
    pub test_groups: Vec<u32>,
    /// Names of the groups.
    pub group_names: Vec<String>,
    /// Metrics per score, in [`SCORES`] order.
    pub metrics: Vec<(String, Detection)>,
    /// Transformation accuracy on the normal training images (0 for a
    /// masked-autoencoding detector, which has no transformation head).
    pub transformation_accuracy: f64,
    /// Training wall time (s).
    pub train_seconds: f64,
    /// Scoring wall time (s), Dirichlet fit included.
    pub score_seconds: f64,
    /// Training images per second.
    pub images_per_s: f64,
}

/// Shared settings of a protocol run.
pub struct RunSettings<'a> {
    /// The detector recipe (its `fit.seed` is replaced per seed).
    pub detector: &'a DetectorConfig,
    /// The encoder.
    pub backbone: &'a BackboneConfig,
    /// Start from this pretrained stage directory.
    pub init: Option<&'a Path>,
    /// Where tensors live.
    pub device: &'a Device,
    /// No progress bars.
    pub quiet: bool,
    /// Save each detector to `<dir>/<task>-seed<s>/` when given.
    pub save_dir: Option<PathBuf>,
    /// Dataset name for checkpoints.
    pub dataset: &'a str,
    /// Train a masked-autoencoding detector with these decoder settings
    /// instead of a transformation detector.
    pub mae: Option<&'a MaeConfig>,
}

/// Trains a detector for `task` with `seed` and scores its test images.
pub fn run_task(ds: &Dataset, task: &Task, seed: u64, s: &RunSettings) -> Result<Outcome> {
    let (p, n) = task
        .anomalous
        .iter()
        .fold((0, 0), |(p, n), &a| if a { (p + 1, n) } else { (p, n + 1) });
    if p == 0 || n == 0 {
        return Err(Error::invalid(
            &task.name,
            format!("the test set has {n} normal images and {p} anomalies; both are needed"),
        ));
    }
    let mut cfg = s.detector.clone();
    cfg.fit.seed = seed;
    let norm = batch::fit_normalization(ds, &task.normal_train);
    let t0 = Instant::now();
    let data = NormalImages {
        ds,
        indices: &task.normal_train,
        norm: &norm,
    };
    let stage = format!("anomaly/{}/seed{seed}", task.name);
    let run = StageRun {
        device: s.device,
        quiet: s.quiet,
        stage: &stage,
        checkpoint: None,
    };
    let save_to = s
        .save_dir
        .as_ref()
        .map(|dir| dir.join(format!("{}-seed{seed}", file_safe(&task.name))));
    let shape = ds.image_shape();
    // (training seconds, transformation accuracy, images/s, scores,
    // scoring seconds)
    let (train_seconds, accuracy, rate, scores, score_seconds) = match s.mae {
        None => {
            let det = Detector::train(&cfg, s.init, s.backbone, data, run)?;
            let train_seconds = t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            let scores = det.score(ds, &task.test)?;
            if let Some(dir) = &save_to {
                det.save(dir, s.dataset, shape)?;
            }
            let (acc, rate) = (det.train_accuracy, det.report.images_per_s);
            (train_seconds, acc, rate, scores, t1.elapsed().as_secs_f64())
        }
        Some(mae) => {
            let det = MaeDetector::train(&cfg, mae, (s.init, s.backbone), data, run)?;
            let train_seconds = t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            let scores = det.score(ds, &task.test)?;
            if let Some(dir) = &save_to {
                det.save(dir, s.dataset, shape)?;
            }
            let rate = det.report.images_per_s;
            (train_seconds, 0.0, rate, scores, t1.elapsed().as_secs_f64())
        }
    };
    // Only the scores this kind of detector computes.
    let metrics = SCORES
        .iter()
        .filter(|&&name| scores.get(name).is_ok_and(|v| !v.is_empty()))
        .map(|&name| {
            let v = scores.get(name)?;
            Ok((name.to_string(), detection(v, &task.anomalous)))
        })
        .collect::<Result<Vec<_>>>()?;
    tracing::debug!(task = task.name, seed, ?metrics, "anomaly task done");
    Ok(Outcome {
        name: task.name.clone(),
        seed,
        normal_train: task.normal_train.len(),
        test_normal: n,
        test_anomalies: p,
        scores,
        anomalous: task.anomalous.clone(),
        test_groups: task.test_groups.clone(),
        group_names: task.group_names.clone(),
        metrics,
        transformation_accuracy: accuracy,
        train_seconds,
        score_seconds,
        images_per_s: rate,
    })
}

/// A name usable as a directory name.
pub fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Every `len / max`-th index of `0..len` (all when `max` is 0 or at least
/// `len`): a subset that keeps the class mix of an ordered test set.
pub fn strided(len: usize, max: usize) -> Vec<usize> {
    if max == 0 || max >= len {
        return (0..len).collect();
    }
    (0..max).map(|i| i * len / max).collect()
}

/// One-class tasks on a labeled dataset: for each class in `classes`, its
/// training images (the first `max_normal`, 0 = all) are normal, and the
/// test images (`max_test` of them, strided, 0 = all) of every other class
/// are anomalies.
pub fn one_class_tasks(
    train: &Dataset,
    test: &Dataset,
    classes: &[u32],
    max_normal: usize,
    max_test: usize,
) -> Result<Vec<Task>> {
    let (train_y, test_y) = match (train.labels(), test.labels()) {
        (Some(a), Some(b)) => (a, b),
        _ => {
            return Err(Error::invalid(
                "--protocol one-class",
                "needs a labeled dataset (train and test labels)",
            ))
        }
    };
    let names = class_names(test);
    let test_idx = strided(test.len(), max_test);
    classes
        .iter()
        .map(|&c| {
            if c as usize >= names.len() {
                return Err(Error::invalid(
                    "--classes",
                    format!("class {c}, but the dataset has {} classes", names.len()),
                ));
            }
            let mut normal: Vec<usize> = (0..train.len()).filter(|&i| train_y[i] == c).collect();
            if max_normal > 0 {
                normal.truncate(max_normal);
            }
            Ok(Task {
                name: names[c as usize].clone(),
                normal_train: normal,
                anomalous: test_idx.iter().map(|&i| test_y[i] != c).collect(),
                test_groups: test_idx.iter().map(|&i| test_y[i]).collect(),
                test: test_idx.clone(),
                group_names: names.clone(),
            })
        })
        .collect()
}

/// Class names, falling back to the class indices.
fn class_names(ds: &Dataset) -> Vec<String> {
    if ds.class_names().is_empty() {
        (0..ds.num_classes()).map(|c| c.to_string()).collect()
    } else {
        ds.class_names().to_vec()
    }
}

/// A normal-vs-anomaly task on one dataset whose images are either normal
/// (`normal[i]`) or not: a seeded `train_fraction` of the normal images
/// trains, the rest of the normal images and every anomaly are scored.
pub fn holdout_task(
    name: &str,
    normal: &[usize],
    anomalies: &[usize],
    train_fraction: f64,
    seed: u64,
    group_names: [&str; 2],
) -> Result<Task> {
    use rand::seq::SliceRandom;
    if !(0.0..1.0).contains(&train_fraction) || train_fraction == 0.0 {
        return Err(Error::invalid(
            "--train-fraction",
            format!("{train_fraction} must lie strictly between 0 and 1"),
        ));
    }
    if normal.len() < 2 || anomalies.is_empty() {
        return Err(Error::invalid(
            name,
            format!(
                "{} normal images and {} anomalies: need at least 2 normal images and 1 anomaly",
                normal.len(),
                anomalies.len()
            ),
        ));
    }
    let mut shuffled = normal.to_vec();
    shuffled.shuffle(&mut rng::stream(seed, "anomaly-holdout"));
    let n_train = ((normal.len() as f64 * train_fraction).round() as usize)
        .clamp(1, normal.len().saturating_sub(1));
    let (train, held) = shuffled.split_at(n_train);
    let mut held = held.to_vec();
    held.sort_unstable();
    let test: Vec<usize> = held.iter().chain(anomalies).copied().collect();
    let anomalous: Vec<bool> = test.iter().map(|i| !held.contains(i)).collect();
    Ok(Task {
        name: name.to_string(),
        normal_train: train.to_vec(),
        test_groups: anomalous.iter().map(|&a| u32::from(a)).collect(),
        anomalous,
        test,
        group_names: group_names.iter().map(|s| s.to_string()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdout_task_splits_normals_and_keeps_every_anomaly() {
        let normal: Vec<usize> = (0..10).collect();
        let anomalies: Vec<usize> = (10..15).collect();
        let t = holdout_task("face", &normal, &anomalies, 0.7, 3, ["face", "non-face"]).unwrap();
        assert_eq!(t.normal_train.len(), 7);
        assert_eq!(t.test.len(), 3 + 5);
        assert_eq!(t.anomalous.iter().filter(|&&a| a).count(), 5);
        for i in &t.normal_train {
            assert!(!t.test.contains(i), "a training face is scored");
        }
        let again = holdout_task("face", &normal, &anomalies, 0.7, 3, ["f", "n"]).unwrap();
        assert_eq!(again.normal_train, t.normal_train, "seeded");
        let other = holdout_task("face", &normal, &anomalies, 0.7, 4, ["f", "n"]).unwrap();
        assert_ne!(other.normal_train, t.normal_train);
        assert!(holdout_task("x", &normal, &anomalies, 1.0, 0, ["a", "b"]).is_err());
        assert!(holdout_task("x", &normal[..1], &anomalies, 0.5, 0, ["a", "b"]).is_err());
    }

    #[test]
    fn strided_subsets_are_spread_out() {
        assert_eq!(strided(10, 0), (0..10).collect::<Vec<_>>());
        assert_eq!(strided(10, 5), vec![0, 2, 4, 6, 8]);
        assert_eq!(strided(3, 9), vec![0, 1, 2]);
    }
}
