//! The local dataset cache (`dataset.json` and a split's safetensors
//! file) from arbitrary bytes: the input is read as both, the split
//! against the manifest of the seed in seeds/cache.
#![no_main]
use libfuzzer_sys::fuzz_target;
use selfsup_data::cache;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    static MANIFEST: std::sync::OnceLock<cache::Manifest> = std::sync::OnceLock::new();
    let manifest = MANIFEST.get_or_init(|| {
        let seed = include_bytes!("../seeds/cache/dataset.json");
        cache::parse_manifest(Path::new("seeds/cache/dataset.json"), seed)
            .expect("the committed seed manifest reads")
    });
    let _ = cache::parse_split(Path::new("train.safetensors"), data, manifest);
    let _ = cache::parse_manifest(Path::new("dataset.json"), data);
});
