//! The bench's training-loop rows (`cargo xtask bench --loop`): a pretext's
//! real training loop on synthetic 3x32x32 images — batches gathered and
//! augmented on a CPU thread, copied to the device, the step, the loss
//! read back — against the other rows' step on a device-resident batch.
//! The gap between the two is what the data path costs.

use crate::backbones::BackboneConfig;
use crate::bench::{check_objective, gpu_memory_used_mb, BenchOptions, BenchRow};
use crate::core::{Normalization, Result};
use crate::data::Dataset;
use crate::kernels::{self, Kernels};
use crate::objective::{self as pretext, Hooks, Unlabeled};
use crate::spec::Experiment;
use std::sync::Arc;

use crate::bench::SIZE;

/// `n` synthetic 3x32x32 images: bytes of a fixed multiplicative hash of
/// their index and `seed`, so every run sees the same pixels.
fn synthetic(n: usize, seed: u64) -> Result<Dataset> {
    let len = n * 3 * SIZE * SIZE;
    let pixels = (0..len as u64)
        .map(|i| ((i ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
        .collect();
    Dataset::new(pixels, (n, 3, SIZE, SIZE), None, vec![])
}

/// Times `objective`'s training loop on `model` with kernels `k`: one epoch
/// of `o.reps · o.steps` steps with the default spec's augmentation for
/// that objective, run twice (the first warms up first-use compilation and
/// algorithm choices); the row is the second run's training rate in the
/// step rows' unit, with the backbone seeing the step rows' batch. The
/// loop shows rotation each image at all four angles, so it takes
/// `o.batch / 4` images a step and the row counts backbone inputs (the
/// step row shows each image once); a two-view method takes `o.batch`
/// images (2 views each, as the step row) and the row counts images.
pub fn loop_row(o: &BenchOptions, model: &str, k: Kernels, objective: &str) -> Result<BenchRow> {
    check_objective(objective)?;
    kernels::set_default(k);
    let steps = o.reps.max(1) * o.steps.max(1);
    // Backbone inputs per source image: the loop's, over the step row's.
    let per_image = if objective == "rotation" { 4 } else { 1 };
    let batch = (o.batch / per_image).max(1);
    let n = batch * steps;
    let ds = synthetic(n, o.seed)?;
    let pool: Vec<usize> = (0..n).collect();
    let norm = Normalization {
        mean: vec![0.5; 3],
        std: vec![0.25; 3],
    };
    let spec = Experiment::default();
    let mut cfg = spec.pretrain_config(objective, o.seed, (3, SIZE, SIZE))?;
    cfg.fit.epochs = 1;
    cfg.fit.batch_size = batch;
    cfg.fit.patience = None;
    cfg.val_fraction = 0.0;
    let view = spec.methods.get(objective)?;
    let (siamese, settings) = (view.siamese, view.pretext);
    let backbone = Arc::new(BackboneConfig::from_name(model, 3)?);
    let build = |ctx: &pretext::ObjectiveContext, vb: candle_nn::VarBuilder| {
        crate::methods::build_with(objective, &siamese, &settings, ctx, vb)
    };
    let run = || {
        let data = Unlabeled {
            ds: &ds,
            pool: &pool,
            norm: &norm,
        };
        pretext::pretrain_with(
            &cfg,
            backbone.clone(),
            data,
            &o.device,
            true,
            &build,
            Hooks::default(),
        )
    };
    run()?;
    // The loop counts what its backbone sees: rotation's inputs already
    // are the step row's unit; a two-view method's views are two per image.
    let views = if crate::methods::is_two_view(objective) {
        2.0
    } else {
        1.0
    };
    let rate = run()?.report.images_per_s / views;
    Ok(BenchRow {
        model: model.to_string(),
        implementation: format!("{}-loop", k.name()),
        objective: objective.to_string(),
        batch: o.batch,
        images_per_s: rate,
        spread: 0.0,
        step_ms: 1e3 * o.batch as f64 / rate.max(1e-9),
        gflops: None,
        gpu_mem_mb: gpu_memory_used_mb(&o.device),
        phases_ms: None,
        tokens_per_s: None,
        seq_len: None,
    })
}

/// [`loop_row`] for every backbone, objective and kernel choice of `o`
/// (the text model has no loop row), each handed to `each` as it is done.
pub fn loop_rows(o: &BenchOptions, each: impl FnMut(&BenchRow)) -> Result<Vec<BenchRow>> {
    crate::bench::image_rows(o, loop_row, each)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn synthetic_images_are_fixed_by_the_seed() {
        let a = synthetic(3, 7).unwrap();
        let b = synthetic(3, 7).unwrap();
        let c = synthetic(3, 8).unwrap();
        assert_eq!(a.pixels(), b.pixels());
        assert_ne!(a.pixels(), c.pixels());
        assert_eq!(a.len(), 3);
    }

    #[test]
    fn a_tiny_loop_row_is_measured() {
        let o = BenchOptions {
            models: vec!["convnet".into()],
            kernels: vec![Kernels::Fast],
            objectives: vec!["rotation".into(), "simclr".into()],
            batch: 8,
            warmup: 0,
            reps: 1,
            steps: 2,
            device: Device::Cpu,
            seed: 0,
            text_batch: 2,
            seq_len: 8,
        };
        let mut seen = 0;
        let rows = loop_rows(&o, |_| seen += 1).unwrap();
        assert_eq!((rows.len(), seen), (2, 2));
        for r in &rows {
            assert_eq!((r.implementation.as_str(), r.batch), ("fast-loop", 8));
            assert!(r.images_per_s.is_finite() && r.images_per_s > 0.0, "{r:?}");
            assert_eq!(r.gpu_mem_mb, None);
        }
        assert_eq!(rows[1].objective, "simclr");
    }
}
