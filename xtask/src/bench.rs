//! `cargo xtask bench`: training-step throughput of our kernels, Candle's
//! stock ops and PyTorch, side by side in one run.

use crate::bench_rounds::{print_summaries, pytorch_in_round, ratio_summaries, Measured};
use anyhow::{bail, Context, Result};
use clap::Args;
use selfsup::bench::{self, BenchOptions, BenchRow};
use selfsup::core::device::parse_device;
use selfsup::kernels::simd::{self, SimdLevel};
use selfsup::kernels::Kernels;
use std::path::PathBuf;
use std::process::Command;

#[derive(Args)]
pub struct BenchArgs {
    /// Backbones, comma-separated (convnet, resnet18, mobilenetv2, vit); `bert` adds the text trainer's
    /// masked-token step (`cargo xtask text`'s default model, tokens/s,
    /// against transformers' BertForMaskedLM).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "convnet,resnet18,mobilenetv2"
    )]
    models: Vec<String>,
    /// Training objectives, comma-separated: rotation (one view, 4-way head),
    /// simclr (two views per image, projector, NT-Xent) and/or mae (masked
    /// autoencoding, timed on the vit only).
    #[arg(long, value_delimiter = ',', default_value = "rotation")]
    objectives: Vec<String>,
    /// Our implementations to time, comma-separated (stock = Candle's ops).
    #[arg(long, value_delimiter = ',', default_value = "stock,fast")]
    kernels: Vec<Kernels>,
    /// Device: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Images per training step.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Sequences per step of the bert rows.
    #[arg(long, default_value_t = 32)]
    text_batch: usize,
    /// Tokens per sequence of the bert rows.
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// Untimed warm-up steps per row.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed repetitions per row (median and spread over these).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Training steps per repetition (default: 1 on CPU, 20 on a GPU).
    #[arg(long)]
    steps: Option<usize>,
    /// Skip the PyTorch rows.
    #[arg(long)]
    no_pytorch: bool,
    /// Python interpreter for the PyTorch rows.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Also time PyTorch with TF32 convolutions off (GPU).
    #[arg(long)]
    pytorch_fp32: bool,
    /// Convolution math on a GPU, for our rows and PyTorch's alike: tf32
    /// (TF32 tensor cores allowed in cuDNN convolutions, PyTorch's default)
    /// or fp32 (strict f32 on both sides). Matmuls stay f32 either way, as
    /// in PyTorch's defaults (see --tf32).
    #[arg(long, default_value = "tf32", value_parser = ["tf32", "fp32"])]
    precision: String,
    /// Depthwise convolutions on a GPU: cuDNN's grouped convolutions (the
    /// default, measured faster) or this crate's CUDA kernels.
    #[arg(long, default_value = "cudnn", value_parser = ["cudnn", "kernels"])]
    depthwise: String,
    /// How our cuDNN convolutions pick an algorithm per shape on a GPU:
    /// heuristic (cuDNN's pick, untimed: PyTorch's default, which its rows
    /// keep) or measured (time each once, keep the fastest).
    #[arg(long, default_value = "heuristic", value_parser = ["heuristic", "measured"])]
    conv_algo: String,
    /// Also time each backbone's real training loop (rows `<impl>-loop`):
    /// synthetic images gathered and augmented on a CPU thread, copied to
    /// the device, the step and the loss read, for one epoch of
    /// reps x steps steps; against the device-resident step, the gap is
    /// what the data path costs.
    #[arg(long = "loop")]
    with_loop: bool,
    /// On a GPU, also time our rows with TF32 matmuls (reduced-precision f32
    /// GEMMs, as PyTorch uses for convolutions by default); rows `<impl>-tf32`.
    #[arg(long)]
    tf32: bool,
    /// SIMD levels for our CPU loops, comma-separated (baseline, avx2,
    /// avx512): our rows once per level, capped process-wide; rows below the
    /// CPU's widest are named `<impl>-<level>`. Default: the widest.
    #[arg(long, value_delimiter = ',')]
    simd: Vec<SimdLevel>,
    /// Measure the PyTorch rows and ours this many times, alternating, and
    /// summarise each of our rows' ratio to PyTorch over the rounds (median,
    /// min, max): on a machine whose speed drifts, a ratio from rows timed
    /// minutes apart.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// Write the results as JSON to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn torch_available(python: &str) -> bool {
    Command::new(python)
        .args(["-c", "import torch"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The PyTorch rows, on `device` (a torch device string: `cpu`, `cuda:N`).
fn pytorch_rows(
    a: &BenchArgs,
    device: &str,
    steps: usize,
    threads: usize,
) -> Result<Vec<BenchRow>> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/torch_bench.py");
    // The bert rows: `cargo xtask text`'s default model.
    let text = selfsup::text::train::TextConfig::default();
    let mut cmd = Command::new(&a.python);
    cmd.arg(&script)
        .args(["--device", device])
        .args(["--threads", &threads.to_string()])
        .args(["--models", &a.models.join(",")])
        .args([
            "--objectives",
            &bench::with_pytorch_twin(&a.objectives).join(","),
        ])
        .args(["--batch", &a.batch.to_string()])
        .args(["--text-batch", &a.text_batch.to_string()])
        .args(["--seq-len", &a.seq_len.to_string()])
        .args([
            "--bert-vocab",
            &selfsup::text::bench::DEFAULT_VOCAB.to_string(),
        ])
        .args(["--bert-hidden", &text.hidden.to_string()])
        .args(["--bert-layers", &text.layers.to_string()])
        .args(["--bert-heads", &text.heads.to_string()])
        .args(["--bert-dropout", &text.dropout.to_string()])
        .args(["--warmup", &a.warmup.to_string()])
        .args(["--reps", &a.reps.to_string()])
        .args(["--steps", &steps.to_string()]);
    if a.pytorch_fp32 {
        cmd.arg("--fp32");
    }
    cmd.args(["--precision", &a.precision]);
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", script.display(), out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim())
        .with_context(|| format!("{} printed no JSON: {text}", script.display()))?;
    Ok(serde_json::from_value(v["rows"].clone())?)
}

/// An error unless this CPU has every level in `levels`.
fn check_simd_levels(levels: &[SimdLevel]) -> Result<()> {
    let top = simd::detected();
    if let Some(l) = levels.iter().find(|l| **l > top) {
        bail!(
            "--simd {}: this CPU's widest SIMD level is {}",
            l.name(),
            top.name()
        );
    }
    Ok(())
}

/// Our rows once per `--simd` level (the CPU's widest when none is given),
/// the level capped process-wide while they run.
fn rows_per_simd_level(
    a: &BenchArgs,
    opts: &BenchOptions,
    report: &impl Fn(&BenchRow),
) -> Result<Vec<BenchRow>> {
    let top = simd::detected();
    let levels = if a.simd.is_empty() {
        vec![top]
    } else {
        a.simd.clone()
    };
    let mut rows = Vec::new();
    for level in levels {
        simd::set_max_level(Some(level));
        let measured = bench::run(opts, report);
        simd::set_max_level(None);
        rows.extend(measured?.into_iter().map(|mut r| {
            if level != top {
                r.implementation = format!("{}-{}", r.implementation, level.name());
            }
            r
        }));
    }
    Ok(rows)
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

/// The rows as a markdown table, each with its ratio to PyTorch's row of
/// the same round (and a round column when there are several).
fn print_rows(all: &[Measured], peak: f64, rounds: bool) {
    let round_col = if rounds { "round | " } else { "" };
    println!(
        "| {round_col}model | objective | impl | batch | images/s | ± | tokens/s | step ms | fwd / bwd / opt ms | conv GFLOP/s | % of matmul peak | GPU MiB | vs pytorch |"
    );
    println!(
        "|{}---|---|---|---|---|---|---|---|---|---|---|---|---|",
        if rounds { "---|" } else { "" }
    );
    for Measured { round, row: r } in all {
        let torch = pytorch_in_round(all, *round, r);
        let flops = r.gflops.or_else(|| {
            // PyTorch rows: the same network does the same FLOPs per image.
            all.iter()
                .filter(|m| m.round == *round)
                .map(|m| &m.row)
                .find(|o| o.model == r.model && o.objective == r.objective && o.gflops.is_some())
                .and_then(|o| o.gflops.map(|g| g / o.images_per_s * r.images_per_s))
        });
        let phases = r
            .phases_ms
            .map(|p| format!("{:.1} / {:.1} / {:.1}", p.forward, p.backward, p.optimizer))
            .unwrap_or_else(|| "-".into());
        let round_cell = if rounds {
            format!("{round} | ")
        } else {
            String::new()
        };
        println!(
            "| {round_cell}{} | {} | {} | {} | {:.1} | {:.1} | {} | {:.1} | {} | {} | {} | {} | {} |",
            r.model,
            r.objective,
            r.implementation,
            r.batch,
            r.images_per_s,
            r.spread,
            fmt_opt(r.tokens_per_s, 0),
            r.step_ms,
            phases,
            fmt_opt(flops, 1),
            fmt_opt(flops.map(|f| 100.0 * f / peak), 1),
            fmt_opt(r.gpu_mem_mb, 0),
            fmt_opt(torch.map(|t| r.images_per_s / t), 2),
        );
    }
}

/// What the JSON's `pytorch` field says: measured, or why not (printed
/// too).
fn pytorch_note(a: &BenchArgs, with_torch: bool) -> String {
    if a.no_pytorch {
        return "skipped (--no-pytorch)".into();
    }
    if with_torch {
        return "measured".into();
    }
    let note = format!(
        "PyTorch rows skipped: `{} -c 'import torch'` failed. Install it with \
         `pip install torch --index-url https://download.pytorch.org/whl/cpu` \
         (CPU) or `pip install torch` (CUDA), or pass --python.",
        a.python
    );
    eprintln!("{note}");
    note
}

/// One round: the PyTorch rows (first, so that their GPU memory is released
/// before ours is measured), then ours at each `--simd` level and, with
/// `--tf32` on a GPU, with TF32 matmuls.
fn round_rows(
    a: &BenchArgs,
    opts: &BenchOptions,
    dev_name: &str,
    threads: usize,
    with_torch: bool,
) -> Result<Vec<BenchRow>> {
    let mut rows = Vec::new();
    if with_torch {
        // `auto` resolves to what our rows run on; `cuda:N` passes through.
        let torch_device = if a.device == "auto" {
            dev_name
        } else {
            a.device.as_str()
        };
        rows.extend(pytorch_rows(a, torch_device, opts.steps, threads)?);
    }
    let report = |r: &BenchRow| {
        eprintln!(
            "{} {} {}: {:.1} img/s",
            r.implementation, r.objective, r.model, r.images_per_s
        )
    };
    rows.extend(rows_per_simd_level(a, opts, &report)?);
    if a.with_loop {
        rows.extend(selfsup::bench_loop::loop_rows(opts, report)?);
    }
    if a.tf32 && opts.device.is_cuda() {
        candle_core::cuda::set_gemm_reduced_precision_f32(true);
        let tf32 = bench::run(opts, report);
        candle_core::cuda::set_gemm_reduced_precision_f32(false);
        rows.extend(tf32?.into_iter().map(|mut r| {
            r.implementation.push_str("-tf32");
            r
        }));
    }
    Ok(rows)
}

pub fn run(a: BenchArgs) -> Result<()> {
    // Before anything is timed, PyTorch rows included.
    for o in &a.objectives {
        bench::check_objective(o).context("--objectives")?;
    }
    check_simd_levels(&a.simd)?;
    let device = parse_device(&a.device)?;
    selfsup::kernels::set_conv_tf32(a.precision == "tf32");
    selfsup::kernels::set_depthwise_cudnn(a.depthwise == "cudnn");
    selfsup::kernels::set_conv_algo_search(a.conv_algo == "measured");
    let steps = a.steps.unwrap_or(if device.is_cpu() { 1 } else { 20 });
    let threads = candle_core::utils::get_num_threads();
    let dev_name = if device.is_cuda() { "cuda" } else { "cpu" };
    eprintln!(
        "bench: {} training step, 3x32x32, batch {}, {} warm-up + {} x {} timed steps per row, {dev_name}, {threads} threads",
        a.objectives.join(" and "),
        a.batch,
        a.warmup,
        a.reps,
        steps
    );
    if a.models.iter().any(|m| m == bench::BERT) {
        eprintln!(
            "bench: bert masked-token step, {} x {} tokens, vocabulary {}",
            a.text_batch,
            a.seq_len,
            selfsup::text::bench::DEFAULT_VOCAB
        );
    }
    let cpu = bench::cpu_info();
    eprintln!(
        "cpu: {} ({} SIMD for our loops; {})",
        cpu.model,
        cpu.simd,
        cpu.features.join(" ")
    );
    let peak = bench::matmul_peak(&device)?;
    eprintln!(
        "measured f32 matmul peak: {peak:.0} GFLOP/s ({} GEMM kernels)",
        cpu.gemm_simd
    );
    let opts = BenchOptions {
        models: a.models.clone(),
        kernels: a.kernels.clone(),
        objectives: a.objectives.clone(),
        batch: a.batch,
        warmup: a.warmup,
        reps: a.reps,
        steps,
        device: device.clone(),
        seed: 0,
        text_batch: a.text_batch,
        seq_len: a.seq_len,
    };
    let with_torch = !a.no_pytorch && torch_available(&a.python);
    let pytorch_note = pytorch_note(&a, with_torch);
    let mut all = Vec::new();
    for round in 1..=a.rounds as usize {
        if a.rounds > 1 {
            eprintln!("round {round} of {}", a.rounds);
        }
        for row in round_rows(&a, &opts, dev_name, threads, with_torch)? {
            all.push(Measured { round, row });
        }
    }
    print_rows(&all, peak, a.rounds > 1);
    let ratios = ratio_summaries(&all);
    if a.rounds > 1 && !ratios.is_empty() {
        print_summaries(&ratios);
    }
    if let Some(path) = &a.out {
        let rows: Vec<serde_json::Value> = all
            .iter()
            .map(|m| {
                let mut v = serde_json::to_value(&m.row)?;
                v["round"] = m.round.into();
                Ok(v)
            })
            .collect::<Result<_>>()?;
        let json = serde_json::json!({
            "threads": threads,
            "device": dev_name,
            "precision": a.precision,
            "depthwise": a.depthwise,
            "conv_algo": a.conv_algo,
            "batch": a.batch,
            "steps_per_rep": steps,
            "reps": a.reps,
            "rounds": a.rounds,
            "matmul_peak_gflops": peak,
            "cpu": cpu,
            "pytorch": pytorch_note,
            "rows": rows,
            "ratios": ratios,
        });
        selfsup::core::fsutil::write_json_atomic(path, &json)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
