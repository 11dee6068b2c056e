//! Checkpoints: `model.safetensors` + `config.json` in one stage directory,
//! written atomically, loadable in full or in part (a pretrained backbone
//! under a new head).

use crate::fsutil;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use std::collections::HashMap;
use std::path::Path;

/// File name of the weights inside a stage directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the configuration inside a stage directory.
pub const CONFIG_FILE: &str = "config.json";

/// Writes `map` (optionally only the variables under `prefix`, with the
/// prefix kept in the names) and `config` into `dir`, atomically.
pub fn save<C: serde::Serialize>(dir: &Path, map: &VarMap, prefix: &str, config: &C) -> Result<()> {
    let tensors: HashMap<String, Tensor> = {
        let data = map.data().lock().expect("var map poisoned");
        data.iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    };
    fsutil::write_dir_atomic(dir, |tmp| {
        let weights = tmp.join(WEIGHTS_FILE);
        candle_core::safetensors::save(&tensors, &weights)
            .map_err(|e| Error::format(&weights, format!("cannot write safetensors: {e}")))?;
        fsutil::write_json_atomic(&tmp.join(CONFIG_FILE), config)
    })
}

/// Reads a stage's `config.json`.
pub fn read_config<C: serde::de::DeserializeOwned>(dir: &Path) -> Result<C> {
    fsutil::read_json(&dir.join(CONFIG_FILE))
}

/// Reads all tensors of a safetensors file. A floating-point tensor with a
/// NaN or infinite value is refused, naming it: weights like that come from
/// a diverged run or a damaged file, and would only show up as NaN losses.
pub fn read_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    if !path.exists() {
        return Err(Error::format(path, "checkpoint file does not exist"));
    }
    let tensors = candle_core::safetensors::load(path, device)
        .map_err(|e| Error::format(path, format!("not a readable safetensors file: {e}")))?;
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        let t = &tensors[name];
        if t.dtype().is_float() && !all_finite(t)? {
            return Err(Error::format(
                path,
                format!("tensor {name} holds NaN or infinite values; the weights are unusable"),
            ));
        }
    }
    Ok(tensors)
}

/// Whether every element of a floating-point tensor is finite.
fn all_finite(t: &Tensor) -> Result<bool> {
    let sum = t
        .to_dtype(candle_core::DType::F64)?
        .abs()?
        .sum_all()?
        .to_scalar::<f64>()?;
    Ok(sum.is_finite())
}

/// What a partial load did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LoadReport {
    /// Variables set from the file.
    pub loaded: Vec<String>,
    /// Variables under the prefix that the file lacks (left as initialised).
    pub missing: Vec<String>,
}

/// Sets every variable of `map` whose name starts with `prefix` from the
/// file's tensor of the same name. Variables outside `prefix` (e.g. a new
/// head) are untouched. A tensor with the right name but the wrong shape is
/// an error; with `strict`, so is a variable the file lacks.
pub fn load_into(map: &VarMap, path: &Path, prefix: &str, strict: bool) -> Result<LoadReport> {
    let data = map.data().lock().expect("var map poisoned");
    let device = match data.values().next() {
        Some(v) => v.device().clone(),
        None => Device::Cpu,
    };
    let file = read_tensors(path, &device)?;
    let mut report = LoadReport::default();
    let mut names: Vec<&String> = data.keys().filter(|k| k.starts_with(prefix)).collect();
    names.sort();
    for name in names {
        let var = &data[name];
        match file.get(name.as_str()) {
            Some(t) => {
                if t.shape() != var.shape() {
                    return Err(Error::format(
                        path,
                        format!(
                            "tensor {name} has shape {:?}, the model expects {:?}",
                            t.dims(),
                            var.dims()
                        ),
                    ));
                }
                var.set(&t.to_dtype(var.dtype())?)?;
                report.loaded.push(name.clone());
            }
            None => report.missing.push(name.clone()),
        }
    }
    if strict && !report.missing.is_empty() {
        return Err(Error::format(
            path,
            format!("missing tensors: {}", report.missing.join(", ")),
        ));
    }
    if report.loaded.is_empty() {
        return Err(Error::format(
            path,
            format!("no tensor in the file matches the model's parameters under {prefix:?}"),
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod nan_tests {
    use super::*;

    #[test]
    fn mangled_checkpoints_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let t = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap();
        candle_core::safetensors::save(&HashMap::from([("w".to_string(), t)]), &path).unwrap();
        let valid = std::fs::read(&path).unwrap();
        let mut x: u64 = 7;
        for _ in 0..500 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut b = valid.clone();
            let at = (x % b.len() as u64) as usize;
            b[at] = (x >> 32) as u8;
            b.truncate(b.len() - ((x >> 40) % 8) as usize);
            std::fs::write(&path, &b).unwrap();
            let _ = read_tensors(&path, &Device::Cpu);
        }
    }

    #[test]
    fn non_finite_weights_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let good = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let bad = Tensor::new(&[1f32, f32::NAN], &Device::Cpu).unwrap();
        let map = HashMap::from([("a.weight".to_string(), good), ("b.bias".to_string(), bad)]);
        candle_core::safetensors::save(&map, &path).unwrap();
        let e = read_tensors(&path, &Device::Cpu).unwrap_err().to_string();
        assert!(
            e.contains("b.bias") && e.contains("NaN") && e.contains("w.safetensors"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::seeded_var_builder;

    #[test]
    fn round_trip_and_partial_load() {
        let dir = tempfile::tempdir().unwrap();
        let stage = dir.path().join("run/pretrain");
        let src = VarMap::new();
        let vb = seeded_var_builder(&src, 1, &Device::Cpu);
        let enc = candle_nn::linear(6, 5, vb.pp("backbone.fc")).unwrap();
        let _head = candle_nn::linear(5, 4, vb.pp("head")).unwrap();
        save(&stage, &src, "backbone.", &serde_json::json!({"k": 1})).unwrap();
        let cfg: serde_json::Value = read_config(&stage).unwrap();
        assert_eq!(cfg["k"], 1);
        let file = read_tensors(&stage.join(WEIGHTS_FILE), &Device::Cpu).unwrap();
        assert_eq!(file.len(), 2, "only the backbone is saved");

        // a fresh model with another seed and a different head
        let dst = VarMap::new();
        let vb = seeded_var_builder(&dst, 2, &Device::Cpu);
        let enc2 = candle_nn::linear(6, 5, vb.pp("backbone.fc")).unwrap();
        let head2 = candle_nn::linear(5, 10, vb.pp("head")).unwrap();
        let head_before = head2
            .weight()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let rep = load_into(&dst, &stage.join(WEIGHTS_FILE), "backbone.", true).unwrap();
        assert_eq!(rep.loaded.len(), 2);
        assert!(rep.missing.is_empty());
        assert_eq!(
            enc.weight()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            enc2.weight()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
        assert_eq!(
            head_before,
            head2
                .weight()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
    }

    #[test]
    fn shape_mismatch_and_garbage_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let src = VarMap::new();
        let vb = seeded_var_builder(&src, 1, &Device::Cpu);
        candle_nn::linear(6, 5, vb.pp("backbone.fc")).unwrap();
        save(dir.path().join("s").as_path(), &src, "", &1).unwrap();
        let dst = VarMap::new();
        let vb = seeded_var_builder(&dst, 1, &Device::Cpu);
        candle_nn::linear(7, 5, vb.pp("backbone.fc")).unwrap();
        let e = load_into(&dst, &dir.path().join("s").join(WEIGHTS_FILE), "", false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("backbone.fc.weight") && e.contains("shape"),
            "{e}"
        );
        let junk = dir.path().join("junk.safetensors");
        std::fs::write(&junk, b"not a checkpoint").unwrap();
        let e = load_into(&dst, &junk, "", false).unwrap_err().to_string();
        assert!(e.contains("junk.safetensors"), "{e}");
    }
}
