//! The checkpoint reader (safetensors, non-finite check) on arbitrary
//! bytes, through a file as in real use.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path =
        std::env::temp_dir().join(format!("selfsup-fuzz-{}.safetensors", std::process::id()));
    if std::fs::write(&path, data).is_ok() {
        let _ = selfsup_core::checkpoint::read_tensors(&path, &candle_core::Device::Cpu);
    }
});
