//! The settings of each pretraining method: one TOML section per method
//! (`[methods.rotation]`, `[methods.simclr]`, ...), each with its own
//! schedule and the knobs only that method has.

use super::ViewAugment;
use crate::contrastive::SiameseConfig;
use crate::core::{Error, Result};
use crate::pretext::{ColorizationConfig, InpaintConfig, MaeConfig, PretextSettings};
use serde::{Deserialize, Serialize};

/// How long and how fast one method pretrains.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Maximum epochs (early stopping may end sooner).
    pub epochs: usize,
    /// Source images per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Epochs without a lower held-out pretext loss before stopping.
    pub patience: usize,
}

/// Rotation prediction (Gidaris et al. 2018): each image is shown at 0, 90,
/// 180 and 270 degrees and the encoder learns to tell which.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RotationSettings {
    /// Maximum epochs (early stopping may end sooner).
    pub epochs: usize,
    /// Source images per step (each is shown four times).
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Epochs without a lower held-out loss before stopping.
    pub patience: usize,
}

impl Default for RotationSettings {
    fn default() -> Self {
        Self {
            epochs: 3,
            batch: 64,
            lr: 1e-3,
            patience: 2,
        }
    }
}

/// `[methods.jigsaw]`: jigsaw puzzles — each image's tiles are shown in
/// one of a fixed set of orders and the encoder learns to tell which
/// (2x2 tiles below 48 pixels a side, 3x3 from there).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JigsawSettings {
    /// Maximum epochs (early stopping may end sooner).
    pub epochs: usize,
    /// Source images per step (each becomes 4 or 9 tiles).
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Epochs without a lower held-out loss before stopping.
    pub patience: usize,
}

impl Default for JigsawSettings {
    fn default() -> Self {
        Self {
            epochs: 3,
            batch: 64,
            lr: 1e-3,
            patience: 2,
        }
    }
}

/// `[methods.mae]`: masked autoencoding on the ViT — the encoder sees a
/// random quarter of each image's patches and a light decoder
/// reconstructs the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaeSettings {
    /// Maximum epochs (early stopping may end sooner).
    pub epochs: usize,
    /// Images per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Epochs without a lower held-out loss before stopping.
    pub patience: usize,
    /// Share of each image's patches hidden from the encoder.
    pub mask_ratio: f64,
    /// Decoder token width (a multiple of 4 and of `decoder_heads`).
    pub decoder_dim: usize,
    /// Decoder transformer blocks.
    pub decoder_depth: usize,
    /// Decoder attention heads.
    pub decoder_heads: usize,
    /// Reconstruct pixels normalised per patch (MAE's default).
    pub norm_pix_loss: bool,
}

impl Default for MaeSettings {
    fn default() -> Self {
        let c = MaeConfig::default();
        Self {
            epochs: 10,
            batch: 128,
            lr: 1e-3,
            patience: 3,
            mask_ratio: c.mask_ratio,
            decoder_dim: c.decoder_dim,
            decoder_depth: c.decoder_depth,
            decoder_heads: c.decoder_heads,
            norm_pix_loss: c.norm_pix_loss,
        }
    }
}

impl MaeSettings {
    /// The objective's settings.
    pub fn config(&self) -> MaeConfig {
        MaeConfig {
            mask_ratio: self.mask_ratio,
            decoder_dim: self.decoder_dim,
            decoder_depth: self.decoder_depth,
            decoder_heads: self.decoder_heads,
            norm_pix_loss: self.norm_pix_loss,
        }
    }
}

/// `[methods.inpaint]`: masked-patch inpainting for convolutional
/// backbones — patches of each input are blanked out and a light head on
/// the last feature map predicts their pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InpaintSettings {
    /// Maximum epochs (early stopping may end sooner).
    pub epochs: usize,
    /// Images per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Epochs without a lower held-out loss before stopping.
    pub patience: usize,
    /// Side of the square mask patches, in pixels.
    pub mask_patch: usize,
    /// Share of each image's patches masked.
    pub mask_ratio: f64,
}

impl Default for InpaintSettings {
    fn default() -> Self {
        let c = InpaintConfig::default();
        Self {
            epochs: 5,
            batch: 64,
            lr: 1e-3,
            patience: 2,
            mask_patch: c.mask_patch,
            mask_ratio: c.mask_ratio,
        }
    }
}

impl InpaintSettings {
    /// The objective's settings.
    pub fn config(&self) -> InpaintConfig {
        InpaintConfig {
            mask_patch: self.mask_patch,
            mask_ratio: self.mask_ratio,
        }
    }
}

/// `[methods.colorization]`: the encoder sees the lightness of colour
/// images and predicts their quantised ab colour, with class rebalancing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ColorizationSettings {
    /// Maximum epochs (early stopping may end sooner).
    pub epochs: usize,
    /// Images per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Epochs without a lower held-out loss before stopping.
    pub patience: usize,
    /// λ of the class rebalancing (0: inverse frequency, 1: none).
    pub rebalance: f64,
}

impl Default for ColorizationSettings {
    fn default() -> Self {
        Self {
            epochs: 5,
            batch: 64,
            lr: 1e-3,
            patience: 2,
            rebalance: ColorizationConfig::default().rebalance,
        }
    }
}

impl ColorizationSettings {
    /// The objective's settings.
    pub fn config(&self) -> ColorizationConfig {
        ColorizationConfig {
            rebalance: self.rebalance,
        }
    }
}

/// The projection MLP every two-view method puts on the encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Projector {
    /// Hidden width.
    pub hidden: usize,
    /// Output width (the embedding the loss sees).
    pub dim: usize,
    /// Hidden layers (1: Linear-ReLU-Linear).
    pub layers: usize,
}

impl Default for Projector {
    fn default() -> Self {
        let d = SiameseConfig::default();
        Self {
            hidden: d.proj_hidden,
            dim: d.proj_dim,
            layers: d.proj_layers,
        }
    }
}

/// Declares the settings type of a two-view method: the schedule, the view
/// augmentation and the projector every such method has, then its own
/// fields, with `apply` writing them into the shared [`SiameseConfig`].
macro_rules! two_view_settings {
    (
        $(#[$doc:meta])*
        $name:ident {
            $( $(#[$fdoc:meta])* $field:ident : $ty:ty = $default:expr ),* $(,)?
        }
        apply($s:ident, $cfg:ident) $apply:block
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            /// Maximum epochs (early stopping on the held-out loss of fixed
            /// views may end sooner).
            pub epochs: usize,
            /// Source images per step (each is seen as two views).
            pub batch: usize,
            /// Peak learning rate.
            pub lr: f64,
            /// Epochs without a lower held-out loss before stopping.
            pub patience: usize,
            /// How the views are made: `auto` (`simclr-mnist` for gray
            /// images up to 28 pixels, else `simclr-cifar`), a preset name,
            /// or a pipeline.
            pub view_augment: ViewAugment,
            /// The projection MLP.
            pub projector: Projector,
            $( $(#[$fdoc])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self {
                    epochs: 8,
                    batch: 256,
                    lr: 2e-3,
                    patience: 5,
                    view_augment: ViewAugment::auto(),
                    projector: Projector::default(),
                    $( $field: $default, )*
                }
            }
        }

        impl $name {
            /// Its schedule.
            pub fn schedule(&self) -> Schedule {
                Schedule {
                    epochs: self.epochs,
                    batch: self.batch,
                    lr: self.lr,
                    patience: self.patience,
                }
            }

            /// The contrastive crate's settings with this section's values.
            pub fn siamese(&self) -> SiameseConfig {
                let mut $cfg = SiameseConfig {
                    proj_hidden: self.projector.hidden,
                    proj_dim: self.projector.dim,
                    proj_layers: self.projector.layers,
                    ..SiameseConfig::default()
                };
                let $s = self;
                $apply
                $cfg
            }
        }
    };
}

two_view_settings! {
    /// SimCLR (Chen et al. 2020): NT-Xent between the two views' projections.
    SimclrSettings {
        /// NT-Xent temperature.
        temperature: f64 = SiameseConfig::default().temperature,
        /// BatchNorm after the projector's hidden layers (SimCLR v2).
        projector_batch_norm: bool = SiameseConfig::default().proj_batch_norm,
    }
    apply(s, cfg) {
        cfg.temperature = s.temperature;
        cfg.proj_batch_norm = s.projector_batch_norm;
    }
}

two_view_settings! {
    /// BYOL (Grill et al. 2020): a predictor chases a momentum target.
    ByolSettings {
        /// Hidden width of the predictor.
        predictor_hidden: usize = SiameseConfig::default().pred_hidden,
        /// Base EMA momentum of the target (raised to 1 along a cosine).
        ema_momentum: f64 = SiameseConfig::default().ema_momentum,
    }
    apply(s, cfg) {
        cfg.pred_hidden = s.predictor_hidden;
        cfg.ema_momentum = s.ema_momentum;
    }
}

two_view_settings! {
    /// SimSiam (Chen & He 2021): BYOL without the momentum target.
    SimsiamSettings {
        /// Hidden width of the predictor.
        predictor_hidden: usize = SiameseConfig::default().pred_hidden,
    }
    apply(s, cfg) {
        cfg.pred_hidden = s.predictor_hidden;
    }
}

two_view_settings! {
    /// Barlow Twins (Zbontar et al. 2021): the views' cross-correlation
    /// pulled towards the identity.
    BarlowSettings {
        /// Weight of the off-diagonal terms.
        lambda: f64 = SiameseConfig::default().barlow_lambda,
    }
    apply(s, cfg) {
        cfg.barlow_lambda = s.lambda;
    }
}

two_view_settings! {
    /// VICReg (Bardes et al. 2022): invariance, variance and covariance.
    VicregSettings {
        /// Weight of the invariance term.
        invariance: f64 = 25.0,
        /// Weight of the variance hinge.
        variance: f64 = 25.0,
        /// Weight of the covariance term.
        covariance: f64 = 1.0,
    }
    apply(s, cfg) {
        cfg.vicreg.invariance = s.invariance;
        cfg.vicreg.variance = s.variance;
        cfg.vicreg.covariance = s.covariance;
    }
}

two_view_settings! {
    /// MoCo v2 (Chen et al. 2020): InfoNCE against a queue of momentum keys.
    MocoSettings {
        /// InfoNCE temperature.
        temperature: f64 = SiameseConfig::default().moco_temperature,
        /// Negatives kept in the queue.
        queue_size: usize = SiameseConfig::default().queue_size,
        /// EMA momentum of the key encoder.
        ema_momentum: f64 = SiameseConfig::default().ema_momentum,
    }
    apply(s, cfg) {
        cfg.moco_temperature = s.temperature;
        cfg.queue_size = s.queue_size;
        cfg.ema_momentum = s.ema_momentum;
    }
}

/// `schedule()` for the pretext tasks' sections, whose first four fields
/// are the schedule's.
macro_rules! pretext_schedule {
    ($($name:ident),*) => {$(
        impl $name {
            /// Its schedule.
            pub fn schedule(&self) -> Schedule {
                Schedule {
                    epochs: self.epochs,
                    batch: self.batch,
                    lr: self.lr,
                    patience: self.patience,
                }
            }
        }
    )*};
}

pretext_schedule!(
    RotationSettings,
    JigsawSettings,
    MaeSettings,
    InpaintSettings,
    ColorizationSettings
);

/// One section per method; each is read only when the method runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MethodsSpec {
    /// `rotation`.
    pub rotation: RotationSettings,
    /// `jigsaw`.
    pub jigsaw: JigsawSettings,
    /// `mae`.
    pub mae: MaeSettings,
    /// `inpaint`.
    pub inpaint: InpaintSettings,
    /// `colorization`.
    pub colorization: ColorizationSettings,
    /// `simclr`.
    pub simclr: SimclrSettings,
    /// `byol`.
    pub byol: ByolSettings,
    /// `simsiam`.
    pub simsiam: SimsiamSettings,
    /// `barlow`.
    pub barlow: BarlowSettings,
    /// `vicreg`.
    pub vicreg: VicregSettings,
    /// `moco`.
    pub moco: MocoSettings,
}

/// What the pipeline needs of one method's section.
pub struct MethodView<'a> {
    /// Its schedule.
    pub schedule: Schedule,
    /// The view augmentation (two-view methods only).
    pub view_augment: Option<&'a ViewAugment>,
    /// The two-view settings (the defaults for a pretext task, which reads
    /// none of them).
    pub siamese: SiameseConfig,
    /// The pretext tasks' settings (the defaults for a two-view method,
    /// which reads none of them).
    pub pretext: PretextSettings,
}

impl MethodsSpec {
    /// The section of `method`, or an error naming the known methods.
    pub fn get(&self, method: &str) -> Result<MethodView<'_>> {
        let two = |schedule, view, siamese| MethodView {
            schedule,
            view_augment: Some(view),
            siamese,
            pretext: PretextSettings::default(),
        };
        let one = |schedule, pretext| MethodView {
            schedule,
            view_augment: None,
            siamese: SiameseConfig::default(),
            pretext,
        };
        Ok(match method {
            "rotation" => one(self.rotation.schedule(), PretextSettings::default()),
            "jigsaw" => one(self.jigsaw.schedule(), PretextSettings::default()),
            "mae" => one(
                self.mae.schedule(),
                PretextSettings {
                    mae: self.mae.config(),
                    ..PretextSettings::default()
                },
            ),
            "inpaint" => one(
                self.inpaint.schedule(),
                PretextSettings {
                    inpaint: self.inpaint.config(),
                    ..PretextSettings::default()
                },
            ),
            "colorization" => one(
                self.colorization.schedule(),
                PretextSettings {
                    colorization: self.colorization.config(),
                    ..PretextSettings::default()
                },
            ),
            "simclr" => two(
                self.simclr.schedule(),
                &self.simclr.view_augment,
                self.simclr.siamese(),
            ),
            "byol" => two(
                self.byol.schedule(),
                &self.byol.view_augment,
                self.byol.siamese(),
            ),
            "simsiam" => two(
                self.simsiam.schedule(),
                &self.simsiam.view_augment,
                self.simsiam.siamese(),
            ),
            "barlow" => two(
                self.barlow.schedule(),
                &self.barlow.view_augment,
                self.barlow.siamese(),
            ),
            "vicreg" => two(
                self.vicreg.schedule(),
                &self.vicreg.view_augment,
                self.vicreg.siamese(),
            ),
            "moco" => two(
                self.moco.schedule(),
                &self.moco.view_augment,
                self.moco.siamese(),
            ),
            other => {
                return Err(Error::invalid(
                    "pretrain.methods",
                    format!(
                        "unknown method {other:?}; available: {}",
                        crate::methods::names().join(", ")
                    ),
                ))
            }
        })
    }
}
