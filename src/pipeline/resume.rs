//! `--resume`: reusing a finished pretraining whose settings match, and
//! refusing one trained with other settings.

use super::context::Stage;
use super::pretrain::{pretrain_stage_config, Excluded, PretrainMetrics, PretrainOutcome};
use crate::backbones::checkpoint::StageConfig;
use crate::core::jsondiff::first_difference;
use crate::core::report::PretrainSummary;
use crate::core::{Error, Result};
use std::path::Path;

/// With `--resume`: the finished pretraining stage in `dir`, if there is
/// one, as the outcome [`super::pretrain_stage`] would have returned. A
/// stage trained with other settings (pretraining settings, dataset,
/// backbone, seed, excluded labels) is an error naming the first
/// difference, never silently reused or overwritten. `None` when `dir`
/// holds no finished stage.
pub fn reuse_pretraining(
    ctx: &Stage,
    method: &str,
    excluded: Excluded,
    seed: u64,
    dir: &Path,
) -> Result<Option<PretrainOutcome>> {
    use crate::core::checkpoint::{CONFIG_FILE, WEIGHTS_FILE};
    let config_path = dir.join(CONFIG_FILE);
    if !config_path.exists() || !dir.join(WEIGHTS_FILE).exists() {
        return Ok(None);
    }
    let saved: StageConfig = crate::core::checkpoint::read_config(dir)?;
    let cfg = ctx.spec.pretrain_config(method, seed, ctx.shape())?;
    let want = pretrain_stage_config(
        ctx,
        method,
        &cfg,
        excluded,
        seed,
        saved.head_outputs,
        serde_json::Value::Null,
    );
    // Both sides through the same serialise-parse path, so that float
    // fields compare as they were read from the file.
    let as_value = |c: &StageConfig| -> serde_json::Value {
        let text = serde_json::to_string(c).expect("a StageConfig serialises");
        let mut v: serde_json::Value =
            serde_json::from_str(&text).expect("serde_json reads its own output");
        v.as_object_mut().expect("a struct").remove("metrics");
        v
    };
    if let Some(field) = first_difference(&as_value(&saved), &as_value(&want), "") {
        return Err(Error::invalid(
            config_path.display().to_string(),
            format!(
                "--resume found a {method} pretraining trained with other settings ({field} differs); \
                 give another --out, or drop --resume to train it again"
            ),
        ));
    }
    let m: PretrainMetrics = serde_json::from_value(saved.metrics).map_err(|e| {
        Error::invalid(
            config_path.display().to_string(),
            format!("its metrics cannot be read back: {e}"),
        )
    })?;
    let history = m.history();
    Ok(Some(PretrainOutcome {
        summary: PretrainSummary {
            method: method.to_string(),
            seed,
            seconds: history.seconds,
            epochs_run: history.epochs_run,
            images_per_s: history.images_per_s,
            val_loss: m.val_loss,
            knn_monitor: m.knn_monitor.last().copied(),
            reused: true,
        },
        history,
    }))
}
