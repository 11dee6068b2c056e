//! Seeded parameter initialisation for Candle models.
//!
//! [`seeded_var_builder`] returns a `VarBuilder` whose new variables are
//! drawn from a ChaCha RNG (Candle's own CPU RNG cannot be seeded) and stored
//! in a [`VarMap`], so they are trainable and saveable as usual. Variables
//! that already exist in the map are returned as they are.

use crate::rng;
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::{Init, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};
use rand::Rng as _;
use std::sync::Mutex;

struct SeededBackend {
    map: VarMap,
    rng: Mutex<rng::Rng>,
}

fn sample(init: Init, shape: &Shape, rng: &mut rng::Rng) -> Vec<f32> {
    let n = shape.elem_count();
    let normal = |rng: &mut rng::Rng, mean: f64, std: f64| -> f32 {
        // Box-Muller
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random::<f64>();
        (mean + std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    };
    match init {
        Init::Const(v) => vec![v as f32; n],
        Init::Uniform { lo, up } => (0..n).map(|_| rng.random_range(lo..up) as f32).collect(),
        Init::Randn { mean, stdev } => (0..n).map(|_| normal(rng, mean, stdev)).collect(),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                NormalOrUniform::Uniform => {
                    let b = 3f64.sqrt() * std;
                    (0..n).map(|_| rng.random_range(-b..b) as f32).collect()
                }
                NormalOrUniform::Normal => (0..n).map(|_| normal(rng, 0.0, std)).collect(),
            }
        }
    }
}

impl SimpleBackend for SeededBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut data = self.map.data().lock().expect("var map poisoned");
        if let Some(v) = data.get(name) {
            if v.shape() != &s {
                candle_core::bail!(
                    "parameter {name}: shape {:?} in the map, {:?} requested",
                    v.shape(),
                    s
                );
            }
            return Ok(v.as_tensor().clone());
        }
        let values = sample(h, &s, &mut self.rng.lock().expect("rng poisoned"));
        let t = Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let data = self.map.data().lock().expect("var map poisoned");
        match data.get(name) {
            Some(v) => v.as_tensor().to_device(dev)?.to_dtype(dtype),
            None => candle_core::bail!("no parameter named {name}"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.map
            .data()
            .lock()
            .expect("var map poisoned")
            .contains_key(name)
    }
}

/// A `VarBuilder` that creates trainable f32 variables in `map`, initialised
/// deterministically from `seed`.
pub fn seeded_var_builder(map: &VarMap, seed: u64, device: &Device) -> VarBuilder<'static> {
    let backend = SeededBackend {
        map: map.clone(),
        rng: Mutex::new(rng::stream(seed, "init")),
    };
    VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone())
}

/// Every variable of `map` (BatchNorm running statistics included) with
/// its name, sorted by name.
pub fn named_vars(map: &VarMap) -> Vec<(String, Var)> {
    let data = map.data().lock().expect("var map poisoned");
    let mut named: Vec<_> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// The variables of `map` whose names start with `prefix`, sorted by name
/// (for optimisers that train only part of a model).
pub fn vars_with_prefix(map: &VarMap, prefix: &str) -> Vec<Var> {
    named_vars(map)
        .into_iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .collect()
}

/// The trainable variables of `map` (BatchNorm running statistics excluded),
/// sorted by name.
pub fn trainable_vars(map: &VarMap) -> Vec<(String, Var)> {
    named_vars(map)
        .into_iter()
        .filter(|(k, _)| !k.ends_with("running_mean") && !k.ends_with("running_var"))
        .collect()
}

/// Largest `|a - b|` over the elements of two tensors of one shape (used
/// to compare a model's outputs between two code paths).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> candle_core::Result<f32> {
    (a - b)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()
}

/// Sum of `|t|` over all elements (e.g. how much a gradient moves).
pub fn abs_sum(t: &Tensor) -> candle_core::Result<f32> {
    t.abs()?.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(seed: u64) -> (VarMap, Tensor) {
        let map = VarMap::new();
        let vb = seeded_var_builder(&map, seed, &Device::Cpu);
        let lin = candle_nn::linear(8, 4, vb.pp("fc")).unwrap();
        (map, lin.weight().clone())
    }

    #[test]
    fn same_seed_same_weights() {
        let (_, a) = build(7);
        let (_, b) = build(7);
        let (_, c) = build(8);
        let d = |x: &Tensor, y: &Tensor| {
            (x - y)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert_eq!(d(&a, &b), 0.0);
        assert!(d(&a, &c) > 0.0);
    }

    #[test]
    fn variables_land_in_the_map_and_are_reused() {
        let (map, w) = build(1);
        assert_eq!(map.all_vars().len(), 2);
        let vb = seeded_var_builder(&map, 99, &Device::Cpu);
        let again = candle_nn::linear(8, 4, vb.pp("fc")).unwrap();
        let diff = (again.weight() - &w)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        assert_eq!(vars_with_prefix(&map, "fc.").len(), 2);
        assert!(
            vb.pp("fc").get((3, 3), "weight").is_err(),
            "shape mismatch must fail"
        );
    }
}
