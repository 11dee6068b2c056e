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
mod mlp;
mod momentum;
#[cfg(test)]
mod tests;

use mlp::projector_dims;
pub use mlp::Mlp;
pub use momentum::MomentumTarget;

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use rand::Rng as _;
use selfsup_backbones::Backbone;
use selfsup_core::{rng, Error, Normalization, Result};
use selfsup_data::batch;
use selfsup_objective::{Objective, ObjectiveContext};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
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

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        if let Some(t) = &self.target {
            for (name, var) in t.named_vars() {
                out.push((format!("target.{name}"), var.as_tensor().copy()?));
            }
        }
        if let Some(q) = &self.queue {
            let q = q.lock().expect("queue poisoned");
            out.push(("queue.keys".into(), q.keys.copy()?));
            let next = Tensor::new(&[q.next as u32], &Device::Cpu)?;
            out.push(("queue.next".into(), next));
        }
        Ok(out)
    }

    fn restore_state(&self, saved: &HashMap<String, Tensor>) -> Result<()> {
        let get = |name: &str| {
            saved.get(name).ok_or_else(|| {
                Error::invalid("checkpoint", format!("the saved state lacks {name}"))
            })
        };
        if let Some(t) = &self.target {
            for (name, var) in t.named_vars() {
                let v = get(&format!("target.{name}"))?;
                var.set(&v.to_device(var.device())?)?;
            }
        }
        if let Some(q) = &self.queue {
            let mut q = q.lock().expect("queue poisoned");
            q.keys = get("queue.keys")?.to_device(q.keys.device())?;
            q.next = get("queue.next")?.to_vec1::<u32>()?[0] as usize;
        }
        Ok(())
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
