//! The run report: `report.json` (machine-readable) and `report.md`.

use crate::metrics::mean_std;
use serde::{Deserialize, Serialize};

/// One transfer result: a method (`scratch` or a pretext) evaluated with one
/// protocol, at one label budget, under one seed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResultRow {
    /// `scratch` or the pretraining method (`rotation`, ...).
    pub method: String,
    /// `finetune`, `linear` or `knn`.
    pub protocol: String,
    /// Labeled training images per class.
    pub labels_per_class: usize,
    /// The seed of the split, the initialisation and the training.
    pub seed: u64,
    /// Accuracy on the full test set.
    pub test_accuracy: f64,
}

/// Wall time of one stage, summed over seeds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageTime {
    /// `load`, `pretrain`, `transfer`, `evaluate`, ...
    pub name: String,
    /// Seconds of wall time.
    pub seconds: f64,
}

/// Mean and spread of one (method, protocol, labels) cell over seeds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SummaryRow {
    /// See [`ResultRow::method`].
    pub method: String,
    /// See [`ResultRow::protocol`].
    pub protocol: String,
    /// See [`ResultRow::labels_per_class`].
    pub labels_per_class: usize,
    /// Mean test accuracy over seeds.
    pub mean: f64,
    /// Sample standard deviation over seeds.
    pub std: f64,
    /// Smallest and largest accuracy over seeds.
    pub min: f64,
    /// See `min`.
    pub max: f64,
    /// Number of seeds.
    pub n: usize,
}

/// The whole report of a pipeline run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// Dataset name or path.
    pub dataset: String,
    /// Backbone name.
    pub backbone: String,
    /// Seeds run.
    pub seeds: Vec<u64>,
    /// Label budgets run.
    pub labels_per_class: Vec<usize>,
    /// Pretraining methods run.
    pub pretext: Vec<String>,
    /// Every individual result.
    pub results: Vec<ResultRow>,
    /// Mean and spread per (method, protocol, labels).
    pub summary: Vec<SummaryRow>,
    /// What each pretext bought (see [`Report::gains`]).
    pub gains: Vec<Gain>,
    /// Wall time per stage.
    pub stages: Vec<StageTime>,
    /// Total wall time in seconds.
    pub total_seconds: f64,
    /// Compute threads used.
    pub threads: usize,
    /// The recipe (epochs, learning rates, sizes) as given.
    pub config: serde_json::Value,
    /// What each pretraining run cost and reached.
    #[serde(default)]
    pub pretraining: Vec<PretrainSummary>,
    /// Figures written next to the report (paths relative to it).
    #[serde(default)]
    pub figures: Vec<Figure>,
}

/// One pretraining run in a report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PretrainSummary {
    /// Method (`rotation`, `simclr`, ...).
    pub method: String,
    /// Seed of the run.
    pub seed: u64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Epochs run (early stopping may cut them short).
    pub epochs_run: usize,
    /// Training throughput (backbone inputs per second, views included).
    pub images_per_s: f64,
    /// Pretext loss on the held-out unlabeled images at the end.
    pub val_loss: f64,
    /// kNN monitor after the last epoch (leave-one-out on the K labeled
    /// images), if it ran.
    pub knn_monitor: Option<f64>,
    /// The stage was not run but loaded from a finished one with the same
    /// settings (`--resume`); `seconds` is that run's wall time.
    #[serde(default)]
    pub reused: bool,
}

/// A figure of a report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Figure {
    /// Method it shows.
    pub method: String,
    /// `embedding` or `loss`.
    pub kind: String,
    /// Path relative to the report.
    pub path: String,
}

impl Report {
    /// Groups `results` into mean/spread rows, in first-seen order.
    pub fn summarise(results: &[ResultRow]) -> Vec<SummaryRow> {
        let mut keys: Vec<(String, String, usize)> = Vec::new();
        for r in results {
            let k = (r.method.clone(), r.protocol.clone(), r.labels_per_class);
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        keys.into_iter()
            .map(|(method, protocol, k)| {
                let accs: Vec<f64> = results
                    .iter()
                    .filter(|r| {
                        r.method == method && r.protocol == protocol && r.labels_per_class == k
                    })
                    .map(|r| r.test_accuracy)
                    .collect();
                let (mean, std) = mean_std(&accs);
                SummaryRow {
                    method,
                    protocol,
                    labels_per_class: k,
                    mean,
                    std,
                    min: accs.iter().cloned().fold(f64::INFINITY, f64::min),
                    max: accs.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                    n: accs.len(),
                }
            })
            .collect()
    }

    /// For each label budget and pretext: its best protocol (by mean)
    /// against the best scratch result among the same protocols (the spec
    /// gives both the same settings and lengths; random-feature probes are
    /// scratch's `linear` and `knn`), and against scratch fine-tuning.
    /// Where scratch skipped one of the pretext's protocols (say, FixMatch
    /// with `scratch_semi_supervised = false`), the fair comparison is
    /// unavailable: its fields are `None` and `scratch_missing` names them.
    pub fn gains(&self) -> Vec<Gain> {
        let mut out = Vec::new();
        for &k in &self.labels_per_class {
            let cells = |method: &str| -> Vec<&SummaryRow> {
                self.summary
                    .iter()
                    .filter(|s| s.method == method && s.labels_per_class == k)
                    .collect()
            };
            let scratch = cells("scratch");
            if scratch.is_empty() {
                continue;
            }
            let scratch_ft = scratch.iter().find(|s| s.protocol == "finetune");
            for p in &self.pretext {
                let own = cells(p);
                let Some(pre) = own.iter().max_by(|a, b| a.mean.total_cmp(&b.mean)) else {
                    continue;
                };
                let same: Vec<&&SummaryRow> = scratch
                    .iter()
                    .filter(|s| own.iter().any(|o| o.protocol == s.protocol))
                    .collect();
                let scratch_missing: Vec<String> = own
                    .iter()
                    .filter(|o| !scratch.iter().any(|s| s.protocol == o.protocol))
                    .map(|o| o.protocol.clone())
                    .collect();
                let fair = same
                    .into_iter()
                    .max_by(|a, b| a.mean.total_cmp(&b.mean))
                    .filter(|_| scratch_missing.is_empty());
                out.push(Gain {
                    labels_per_class: k,
                    method: p.clone(),
                    best_protocol: pre.protocol.clone(),
                    mean: pre.mean,
                    std: pre.std,
                    scratch_finetune_mean: scratch_ft.map(|s| s.mean),
                    gain_vs_scratch_points: scratch_ft.map(|s| 100.0 * (pre.mean - s.mean)),
                    best_scratch_protocol: fair.map(|s| s.protocol.clone()),
                    best_scratch_mean: fair.map(|s| s.mean),
                    gain_vs_best_scratch_points: fair.map(|s| 100.0 * (pre.mean - s.mean)),
                    scratch_missing,
                });
            }
        }
        out
    }

    /// The report as Markdown.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        s.push_str("# selfsup pipeline report\n\n");
        s.push_str(&format!(
            "- dataset: `{}`\n- backbone: `{}`\n- pretext: {}\n- labels per class: {:?}\n- seeds: {:?}\n- threads: {}\n- total wall time: {:.1} s\n\n",
            self.dataset,
            self.backbone,
            self.pretext.join(", "),
            self.labels_per_class,
            self.seeds,
            self.threads,
            self.total_seconds
        ));
        s.push_str("## Test accuracy (mean ± std over seeds)\n\n");
        s.push_str("| method | protocol | labels/class | mean | std | min | max | seeds |\n|---|---|---|---|---|---|---|---|\n");
        for r in &self.summary {
            s.push_str(&format!(
                "| {} | {} | {} | {:.2}% | {:.2} | {:.2}% | {:.2}% | {} |\n",
                r.method,
                r.protocol,
                r.labels_per_class,
                100.0 * r.mean,
                100.0 * r.std,
                100.0 * r.min,
                100.0 * r.max,
                r.n
            ));
        }
        let gains = self.gains();
        if !gains.is_empty() {
            s.push_str("\n## What self-supervision bought\n\n");
            s.push_str("The best protocol of each pretext (mean ± std over seeds) against the best that training the same network from scratch reached with the same protocols, settings and lengths (its random-feature probes included), and against scratch fine-tuning. Where scratch skipped one of the pretext's protocols, the fair comparison is unavailable and the table says which.\n\n");
            s.push_str("| labels/class | pretext | best protocol | accuracy | best scratch, same protocols | gain | scratch finetune | gain |\n|---|---|---|---|---|---|---|---|\n");
            let pct =
                |m: Option<f64>| m.map_or("n/a".to_string(), |m| format!("{:.2}%", 100.0 * m));
            let pts = |d: Option<f64>| d.map_or("n/a".to_string(), |d| format!("{d:+.2}"));
            for g in gains {
                let fair = match (&g.best_scratch_protocol, g.best_scratch_mean) {
                    (Some(p), Some(m)) => format!("{:.2}% ({p})", 100.0 * m),
                    _ => format!(
                        "unavailable: scratch ran no {}",
                        g.scratch_missing.join(", ")
                    ),
                };
                s.push_str(&format!(
                    "| {} | {} | {} | {:.2}% ± {:.2} | {fair} | {} | {} | {} |\n",
                    g.labels_per_class,
                    g.method,
                    g.best_protocol,
                    100.0 * g.mean,
                    100.0 * g.std,
                    pts(g.gain_vs_best_scratch_points),
                    pct(g.scratch_finetune_mean),
                    pts(g.gain_vs_scratch_points),
                ));
            }
        }
        if !self.pretraining.is_empty() {
            s.push_str("\n## Pretraining\n\n| method | seed | wall time | epochs | inputs/s | held-out loss | kNN monitor |\n|---|---|---|---|---|---|---|\n");
            for p in &self.pretraining {
                s.push_str(&format!(
                    "| {} | {} | {:.1} s{} | {} | {:.0} | {:.4} | {} |\n",
                    p.method,
                    p.seed,
                    p.seconds,
                    if p.reused { " (reused)" } else { "" },
                    p.epochs_run,
                    p.images_per_s,
                    p.val_loss,
                    p.knn_monitor
                        .map_or("n/a".into(), |v| format!("{:.1}%", 100.0 * v))
                ));
            }
        }
        if !self.figures.is_empty() {
            s.push_str("\n## Figures\n\n");
            for f in &self.figures {
                s.push_str(&format!(
                    "- {} {}: [{}]({})\n",
                    f.method, f.kind, f.path, f.path
                ));
            }
            for f in &self.figures {
                s.push_str(&format!("\n![{} {}]({})\n", f.method, f.kind, f.path));
            }
        }
        s.push_str("\n## Per seed\n\n| method | protocol | labels/class | seed | test accuracy |\n|---|---|---|---|---|\n");
        for r in &self.results {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {:.2}% |\n",
                r.method,
                r.protocol,
                r.labels_per_class,
                r.seed,
                100.0 * r.test_accuracy
            ));
        }
        s.push_str("\n## Wall time per stage\n\n| stage | seconds |\n|---|---|\n");
        for st in &self.stages {
            s.push_str(&format!("| {} | {:.1} |\n", st.name, st.seconds));
        }
        s
    }
}

/// One line of [`Report::gains`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gain {
    /// Label budget.
    pub labels_per_class: usize,
    /// Pretext method.
    pub method: String,
    /// Its best protocol.
    pub best_protocol: String,
    /// That protocol's mean accuracy over seeds.
    pub mean: f64,
    /// Its standard deviation over seeds.
    pub std: f64,
    /// Mean accuracy of from-scratch training (`scratch`/`finetune`).
    pub scratch_finetune_mean: Option<f64>,
    /// `mean` minus that, in accuracy points.
    pub gain_vs_scratch_points: Option<f64>,
    /// Scratch's best protocol among the pretext's (random-feature probes
    /// included); `None` when scratch skipped one of them.
    pub best_scratch_protocol: Option<String>,
    /// Its mean accuracy.
    pub best_scratch_mean: Option<f64>,
    /// `mean` minus that, in accuracy points: the fair gain.
    pub gain_vs_best_scratch_points: Option<f64>,
    /// The pretext's protocols scratch did not run (the fair comparison is
    /// then unavailable).
    #[serde(default)]
    pub scratch_missing: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(m: &str, p: &str, seed: u64, acc: f64) -> ResultRow {
        ResultRow {
            method: m.into(),
            protocol: p.into(),
            labels_per_class: 10,
            seed,
            test_accuracy: acc,
        }
    }

    #[test]
    fn summary_and_gain() {
        let results = vec![
            row("scratch", "finetune", 0, 0.60),
            row("scratch", "finetune", 1, 0.62),
            row("rotation", "linear", 0, 0.70),
            row("rotation", "linear", 1, 0.72),
            row("rotation", "knn", 0, 0.65),
            row("rotation", "knn", 1, 0.65),
        ];
        let summary = Report::summarise(&results);
        assert_eq!(summary.len(), 3);
        assert!((summary[0].mean - 0.61).abs() < 1e-9);
        assert_eq!(summary[0].n, 2);
        let rep = Report {
            dataset: "d".into(),
            backbone: "convnet".into(),
            seeds: vec![0, 1],
            labels_per_class: vec![10],
            pretext: vec!["rotation".into()],
            results,
            summary,
            gains: vec![],
            stages: vec![],
            total_seconds: 1.0,
            threads: 2,
            config: serde_json::Value::Null,
            pretraining: vec![PretrainSummary {
                method: "rotation".into(),
                seed: 0,
                seconds: 12.5,
                epochs_run: 3,
                images_per_s: 250.0,
                val_loss: 0.5,
                knn_monitor: Some(0.42),
                reused: false,
            }],
            figures: vec![Figure {
                method: "rotation".into(),
                kind: "loss".into(),
                path: "figures/rotation-loss.png".into(),
            }],
        };
        let g = rep.gains();
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].best_protocol, "linear");
        assert!((g[0].gain_vs_scratch_points.unwrap() - 10.0).abs() < 1e-9);
        // Scratch ran neither linear nor knn: no fair comparison.
        assert_eq!(g[0].gain_vs_best_scratch_points, None);
        assert_eq!(g[0].scratch_missing, ["linear", "knn"]);
        let md = rep.to_markdown();
        assert!(
            md.contains("| rotation | 0 | 12.5 s | 3 | 250 | 0.5000 | 42.0% |"),
            "{md}"
        );
        assert!(
            md.contains("![rotation loss](figures/rotation-loss.png)"),
            "{md}"
        );
        assert!(md.contains("| rotation | linear | 10 | 71.00% |"), "{md}");
        assert!(
            md.contains("| 10 | rotation | linear | 71.00% ± 1.41 | unavailable: scratch ran no linear, knn | n/a | 61.00% | +10.00 |"),
            "{md}"
        );
    }

    /// The fair gain is over scratch's best among the pretext's protocols,
    /// not over all of scratch's, and not over a set missing one.
    #[test]
    fn gains_compare_the_same_protocols() {
        let results = vec![
            row("scratch", "finetune", 0, 0.60),
            row("scratch", "fixmatch", 0, 0.66),
            row("scratch", "knn", 0, 0.50),
            row("simclr", "finetune", 0, 0.64),
            row("simclr", "fixmatch", 0, 0.71),
            row("simclr", "knn", 0, 0.62),
            row("rotation", "finetune", 0, 0.63),
            row("rotation", "knn", 0, 0.55),
            row("byol", "finetune", 0, 0.61),
            row("byol", "distill", 0, 0.70),
        ];
        let rep = Report {
            labels_per_class: vec![10],
            pretext: vec!["simclr".into(), "rotation".into(), "byol".into()],
            summary: Report::summarise(&results),
            results,
            ..Report::default()
        };
        let g = rep.gains();
        let fair = |i: usize| {
            (
                g[i].best_scratch_protocol.clone(),
                g[i].gain_vs_best_scratch_points,
            )
        };
        let close = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 1e-9;
        // simclr: fixmatch 71 against scratch fixmatch 66.
        assert_eq!(fair(0).0.as_deref(), Some("fixmatch"));
        assert!(close(fair(0).1, 5.0));
        // rotation ran no fixmatch: its best scratch is finetune 60, not 66.
        assert_eq!(fair(1).0.as_deref(), Some("finetune"));
        assert!(close(fair(1).1, 3.0));
        // byol's distill has no scratch counterpart: unavailable.
        assert_eq!((fair(2).0, fair(2).1), (None, None));
        assert_eq!(g[2].scratch_missing, ["distill"]);
        assert!(close(g[2].gain_vs_scratch_points, 10.0));
    }
}
