//! The frozen features the `linear` and `knn` protocols see, written as
//! NumPy files for tools outside selfsup: the default spec's data, the
//! seed's K labeled images and the test set, through the randomly
//! initialised encoder of scratch (or a pretrained stage directory).
//!
//! Run: `cargo run --release --example export_features -- OUT [SEED] [STAGE_DIR]`
//!
//! OUT gets `train_x.npy` (K x classes, D), `train_y.npy`, `labeled.npy`
//! (their indices in the training set), `test_x.npy`, `test_y.npy`,
//! `norm.npy` (input mean, std) and `encoder.safetensors` (the encoder's
//! weights, `backbone.*`). docs/results/knn-reference/ reads them.

use candle_core::{Device, Tensor};
use selfsup::backbones::checkpoint::{self as ckpt, BACKBONE_PREFIX};
use selfsup::pipeline::{FrozenFeatures, Stage};
use selfsup::spec::Experiment;
use std::path::{Path, PathBuf};

/// A little-endian `.npy` (format 1.0) of `shape` holding `data`.
fn npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) -> std::io::Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple}, }}");
    // Magic (6) + version (2) + length (2) + header, padded to 64 with '\n' last.
    let pad = 64 - (10 + header.len() + 1) % 64;
    header.push_str(&" ".repeat(pad % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    std::fs::write(path, out)
}

fn f32s(path: &Path, t: &Tensor) -> Result<(), Box<dyn std::error::Error>> {
    let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    Ok(npy(path, "<f4", t.dims(), &bytes)?)
}

fn u32s(path: &Path, v: &[u32]) -> std::io::Result<()> {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    npy(path, "<u4", &[v.len()], &bytes)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first().map(PathBuf::from) else {
        return Err("usage: export_features OUT [SEED] [STAGE_DIR]".into());
    };
    let seed: u64 = args.get(1).map_or(Ok(0), |s| s.parse())?;
    let spec = Experiment::default();
    let k = spec.split.labels_per_class[0];
    let prep = selfsup::pipeline::load(&spec)?;
    let backbone = spec.backbone_config(prep.pair.train.image_shape().0);
    let device = Device::Cpu;
    let ctx = Stage {
        prep: &prep,
        backbone: &backbone,
        spec: &spec,
        device: &device,
        quiet: true,
        resume: false,
        checkpoint_every: 0,
    };
    std::fs::create_dir_all(&out)?;
    let map = candle_nn::VarMap::new();
    let encoder = match args.get(2) {
        Some(dir) => {
            let loaded = ckpt::load(Path::new(dir), seed, &device)?;
            loaded.map.save(out.join("encoder.safetensors"))?;
            loaded.backbone
        }
        None => {
            // As the pipeline builds scratch's encoder for the frozen protocols.
            let vb = selfsup::core::params::seeded_var_builder(&map, seed, &device);
            backbone.build(vb.pp(BACKBONE_PREFIX))?
        }
    };
    if args.get(2).is_none() {
        map.save(out.join("encoder.safetensors"))?;
    }
    let f = FrozenFeatures::extract(&ctx, encoder.as_ref(), k, seed)?;
    let labeled = selfsup::data::split::stratified(ctx.labels(), k, seed)?.labeled;
    let labeled: Vec<u32> = labeled.iter().map(|&i| i as u32).collect();
    let test_y = prep.pair.test.labels().expect("labeled test set");
    f32s(&out.join("train_x.npy"), &f.train_x)?;
    f32s(&out.join("test_x.npy"), &f.test_x)?;
    u32s(&out.join("train_y.npy"), &f.train_y)?;
    u32s(&out.join("test_y.npy"), test_y)?;
    u32s(&out.join("labeled.npy"), &labeled)?;
    let norm = [prep.norm.mean[0], prep.norm.std[0]];
    let bytes: Vec<u8> = norm.iter().flat_map(|x| x.to_le_bytes()).collect();
    npy(&out.join("norm.npy"), "<f4", &[2], &bytes)?;
    println!("wrote {} (seed {seed}, K = {k})", out.display());
    Ok(())
}
