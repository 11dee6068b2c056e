//! The momentum (EMA) copy of the online network that BYOL and MoCo
//! learn against.

use crate::Mlp;
use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use selfsup_backbones::checkpoint::{BACKBONE_PREFIX, HEAD_PREFIX};
use selfsup_backbones::Backbone;
use selfsup_core::{params, Error, Result};
use selfsup_objective::ObjectiveContext;

/// A momentum ("target", "key") copy of the online backbone and projector:
/// its own variables, updated only by [`MomentumTarget::update`] as an
/// exponential moving average of the online ones.
pub struct MomentumTarget {
    pub(crate) map: VarMap,
    pub(crate) backbone: Box<dyn Backbone>,
    pub(crate) projector: Mlp,
    /// (target, online) pairs of trainable variables.
    pub(crate) pairs: Vec<(Var, Var)>,
    pub(crate) base: f64,
    pub(crate) cosine: bool,
}

impl MomentumTarget {
    /// The target's variables by name, sorted.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        params::named_vars(&self.map)
    }

    /// Builds the copy and initialises it to the online weights. The
    /// projector's online variables must already exist under
    /// `head.projector`.
    pub fn new(
        ctx: &ObjectiveContext,
        projector_dims: &[usize],
        batch_norm: bool,
        base: f64,
        cosine: bool,
    ) -> Result<Self> {
        let map = VarMap::new();
        let vb = params::seeded_var_builder(&map, ctx.seed, &ctx.device);
        let backbone = ctx.backbone.build_backbone(vb.pp(BACKBONE_PREFIX))?;
        let projector = Mlp::new(
            projector_dims,
            batch_norm,
            vb.pp(HEAD_PREFIX).pp("projector"),
        )?;
        let online = ctx.online.data().lock().expect("var map poisoned");
        let mut pairs = Vec::new();
        for (name, t) in params::named_vars(&map) {
            let o = online.get(&name).ok_or_else(|| {
                Error::invalid("momentum target", format!("online network has no {name}"))
            })?;
            t.set(o.as_tensor())?;
            if !name.ends_with("running_mean") && !name.ends_with("running_var") {
                pairs.push((t, o.clone()));
            }
        }
        Ok(Self {
            map,
            backbone,
            projector,
            pairs,
            base,
            cosine,
        })
    }

    /// The momentum at `step` of `total`: `base`, or with the cosine
    /// schedule of BYOL `1 - (1 - base) * (cos(pi * step / total) + 1) / 2`.
    pub fn momentum(&self, step: u64, total: u64) -> f64 {
        if !self.cosine || total == 0 {
            return self.base;
        }
        let t = (step as f64 / total as f64).min(1.0);
        1.0 - (1.0 - self.base) * ((std::f64::consts::PI * t).cos() + 1.0) / 2.0
    }

    /// target = m * target + (1 - m) * online, for every trainable pair.
    pub fn update(&self, m: f64) -> Result<()> {
        for (t, o) in &self.pairs {
            let next = ((t.as_tensor() * m)? + (o.as_tensor().detach() * (1.0 - m))?)?;
            t.set(&next)?;
        }
        Ok(())
    }

    /// Projections of `x` by the target, detached.
    pub fn project(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.backbone.forward_t(x, train)?;
        Ok(self.projector.forward_t(&h, train)?.detach())
    }

    /// The target's variables (for tests and inspection).
    pub fn vars(&self) -> &VarMap {
        &self.map
    }
}
