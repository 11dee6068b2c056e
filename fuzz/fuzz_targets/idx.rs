//! IDX image and label files (MNIST's format) from arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let p = Path::new("fuzz-idx");
    let _ = selfsup_data::idx::parse_images(p, data);
    let _ = selfsup_data::idx::parse_labels(p, data);
});
