//! CIFAR-10 and CIFAR-100 binary directories (the "binary version" archives:
//! `data_batch_{1..5}.bin` + `test_batch.bin`, or `train.bin` + `test.bin`).

use crate::dataset::{Dataset, DatasetPair};
use selfsup_core::{Error, Result};
use std::path::Path;

const PIXELS: usize = 3 * 32 * 32;

/// Which CIFAR layout a directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// 10 classes, one label byte per record.
    Cifar10,
    /// 100 fine classes, two label bytes (coarse, fine) per record.
    Cifar100,
}

/// Detects the CIFAR variant of a directory, if any.
pub fn detect(dir: &Path) -> Option<Variant> {
    if dir.join("data_batch_1.bin").is_file() {
        Some(Variant::Cifar10)
    } else if dir.join("train.bin").is_file() {
        Some(Variant::Cifar100)
    } else {
        None
    }
}

/// Parses the records of one CIFAR binary file.
pub fn parse(path: &Path, bytes: &[u8], variant: Variant) -> Result<(Vec<u8>, Vec<u32>)> {
    let label_bytes = match variant {
        Variant::Cifar10 => 1,
        Variant::Cifar100 => 2,
    };
    let rec = label_bytes + PIXELS;
    if bytes.is_empty() || bytes.len() % rec != 0 {
        return Err(Error::format(
            path,
            format!("{} bytes is not a whole number of {rec}-byte CIFAR records (truncated or not a {variant:?} file)", bytes.len()),
        ));
    }
    let n = bytes.len() / rec;
    let mut px = Vec::with_capacity(n * PIXELS);
    let mut labels = Vec::with_capacity(n);
    let max = if variant == Variant::Cifar10 { 10 } else { 100 };
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        let y = u32::from(r[label_bytes - 1]);
        if y >= max {
            return Err(Error::format(
                path,
                format!("record {i} has label {y}; {variant:?} labels are below {max}"),
            ));
        }
        labels.push(y);
        px.extend_from_slice(&r[label_bytes..]);
    }
    Ok((px, labels))
}

fn read_names(dir: &Path, file: &str, n: usize) -> Vec<String> {
    let names: Vec<String> = std::fs::read_to_string(dir.join(file))
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if names.len() == n {
        names
    } else {
        (0..n).map(|c| c.to_string()).collect()
    }
}

fn load_files(dir: &Path, files: &[&str], variant: Variant, names: &[String]) -> Result<Dataset> {
    let mut px = Vec::new();
    let mut labels = Vec::new();
    for f in files {
        let path = dir.join(f);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let (p, l) = parse(&path, &bytes, variant)?;
        px.extend(p);
        labels.extend(l);
    }
    Dataset::new(px, (labels.len(), 3, 32, 32), Some(labels), names.to_vec())
}

/// Loads a CIFAR-10 or CIFAR-100 binary directory.
pub fn load_dir(dir: &Path, name: &str) -> Result<DatasetPair> {
    let variant = detect(dir).ok_or_else(|| {
        Error::format(
            dir,
            "not a CIFAR binary directory (expected data_batch_1.bin or train.bin)",
        )
    })?;
    match variant {
        Variant::Cifar10 => {
            let names = read_names(dir, "batches.meta.txt", 10);
            let train_files: Vec<String> = (1..=5).map(|i| format!("data_batch_{i}.bin")).collect();
            let train_refs: Vec<&str> = train_files.iter().map(|s| s.as_str()).collect();
            let train = load_files(dir, &train_refs, variant, &names)?;
            let test = load_files(dir, &["test_batch.bin"], variant, &names)?;
            DatasetPair::new(name.to_string(), train, test)
        }
        Variant::Cifar100 => {
            let names = read_names(dir, "fine_label_names.txt", 100);
            let train = load_files(dir, &["train.bin"], variant, &names)?;
            let test = load_files(dir, &["test.bin"], variant, &names)?;
            DatasetPair::new(name.to_string(), train, test)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: usize, label_bytes: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            for _ in 0..label_bytes {
                out.push((i % 10) as u8);
            }
            out.extend(std::iter::repeat_n(i as u8, PIXELS));
        }
        out
    }

    #[test]
    fn cifar10_directory() {
        let d = tempfile::tempdir().unwrap();
        for i in 1..=5 {
            std::fs::write(d.path().join(format!("data_batch_{i}.bin")), records(3, 1)).unwrap();
        }
        std::fs::write(d.path().join("test_batch.bin"), records(2, 1)).unwrap();
        let names: String = (0..10).map(|i| format!("class{i}\n")).collect();
        std::fs::write(d.path().join("batches.meta.txt"), names).unwrap();
        let pair = load_dir(d.path(), "c10").unwrap();
        assert_eq!(pair.train.len(), 15);
        assert_eq!(pair.train.image_shape(), (3, 32, 32));
        assert_eq!(pair.test.labels().unwrap(), &[0, 1]);
        assert_eq!(pair.train.class_names()[3], "class3");
        assert_eq!(pair.test.image(1)[PIXELS - 1], 1);
    }

    #[test]
    fn cifar100_uses_fine_labels_and_rejects_truncation() {
        let d = tempfile::tempdir().unwrap();
        let mut tr = records(4, 2);
        tr[1] = 42; // fine label of record 0
        std::fs::write(d.path().join("train.bin"), &tr).unwrap();
        std::fs::write(d.path().join("test.bin"), records(1, 2)).unwrap();
        let pair = load_dir(d.path(), "c100").unwrap();
        assert_eq!(pair.train.labels().unwrap()[0], 42);
        assert_eq!(pair.train.num_classes(), 100);
        std::fs::write(d.path().join("test.bin"), &records(1, 2)[..100]).unwrap();
        let e = load_dir(d.path(), "c100").unwrap_err().to_string();
        assert!(e.contains("test.bin") && e.contains("truncated"), "{e}");
        assert!(load_dir(tempfile::tempdir().unwrap().path(), "x").is_err());
    }
}
