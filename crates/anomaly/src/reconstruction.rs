//! A reconstruction-error detector: a ViT and its masked-autoencoding
//! decoder ([`selfsup_pretext::Mae`]) trained on normal images only. An
//! image's `reconstruction` score is the mean squared error of its
//! reconstructed masked patches, averaged over [`MASKS`] random masks:
//! images unlike the training data are reconstructed worse. Its `knn`
//! score is the cosine kNN distance of the encoder's mean-pooled features
//! to the normal training images', as for the transformation detector.

use crate::detector::{knn_distances, l2_normalise, start_encoder, DetectorConfig, NormalImages};
use crate::Scores;
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use selfsup_backbones::checkpoint::{self, StageConfig, HEAD_PREFIX};
use selfsup_backbones::{Backbone, BackboneConfig, BuildBackbone};
use selfsup_core::train::{fit_prefetched, FitReport, FitRun, StageRun};
use selfsup_core::{params, rng, Error, Normalization, Result};
use selfsup_data::{batch, Dataset};
use selfsup_objective::{Objective, ObjectiveContext};
use selfsup_pretext::{Mae, MaeConfig};
use std::path::Path;
use std::sync::Arc;

/// Random masks averaged per scored image.
pub const MASKS: u64 = 4;

/// A trained masked-autoencoding detector.
pub struct MaeDetector {
    /// All variables (`backbone.*`, `head.*`: the decoder).
    pub map: VarMap,
    /// The ViT encoder.
    pub backbone: Box<dyn Backbone>,
    mae: Mae,
    /// The settings it was trained with (`transforms` unused).
    pub config: DetectorConfig,
    /// The backbone's configuration.
    pub backbone_config: BackboneConfig,
    /// Input normalisation.
    pub norm: Normalization,
    /// L2-normalised features of the normal training images, (N, D).
    normal_features: Tensor,
    /// The training history.
    pub report: FitReport,
    device: Device,
}

impl MaeDetector {
    /// Trains MAE (decoder settings `mae`) on the `normal` images, from
    /// `init` when given (see the transformation detector).
    pub fn train(
        cfg: &DetectorConfig,
        mae: &MaeConfig,
        (init, backbone_cfg): (Option<&Path>, &BackboneConfig),
        data: NormalImages,
        run: StageRun,
    ) -> Result<Self> {
        let StageRun {
            device,
            quiet,
            stage,
            checkpoint,
        } = run;
        if backbone_cfg.vit_patch_size().is_none() {
            return Err(Error::invalid(
                "--detector",
                format!(
                    "mae reconstructs ViT patches and needs --backbone vit, not {}",
                    backbone_cfg.name()
                ),
            ));
        }
        if data.indices.len() < 2 {
            return Err(Error::invalid(
                stage,
                format!(
                    "{} normal training images; need at least 2",
                    data.indices.len()
                ),
            ));
        }
        let seed = cfg.fit.seed;
        let (map, backbone, norm) = start_encoder(init, backbone_cfg, data, seed, device)?;
        let shape = data.ds.image_shape();
        let ctx = ObjectiveContext {
            backbone: Arc::new(backbone_cfg.clone()),
            feature_dim: backbone.feature_dim(),
            online: map.clone(),
            seed,
            device: device.clone(),
            image_shape: shape,
        };
        let vb = params::seeded_var_builder(&map, seed ^ 0x5eed_a0a1, device);
        let mae = Mae::new(mae.clone(), &ctx, vb.pp(HEAD_PREFIX))?;
        let pixels = data.ds.pixels_of(data.indices);
        let per = shape.0 * shape.1 * shape.2;
        let report = fit_prefetched(
            FitRun {
                cfg: &cfg.fit,
                stage,
                n_items: data.indices.len(),
                vars: params::trainable_vars(&map)
                    .into_iter()
                    .map(|(_, v)| v)
                    .collect(),
                map: &map,
                quiet,
                checkpoint,
            },
            |items, _| {
                Ok(items
                    .iter()
                    .flat_map(|&i| pixels[i * per..(i + 1) * per].iter().copied())
                    .collect::<Vec<u8>>())
            },
            |px: Vec<u8>, _| {
                let (loss, _, n) = mae.loss(backbone.as_ref(), &px, shape, &norm, true)?;
                Ok((loss, n))
            },
            None,
        )?;
        let mut det = Self {
            map,
            backbone,
            mae,
            config: cfg.clone(),
            backbone_config: backbone_cfg.clone(),
            norm,
            normal_features: Tensor::zeros((1, 1), candle_core::DType::F32, device)?,
            report,
            device: device.clone(),
        };
        let (_, feats) = det.sweep(&pixels, shape, false, "anomaly/fit")?;
        det.normal_features = feats;
        Ok(det)
    }

    /// Reconstruction errors (when `errors`) and L2-normalised features of
    /// the images in `pixels`, `eval_batch` at a time.
    fn sweep(
        &self,
        pixels: &[u8],
        shape: (usize, usize, usize),
        errors: bool,
        label: &str,
    ) -> Result<(Vec<f64>, Tensor)> {
        let per = shape.0 * shape.1 * shape.2;
        let n = pixels.len() / per;
        let chunk = self.config.eval_batch.max(1);
        let bar = selfsup_core::progress::eval_bar(n.div_ceil(chunk) as u64, label);
        let (mut err, mut feats) = (Vec::with_capacity(n), Vec::new());
        for start in (0..n).step_by(chunk) {
            bar.inc(1);
            let end = (start + chunk).min(n);
            let x = batch::to_tensor(
                &pixels[start * per..end * per],
                shape,
                &self.norm,
                &self.device,
            )?;
            feats.push(self.backbone.forward_t(&x, false)?.detach());
            if errors {
                let mut sum = vec![0f64; end - start];
                for m in 0..MASKS {
                    let seed = rng::derive_seed(self.config.fit.seed, "mae-anomaly-mask", m);
                    let e = self.mae.per_image_error(self.backbone.as_ref(), &x, seed)?;
                    sum.iter_mut().zip(e).for_each(|(s, v)| *s += v);
                }
                err.extend(sum.into_iter().map(|s| s / MASKS as f64));
            }
        }
        bar.finish_and_clear();
        Ok((err, l2_normalise(&Tensor::cat(&feats, 0)?)?))
    }

    /// The `reconstruction` and `knn` scores of the images `indices` of
    /// `ds` (the transformation scores stay empty).
    pub fn score(&self, ds: &Dataset, indices: &[usize]) -> Result<Scores> {
        let pixels = ds.pixels_of(indices);
        let (reconstruction, feats) =
            self.sweep(&pixels, ds.image_shape(), true, "anomaly/score")?;
        let k = self
            .config
            .knn_k
            .clamp(1, self.normal_features.dim(0)?.max(1));
        Ok(Scores {
            reconstruction,
            knn: knn_distances(&feats, &self.normal_features, k)?,
            ..Scores::default()
        })
    }

    /// Saves the detector (encoder and decoder) as a stage directory.
    pub fn save(&self, dir: &Path, dataset: &str, shape: (usize, usize, usize)) -> Result<()> {
        let cfg = StageConfig {
            stage: "anomaly".into(),
            method: "mae".into(),
            backbone: self.backbone_config.clone(),
            input_shape: [shape.0, shape.1, shape.2],
            normalization: self.norm.clone(),
            seed: self.config.fit.seed,
            dataset: dataset.into(),
            head_outputs: Some(self.mae.head_outputs()),
            recipe: serde_json::to_value(&self.config)
                .map_err(|e| Error::invalid("detector config", e.to_string()))?,
            metrics: serde_json::json!({ "train_loss": self.report.train_loss }),
        };
        checkpoint::save(dir, &self.map, &cfg)
    }
}
