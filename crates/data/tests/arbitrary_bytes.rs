//! The binary readers on arbitrary and mangled input: every one returns an
//! error or a well-formed result, and never panics. Seeded, so a failure
//! reproduces; the same entry points a fuzzer would drive.

use selfsup_data::{cifar, idx};
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
