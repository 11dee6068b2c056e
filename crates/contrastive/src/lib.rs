//! selfsup-contrastive pretrains an encoder by comparing two augmented
//! views of each image. Every method here is one [`Siamese`] objective: the
//! same two views (made by `selfsup-augment`'s view pipeline), the same
//! backbone pass over both views at once, the same projection MLP, and a
//! method-specific tail:
//!
//! | method | tail | loss |
//! |---|---|---|
//! | `simclr` | — | [`losses::nt_xent`] over the 2N-2 in-batch negatives |
//! | `byol` | predictor, EMA target network | `2 + 2 *` [`losses::negative_cosine`] to the target's projection |
//! | `simsiam` | predictor, stop-gradient | [`losses::negative_cosine`] to the other view's (stopped) projection |
//! | `barlow` | — | [`losses::barlow_twins`] |
//! | `vicreg` | — | [`losses::vicreg`] |
//! | `moco` | EMA key encoder, queue of negatives | [`losses::info_nce_queue`] |
//!
//! BYOL, SimSiam and MoCo are symmetrised (each view is once the online and
//! once the target side), as in their reference implementations (MoCo v2
//! itself is not; MoCo v3 is). Target networks are [`MomentumTarget`]s:
//! their variables live outside the trained `VarMap`, so the optimiser never
//! sees them, and their outputs are detached.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use selfsup_contrastive::losses::nt_xent;
//! let z = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &Device::Cpu).unwrap();
//! // identical views: each anchor has similarity 1 to its partner, 0 to the two others
//! let loss = nt_xent(&z, &z, 1.0).unwrap().to_scalar::<f32>().unwrap();
//! assert!((loss - (1.0 + 2.0 / std::f32::consts::E).ln()).abs() < 1e-5);
//! ```

pub mod losses;

use candle_core::{Device, ModuleT, Tensor, Var};
use candle_nn::{BatchNorm, Linear, Module, VarBuilder, VarMap};
use rand::Rng as _;
use selfsup_backbones::checkpoint::{BACKBONE_PREFIX, HEAD_PREFIX};
use selfsup_backbones::Backbone;
use selfsup_core::{params, rng, Error, Normalization, Result};
use selfsup_data::batch;
use selfsup_objective::{Objective, ObjectiveContext};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// Method names, SimCLR first.
pub const NAMES: [&str; 6] = ["simclr", "byol", "simsiam", "barlow", "vicreg", "moco"];

/// Which tail a [`Siamese`] objective has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// SimCLR.
    SimClr,
    /// BYOL.
    Byol,
    /// SimSiam.
    SimSiam,
    /// Barlow Twins.
    Barlow,
    /// VICReg.
    Vicreg,
    /// MoCo v2.
    MoCo,
}

impl Method {
    /// Parses a name of [`NAMES`].
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "simclr" => Method::SimClr,
            "byol" => Method::Byol,
            "simsiam" => Method::SimSiam,
            "barlow" => Method::Barlow,
            "vicreg" => Method::Vicreg,
            "moco" => Method::MoCo,
            _ => return None,
        })
    }

    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Method::SimClr => "simclr",
            Method::Byol => "byol",
            Method::SimSiam => "simsiam",
            Method::Barlow => "barlow",
            Method::Vicreg => "vicreg",
            Method::MoCo => "moco",
        }
    }

    fn has_predictor(self) -> bool {
        matches!(self, Method::Byol | Method::SimSiam)
    }

    fn has_target(self) -> bool {
        matches!(self, Method::Byol | Method::MoCo)
    }

    /// Whether the projector puts BatchNorm after each hidden layer. BYOL,
    /// SimSiam, Barlow Twins and VICReg need it against collapse; SimCLR
    /// follows `cfg.proj_batch_norm` (SimCLR v2 and solo-learn use it); MoCo
    /// never does, because its queries and keys come from the same batch
    /// and batch statistics would leak the positive (the reason for MoCo's
    /// shuffled BN).
    fn projector_batch_norm(self, cfg: &SiameseConfig) -> bool {
        match self {
            Method::MoCo => false,
            Method::SimClr => cfg.proj_batch_norm,
            _ => true,
        }
    }
}

/// The numbers of every method (each reads the ones it needs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SiameseConfig {
    /// Hidden width of the projection MLP.
    pub proj_hidden: usize,
    /// Output width of the projection MLP (the embedding the loss sees).
    pub proj_dim: usize,
    /// Hidden layers of the projection MLP (1: Linear-ReLU-Linear).
    pub proj_layers: usize,
    /// BatchNorm after the projector's hidden layers for SimCLR.
    pub proj_batch_norm: bool,
    /// Hidden width of the BYOL / SimSiam predictor.
    pub pred_hidden: usize,
    /// NT-Xent temperature (SimCLR).
    pub temperature: f64,
    /// InfoNCE temperature (MoCo).
    pub moco_temperature: f64,
    /// Negatives kept in MoCo's queue.
    pub queue_size: usize,
    /// Base EMA momentum of target networks (BYOL, MoCo); BYOL raises it
    /// to 1 along a cosine schedule.
    pub ema_momentum: f64,
    /// Barlow Twins off-diagonal weight.
    pub barlow_lambda: f64,
    /// VICReg term weights.
    pub vicreg: losses::VicregWeights,
}

impl Default for SiameseConfig {
    fn default() -> Self {
        Self {
            proj_hidden: 256,
            proj_dim: 128,
            proj_layers: 1,
            proj_batch_norm: true,
            pred_hidden: 64,
            temperature: 0.2,
            moco_temperature: 0.2,
            queue_size: 2048,
            ema_momentum: 0.99,
            barlow_lambda: 5e-3,
            vicreg: losses::VicregWeights::default(),
        }
    }
}

/// A multi-layer perceptron: `hidden` layers of Linear (+ BatchNorm) + ReLU,
/// then a Linear. Parameters `{prefix}.{i}.weight`, `{prefix}.bn{i}.*`.
pub struct Mlp {
    layers: Vec<Linear>,
    norms: Vec<Option<BatchNorm>>,
}

impl Mlp {
    /// Widths `dims` = [input, hidden..., output].
    pub fn new(dims: &[usize], batch_norm: bool, vb: VarBuilder) -> Result<Self> {
        if dims.len() < 2 {
            return Err(Error::invalid("mlp", "needs at least input and output"));
        }
        let mut layers = Vec::new();
        let mut norms = Vec::new();
        for i in 0..dims.len() - 1 {
            let last = i + 2 == dims.len();
            layers.push(candle_nn::linear(
                dims[i],
                dims[i + 1],
                vb.pp(i.to_string()),
            )?);
            norms.push(if batch_norm && !last {
                Some(candle_nn::batch_norm(
                    dims[i + 1],
                    candle_nn::BatchNormConfig::default(),
                    vb.pp(format!("bn{i}")),
                )?)
            } else {
                None
            });
        }
        Ok(Self { layers, norms })
    }

    /// Forward; `train` picks BatchNorm's mode.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = x.clone();
        let n = self.layers.len();
        for (i, (l, bn)) in self.layers.iter().zip(&self.norms).enumerate() {
            h = l.forward(&h)?;
            if let Some(bn) = bn {
                h = bn.forward_t(&h, train)?;
            }
            if i + 1 < n {
                h = h.relu()?;
            }
        }
        Ok(h)
    }
}

fn projector_dims(feature_dim: usize, cfg: &SiameseConfig) -> Vec<usize> {
    let mut dims = vec![feature_dim];
    dims.extend(std::iter::repeat_n(cfg.proj_hidden, cfg.proj_layers.max(1)));
    dims.push(cfg.proj_dim);
    dims
}

/// A momentum ("target", "key") copy of the online backbone and projector:
/// its own variables, updated only by [`MomentumTarget::update`] as an
/// exponential moving average of the online ones.
pub struct MomentumTarget {
    map: VarMap,
    backbone: Box<dyn Backbone>,
    projector: Mlp,
    /// (target, online) pairs of trainable variables.
    pairs: Vec<(Var, Var)>,
    base: f64,
    cosine: bool,
}

impl MomentumTarget {
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
        let mut targets: Vec<(String, Var)> = map
            .data()
            .lock()
            .expect("var map poisoned")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        targets.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, t) in targets {
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

/// MoCo's queue of negative keys: a ring buffer of L2-normalised rows.
struct KeyQueue {
    keys: Tensor,
    next: usize,
}

/// A two-view objective: SimCLR, BYOL, SimSiam, Barlow Twins, VICReg or
/// MoCo v2 (see the crate docs).
pub struct Siamese {
    method: Method,
    cfg: SiameseConfig,
    projector: Mlp,
    predictor: Option<Mlp>,
    target: Option<MomentumTarget>,
    queue: Option<Mutex<KeyQueue>>,
    device: Device,
}

impl Siamese {
    /// Builds `method`'s head under `vb` (`projector.*`, `predictor.*`) and,
    /// for BYOL / MoCo, its momentum target.
    pub fn new(
        method: Method,
        cfg: &SiameseConfig,
        ctx: &ObjectiveContext,
        vb: VarBuilder,
    ) -> Result<Self> {
        let dims = projector_dims(ctx.feature_dim, cfg);
        let bn = method.projector_batch_norm(cfg);
        let projector = Mlp::new(&dims, bn, vb.pp("projector"))?;
        let predictor = if method.has_predictor() {
            Some(Mlp::new(
                &[cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim],
                true,
                vb.pp("predictor"),
            )?)
        } else {
            None
        };
        let target = if method.has_target() {
            Some(MomentumTarget::new(
                ctx,
                &dims,
                bn,
                cfg.ema_momentum,
                method == Method::Byol,
            )?)
        } else {
            None
        };
        let queue = if method == Method::MoCo {
            let mut r = rng::stream(ctx.seed, "moco-queue");
            let k = cfg.queue_size.max(1);
            let data: Vec<f32> = (0..k * cfg.proj_dim)
                .map(|_| r.random_range(-1.0f32..1.0))
                .collect();
            let keys =
                losses::l2_normalize(&Tensor::from_vec(data, (k, cfg.proj_dim), &ctx.device)?)?;
            Some(Mutex::new(KeyQueue { keys, next: 0 }))
        } else {
            None
        };
        Ok(Self {
            method,
            cfg: cfg.clone(),
            projector,
            predictor,
            target,
            queue,
            device: ctx.device.clone(),
        })
    }

    /// The momentum target, for BYOL and MoCo.
    pub fn target(&self) -> Option<&MomentumTarget> {
        self.target.as_ref()
    }

    /// The loss of two row-aligned batches of backbone inputs `x` (2N, C,
    /// H, W; first N the first views). Returns (loss, pair accuracy).
    pub fn loss_of_views(
        &self,
        backbone: &dyn Backbone,
        x: &Tensor,
        train: bool,
    ) -> Result<(Tensor, f64)> {
        let n2 = x.dim(0)?;
        if n2 < 4 || n2 % 2 == 1 {
            return Err(Error::invalid(
                self.method.name(),
                format!("needs two views of at least 2 images, got {n2} inputs"),
            ));
        }
        let n = n2 / 2;
        let h = backbone.forward_t(x, train)?;
        let z = self.projector.forward_t(&h, train)?;
        let (z1, z2) = (z.narrow(0, 0, n)?, z.narrow(0, n, n)?);
        let loss = match self.method {
            Method::SimClr => losses::nt_xent(&z1, &z2, self.cfg.temperature)?,
            Method::Barlow => losses::barlow_twins(&z1, &z2, self.cfg.barlow_lambda)?,
            Method::Vicreg => losses::vicreg(&z1, &z2, self.cfg.vicreg)?,
            Method::SimSiam => {
                let p = self
                    .predictor
                    .as_ref()
                    .expect("simsiam")
                    .forward_t(&z, train)?;
                let (p1, p2) = (p.narrow(0, 0, n)?, p.narrow(0, n, n)?);
                ((losses::negative_cosine(&p1, &z2)? + losses::negative_cosine(&p2, &z1)?)? * 0.5)?
            }
            Method::Byol => {
                let p = self
                    .predictor
                    .as_ref()
                    .expect("byol")
                    .forward_t(&z, train)?;
                let t = self.target.as_ref().expect("byol").project(x, train)?;
                let (p1, p2) = (p.narrow(0, 0, n)?, p.narrow(0, n, n)?);
                let (t1, t2) = (t.narrow(0, 0, n)?, t.narrow(0, n, n)?);
                let sym =
                    (losses::negative_cosine(&p1, &t2)? + losses::negative_cosine(&p2, &t1)?)?;
                // mean over both directions of 2 - 2 cos
                (sym + 2.0)?
            }
            Method::MoCo => {
                let q = losses::l2_normalize(&z)?;
                let k =
                    losses::l2_normalize(&self.target.as_ref().expect("moco").project(x, train)?)?;
                let (q1, q2) = (q.narrow(0, 0, n)?, q.narrow(0, n, n)?);
                let (k1, k2) = (k.narrow(0, 0, n)?, k.narrow(0, n, n)?);
                let mut queue = self
                    .queue
                    .as_ref()
                    .expect("moco")
                    .lock()
                    .expect("queue poisoned");
                let t = self.cfg.moco_temperature;
                let loss = ((losses::info_nce_queue(&q1, &k2, &queue.keys, t)?
                    + losses::info_nce_queue(&q2, &k1, &queue.keys, t)?)?
                    * 0.5)?;
                if train {
                    enqueue(&mut queue, &k)?;
                }
                loss
            }
        };
        let acc = losses::pair_retrieval_accuracy(&z1, &z2)?;
        Ok((loss, acc))
    }
}

/// Writes `keys` into the ring buffer, overwriting the oldest.
fn enqueue(queue: &mut KeyQueue, keys: &Tensor) -> Result<()> {
    let cap = queue.keys.dim(0)?;
    let keys = keys.detach();
    let n = keys.dim(0)?.min(cap);
    let mut written = 0;
    while written < n {
        let len = (cap - queue.next).min(n - written);
        let chunk = keys.narrow(0, written, len)?;
        queue.keys = queue
            .keys
            .slice_assign(&[queue.next..queue.next + len, 0..keys.dim(1)?], &chunk)?;
        queue.next = (queue.next + len) % cap;
        written += len;
    }
    Ok(())
}

impl Objective for Siamese {
    fn name(&self) -> &'static str {
        self.method.name()
    }

    fn head_outputs(&self) -> usize {
        self.cfg.proj_dim
    }

    fn views(&self) -> usize {
        2
    }

    fn before_step(&self, step: u64, total: u64) -> Result<()> {
        if let Some(t) = &self.target {
            // The first step trains from the copy made at construction.
            if step > 0 {
                t.update(t.momentum(step, total))?;
            }
        }
        Ok(())
    }

    fn loss(
        &self,
        backbone: &dyn Backbone,
        pixels: &[u8],
        shape: (usize, usize, usize),
        norm: &Normalization,
        train: bool,
    ) -> Result<(Tensor, f64, usize)> {
        let x = batch::to_tensor(pixels, shape, norm, &self.device)?;
        let images = x.dim(0)?;
        let (loss, acc) = self.loss_of_views(backbone, &x, train)?;
        Ok((loss, acc, images))
    }
}

/// Builds the named method (one of [`NAMES`]) for `ctx`'s backbone.
pub fn build(
    name: &str,
    cfg: &SiameseConfig,
    ctx: &ObjectiveContext,
    vb: VarBuilder,
) -> Result<Box<dyn Objective>> {
    let method = Method::from_name(name).ok_or_else(|| {
        Error::invalid(
            "--pretext",
            format!(
                "unknown contrastive method {name:?}; available: {}",
                NAMES.join(", ")
            ),
        )
    })?;
    Ok(Box::new(Siamese::new(method, cfg, ctx, vb)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfsup_backbones::BackboneConfig;

    fn tiny_cfg() -> SiameseConfig {
        SiameseConfig {
            proj_hidden: 16,
            proj_dim: 8,
            pred_hidden: 4,
            queue_size: 6,
            ..SiameseConfig::default()
        }
    }

    /// An online map with a tiny ConvNet and `method`'s head.
    fn setup(method: Method) -> (VarMap, Box<dyn Backbone>, Siamese) {
        let map = VarMap::new();
        let device = Device::Cpu;
        let vb = params::seeded_var_builder(&map, 3, &device);
        let bcfg = BackboneConfig::ConvNet {
            in_channels: 1,
            widths: vec![4, 8],
            convs_per_stage: 1,
        };
        let backbone = bcfg.build(vb.pp(BACKBONE_PREFIX)).unwrap();
        let ctx = ObjectiveContext {
            backbone: std::sync::Arc::new(bcfg),
            feature_dim: backbone.feature_dim(),
            online: map.clone(),
            seed: 3,
            device,
        };
        let obj = Siamese::new(method, &tiny_cfg(), &ctx, vb.pp(HEAD_PREFIX)).unwrap();
        (map, backbone, obj)
    }

    fn views(n: usize, seed: u64) -> Tensor {
        use rand::Rng as _;
        let mut r = rng::stream(seed, "views");
        let v: Vec<f32> = (0..2 * n * 64)
            .map(|_| r.random_range(-1.0f32..1.0))
            .collect();
        Tensor::from_vec(v, (2 * n, 1, 8, 8), &Device::Cpu).unwrap()
    }

    /// Two noisy copies of `n` random images: a learnable pairing.
    fn paired_views(n: usize, seed: u64) -> Tensor {
        let base = views(n, seed).narrow(0, 0, n).unwrap();
        let noise = (views(n, seed + 1).narrow(0, 0, n).unwrap() * 0.3).unwrap();
        Tensor::cat(&[&base, &(&base + noise).unwrap()], 0).unwrap()
    }

    fn abs_sum(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn every_online_parameter_gets_a_gradient_and_no_target_does() {
        for name in NAMES {
            let method = Method::from_name(name).unwrap();
            let (map, backbone, obj) = setup(method);
            let (loss, acc) = obj
                .loss_of_views(backbone.as_ref(), &views(6, 1), true)
                .unwrap();
            let value = loss.to_scalar::<f32>().unwrap();
            assert!(value.is_finite(), "{name}: loss {value}");
            assert!((0.0..=1.0).contains(&acc));
            let grads = loss.backward().unwrap();
            for (pname, var) in params::trainable_vars(&map) {
                let g = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("{name}: {pname} gets no gradient"));
                assert!(abs_sum(g) > 0.0, "{name}: {pname} has a zero gradient");
            }
            if let Some(target) = obj.target() {
                let tvars = target.vars().all_vars();
                assert!(!tvars.is_empty());
                for v in tvars {
                    assert!(
                        grads.get(v.as_tensor()).is_none(),
                        "{name}: a target variable got a gradient"
                    );
                }
            }
            assert_eq!(method.has_target(), obj.target().is_some(), "{name}");
        }
    }

    #[test]
    fn ema_update_blends_online_into_target() {
        let (map, _backbone, obj) = setup(Method::Byol);
        let target = obj.target().unwrap();
        // The copy starts equal to the online network.
        for (t, o) in &target.pairs {
            assert_eq!(
                abs_sum(&(t.as_tensor() - o.as_tensor()).unwrap()),
                0.0,
                "target starts as a copy"
            );
        }
        let before: Vec<Tensor> = target
            .pairs
            .iter()
            .map(|(t, _)| t.as_tensor().copy().unwrap())
            .collect();
        // Move the online weights, then blend with m = 0.9.
        for (_, v) in params::trainable_vars(&map) {
            v.set(&(v.as_tensor() + 1.0).unwrap()).unwrap();
        }
        target.update(0.9).unwrap();
        for ((t, o), b) in target.pairs.iter().zip(&before) {
            let want = ((b * 0.9).unwrap() + (o.as_tensor() * 0.1).unwrap()).unwrap();
            assert!(abs_sum(&(t.as_tensor() - want).unwrap()) < 1e-4);
        }
        // Cosine schedule: base at the start, 1 at the end, monotone.
        assert!((target.momentum(0, 100) - 0.99).abs() < 1e-12);
        assert!((target.momentum(100, 100) - 1.0).abs() < 1e-12);
        assert!(target.momentum(50, 100) > target.momentum(10, 100));
        let (_, _, moco) = setup(Method::MoCo);
        assert_eq!(
            moco.target().unwrap().momentum(50, 100),
            0.99,
            "MoCo keeps m fixed"
        );
    }

    fn queue_keys(obj: &Siamese) -> Tensor {
        let q = obj.queue.as_ref().unwrap().lock().unwrap();
        q.keys.copy().unwrap()
    }

    #[test]
    fn moco_queue_takes_the_newest_keys_in_a_ring() {
        let (_, backbone, obj) = setup(Method::MoCo);
        let before = queue_keys(&obj);
        obj.loss_of_views(backbone.as_ref(), &views(2, 1), false)
            .unwrap();
        let after_eval = queue_keys(&obj);
        assert_eq!(
            abs_sum(&(&before - &after_eval).unwrap()),
            0.0,
            "evaluation leaves the queue alone"
        );
        obj.loss_of_views(backbone.as_ref(), &views(2, 1), true)
            .unwrap();
        let q = obj.queue.as_ref().unwrap().lock().unwrap();
        assert_eq!(q.next, 4, "2 images x 2 views enqueued");
        let rows = q.keys.to_vec2::<f32>().unwrap();
        let old = before.to_vec2::<f32>().unwrap();
        assert_ne!(rows[0], old[0]);
        assert_eq!(rows[4], old[4], "older entries survive");
        for r in &rows {
            let norm: f32 = r.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "keys are unit vectors");
        }
        drop(q);
        let mut q = KeyQueue {
            keys: before.clone(),
            next: 4,
        };
        let keys = losses::l2_normalize(
            &views(2, 5)
                .flatten_from(1)
                .unwrap()
                .narrow(1, 0, 8)
                .unwrap(),
        )
        .unwrap();
        enqueue(&mut q, &keys).unwrap();
        assert_eq!(q.next, 2, "4 keys from slot 4 of 6 wrap to slot 2");
        let rows = q.keys.to_vec2::<f32>().unwrap();
        assert_eq!(rows[0], keys.to_vec2::<f32>().unwrap()[2]);
    }

    #[test]
    fn simclr_training_lowers_its_loss_on_a_fixed_batch() {
        let (map, backbone, obj) = setup(Method::SimClr);
        let x = paired_views(8, 2);
        let mut tr = selfsup_core::train::Trainer::new(
            map.all_vars(),
            selfsup_core::train::LrSchedule::new(1e-2, 0, 40),
            0.0,
            "test",
        )
        .unwrap();
        let first = obj.loss_of_views(backbone.as_ref(), &x, true).unwrap().0;
        let first = first.to_scalar::<f32>().unwrap();
        for _ in 0..40 {
            let (loss, _) = obj.loss_of_views(backbone.as_ref(), &x, true).unwrap();
            tr.step(&loss).unwrap();
        }
        let (last, acc) = obj.loss_of_views(backbone.as_ref(), &x, true).unwrap();
        let last = last.to_scalar::<f32>().unwrap();
        assert!(last < first - 0.3, "{first} -> {last}");
        assert!(acc > 0.8, "pairs retrieved {acc}");
    }

    #[test]
    fn odd_or_tiny_batches_are_refused() {
        let (_, backbone, obj) = setup(Method::SimClr);
        let x = views(1, 1);
        let err = obj
            .loss_of_views(backbone.as_ref(), &x, true)
            .err()
            .unwrap();
        assert!(err.to_string().contains("at least 2 images"), "{err}");
        assert!(build(
            "dino",
            &tiny_cfg(),
            &ObjectiveContext {
                backbone: std::sync::Arc::new(BackboneConfig::ConvNet {
                    in_channels: 1,
                    widths: vec![4],
                    convs_per_stage: 1
                }),
                feature_dim: 4,
                online: VarMap::new(),
                seed: 0,
                device: Device::Cpu,
            },
            params::seeded_var_builder(&VarMap::new(), 0, &Device::Cpu)
        )
        .is_err());
    }
}
