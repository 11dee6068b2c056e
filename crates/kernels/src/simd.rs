//! The widest SIMD instruction set this CPU has, chosen at run time.
//!
//! The workspace is compiled for baseline x86-64 (SSE2), so a plain loop
//! uses 4-lane vectors on every machine. [`dispatch`] runs a closure inside
//! a function compiled for AVX-512 or AVX2 + FMA when the CPU has them, so
//! the loops the closure inlines are vectorised for that width; a binary
//! built here still runs on any x86-64 CPU. None of our loops lets the
//! compiler reassociate a sum or contract a multiply and an add into an
//! FMA, so every level computes bit-identical results: the choice changes
//! speed only.
//!
//! [`set_max_level`] caps the level process-wide, so that tests can run
//! every kernel on each narrower path the machine supports.

use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set level, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdLevel {
    /// What every x86-64 CPU has (SSE2), or a non-x86 target.
    Baseline,
    /// AVX2 and FMA (x86-64-v3).
    Avx2,
    /// AVX-512 F/BW/DQ/VL on top of AVX2 (x86-64-v4).
    Avx512,
}

impl SimdLevel {
    /// `baseline`, `avx2` or `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
        }
    }

    /// Every level up to and including `self`, narrowest first.
    pub fn up_to(self) -> impl Iterator<Item = SimdLevel> {
        [Self::Baseline, Self::Avx2, Self::Avx512]
            .into_iter()
            .filter(move |l| *l <= self)
    }

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(c: u8) -> Self {
        match c {
            0 => Self::Baseline,
            1 => Self::Avx2,
            _ => Self::Avx512,
        }
    }
}

impl std::str::FromStr for SimdLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "baseline" => Ok(Self::Baseline),
            "avx2" => Ok(Self::Avx2),
            "avx512" => Ok(Self::Avx512),
            other => Err(format!(
                "unknown SIMD level {other:?}; expected baseline, avx2 or avx512"
            )),
        }
    }
}

/// The widest level this CPU supports.
pub fn detected() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
            return SimdLevel::Avx512;
        }
        if has!("avx2") && has!("fma") {
            return SimdLevel::Avx2;
        }
    }
    SimdLevel::Baseline
}

static MAX: AtomicU8 = AtomicU8::new(u8::MAX);

/// Caps the level [`dispatch`] uses at `level` (it never goes above what
/// the CPU has); `None` lifts the cap.
pub fn set_max_level(level: Option<SimdLevel>) {
    MAX.store(level.map_or(u8::MAX, SimdLevel::code), Ordering::Relaxed);
}

/// The level [`dispatch`] uses now: the detected one, capped by
/// [`set_max_level`].
pub fn active() -> SimdLevel {
    let cap = MAX.load(Ordering::Relaxed);
    if cap == u8::MAX {
        detected()
    } else {
        detected().min(SimdLevel::from_code(cap))
    }
}

/// The level of the GEMM kernels the `gemm` crate runs here: AVX-512 when
/// this build has the `avx512-gemm` feature (on by default) and the CPU has
/// AVX-512F;
/// AVX2 + FMA where the CPU has them; else its baseline kernels.
pub fn gemm_level() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if cfg!(feature = "avx512-gemm") && has!("avx512f") {
            return SimdLevel::Avx512;
        }
        if has!("avx2") && has!("fma") {
            return SimdLevel::Avx2;
        }
    }
    SimdLevel::Baseline
}

/// The CPU's SIMD-related features, as the standard library detects them,
/// for benchmark records.
pub fn cpu_features() -> Vec<&'static str> {
    let mut out = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        macro_rules! probe {
            ($($f:tt),*) => { $( if has!($f) { out.push($f); } )* };
        }
        probe!(
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512dq",
            "avx512vl",
            "avx512vnni",
            "avx512bf16"
        );
    }
    out
}

/// Runs `f` compiled for the [`active`] level: the closure (and whatever
/// it inlines) is instantiated inside a `#[target_feature]` function, so
/// its loops vectorise for that width. Mark the closure
/// `#[inline(always)]`: a closure the compiler leaves out of line is
/// compiled for the baseline. Dispatch per chunk of work, inside a
/// parallel iterator's closure: the code rayon runs around it is not
/// re-compiled.
#[inline(always)]
pub fn dispatch<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    match active() {
        // SAFETY: `active` never exceeds `detected`, which checked that the
        // CPU has every feature the called function is compiled for.
        SimdLevel::Avx512 => return unsafe { x86::avx512(f) },
        SimdLevel::Avx2 => return unsafe { x86::avx2(f) },
        SimdLevel::Baseline => {}
    }
    f()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi1,bmi2,lzcnt")]
    pub(super) unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    #[target_feature(enable = "avx2,fma,bmi1,bmi2,lzcnt")]
    pub(super) unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_never_exceeds_the_cpu_and_lifts() {
        let top = detected();
        set_max_level(Some(SimdLevel::Baseline));
        assert_eq!(active(), SimdLevel::Baseline);
        assert_eq!(dispatch(|| 2 + 2), 4);
        set_max_level(Some(SimdLevel::Avx512));
        assert_eq!(active(), top);
        set_max_level(None);
        assert_eq!(active(), top);
        assert_eq!(top.up_to().last(), Some(top));
        for l in top.up_to() {
            assert_eq!(l.name().parse::<SimdLevel>(), Ok(l));
        }
        assert!("sse9".parse::<SimdLevel>().unwrap_err().contains("avx512"));
        if top >= SimdLevel::Avx2 {
            assert!(cpu_features().contains(&"avx2"));
        }
        assert!(gemm_level() <= top);
        if !cfg!(feature = "avx512-gemm") {
            assert!(gemm_level() < SimdLevel::Avx512);
        } else if top == SimdLevel::Avx512 {
            assert_eq!(gemm_level(), SimdLevel::Avx512);
        }
    }
}
