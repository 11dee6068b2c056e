//! MNIST-style IDX files (`*-idx3-ubyte` images, `*-idx1-ubyte` labels),
//! raw or gzip-compressed, and directories holding a train and a test pair.

use crate::dataset::{Dataset, DatasetPair};
use selfsup_core::{Error, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

/// Reads a whole file, gunzipping it if it starts with the gzip magic.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::format(path, format!("corrupt or truncated gzip data: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Parses an IDX image file: returns (n, height, width, pixels).
pub fn parse_images(path: &Path, bytes: &[u8]) -> Result<(usize, usize, usize, Vec<u8>)> {
    if bytes.len() < 16 {
        return Err(Error::format(
            path,
            format!(
                "IDX image file too short ({} bytes, header needs 16)",
                bytes.len()
            ),
        ));
    }
    let magic = be_u32(bytes, 0);
    if magic != IMAGES_MAGIC {
        return Err(Error::format(
            path,
            format!("wrong IDX magic 0x{magic:08x}; an image file (unsigned bytes, 3 dims) starts with 0x{IMAGES_MAGIC:08x}"),
        ));
    }
    let (n, h, w) = (
        be_u32(bytes, 4) as usize,
        be_u32(bytes, 8) as usize,
        be_u32(bytes, 12) as usize,
    );
    if h == 0 || w == 0 {
        return Err(Error::format(path, format!("image size {h}x{w} is empty")));
    }
    let have = bytes.len() - 16;
    let want = n.checked_mul(h).and_then(|p| p.checked_mul(w));
    if want != Some(have) {
        let want = want.map_or("more than fit in memory".to_string(), |w| {
            format!("{w} bytes")
        });
        return Err(Error::format(
            path,
            format!("truncated or oversized: header says {n} images of {h}x{w} ({want}) but {have} bytes follow"),
        ));
    }
    Ok((n, h, w, bytes[16..].to_vec()))
}

/// Parses an IDX label file.
pub fn parse_labels(path: &Path, bytes: &[u8]) -> Result<Vec<u32>> {
    if bytes.len() < 8 {
        return Err(Error::format(
            path,
            format!(
                "IDX label file too short ({} bytes, header needs 8)",
                bytes.len()
            ),
        ));
    }
    let magic = be_u32(bytes, 0);
    if magic != LABELS_MAGIC {
        return Err(Error::format(
            path,
            format!("wrong IDX magic 0x{magic:08x}; a label file (unsigned bytes, 1 dim) starts with 0x{LABELS_MAGIC:08x}"),
        ));
    }
    let n = be_u32(bytes, 4) as usize;
    let have = bytes.len() - 8;
    if have != n {
        return Err(Error::format(
            path,
            format!("truncated or oversized: header says {n} labels but {have} bytes follow"),
        ));
    }
    Ok(bytes[8..].iter().map(|&b| u32::from(b)).collect())
}

/// Finds the file in `dir` whose name starts with one of `prefixes` and
/// contains `kind` (`idx3` or `idx1`).
fn find(dir: &Path, prefixes: &[&str], kind: &str) -> Result<Option<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_lowercase())
                .unwrap_or_default();
            prefixes.iter().any(|pre| name.starts_with(pre)) && name.contains(kind)
        })
        .collect();
    found.sort();
    // Prefer the uncompressed file when both exist.
    found.sort_by_key(|p| p.extension().is_some_and(|e| e == "gz"));
    Ok(found.into_iter().next())
}

/// True if `dir` looks like an IDX dataset directory.
pub fn is_idx_dir(dir: &Path) -> bool {
    matches!(find(dir, &["train"], "idx3"), Ok(Some(_)))
}

/// Raw content of one split: (n, height, width, pixels, labels).
type RawSplit = (usize, usize, usize, Vec<u8>, Vec<u32>);

/// Loads one split (images + labels files) and checks the counts agree.
pub fn load_split(images: &Path, labels: &Path) -> Result<RawSplit> {
    let (n, h, w, px) = parse_images(images, &read_maybe_gz(images)?)?;
    let y = parse_labels(labels, &read_maybe_gz(labels)?)?;
    if y.len() != n {
        return Err(Error::format(
            labels,
            format!("{} labels but {} has {n} images", y.len(), images.display()),
        ));
    }
    Ok((n, h, w, px, y))
}

/// Loads an IDX directory with `train-images*idx3*`, `train-labels*idx1*`,
/// `t10k-images*idx3*` (or `test-images*`) and the matching labels.
/// `class_names` is used when it covers every label, else classes are
/// named by number.
pub fn load_dir(dir: &Path, name: &str, class_names: Vec<String>) -> Result<DatasetPair> {
    let need = |pre: &[&str], kind: &str, what: &str| -> Result<PathBuf> {
        find(dir, pre, kind)?.ok_or_else(|| {
            Error::format(
                dir,
                format!(
                    "IDX directory has no {what} file (expected a name like {}*-{kind}-ubyte[.gz])",
                    pre[0]
                ),
            )
        })
    };
    let tr_i = need(&["train-images", "train_images"], "idx3", "training images")?;
    let tr_l = need(&["train-labels", "train_labels"], "idx1", "training labels")?;
    let te_i = need(
        &["t10k-images", "test-images", "t10k_images", "test_images"],
        "idx3",
        "test images",
    )?;
    let te_l = need(
        &["t10k-labels", "test-labels", "t10k_labels", "test_labels"],
        "idx1",
        "test labels",
    )?;
    let train = load_split(&tr_i, &tr_l)?;
    let test = load_split(&te_i, &te_l)?;
    let max = train.4.iter().chain(&test.4).copied().max().unwrap_or(0) as usize;
    let names = if class_names.len() > max {
        class_names
    } else {
        (0..=max).map(|c| c.to_string()).collect()
    };
    let build = |(n, h, w, px, y): RawSplit| Dataset::new(px, (n, 1, h, w), Some(y), names.clone());
    DatasetPair::new(name.to_string(), build(train)?, build(test)?)
}

/// Encodes images as an IDX image file (used by tests and tools).
pub fn encode_images(n: usize, h: usize, w: usize, pixels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + pixels.len());
    for v in [IMAGES_MAGIC, n as u32, h as u32, w as u32] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(pixels);
    out
}

/// Encodes labels as an IDX label file.
pub fn encode_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + labels.len());
    out.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_dir(dir: &Path, n_train: usize, n_train_labels: usize, gz: bool) {
        let px: Vec<u8> = (0..n_train * 16).map(|i| (i % 251) as u8).collect();
        let labels: Vec<u8> = (0..n_train_labels).map(|i| (i % 3) as u8).collect();
        let files = [
            ("train-images-idx3-ubyte", encode_images(n_train, 4, 4, &px)),
            ("train-labels-idx1-ubyte", encode_labels(&labels)),
            ("t10k-images-idx3-ubyte", encode_images(2, 4, 4, &px[..32])),
            ("t10k-labels-idx1-ubyte", encode_labels(&[0, 2])),
        ];
        for (name, bytes) in files {
            if gz {
                let f = std::fs::File::create(dir.join(format!("{name}.gz"))).unwrap();
                let mut enc = flate2::write::GzEncoder::new(f, flate2::Compression::default());
                enc.write_all(&bytes).unwrap();
                enc.finish().unwrap();
            } else {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
    }

    #[test]
    fn loads_raw_and_gz_directories() {
        for gz in [false, true] {
            let d = tempfile::tempdir().unwrap();
            write_dir(d.path(), 6, 6, gz);
            assert!(is_idx_dir(d.path()));
            let pair = load_dir(d.path(), "t", vec![]).unwrap();
            assert_eq!(pair.train.len(), 6);
            assert_eq!(pair.train.image_shape(), (1, 4, 4));
            assert_eq!(pair.train.labels().unwrap(), &[0, 1, 2, 0, 1, 2]);
            assert_eq!(pair.train.image(1)[0], 16);
            assert_eq!(pair.test.len(), 2);
            assert_eq!(pair.train.num_classes(), 3);
        }
    }

    #[test]
    fn label_count_mismatch_names_the_files() {
        let d = tempfile::tempdir().unwrap();
        write_dir(d.path(), 6, 5, false);
        let e = load_dir(d.path(), "t", vec![]).unwrap_err().to_string();
        assert!(
            e.contains("train-labels-idx1-ubyte")
                && e.contains("5 labels")
                && e.contains("6 images"),
            "{e}"
        );
    }

    #[test]
    fn wrong_magic_and_truncation_are_reported() {
        let p = Path::new("x-idx3-ubyte");
        let mut bytes = encode_images(2, 4, 4, &[0; 32]);
        let e = parse_images(p, &bytes[..40]).unwrap_err().to_string();
        assert!(e.contains("x-idx3-ubyte") && e.contains("truncated"), "{e}");
        let e = parse_images(p, &bytes[..10]).unwrap_err().to_string();
        assert!(e.contains("too short"), "{e}");
        bytes[3] = 0x01;
        let e = parse_images(p, &bytes).unwrap_err().to_string();
        assert!(e.contains("wrong IDX magic 0x00000801"), "{e}");
        let e = parse_labels(p, &encode_images(1, 1, 1, &[0]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("wrong IDX magic"), "{e}");
        let e = parse_labels(p, &encode_labels(&[1, 2, 3])[..9])
            .unwrap_err()
            .to_string();
        assert!(e.contains("3 labels but 1 bytes"), "{e}");
    }

    #[test]
    fn truncated_gzip_is_reported() {
        let d = tempfile::tempdir().unwrap();
        write_dir(d.path(), 6, 6, true);
        let p = d.path().join("train-images-idx3-ubyte.gz");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let e = load_dir(d.path(), "t", vec![]).unwrap_err().to_string();
        assert!(
            e.contains("train-images-idx3-ubyte.gz") && e.contains("gzip"),
            "{e}"
        );
    }

    #[test]
    fn missing_file_is_reported() {
        let d = tempfile::tempdir().unwrap();
        write_dir(d.path(), 6, 6, false);
        std::fs::remove_file(d.path().join("t10k-labels-idx1-ubyte")).unwrap();
        let e = load_dir(d.path(), "t", vec![]).unwrap_err().to_string();
        assert!(e.contains("test labels"), "{e}");
    }
}
