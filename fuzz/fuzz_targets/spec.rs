//! The experiment spec parser: arbitrary text as an `experiment.toml`
//! (TOML, unknown keys, wrong types, validation), and each of its lines as
//! a `--set PATH=VALUE` over the defaults.
#![no_main]
use libfuzzer_sys::fuzz_target;
use selfsup::spec::{layers::Layers, Experiment};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Experiment::from_text(Path::new("fuzz.toml"), text);
    let mut layers = Layers::default();
    for line in text.lines().take(16) {
        let _ = layers.assign(line);
    }
    let _ = layers.resolve();
});
