//! A transformation-prediction detector: backbone + T-way head trained on
//! normal images only, then its anomaly scores (higher = more anomalous).

use crate::dirichlet::Dirichlet;
use crate::pixels::PixelNeighbours;
use crate::transforms::{transform_batch, TransformSet, Transformation};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Linear, VarMap};
use selfsup_backbones::checkpoint::{self, StageConfig, BACKBONE_PREFIX, HEAD_PREFIX};
use selfsup_backbones::{Backbone, BackboneConfig};
use selfsup_core::train::{fit_prefetched, FitConfig, FitReport, FitRun, StageRun};
use selfsup_core::{params, Error, Normalization, Result};
use selfsup_data::{batch, Dataset};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Score names, in report order.
pub const SCORES: [&str; 7] = [
    "nll",
    "dirichlet",
    "knn",
    "knn-all",
    "pixel-knn",
    "knn-all+pixel",
    "reconstruction",
];

/// How a detector is trained and scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorConfig {
    /// Which transformations the head predicts.
    pub transforms: TransformSet,
    /// Optimisation over (normal image, transformation) pairs: one epoch
    /// shows every normal image under every transformation once.
    pub fit: FitConfig,
    /// Images per forward pass when scoring.
    pub eval_batch: usize,
    /// Neighbours averaged by the kNN score.
    pub knn_k: usize,
    /// Weight of `pixel-knn` in the `knn-all+pixel` score.
    #[serde(default = "default_pixel_weight")]
    pub pixel_weight: f64,
    /// Standard deviation (pixels) of the Gaussian blur before the
    /// `pixel-knn` distance; 0 = none.
    #[serde(default = "default_pixel_blur")]
    pub pixel_blur: f64,
}

/// The `knn-all+pixel` score's pixel weight when none is given: chosen on
/// the one-class Fashion-MNIST development split (docs/anomaly.md).
pub const DEFAULT_PIXEL_WEIGHT: f64 = 3.0;

fn default_pixel_weight() -> f64 {
    DEFAULT_PIXEL_WEIGHT
}

/// The `pixel-knn` blur when none is given: chosen on the one-class
/// Fashion-MNIST development split (docs/anomaly.md).
pub const DEFAULT_PIXEL_BLUR: f64 = 1.0;

fn default_pixel_blur() -> f64 {
    DEFAULT_PIXEL_BLUR
}

/// The scores of a set of images, one value per image each.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Summed negative log-probability of the applied transformation over
    /// all T transformed copies.
    pub nll: Vec<f64>,
    /// Negative Dirichlet log-likelihood of the T softmax vectors under the
    /// per-transformation Dirichlets fitted on the normal training images.
    pub dirichlet: Vec<f64>,
    /// Mean cosine distance of the untransformed image's features to its
    /// k nearest normal training images.
    pub knn: Vec<f64>,
    /// The same over all T transformed copies at once: one minus the mean,
    /// over the k nearest normal training images, of the average cosine
    /// similarity between the image's and the neighbour's features under
    /// each transformation (neighbours chosen on that average).
    #[serde(default)]
    pub knn_all: Vec<f64>,
    /// Mean Euclidean distance, in normalised pixel space, to the k nearest
    /// normal training images ([`crate::pixels`]).
    #[serde(default)]
    pub pixel_knn: Vec<f64>,
    /// `ln knn-all + w ln pixel-knn`: both distances at once, each as a
    /// ratio (so neither one's units matter), the pixel one weighted by
    /// [`DetectorConfig::pixel_weight`].
    #[serde(default)]
    pub knn_all_pixel: Vec<f64>,
    /// Masked-autoencoding detectors: the mean squared error of the
    /// reconstructed masked patches, averaged over several random masks.
    #[serde(default)]
    pub reconstruction: Vec<f64>,
}

impl Scores {
    /// The score called `name` (one of [`SCORES`]).
    pub fn get(&self, name: &str) -> Result<&[f64]> {
        match name {
            "nll" => Ok(&self.nll),
            "dirichlet" => Ok(&self.dirichlet),
            "knn" => Ok(&self.knn),
            "knn-all" => Ok(&self.knn_all),
            "pixel-knn" => Ok(&self.pixel_knn),
            "knn-all+pixel" => Ok(&self.knn_all_pixel),
            "reconstruction" => Ok(&self.reconstruction),
            other => Err(Error::invalid(
                "--score",
                format!("unknown score {other:?}; available: {}", SCORES.join(", ")),
            )),
        }
    }
}

/// A trained detector.
pub struct Detector {
    /// All variables (`backbone.*`, `head.*`).
    pub map: VarMap,
    /// The encoder.
    pub backbone: Box<dyn Backbone>,
    head: Linear,
    /// The transformations, identity first.
    pub list: Vec<Transformation>,
    /// The settings it was trained with.
    pub config: DetectorConfig,
    /// The backbone's configuration.
    pub backbone_config: BackboneConfig,
    /// Input normalisation.
    pub norm: Normalization,
    /// One fitted Dirichlet per transformation.
    pub dirichlet: Vec<Dirichlet>,
    /// L2-normalised features of the normal training images, (N, D).
    normal_features: Tensor,
    /// Features of every transformed copy of the normal training images,
    /// each copy's L2-normalised and the T copies concatenated and scaled
    /// by 1/sqrt(T), (N, T·D): a dot product of two rows is the average
    /// per-transformation cosine similarity.
    normal_features_all: Tensor,
    /// The normal training images' pixels, for the `pixel-knn` score.
    normal_pixels: PixelNeighbours,
    /// Accuracy of the transformation head on the normal training images.
    pub train_accuracy: f64,
    /// The training history.
    pub report: FitReport,
    device: Device,
}

/// The normal images a detector trains on.
#[derive(Clone, Copy)]
pub struct NormalImages<'a> {
    /// The dataset.
    pub ds: &'a Dataset,
    /// Its normal training images.
    pub indices: &'a [usize],
    /// The input normalisation (replaced by a pretrained stage's own).
    pub norm: &'a Normalization,
}

/// Per-batch outputs of the network on transformed images.
struct Forward {
    /// Log-softmax over transformations, (B, T) row-major.
    log_probs: Vec<f32>,
    /// Backbone features, (B, D).
    features: Tensor,
}

impl Detector {
    /// Trains a detector on the `normal` images of `ds`. With `init`, the
    /// backbone starts from that stage directory (its config must match
    /// `backbone_cfg`, and its normalisation replaces `norm`).
    pub fn train(
        cfg: &DetectorConfig,
        init: Option<&Path>,
        backbone_cfg: &BackboneConfig,
        data: NormalImages,
        run: StageRun,
    ) -> Result<Self> {
        let NormalImages {
            ds,
            indices: normal,
            ..
        } = data;
        let StageRun {
            device,
            quiet,
            stage,
            checkpoint,
        } = run;
        if normal.len() < 2 {
            return Err(Error::invalid(
                stage,
                format!("{} normal training images; need at least 2", normal.len()),
            ));
        }
        let seed = cfg.fit.seed;
        let (map, backbone, norm) = start_encoder(init, backbone_cfg, data, seed, device)?;
        let list = cfg.transforms.list();
        let t = list.len();
        let vb = params::seeded_var_builder(&map, seed ^ 0x5eed_a0a1, device);
        let head = candle_nn::linear(backbone.feature_dim(), t, vb.pp(HEAD_PREFIX))?;
        let shape = ds.image_shape();
        let pixels = ds.pixels_of(normal);
        let report = {
            let (list, pixels, head, backbone) = (&list, &pixels, &head, &backbone);
            fit_prefetched(
                FitRun {
                    cfg: &cfg.fit,
                    stage,
                    n_items: normal.len() * t,
                    vars: params::trainable_vars(&map)
                        .into_iter()
                        .map(|(_, v)| v)
                        .collect(),
                    map: &map,
                    quiet,
                    checkpoint,
                },
                |items, _| {
                    let pairs: Vec<(usize, usize)> =
                        items.iter().map(|&k| (k / t, k % t)).collect();
                    let px = transform_batch(pixels, shape, list, &pairs);
                    let y: Vec<u32> = pairs.iter().map(|&(_, tt)| tt as u32).collect();
                    Ok((px, y))
                },
                |(px, y): (Vec<u8>, Vec<u32>), _| {
                    let x = batch::to_tensor(&px, shape, &norm, device)?;
                    let labels = Tensor::from_vec(y.clone(), y.len(), device)?;
                    let logits = head.forward(&backbone.forward_t(&x, true)?)?;
                    let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
                    Ok((loss, y.len()))
                },
                None,
            )?
        };
        let normal_pixels = PixelNeighbours::new(&pixels, shape, &norm, cfg.pixel_blur, device)?;
        let mut det = Self {
            map,
            backbone,
            head,
            list,
            config: cfg.clone(),
            backbone_config: backbone_cfg.clone(),
            norm,
            dirichlet: Vec::new(),
            normal_features: Tensor::zeros((1, 1), DType::F32, device)?,
            normal_features_all: Tensor::zeros((1, 1), DType::F32, device)?,
            normal_pixels,
            train_accuracy: 0.0,
            report,
            device: device.clone(),
        };
        det.fit_normal_statistics(&pixels, shape)?;
        Ok(det)
    }

    /// Eval-mode log-probabilities and features of `pairs` (image index into
    /// `pixels`, transformation index).
    fn forward(
        &self,
        pixels: &[u8],
        shape: (usize, usize, usize),
        pairs: &[(usize, usize)],
    ) -> Result<Forward> {
        let px = transform_batch(pixels, shape, &self.list, pairs);
        let x = batch::to_tensor(&px, shape, &self.norm, &self.device)?;
        let features = self.backbone.forward_t(&x, false)?.detach();
        let logits = self.head.forward(&features)?;
        let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(Forward {
            log_probs,
            features,
        })
    }

    /// Runs every transformation of every image of `pixels` through the
    /// network, `eval_batch` transformed images at a time, and hands each
    /// chunk's (log-probabilities, identity features, all-copies features;
    /// see [`Detector::normal_features_all`]) to `visit`.
    fn sweep(
        &self,
        (pixels, shape): (&[u8], (usize, usize, usize)),
        label: &str,
        mut visit: impl FnMut(&[f32], Tensor, Tensor) -> Result<()>,
    ) -> Result<()> {
        let per = shape.0 * shape.1 * shape.2;
        let n = pixels.len() / per;
        let t = self.list.len();
        let images_per_chunk = (self.config.eval_batch / t).max(1);
        let bar = selfsup_core::progress::eval_bar(n.div_ceil(images_per_chunk) as u64, label);
        for start in (0..n).step_by(images_per_chunk) {
            bar.inc(1);
            let end = (start + images_per_chunk).min(n);
            let pairs: Vec<(usize, usize)> = (start..end)
                .flat_map(|i| (0..t).map(move |k| (i, k)))
                .collect();
            let out = self.forward(pixels, shape, &pairs)?;
            // Rows i*t (transformation 0, the identity) hold the plain images.
            let ids: Vec<u32> = (0..(end - start) as u32).map(|i| i * t as u32).collect();
            let ids = Tensor::from_vec(ids, end - start, &self.device)?;
            let identity = out.features.index_select(&ids, 0)?;
            visit(&out.log_probs, identity, all_copies(&out.features, t)?)?;
        }
        bar.finish_and_clear();
        Ok(())
    }

    /// Fits the per-transformation Dirichlets and stores the normal
    /// features for the kNN score.
    fn fit_normal_statistics(&mut self, pixels: &[u8], shape: (usize, usize, usize)) -> Result<()> {
        let t = self.list.len();
        let mut mean_log = vec![vec![0f64; t]; t];
        let mut mean_p = vec![vec![0f64; t]; t];
        let mut correct = 0usize;
        let (mut feats, mut feats_all) = (Vec::new(), Vec::new());
        let mut n = 0usize;
        self.sweep((pixels, shape), "anomaly/fit", |lp, f, f_all| {
            for row_i in 0..lp.len() / t {
                let k = row_i % t;
                let row = &lp[row_i * t..(row_i + 1) * t];
                for (j, &v) in row.iter().enumerate() {
                    mean_log[k][j] += f64::from(v);
                    mean_p[k][j] += f64::from(v).exp();
                }
                let arg = row
                    .iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .map_or(0, |(j, _)| j);
                correct += usize::from(arg == k);
            }
            n += lp.len() / (t * t);
            feats.push(f);
            feats_all.push(f_all);
            Ok(())
        })?;
        self.dirichlet = (0..t)
            .map(|k| {
                let ml: Vec<f64> = mean_log[k].iter().map(|v| v / n as f64).collect();
                let mp: Vec<f64> = mean_p[k].iter().map(|v| v / n as f64).collect();
                Dirichlet::fit(&ml, &mp)
            })
            .collect();
        self.train_accuracy = correct as f64 / (n * t) as f64;
        self.normal_features = l2_normalise(&Tensor::cat(&feats, 0)?)?;
        self.normal_features_all = Tensor::cat(&feats_all, 0)?;
        Ok(())
    }

    /// All the scores of the images `indices` of `ds`.
    pub fn score(&self, ds: &Dataset, indices: &[usize]) -> Result<Scores> {
        let t = self.list.len();
        let shape = ds.image_shape();
        let pixels = ds.pixels_of(indices);
        let mut s = Scores::default();
        let k = self
            .config
            .knn_k
            .clamp(1, self.normal_features.dim(0)?.max(1));
        self.sweep((&pixels, shape), "anomaly/score", |lp, f, f_all| {
            for img in lp.chunks_exact(t * t) {
                let (mut nll, mut dir) = (0.0, 0.0);
                for (tt, row) in img.chunks_exact(t).enumerate() {
                    nll -= f64::from(row[tt]);
                    let row64: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
                    dir -= self.dirichlet[tt].log_density(&row64);
                }
                s.nll.push(nll);
                s.dirichlet.push(dir);
            }
            s.knn
                .extend(knn_distances(&l2_normalise(&f)?, &self.normal_features, k)?);
            s.knn_all
                .extend(knn_distances(&f_all, &self.normal_features_all, k)?);
            Ok(())
        })?;
        s.pixel_knn = self.normal_pixels.distances(&pixels, k)?;
        s.knn_all_pixel = fuse(&s.knn_all, &s.pixel_knn, self.config.pixel_weight);
        Ok(s)
    }

    /// Saves the detector (weights and a config whose metrics hold the
    /// Dirichlet parameters) as a stage directory.
    pub fn save(&self, dir: &Path, dataset: &str, shape: (usize, usize, usize)) -> Result<()> {
        let cfg = StageConfig {
            stage: "anomaly".into(),
            method: format!("transformations:{}", self.config.transforms.name()),
            backbone: self.backbone_config.clone(),
            input_shape: [shape.0, shape.1, shape.2],
            normalization: self.norm.clone(),
            seed: self.config.fit.seed,
            dataset: dataset.into(),
            head_outputs: Some(self.list.len()),
            recipe: serde_json::to_value(&self.config)
                .map_err(|e| Error::invalid("detector config", e.to_string()))?,
            metrics: serde_json::json!({
                "train_transformation_accuracy": self.train_accuracy,
                "dirichlet_alpha": self.dirichlet.iter().map(|d| d.alpha.clone()).collect::<Vec<_>>(),
            }),
        };
        checkpoint::save(dir, &self.map, &cfg)
    }
}

/// A detector's encoder: loaded from the stage directory `init` (its
/// backbone and input shape must match, and its normalisation replaces the
/// data's), or freshly initialised from `seed`. Returns the variables, the
/// network and the normalisation.
pub(crate) fn start_encoder(
    init: Option<&Path>,
    backbone_cfg: &BackboneConfig,
    data: NormalImages,
    seed: u64,
    device: &Device,
) -> Result<(VarMap, Box<dyn Backbone>, Normalization)> {
    let Some(dir) = init else {
        let map = VarMap::new();
        let vb = params::seeded_var_builder(&map, seed, device);
        let backbone = backbone_cfg.build(vb.pp(BACKBONE_PREFIX))?;
        return Ok((map, backbone, data.norm.clone()));
    };
    let enc = checkpoint::load(dir, seed, device)?;
    if &enc.config.backbone != backbone_cfg {
        return Err(Error::format(
            dir.join("config.json"),
            format!(
                "checkpoint backbone {:?} differs from the requested {:?}",
                enc.config.backbone, backbone_cfg
            ),
        ));
    }
    let (c, h, w) = data.ds.image_shape();
    if enc.config.input_shape != [c, h, w] {
        return Err(Error::format(
            dir.join("config.json"),
            format!(
                "checkpoint input shape {:?} differs from the data's {c}x{h}x{w}",
                enc.config.input_shape
            ),
        ));
    }
    Ok((enc.map, enc.backbone, enc.config.normalization))
}

/// Features of T transformed copies per image, rows ordered image-major
/// ((B·T, D)), as one row per image: each copy's features L2-normalised,
/// the T copies concatenated and scaled by 1/sqrt(T), so that the dot
/// product of two rows is the mean over transformations of the two images'
/// cosine similarity under that transformation.
fn all_copies(features: &Tensor, t: usize) -> Result<Tensor> {
    let (rows, d) = features.dims2()?;
    Ok((l2_normalise(features)? / (t as f64).sqrt())?.reshape((rows / t, t * d))?)
}

/// One minus the mean similarity of each row of `queries` to its `k` most
/// similar rows of `normal` (similarity = dot product).
pub(crate) fn knn_distances(queries: &Tensor, normal: &Tensor, k: usize) -> Result<Vec<f64>> {
    let sim: Vec<Vec<f32>> = queries
        .matmul(&normal.t()?)?
        .to_device(&Device::Cpu)?
        .to_vec2()?;
    Ok(sim
        .into_iter()
        .map(|mut row| {
            row.sort_unstable_by(|a, b| b.total_cmp(a));
            1.0 - row[..k].iter().map(|&v| f64::from(v)).sum::<f64>() / k as f64
        })
        .collect())
}

/// `ln a + w ln b` per image, each distance floored at 1e-12 (a query
/// identical to a normal image has distance 0).
pub fn fuse(a: &[f64], b: &[f64], w: f64) -> Vec<f64> {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| x.max(1e-12).ln() + w * y.max(1e-12).ln())
        .collect()
}

/// Fails unless `v` — a pixel weight or blur, set by `what` — is a finite
/// number >= 0.
pub fn check_non_negative(what: &str, v: f64) -> Result<()> {
    if v.is_finite() && v >= 0.0 {
        return Ok(());
    }
    Err(Error::invalid(
        what,
        format!("{v} must be a finite number >= 0"),
    ))
}

/// Rows scaled to unit L2 norm.
pub(crate) fn l2_normalise(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    Ok(x.broadcast_div(&norm)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knn_distance_averages_the_k_most_similar_normals() {
        let normal = Tensor::new(&[[1f32, 0.0], [0.0, 1.0], [0.6, 0.8]], &Device::Cpu).unwrap();
        let queries = Tensor::new(&[[1f32, 0.0], [0.0, -1.0]], &Device::Cpu).unwrap();
        // Similarities: query 0 -> 1, 0, 0.6; query 1 -> 0, -1, -0.8.
        let k1 = knn_distances(&queries, &normal, 1).unwrap();
        let k2 = knn_distances(&queries, &normal, 2).unwrap();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        assert!(close(k1[0], 0.0) && close(k1[1], 1.0), "{k1:?}");
        assert!(close(k2[0], 1.0 - 0.8) && close(k2[1], 1.0 + 0.4), "{k2:?}");
    }

    #[test]
    fn fuse_adds_the_weighted_log_distances() {
        let f = fuse(&[0.5, 0.0], &[4.0, 1.0], 2.0);
        assert!((f[0] - (0.5f64.ln() + 2.0 * 4.0f64.ln())).abs() < 1e-12);
        assert!((f[1] - 1e-12f64.ln()).abs() < 1e-9, "{f:?}");
        // Doubling either distance adds the same amount to every image:
        // the ranking, and so the AUROC, ignores each score's units.
        let g = fuse(&[1.0, 0.0], &[8.0, 2.0], 2.0);
        assert!((g[0] - f[0] - (2f64.ln() + 2.0 * 2f64.ln())).abs() < 1e-12);
    }

    #[test]
    fn all_copies_dot_product_is_the_mean_per_transformation_cosine() {
        // Two images, T = 2 copies each, D = 2 (rows image-major).
        let f = Tensor::new(
            &[[3f32, 4.0], [1.0, 0.0], [0.0, 2.0], [-5.0, 0.0]],
            &Device::Cpu,
        )
        .unwrap();
        let all = all_copies(&f, 2).unwrap();
        assert_eq!(all.dims(), &[2, 4]);
        let gram: Vec<Vec<f32>> = all.matmul(&all.t().unwrap()).unwrap().to_vec2().unwrap();
        // Copy 0: cos((3,4),(0,2)) = 0.8; copy 1: cos((1,0),(-5,0)) = -1.
        let expected = (0.8 - 1.0) / 2.0;
        assert!((gram[0][1] - expected).abs() < 1e-6, "{gram:?}");
        assert!((gram[0][0] - 1.0).abs() < 1e-6 && (gram[1][1] - 1.0).abs() < 1e-6);
    }
}
