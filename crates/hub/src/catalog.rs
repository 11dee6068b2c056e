//! The datasets `cargo xtask fetch` knows: which public Hub repository
//! holds each one, which parquet files are which split, which columns hold
//! the image and the label, and at what size images are cached.

use selfsup_core::{Error, Result};

/// One fetchable dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// The `--dataset` name.
    pub name: &'static str,
    /// Hub dataset repository, `owner/name`.
    pub repo: &'static str,
    /// Directory inside the repository holding this configuration's parquet
    /// files ("" = anywhere).
    pub config_dir: &'static str,
    /// File-name prefix of the training split's parquet shards.
    pub train_split: &'static str,
    /// Prefixes tried, in order, for the split used as our test split.
    pub test_splits: &'static [&'static str],
    /// Columns tried, in order, for the image (`struct<bytes, path>`).
    pub image_columns: &'static [&'static str],
    /// The label column.
    pub label_column: &'static str,
    /// 1 (grayscale) or 3 (RGB).
    pub channels: usize,
    /// Cached images are centre-cropped and resized to this square size.
    pub size: usize,
    /// Boolean columns kept as 0/1 attributes (CelebA); the label is then
    /// `label_column` if present, else 0 for every image.
    pub boolean_attributes: bool,
    /// Approximate download, for the README and the progress line.
    pub download: &'static str,
}

/// Every fetchable dataset (names match `selfsup_data::cache::FETCHABLE`).
pub const SPECS: [Spec; 7] = [
    Spec {
        name: "svhn",
        repo: "ufldl-stanford/svhn",
        config_dir: "cropped_digits",
        train_split: "train",
        test_splits: &["test"],
        image_columns: &["image"],
        label_column: "label",
        channels: 3,
        size: 32,
        boolean_attributes: false,
        download: "about 185 MB (73,257 train + 26,032 test digits; the 531,131 `extra` digits, 1 GB, are not fetched)",
    },
    Spec {
        name: "cifar10",
        repo: "uoft-cs/cifar10",
        config_dir: "plain_text",
        train_split: "train",
        test_splits: &["test"],
        image_columns: &["img", "image"],
        label_column: "label",
        channels: 3,
        size: 32,
        boolean_attributes: false,
        download: "about 140 MB",
    },
    Spec {
        name: "cifar100",
        repo: "uoft-cs/cifar100",
        config_dir: "cifar100",
        train_split: "train",
        test_splits: &["test"],
        image_columns: &["img", "image"],
        label_column: "fine_label",
        channels: 3,
        size: 32,
        boolean_attributes: false,
        download: "about 140 MB",
    },
    Spec {
        name: "mnist",
        repo: "ylecun/mnist",
        config_dir: "mnist",
        train_split: "train",
        test_splits: &["test"],
        image_columns: &["image"],
        label_column: "label",
        channels: 1,
        size: 28,
        boolean_attributes: false,
        download: "about 18 MB",
    },
    Spec {
        name: "fashion-mnist",
        repo: "zalando-datasets/fashion_mnist",
        config_dir: "fashion_mnist",
        train_split: "train",
        test_splits: &["test"],
        image_columns: &["image"],
        label_column: "label",
        channels: 1,
        size: 28,
        boolean_attributes: false,
        download: "about 35 MB",
    },
    Spec {
        name: "tiny-imagenet",
        repo: "zh-plus/tiny-imagenet",
        config_dir: "",
        train_split: "train",
        test_splits: &["valid", "validation", "test"],
        image_columns: &["image"],
        label_column: "label",
        channels: 3,
        size: 64,
        boolean_attributes: false,
        download: "about 160 MB (100,000 train + 10,000 validation images, 200 classes)",
    },
    Spec {
        name: "celeba",
        repo: "flwrlabs/celeba",
        config_dir: "",
        train_split: "train",
        test_splits: &["test", "valid"],
        image_columns: &["image"],
        label_column: "celeb_id",
        channels: 3,
        size: 32,
        boolean_attributes: true,
        download: "about 10.6 GB (19 train shards of about 0.5 GB and 3 test shards: 162,770 + 19,962 aligned 178x218 face photos with identity and 40 attributes; the 19,867 `valid` photos are not fetched)",
    },
];

/// The spec of `name`, or an error listing the known names.
pub fn spec(name: &str) -> Result<&'static Spec> {
    SPECS.iter().find(|s| s.name == name).ok_or_else(|| {
        Error::invalid(
            "--dataset",
            format!(
                "`{name}` cannot be fetched; known datasets: {}",
                SPECS.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
            ),
        )
    })
}

/// True when the repository file `path` is a parquet shard of `split` in
/// this spec's configuration (`<config_dir>/<split>-00000-of-00001.parquet`,
/// `data/<split>-…`, or `<split>/…parquet`).
pub fn is_split_file(spec: &Spec, path: &str, split: &str) -> bool {
    if !path.ends_with(".parquet") {
        return false;
    }
    if !spec.config_dir.is_empty() && !path.starts_with(&format!("{}/", spec.config_dir)) {
        return false;
    }
    let file = path.rsplit('/').next().unwrap_or(path);
    let parent = path
        .rsplit('/')
        .nth(1)
        .filter(|_| path.contains('/'))
        .unwrap_or("");
    let prefixed = file
        .strip_prefix(split)
        .is_some_and(|rest| rest.starts_with('-') || rest.starts_with('.'));
    prefixed || parent == split
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_data_crate_and_split_files_are_recognised() {
        let ours: Vec<&str> = SPECS.iter().map(|s| s.name).collect();
        assert_eq!(ours, selfsup_data::cache::FETCHABLE);
        let svhn = spec("svhn").unwrap();
        assert!(is_split_file(
            svhn,
            "cropped_digits/train-00000-of-00002.parquet",
            "train"
        ));
        assert!(!is_split_file(
            svhn,
            "full_numbers/train-00000-of-00002.parquet",
            "train"
        ));
        assert!(!is_split_file(
            svhn,
            "cropped_digits/extra-00000-of-00002.parquet",
            "train"
        ));
        let tiny = spec("tiny-imagenet").unwrap();
        assert!(is_split_file(
            tiny,
            "data/valid-00000-of-00001-70d52db3c749a935.parquet",
            "valid"
        ));
        assert!(is_split_file(tiny, "valid/0000.parquet", "valid"));
        assert!(!is_split_file(tiny, "data/validation.json", "valid"));
        let e = spec("imagenet").unwrap_err().to_string();
        assert!(e.contains("svhn") && e.contains("celeba"), "{e}");
    }
}
