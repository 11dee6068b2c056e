//! The anomaly report: `report.json` (schema below) and its markdown.

use crate::protocol::Outcome;
use selfsup_core::metrics::mean_std;
use selfsup_core::report::Figure;
use serde::{Deserialize, Serialize};

/// Metrics of one normal class (or one normal set), averaged over seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassRow {
    /// What was normal.
    pub class: String,
    /// Mean AUROC over seeds.
    pub auroc: f64,
    /// Mean AUPR (anomalies positive) over seeds.
    pub aupr: f64,
    /// Mean FPR at 95 % TPR over seeds.
    pub fpr95: f64,
    /// Standard deviation of the AUROC over seeds (0 for one seed).
    pub auroc_std: f64,
    /// Seeds averaged.
    pub seeds: usize,
}

/// All classes under one score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreSummary {
    /// One of [`crate::SCORES`].
    pub score: String,
    /// One row per normal class.
    pub per_class: Vec<ClassRow>,
    /// Mean over classes of the per-class AUROC.
    pub mean_auroc: f64,
    /// Standard deviation over seeds of the class-mean AUROC.
    pub mean_auroc_std: f64,
}

/// One (class, seed) run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRow {
    /// What was normal.
    pub class: String,
    /// Detector seed.
    pub seed: u64,
    /// Normal training images.
    pub normal_train: usize,
    /// Normal images scored.
    pub test_normal: usize,
    /// Anomalies scored.
    pub test_anomalies: usize,
    /// Transformation-prediction accuracy on the normal training images.
    pub transformation_accuracy: f64,
    /// AUROC per score, in `SCORES` order.
    pub auroc: Vec<(String, f64)>,
    /// Training wall time (s).
    pub train_seconds: f64,
    /// Scoring wall time (s).
    pub score_seconds: f64,
    /// Training throughput (transformed images per second).
    pub images_per_s: f64,
}

/// `<out>/report.json` of `cargo xtask anomaly`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnomalyReport {
    /// `one-class`, `faces` or `folders`.
    pub protocol: String,
    /// The score the headline fields (`per_class`, `mean_auroc`) use.
    pub score: String,
    /// Dataset name or path.
    pub dataset: String,
    /// Transformation set name.
    pub transforms: String,
    /// Number of transformations.
    pub transformations: usize,
    /// Backbone name.
    pub backbone: String,
    /// Seeds run.
    pub seeds: Vec<u64>,
    /// Per normal class, under `score`.
    pub per_class: Vec<ClassRow>,
    /// Mean AUROC over classes, under `score`.
    pub mean_auroc: f64,
    /// Spread over seeds of `mean_auroc`.
    pub mean_auroc_std: f64,
    /// Mean AUPR over classes, under `score`.
    pub mean_aupr: f64,
    /// Mean FPR95 over classes, under `score`.
    pub mean_fpr95: f64,
    /// Every score's table.
    pub scores: Vec<ScoreSummary>,
    /// Every (class, seed) run.
    pub runs: Vec<RunRow>,
    /// Wall time of the whole run (s).
    pub total_seconds: f64,
    /// Compute threads.
    pub threads: usize,
    /// Device the detectors ran on.
    pub device: String,
    /// The full configuration.
    pub config: serde_json::Value,
    /// Figures next to the report.
    #[serde(default)]
    pub figures: Vec<Figure>,
}

/// Every scored image of every (task, seed) run as CSV: `task`, `seed`,
/// `item` (position among the task's scored images), `group`, `anomalous`
/// (0/1), then one column per score in `names`. Lets score combinations and
/// seed ensembles be evaluated after the run.
pub fn scores_csv(outcomes: &[Outcome], names: &[&str]) -> String {
    let mut out = format!("task,seed,item,group,anomalous,{}\n", names.join(","));
    for o in outcomes {
        let columns: Vec<&[f64]> = names
            .iter()
            .map(|n| o.scores.get(n).unwrap_or(&[]))
            .collect();
        for (i, (&a, &g)) in o.anomalous.iter().zip(&o.test_groups).enumerate() {
            let group = o.group_names.get(g as usize).map_or("", String::as_str);
            out.push_str(&format!(
                "{},{},{i},{},{}",
                csv_field(&o.name),
                o.seed,
                csv_field(group),
                u8::from(a)
            ));
            for c in &columns {
                match c.get(i) {
                    Some(v) => out.push_str(&format!(",{v}")),
                    None => out.push(','),
                }
            }
            out.push('\n');
        }
    }
    out
}

/// `s` quoted when it holds a comma, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Summarises `outcomes` (any order) under `score`, classes in first-seen
/// order.
pub fn summarise(outcomes: &[Outcome], score: &str) -> ScoreSummary {
    let mut classes: Vec<String> = Vec::new();
    for o in outcomes {
        if !classes.contains(&o.name) {
            classes.push(o.name.clone());
        }
    }
    let metric = |o: &Outcome| {
        o.metrics
            .iter()
            .find(|(s, _)| s == score)
            .map(|(_, d)| *d)
            .expect("every outcome has every score")
    };
    let per_class: Vec<ClassRow> = classes
        .iter()
        .map(|c| {
            let runs: Vec<_> = outcomes
                .iter()
                .filter(|o| &o.name == c)
                .map(metric)
                .collect();
            let (auroc, auroc_std) = mean_std(&runs.iter().map(|d| d.auroc).collect::<Vec<_>>());
            ClassRow {
                class: c.clone(),
                auroc,
                aupr: mean_std(&runs.iter().map(|d| d.aupr).collect::<Vec<_>>()).0,
                fpr95: mean_std(&runs.iter().map(|d| d.fpr95).collect::<Vec<_>>()).0,
                auroc_std,
                seeds: runs.len(),
            }
        })
        .collect();
    let mean_auroc = mean_std(&per_class.iter().map(|r| r.auroc).collect::<Vec<_>>()).0;
    // Class-mean AUROC of each seed, then its spread.
    let mut seeds: Vec<u64> = outcomes.iter().map(|o| o.seed).collect();
    seeds.sort_unstable();
    seeds.dedup();
    let per_seed: Vec<f64> = seeds
        .iter()
        .map(|&s| {
            let v: Vec<f64> = outcomes
                .iter()
                .filter(|o| o.seed == s)
                .map(|o| metric(o).auroc)
                .collect();
            mean_std(&v).0
        })
        .collect();
    ScoreSummary {
        score: score.to_string(),
        per_class,
        mean_auroc,
        mean_auroc_std: mean_std(&per_seed).1,
    }
}

/// One [`RunRow`] per outcome.
pub fn runs(outcomes: &[Outcome]) -> Vec<RunRow> {
    outcomes
        .iter()
        .map(|o| RunRow {
            class: o.name.clone(),
            seed: o.seed,
            normal_train: o.normal_train,
            test_normal: o.test_normal,
            test_anomalies: o.test_anomalies,
            transformation_accuracy: o.transformation_accuracy,
            auroc: o
                .metrics
                .iter()
                .map(|(s, d)| (s.clone(), d.auroc))
                .collect(),
            train_seconds: o.train_seconds,
            score_seconds: o.score_seconds,
            images_per_s: o.images_per_s,
        })
        .collect()
}

impl AnomalyReport {
    /// Fills the headline fields from `scores` for `score`.
    pub fn headline(scores: &[ScoreSummary], score: &str) -> (Vec<ClassRow>, f64, f64, f64, f64) {
        let s = scores
            .iter()
            .find(|s| s.score == score)
            .expect("the chosen score was computed");
        let mean =
            |f: fn(&ClassRow) -> f64| mean_std(&s.per_class.iter().map(f).collect::<Vec<_>>()).0;
        (
            s.per_class.clone(),
            s.mean_auroc,
            s.mean_auroc_std,
            mean(|r| r.aupr),
            mean(|r| r.fpr95),
        )
    }

    /// The report as markdown.
    pub fn to_markdown(&self) -> String {
        let mut m = String::new();
        m.push_str(&format!(
            "# Anomaly detection: {} on {}\n\n",
            self.protocol, self.dataset
        ));
        let what = if self.transformations == 0 {
            format!(
                "{} masked autoencoder (`{}`)",
                self.backbone, self.transforms
            )
        } else {
            format!(
                "{} backbone predicting {} transformations (`{}`)",
                self.backbone, self.transformations, self.transforms
            )
        };
        m.push_str(&format!(
            "Detector: {what}, trained on normal images only; seeds {:?}; {} threads on {}; {:.0} s in all.\n\n",
            self.seeds,
            self.threads,
            self.device,
            self.total_seconds
        ));
        m.push_str(&format!(
            "**Mean AUROC ({} score): {:.4} ± {:.4}** (spread over seeds); mean AUPR {:.4}, mean FPR@95%TPR {:.4}.\n\n",
            self.score, self.mean_auroc, self.mean_auroc_std, self.mean_aupr, self.mean_fpr95
        ));
        m.push_str("Scores (higher = more anomalous): `nll` = summed negative log-probability of the applied transformation over all transformed copies; `dirichlet` = negative log-likelihood of the softmax outputs under per-transformation Dirichlets fitted on the normal training images; `knn` = mean cosine distance to the k nearest normal training images in feature space; `knn-all` = the same over all transformed copies (the mean per-transformation cosine similarity to each normal training image); `pixel-knn` = mean Euclidean distance to the k nearest normal training images in normalised pixel space (no network); `knn-all+pixel` = ln knn-all + w ln pixel-knn (w = the detector's pixel_weight); `reconstruction` (masked autoencoders) = mean squared error of the reconstructed masked patches, averaged over 4 random masks.\n\n");
        m.push_str("## Mean AUROC per score\n\n| score | mean AUROC | spread over seeds |\n|---|---|---|\n");
        for s in &self.scores {
            m.push_str(&format!(
                "| {} | {:.4} | {:.4} |\n",
                s.score, s.mean_auroc, s.mean_auroc_std
            ));
        }
        m.push_str(&format!(
            "\n## Per class ({} score)\n\n| normal class | AUROC | ± | AUPR | FPR95 |",
            self.score
        ));
        // The other scores this detector computed, in report order.
        let others: Vec<&str> = self
            .scores
            .iter()
            .map(|s| s.score.as_str())
            .filter(|s| *s != self.score)
            .collect();
        for s in &others {
            m.push_str(&format!(" AUROC ({s}) |"));
        }
        m.push_str("\n|---|---|---|---|---|");
        for _ in &others {
            m.push_str("---|");
        }
        m.push('\n');
        for r in &self.per_class {
            m.push_str(&format!(
                "| {} | {:.4} | {:.4} | {:.4} | {:.4} |",
                r.class, r.auroc, r.auroc_std, r.aupr, r.fpr95
            ));
            for s in &others {
                let v = self
                    .scores
                    .iter()
                    .find(|x| x.score == **s)
                    .and_then(|x| x.per_class.iter().find(|c| c.class == r.class))
                    .map_or(f64::NAN, |c| c.auroc);
                m.push_str(&format!(" {v:.4} |"));
            }
            m.push('\n');
        }
        m.push_str("\n## Runs\n\n| normal class | seed | train | test normal | test anomalies | transformation acc. | train s | score s | img/s |\n|---|---|---|---|---|---|---|---|---|\n");
        for r in &self.runs {
            m.push_str(&format!(
                "| {} | {} | {} | {} | {} | {:.3} | {:.1} | {:.1} | {:.0} |\n",
                r.class,
                r.seed,
                r.normal_train,
                r.test_normal,
                r.test_anomalies,
                r.transformation_accuracy,
                r.train_seconds,
                r.score_seconds,
                r.images_per_s
            ));
        }
        if !self.figures.is_empty() {
            m.push_str("\n## Figures\n\n");
            for f in &self.figures {
                m.push_str(&format!("![{} {}]({})\n\n", f.method, f.kind, f.path));
            }
        }
        m
    }
}
