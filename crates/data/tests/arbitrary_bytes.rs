//! The binary readers on arbitrary and mangled input: every one returns an
//! error or a well-formed result, and never panics. Seeded, so a failure
//! reproduces; the same entry points a fuzzer would drive.

use selfsup_data::{cache, cifar, idx, Dataset};
use std::path::Path;

/// A seeded xorshift stream of bytes and sizes.
struct Bytes(u64);

impl Bytes {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn fill(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// `valid` with a few bytes overwritten, truncated or extended.
fn mangle(r: &mut Bytes, valid: &[u8]) -> Vec<u8> {
    let mut b = valid.to_vec();
    match r.below(4) {
        0 => b.truncate(r.below(b.len() + 1)),
        1 => {
            let extra = r.below(64);
            b.extend(r.fill(extra));
        }
        _ => {
            for _ in 0..1 + r.below(4) {
                let at = r.below(b.len().max(1));
                let v = r.next() as u8;
                if let Some(x) = b.get_mut(at) {
                    *x = v;
                }
            }
        }
    }
    b
}

#[test]
fn idx_readers_never_panic() {
    let p = Path::new("x-idx3-ubyte");
    let images = idx::encode_images(3, 4, 5, &[7; 60]);
    let labels = idx::encode_labels(&[1, 2, 3]);
    let mut r = Bytes(0x9E37_79B9_7F4A_7C15);
    for _ in 0..3000 {
        let _ = idx::parse_images(p, &mangle(&mut r, &images));
        let _ = idx::parse_labels(p, &mangle(&mut r, &labels));
        let len = r.below(40);
        let _ = idx::parse_images(p, &r.fill(len));
    }
    // A header whose sizes overflow when multiplied is refused, not wrapped.
    let mut huge = images[..4].to_vec();
    for d in [u32::MAX, u32::MAX, u32::MAX] {
        huge.extend(d.to_be_bytes());
    }
    let e = idx::parse_images(p, &huge).unwrap_err().to_string();
    assert!(e.contains("truncated or oversized"), "{e}");
}

#[test]
fn cifar_reader_never_panics() {
    let p = Path::new("data_batch_1.bin");
    let mut r = Bytes(42);
    for variant in [cifar::Variant::Cifar10, cifar::Variant::Cifar100] {
        let rec = if variant == cifar::Variant::Cifar10 {
            3073
        } else {
            3074
        };
        let valid = r.fill(2 * rec);
        for _ in 0..300 {
            let _ = cifar::parse(p, &mangle(&mut r, &valid), variant);
        }
    }
}

/// A small cached dataset as `cargo xtask fetch` stores it: its manifest
/// and the bytes of its train split.
fn cached(root: &Path) -> (cache::Manifest, Vec<u8>, Vec<u8>) {
    let manifest = cache::Manifest {
        format_version: cache::FORMAT_VERSION,
        name: "celeba".into(),
        repo: "someone/celeba".into(),
        revision: "0123abcd".into(),
        train_files: vec![],
        test_files: vec![],
        test_split: "test".into(),
        label_column: "label".into(),
        classes: vec!["a".into(), "b".into()],
        image_shape: [1, 2, 2],
        train_images: 3,
        test_images: 3,
        attributes: vec!["Smiling".into()],
    };
    let split = || cache::Split {
        dataset: Dataset::new(
            (0..12).collect(),
            (3, 1, 2, 2),
            Some(vec![0, 1, 1]),
            manifest.classes.clone(),
        )
        .unwrap(),
        attributes: vec![1, 0, 1],
    };
    let dir = cache::store(root, &manifest, &split(), &split()).unwrap();
    let bytes = |f: &str| std::fs::read(dir.join(f)).unwrap();
    (manifest, bytes("train.safetensors"), bytes("dataset.json"))
}

#[test]
fn cached_dataset_readers_never_panic() {
    let root = tempfile::tempdir().unwrap();
    let (manifest, split, json) = cached(root.path());
    let p = Path::new("train.safetensors");
    let ok = cache::parse_split(p, &split, &manifest).unwrap();
    assert_eq!((ok.dataset.len(), ok.attributes.len()), (3, 3));
    assert_eq!(
        cache::parse_manifest(Path::new("dataset.json"), &json).unwrap(),
        manifest
    );
    // `SELFSUP_WRITE_FUZZ_SEEDS=DIR` keeps the valid files as fuzzing seeds.
    if let Some(dir) = std::env::var_os("SELFSUP_WRITE_FUZZ_SEEDS") {
        std::fs::write(Path::new(&dir).join("celeba-3.safetensors"), &split).unwrap();
        std::fs::write(Path::new(&dir).join("dataset.json"), &json).unwrap();
    }
    let mut r = Bytes(0xC0FF_EE00_1234_5678);
    for _ in 0..3000 {
        if let Err(e) = cache::parse_split(p, &mangle(&mut r, &split), &manifest) {
            assert!(e.to_string().contains("train.safetensors"), "{e}");
        }
        let _ = cache::parse_manifest(Path::new("dataset.json"), &mangle(&mut r, &json));
    }
    // A manifest whose shape disagrees with the file is refused by name.
    let mut other = manifest.clone();
    other.image_shape = [3, 2, 2];
    let e = cache::parse_split(p, &split, &other)
        .unwrap_err()
        .to_string();
    assert!(e.contains("dataset.json says"), "{e}");
}
