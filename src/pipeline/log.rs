//! What a run collects as it goes (results, pretraining summaries, figures,
//! time per stage) and the report it becomes.

use super::context::Stage;
use super::protocol::Cell;
use crate::core::report::{Figure, PretrainSummary, Report, ResultRow, StageTime};
use crate::spec::Recipe;
use candle_core::Device;
use std::collections::BTreeMap;
use std::time::Instant;

/// The running record of a pipeline run.
#[derive(Default)]
pub(super) struct RunLog {
    times: BTreeMap<&'static str, f64>,
    results: Vec<ResultRow>,
    /// One row per pretraining.
    pub pretraining: Vec<PretrainSummary>,
    /// The figures drawn.
    pub figures: Vec<Figure>,
}

impl RunLog {
    /// Adds the time since `start` to the stage `name`.
    pub fn time(&mut self, name: &'static str, start: Instant) {
        *self.times.entry(name).or_default() += start.elapsed().as_secs_f64();
    }

    /// Records a test accuracy (and prints it unless `quiet`).
    pub fn result(&mut self, cell: &Cell, protocol: &str, acc: f64, quiet: bool) {
        let (seed, k, method) = (cell.seed, cell.k, &cell.method);
        if !quiet {
            crate::core::progress::line(format!(
                "  seed {seed} K={k} {method:>9} {protocol:<8} test accuracy {:.2}%",
                100.0 * acc
            ));
        }
        self.results.push(ResultRow {
            method: method.clone(),
            protocol: protocol.into(),
            labels_per_class: k,
            seed,
            test_accuracy: acc,
        });
    }

    /// The report of the run that started at `t0`.
    pub fn into_report(self, ctx: &Stage, device: &Device, t0: Instant) -> Report {
        let spec = ctx.spec;
        let pair = &ctx.prep.pair;
        let summary = Report::summarise(&self.results);
        let mut report = Report {
            dataset: pair.name.clone(),
            backbone: ctx.backbone.name().to_string(),
            seeds: spec.split.seeds.clone(),
            labels_per_class: spec.split.labels_per_class.clone(),
            pretext: spec.pretrain.methods.clone(),
            results: self.results,
            summary,
            gains: Vec::new(),
            stages: self
                .times
                .into_iter()
                .map(|(name, seconds)| StageTime {
                    name: name.into(),
                    seconds,
                })
                .collect(),
            total_seconds: t0.elapsed().as_secs_f64(),
            threads: super::rayon_threads(),
            config: serde_json::json!({
                "experiment": spec,
                "recipe": Recipe::from(spec),
                "backbone": ctx.backbone,
                "device": format!("{device:?}"),
                // Identical numbers are promised for the same seed, build,
                // thread count and CPU type: record the CPU.
                "cpu": crate::bench::cpu_info(),
                "max_train": spec.data.max_train,
                "max_test": spec.data.max_test,
                "train_images": pair.train.len(),
                "test_images": pair.test.len(),
                "skipped_images": ctx.prep.skipped_images,
            }),
            pretraining: self.pretraining,
            figures: self.figures,
        };
        report.gains = report.gains();
        report
    }
}
