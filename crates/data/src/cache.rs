//! The local cache of decoded datasets (what `cargo xtask fetch` fills).
//!
//! Each dataset is one directory `<root>/datasets/<name>/` holding
//! `train.safetensors` and `test.safetensors` (tensors `images`, `u8`
//! (N, C, H, W), and `labels`, `u32` (N), plus optional extra `u8` label
//! tables such as CelebA's `attributes` (N, A)) and `dataset.json` (class
//! names, where the data came from, split sizes). The directory is assembled
//! beside its final place and renamed in only when complete, so a reader
//! sees either a whole decoded dataset or none: an interrupted or failed
//! fetch never leaves a half-decoded one behind.
//!
//! The root is `$SELFSUP_CACHE`, else `$XDG_CACHE_HOME/selfsup`, else
//! `~/.cache/selfsup`.

use crate::dataset::{Dataset, DatasetPair};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use selfsup_core::fsutil::{read_json, write_dir_atomic, write_json_atomic};
use selfsup_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Version of the on-disk layout; bumped when it changes.
pub const FORMAT_VERSION: u32 = 1;

/// The names `cargo xtask fetch --dataset` accepts; once fetched, each is a
/// `--dataset` name. (`fashion-mnist` on its own names the embedded subset;
/// the fetched full set is `fashion-mnist-full`.)
pub const FETCHABLE: [&str; 7] = [
    "svhn",
    "cifar10",
    "cifar100",
    "mnist",
    "fashion-mnist",
    "tiny-imagenet",
    "celeba",
];

/// The `--dataset` name under which fetched dataset `fetched` is used:
/// itself, except `fashion-mnist` (that name is the embedded subset), whose
/// fetched full set is `fashion-mnist-full`.
pub fn dataset_name(fetched: &str) -> &str {
    if fetched == "fashion-mnist" {
        "fashion-mnist-full"
    } else {
        fetched
    }
}

/// The cache root (see the module docs).
pub fn root() -> PathBuf {
    if let Some(d) = std::env::var_os("SELFSUP_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("selfsup");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".cache").join("selfsup")
}

/// The directory of cached dataset `name` under `root`.
pub fn dataset_dir(root: &Path, name: &str) -> PathBuf {
    root.join("datasets").join(name)
}

/// Where one split came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceFile {
    /// Path inside the Hub repository.
    pub path: String,
    /// Bytes downloaded.
    pub bytes: u64,
}

/// `dataset.json`: what a cached dataset is and where it came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Layout version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// The `--dataset` name.
    pub name: String,
    /// Hub dataset repository (`owner/name`).
    pub repo: String,
    /// Commit of the repository the files were read at.
    pub revision: String,
    /// Parquet files per split, in the order their rows were decoded.
    pub train_files: Vec<SourceFile>,
    /// Parquet files of the test split.
    pub test_files: Vec<SourceFile>,
    /// Which Hub split serves as our test split (`test`, `valid`, ...).
    pub test_split: String,
    /// Column the labels came from.
    pub label_column: String,
    /// Class names, index = label.
    pub classes: Vec<String>,
    /// (C, H, W) of every image.
    pub image_shape: [usize; 3],
    /// Images in the train split.
    pub train_images: usize,
    /// Images in the test split.
    pub test_images: usize,
    /// Names of the columns of the extra `attributes` table, if any.
    #[serde(default)]
    pub attributes: Vec<String>,
}

/// One decoded split: images, labels and optional per-image attributes.
#[derive(Debug, Clone)]
pub struct Split {
    /// The images and labels.
    pub dataset: Dataset,
    /// (N x attributes.len()) 0/1 table, row-major; empty when the
    /// dataset has no attributes.
    pub attributes: Vec<u8>,
}

fn write_split(path: &Path, split: &Split, n_attr: usize) -> Result<()> {
    let ds = &split.dataset;
    let (c, h, w) = ds.image_shape();
    let labels: Vec<u8> = ds
        .labels()
        .ok_or_else(|| Error::invalid("cache", "a cached split needs labels"))?
        .iter()
        .flat_map(|y| y.to_le_bytes())
        .collect();
    let err = |e: safetensors::SafeTensorError| Error::format(path, e.to_string());
    let mut views = vec![
        (
            "images".to_string(),
            TensorView::new(Dtype::U8, vec![ds.len(), c, h, w], ds.pixels()).map_err(err)?,
        ),
        (
            "labels".to_string(),
            TensorView::new(Dtype::U32, vec![ds.len()], &labels).map_err(err)?,
        ),
    ];
    if n_attr > 0 {
        views.push((
            "attributes".to_string(),
            TensorView::new(Dtype::U8, vec![ds.len(), n_attr], &split.attributes).map_err(err)?,
        ));
    }
    let bytes = safetensors::serialize(views, None).map_err(err)?;
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// Writes a decoded dataset into the cache atomically (see the module docs)
/// and returns its directory.
pub fn store(root: &Path, manifest: &Manifest, train: &Split, test: &Split) -> Result<PathBuf> {
    let dir = dataset_dir(root, &manifest.name);
    let n_attr = manifest.attributes.len();
    for (s, what) in [(train, "train"), (test, "test")] {
        if n_attr > 0 && s.attributes.len() != s.dataset.len() * n_attr {
            return Err(Error::invalid(
                "cache",
                format!("{what} split: attribute table does not match its images"),
            ));
        }
    }
    write_dir_atomic(&dir, |tmp| {
        write_split(&tmp.join("train.safetensors"), train, n_attr)?;
        write_split(&tmp.join("test.safetensors"), test, n_attr)?;
        write_json_atomic(&tmp.join("dataset.json"), manifest)
    })?;
    Ok(dir)
}

/// True when `name` is fully decoded in the cache under `root`.
pub fn is_cached(root: &Path, name: &str) -> bool {
    dataset_dir(root, name).join("dataset.json").is_file()
}

fn read_split(path: &Path, manifest: &Manifest) -> Result<Split> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_split(path, &bytes, manifest)
}

/// A cached split from the bytes of its safetensors file (`path` names it
/// in errors), checked against `manifest`'s image shape and attributes.
pub fn parse_split(path: &Path, bytes: &[u8], manifest: &Manifest) -> Result<Split> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::format(path, format!("not a readable safetensors file: {e}")))?;
    let get = |name: &str, dtype: Dtype| {
        let t = st
            .tensor(name)
            .map_err(|_| Error::format(path, format!("no `{name}` tensor")))?;
        if t.dtype() != dtype {
            return Err(Error::format(
                path,
                format!("`{name}` is {:?}, expected {dtype:?}", t.dtype()),
            ));
        }
        Ok((t.shape().to_vec(), t.data().to_vec()))
    };
    let (shape, px) = get("images", Dtype::U8)?;
    let [c, h, w] = manifest.image_shape;
    if shape.len() != 4 || shape[1..] != [c, h, w] {
        return Err(Error::format(
            path,
            format!("images have shape {shape:?}; dataset.json says (N, {c}, {h}, {w})"),
        ));
    }
    let n = shape[0];
    let (lshape, lbytes) = get("labels", Dtype::U32)?;
    if lshape != [n] {
        return Err(Error::format(
            path,
            format!("{n} images but labels of shape {lshape:?}"),
        ));
    }
    let labels = lbytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let attributes = if manifest.attributes.is_empty() {
        Vec::new()
    } else {
        let (ashape, a) = get("attributes", Dtype::U8)?;
        if ashape != [n, manifest.attributes.len()] {
            return Err(Error::format(
                path,
                format!("attributes have shape {ashape:?}"),
            ));
        }
        a
    };
    let dataset = Dataset::new(px, (n, c, h, w), Some(labels), manifest.classes.clone())
        .map_err(|e| Error::format(path, e.to_string()))?;
    Ok(Split {
        dataset,
        attributes,
    })
}

/// Reads a cached dataset's `dataset.json` only (no pixels), checking its
/// layout version.
pub fn read_manifest(root: &Path, name: &str) -> Result<Manifest> {
    let path = dataset_dir(root, name).join("dataset.json");
    let manifest: Manifest = read_json(&path)?;
    check_manifest(&path, manifest, name)
}

/// A `dataset.json` from its bytes (`path` names it in errors), checked
/// like [`read_manifest`] checks it.
pub fn parse_manifest(path: &Path, bytes: &[u8]) -> Result<Manifest> {
    let manifest: Manifest = serde_json::from_slice(bytes)
        .map_err(|e| Error::format(path, format!("not a dataset manifest: {e}")))?;
    let name = manifest.name.clone();
    check_manifest(path, manifest, &name)
}

/// Refuses a manifest of another layout version.
fn check_manifest(path: &Path, manifest: Manifest, name: &str) -> Result<Manifest> {
    if manifest.format_version != FORMAT_VERSION {
        return Err(Error::format(
            path,
            format!(
                "cache format {} but this build reads {FORMAT_VERSION}; run `cargo xtask fetch --dataset {name} --force`",
                manifest.format_version
            ),
        ));
    }
    Ok(manifest)
}

/// Reads a cached dataset: its manifest and both splits.
pub fn load(root: &Path, name: &str) -> Result<(Manifest, Split, Split)> {
    let dir = dataset_dir(root, name);
    let manifest = read_manifest(root, name)?;
    let train = read_split(&dir.join("train.safetensors"), &manifest)?;
    let test = read_split(&dir.join("test.safetensors"), &manifest)?;
    Ok((manifest, train, test))
}

/// Relabels a split by one of its 0/1 attributes (class 0 = without,
/// class 1 = with), for attribute-defined one-class problems such as
/// `celeba:Eyeglasses`.
pub fn by_attribute(manifest: &Manifest, split: Split, attribute: &str) -> Result<Dataset> {
    let k = manifest
        .attributes
        .iter()
        .position(|a| a.eq_ignore_ascii_case(attribute))
        .ok_or_else(|| {
            Error::invalid(
                "--dataset",
                format!(
                    "{} has no attribute `{attribute}`; it has: {}",
                    manifest.name,
                    manifest.attributes.join(", ")
                ),
            )
        })?;
    let a = manifest.attributes.len();
    let labels = (0..split.dataset.len())
        .map(|i| u32::from(split.attributes[i * a + k] != 0))
        .collect();
    let name = &manifest.attributes[k];
    split
        .dataset
        .relabel(labels, vec![format!("not {name}"), name.clone()])
}

/// Loads a cached dataset as a train/test pair. `spec` is a fetchable name,
/// optionally with `:<attribute>` to label by one attribute (CelebA).
/// Errors say what to fetch when the dataset is not cached.
pub fn load_pair(root: &Path, spec: &str) -> Result<DatasetPair> {
    let (name, attribute) = match spec.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (spec, None),
    };
    if !is_cached(root, name) {
        return Err(Error::invalid(
            "--dataset",
            format!(
                "{name} is not in the local cache ({}); download and decode it once with `cargo xtask fetch --dataset {name}` (needs access to huggingface.co or $HF_ENDPOINT), after which it works offline",
                dataset_dir(root, name).display()
            ),
        ));
    }
    let (manifest, train, test) = load(root, name)?;
    let label = match attribute {
        None => dataset_name(name).to_string(),
        Some(a) => format!("{}:{a}", dataset_name(name)),
    };
    match attribute {
        None => DatasetPair::new(label, train.dataset, test.dataset),
        Some(a) => DatasetPair::new(
            label,
            by_attribute(&manifest, train, a)?,
            by_attribute(&manifest, test, a)?,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(n: usize, seed: u8, attrs: usize) -> Split {
        let px: Vec<u8> = (0..n * 3 * 4 * 4)
            .map(|i| (i as u8).wrapping_mul(seed))
            .collect();
        let labels = (0..n as u32).map(|i| i % 2).collect();
        Split {
            dataset: Dataset::new(px, (n, 3, 4, 4), Some(labels), vec!["a".into(), "b".into()])
                .unwrap(),
            attributes: (0..n * attrs).map(|i| (i % 3 == 0) as u8).collect(),
        }
    }

    fn manifest(attrs: &[&str]) -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            name: "toy".into(),
            repo: "someone/toy".into(),
            revision: "0".repeat(40),
            train_files: vec![SourceFile {
                path: "data/train-00000-of-00001.parquet".into(),
                bytes: 10,
            }],
            test_files: vec![],
            test_split: "test".into(),
            label_column: "label".into(),
            classes: vec!["a".into(), "b".into()],
            image_shape: [3, 4, 4],
            train_images: 5,
            test_images: 3,
            attributes: attrs.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn store_then_load_round_trips_and_relabels_by_attribute() {
        let d = tempfile::tempdir().unwrap();
        let m = manifest(&["Smiling", "Eyeglasses"]);
        let (tr, te) = (split(5, 3, 2), split(3, 7, 2));
        store(d.path(), &m, &tr, &te).unwrap();
        assert!(is_cached(d.path(), "toy"));
        let (m2, tr2, te2) = load(d.path(), "toy").unwrap();
        assert_eq!(m2, m);
        assert_eq!(tr2.dataset, tr.dataset);
        assert_eq!(te2.dataset, te.dataset);
        assert_eq!(tr2.attributes, tr.attributes);
        let pair = load_pair(d.path(), "toy:eyeglasses").unwrap();
        // Row i, attribute 1 is element 2i+1 of the table: 1 when (2i+1) % 3 == 0.
        let want: Vec<u32> = (0..5).map(|i| u32::from((2 * i + 1) % 3 == 0)).collect();
        assert_eq!(pair.train.labels().unwrap(), &want[..]);
        assert_eq!(pair.train.class_names()[1], "Eyeglasses");
        let e = load_pair(d.path(), "toy:Bald").unwrap_err().to_string();
        assert!(
            e.contains("no attribute `Bald`") && e.contains("Smiling"),
            "{e}"
        );
    }

    #[test]
    fn missing_and_damaged_caches_say_what_to_do() {
        let d = tempfile::tempdir().unwrap();
        let e = load_pair(d.path(), "svhn").unwrap_err().to_string();
        assert!(
            e.contains("cargo xtask fetch --dataset svhn") && e.contains("not in the local cache"),
            "{e}"
        );
        store(d.path(), &manifest(&[]), &split(5, 3, 0), &split(3, 7, 0)).unwrap();
        let f = dataset_dir(d.path(), "toy").join("test.safetensors");
        let bytes = std::fs::read(&f).unwrap();
        std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
        let e = load_pair(d.path(), "toy").unwrap_err().to_string();
        assert!(e.contains("test.safetensors"), "{e}");
    }

    #[test]
    fn a_failed_store_leaves_the_previous_copy() {
        let d = tempfile::tempdir().unwrap();
        let m = manifest(&[]);
        store(d.path(), &m, &split(5, 3, 0), &split(3, 7, 0)).unwrap();
        // Attributes declared but missing: refused before anything is replaced.
        let bad = manifest(&["Smiling"]);
        assert!(store(d.path(), &bad, &split(5, 1, 0), &split(3, 1, 0)).is_err());
        let (m2, tr, _) = load(d.path(), "toy").unwrap();
        assert_eq!(m2, m);
        assert_eq!(tr.dataset, split(5, 3, 0).dataset);
        let leftovers: Vec<_> = std::fs::read_dir(d.path().join("datasets"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("toy")]);
    }
}
