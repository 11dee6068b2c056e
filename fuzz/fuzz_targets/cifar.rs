//! CIFAR-10/100 binary batches from arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use selfsup_data::cifar::{parse, Variant};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let p = Path::new("fuzz-cifar");
    let _ = parse(p, data, Variant::Cifar10);
    let _ = parse(p, data, Variant::Cifar100);
});
