//! The image-folder decoder (PNG, JPEG, ...; centre crop and resize) on
//! arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = selfsup_data::folder::decode_bytes(data, 16, 3);
    let _ = selfsup_data::folder::decode_bytes(data, 8, 1);
});
