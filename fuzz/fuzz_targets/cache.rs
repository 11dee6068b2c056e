//! The local dataset cache (`dataset.json` and a split's safetensors
//! file) from arbitrary bytes: the input is read as both, the split
//! against the manifest of the seed in seeds/cache.
#![no_main]
use libfuzzer_sys::fuzz_target;
use selfsup_data::cache;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
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
    let _ = cache::parse_split(Path::new("train.safetensors"), data, &manifest);
    let _ = cache::parse_manifest(Path::new("dataset.json"), data);
});
