//! selfsup-anomaly flags inputs that do not look like the training data,
//! using a network that learned only from normal images.
//!
//! A [`Detector`] is a backbone plus a T-way head trained to recognise
//! which geometric transformation ([`transforms`]: the 4 rotations, with
//! flips, up to the 72 flip x translation x rotation combinations of Golan
//! & El-Yaniv, 2018) was applied to a normal image. On images like its
//! training data it is confident; on others it is confused. Its scores
//! turn that into a number per image, higher meaning more anomalous:
//!
//! - `nll`: the summed negative log-probability of the applied
//!   transformation over all T transformed copies;
//! - `dirichlet`: the negative log-likelihood of the T softmax vectors under
//!   one Dirichlet per transformation, fitted on the normal training images
//!   ([`dirichlet`], Minka's fixed point);
//! - `knn`: the mean cosine distance of the image's features to its k
//!   nearest normal training images (a feature-space baseline);
//! - `knn-all`: the same over all T transformed copies at once;
//! - `pixel-knn`: the mean Euclidean distance, in normalised, blurred pixel
//!   space, to the k nearest normal training images ([`pixels`]; no
//!   network);
//! - `knn-all+pixel`: ln knn-all + w ln pixel-knn, the two distances fused
//!   ([`detector::fuse`]).
//!
//! A [`MaeDetector`] ([`reconstruction`]) instead trains a ViT by masked
//! autoencoding on the normal images and scores `reconstruction`: how badly
//! it fills in masked patches (with `knn` on its features beside).
//!
//! [`metrics`] gives AUROC, AUPR (anomalies positive) and FPR at 95 % TPR,
//! exact under ties; [`protocol`] builds the one-class, faces and folder
//! tasks; [`report`] is the `report.json` schema and `scores.csv` (every
//! scored image's scores), which [`rescore`] reads back.
//!
//! ```
//! use selfsup_anomaly::metrics::auroc;
//! // Anomalies (true) outscore normal samples in 2 of the 4 pairs.
//! assert_eq!(auroc(&[0.9, 0.2, 0.4, 0.1], &[true, false, false, true]), 0.5);
//! ```

pub mod detector;
pub mod dirichlet;
pub mod metrics;
pub mod pixels;
pub mod protocol;
pub mod reconstruction;
pub mod report;
pub mod rescore;
pub mod transforms;

pub use detector::{Detector, DetectorConfig, NormalImages, Scores, SCORES};
pub use reconstruction::MaeDetector;
pub use transforms::{TransformSet, Transformation};
