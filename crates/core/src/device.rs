//! Choosing the compute device from a flag value.

use crate::{Error, Result};
use candle_core::Device;

/// Parses `cpu`, `cuda`, `cuda:N` or `auto` into a device. `auto` picks the
/// first CUDA GPU when the build has CUDA support and one is present, else
/// the CPU.
pub fn parse_device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .map_err(|_| Error::invalid("--device", format!("bad GPU ordinal in {s:?}")))?,
                None => 0,
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(Error::invalid(
                    "--device",
                    "cuda requested but this binary was built without the `cuda` feature; \
                     use `cargo xtask-cuda ...` (or build with `--features cuda`, see docs/cuda.md)",
                ));
            }
            Ok(Device::new_cuda(ordinal)?)
        }
        other => Err(Error::invalid(
            "--device",
            format!("unknown device {other:?}; expected cpu, cuda, cuda:N or auto"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parses_cpu_and_rejects_junk() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        // `auto` is the GPU exactly when one can be had.
        let gpu = Device::cuda_if_available(0).is_ok_and(|d| d.is_cuda());
        assert_eq!(parse_device("auto").unwrap().is_cuda(), gpu);
        if !candle_core::utils::cuda_is_available() {
            let e = parse_device("cuda:0").unwrap_err().to_string();
            assert!(e.contains("without the `cuda` feature"), "{e}");
        }
        let e = parse_device("cuda:x").unwrap_err().to_string();
        assert!(e.contains("bad GPU ordinal"), "{e}");
        let e = parse_device("tpu").unwrap_err().to_string();
        assert!(e.contains("--device") && e.contains("tpu"), "{e}");
    }
}
