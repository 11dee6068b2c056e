//! `metrics.csv`: a stage's training history in the layout of PyTorch
//! Lightning's `CSVLogger`, for notebooks and plotting tools. One header
//! naming every column, then one row per optimiser step (`step`, `epoch`,
//! `lr`, `train_loss_step`) and, after each epoch's last step, one row of
//! that epoch's metrics (`train_loss_epoch`, `val_loss` and the stage's own
//! per-epoch columns); a cell a row does not log is empty. `step` and
//! `epoch` count from 0.

use super::FitReport;
use crate::Result;
use std::fmt::Write as _;
use std::path::Path;

/// The CSV text of `report` with the per-epoch columns `extra` (name, one
/// value per epoch; a column with no values is left out).
pub fn metrics_csv(report: &FitReport, extra: &[(&str, &[f64])]) -> String {
    let extra: Vec<&(&str, &[f64])> = extra.iter().filter(|(_, v)| !v.is_empty()).collect();
    let mut out = String::from("step,epoch,lr,train_loss_step,train_loss_epoch,val_loss");
    for (name, _) in &extra {
        out.push(',');
        out.push_str(name);
    }
    out.push('\n');
    let epochs = report.train_loss.len();
    let per_epoch = report.step_loss.len().checked_div(epochs).unwrap_or(0);
    let cell = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
    let blanks = ",".repeat(extra.len());
    for e in 0..epochs {
        let steps = e * per_epoch..(e + 1) * per_epoch;
        for s in steps.clone() {
            let lr = cell(report.step_lr.get(s).copied());
            let _ = writeln!(out, "{s},{e},{lr},{},,{blanks}", report.step_loss[s]);
        }
        let last = steps.end.saturating_sub(1);
        let _ = write!(
            out,
            "{last},{e},,,{},{}",
            report.train_loss[e],
            cell(report.val_loss.get(e).copied())
        );
        for (_, values) in &extra {
            let _ = write!(out, ",{}", cell(values.get(e).copied()));
        }
        out.push('\n');
    }
    out
}

/// Writes [`metrics_csv`] to `path` atomically.
pub fn write_metrics_csv(path: &Path, report: &FitReport, extra: &[(&str, &[f64])]) -> Result<()> {
    crate::fsutil::write_atomic(path, metrics_csv(report, extra).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_then_their_epoch_with_empty_cells_elsewhere() {
        let report = FitReport {
            epochs_run: 2,
            train_loss: vec![1.5, 0.75],
            step_loss: vec![2.0, 1.0, 0.5, 1.0],
            step_lr: vec![0.1, 0.2, 0.2, 0.1],
            val_loss: vec![1.25, 0.5],
            ..FitReport::default()
        };
        let csv = metrics_csv(&report, &[("knn_monitor", &[0.5, 0.625]), ("none", &[])]);
        assert_eq!(
            csv,
            "step,epoch,lr,train_loss_step,train_loss_epoch,val_loss,knn_monitor\n\
             0,0,0.1,2,,,\n\
             1,0,0.2,1,,,\n\
             1,0,,,1.5,1.25,0.5\n\
             2,1,0.2,0.5,,,\n\
             3,1,0.1,1,,,\n\
             3,1,,,0.75,0.5,0.625\n"
        );
        // Without validation the val_loss cells stay empty.
        let plain = FitReport {
            val_loss: vec![],
            ..report
        };
        assert!(metrics_csv(&plain, &[]).ends_with("3,1,,,0.75,\n"));
    }
}
