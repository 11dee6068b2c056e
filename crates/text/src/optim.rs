//! The text trainer's AdamW: global-norm clipping, no decay on biases and
//! LayerNorm, and its moments in tensors so that a checkpoint holds them
//! and `--resume` continues exactly.

use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use selfsup_core::{params, Error, Result};
use std::collections::HashMap;
use std::path::Path;

/// AdamW with its state in tensors, so a checkpoint can hold it.
pub(crate) struct AdamW {
    vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: usize,
}

impl AdamW {
    const B1: f64 = 0.9;
    const B2: f64 = 0.999;
    const EPS: f64 = 1e-6;

    pub(crate) fn new(map: &VarMap) -> Result<Self> {
        let vars = params::trainable_vars(map);
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        Ok(Self {
            m: vars
                .iter()
                .map(|(_, v)| zeros(v))
                .collect::<candle_core::Result<_>>()?,
            v: vars
                .iter()
                .map(|(_, v)| zeros(v))
                .collect::<candle_core::Result<_>>()?,
            vars,
            t: 0,
        })
    }

    /// One step from `grads`, clipped to global norm `clip`; returns the
    /// norm before clipping.
    pub(crate) fn step(
        &mut self,
        grads: &candle_core::backprop::GradStore,
        lr: f64,
        wd: f64,
        clip: f64,
    ) -> Result<f64> {
        let mut sq = 0.0f64;
        let gs: Vec<Option<Tensor>> = self
            .vars
            .iter()
            .map(|(_, v)| grads.get(v.as_tensor()).cloned())
            .collect();
        for g in gs.iter().flatten() {
            sq += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
        }
        let norm = sq.sqrt();
        let scale = if norm > clip {
            clip / (norm + 1e-6)
        } else {
            1.0
        };
        self.t += 1;
        let (c1, c2) = (
            1.0 - Self::B1.powi(self.t as i32),
            1.0 - Self::B2.powi(self.t as i32),
        );
        for (i, ((name, var), g)) in self.vars.iter().zip(gs).enumerate() {
            let Some(g) = g else { continue };
            let g = (g * scale)?;
            self.m[i] = ((&self.m[i] * Self::B1)? + (&g * (1.0 - Self::B1))?)?;
            self.v[i] = ((&self.v[i] * Self::B2)? + (g.sqr()? * (1.0 - Self::B2))?)?;
            let update = ((&self.m[i] / c1)? / ((&self.v[i] / c2)?.sqrt()? + Self::EPS)?)?;
            let decays = name.ends_with("weight") && !name.contains("LayerNorm");
            let w = var.as_tensor();
            let w = if decays {
                (w * (1.0 - lr * wd))?
            } else {
                w.clone()
            };
            var.set(&(w - (update * lr)?)?)?;
        }
        Ok(norm)
    }

    pub(crate) fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.insert(format!("m.{name}"), self.m[i].clone());
            out.insert(format!("v.{name}"), self.v[i].clone());
        }
        out
    }

    pub(crate) fn restore(
        &mut self,
        state: &HashMap<String, Tensor>,
        t: usize,
        path: &Path,
    ) -> Result<()> {
        for (i, (name, _)) in self.vars.iter().enumerate() {
            let get = |k: String| {
                state
                    .get(&k)
                    .cloned()
                    .ok_or_else(|| Error::format(path, format!("optimiser state lacks {k}")))
            };
            self.m[i] = get(format!("m.{name}"))?;
            self.v[i] = get(format!("v.{name}"))?;
        }
        self.t = t;
        Ok(())
    }
}
