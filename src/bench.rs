//! Training-step throughput of the backbones (`cargo xtask bench`), and of
//! the text side's BERT (model `bert`: the masked-token step of
//! [`crate::text::bench`], in tokens/s).
//!
//! One row = one backbone, one convolution implementation, on one device:
//! the rotation pretext's training step (forward through backbone + 4-way
//! head, cross-entropy, backward, AdamW update) on a device-resident batch of
//! rotated 3x32x32 images, timed over several repetitions after warm-up. The
//! batch is prepared once so that the row measures the model's compute, the
//! same thing the PyTorch script under `bench/` measures.
//!
//! Achieved GFLOP/s counts the convolutions' multiply-adds (forward FLOPs,
//! times 3 for forward + both gradients); [`matmul_peak`] is the device's
//! measured f32 matmul rate to compare it with.

use crate::backbones::BackboneConfig;
use crate::core::{params, Normalization, Result};
use crate::kernels::{self, Kernels};
use candle_core::{DType, Device, Tensor};
use candle_nn::{Module, Optimizer, VarMap};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Backbone names (`convnet`, `resnet18`, `mobilenetv2`) and/or
    /// [`BERT`].
    pub models: Vec<String>,
    /// Convolution implementations to compare.
    pub kernels: Vec<Kernels>,
    /// Training objectives to time ([`OBJECTIVES`]).
    pub objectives: Vec<String>,
    /// Images per training step.
    pub batch: usize,
    /// Untimed steps before timing.
    pub warmup: usize,
    /// Timed repetitions (the median and spread are over these).
    pub reps: usize,
    /// Training steps per repetition.
    pub steps: usize,
    /// Device to run on.
    pub device: Device,
    /// Seed of the parameters and the synthetic images.
    pub seed: u64,
    /// Sequences per step of the [`BERT`] rows.
    pub text_batch: usize,
    /// Tokens per sequence of the [`BERT`] rows.
    pub seq_len: usize,
}

/// The model name of the text rows: `cargo xtask text`'s default BERT
/// (vocabulary [`crate::text::bench::DEFAULT_VOCAB`]), timed on the
/// masked-token objective [`MLM`].
pub const BERT: &str = "bert";

/// The objective of the [`BERT`] rows.
pub const MLM: &str = "mlm";

/// The objectives a bench row can time: `rotation` (one view per image, a
/// 4-way linear head, cross-entropy) and `simclr` (two views per image
/// through the backbone in one batch, the 256-128 projector with BatchNorm,
/// NT-Xent at temperature 0.2 — `selfsup-contrastive`'s defaults), `mae`
/// (the ViT only: 75 % of patches masked, the default decoder, per-patch
/// normalised pixel loss on the masked patches), and `jigsaw`, `inpaint`
/// and `colorization` (convolutional backbones; their default settings,
/// each through its objective's own loss on `u8` images, without a
/// PyTorch twin).
pub const OBJECTIVES: [&str; 6] = [
    "rotation",
    "simclr",
    "mae",
    "jigsaw",
    "inpaint",
    "colorization",
];

/// Objectives the bench times through their own `loss` on `u8` images.
const PRETEXT_ROWS: [&str; 3] = ["jigsaw", "inpaint", "colorization"];

/// The objectives of `list` that bench/torch_bench.py also times (the
/// others have no PyTorch row).
pub fn with_pytorch_twin(list: &[String]) -> Vec<String> {
    list.iter()
        .filter(|o| !PRETEXT_ROWS.contains(&o.as_str()))
        .cloned()
        .collect()
}

/// Whether the bench times `objective` on `model` (mae needs the ViT;
/// inpaint and colorization a convolutional feature map).
pub fn pairs_with(objective: &str, model: &str) -> bool {
    match objective {
        "mae" => model == "vit",
        "inpaint" | "colorization" => model != "vit",
        _ => true,
    }
}

/// An error naming `objective` unless it is one of [`OBJECTIVES`] or
/// [`MLM`] (the [`BERT`] rows' objective, which they time whatever the
/// list says).
pub fn check_objective(objective: &str) -> Result<()> {
    if OBJECTIVES.contains(&objective) || objective == MLM {
        Ok(())
    } else {
        Err(crate::core::Error::invalid(
            "bench",
            format!("unknown objective {objective:?}; expected one of {OBJECTIVES:?}"),
        ))
    }
}

/// One measured configuration. `spread` is half the range (max - min) of
/// the repetitions' images/s.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchRow {
    /// Backbone name.
    pub model: String,
    /// `stock`, `fast` or `pytorch` (the PyTorch script writes its own rows).
    #[serde(rename = "impl")]
    pub implementation: String,
    /// Pretext whose step is timed.
    pub objective: String,
    /// Images (sequences for [`BERT`]) per step.
    pub batch: usize,
    /// Median training throughput, images (sequences for [`BERT`]) per
    /// second.
    pub images_per_s: f64,
    /// Half the range of the repetitions' throughputs.
    pub spread: f64,
    /// Median time of one step, milliseconds.
    pub step_ms: f64,
    /// Achieved convolution GFLOP/s (3x forward multiply-adds per step).
    pub gflops: Option<f64>,
    /// Device memory in use at the end of the row (MiB), GPUs only.
    pub gpu_mem_mb: Option<f64>,
    /// Where a step's time goes: median milliseconds of the forward pass
    /// (to the loss), the backward pass and the optimizer update, each timed
    /// to completion on its own (so they add up to a little more than
    /// `step_ms`).
    #[serde(default)]
    pub phases_ms: Option<Phases>,
    /// Median tokens per second ([`BERT`] rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    /// Tokens per sequence ([`BERT`] rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq_len: Option<usize>,
}

/// Median time of each phase of a training step, milliseconds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Phases {
    /// Backbone + head + loss.
    pub forward: f64,
    /// `loss.backward()`.
    pub backward: f64,
    /// AdamW update of every parameter.
    pub optimizer: f64,
}

impl Phases {
    /// The medians of forward, backward and optimizer samples (ms).
    pub fn median_of(samples: &[Vec<f64>; 3]) -> Self {
        Self {
            forward: median_spread(&samples[0]).0,
            backward: median_spread(&samples[1]).0,
            optimizer: median_spread(&samples[2]).0,
        }
    }
}

/// Median and half-range of a sample.
pub fn median_spread(v: &[f64]) -> (f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    (med, (s[n - 1] - s[0]) / 2.0)
}

/// Measured f32 matmul throughput of `device` (GFLOP/s, best of a few
/// square products): the yardstick for the rows' achieved GFLOP/s.
pub fn matmul_peak(device: &Device) -> Result<f64> {
    let n = if device.is_cpu() { 1024 } else { 4096 };
    let a = Tensor::randn(0f32, 1.0, (n, n), device)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), device)?;
    let _ = a.matmul(&b)?.sum_all()?.to_scalar::<f32>()?;
    let mut best = 0f64;
    let reps = if device.is_cpu() { 3 } else { 20 };
    for _ in 0..3 {
        let t = Instant::now();
        let mut acc = a.matmul(&b)?;
        for _ in 1..reps {
            acc = a.matmul(&b)?;
        }
        acc.sum_all()?.to_scalar::<f32>()?;
        let s = t.elapsed().as_secs_f64();
        best = best.max(2.0 * (n * n * n) as f64 * reps as f64 / s / 1e9);
    }
    Ok(best)
}

/// The CPU a bench ran on: its model name, SIMD features, and the widest
/// level our kernels and the GEMM dispatch to on it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CpuInfo {
    /// `model name` from /proc/cpuinfo (empty where unavailable).
    pub model: String,
    /// SIMD features the standard library detects (`avx2`, `avx512f`, ...).
    pub features: Vec<String>,
    /// `baseline`, `avx2` or `avx512`: what [`kernels::simd::dispatch`]
    /// runs our CPU loops at.
    pub simd: String,
    /// The same for the GEMM kernels that `matmul_peak` and the
    /// convolutions use ([`kernels::simd::gemm_level`]).
    pub gemm_simd: String,
}

/// This machine's [`CpuInfo`].
pub fn cpu_info() -> CpuInfo {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    CpuInfo {
        model,
        features: kernels::simd::cpu_features()
            .into_iter()
            .map(String::from)
            .collect(),
        simd: kernels::simd::active().name().to_string(),
        gemm_simd: kernels::simd::gemm_level().name().to_string(),
    }
}

/// Device memory in use (MiB) on a CUDA device; `None` on the CPU.
pub fn gpu_memory_used_mb(device: &Device) -> Option<f64> {
    #[cfg(feature = "cuda")]
    if let Ok(d) = device.as_cuda_device() {
        if let Ok((free, total)) = d.cuda_stream().context().mem_get_info() {
            return Some((total - free) as f64 / (1024.0 * 1024.0));
        }
    }
    let _ = device;
    None
}

/// Side of the synthetic 3-channel images every image row trains on.
pub const SIZE: usize = 32;

/// The bench's input normalisation.
fn bench_norm() -> Normalization {
    Normalization {
        mean: vec![0.5; 3],
        std: vec![0.25; 3],
    }
}

/// `n` synthetic 3x`SIZE`x`SIZE` images (uniform random bytes).
fn bench_pixels(n: usize, seed: u64) -> Vec<u8> {
    use rand::Rng;
    let mut rng = crate::core::rng::stream(seed, "bench-images");
    (0..n * 3 * SIZE * SIZE).map(|_| rng.random()).collect()
}

/// A device-resident rotation batch: `batch / 4` synthetic images, each in
/// its four rotations, normalised, with their rotation labels.
fn rotation_inputs(batch: usize, seed: u64, device: &Device) -> Result<(Tensor, Tensor)> {
    let shape = (3, SIZE, SIZE);
    let per = 3 * SIZE * SIZE;
    let pixels = bench_pixels(batch.div_ceil(4), seed);
    let (px, y) = crate::pretext::rotation_batch(&pixels, shape);
    let x = crate::data::batch::to_tensor(&px[..batch * per], shape, &bench_norm(), device)?;
    let y = Tensor::from_vec(y[..batch].to_vec(), batch, device)?;
    Ok((x, y))
}

/// What a bench step puts after the backbone.
enum Tail {
    /// The 4-way rotation head.
    Rotation(candle_nn::Linear),
    /// SimCLR's projector, and both views of the batch as one tensor.
    SimClr(crate::contrastive::Mlp, Tensor),
    /// MAE's decoder (ViT only).
    Mae(Box<crate::pretext::Mae>),
    /// A pretext objective timed through its own `loss` on a batch of
    /// `u8` images (its batch preparation — tiles, masks, colour
    /// conversion — inside the step).
    Pretext(Box<dyn crate::pretext::Objective>, Vec<u8>),
}

/// What [`time_steps`] measured: median and half-range of images/s,
/// convolution FLOPs per step, and the forward / backward / optimizer
/// milliseconds of each repetition.
type Timing = (f64, f64, f64, [Vec<f64>; 3]);

/// Warms up, times `o.reps` repetitions of `o.steps` training steps of
/// `forward`'s loss with `opt`, then times each phase of one step per
/// repetition.
fn time_steps<O: Optimizer>(
    o: &BenchOptions,
    mut opt: O,
    forward: impl Fn() -> Result<Tensor>,
) -> Result<Timing> {
    let mut step = || -> Result<Tensor> {
        let loss = forward()?;
        opt.backward_step(&loss)?;
        Ok(loss)
    };
    for _ in 0..o.warmup {
        step()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    }
    kernels::take_forward_flops();
    let (reps, steps) = (o.reps.max(1), o.steps.max(1));
    let mut rates = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        let mut last = None;
        for _ in 0..steps {
            last = Some(step()?);
        }
        if let Some(l) = last {
            l.to_scalar::<f32>()?; // waits for the device
        }
        rates.push((o.batch * steps) as f64 / t.elapsed().as_secs_f64());
    }
    let flops_per_step = 3.0 * kernels::take_forward_flops() as f64 / (reps * steps) as f64;
    // Phases, each waited for before the next starts.
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..reps {
        let t = Instant::now();
        let loss = forward()?;
        o.device.synchronize()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        o.device.synchronize()?;
        let t2 = Instant::now();
        opt.step(&grads)?;
        o.device.synchronize()?;
        let t3 = Instant::now();
        times[0].push(1e3 * (t1 - t).as_secs_f64());
        times[1].push(1e3 * (t2 - t1).as_secs_f64());
        times[2].push(1e3 * (t3 - t2).as_secs_f64());
    }
    let (med, spread) = median_spread(&rates);
    Ok((med, spread, flops_per_step, times))
}

/// Times the training step of `objective` on `model` with `k` kernels.
/// `o.batch` counts images (SimCLR's step sees twice as many views).
pub fn train_step_row(
    o: &BenchOptions,
    model: &str,
    k: Kernels,
    objective: &str,
) -> Result<BenchRow> {
    check_objective(objective)?;
    kernels::set_default(k);
    let cfg = BackboneConfig::from_name(model, 3)?;
    let map = VarMap::new();
    let vb = params::seeded_var_builder(&map, o.seed, &o.device);
    let backbone = cfg.build(vb.pp("backbone"))?;
    let (x, y) = rotation_inputs(o.batch, o.seed, &o.device)?;
    // Rotation's 4-way head, or SimCLR's projector and two views (the
    // rotation inputs and another draw, one batch): only what the timed step
    // uses is built, so the optimiser sees exactly its parameters.
    let ctx = || crate::pretext::ObjectiveContext {
        backbone: std::sync::Arc::new(cfg.clone()),
        feature_dim: backbone.feature_dim(),
        online: map.clone(),
        seed: o.seed,
        device: o.device.clone(),
        image_shape: (3, SIZE, SIZE),
    };
    let tail = match objective {
        "simclr" => {
            let dims = [backbone.feature_dim(), 256, 128];
            let projector = crate::contrastive::Mlp::new(&dims, true, vb.pp("projector"))?;
            let (x2, _) = rotation_inputs(o.batch, o.seed + 1, &o.device)?;
            Tail::SimClr(projector, Tensor::cat(&[&x, &x2], 0)?)
        }
        "mae" => {
            let mae = crate::pretext::Mae::new(Default::default(), &ctx(), vb.pp("head"))?;
            Tail::Mae(Box::new(mae))
        }
        name if PRETEXT_ROWS.contains(&name) => {
            let objective = crate::pretext::build_objective(name, &ctx(), vb.pp("head"))?;
            Tail::Pretext(objective, bench_pixels(o.batch, o.seed))
        }
        _ => Tail::Rotation(candle_nn::linear(backbone.feature_dim(), 4, vb.pp("head"))?),
    };
    let vars: Vec<_> = params::trainable_vars(&map)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let adamw = candle_nn::ParamsAdamW {
        lr: 1e-3,
        weight_decay: 5e-4,
        ..Default::default()
    };
    let forward = || -> Result<Tensor> {
        match &tail {
            Tail::Rotation(head) => {
                let logits = head.forward(&backbone.forward_t(&x, true)?)?;
                Ok(candle_nn::loss::cross_entropy(&logits, &y)?)
            }
            Tail::SimClr(projector, views) => {
                let z = projector.forward_t(&backbone.forward_t(views, true)?, true)?;
                let n = o.batch;
                crate::contrastive::losses::nt_xent(&z.narrow(0, 0, n)?, &z.narrow(0, n, n)?, 0.2)
            }
            Tail::Mae(mae) => mae.loss_of(backbone.as_ref(), &x, o.seed),
            Tail::Pretext(objective, pixels) => {
                let shape = (3, SIZE, SIZE);
                Ok(objective
                    .loss(backbone.as_ref(), pixels, shape, &bench_norm(), true)?
                    .0)
            }
        }
    };
    // Stock rows keep Candle's own AdamW; fast rows use the fused one.
    let timing = match k {
        Kernels::Stock => time_steps(o, candle_nn::AdamW::new(vars, adamw)?, forward)?,
        Kernels::Fast => time_steps(o, kernels::AdamW::new(vars, adamw)?, forward)?,
    };
    let (med, spread, flops_per_step, times) = timing;
    let phases = Phases::median_of(&times);
    let gflops = (flops_per_step > 0.0).then(|| flops_per_step * med / o.batch as f64 / 1e9);
    Ok(BenchRow {
        model: model.to_string(),
        implementation: k.name().to_string(),
        objective: objective.to_string(),
        batch: o.batch,
        images_per_s: med,
        spread,
        step_ms: 1e3 * o.batch as f64 / med,
        gflops,
        gpu_mem_mb: gpu_memory_used_mb(&o.device),
        phases_ms: Some(phases),
        tokens_per_s: None,
        seq_len: None,
    })
}

/// Times the text trainer's masked-token step of `cargo xtask text`'s
/// default BERT with `k` kernels (`stock`: LayerNorm and softmax from
/// Candle's differentiable primitives; `fast`: this project's fused ops).
pub fn bert_row(o: &BenchOptions, k: Kernels) -> Result<BenchRow> {
    use crate::text::{bench as tb, train::TextConfig};
    kernels::set_default(k);
    let c = TextConfig::default();
    let so = tb::StepOptions {
        config: crate::text::bert::BertConfig::small(
            tb::DEFAULT_VOCAB,
            c.hidden,
            c.layers,
            c.heads,
            c.max_len.max(o.seq_len),
        ),
        batch: o.text_batch,
        seq_len: o.seq_len,
        warmup: o.warmup,
        reps: o.reps,
        steps: o.steps,
        seed: o.seed,
        dropout: c.dropout,
        device: o.device.clone(),
    };
    let t = tb::time_step(&so)?;
    let (tokens, spread) = median_spread(&t.tokens_per_s);
    let per_seq = o.seq_len as f64;
    Ok(BenchRow {
        model: BERT.to_string(),
        implementation: k.name().to_string(),
        objective: MLM.to_string(),
        batch: o.text_batch,
        images_per_s: tokens / per_seq,
        spread: spread / per_seq,
        step_ms: 1e3 * (o.text_batch * o.seq_len) as f64 / tokens,
        gflops: None,
        gpu_mem_mb: gpu_memory_used_mb(&o.device),
        phases_ms: Some(Phases::median_of(&t.phases_ms)),
        tokens_per_s: Some(tokens),
        seq_len: Some(o.seq_len),
    })
}

/// Every (objective, model, kernels) row of `o`, in order, then the
/// [`BERT`] rows (one per kernels, objective [`MLM`]) when `o.models` names
/// it; `each` sees each row as it is measured. Restores the process-wide kernels to `fast`
/// afterwards.
pub fn run(o: &BenchOptions, mut each: impl FnMut(&BenchRow)) -> Result<Vec<BenchRow>> {
    let mut rows = image_rows(o, train_step_row, &mut each)?;
    if o.models.iter().any(|m| m == BERT) {
        for &k in &o.kernels {
            let r = bert_row(o, k);
            kernels::set_default(Kernels::Fast);
            let r = r?;
            each(&r);
            rows.push(r);
        }
    }
    Ok(rows)
}

/// `row(o, model, kernels, objective)` for every image objective, backbone
/// and kernels choice of `o` (the [`BERT`] rows aside), in that nesting
/// order, each handed to `each` as it is measured; the process-wide kernels
/// are back to `fast` after each row.
pub fn image_rows(
    o: &BenchOptions,
    row: impl Fn(&BenchOptions, &str, Kernels, &str) -> Result<BenchRow>,
    mut each: impl FnMut(&BenchRow),
) -> Result<Vec<BenchRow>> {
    let mut rows = Vec::new();
    for obj in o.objectives.iter().filter(|o| *o != MLM) {
        for m in o.models.iter().filter(|m| *m != BERT && pairs_with(obj, m)) {
            for &k in &o.kernels {
                let r = row(o, m, k, obj);
                kernels::set_default(Kernels::Fast);
                let r = r?;
                each(&r);
                rows.push(r);
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        assert_eq!(median_spread(&[3.0, 1.0, 2.0]), (2.0, 1.0));
        assert_eq!(median_spread(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.5));
    }

    #[test]
    fn a_tiny_row_is_measured_for_both_kernels() {
        let o = BenchOptions {
            models: vec!["convnet".into()],
            kernels: vec![Kernels::Stock, Kernels::Fast],
            objectives: vec!["rotation".into(), "simclr".into()],
            batch: 8,
            warmup: 1,
            reps: 2,
            steps: 1,
            device: Device::Cpu,
            seed: 0,
            text_batch: 2,
            seq_len: 16,
        };
        let mut with_bert = o.clone();
        with_bert.models.push(BERT.into());
        with_bert.objectives.push(MLM.into());
        let rows = run(&with_bert, |_| {}).unwrap();
        // Four image rows, then one BERT row per kernels, timed once.
        assert_eq!(rows.len(), 6);
        for r in &rows[4..] {
            assert_eq!((r.model.as_str(), r.objective.as_str()), (BERT, MLM));
            let tps = r.tokens_per_s.unwrap();
            assert!((tps / 16.0 - r.images_per_s).abs() < 1e-6 * tps, "{r:?}");
            assert_eq!((r.batch, r.seq_len), (2, Some(16)));
        }
        let rows = &rows[..4];
        for r in rows {
            assert!(r.images_per_s > 0.0 && r.images_per_s.is_finite(), "{r:?}");
            assert!(r.gflops.unwrap() > 0.0);
            assert_eq!(r.gpu_mem_mb, None);
            let p = r.phases_ms.unwrap();
            assert!(
                p.forward > 0.0 && p.backward > 0.0 && p.optimizer > 0.0,
                "{p:?}"
            );
        }
        assert_eq!(rows[0].implementation, "stock");
        assert_eq!(rows[0].objective, "rotation");
        assert_eq!(rows[2].objective, "simclr");
        assert_eq!(rows[3].implementation, "fast");
        let mut bad = o.clone();
        bad.objectives = vec!["moco".into()];
        let e = run(&bad, |_| {}).unwrap_err().to_string();
        assert!(e.contains("moco") && e.contains("simclr"), "{e}");
        let listed = ["rotation", "jigsaw", "mae", "colorization"].map(String::from);
        assert_eq!(with_pytorch_twin(&listed), ["rotation", "mae"]);
        assert!(pairs_with("mae", "vit") && !pairs_with("mae", "convnet"));
        assert!(!pairs_with("inpaint", "vit") && pairs_with("jigsaw", "vit"));
        assert_eq!(crate::kernels::default_kernels(), Kernels::Fast);
    }
}
