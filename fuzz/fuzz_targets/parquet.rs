//! The Hub's image-dataset parquet files (what `cargo xtask fetch`
//! decodes) from arbitrary bytes, with MNIST's column spec.
//!
//! The parquet crate panics on some corrupt pages; `read_bytes` turns
//! those panics into errors. libFuzzer's panic hook would abort on them
//! before they unwind, so this target lets panics raised inside the
//! parquet crate through to that handling and still aborts on any other.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fn pass_parquet_panics() {
    let fuzzer_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_parquet = info
            .location()
            .is_some_and(|l| l.file().contains("/parquet-"));
        if !in_parquet {
            fuzzer_hook(info);
        }
    }));
}

fuzz_target!(|data: &[u8]| {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(pass_parquet_panics);
    let spec = selfsup_hub::catalog::spec("mnist").expect("mnist is in the catalog");
    let _ = selfsup_hub::parquet_images::read_bytes(
        Path::new("fuzz.parquet"),
        data.to_vec(),
        spec,
        &|_, _| {},
    );
});
