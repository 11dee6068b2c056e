//! Datasets from and to `candle_datasets` (cargo feature `candle-datasets`):
//! a [`candle_datasets::vision::Dataset`] a Candle user already holds
//! becomes a selfsup [`DatasetPair`] and back, and `--dataset candle:NAME`
//! loads one of its Hub datasets (mnist, fashion-mnist, cifar10) through
//! its own loaders.
//!
//! candle-datasets keeps images as f32 tensors in [0, 1], flattened
//! `(n, h*w)` for the MNIST family and `(n, 3, 32, 32)` for CIFAR, labels
//! as u8/u32/i64 vectors; selfsup keeps `u8` pixels `(n, c, h, w)`. Pixels
//! convert as round(255 x), so selfsup → candle → selfsup is exact.

use crate::core::{Error, Result};
use crate::data::registry::FASHION_MNIST_CLASSES;
use crate::data::{Dataset, DatasetPair};
use candle_core::{DType, Tensor};
use candle_datasets::vision::Dataset as CandleDataset;

/// The `candle:` names and the loader behind each.
pub const CANDLE_NAMES: [&str; 3] = ["mnist", "fashion-mnist", "cifar10"];

const CIFAR10_NAMES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Loads `candle:<name>` through candle-datasets' loader, which reads the
/// Hub's parquet files from the Hugging Face cache (downloading them when
/// they are missing and the network is there).
pub fn load_candle(name: &str) -> Result<DatasetPair> {
    let what = format!("candle:{name}");
    let loaded = match name {
        "mnist" => candle_datasets::vision::mnist::load(),
        "fashion-mnist" => candle_datasets::vision::fashion_mnist::load(),
        "cifar10" => candle_datasets::vision::cifar::load(),
        other => {
            return Err(Error::invalid(
                "--dataset",
                format!(
                    "unknown candle-datasets name `candle:{other}` ({})",
                    CANDLE_NAMES.join(", ")
                ),
            ))
        }
    };
    let ds = loaded.map_err(|e| {
        Error::invalid(
            "--dataset",
            format!(
                "{what}: candle-datasets could not load it ({e}); its loader needs the Hub's \
                 parquet files in the Hugging Face cache ($HF_HOME) or a network connection"
            ),
        )
    })?;
    let names: Vec<String> = match name {
        "fashion-mnist" => FASHION_MNIST_CLASSES.map(String::from).to_vec(),
        "cifar10" => CIFAR10_NAMES.map(String::from).to_vec(),
        _ => (0..10).map(|d| d.to_string()).collect(),
    };
    from_candle(&ds, &what, names)
}

/// Converts a candle-datasets vision dataset into selfsup's. Image tensors
/// may be `(n, c, h, w)`, `(n, h, w)` or flat `(n, h*w)` / `(n, 3*h*w)`
/// with square images; values must lie in [0, 1]. `class_names` names the
/// classes (`ds.labels` of them; shorter lists are completed with numbers).
pub fn from_candle(
    ds: &CandleDataset,
    name: &str,
    class_names: Vec<String>,
) -> Result<DatasetPair> {
    let mut names = class_names;
    names.truncate(ds.labels);
    names.extend((names.len()..ds.labels).map(|k| k.to_string()));
    let part = |images: &Tensor, labels: &Tensor, split: &str| -> Result<Dataset> {
        let what = format!("{name} ({split})");
        let shape = image_shape(images, &what)?;
        let pixels = to_u8(images, &what)?;
        let labels = to_labels(labels, ds.labels, &what)?;
        if labels.len() != shape.0 {
            return Err(Error::invalid(
                what,
                format!("{} images but {} labels", shape.0, labels.len()),
            ));
        }
        Dataset::new(pixels, shape, Some(labels), names.clone())
    };
    let train = part(&ds.train_images, &ds.train_labels, "train")?;
    let test = part(&ds.test_images, &ds.test_labels, "test")?;
    DatasetPair::new(name.to_string(), train, test)
}

/// Converts selfsup's dataset pair into candle-datasets' form: f32 images
/// `(n, c, h, w)` in [0, 1] and u32 labels, on the CPU.
pub fn to_candle(pair: &DatasetPair) -> Result<CandleDataset> {
    let part = |d: &Dataset, split: &str| -> Result<(Tensor, Tensor)> {
        let (c, h, w) = d.image_shape();
        let labels = d.labels().ok_or_else(|| {
            Error::invalid(
                format!("{} ({split})", pair.name),
                "candle-datasets needs labels",
            )
        })?;
        let images = Tensor::from_slice(d.pixels(), (d.len(), c, h, w), &candle_core::Device::Cpu)?
            .to_dtype(DType::F32)?
            .affine(1.0 / 255.0, 0.0)?;
        let labels = Tensor::from_slice(labels, d.len(), &candle_core::Device::Cpu)?;
        Ok((images, labels))
    };
    let (train_images, train_labels) = part(&pair.train, "train")?;
    let (test_images, test_labels) = part(&pair.test, "test")?;
    Ok(CandleDataset {
        train_images,
        train_labels,
        test_images,
        test_labels,
        labels: pair.train.num_classes(),
    })
}

/// (n, c, h, w) of an image tensor in any of the accepted layouts.
fn image_shape(t: &Tensor, what: &str) -> Result<(usize, usize, usize, usize)> {
    let square = |n: usize, len: usize, c: usize| -> Option<(usize, usize, usize, usize)> {
        let side = ((len / c) as f64).sqrt().round() as usize;
        (side * side * c == len && side > 0).then_some((n, c, side, side))
    };
    let shape = match *t.dims() {
        [n, c, h, w] => Some((n, c, h, w)),
        [n, h, w] => Some((n, 1, h, w)),
        [n, len] => square(n, len, 1).or_else(|| square(n, len, 3)),
        _ => None,
    };
    shape.ok_or_else(|| {
        Error::invalid(
            what.to_string(),
            format!(
                "images of shape {:?}: expected (n, c, h, w), (n, h, w) or flat square (n, h*w) / (n, 3*h*w)",
                t.dims()
            ),
        )
    })
}

/// Pixels in [0, 1] as round(255 x); anything outside (or NaN) is refused.
fn to_u8(t: &Tensor, what: &str) -> Result<Vec<u8>> {
    let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    if let Some((i, x)) = v
        .iter()
        .enumerate()
        .find(|(_, x)| !(0.0..=1.0).contains(*x))
    {
        return Err(Error::invalid(
            what.to_string(),
            format!("pixel value {x} at flat index {i}: candle-datasets images must lie in [0, 1]"),
        ));
    }
    Ok(v.iter().map(|&x| (x * 255.0).round() as u8).collect())
}

/// Integer labels below `classes`.
fn to_labels(t: &Tensor, classes: usize, what: &str) -> Result<Vec<u32>> {
    let v: Vec<i64> = t.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?;
    v.iter()
        .map(|&l| {
            u32::try_from(l)
                .ok()
                .filter(|&l| (l as usize) < classes)
                .ok_or_else(|| {
                    Error::invalid(what.to_string(), format!("label {l} outside 0..{classes}"))
                })
        })
        .collect()
}
