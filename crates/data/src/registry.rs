//! Datasets by name or path.

use crate::dataset::DatasetPair;
use crate::{cache, cifar, folder, idx};
use selfsup_core::{Error, Result};
use std::path::{Path, PathBuf};

/// Class names of Fashion-MNIST.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Where Debian's `dataset-fashion-mnist` package installs the full set.
pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// Built-in names accepted by [`load`] besides paths (the fetched ones are
/// [`cache::FETCHABLE`]).
pub const NAMES: [&str; 2] = ["fashion-mnist", "fashion-mnist-full"];

/// The repository's `data/` directory: `$SELFSUP_DATA_DIR` if set, else the
/// `data/` of the source tree this crate was built from.
pub fn data_dir() -> PathBuf {
    match std::env::var_os("SELFSUP_DATA_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data"),
    }
}

/// Resolves a dataset name to its directory.
pub fn resolve(name_or_path: &str) -> Result<PathBuf> {
    match name_or_path {
        "fashion-mnist" => Ok(data_dir().join("fashion-mnist")),
        "fashion-mnist-full" => {
            let p = std::env::var_os("SELFSUP_FASHION_MNIST_FULL")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEBIAN_FASHION_MNIST));
            if !p.is_dir() {
                return Err(Error::invalid(
                    "--dataset",
                    format!(
                        "fashion-mnist-full reads {}, which does not exist; install it with `apt-get install dataset-fashion-mnist`, fetch it with `cargo xtask fetch --dataset fashion-mnist`, or pass --dataset <dir> (or set SELFSUP_FASHION_MNIST_FULL)",
                        p.display()
                    ),
                ));
            }
            Ok(p)
        }
        other => Ok(PathBuf::from(other)),
    }
}

/// Class names of the shipped LFW subset: label 0 is a non-face crop,
/// label 1 a face.
pub const LFW_CLASSES: [&str; 2] = ["non-face", "face"];

/// The 200 shipped 25x25 grayscale crops from Labeled Faces in the Wild
/// (`data/lfw-subset/`): 100 faces (label 1) then 100 non-faces (label 0)
/// cut from the same photos' backgrounds.
pub fn lfw_faces() -> Result<crate::Dataset> {
    let dir = data_dir().join("lfw-subset");
    let (n, h, w, px, y) = idx::load_split(
        &dir.join("images-idx3-ubyte.gz"),
        &dir.join("labels-idx1-ubyte.gz"),
    )?;
    crate::Dataset::new(
        px,
        (n, 1, h, w),
        Some(y),
        LFW_CLASSES.iter().map(|s| s.to_string()).collect(),
    )
}

/// How image-folder datasets are decoded (other formats ignore it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FolderOptions {
    /// Images are centre-cropped and resized to `size` x `size`.
    pub size: usize,
    /// 1 (grayscale) or 3 (RGB).
    pub channels: usize,
}

impl Default for FolderOptions {
    fn default() -> Self {
        Self {
            size: 32,
            channels: 3,
        }
    }
}

static FOLDER_DEFAULTS: std::sync::RwLock<FolderOptions> = std::sync::RwLock::new(FolderOptions {
    size: 32,
    channels: 3,
});

/// Sets the image-folder options [`load`] uses (the command line's
/// `--image-size` / `--channels`), process-wide.
pub fn set_folder_defaults(o: FolderOptions) {
    *FOLDER_DEFAULTS.write().unwrap_or_else(|e| e.into_inner()) = o;
}

/// Loads a dataset by name or directory with the process-wide image-folder
/// options ([`set_folder_defaults`]); see [`load_with`].
pub fn load(name_or_path: &str) -> Result<DatasetPair> {
    let o = *FOLDER_DEFAULTS.read().unwrap_or_else(|e| e.into_inner());
    load_with(name_or_path, o)
}

/// Loads a dataset by name — `fashion-mnist` (embedded subset),
/// `fashion-mnist-full`, or a dataset fetched into the local cache
/// ([`cache::FETCHABLE`], optionally `celeba:<Attribute>`) — or by directory:
/// IDX or CIFAR binaries, or an image folder with one sub-folder per class
/// (see [`folder::load_split_folders`]).
pub fn load_with(name_or_path: &str, folders: FolderOptions) -> Result<DatasetPair> {
    let base = name_or_path.split(':').next().unwrap_or(name_or_path);
    if cache::FETCHABLE.contains(&base) && name_or_path != "fashion-mnist" {
        return cache::load_pair(&cache::root(), name_or_path);
    }
    if name_or_path == "fashion-mnist-full"
        && std::env::var_os("SELFSUP_FASHION_MNIST_FULL").is_none()
        && !Path::new(DEBIAN_FASHION_MNIST).is_dir()
        && cache::is_cached(&cache::root(), "fashion-mnist")
    {
        return cache::load_pair(&cache::root(), "fashion-mnist");
    }
    let dir = resolve(name_or_path)?;
    if !dir.exists() {
        return Err(Error::invalid(
            "--dataset",
            format!(
                "{} does not exist; give a dataset directory or one of: {}, or a fetched one ({})",
                dir.display(),
                NAMES.join(", "),
                cache::FETCHABLE.join(", ")
            ),
        ));
    }
    if !dir.is_dir() {
        return Err(Error::format(
            &dir,
            "is a file; --dataset expects a directory of IDX or CIFAR binary files",
        ));
    }
    let is_fashion = name_or_path.starts_with("fashion-mnist");
    let names: Vec<String> = if is_fashion {
        FASHION_MNIST_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        Vec::new()
    };
    let label = if is_fashion || NAMES.contains(&name_or_path) {
        name_or_path.to_string()
    } else {
        dir.display().to_string()
    };
    if idx::is_idx_dir(&dir) {
        idx::load_dir(&dir, &label, names)
    } else if cifar::detect(&dir).is_some() {
        cifar::load_dir(&dir, &label)
    } else if folder::has_class_folders(&dir) {
        folder::load_split_folders(&dir, &label, folders.size, folders.channels)
    } else {
        Err(Error::format(
            &dir,
            "no dataset found: expected MNIST-style IDX files (train-images-idx3-ubyte[.gz], ...), CIFAR binaries (data_batch_1.bin / train.bin), or an image folder with one sub-folder of PNG/JPEG files per class",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_fashion_mnist_loads() {
        let pair = load("fashion-mnist").unwrap();
        assert_eq!(pair.train.len(), 10_000);
        assert_eq!(pair.test.len(), 10_000);
        assert_eq!(pair.train.image_shape(), (1, 28, 28));
        assert_eq!(pair.train.class_names()[9], "Ankle boot");
    }

    #[test]
    fn full_fashion_mnist_resolves_its_directory() {
        // One test owns the variable, so no other test races on it.
        std::env::set_var(
            "SELFSUP_FASHION_MNIST_FULL",
            data_dir().join("fashion-mnist"),
        );
        let pair = load("fashion-mnist-full").unwrap();
        assert_eq!(pair.name, "fashion-mnist-full");
        assert_eq!(pair.train.class_names()[0], "T-shirt/top");
        std::env::set_var("SELFSUP_FASHION_MNIST_FULL", "/no/such/fashion");
        let e = load("fashion-mnist-full").unwrap_err().to_string();
        assert!(
            e.contains("/no/such/fashion") && e.contains("apt-get install dataset-fashion-mnist"),
            "{e}"
        );
        std::env::remove_var("SELFSUP_FASHION_MNIST_FULL");
    }

    #[test]
    fn shipped_faces_load() {
        let ds = lfw_faces().unwrap();
        assert_eq!((ds.len(), ds.image_shape()), (200, (1, 25, 25)));
        let y = ds.labels().unwrap();
        assert!(y[..100].iter().all(|&v| v == 1) && y[100..].iter().all(|&v| v == 0));
    }

    #[test]
    fn bad_paths_are_named() {
        let e = load("/no/such/dir").unwrap_err().to_string();
        assert!(
            e.contains("/no/such/dir") && e.contains("does not exist"),
            "{e}"
        );
        let d = tempfile::tempdir().unwrap();
        let e = load(d.path().to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("no dataset found"), "{e}");
    }
}
